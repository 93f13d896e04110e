"""Region boxes for PCNN-style local branches, in aligned-crop pixels (x0, y0, x1, y1).

``fixed``: the fractions of PCNN's public code (w1 = 0.5, h1 = 0.5, h2 = 0.65).
``landmarks``: boxes around iBUG-68 groups (eyes with brows, cheeks, mouth).
"""
from __future__ import annotations

import numpy as np

REGION_NAMES = ("eye_left", "eye_right", "cheek_left", "cheek_right", "mouth")


def fixed_regions(size: int, w1: float = 0.5, h1: float = 0.5, h2: float = 0.65) -> dict[str, list[float]]:
    w, a, b = size * w1, size * h1, size * h2
    s = float(size)
    return {
        "eye_left": [0.0, 0.0, w, a], "eye_right": [w, 0.0, s, a],
        "cheek_left": [0.0, a, w, b], "cheek_right": [w, a, s, b],
        "mouth": [0.0, b, s, s],
    }


def landmark_regions(lmk68: np.ndarray, size: int, margin: float = 0.15) -> dict[str, list[float]]:
    """Boxes around landmark groups, grown by ``margin`` of their size and clipped to the crop."""
    p = np.asarray(lmk68, np.float32)
    groups = {
        "eye_left": np.r_[17:22, 36:42], "eye_right": np.r_[22:27, 42:48],
        "cheek_left": np.r_[1:6, 31, 48], "cheek_right": np.r_[11:16, 35, 54],
        "mouth": np.r_[48:68],
    }
    out = {}
    for name, idx in groups.items():
        lo, hi = p[idx].min(0), p[idx].max(0)
        pad = (hi - lo) * margin + 2.0
        lo, hi = np.clip(lo - pad, 0, size), np.clip(hi + pad, 0, size)
        out[name] = [round(float(v), 2) for v in (*lo, *hi)]
    return out
