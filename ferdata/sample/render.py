"""One generated image: an identity, warped to a class's expression, posed, painted.

Each output pixel is mapped back once (output -> pose inverse -> spline -> portrait
pixel), so every class goes through the same single resampling and no class is
blurrier than another. All randomness comes from the one Generator passed in.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ferdata.geometry import FLIP_68, transform_points
from ferdata.io import encode_jpeg
from ferdata.sample.expressions import (EXPRESSIONS, INTENSITY, VALENCE_AROUSAL, expression_shape, natural_variation,
                                        neutralise)
from ferdata.sample.paint import colour_jitter, fold_shading, paint_mouth, synthetic_background, texture_background
from ferdata.sample.sources import Identity
from ferdata.sample.warp import (ANCHORS, MAP_STEP, SPLINE_SMOOTHING, ThinPlateSpline, apply_h, coarse_grid,
                                 dense_field, fit_pose)

CONTEXT_P = 0.35                 # single-face photos keep their own surroundings this often
TEXTURE_P = 0.5                  # otherwise: a real texture crop, else a synthetic gradient


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
    pos = coarse_grid(size, MAP_STEP)
    gx, gy = np.meshgrid(pos, pos)
    q = apply_h(np.linalg.inv(h), np.stack([gx.ravel(), gy.ravel()], 1))
    src = transform_points(spline(q), ident.to_portrait).astype(np.float64)
    n = len(pos)
    head = np.ones(len(q)) if context else _head_alpha(q, rng)
    fields = np.dstack([src.reshape(n, n, 2), head.reshape(n, n, 1), q.reshape(n, n, 2)])
    dense = dense_field(fields, size, MAP_STEP)
    rgba = cv2.remap(ident.portrait, np.ascontiguousarray(dense[..., 0]), np.ascontiguousarray(dense[..., 1]),
                     cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0.0, 0.0, 0.0, 0.0))
    return rgba[..., :3], rgba[..., 3] * dense[..., 2], dense[..., 3:5]


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
    target = expression_shape(natural_variation(neutralise(ident.lmk), rng), cls, intensity)
    flip = bool(rng.random() < 0.5)
    h = fit_pose(rng, image_size, flip, target)
    context = ident.context and rng.random() < CONTEXT_P
    face, alpha, q = _render_face(ident, target, h, image_size, rng, context)
    face *= fold_shading(q, target, h, cls, intensity)[..., None]
    mouth = EXPRESSIONS[cls].mouth
    if mouth is not None:
        paint_mouth(face, target, h, mouth, rng)
    if context or rng.random() >= TEXTURE_P:
        bg = synthetic_background(rng, image_size)
    else:
        bg = texture_background(rng, image_size)
    img = bg + (face - bg) * alpha[..., None]
    rgb = colour_jitter(img, rng)
    lmk = apply_h(h, target)
    if flip:
        lmk = lmk[FLIP_68]
    v, a = VALENCE_AROUSAL[cls]
    va = np.clip(np.array([v, a]) * intensity + rng.normal(0, 0.05, 2), -1, 1)
    return Sample(encode_jpeg(rgb, jpeg_quality), face_box(lmk, image_size), lmk.astype(np.float32),
                  float(va[0]), float(va[1]))
