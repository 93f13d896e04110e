"""Landmark layouts -> iBUG-68, so every backend ends in one order.

* insightface ``2d106det`` (106 points, "ordered by point names", i.e. the markup's
  names sorted as strings, which is why the jaw indices look scrambled) -> 68 by
  picking the semantically matching point for each iBUG index. The table is the one
  used across the insightface ecosystem (e.g. DMDNet's ``landmarks106_to_68``);
  the tests check it against the 106 layout's part ranges (``PARTS_106``).
* insightface ``1k3d68`` already is iBUG-68 (x, y, z): drop z.
"""
from __future__ import annotations

import numpy as np

# IBUG_FROM_106[i] = index into the 106-point array of iBUG point i.
IBUG_FROM_106 = np.array(
    [1, 10, 12, 14, 16, 3, 5, 7, 0, 23, 21, 19, 32, 30, 28, 26, 17,   # jaw 0-16
     43, 48, 49, 51, 50,                                              # brow (image left) 17-21
     102, 103, 104, 105, 101,                                         # brow (image right) 22-26
     72, 73, 74, 86,                                                  # nose bridge 27-30
     78, 79, 80, 85, 84,                                              # nostrils 31-35
     35, 41, 42, 39, 37, 36,                                          # eye (image left) 36-41
     89, 95, 96, 93, 91, 90,                                          # eye (image right) 42-47
     52, 64, 63, 71, 67, 68, 61, 58, 59, 53, 56, 55,                  # outer lips 48-59
     65, 66, 62, 70, 69, 57, 60, 54],                                 # inner lips 60-67
    dtype=np.int64,
)

# Part ranges of the 106 layout (as used by insightface-based tools); "1" = image left.
PARTS_106: dict[str, range] = {
    "contour": range(0, 33), "eye1": range(33, 43), "brow1": range(43, 52),
    "mouth": range(52, 72), "nose": range(72, 87), "eye2": range(87, 97), "brow2": range(97, 106),
}

LAYOUTS = {68: "ibug68", 106: "insightface106"}


def ibug68_from_106(points: np.ndarray) -> np.ndarray:
    """(106, 2+) insightface 2d106det points -> (68, 2) iBUG-68 float32."""
    pts = np.asarray(points, np.float32)
    if pts.ndim != 2 or pts.shape[0] != 106 or pts.shape[1] < 2:
        raise ValueError(f"expected (106, 2) landmarks, got {pts.shape}")
    return np.ascontiguousarray(pts[IBUG_FROM_106, :2])


def to_ibug68(points: np.ndarray) -> np.ndarray:
    """Any supported layout (68 x 2/3 iBUG, 106 x 2 insightface) -> (68, 2) iBUG float32."""
    pts = np.asarray(points, np.float32)
    if pts.ndim != 2 or pts.shape[0] not in LAYOUTS or pts.shape[1] < 2:
        raise ValueError(f"no iBUG-68 mapping for landmarks of shape {pts.shape}; "
                         f"known layouts: {', '.join(f'{k} points ({v})' for k, v in LAYOUTS.items())}")
    if pts.shape[0] == 106:
        return ibug68_from_106(pts)
    return np.ascontiguousarray(pts[:, :2])
