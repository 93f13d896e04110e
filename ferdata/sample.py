"""A deterministic, offline smoke-test dataset in AffectNet's official on-disk layout.

Why: ``dvc repro`` on a fresh clone must run detect -> align -> train -> evaluate with
no download and no licensed data, and the trained model must clearly beat chance so a
broken stage shows up as a broken number. Real face photos that ship inside installed
packages (scikit-image, matplotlib, insightface) are detected once with the embedded
backend; each face then gets a *synthetic* expression from a landmark-driven
thin-plate-spline warp, a random pose, lighting and background, and is written as
``Manually_Annotated_Images/<dir>/<name>.jpg`` plus ``training.csv``/``validation.csv``
with the warped 68 landmarks and the face box. The expressions are caricatures made by
moving landmarks: use the sample to test the pipeline, never for research claims
(docs/sample_dataset.md).

Geometry lives in a per-face "face frame": an upright face, origin between the eyes,
y down, one unit about the inter-ocular distance (fitted on the nose and eye corners). Expressions are
landmark displacements in that frame; each output pixel is mapped back once
(output -> pose inverse -> spline -> portrait pixel), so every class goes through the
same single resampling and no class is blurrier than another.
"""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np

from ferdata.classes import CLASSES
from ferdata.datasets.affectnet import COLUMNS, IMAGES, LIST_DIRS, LISTS
from ferdata.geometry import FLIP_68, similarity_matrix, transform_points
from ferdata.io import atomic_write_bytes, atomic_write_text, decode_rgb, encode_jpeg

log = logging.getLogger(__name__)

# The reader's own names, so the writer cannot drift from what AffectNetReader expects.
IMAGES_DIR = IMAGES
LISTS_DIR = LIST_DIRS[0]                                # Manually_Annotated_file_lists
CSV_NAMES = {"train": LISTS["train"], "validation": LISTS["test"]}
SPLIT_DIRS = {"train": "1", "validation": "2"}          # AffectNet's <subDirectory> is numeric
MARKER = "sample_summary.json"                          # marks a folder this module may replace

# Rigid iBUG-68 points (nose, eye corners) in the face frame: the mean of the frontal
# package faces, mirrored to be symmetric. Fitting them (not just the eyes) keeps the
# frame's scale sane for turned faces, whose eye distance is foreshortened.
RIGID_REFERENCE: Mapping[int, tuple[float, float]] = {
    27: (0.0, -0.03), 28: (0.0, 0.19), 29: (0.0, 0.41), 30: (0.0, 0.63),
    31: (-0.24, 0.74), 32: (-0.13, 0.79), 33: (0.0, 0.83), 34: (0.13, 0.79), 35: (0.24, 0.74),
    36: (-0.69, -0.01), 39: (-0.31, 0.02), 42: (0.31, 0.02), 45: (0.69, -0.01),
}
PORTRAIT_UNIT = 64.0             # portrait pixels per face unit (caps the source resolution)
PORTRAIT_EXTENT = (-3.2, -2.8, 3.2, 3.8)   # x0, y0, x1, y1 of the stored portrait, face units
LFW_UPSCALE = 8                  # lfw_subset faces are 25x25; upscaled before detection
LFW_PAD = 100
LFW_MIN_FRONTAL = 0.5            # LFW faces more turned than this get unusable warps
CLOSED_MOUTH = 0.05              # source inner-lip gap (face units) below which a mouth is closed
EASY_FRONTAL = 0.6               # half-face width ratio above which a face counts as frontal

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

INTENSITY = (0.85, 1.15)         # per-image expression strength multiplier
ROTATION_DEG = 15.0
SQUEEZE = (0.82, 1.0)            # horizontal scale about the face: a yaw-like foreshortening
PERSPECTIVE = 0.06
FACE_SCALE = (0.15, 0.22)        # output pixels per face unit, as a fraction of image size
SHIFT = 0.08                     # face-centre translation, fraction of image size
CONTEXT_P = 0.35                 # single-face photos keep their own surroundings this often
TEXTURE_P = 0.5                  # otherwise: a real texture crop, else a synthetic gradient
TEXTURES = ("coffee", "rocket", "brick", "grass", "gravel", "hubble_deep_field",
            "immunohistochemistry", "moon", "coins", "page", "text", "clock", "cell")
MAP_STEP = 4                     # the spline is evaluated every MAP_STEP output pixels
SPLINE_SMOOTHING = 1e-3


# ---- sources and identities ------------------------------------------------------------

@dataclass(frozen=True)
class Identity:
    """One real face, ready to be re-posed: a portrait with a validity channel and landmarks.

    ``portrait`` is float32 (H, W, 4): RGB in 0..255 plus a 0..1 mask of real pixels.
    ``to_portrait`` maps face-frame points to portrait pixels; ``lmk`` is the detected
    iBUG-68 in the face frame. ``context`` is True for single-face photos whose own
    surroundings can be shown; ``frontal`` measures how frontal the face is (1 = frontal).
    """

    name: str
    tier: str                    # "photo" or "lfw"
    portrait: np.ndarray
    to_portrait: np.ndarray
    lmk: np.ndarray
    context: bool
    frontal: float


def _insightface_image(name: str) -> np.ndarray:
    """An image from insightface's package data, found without importing insightface."""
    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("insightface is not installed; the sample needs its package images")
    path = Path(spec.submodule_search_locations[0]) / "data" / "images" / name
    return decode_rgb(path.read_bytes())


def _grey_rgb(grey: np.ndarray) -> np.ndarray:
    """A grey (H, W) image as RGB."""
    return np.repeat(grey[..., None], 3, axis=2)


def _padded(rgb: np.ndarray, scale: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """A tight face crop upscaled and padded so the detector sees some context;
    returns the image and the mask of pixels that came from the crop."""
    big = cv2.resize(rgb, (rgb.shape[1] * scale, rgb.shape[0] * scale), interpolation=cv2.INTER_CUBIC)
    out = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    valid = np.zeros(out.shape[:2], np.float32)
    valid[pad:pad + big.shape[0], pad:pad + big.shape[1]] = 1.0
    return out, valid


def _photo_sources() -> list[tuple[str, np.ndarray, np.ndarray | None, bool]]:
    """(name, RGB, validity mask or None, may-show-context) for the package photos."""
    import matplotlib.cbook
    import skimage.data

    grace = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes()
    tom, tom_valid = _padded(_insightface_image("Tom_Hanks_54745.png"), 2, 112)
    return [
        ("astronaut", np.ascontiguousarray(skimage.data.astronaut()[..., :3]), None, True),
        ("grace_hopper", decode_rgb(grace), None, True),
        ("t1", _insightface_image("t1.jpg"), None, False),          # 6 faces: never show context
        ("tom_hanks", tom, tom_valid, False),
    ]


def _face_frame(lmk68: np.ndarray) -> np.ndarray:
    """2x3 similarity mapping image pixels to the face frame (fit on rigid points)."""
    idx = sorted(RIGID_REFERENCE)
    return similarity_matrix(lmk68[idx], np.array([RIGID_REFERENCE[i] for i in idx]))


def _frontalness(lmk: np.ndarray) -> float:
    """1 for a frontal face, lower under yaw: the ratio of the two half-face widths
    (jaw contour ends to the nose line), measured in the face frame."""
    nose = lmk[27:31, 0].mean()
    left, right = nose - lmk[0:3, 0].mean(), lmk[14:17, 0].mean() - nose
    return float(max(0.0, min(left, right)) / max(left, right, 1e-6))


def _close_lips(portrait: np.ndarray, lmk_px: np.ndarray) -> None:
    """Paint lip colour over the teeth of an open source mouth (in place).

    Warps can close parted lips only approximately; without this, a smiling source
    shows teeth in every class, and teeth are the Happy cue.
    """
    rgb = portrait[..., :3]
    shape = rgb.shape[:2]
    unit = np.linalg.norm(lmk_px[42:48].mean(0) - lmk_px[36:42].mean(0))
    outer = _fill_poly(shape, lmk_px[48:60], 0.5)
    inner = _fill_poly(shape, lmk_px[60:68], max(0.5, 0.02 * unit))
    band = (outer > 0.5) & (inner < 0.05)
    lip = np.median(rgb[band], axis=0) if band.any() else rgb[outer > 0.5].mean(0)
    mid = np.vstack([lmk_px[60], *[(lmk_px[u] + lmk_px[d]) / 2 for u, d in INNER_PAIRS], lmk_px[64]])
    seam = np.zeros(shape, np.uint8)
    cv2.polylines(seam, [np.round(mid * 16).astype(np.int32)], False, 255,
                  max(1, int(round(0.03 * unit))), cv2.LINE_AA, shift=4)
    seam = cv2.GaussianBlur(seam.astype(np.float32) / 255.0, (0, 0), max(0.5, 0.015 * unit))
    fill = lip[None, None, :] * (1.0 - 0.45 * seam[..., None])
    rgb += (fill - rgb) * inner[..., None]


def _make_identity(name: str, tier: str, rgb: np.ndarray, valid: np.ndarray | None,
                   lmk68: np.ndarray, context: bool) -> Identity:
    """Resample the face into a portrait at <= PORTRAIT_UNIT px per face unit."""
    to_face = _face_frame(lmk68)
    src_unit = 1.0 / np.sqrt(abs(np.linalg.det(to_face[:, :2])))
    unit = min(PORTRAIT_UNIT, src_unit)
    x0, y0, x1, y1 = PORTRAIT_EXTENT
    to_portrait = np.array([[unit, 0.0, -x0 * unit], [0.0, unit, -y0 * unit]])
    full = to_portrait @ np.vstack([to_face, [0.0, 0.0, 1.0]])
    size = (int(np.ceil((x1 - x0) * unit)), int(np.ceil((y1 - y0) * unit)))
    flags = cv2.INTER_AREA if unit < src_unit * 0.8 else cv2.INTER_LINEAR
    if flags == cv2.INTER_AREA:          # warpAffine has no area filter: pre-shrink instead
        f = unit / src_unit
        rgb = cv2.resize(rgb, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        valid = None if valid is None else cv2.resize(valid, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        full = full @ np.diag([1.0 / f, 1.0 / f, 1.0])
    mask = np.ones(rgb.shape[:2], np.float32) if valid is None else valid
    rgba = np.dstack([rgb.astype(np.float32), mask])
    portrait = cv2.warpAffine(rgba, full, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=(0.0, 0.0, 0.0, 0.0))
    alpha = cv2.erode(portrait[..., 3], np.ones((5, 5), np.uint8))
    portrait[..., 3] = cv2.GaussianBlur(alpha, (0, 0), 0.04 * unit)
    lmk = transform_points(lmk68, to_face).astype(np.float64)
    if mouth_gap(lmk) > CLOSED_MOUTH:
        _close_lips(portrait, transform_points(lmk68, full))
    for arr in (portrait, lmk):
        arr.flags.writeable = False
    return Identity(name, tier, portrait, to_portrait, lmk, context, _frontalness(lmk))


@lru_cache(maxsize=1)
def load_identities() -> tuple[Identity, ...]:
    """Detect every package face once (embedded backend) and build its portrait.

    Photo identities: astronaut, grace_hopper, t1_0..t1_5 (the insightface group photo,
    left to right) and tom_hanks. LFW identities: the ``skimage.data.lfw_subset()``
    faces 0-99 on which a face is found after an 8x upscale and that are not strongly
    turned (``LFW_MIN_FRONTAL``). skimage's cameraman is
    left out: a small face turned about 60 degrees, on which frontal expression
    warps only make label noise.
    Cached: the detections are deterministic and cost a few seconds.
    """
    import skimage.data

    from ferdata.faces.embedded import EmbeddedBackend

    backend = EmbeddedBackend()
    out: list[Identity] = []
    for name, rgb, valid, context in _photo_sources():
        faces = sorted(backend.detect(rgb), key=lambda f: f.box[0])
        if not faces:
            raise RuntimeError(f"sample: no face found in package image {name!r}; the embedded backend changed")
        multi = len(faces) > 1
        for i, face in enumerate(faces):
            label = f"{name}_{i}" if multi else name
            out.append(_make_identity(label, "photo", rgb, valid, face.lmk68, context and not multi))
    lfw = skimage.data.lfw_subset()
    for i in range(100):
        grey = np.clip(np.round(lfw[i] * 255.0), 0, 255).astype(np.uint8)
        rgb, valid = _padded(_grey_rgb(grey), LFW_UPSCALE, LFW_PAD)
        faces = backend.detect(rgb)
        if faces:
            face = max(faces, key=lambda f: f.area)
            ident = _make_identity(f"lfw_{i:03d}", "lfw", rgb, valid, face.lmk68, False)
            if ident.frontal >= LFW_MIN_FRONTAL:
                out.append(ident)
    log.info("sample: %d identities (%d photo, %d lfw)", len(out),
             sum(i.tier == "photo" for i in out), sum(i.tier == "lfw" for i in out))
    return tuple(out)


# ---- expression model --------------------------------------------------------------------

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


def _natural_variation(lmk: np.ndarray, rng: np.random.Generator) -> np.ndarray:
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


def _gauss_jordan(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve ``a x = b`` by Gauss-Jordan elimination with partial pivoting in plain
    element-wise numpy (no LAPACK, so no BLAS threads); fine for ~100 unknowns."""
    n = len(a)
    m = np.hstack([a, b]).astype(np.float64)
    for i in range(n):
        p = i + int(np.argmax(np.abs(m[i:, i])))
        if abs(m[p, i]) < 1e-12:
            raise ValueError("thin-plate spline: singular system (coincident control points)")
        if p != i:
            m[[i, p]] = m[[p, i]]
        m[i] /= m[i, i]
        col = m[:, i].copy()
        col[i] = 0.0
        m -= col[:, None] * m[i]
    return m[:, n:]


class ThinPlateSpline:
    """2-D thin-plate spline through control points (with light smoothing against folds).

    Solved by ``_gauss_jordan``, not LAPACK: OpenBLAS (numpy's, and OpenCV's in
    ``cv2.solve``) threads this 103x103 solve, and its spinning threads doubled the CPU
    time of the whole run and made it up to 100x slower on a busy 2-core machine.
    ``@`` at the evaluation shapes stays single-threaded (``np.einsum`` does not).
    """

    def __init__(self, ctrl: np.ndarray, values: np.ndarray, smoothing: float) -> None:
        n = len(ctrl)
        k = self._kernel(ctrl, ctrl) + smoothing * np.eye(n)
        p = np.hstack([np.ones((n, 1)), ctrl])
        a = np.zeros((n + 3, n + 3))
        a[:n, :n], a[:n, n:], a[n:, :n] = k, p, p.T
        b = np.vstack([values, np.zeros((3, values.shape[1]))])
        sol = _gauss_jordan(a, b)
        self.ctrl, self.w, self.affine = ctrl, sol[:n], sol[n:]

    @staticmethod
    def _kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The TPS radial basis r^2 log r^2 between every row of ``a`` and of ``b``."""
        r2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.where(r2 > 0, r2 * np.log(np.maximum(r2, 1e-300)), 0.0)

    def __call__(self, pts: np.ndarray) -> np.ndarray:
        """The spline's values at (N, 2) points."""
        return self._kernel(pts, self.ctrl) @ self.w + self.affine[0] + pts @ self.affine[1:]


def _anchors() -> np.ndarray:
    """Fixed points around the head so the warp stays local to the face."""
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    inner = np.stack([1.8 * np.cos(t), 0.5 + 2.45 * np.sin(t)], 1)
    outer = np.stack([3.6 * np.cos(t), 0.5 + 4.5 * np.sin(t)], 1)
    return np.vstack([inner, outer])


ANCHORS = _anchors()


# ---- pose, rendering, background, colour ----------------------------------------------------

def _pose(rng: np.random.Generator, size: int, flip: bool) -> np.ndarray:
    """3x3 homography face frame -> output pixels: mirror, yaw-like squeeze and
    perspective, in-plane rotation, scale and translation."""
    sx = rng.uniform(*SQUEEZE) * (-1.0 if flip else 1.0)
    g = rng.uniform(-PERSPECTIVE, PERSPECTIVE)
    theta = np.deg2rad(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
    scale = size * rng.uniform(*FACE_SCALE)
    centre = size / 2 + rng.uniform(-SHIFT, SHIFT, 2) * size
    c, s = np.cos(theta), np.sin(theta)
    shift_face = np.array([[1, 0, 0], [0, 1, -0.6], [0, 0, 1.0]])        # face centre -> origin
    squeeze = np.diag([sx, 1.0, 1.0])
    persp = np.array([[1, 0, 0], [0, 1, 0], [g, 0, 1.0]])
    place = np.array([[scale * c, -scale * s, centre[0]], [scale * s, scale * c, centre[1]], [0, 0, 1.0]])
    return place @ persp @ squeeze @ shift_face


def _apply_h(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 3x3 homography to (N, 2) points."""
    p = np.hstack([pts, np.ones((len(pts), 1))]) @ h.T
    return p[:, :2] / p[:, 2:3]


def _fit_pose(rng: np.random.Generator, size: int, flip: bool, target: np.ndarray) -> np.ndarray:
    """Draw a pose whose landmarks (and a forehead margin) stay inside the image."""
    guard = np.vstack([target, [[0.0, -1.0], [-1.1, -0.5], [1.1, -0.5]]])
    h = _pose(rng, size, flip)
    for _ in range(50):
        pts = _apply_h(h, guard)
        if pts.min() >= 0.03 * size and pts.max() <= 0.97 * size:
            return h
        h = _pose(rng, size, flip)
    shrink = np.array([[0.8, 0, 0.1 * size], [0, 0.8, 0.1 * size], [0, 0, 1.0]])   # about the centre
    while True:
        pts = _apply_h(h, target)
        if pts.min() >= 1 and pts.max() <= size - 2:
            return h
        h = shrink @ h


def _coarse_grid(size: int, step: int) -> np.ndarray:
    """Output-pixel positions of a coarse grid with one extra sample beyond each edge,
    laid out so ``_dense`` (cv2.resize) interpolates it exactly back to every pixel."""
    n = -(-size // step)
    return (np.arange(-1, n + 1) + 0.5) * step - 0.5


def _dense(coarse: np.ndarray, size: int, step: int) -> np.ndarray:
    """Bilinearly upsample a ``_coarse_grid`` field (m, m, C) to (size, size, C)."""
    m = coarse.shape[0]
    big = cv2.resize(coarse.astype(np.float32), (m * step, m * step), interpolation=cv2.INTER_LINEAR)
    return big[step:step + size, step:step + size]


def _head_alpha(q: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Soft elliptical head mask over face-frame points ``q`` (..., 2)."""
    a, b = rng.uniform(1.4, 1.7), rng.uniform(2.0, 2.4)
    r = np.sqrt((q[..., 0] / a) ** 2 + ((q[..., 1] - 0.55) / b) ** 2)
    t = np.clip((1.0 - r) / 0.12, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _render_face(ident: Identity, target: np.ndarray, h: np.ndarray, size: int,
                 rng: np.random.Generator, context: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The warped face (float RGB), its alpha and every pixel's target face-frame
    position (for shading), all in the output frame, with one resampling."""
    ctrl = np.vstack([target, ANCHORS])
    vals = np.vstack([ident.lmk, ANCHORS])
    spline = ThinPlateSpline(ctrl, vals, SPLINE_SMOOTHING)
    pos = _coarse_grid(size, MAP_STEP)
    gx, gy = np.meshgrid(pos, pos)
    q = _apply_h(np.linalg.inv(h), np.stack([gx.ravel(), gy.ravel()], 1))
    src = transform_points(spline(q), ident.to_portrait).astype(np.float64)
    n = len(pos)
    head = np.ones(len(q)) if context else _head_alpha(q, rng)
    fields = np.dstack([src.reshape(n, n, 2), head.reshape(n, n, 1), q.reshape(n, n, 2)])
    dense = _dense(fields, size, MAP_STEP)
    rgba = cv2.remap(ident.portrait, np.ascontiguousarray(dense[..., 0]), np.ascontiguousarray(dense[..., 1]),
                     cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0.0, 0.0, 0.0, 0.0))
    return rgba[..., :3], rgba[..., 3] * dense[..., 2], dense[..., 3:5]


def _fold_points(fold: Fold, target: np.ndarray, mirror: bool) -> np.ndarray:
    """A fold's polyline in the face frame, optionally its mirror twin."""
    pts = []
    for idx, dx, dy in fold.points:
        ids = [int(FLIP_68[i]) for i in idx] if mirror else list(idx)
        pts.append(target[ids].mean(0) + ((-dx if mirror else dx), dy))
    return np.array(pts)


def _polyline_shade(q: np.ndarray, pts: np.ndarray, sigma: float) -> np.ndarray:
    """0..1 crease profile around a polyline, tapered to nothing at both ends."""
    seg = np.diff(pts, axis=0)
    lengths = np.hypot(seg[:, 0], seg[:, 1])
    total = max(float(lengths.sum()), 1e-9)
    best = np.zeros(q.shape[:2])
    start = 0.0
    for p0, d, length in zip(pts[:-1], seg, lengths):
        t = np.clip(((q - p0) * d).sum(-1) / max(length ** 2, 1e-12), 0.0, 1.0)
        dist2 = ((q - (p0 + t[..., None] * d)) ** 2).sum(-1)
        taper = np.sin(np.pi * (start + t * length) / total)
        best = np.maximum(best, taper * np.exp(-0.5 * dist2 / sigma ** 2))
        start += length
    return best


def _fold_shading(q: np.ndarray, target: np.ndarray, h: np.ndarray, cls: int, intensity: float) -> np.ndarray:
    """Multiplicative (<= 1) shading of the class's creases at pixel face-frame positions ``q``.

    Each crease is evaluated only inside its own pixel bounding box (``h`` maps the face
    frame to pixels): a crease covers a few hundred of the image's pixels.
    """
    size = q.shape[0]
    shade = np.ones(q.shape[:2])
    for fold in FOLDS[cls]:
        for mirror in ((False, True) if fold.mirror else (False,)):
            pts = _fold_points(fold, target, mirror)
            reach = 4.0 * fold.width
            corners = np.array([[x, y] for x in (pts[:, 0].min() - reach, pts[:, 0].max() + reach)
                                for y in (pts[:, 1].min() - reach, pts[:, 1].max() + reach)])
            px = _apply_h(h, corners)
            x0, y0 = np.clip(np.floor(px.min(0)).astype(int) - 1, 0, size)
            x1, y1 = np.clip(np.ceil(px.max(0)).astype(int) + 2, 0, size)
            if x1 > x0 and y1 > y0:
                crease = _polyline_shade(q[y0:y1, x0:x1].astype(np.float64), pts, fold.width)
                shade[y0:y1, x0:x1] *= 1.0 - fold.depth * intensity * crease
    return shade.astype(np.float32)


def _fill_poly(shape: tuple[int, int], pts: np.ndarray, blur: float) -> np.ndarray:
    """Anti-aliased, feathered 0..1 mask of a polygon given in float pixels."""
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    return cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), blur)


def _paint_mouth(img: np.ndarray, target: np.ndarray, h: np.ndarray, kind: str,
                 rng: np.random.Generator) -> None:
    """Paint the interior of parted lips: teeth (a smile) or a dark cavity (an open jaw)."""
    scale = np.sqrt(abs(np.linalg.det(h[:2, :2])))
    mouth = _fill_poly(img.shape[:2], _apply_h(h, target[list(INNER_RING)]), max(0.5, 0.012 * scale))
    if kind == "teeth":
        fill = np.array([232.0, 226.0, 212.0]) * rng.uniform(0.8, 1.02)
    else:
        fill = np.array([62.0, 24.0, 28.0]) * rng.uniform(0.5, 1.2)
    img += (fill - img) * mouth[..., None]


def _synthetic_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A two-colour gradient with low-frequency blotches and fine noise."""
    c0 = rng.uniform(30, 220) + rng.normal(0, 25, 3)
    c1 = rng.uniform(30, 220) + rng.normal(0, 25, 3)
    ang = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = np.clip(0.5 + (x - 0.5) * np.cos(ang) + (y - 0.5) * np.sin(ang), 0, 1)[..., None]
    img = c0 * (1 - t) + c1 * t
    blotch = cv2.resize(rng.normal(0, 15, (4, 4, 3)), (size, size), interpolation=cv2.INTER_CUBIC)
    return img + blotch + rng.normal(0, 3, (size, size, 3))


@lru_cache(maxsize=1)
def _textures() -> tuple[np.ndarray, ...]:
    """Face-free scikit-image pictures used as real-looking backgrounds."""
    import skimage.data

    out = []
    for name in TEXTURES:
        img = np.asarray(getattr(skimage.data, name)())
        img = _grey_rgb(img) if img.ndim == 2 else img[..., :3]
        out.append(np.ascontiguousarray(img.astype(np.uint8)))
    return tuple(out)


def _texture_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random crop of a random texture, resized to the output, sometimes blurred."""
    tex = _textures()[int(rng.integers(len(_textures())))]
    h, w = tex.shape[:2]
    side = int(rng.uniform(0.35, 1.0) * min(h, w))
    y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = cv2.resize(tex[y0:y0 + side, x0:x0 + side], (size, size), interpolation=cv2.INTER_AREA)
    crop = crop.astype(np.float64)
    if rng.random() < 0.5:
        crop = cv2.GaussianBlur(crop, (0, 0), rng.uniform(1.0, 4.0))
    return crop


def _colour_jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast, saturation, white balance, gamma, greyscale, blur and noise."""
    grey = img.mean(2, keepdims=True)
    img = grey + (img - grey) * (0.0 if rng.random() < 0.15 else rng.uniform(0.6, 1.3))
    img = img * rng.uniform(0.92, 1.08, 3)
    img = (img - img.mean()) * rng.uniform(0.7, 1.3) + img.mean() * rng.uniform(0.75, 1.25)
    img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** rng.uniform(0.8, 1.25)
    if rng.random() < 0.25:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.2))
    img = img + rng.normal(0, rng.uniform(0, 5), img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


# ---- one sample ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    """One generated image with its AffectNet row values."""

    jpeg: bytes
    box: tuple[int, int, int, int]          # face_x, face_y, face_width, face_height
    lmk68: np.ndarray                       # (68, 2) output pixels, iBUG order
    valence: float
    arousal: float


def face_box(lmk68: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """A detector-like box from landmarks: their extent plus a forehead margin, in the image.

    Integer pixels that always contain every landmark (AffectNet boxes are integers).
    """
    x0, y0 = lmk68.min(0)
    x1, y1 = lmk68.max(0)
    fx0 = max(0, int(np.floor(x0 - 0.05 * (x1 - x0))))
    fx1 = min(size - 1, int(np.ceil(x1 + 0.05 * (x1 - x0))))
    fy0 = max(0, int(np.floor(y0 - 0.25 * (y1 - y0))))
    fy1 = min(size - 1, int(np.ceil(y1 + 0.03 * (y1 - y0))))
    return fx0, fy0, fx1 - fx0, fy1 - fy0


def render_sample(ident: Identity, cls: int, rng: np.random.Generator, image_size: int,
                  jpeg_quality: int) -> Sample:
    """Synthesise one image of ``ident`` showing class ``cls``."""
    intensity = rng.uniform(*INTENSITY)
    target = expression_shape(_natural_variation(neutralise(ident.lmk), rng), cls, intensity)
    flip = bool(rng.random() < 0.5)
    h = _fit_pose(rng, image_size, flip, target)
    context = ident.context and rng.random() < CONTEXT_P
    face, alpha, q = _render_face(ident, target, h, image_size, rng, context)
    face *= _fold_shading(q, target, h, cls, intensity)[..., None]
    mouth = EXPRESSIONS[cls].mouth
    if mouth is not None:
        _paint_mouth(face, target, h, mouth, rng)
    if context or rng.random() >= TEXTURE_P:
        bg = _synthetic_background(rng, image_size)
    else:
        bg = _texture_background(rng, image_size)
    img = bg + (face - bg) * alpha[..., None]
    rgb = _colour_jitter(img, rng)
    lmk = _apply_h(h, target)
    if flip:
        lmk = lmk[FLIP_68]
    v, a = VALENCE_AROUSAL[cls]
    va = np.clip(np.array([v, a]) * intensity + rng.normal(0, 0.05, 2), -1, 1)
    return Sample(encode_jpeg(rgb, jpeg_quality), face_box(lmk, image_size), lmk.astype(np.float32),
                  float(va[0]), float(va[1]))


# ---- the plan: identities per split, identity per slot ----------------------------------------

def mouth_gap(lmk: np.ndarray) -> float:
    """Mean inner-lip opening of face-frame landmarks (about 0 for a closed mouth)."""
    return float(np.mean([lmk[low, 1] - lmk[up, 1] for up, low in INNER_PAIRS]))


def _easy(ident: Identity) -> bool:
    """A frontal face with a closed mouth: a fair held-out identity."""
    return ident.frontal >= EASY_FRONTAL and mouth_gap(ident.lmk) < CLOSED_MOUTH


def split_identities(identities: Sequence[Identity], val_fraction: float,
                     rng: np.random.Generator) -> dict[str, list[Identity]]:
    """Hold out whole identities for validation, per tier.

    Held-out photo identities are the most frontal faces whose source photo has a closed
    mouth (for the package photos: t1_0 and grace_hopper), so validation measures
    expressions on unseen people, not extrapolation to strong yaw nor a source smile that
    no warp fully removes. Held-out LFW identities are a seeded draw from all of them.
    """
    out: dict[str, list[Identity]] = {"train": [], "validation": []}
    for tier in ("photo", "lfw"):
        pool = sorted((i for i in identities if i.tier == tier), key=lambda i: i.name)
        if not pool:
            continue
        n_val = max(1, round(val_fraction * len(pool))) if len(pool) > 1 else 0
        if tier == "photo":
            ranked = sorted(pool, key=lambda i: (not _easy(i), -i.frontal, i.name))
            held = {i.name for i in ranked[:n_val]}
        else:
            held = {pool[k].name for k in rng.permutation(len(pool))[:n_val]}
        out["validation"] += [i for i in pool if i.name in held]
        out["train"] += [i for i in pool if i.name not in held]
    return out


def slot_identities(pool: Sequence[Identity], n: int, rng: np.random.Generator) -> list[Identity]:
    """The identity of slot 0..n-1, shared by every class (so identity never predicts
    the label): three photo faces, then one LFW face, each tier cycling in a seeded order."""
    photo = [pool[k] for k in rng.permutation(len(pool)) if pool[k].tier == "photo"]
    lfw = [pool[k] for k in rng.permutation(len(pool)) if pool[k].tier == "lfw"]
    out: list[Identity] = []
    counts = {"photo": 0, "lfw": 0}
    for i in range(n):
        tier = "lfw" if (i % 4 == 3 and lfw) or not photo else "photo"
        seq = lfw if tier == "lfw" else photo
        out.append(seq[counts[tier] % len(seq)])
        counts[tier] += 1
    return out


# ---- the public entry point -------------------------------------------------------------------

def _check_args(per_class: int, classes: Sequence[int], val_fraction: float, seed: int, image_size: int,
                jpeg_quality: int) -> None:
    """Reject arguments that would give an empty split, unknown classes or unusable images."""
    if not classes or len(set(classes)) != len(classes) or any(not 0 <= int(c) < len(CLASSES) for c in classes):
        raise ValueError(f"sample: classes must be distinct AffectNet ids 0..7, got {list(classes)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"sample: val_fraction must be in (0, 1), got {val_fraction}")
    n_val = round(per_class * val_fraction)
    if per_class < 2 or n_val < 1 or n_val >= per_class:
        raise ValueError(f"sample: per_class={per_class} with val_fraction={val_fraction} "
                         f"leaves an empty split; use per_class >= 2 and a fraction that gives both")
    if seed < 0:
        raise ValueError(f"sample: seed must be >= 0, got {seed}")
    if image_size < 64:
        raise ValueError(f"sample: image_size must be >= 64, got {image_size}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"sample: jpeg_quality must be in 1..100, got {jpeg_quality}")


def _prepare_out_dir(out_dir: Path) -> Path:
    """A fresh temporary folder beside ``out_dir``; refuses to clobber a folder this
    module did not write (one without the marker file)."""
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MARKER).is_file():
        raise FileExistsError(f"sample: {out_dir} is not empty and was not written by ferdata.sample; "
                              f"choose an empty or new folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    tmp.chmod(0o755)                     # mkdtemp makes it private; the dataset is not
    return tmp


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` with ``tmp`` so readers never see a half-written sample."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old")
        if old.exists():
            shutil.rmtree(old)
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old)


def _csv_text(rows: list[list[str]]) -> str:
    """AffectNet's header and the rows, "\n" line ends (byte-stable across platforms)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    return buf.getvalue()


def _row(rel: str, s: Sample, cls: int) -> list[str]:
    """One CSV row; landmarks at 0.01 px, as ``x1;y1;...;x68;y68``."""
    return [rel, *(str(v) for v in s.box), ";".join(f"{v:.2f}" for v in s.lmk68.reshape(-1)),
            str(cls), f"{s.valence:.4f}", f"{s.arousal:.4f}"]


def make_affectnet_sample(out_dir: Path, *, per_class: int, classes: Sequence[int], val_fraction: float,
                          seed: int, image_size: int, jpeg_quality: int) -> dict:
    """Write the smoke-test sample to ``out_dir`` in AffectNet's official layout.

    ``per_class`` images per class in total; ``round(per_class * val_fraction)`` of them
    go to ``validation.csv`` and use only held-out identities. The same arguments give
    byte-identical files (every random draw comes from a Generator seeded by
    ``(seed, split, class, index)``). ``out_dir`` is replaced as a whole. Returns counts
    per split and class and the identities used per split.
    """
    _check_args(per_class, classes, val_fraction, seed, image_size, jpeg_quality)
    out_dir = Path(out_dir)
    identities = load_identities()
    splits = split_identities(identities, val_fraction, np.random.default_rng([seed, 0]))
    n_val = round(per_class * val_fraction)
    sizes = {"train": per_class - n_val, "validation": n_val}
    tmp = _prepare_out_dir(out_dir)
    summary: dict = {"image_size": image_size, "counts": {}, "identities": {}}
    total = len(classes) * per_class
    try:
        for split_no, split in enumerate(("train", "validation"), start=1):
            slots = slot_identities(splits[split], sizes[split], np.random.default_rng([seed, split_no]))
            rows: list[list[str]] = []
            for cls in sorted(int(c) for c in classes):
                for i, ident in enumerate(slots):
                    rng = np.random.default_rng([seed, split_no, cls, i])
                    sample = render_sample(ident, cls, rng, image_size, jpeg_quality)
                    name = hashlib.sha1(f"{seed}/{split}/{cls}/{i}".encode()).hexdigest()
                    rel = f"{SPLIT_DIRS[split]}/{name}.jpg"
                    atomic_write_bytes(tmp / IMAGES_DIR / rel, sample.jpeg)
                    rows.append(_row(rel, sample, cls))
            atomic_write_text(tmp / LISTS_DIR / CSV_NAMES[split], _csv_text(rows))
            summary["counts"][split] = {CLASSES[c]: sizes[split] for c in sorted(int(c) for c in classes)}
            summary["identities"][split] = sorted({i.name for i in slots})
        atomic_write_text(tmp / MARKER, json.dumps(summary, indent=2, sort_keys=True) + "\n")
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("sample: wrote %d images to %s", total, out_dir)
    return summary
