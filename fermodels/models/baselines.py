"""Baselines (ResNet-18, IR-50) and the small helpers every model family shares.

``resnet18`` is torchvision's ResNet-18 (MS-Celeb-1M or ImageNet weights load into it) with a
new ``fc``; ``resnet18_112`` is the same network declared at 112 x 112 for the CPU smoke
pipeline; ``ir50`` is IR-50 stages 1-3 (the image backbone of POSTER / Nie et al.) + GAP + FC.
"""
from __future__ import annotations

from typing import Mapping

from torch import Tensor, nn

from fermodels.checkpoints import load_pretrained
from fermodels.losses import label_loss
from fermodels.models.backbones import IR50, ResNet18Trunk, global_avg_pool
from fermodels.registry import ModelCard, register_model

Batch = Mapping[str, Tensor]


def require(batch: Batch, key: str, card: ModelCard, width: int | None = None) -> Tensor:
    """``batch[key]`` checked against the card: present, 4-D image-like tensors at input size.

    ``width`` overrides the expected width (half faces are S x S/2).
    """
    if key not in batch:
        raise KeyError(f"model {card.name!r} needs batch[{key!r}]; its card lists fields "
                       f"{card.fields}, the batch has {sorted(batch)}")
    x = batch[key]
    if key in ("image", "left", "right"):
        s = card.input_size
        want = (s, s if width is None else width)
        if x.dim() != 4 or tuple(x.shape[-2:]) != want:
            raise ValueError(f"model {card.name!r} expects batch[{key!r}] of shape (B, 3, {want[0]}, "
                             f"{want[1]}), got {tuple(x.shape)}; resize faces to the card's input_size")
    return x


class ResNet18Classifier(nn.Module):
    """torchvision ResNet-18 trunk + GAP + a new ``fc``; plain cross-entropy."""

    def __init__(self, num_classes: int, card: ModelCard, pretrained: str | None = None) -> None:
        super().__init__()
        self.card = card
        self.trunk = ResNet18Trunk(include_layer4=True)
        self.fc = nn.Linear(512, num_classes)
        if pretrained:
            load_pretrained(self.trunk, pretrained, "msceleb_resnet18")

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        feats = global_avg_pool(self.trunk(require(batch, "image", self.card)))
        return {"logits": self.fc(feats), "features": feats}

    def losses(self, out: Mapping[str, Tensor], batch: Batch) -> dict[str, Tensor]:
        return {"ce": label_loss(out["logits"], batch)}


class IR50Classifier(nn.Module):
    """IR-50 stages 1-3 (256 x 14 x 14 at 112) + GAP + FC; plain cross-entropy."""

    def __init__(self, num_classes: int, card: ModelCard, pretrained: str | None = None) -> None:
        super().__init__()
        self.card = card
        self.backbone = IR50(num_stages=3)
        self.fc = nn.Linear(self.backbone.out_channels, num_classes)
        if pretrained:
            load_pretrained(self.backbone, pretrained, "ir50")

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        feats = global_avg_pool(self.backbone(require(batch, "image", self.card)))
        return {"logits": self.fc(feats), "features": feats}

    def losses(self, out: Mapping[str, Tensor], batch: Batch) -> dict[str, Tensor]:
        return {"ce": label_loss(out["logits"], batch)}


_RESNET_NOTES = ("torchvision ResNet-18 with a new fc; `pretrained` takes an MS-Celeb-1M "
                 "(DAN/CMNet/PCNN resnet18_msceleb.pth) or torchvision checkpoint. Random init "
                 "without it.")


def _resnet_card(name: str, size: int) -> ModelCard:
    return ModelCard(name=name, input_size=size, fields=("image",), losses=("ce",),
                     paper="He et al., Deep Residual Learning, CVPR 2016", notes=_RESNET_NOTES)


@register_model("resnet18")
def resnet18(num_classes: int = 7, pretrained: str | None = None) -> ResNet18Classifier:
    return ResNet18Classifier(num_classes, _resnet_card("resnet18", 224), pretrained)


@register_model("resnet18_112")
def resnet18_112(num_classes: int = 7, pretrained: str | None = None) -> ResNet18Classifier:
    """Same network at 112 x 112 (the CPU smoke pipeline's face size)."""
    return ResNet18Classifier(num_classes, _resnet_card("resnet18_112", 112), pretrained)


@register_model("ir50")
def ir50(num_classes: int = 7, pretrained: str | None = None) -> IR50Classifier:
    card = ModelCard(
        name="ir50", input_size=112, fields=("image",), losses=("ce",),
        paper="Deng et al., ArcFace, CVPR 2019 (IR-50 as used by POSTER / APViT)",
        notes=("IR-50 stages 1-3 as in POSTER/APViT (face.evoLVe unit layout, faithful to public "
               "code), then GAP + FC (a baseline head, not from a paper). `pretrained` takes "
               "face.evoLVe backbone_ir50_ms1m_epoch120.pth or POSTER's ir50.pth."))
    return IR50Classifier(num_classes, card, pretrained)
