"""Region boxes for PCNN-style local branches, in aligned-crop pixels ``[x0, y0, x1, y1]``.

Two modes, chosen by name (``REGION_MODES``):

* ``fixed``: the fractions of PCNN's public code (hellloxiaotian/PCNN network/models.py,
  w1 = 0.5, h1 = 0.5, h2 = 0.65, cut with ``int(size * fraction)`` as the code does), so
  at 224 the eyes are 112 x 112, the cheeks 33 x 112 and the mouth 79 x 224.
* ``landmarks``: boxes around iBUG-68 groups (eye with brow, cheek, mouth), grown by a
  margin and clipped to the crop, for faces whose parts do not sit where the fixed
  fractions expect them (pose, loose crops).

Boxes are half-open (``x1``/``y1`` exclusive) like the code's slices, so
``image[y0:y1, x0:x1]`` is the crop (:func:`crop_regions`).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ferdata.registry import Registry

REGION_NAMES = ("eye_left", "eye_right", "cheek_left", "cheek_right", "mouth")

# iBUG-68 points bounding each region in landmark mode ("left" = image left).
LANDMARK_GROUPS: dict[str, tuple[int, ...]] = {
    "eye_left": (*range(17, 22), *range(36, 42)),
    "eye_right": (*range(22, 27), *range(42, 48)),
    "cheek_left": (1, 2, 3, 4, 31, 40, 41, 48),
    "cheek_right": (12, 13, 14, 15, 35, 46, 47, 54),
    "mouth": tuple(range(48, 68)),
}

Boxes = dict[str, list[float]]
REGION_MODES: Registry[Callable[..., Boxes]] = Registry("region mode")


def _cut(size: int, fraction: float) -> int:
    # The public code multiplies by a float32 torch scalar and truncates; mirror that exactly.
    return int(np.float32(size) * np.float32(fraction))


@REGION_MODES.register("fixed")
def fixed_regions(size: int, w1: float = 0.5, h1: float = 0.5, h2: float = 0.65) -> Boxes:
    """PCNN's fixed-fraction regions of a ``size`` x ``size`` aligned face; the defaults are PCNN's (``h1``
    was 0.4 before the code's commit 1656fc6)."""
    if not (0 < w1 < 1 and 0 < h1 < h2 < 1):
        raise ValueError(f"need 0 < w1 < 1 and 0 < h1 < h2 < 1, got w1={w1}, h1={h1}, h2={h2}")
    w, a, b, s = _cut(size, w1), _cut(size, h1), _cut(size, h2), size
    return {
        "eye_left": [0, 0, w, a], "eye_right": [w, 0, s, a],
        "cheek_left": [0, a, w, b], "cheek_right": [w, a, s, b],
        "mouth": [0, b, s, s],
    }


@REGION_MODES.register("landmarks")
def landmark_regions(lmk68: np.ndarray, size: int, margin: float = 0.15) -> Boxes:
    """Boxes around landmark groups, grown by ``margin`` of their extent (+2 px) per side
    and clipped to the crop; coordinates rounded to 0.01 px. Landmarks are pixel-centre
    coordinates (pixel i at i), box edges are not (pixel i spans [i, i + 1)): a point adds 0.5."""
    p = np.asarray(lmk68, np.float32)
    if p.shape != (68, 2):
        raise ValueError(f"landmark regions need (68, 2) landmarks, got {p.shape}")
    out: Boxes = {}
    for name in REGION_NAMES:
        pts = p[list(LANDMARK_GROUPS[name])] + 0.5       # pixel centres -> edge coordinates
        lo, hi = pts.min(0), pts.max(0)
        pad = (hi - lo) * margin + 2.0
        lo, hi = np.clip(lo - pad, 0, size), np.clip(hi + pad, 0, size)
        out[name] = [round(float(v), 2) for v in (*lo, *hi)]
    return out


def region_boxes(mode: str, size: int, lmk68: np.ndarray | None = None, **kwargs: float) -> Boxes:
    """Boxes by mode name (``fixed`` or ``landmarks``); landmark mode needs ``lmk68``."""
    fn = REGION_MODES.get(mode)
    if mode == "landmarks":
        if lmk68 is None:
            raise ValueError("region mode 'landmarks' needs the sample's 68 landmarks (lmk.npy)")
        return fn(lmk68, size, **kwargs)
    return fn(size, **kwargs)


def crop_regions(image: np.ndarray, boxes: Boxes) -> dict[str, np.ndarray]:
    """The pixels of each box (integer-snapped: floor of the start, ceil of the end)."""
    h, w = image.shape[:2]
    out = {}
    for name, (x0, y0, x1, y1) in boxes.items():
        c0, r0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
        c1, r1 = min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))
        if c1 <= c0 or r1 <= r0:
            raise ValueError(f"region {name!r} box {[x0, y0, x1, y1]} is empty inside a {w}x{h} image")
        out[name] = np.ascontiguousarray(image[r0:r1, c0:c1])
    return out
