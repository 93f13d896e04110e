"""Conv-cut: truncated ConvNeXt-Base + Detail Extraction block + self-attention (arXiv 2504.09077).

Two variants, identical except for the attention (the paper, Algorithm 1; docs/reference/seed_models.md §5):

* ``convcut`` - attention **within each sample** over the DET block's spatial tokens
  (4 tokens after stage 3, 9 after stage 2), then global average pooling: a prediction depends on
  its own image only.
* ``convcut_paper`` - the published ``f = softmax(Y Y^T / sqrt(d)) Y`` on the pooled (B, d)
  features: a B x B attention that mixes the samples of a batch. This is PAtt-Lite's
  acknowledged bug, kept on purpose to measure it: on class-sorted evaluation batches it leaks
  labels across samples, and even in eval mode a sample's prediction changes with its batch.

Backbone: ConvNeXt-Base (torchvision) cut after ``cut_stage`` (2 -> 256 x 28 x 28, the default: the paper
"truncat[es] the third and fourth stages" (§3, said twice); 3 -> 512 x 14 x 14, PAtt-Lite's geometry)
at 224, frozen by default as in the paper. DET block: LayerNorm -> separable conv k4 s4
('same') + ReLU -> separable conv k2 s2 ('valid') + ReLU -> spatial dropout 0.1 (widths and
activations from PAtt-Lite, which the authors say they borrowed).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.convnext import LayerNorm2d

from fermodels.checkpoints import load_pretrained
from fermodels.losses import label_loss
from fermodels.models.backbones import ConvNeXtTrunk, freeze, global_avg_pool
from fermodels.models.common import Batch, require
from fermodels.registry import ModelCard, register_model


class SeparableConv2d(nn.Module):
    """Keras ``SeparableConv2D``: depthwise k x k (stride) then pointwise 1x1 with bias, ReLU.

    ``same`` padding follows TensorFlow (total pad = max((ceil(n/s)-1)*s + k - n, 0), the
    smaller half first), which PyTorch's ``padding="same"`` does not support for strides > 1.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, padding: str) -> None:
        super().__init__()
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.depthwise = nn.Conv2d(in_ch, in_ch, kernel, stride, groups=in_ch, bias=False)
        self.pointwise = nn.Conv2d(in_ch, out_ch, 1)

    def _same_pad(self, n: int) -> tuple[int, int]:
        total = max((math.ceil(n / self.stride) - 1) * self.stride + self.kernel - n, 0)
        return total // 2, total - total // 2

    def forward(self, x: Tensor) -> Tensor:
        if self.padding == "same":
            (top, bottom), (left, right) = self._same_pad(x.shape[2]), self._same_pad(x.shape[3])
            x = F.pad(x, (left, right, top, bottom))
        return torch.relu(self.pointwise(self.depthwise(x)))


class DetailExtraction(nn.Module):
    """LayerNorm -> SeparableConv(k4, s4) -> SeparableConv(k2, s2) -> SpatialDropout(0.1)."""

    def __init__(self, in_ch: int, width: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm = LayerNorm2d(in_ch, eps=1e-3)  # Keras LayerNormalization default epsilon
        self.sep1 = SeparableConv2d(in_ch, width, 4, 4, "same")
        self.sep2 = SeparableConv2d(width, width, 2, 2, "valid")
        self.drop = nn.Dropout2d(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.sep2(self.sep1(self.norm(x))))


def self_attention(y: Tensor) -> Tensor:
    """Parameter-free ``softmax(Y Y^T / sqrt(d)) Y`` over the second-to-last axis of ``y``."""
    scores = y @ y.transpose(-2, -1) / math.sqrt(y.shape[-1])
    return torch.softmax(scores, dim=-1) @ y


class ConvCut(nn.Module):
    """Conv-cut; ``batch_attention`` selects the published (leaking) attention across samples."""

    def __init__(self, num_classes: int, card: ModelCard, cut_stage: int = 3,
                 freeze_backbone: bool = True, width: int = 256, batch_attention: bool = False,
                 pretrained: str | None = None, pretrained_layout: str = "convnext_torchvision",
                 depths: Sequence[int] | None = None, dims: Sequence[int] | None = None) -> None:
        super().__init__()
        self.card, self.batch_attention = card, batch_attention
        self.backbone = ConvNeXtTrunk(cut_stage, depths, dims)
        if pretrained:
            load_pretrained(self.backbone, pretrained, pretrained_layout)
        self.frozen = freeze_backbone
        if freeze_backbone:
            freeze(self.backbone)
        self.det = DetailExtraction(self.backbone.out_channels, width)
        self.head = nn.Linear(width, num_classes)

    def train(self, mode: bool = True) -> "ConvCut":
        """A frozen backbone stays in inference mode, like a Keras layer with trainable=False."""
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        y = self.det(self.backbone(require(batch, "image", self.card)))
        if self.batch_attention:
            feats = self_attention(global_avg_pool(y))  # (B, d): attends across the batch
        else:
            feats = self_attention(y.flatten(2).transpose(1, 2)).mean(dim=1)  # (B, N, d) per sample
        return {"logits": self.head(feats), "features": feats}

    def losses(self, out: Mapping[str, Tensor], batch: Batch) -> dict[str, Tensor]:
        return {"ce": label_loss(out["logits"], batch)}


_PAPER = ("Nan, Liu, Qian, Song: A Visual Self-attention Mechanism Facial Expression Recognition "
          "Network beyond ConvNeXt (Conv-cut), arXiv 2504.09077")
_COMMON = ("Paper + PAtt-Lite template (the TF code was not readable): ConvNeXt-Base cut after "
           "stage {cut} (the paper truncates stages 3 and 4; cut_stage=3 keeps stage 3, PAtt-Lite's 14x14 "
           "geometry), frozen={frozen}, stochastic depth 0; DET width "
           "256, ReLU, 'same' then 'valid' padding from PAtt-Lite; no Dense-32/BN before the "
           "attention (not in Algorithm 1). `pretrained`: torchvision or timm ConvNeXt-Base "
           "(pretrained_layout). Keras ConvNeXt normalises internally; here images use ImageNet "
           "mean/std as torchvision's weights expect.")


def _card(name: str, notes: str, per_sample: bool = True) -> ModelCard:
    return ModelCard(name=name, input_size=224, fields=("image",), losses=("ce",), paper=_PAPER,
                     notes=notes, per_sample=per_sample)


@register_model("convcut")
def convcut(num_classes: int = 7, cut_stage: int = 2, freeze_backbone: bool = True,
            width: int = 256, pretrained: str | None = None,
            pretrained_layout: str = "convnext_torchvision", depths: Sequence[int] | None = None,
            dims: Sequence[int] | None = None) -> ConvCut:
    notes = ("Fixed attention: softmax(YY^T/sqrt(d))Y within each sample over the DET spatial "
             "tokens, then GAP (our correction of the published batch-wise attention). "
             + _COMMON.format(cut=cut_stage, frozen=freeze_backbone))
    return ConvCut(num_classes, _card("convcut", notes), cut_stage, freeze_backbone, width, False,
                   pretrained, pretrained_layout, depths, dims)


@register_model("convcut_paper")
def convcut_paper(num_classes: int = 7, cut_stage: int = 2, freeze_backbone: bool = True,
                  width: int = 256, pretrained: str | None = None,
                  pretrained_layout: str = "convnext_torchvision",
                  depths: Sequence[int] | None = None, dims: Sequence[int] | None = None) -> ConvCut:
    notes = ("BUG KEPT ON PURPOSE: the published attention softmax(YY^T/sqrt(d))Y runs on the "
             "pooled (B, d) features, i.e. across the samples of a batch (PAtt-Lite's acknowledged "
             "error). Predictions depend on batch composition even in eval mode and leak labels "
             "on class-sorted test batches; evaluate with batch size 1 or shuffled order to see "
             "it. " + _COMMON.format(cut=cut_stage, frozen=freeze_backbone))
    return ConvCut(num_classes, _card("convcut_paper", notes, per_sample=False), cut_stage, freeze_backbone,
                   width, True, pretrained, pretrained_layout, depths, dims)
