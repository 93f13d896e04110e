"""PCNN: five local "sense-organ" ResNet-18 trunks + a global trunk, mosaic + STN registration.

Follows the public code (hellloxiaotian/PCNN network/models.py at 1656fc6; seed_models.md §3):

* regions of the 224 face by the code's fixed fractions (w1=.5, h1=.5, h2=.65): eye-L/eye-R
  112 x 112, cheek-L/cheek-R 33 x 112, mouth 79 x 224 - or, with ``regions="landmarks"``, the
  data pipeline's landmark boxes (:mod:`ferdata.regions`) resampled by ``roi_align`` to the same
  sizes;
* six separate ResNet-18 trunks (conv1..layer3); each local map -> GAP -> its own FC; the five
  local logits are summed;
* the local maps are tiled into a face-layout mosaic (eyes / cheeks / mouth rows) resized to
  the global 14 x 14 map, registered by an STN whose localisation net is the global branch's
  layer4 + FC 25088-32-6, added to the global map -> layer4 -> GAP -> FC;
* loss 12 * CE(main) + 8 * CE(sum of local logits).
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from ferdata.regions import LANDMARK_GROUPS, REGION_NAMES
from ferdata.regions import fixed_regions as ferdata_fixed_regions
from fermodels.checkpoints import load_pretrained
from fermodels.losses import label_loss
from fermodels.models.backbones import ResNet18Trunk, global_avg_pool
from fermodels.models.common import Batch, arange_like, require
from fermodels.registry import ModelCard, register_model

REGIONS = REGION_NAMES


def fixed_regions(size: int) -> dict[str, tuple[int, int, int, int]]:
    """Row/column slices ``(r0, r1, c0, c1)`` of each region, cut as the public code cuts them.

    The boxes come from :func:`ferdata.regions.fixed_regions` (geometry is defined once, there).
    """
    boxes = ferdata_fixed_regions(size)
    return {k: (int(y0), int(y1), int(x0), int(x1)) for k, (x0, y0, x1, y1) in boxes.items()}


def region_sizes(size: int) -> dict[str, tuple[int, int]]:
    """(height, width) of each region crop; landmark crops are resampled to the same sizes."""
    return {k: (r1 - r0, c1 - c0) for k, (r0, r1, c0, c1) in fixed_regions(size).items()}


def landmark_boxes(lmk: Tensor, size: int, margin: float = 0.15) -> Tensor:
    """(B, 5, 4) ``x0, y0, x1, y1`` boxes around each region's iBUG-68 group (order of ``REGIONS``).

    Batched torch version of :func:`ferdata.regions.landmark_regions` (same groups, same rule:
    grown by ``margin`` of the group's extent + 2 px per side, clipped to the crop), so the model
    crops exactly the regions the data pipeline derives.
    """
    boxes = []
    for name in REGIONS:
        pts = lmk[:, list(LANDMARK_GROUPS[name])] + 0.5   # pixel centres -> edges (roi_align, aligned=True)
        lo, hi = pts.amin(dim=1), pts.amax(dim=1)
        pad = (hi - lo) * margin + 2.0
        boxes.append(torch.cat([(lo - pad).clamp(0, size), (hi + pad).clamp(0, size)], dim=1))
    return torch.stack(boxes, dim=1)


def _affine_grid(theta: Tensor, height: int, width: int) -> Tensor:
    """``F.affine_grid(theta, (B, C, H, W), align_corners=True)`` from plain matmuls (exportable)."""
    def axis(n: int) -> Tensor:  # linspace(-1, 1, n), in theta's dtype and device when traced
        return arange_like(theta, n) * (2.0 / max(n - 1, 1)) - 1.0

    gy, gx = torch.meshgrid(axis(height), axis(width), indexing="ij")
    base = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).reshape(1, height * width, 3)
    return (base @ theta.transpose(1, 2)).reshape(theta.shape[0], height, width, 2)


def _down(n: int, times: int) -> int:
    """Spatial size after ``times`` stride-2 ResNet stages (each rounds up)."""
    for _ in range(times):
        n = math.ceil(n / 2)
    return n


class PCNN(nn.Module):
    """Perception CNN; see the module docstring. ``regions``: ``"fixed"`` or ``"landmarks"``."""

    def __init__(self, num_classes: int, card: ModelCard, regions: str = "fixed",
                 main_weight: float = 12.0, local_weight: float = 8.0,
                 stn_identity_init: bool = True, pretrained: str | None = None) -> None:
        super().__init__()
        if regions not in ("fixed", "landmarks"):
            raise ValueError(f"regions must be 'fixed' or 'landmarks', got {regions!r}")
        if not (main_weight >= 0 and local_weight >= 0):      # a negative weight: training maximises that loss
            raise ValueError(f"main_weight and local_weight must be >= 0, got {main_weight!r}, {local_weight!r}")
        self.card, self.regions = card, regions
        self.main_weight, self.local_weight = main_weight, local_weight
        self.sizes = region_sizes(card.input_size)
        self.global_trunk = ResNet18Trunk(include_layer4=True)
        self.local_trunks = nn.ModuleDict({r: ResNet18Trunk(include_layer4=False) for r in REGIONS})
        self.local_heads = nn.ModuleDict({r: nn.Linear(256, num_classes) for r in REGIONS})
        loc = _down(card.input_size, 5)  # layer4 on the 1/16 mosaic
        self.fc_loc = nn.Sequential(nn.Linear(512 * loc * loc, 32), nn.ReLU(), nn.Linear(32, 6))
        if stn_identity_init:
            nn.init.zeros_(self.fc_loc[2].weight)
            with torch.no_grad():
                self.fc_loc[2].bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))
        self.fc = nn.Linear(512, num_classes)
        if pretrained:
            for part in (self.global_trunk, *self.local_trunks.values()):
                load_pretrained(part, pretrained, "msceleb_resnet18")

    def crops(self, batch: Batch) -> dict[str, Tensor]:
        """The five region crops, each at its fixed size."""
        image = require(batch, "image", self.card)
        if self.regions == "fixed":
            return {k: image[:, :, r0:r1, c0:c1]
                    for k, (r0, r1, c0, c1) in fixed_regions(self.card.input_size).items()}
        lmk = require(batch, "lmk", self.card)
        boxes = landmark_boxes(lmk.to(image.dtype), self.card.input_size)
        index = arange_like(image, image.shape[0])[:, None]
        return {name: roi_align(image, torch.cat([index, boxes[:, i]], dim=1), self.sizes[name],
                                spatial_scale=1.0, sampling_ratio=2, aligned=True)
                for i, name in enumerate(REGIONS)}

    def mosaic(self, maps: Mapping[str, Tensor], like: Tensor) -> Tensor:
        """Eyes row over cheeks row over mouth, resized to the global map (the code's x10)."""
        width = like.shape[3]
        eyes = torch.cat([maps["eye_left"], maps["eye_right"]], dim=3)
        eyes = F.interpolate(eyes, size=(eyes.shape[2], width), mode="bilinear", align_corners=True)
        cheeks = torch.cat([maps["cheek_left"], maps["cheek_right"]], dim=3)
        cheeks = F.interpolate(cheeks, size=(cheeks.shape[2], width), mode="bilinear", align_corners=True)
        tiles = torch.cat([eyes, cheeks, maps["mouth"]], dim=2)
        return F.interpolate(tiles, size=tuple(like.shape[2:]), mode="bilinear", align_corners=True)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        image = require(batch, "image", self.card)
        whole = self.global_trunk.to_layer3(image)
        maps = {name: self.local_trunks[name].to_layer3(crop) for name, crop in self.crops(batch).items()}
        local_logits = torch.stack(
            [self.local_heads[n](global_avg_pool(maps[n])) for n in REGIONS]).sum(dim=0)
        mosaic = self.mosaic(maps, whole)
        theta = self.fc_loc(torch.flatten(self.global_trunk.layer4(mosaic), 1)).view(-1, 2, 3)
        grid = _affine_grid(theta, whole.shape[2], whole.shape[3])
        warped = F.grid_sample(mosaic, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        feats = global_avg_pool(self.global_trunk.layer4(whole + warped))
        return {"logits": self.fc(feats), "local_logits": local_logits, "features": feats,
                "theta": theta}

    def losses(self, out: Mapping[str, Tensor], batch: Batch) -> dict[str, Tensor]:
        return {"ce_main": self.main_weight * label_loss(out["logits"], batch),
                "ce_local": self.local_weight * label_loss(out["local_logits"], batch)}


@register_model("pcnn")
def pcnn(num_classes: int = 7, regions: str = "fixed", main_weight: float = 12.0,
         local_weight: float = 8.0, stn_identity_init: bool = True,
         pretrained: str | None = None) -> PCNN:
    fields = ("image", "lmk") if regions == "landmarks" else ("image",)
    card = ModelCard(
        name="pcnn", input_size=224, fields=fields, losses=("ce_main", "ce_local"),
        paper="Tian, Xie, Li, Zuo, Zhang, Zhang: Perception CNN for FER, IEEE TIP 34 (2025) "
              "8101-8113 (arXiv 2512.06422)",
        notes=("Faithful to public code: fixed-fraction regions (w1=.5, h1=.5, h2=.65), six "
               "non-shared ResNet-18 trunks, mosaic, STN with the global layer4 as localiser, "
               "shared layer4, 12*CE(main) + 8*CE(sum of local logits); no pixel reconstruction "
               "loss (none in code). Deviations: only used modules are built (the code also "
               "registers an unused resnet4 and unused layer4/fc of local nets: 82.6M vs 25.9M); "
               f"fc_loc starts at the identity transform (stn_identity_init={stn_identity_init}; "
               "the code uses default init); affine_grid written as a matmul (same values). "
               f"regions={regions!r}: 'landmarks' (ferdata.regions' boxes around iBUG-68 groups, "
               "resampled by roi_align to the fixed crop sizes, so aspect ratios change) is our "
               "interpretation, not public code. `pretrained`: MS-Celeb-1M "
               "ResNet-18 into all six trunks."))
    return PCNN(num_classes, card, regions, main_weight, local_weight, stn_identity_init, pretrained)
