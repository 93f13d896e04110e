"""Face geometry, computed once: the ArcFace 5-point template, similarity fit, warping,
landmark transforms and the 68-point left/right permutation.

Everything downstream (heatmaps, half-faces, region boxes, flips) uses the matrix
and landmarks returned by :func:`align_face`; nothing re-estimates geometry.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# insightface's arcface_dst for 112x112, (x, y); "left" = image-left (subject's right eye).
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)

# Horizontal-flip permutation of iBUG-68: flipped point i is original point FLIP_68[i].
FLIP_68 = np.array(
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46] + [39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48] + [59, 58, 57, 56, 55] + [64, 63, 62, 61, 60] + [67, 66, 65],
    dtype=np.int64,
)


def template(size: int, padding: float = 0.0) -> np.ndarray:
    """The ArcFace template for a ``size`` x ``size`` crop (insightface's scaling rule).

    ``padding`` > 0 shrinks the template towards the crop centre so the crop shows
    more forehead and chin (FER cues near the borders); 0 reproduces ``norm_crop``.
    """
    if size % 112 == 0:
        dst = ARCFACE_112 * (size / 112.0)
    elif size % 128 == 0:
        ratio = size / 128.0
        dst = ARCFACE_112 * ratio + np.array([8.0 * ratio, 0.0])
    else:
        raise ValueError(f"crop size must be a multiple of 112 or 128, got {size}")
    if padding:
        centre = np.array([size / 2.0, size / 2.0])
        dst = centre + (dst - centre) / (1.0 + padding)
    return dst


def similarity_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src -> dst.

    Umeyama's closed form, the same estimator as skimage's ``SimilarityTransform``
    used by insightface. Returns the 2x3 matrix.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    n = src.shape[0]
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / n
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(cov) < 0:
        sign[1] = -1
    rot = u @ np.diag(sign) @ vt
    var_s = (s ** 2).sum() / n
    if var_s <= 0:
        raise ValueError("degenerate keypoints: all points coincide")
    scale = (sig * sign).sum() / var_s
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (K, 2) points."""
    pts = np.asarray(points, np.float64)
    return (pts @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def five_from_68(lmk68: np.ndarray) -> np.ndarray:
    """ArcFace-order 5 points from iBUG-68: eye centres, nose tip, mouth corners."""
    lmk68 = np.asarray(lmk68, np.float64)
    return np.stack([
        lmk68[36:42].mean(0), lmk68[42:48].mean(0), lmk68[30], lmk68[48], lmk68[54],
    ]).astype(np.float32)


def flip_landmarks(lmk68: np.ndarray, width: float) -> np.ndarray:
    """Landmarks of the horizontally flipped image, re-indexed so point semantics hold.

    Pixel-centre convention: column x maps to ``width - 1 - x``.
    """
    lmk = np.asarray(lmk68, np.float32)
    flipped = lmk[FLIP_68].copy()
    flipped[:, 0] = (width - 1) - flipped[:, 0]
    return flipped


@dataclass(frozen=True)
class Aligned:
    """An aligned face crop (RGB uint8), the source->crop matrix and crop-frame landmarks."""

    image: np.ndarray
    matrix: np.ndarray
    lmk68: np.ndarray | None


def align_face(image: np.ndarray, kps5: np.ndarray, size: int, padding: float = 0.0,
               lmk68: np.ndarray | None = None) -> Aligned:
    """Warp ``image`` so ``kps5`` land on the template; transform ``lmk68`` with the same matrix."""
    m = similarity_matrix(kps5, template(size, padding))
    crop = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)
    lmk = transform_points(lmk68, m) if lmk68 is not None else None
    return Aligned(crop, m.astype(np.float32), lmk)


def split_halves(face: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left half and the *mirrored* right half of an aligned face (split at the midline).

    The aligned template puts the facial midline at the crop centre, so both halves
    are ``size // 2`` wide; the mirrored right half looks like a left half.
    """
    mid = face.shape[1] // 2
    return np.ascontiguousarray(face[:, :mid]), np.ascontiguousarray(face[:, mid:][:, ::-1])
