"""Batch augmentation on the training device, after ``to_device`` and before normalisation.

Why on the device: decoding is the loader's whole budget (datasets_and_pipeline.md §5), so
workers only decode uint8 and the flips, affine warps and erasing run as a few batched tensor
ops on the GPU (or CPU). Random numbers come from a CPU generator seeded per step, so a step's
augmentation is the same on CPU and GPU and after a resume.

Geometry stays consistent across a sample's fields:

* horizontal flip: the image flips, the landmark heatmap flips, landmarks are mirrored and
  re-indexed with ``FLIP_68``, and the halves swap (the stored right half is already mirrored).
  A flipped crop is the mirror image of the crop, not quite the crop ``align_face`` makes of the
  mirrored photo: the ArcFace template is not symmetric about the crop's centre (its centroid
  sits at x = 56.03 of 112, the mirror axis at 55.5; its eyes and mouth corners are not level),
  so the two differ by about 1 px and 0.6 degrees at 112 px, well inside the affine jitter;
* small affine (rotation, translation, scale, as torchvision's ``RandomAffine`` with black fill):
  one matrix per sample warps the image, the heatmap (same normalised grid, resampled: peak
  heights and widths change with the scale, by up to about 55/255 against a map drawn from the
  warped landmarks at a lone landmark, about 87/255 where peaks overlap (eyes, lips);
  ``resnet18_heatmap`` reads it as an attention mask) and the landmarks;
* random erasing (torchvision ``RandomErasing`` semantics, filled with the mean colour like
  ``value=0`` after ``Normalize``): one rectangle per sample on the image.

Halves go through the same ops: they are put side by side as a full face (left | flipped right),
transformed with the image's parameters and cut again, so a half always shows the warped and
erased face it came from.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ferdata.geometry import FLIP_68
from ferdata.params import above, at_least, below_from, check_values, within
from fermodels.modelinput import host_to

ERASE_LOG_RATIO = (math.log(0.3), math.log(3.3))   # torchvision RandomErasing's aspect ratios
ERASE_TRIES = 10                                      # its draws of a rectangle that fits (none fits: no erasing)
FLIP_INDEX = torch.as_tensor(FLIP_68)


@dataclass(frozen=True)
class AugmentParams:
    """Probabilities and ranges (params.yaml ``train.augment``); 0 probabilities disable a step."""

    hflip: float
    affine_p: float
    degrees: float
    translate: float          # max shift, fraction of the side
    scale_min: float
    scale_max: float
    erase_p: float
    erase_scale_min: float    # erased area, fraction of the image
    erase_scale_max: float

    def __post_init__(self) -> None:
        probability = (within(0, 1)[0], "a probability in [0, 1]")
        check_values("train.augment", self, {"hflip": probability, "affine_p": probability, "erase_p": probability,
                                             "degrees": at_least(0), "translate": below_from(0, 1),
                                             "scale_min": above(0), "scale_max": above(0),
                                             "erase_scale_min": above(0), "erase_scale_max": below_from(0, 1)})
        if not 0 < self.scale_min <= self.scale_max or not 0 < self.erase_scale_min <= self.erase_scale_max < 1:
            raise ValueError("train.augment: need 0 < scale_min <= scale_max and "
                             "0 < erase_scale_min <= erase_scale_max < 1")


def flip_lmk(lmk: Tensor, width: int) -> Tensor:
    """Landmarks of the mirrored image (pixel-centre convention, iBUG-68 re-indexed)."""
    out = lmk[:, host_to(FLIP_INDEX, lmk.device)].clone()
    out[..., 0] = (width - 1) - out[..., 0]
    return out


def hflip_batch(batch: dict, mask: Tensor | None = None) -> dict:
    """Mirror the samples where ``mask`` ((n,) bool; all when None); used by training and flip
    TTA. Only the chosen samples are copied and flipped, in the batch's dtype: uint8 pixels flip
    before their conversion to float."""
    rows = None if mask is None else host_to(mask.nonzero().squeeze(1), batch["image"].device)

    def pick(orig: Tensor, new: Callable[[Tensor | slice], Tensor]) -> Tensor:
        """``orig`` with the chosen rows replaced by ``new`` of those rows."""
        return new(slice(None)) if rows is None else _replace_rows(orig, rows, new)

    out = dict(batch)
    for name in ("image", "heatmap", "halves"):     # halves: augment's (left | mirrored right) side by side
        if name in batch:
            x = batch[name]
            out[name] = pick(x, lambda r, x=x: x[r].flip(-1))
    if "left" in batch:
        left, right = batch["left"], batch["right"]
        out["left"], out["right"] = pick(left, lambda r: right[r]), pick(right, lambda r: left[r])
    if "lmk" in batch:
        lmk, width = batch["lmk"], batch["image"].shape[-1]
        out["lmk"] = pick(lmk, lambda r: flip_lmk(lmk[r], width))
    return out


def _replace_rows(orig: Tensor, rows: Tensor, new: Callable[[Tensor | slice], Tensor]) -> Tensor:
    """A copy of ``orig`` whose samples ``rows`` (indices, any device) are ``new(rows)``: one kernel
    on a GPU; sample by sample on a CPU, where ``index_copy`` copies element by element (half of a
    uint8 batch of 64 at 112 px: 34 us a sample against 5 for the rows' slices). The copy keeps
    ``orig``'s memory format (``normalise`` lays the batch out as the model wants)."""
    rows = rows.to(orig.device)
    if orig.device.type != "cpu":
        return orig.index_copy(0, rows, new(rows))
    out = orig.clone()
    for r in rows.tolist():
        out[r:r + 1] = new(slice(r, r + 1))
    return out


def _affine_matrices(n: int, p: AugmentParams, g: torch.Generator) -> Tensor:
    """(n, 3, 3) forward maps in normalised coordinates (identity where not drawn)."""
    u = torch.rand(n, 5, generator=g)
    angle = torch.deg2rad((u[:, 0] * 2 - 1) * p.degrees)
    scale = p.scale_min + u[:, 1] * (p.scale_max - p.scale_min)
    shift = (u[:, 2:4] * 2 - 1) * p.translate * 2          # normalised units span 2 per side
    on = u[:, 4] < p.affine_p
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    m = torch.eye(3).repeat(n, 1, 1)
    m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = cos, -sin, shift[:, 0]
    m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = sin, cos, shift[:, 1]
    return torch.where(on.view(-1, 1, 1), m, torch.eye(3).expand(n, 3, 3))


def _warp(x: Tensor, inverse: Tensor) -> Tensor:
    """Resample ``x`` (B, C, H, W) so output point q shows input point ``inverse @ q``."""
    grid = F.affine_grid(inverse[:, :2].to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _warp_points(lmk: Tensor, forward: Tensor, size: int) -> Tensor:
    """Pixel-centre points through a normalised-coordinate map (align_corners=False)."""
    u = (2 * lmk + 1) / size - 1
    u = u @ forward[:, :2, :2].transpose(1, 2).to(u.dtype) + forward[:, None, :2, 2].to(u.dtype)
    return ((u + 1) * size - 1) / 2


def _erase_masks(n: int, size: int, p: AugmentParams, g: torch.Generator, device: torch.device) -> Tensor:
    """(n, 1, size, size) boolean masks on ``device``, one rectangle per drawn sample: as torchvision's
    RandomErasing, up to :data:`ERASE_TRIES` (area, aspect) draws, the first whose rectangle fits inside
    the image (clamping one that did not gave a smaller area than drawn, along a whole side). The draws and
    the rectangles are the CPU's (the same on every device); the masks are made on ``device``: made
    on the CPU they took 13-143 ms a step at batch 512 and a pageable copy of up to 26 MB."""
    u = torch.rand(n, 3, generator=g)
    shape = torch.rand(n, ERASE_TRIES, 2, generator=g)
    area = (p.erase_scale_min + shape[..., 0] * (p.erase_scale_max - p.erase_scale_min)) * size * size
    ratio = torch.exp(ERASE_LOG_RATIO[0] + shape[..., 1] * (ERASE_LOG_RATIO[1] - ERASE_LOG_RATIO[0]))
    hs, ws = torch.sqrt(area * ratio).round(), torch.sqrt(area / ratio).round()
    fits = (hs >= 1) & (ws >= 1) & (hs < size) & (ws < size)
    first = fits.float().argmax(1, keepdim=True)          # torchvision: the first draw that fits, else none
    h, w = hs.gather(1, first)[:, 0], ws.gather(1, first)[:, 0]
    on = fits.any(1) & (u[:, 2] < p.erase_p)
    h, w = torch.where(on, h, 1.0), torch.where(on, w, 1.0)
    top = (u[:, 0] * (size - h + 1)).floor()
    left = (u[:, 1] * (size - w + 1)).floor()
    box = host_to(torch.stack([top, top + h, left, left + w, on.float()], 1), device)
    idx = torch.arange(size, dtype=torch.float32, device=device)
    rows = (idx >= box[:, 0, None]) & (idx < box[:, 1, None])
    cols = (idx >= box[:, 2, None]) & (idx < box[:, 3, None])
    on = (box[:, 4] > 0)[:, None, None]
    return (rows[:, :, None] & cols[:, None, :] & on)[:, None]


def augment_batch(batch: dict, p: AugmentParams, g: torch.Generator, fill: Tensor) -> dict:
    """Augment a device batch in pixel space (0..255: uint8 as decoded, or float after scaling on
    the device; float after a warp or erasing); ``fill`` is the (3,) erase colour."""
    image = batch["image"]
    n, size, dev = image.shape[0], image.shape[-1], image.device
    out = {k: v for k, v in batch.items() if k not in ("left", "right")}
    if "left" in batch:
        out["halves"] = torch.cat([batch["left"], batch["right"].flip(-1)], dim=-1)
    flip = torch.rand(n, generator=g) < p.hflip
    if p.hflip > 0:
        out = hflip_batch(out, flip)
    if p.affine_p > 0 or p.erase_p > 0:          # resampling and fill colours need float pixels
        out.update({k: out[k].float() for k in ("image", "halves", "heatmap") if k in out})
    if p.affine_p > 0:
        forward = _affine_matrices(n, p, g)
        inverse = host_to(torch.linalg.inv(forward), dev)
        for name in ("image", "halves", "heatmap"):
            if name in out:
                out[name] = _warp(out[name], inverse)
        if "lmk" in out:
            out["lmk"] = _warp_points(out["lmk"], host_to(forward, dev), size)
    if p.erase_p > 0:
        mask = _erase_masks(n, size, p, g, dev)
        colour = host_to(fill, dev).to(out["image"].dtype).view(1, 3, 1, 1)
        for name in ("image", "halves"):
            if name in out:
                out[name] = torch.where(mask, colour, out[name])
    if "halves" in out:
        halves = out.pop("halves")
        out["left"], out["right"] = halves[..., : size // 2], halves[..., size // 2:].flip(-1)
    return out
