"""Baselines (ResNet-18, IR-50).

``resnet18`` is torchvision's ResNet-18 (MS-Celeb-1M or ImageNet weights load into it) with a
new ``fc``; ``resnet18_112`` is the same network declared at 112 x 112 for the CPU smoke
pipeline; ``resnet18_heatmap`` (and ``_112``) weights its layer-2 features by the stored landmark
heatmap; ``ir50`` is IR-50 stages 1-3 (the image backbone of POSTER / Nie et al.) + GAP + FC.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fermodels.checkpoints import load_pretrained
from fermodels.losses import label_loss
from fermodels.models.backbones import IR50, ResNet18Trunk, global_avg_pool
from fermodels.models.common import Batch, check_heatmap_centres, require
from fermodels.registry import ModelCard, register_model


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


def layer2_kernel() -> Tensor:
    """The 2 x 2 bilinear weights :func:`heatmap_at_layer2` reads a heatmap cell pair with: pixel 0
    is heatmap coordinate ``0.5 / 4 - 0.5 = -0.375``, so cells ``2k - 1`` and ``2k`` weigh 0.375 and 0.625."""
    at = (0 + 0.5) / 4 - 0.5
    w = torch.tensor([-at, 1 + at])
    return (w[:, None] * w[None, :])[None, None]


def heatmap_at_layer2(heatmap: Tensor, centres: str = "features", kernel: Tensor | None = None) -> Tensor:
    """A (B, 1, H, W) heatmap at 1/4 of the input side (cell j centred on input pixel ``4 j + 1.5``, the
    pixel-centre convention of :func:`ferdata.heatmap.gaussian_heatmaps`) at ResNet's layer-2 grid,
    1/8 of the side. ``features``: read at the pixels the features sit over, ``8 k`` (conv1, the
    max-pool and layer 2 each stride 2 with their kernels centred), i.e. heatmap coordinate
    ``2 k - 0.375``: bilinear between cells ``2 k - 1`` and ``2 k``, the edge repeated.
    ``cells``: the 2 x 2 average, centred on pixel ``8 k + 3.5``, 3.5 px right of and below the
    features (how checkpoints saved before this keyword were trained). ``kernel``: :func:`layer2_kernel`
    already on the heatmap's device (a model's buffer: made here, a GPU would wait for its copy)."""
    check_heatmap_centres(centres)
    if centres == "cells":
        return F.avg_pool2d(heatmap, 2)
    kernel = (layer2_kernel() if kernel is None else kernel).to(heatmap.dtype)      # (1, 1, 2, 2): one map
    return F.conv2d(F.pad(heatmap, (1, 0, 1, 0), mode="replicate"), kernel, stride=2)


class ResNet18HeatmapAttention(ResNet18Classifier):
    """ResNet-18 whose layer-2 features (1/8 of the input side) are weighted by the stored
    landmark heatmap as residual attention, F * (1 + H): H in [0, 1] (the max over the 68
    landmarks' Gaussians, read at the features' centres: :func:`heatmap_at_layer2`), so features
    on the eyes, brows, nose and mouth count up to twice and the rest as in ``resnet18``; with
    H = 0 it is ``resnet18`` exactly (the same weights load)."""

    def __init__(self, num_classes: int, card: ModelCard, pretrained: str | None = None,
                 heatmap_centres: str = "features") -> None:
        check_heatmap_centres(heatmap_centres)
        super().__init__(num_classes, card, pretrained)
        self.heatmap_centres = heatmap_centres
        self.register_buffer("layer2_kernel", layer2_kernel(), persistent=False)    # moves with the model

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        t = self.trunk
        x = t.maxpool(t.relu(t.bn1(t.conv1(require(batch, "image", self.card)))))
        x = t.layer2(t.layer1(x))
        heat = heatmap_at_layer2(require(batch, "heatmap", self.card), self.heatmap_centres, self.layer2_kernel)
        x = x * (1 + heat.to(x.dtype))
        feats = global_avg_pool(t.layer4(t.layer3(x)))
        return {"logits": self.fc(feats), "features": feats}


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


_HEATMAP_NOTES = ("resnet18 with its layer-2 features weighted by the stored 68-landmark heatmap (derive "
                  "stage, heatmap.png) as residual attention F * (1 + H), H read at the layer-2 features' centres: "
                  "our baseline for the landmark heatmaps (landmark maps as attention as in EmoNet; the "
                  "(1 + M) form of Residual Attention Networks). `pretrained` as resnet18. Random init without it.")


def _heatmap_card(name: str, size: int) -> ModelCard:
    return ModelCard(name=name, input_size=size, fields=("image", "heatmap"), losses=("ce",),
                     paper="Wang et al., Residual Attention Network, CVPR 2017; Toisoul et al., EmoNet, "
                           "Nature Machine Intelligence 2021 (heatmaps as attention)", notes=_HEATMAP_NOTES)


@register_model("resnet18_heatmap")
def resnet18_heatmap(num_classes: int = 7, pretrained: str | None = None,
                     heatmap_centres: str = "features") -> ResNet18HeatmapAttention:
    return ResNet18HeatmapAttention(num_classes, _heatmap_card("resnet18_heatmap", 224), pretrained,
                                    heatmap_centres)


@register_model("resnet18_heatmap_112")
def resnet18_heatmap_112(num_classes: int = 7, pretrained: str | None = None,
                         heatmap_centres: str = "features") -> ResNet18HeatmapAttention:
    """Same network at 112 x 112 (heatmaps at the derive stage's default 28 x 28)."""
    return ResNet18HeatmapAttention(num_classes, _heatmap_card("resnet18_heatmap_112", 112), pretrained,
                                    heatmap_centres)


@register_model("ir50")
def ir50(num_classes: int = 7, pretrained: str | None = None) -> IR50Classifier:
    card = ModelCard(
        name="ir50", input_size=112, fields=("image",), losses=("ce",),
        paper="Deng et al., ArcFace, CVPR 2019 (IR-50 as used by POSTER / APViT)",
        notes=("IR-50 stages 1-3 as in POSTER/APViT (face.evoLVe unit layout, faithful to public "
               "code), then GAP + FC (a baseline head, not from a paper). `pretrained` takes "
               "face.evoLVe backbone_ir50_ms1m_epoch120.pth or POSTER's ir50.pth."))
    return IR50Classifier(num_classes, card, pretrained)
