"""The expression model: each class as landmark displacements and skin creases.

Everything here lives in the face frame (origin between the eyes, y down, one unit about
the inter-ocular distance; see ``sources``). A class is a table of iBUG-68 moves at
intensity 1 (``EXPRESSIONS``), the creases that come with its action units (``FOLDS``)
and AffectNet-like valence/arousal. ``neutralise`` first closes and relaxes a source
mouth, so that a smiling source photo does not make every class look Happy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ferdata.geometry import FLIP_68

CLOSED_MOUTH = 0.05              # source inner-lip gap (face units) below which a mouth is closed
INTENSITY = (0.85, 1.15)         # per-image expression strength multiplier

# iBUG-68 groups used by the expression model.
BROWS = tuple(range(17, 27))
UPPER_LIDS = (37, 38, 43, 44)
INNER_PAIRS = ((61, 67), (62, 66), (63, 65))            # upper/lower inner-lip partners
OUTER_FOLLOW = {49: (61, 0.5), 50: (61, 1.0), 51: (62, 1.0), 52: (63, 1.0), 53: (63, 0.5),
                59: (67, 0.5), 58: (67, 1.0), 57: (66, 1.0), 56: (65, 1.0), 55: (65, 0.5)}
MOUTH = tuple(range(48, 68))
INNER_RING = tuple(range(60, 68))
CORNER_GROUPS = (((48, 60), (49, 59, 61, 67), (50, 58)), ((54, 64), (53, 55, 63, 65), (52, 56)))


@dataclass(frozen=True)
class Expression:
    """Landmark displacements (face units) of one class at intensity 1.

    ``moves`` lists image-left and midline points; with ``mirror`` the FLIP_68 partner
    gets the x-mirrored move (x < 0 is outward on the image-left side). ``mouth`` is
    what is painted between parted inner lips: None, "teeth" or "dark" (a cavity).
    """

    moves: Mapping[int, tuple[float, float]]
    mouth: str | None = None
    mirror: bool = True


EXPRESSIONS: Mapping[int, Expression] = {
    0: Expression({}),
    1: Expression({    # Happy: corners up and out, lips parted over teeth, cheeks and lower lids up
        48: (-0.11, -0.14), 60: (-0.09, -0.13), 49: (-0.06, -0.08), 59: (-0.06, -0.05),
        61: (-0.04, -0.07), 67: (-0.04, -0.01), 50: (-0.02, -0.04), 58: (-0.02, 0.02),
        51: (0.0, -0.04), 57: (0.0, 0.05), 62: (0.0, -0.07), 66: (0.0, 0.06),
        2: (-0.01, -0.03), 3: (-0.01, -0.05), 4: (0.0, -0.04), 40: (0.0, -0.035), 41: (0.0, -0.035),
    }, "teeth"),
    2: Expression({    # Sad: an arched mouth (corners down, middle pushed up), inner brows up, lids heavy
        48: (0.03, 0.20), 60: (0.03, 0.18), 49: (0.0, 0.05), 59: (0.01, 0.08), 61: (0.0, 0.0),
        67: (0.01, 0.02), 50: (0.0, -0.03), 51: (0.0, -0.05), 62: (0.0, -0.05), 66: (0.0, -0.05),
        58: (0.0, -0.05), 57: (0.0, -0.08), 8: (0.0, -0.02),
        21: (0.06, -0.15), 20: (0.03, -0.08), 19: (0.0, -0.02), 18: (0.0, 0.03), 17: (0.0, 0.07),
        37: (0.0, 0.06), 38: (0.0, 0.07), 36: (0.0, 0.02),
    }),
    3: Expression({    # Surprise: brows up, eyes wide, jaw dropped into an O-shaped open mouth
        17: (0.0, -0.13), 18: (0.0, -0.17), 19: (0.0, -0.19), 20: (0.0, -0.18), 21: (0.0, -0.16),
        37: (0.0, -0.07), 38: (0.0, -0.07), 36: (0.0, -0.01), 39: (0.0, -0.01),
        40: (0.0, 0.03), 41: (0.0, 0.03),
        48: (0.09, 0.17), 60: (0.08, 0.17), 49: (0.04, -0.01), 50: (0.01, -0.04), 51: (0.0, -0.04),
        61: (0.02, -0.03), 62: (0.0, -0.04), 59: (0.05, 0.31), 58: (0.02, 0.38), 57: (0.0, 0.40),
        67: (0.04, 0.34), 66: (0.0, 0.38),
        8: (0.0, 0.33), 7: (0.0, 0.30), 6: (0.01, 0.23), 5: (0.02, 0.15), 4: (0.02, 0.07), 3: (0.01, 0.02),
    }, "dark"),
    4: Expression({    # Fear: brows up and together, eyes wide, mouth stretched and a little open
        21: (0.05, -0.14), 20: (0.02, -0.12), 19: (0.0, -0.09), 18: (0.0, -0.06), 17: (0.0, -0.03),
        37: (0.0, -0.07), 38: (0.0, -0.07), 40: (0.0, 0.02), 41: (0.0, 0.02),
        48: (-0.09, 0.05), 60: (-0.08, 0.05), 59: (-0.04, 0.10), 58: (-0.01, 0.13), 57: (0.0, 0.14),
        67: (-0.03, 0.11), 66: (0.0, 0.13), 8: (0.0, 0.08), 7: (0.0, 0.07), 6: (0.0, 0.05),
    }, "dark"),
    5: Expression({    # Disgust: upper lip and nose wrinkled up, brows down, lower lids up
        49: (0.0, -0.07), 50: (0.0, -0.09), 51: (0.0, -0.09), 61: (0.0, -0.08), 62: (0.0, -0.08),
        48: (0.02, -0.02), 60: (0.02, -0.02), 57: (0.0, 0.03), 31: (-0.02, -0.05), 32: (0.0, -0.04),
        33: (0.0, -0.03), 21: (0.03, 0.07), 20: (0.02, 0.06), 19: (0.0, 0.05), 18: (0.0, 0.04),
        17: (0.0, 0.03), 40: (0.0, -0.04), 41: (0.0, -0.04),
    }, "teeth"),
    6: Expression({    # Anger: brows down and together, eyes narrowed, lips pressed thin and narrow
        21: (0.13, 0.21), 20: (0.08, 0.17), 19: (0.03, 0.11), 18: (0.01, 0.05), 17: (0.0, 0.01),
        40: (0.0, -0.04), 41: (0.0, -0.04), 37: (0.0, 0.04), 38: (0.0, 0.05),
        49: (0.03, 0.04), 50: (0.01, 0.06), 51: (0.0, 0.065), 59: (0.03, -0.04), 58: (0.01, -0.065),
        57: (0.0, -0.075), 48: (0.07, 0.02), 60: (0.06, 0.02), 31: (-0.03, -0.02),
    }),
    7: Expression({   # Contempt: one mouth corner raised and pulled back
        48: (-0.07, -0.11), 60: (-0.06, -0.10), 49: (-0.03, -0.05), 59: (-0.03, -0.04),
        61: (-0.02, -0.03), 67: (-0.02, -0.02),
    }, mirror=False),
}


@dataclass(frozen=True)
class Fold:
    """A skin crease drawn as a soft dark line, the texture cue that comes with an
    action unit (glabellar furrows with lowered brows, forehead lines with raised
    brows, nasolabial folds with a smile). Points are (landmarks averaged, dx, dy) in
    face units, so a crease follows the warped features; ``mirror`` adds the
    image-right twin."""

    points: tuple[tuple[tuple[int, ...], float, float], ...]
    depth: float                 # relative darkening at the crease centre, intensity 1
    width: float                 # crease sigma, face units
    mirror: bool = True


def _arc(anchor: tuple[int, ...], y: float, half: float, bend: float) -> tuple:
    """Points of a curved crease at height ``y`` from ``anchor``, ``half`` wide, whose
    ends sit ``bend`` lower (negative: higher)."""
    return ((anchor, -half, y + bend), (anchor, -half / 2, y + bend / 4), (anchor, 0.0, y),
            (anchor, half / 2, y + bend / 4), (anchor, half, y + bend))


BROW_MID = (21, 22)
NASOLABIAL = Fold((((31,), -0.07, 0.0), ((48,), -0.09, -0.08), ((48,), -0.07, 0.1)), 0.26, 0.028)
FOLDS: Mapping[int, tuple[Fold, ...]] = {
    0: (),
    1: (NASOLABIAL,),
    2: (Fold(((BROW_MID, -0.05, 0.0), (BROW_MID, -0.04, -0.13)), 0.14, 0.018),),
    3: tuple(Fold(_arc(BROW_MID, y, 0.6, 0.07), 0.18, 0.022, mirror=False) for y in (-0.2, -0.33, -0.46)),
    4: (Fold(_arc(BROW_MID, -0.16, 0.25, 0.05), 0.2, 0.02, mirror=False),
        Fold(_arc(BROW_MID, -0.29, 0.22, 0.05), 0.16, 0.02, mirror=False)),
    5: (Fold((((28, 29), -0.13, 0.02), ((28, 29), -0.04, -0.03)), 0.23, 0.02),
        Fold((((27, 28), -0.11, 0.03), ((27, 28), -0.03, -0.01)), 0.18, 0.02), NASOLABIAL),
    6: (Fold(((BROW_MID, -0.065, 0.03), (BROW_MID, -0.05, -0.1), (BROW_MID, -0.04, -0.22)), 0.31, 0.02),
        Fold((((27,), -0.09, 0.03), ((27,), 0.0, 0.045), ((27,), 0.09, 0.03)), 0.16, 0.018, mirror=False)),
    7: (Fold((((48,), -0.06, -0.06), ((48,), -0.05, 0.04)), 0.23, 0.022, mirror=False),),
}

# AffectNet-like valence/arousal per class at full intensity (the sample's own values).
VALENCE_AROUSAL: Mapping[int, tuple[float, float]] = {
    0: (0.0, 0.0), 1: (0.75, 0.45), 2: (-0.65, -0.3), 3: (0.2, 0.8),
    4: (-0.6, 0.75), 5: (-0.65, 0.35), 6: (-0.55, 0.65), 7: (-0.45, 0.25),
}


def mouth_gap(lmk: np.ndarray) -> float:
    """Mean inner-lip opening of face-frame landmarks (about 0 for a closed mouth)."""
    return float(np.mean([lmk[low, 1] - lmk[up, 1] for up, low in INNER_PAIRS]))


def _displacements(expr: Expression) -> np.ndarray:
    """(68, 2) displacement field of an expression, mirrored to the right where symmetric."""
    d = np.zeros((68, 2))
    for i, (dx, dy) in expr.moves.items():
        d[i] = (dx, dy)
        j = int(FLIP_68[i])
        if expr.mirror and j != i:
            d[j] = (-dx, dy)
    return d


def neutralise(lmk: np.ndarray) -> np.ndarray:
    """Move a source face's mouth to a closed, relaxed position.

    Several package faces smile; without this their Neutral images would look Happy.
    Lips are closed onto their midline, raised mouth corners lowered to the lip line
    and a wide (smiling) mouth narrowed. Everything else is untouched.
    """
    out = lmk.copy()
    shift = np.zeros(68)
    for up, low in INNER_PAIRS:
        mid = (lmk[up, 1] + lmk[low, 1]) / 2
        shift[up], shift[low] = mid - 0.005 - lmk[up, 1], mid + 0.005 - lmk[low, 1]
    for i, (inner, w) in OUTER_FOLLOW.items():
        shift[i] = w * shift[inner]
    out[:, 1] += shift
    lip_line = (out[62, 1] + out[66, 1]) / 2
    for corners, near, far in CORNER_GROUPS:
        dy = max(0.0, lip_line - 0.06 - out[corners[0], 1])
        out[list(corners), 1] += dy
        out[list(near), 1] += 0.5 * dy
        out[list(far), 1] += 0.2 * dy
    width = out[54, 0] - out[48, 0]
    if width > 0.92:
        cx = (out[54, 0] + out[48, 0]) / 2
        out[list(MOUTH), 0] = cx + (out[list(MOUTH), 0] - cx) * (0.92 / width)
    return out


def natural_variation(lmk: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Small class-independent shape changes (mouth width, brow height, eye opening)
    so Neutral is a spread of faces and every class is warped the same way."""
    out = lmk.copy()
    cx = out[list(MOUTH), 0].mean()
    out[list(MOUTH), 0] = cx + (out[list(MOUTH), 0] - cx) * rng.uniform(0.95, 1.05)
    out[list(BROWS), 1] += rng.uniform(-0.03, 0.03)
    out[list(UPPER_LIDS), 1] += rng.uniform(-0.015, 0.015)
    return out


def expression_shape(neutral: np.ndarray, cls: int, intensity: float) -> np.ndarray:
    """Target landmarks (face frame) of class ``cls`` at ``intensity`` (1 = table values)."""
    return neutral + intensity * _displacements(EXPRESSIONS[cls])
