"""Identities: the real faces the sample is made of, and which split and slot use each.

Real face photos that ship inside installed packages (scikit-image, matplotlib,
insightface) are detected once with the embedded backend; each face becomes an
``Identity``: a portrait resampled into its face frame (fitted on the nose and eye
corners) with a validity channel, its landmarks in that frame and how frontal it is.
Whole identities are held out for validation, and every class shares the same identity
per slot, so identity never predicts the label.
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np

from ferdata.geometry import similarity_matrix, transform_points
from ferdata.io import decode_rgb
from ferdata.sample.expressions import CLOSED_MOUTH, INNER_PAIRS, mouth_gap
from ferdata.sample.paint import fill_poly, grey_rgb

log = logging.getLogger(__name__)

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
EASY_FRONTAL = 0.6               # half-face width ratio above which a face counts as frontal


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
    outer = fill_poly(shape, lmk_px[48:60], 0.5)
    inner = fill_poly(shape, lmk_px[60:68], max(0.5, 0.02 * unit))
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
        rgb, valid = _padded(grey_rgb(grey), LFW_UPSCALE, LFW_PAD)
        faces = backend.detect(rgb)
        if faces:
            face = max(faces, key=lambda f: f.area)
            ident = _make_identity(f"lfw_{i:03d}", "lfw", rgb, valid, face.lmk68, False)
            if ident.frontal >= LFW_MIN_FRONTAL:
                out.append(ident)
    log.info("sample: %d identities (%d photo, %d lfw)", len(out),
             sum(i.tier == "photo" for i in out), sum(i.tier == "lfw" for i in out))
    return tuple(out)


def _easy(ident: Identity) -> bool:
    """A frontal face with a closed mouth: a fair held-out identity."""
    return ident.frontal >= EASY_FRONTAL and mouth_gap(ident.lmk) < CLOSED_MOUTH


def split_identities(identities: Sequence[Identity], val_fraction: float,
                     rng: np.random.Generator) -> dict[str, list[Identity]]:
    """Hold out whole identities for validation, per tier.

    Held-out photo identities are the most frontal faces whose source photo has a closed
    mouth (for the package photos: t1_0 and grace_hopper), so validation measures
    expressions on unseen people, not extrapolation to strong yaw nor a source smile that
    no warp fully removes. Held-out LFW identities are a seeded draw from all of them. A tier of
    two or more identities keeps at least one on each side, whatever the fraction.
    """
    out: dict[str, list[Identity]] = {"train": [], "validation": []}
    for tier in ("photo", "lfw"):
        pool = sorted((i for i in identities if i.tier == tier), key=lambda i: i.name)
        if not pool:
            continue
        n_val = min(max(1, round(val_fraction * len(pool))), len(pool) - 1)     # each split keeps one
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
    if n and not pool:
        raise ValueError("sample: no identity left for a split (the package photos gave too few faces)")
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
