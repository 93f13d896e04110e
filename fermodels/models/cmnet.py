"""CMNet: whole face + left/right half faces through one ResNet-18 trunk, fused, refined by myCBAM.

Follows the public code's final model (``Model_5``, hellloxiaotian/CMNet 33905f7; spec in
docs/reference/seed_models.md §2):

* T = ResNet-18 conv1..layer3, one set of weights for the whole face (S x S) and both halves
  (S x S/2); fusion X = T(whole) + concat_W(T(left), T(right)) -> 256 x 14 x 14 at 224;
* layer4 -> myCBAM (quadrant channel gate + 2 x 2 group-mosaic spatial gate) -> GAP -> FC;
* loss 0.9 * CE + 0.1 * half-alignment (MSE of the GAP'd layer3 half descriptors).
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from fermodels.checkpoints import load_pretrained
from fermodels.losses import half_alignment, label_loss
from fermodels.models.backbones import ResNet18Trunk, global_avg_pool
from fermodels.models.common import Batch, require
from fermodels.registry import ModelCard, register_model


class MyCBAM(nn.Module):
    """CMNet's modified CBAM ("salient facial information refinement"), seed_models.md §2.3.

    Channel gate: the map is split into 2 x 2 quadrants at (H//2, W//2) in the order
    top-left, top-right, bottom-left, bottom-right; per quadrant global avg- and max-pool give two
    4C vectors; one MLP 4C -> C/r -> C on each; sigmoid of the sum scales the channels.
    Spatial gate: the channels are cut into 4 groups; each gives (channel-max, channel-mean);
    the groups are tiled g1 over g2 | g3 over g4 into a 2 x 2H x 2W mosaic; conv 7x7 (no bias)
    + BN(momentum 0.01) -> 1 x 2H x 2W; conv 2x2 stride 2 (bias) -> 1 x H x W; sigmoid scales.
    """

    def __init__(self, channels: int = 512, reduction: int = 16) -> None:
        super().__init__()
        if channels % 4:
            raise ValueError(f"myCBAM splits channels into 4 groups; {channels} is not divisible by 4")
        self.mlp = nn.Sequential(nn.Linear(4 * channels, channels // reduction), nn.ReLU(),
                                 nn.Linear(channels // reduction, channels))
        self.spatial_conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)
        self.spatial_bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)
        self.spatial_pool = nn.Conv2d(1, 1, 2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self._spatial_gate(self._channel_gate(x))

    def _channel_gate(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        quads = (x[..., :h, :w], x[..., :h, w:], x[..., h:, :w], x[..., h:, w:])
        avg = torch.cat([q.mean(dim=(2, 3)) for q in quads], dim=1)
        mx = torch.cat([q.amax(dim=(2, 3)) for q in quads], dim=1)
        scale = torch.sigmoid(self.mlp(avg) + self.mlp(mx))
        return x * scale[:, :, None, None]

    def _spatial_gate(self, x: Tensor) -> Tensor:
        pooled = [torch.cat([g.amax(dim=1, keepdim=True), g.mean(dim=1, keepdim=True)], dim=1)
                  for g in torch.chunk(x, 4, dim=1)]
        mosaic = torch.cat([torch.cat(pooled[:2], dim=2), torch.cat(pooled[2:], dim=2)], dim=3)
        gate = self.spatial_pool(self.spatial_bn(self.spatial_conv(mosaic)))
        return x * torch.sigmoid(gate)


class CMNet(nn.Module):
    """Whole + half-face ResNet-18 fusion with myCBAM; see the module docstring.

    ``batch["right"]`` is the mirrored right half the data pipeline writes. By default
    (``mirror_right_half=False``) it is flipped back first, so the trunk sees the plain right
    columns exactly as the public code (which splits the un-mirrored input) does.
    ``mirror_right_half=True`` (our variant) lets the trunk see it mirrored (both halves then look
    like left halves) and flips its feature map back before the side-by-side fusion, keeping the
    fused map in face layout.
    ``share_trunk=False`` gives the whole face and each half their own trunk.
    """

    def __init__(self, num_classes: int, card: ModelCard, mirror_right_half: bool = False,
                 share_trunk: bool = True, alpha: float = 0.9, pretrained: str | None = None) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:     # the weights are alpha and 1 - alpha: outside [0, 1] one is negative
            raise ValueError(f"alpha must be in [0, 1] (CE weight; the half alignment weighs 1 - alpha), got {alpha!r}")
        self.card = card
        self.mirror_right_half = mirror_right_half
        self.alpha = alpha
        self.trunk = ResNet18Trunk(include_layer4=True)
        self.left_trunk = None if share_trunk else ResNet18Trunk(include_layer4=False)
        self.right_trunk = None if share_trunk else ResNet18Trunk(include_layer4=False)
        self.attention = MyCBAM(512)
        self.fc = nn.Linear(512, num_classes)
        if pretrained:
            for part in (self.trunk, self.left_trunk, self.right_trunk):
                if part is not None:
                    load_pretrained(part, pretrained, "msceleb_resnet18")

    def _half(self, trunk: ResNet18Trunk | None, x: Tensor) -> Tensor:
        return (trunk if trunk is not None else self.trunk).to_layer3(x)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        half_w = self.card.input_size // 2
        image = require(batch, "image", self.card)
        left = require(batch, "left", self.card, width=half_w)
        right = require(batch, "right", self.card, width=half_w)
        if not self.mirror_right_half:
            right = torch.flip(right, dims=[3])
        whole = self.trunk.to_layer3(image)
        f_left = self._half(self.left_trunk, left)
        f_right = self._half(self.right_trunk, right)
        f_right_layout = torch.flip(f_right, dims=[3]) if self.mirror_right_half else f_right
        fused = whole + torch.cat([f_left, f_right_layout], dim=3)
        feats = global_avg_pool(self.attention(self.trunk.layer4(fused)))
        return {"logits": self.fc(feats), "features": feats,
                "left_desc": global_avg_pool(f_left), "right_desc": global_avg_pool(f_right)}

    def losses(self, out: Mapping[str, Tensor], batch: Batch) -> dict[str, Tensor]:
        return {"ce": self.alpha * label_loss(out["logits"], batch),
                "half_alignment": (1 - self.alpha) * half_alignment(out["left_desc"], out["right_desc"])}


@register_model("cmnet")
def cmnet(num_classes: int = 7, mirror_right_half: bool = False, share_trunk: bool = True,
          alpha: float = 0.9, pretrained: str | None = None) -> CMNet:
    card = ModelCard(
        name="cmnet", input_size=224, fields=("image", "left", "right"),
        losses=("ce", "half_alignment"),
        paper="Li, Tian, Xie, Zhang, Zhang, Zuo: CMNet, IEEE TIP 2026 (arXiv 2605.04439)",
        notes=("Faithful to public code Model_5: shared ResNet-18 trunk, additive fusion, myCBAM "
               "(82,569 params), 0.9*CE + 0.1*MSE half alignment (the PartitionLoss in closed form). "
               f"Halves come from batch left/right; the pipeline's mirrored right half is flipped "
               f"back, so the trunk sees the public code's un-mirrored split (mirror_right_half="
               f"{mirror_right_half}; True: the trunk sees it mirrored and its layer3 map is flipped "
               "back before fusion, our variant); debug prints removed; share_trunk=False (three "
               f"trunks, share_trunk={share_trunk}) is an ablation, not public code. `pretrained`: "
               "MS-Celeb-1M ResNet-18."))
    return CMNet(num_classes, card, mirror_right_half, share_trunk, alpha, pretrained)
