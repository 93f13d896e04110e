"""Pixel appearance on top of the warp: creases, mouth interiors, backgrounds, colour.

Creases (``FOLDS``) are soft dark polylines that follow the warped landmarks; parted
lips get teeth or a dark cavity; backgrounds are synthetic gradients or crops of
face-free scikit-image pictures; a final colour jitter varies lighting and camera.
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from ferdata.geometry import FLIP_68
from ferdata.sample.expressions import FOLDS, INNER_RING, Fold
from ferdata.sample.warp import apply_h

TEXTURES = ("coffee", "rocket", "brick", "grass", "gravel", "hubble_deep_field",
            "immunohistochemistry", "moon", "coins", "page", "text", "clock", "cell")


def grey_rgb(grey: np.ndarray) -> np.ndarray:
    """A grey (H, W) image as RGB."""
    return np.repeat(grey[..., None], 3, axis=2)


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


def fold_shading(q: np.ndarray, target: np.ndarray, h: np.ndarray, cls: int, intensity: float) -> np.ndarray:
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
            px = apply_h(h, corners)
            x0, y0 = np.clip(np.floor(px.min(0)).astype(int) - 1, 0, size)
            x1, y1 = np.clip(np.ceil(px.max(0)).astype(int) + 2, 0, size)
            if x1 > x0 and y1 > y0:
                crease = _polyline_shade(q[y0:y1, x0:x1].astype(np.float64), pts, fold.width)
                shade[y0:y1, x0:x1] *= 1.0 - fold.depth * intensity * crease
    return shade.astype(np.float32)


def fill_poly(shape: tuple[int, int], pts: np.ndarray, blur: float) -> np.ndarray:
    """Anti-aliased, feathered 0..1 mask of a polygon given in float pixels."""
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    return cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), blur)


def paint_mouth(img: np.ndarray, target: np.ndarray, h: np.ndarray, kind: str,
                rng: np.random.Generator) -> None:
    """Paint the interior of parted lips: teeth (a smile) or a dark cavity (an open jaw)."""
    scale = np.sqrt(abs(np.linalg.det(h[:2, :2])))
    mouth = fill_poly(img.shape[:2], apply_h(h, target[list(INNER_RING)]), max(0.5, 0.012 * scale))
    if kind == "teeth":
        fill = np.array([232.0, 226.0, 212.0]) * rng.uniform(0.8, 1.02)
    else:
        fill = np.array([62.0, 24.0, 28.0]) * rng.uniform(0.5, 1.2)
    img += (fill - img) * mouth[..., None]


def synthetic_background(rng: np.random.Generator, size: int) -> np.ndarray:
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
        img = grey_rgb(img) if img.ndim == 2 else img[..., :3]
        out.append(np.ascontiguousarray(img.astype(np.uint8)))
    return tuple(out)


def texture_background(rng: np.random.Generator, size: int) -> np.ndarray:
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


def colour_jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
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
