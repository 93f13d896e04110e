"""Face geometry, computed once: the ArcFace 5-point template, similarity fit, warping,
landmark transforms, half-faces and the 68-point left/right permutation.

Everything downstream (heatmaps, half-faces, region boxes, flips) uses the matrix
and landmarks returned by :func:`align_face`; nothing re-estimates geometry.
Coordinates follow OpenCV's pixel-centre convention: pixel (i, j) has its centre at
x = j, y = i, which is what ``cv2.warpAffine`` assumes, so a landmark transformed by
the crop matrix lands on the same pixel the warp put its image content on.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

# insightface's arcface_dst for 112x112, (x, y); "left" = image-left (subject's right eye).
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)

# Horizontal-flip permutation of iBUG-68 (face-alignment's ``shuffle_lr``): after flipping an
# image, point i of the flipped face is the mirror of original point FLIP_68[i]. An involution.
FLIP_68 = np.array(
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46] + [39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48] + [59, 58, 57, 56, 55] + [64, 63, 62, 61, 60] + [67, 66, 65],
    dtype=np.int64,
)
# The same for the 5 ArcFace points (eyes swap, nose stays, mouth corners swap).
FLIP_5 = np.array([1, 0, 2, 4, 3], dtype=np.int64)

# iBUG-68 index groups (0-based); "1" = image-left (the subject's right side).
IBUG_GROUPS: dict[str, tuple[int, ...]] = {
    "jaw": tuple(range(0, 17)), "brow1": tuple(range(17, 22)), "brow2": tuple(range(22, 27)),
    "nose_bridge": tuple(range(27, 31)), "nostrils": tuple(range(31, 36)),
    "eye1": tuple(range(36, 42)), "eye2": tuple(range(42, 48)),
    "outer_lips": tuple(range(48, 60)), "inner_lips": tuple(range(60, 68)),
}


def template(size: int, padding: float = 0.0) -> np.ndarray:
    """The ArcFace template for a ``size`` x ``size`` crop (insightface's scaling rule).

    Multiples of 112 scale the 112 template; multiples of 128 scale it by size/128 and
    shift it right by 8*size/128 (insightface's ``estimate_norm``). ``padding`` > 0
    shrinks the template towards the crop centre so the crop shows more forehead and
    chin (FER cues near the borders); 0 reproduces ``norm_crop`` exactly.
    """
    if size <= 0:
        raise ValueError(f"crop size must be positive, got {size}")
    if size % 112 == 0:
        dst = ARCFACE_112 * (size / 112.0)
    elif size % 128 == 0:
        ratio = size / 128.0
        dst = ARCFACE_112 * ratio + np.array([8.0 * ratio, 0.0])
    else:
        raise ValueError(f"crop size must be a multiple of 112 or 128, got {size}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding:
        centre = np.array([size / 2.0, size / 2.0])
        dst = centre + (dst - centre) / (1.0 + padding)
    return dst


def similarity_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src -> dst.

    The optimum Umeyama's method (skimage's ``SimilarityTransform``, used by insightface)
    finds, in its 2-D closed form: with centred points as complex numbers s and d, the
    rotation+scale is a + ib = sum(conj(s) d) / sum(|s|^2). No SVD: ~20 us instead of ~200.
    Returns the 2x3 matrix.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"need two matching (K>=2, 2) point sets, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("keypoints contain NaN or infinity")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = float((s * s).sum())
    if var_s <= 1e-12 * len(src):
        raise ValueError("degenerate keypoints: all points coincide")
    a = float((s * d).sum()) / var_s
    b = float((s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum()) / var_s
    rot = np.array([[a, -b], [b, a]])
    m = np.empty((2, 3))
    m[:, :2] = rot
    m[:, 2] = mu_d - rot @ mu_s
    return m


def template_misfit(kps5: np.ndarray) -> float:
    """How far 5 ArcFace-order keypoints are from a similarity image of the template: the RMS
    residual of their fit onto it, in units of the template's spread. 0 for a face seen straight
    on; a turned face foreshortens, up to about 0.62 in full profile (eyes and mouth on one line);
    points listed in mirrored or shuffled order give about 0.97, points missing (at 0, 0) 0.7 to 0.9."""
    target = ARCFACE_112
    fitted = transform_points(np.asarray(kps5, np.float64), similarity_matrix(kps5, target))
    return float(np.sqrt(((fitted - target) ** 2).sum(1).mean())) / spread(target)


def estimate_norm(kps5: np.ndarray, size: int = 112, padding: float = 0.0) -> np.ndarray:
    """The source->crop matrix for 5 ArcFace-order keypoints (insightface's ``estimate_norm``)."""
    kps5 = np.asarray(kps5)
    if kps5.shape != (5, 2):
        raise ValueError(f"expected 5 keypoints of shape (5, 2), got {kps5.shape}")
    return similarity_matrix(kps5, template(size, padding))


def reduced_frame(scale: float, scale_y: float | None = None) -> np.ndarray:
    """The 2x3 matrix from source pixels to the pixels of the same image decoded at ``scale``
    (1, 1/2, 1/4, 1/8), or resized by ``cv2.resize`` to ``scale`` x ``scale_y`` of its width and height.
    libjpeg's scaled decode averages r x r blocks, and OpenCV resizes by the same rule, so a pixel
    centre maps as x' = (x + 0.5) * scale - 0.5, not x * scale (a 1.5 px shift at 1/4).
    ``reduced_frame(1 / sx, 1 / sy)`` is the way back."""
    sy = scale if scale_y is None else scale_y
    return np.array([[scale, 0.0, (scale - 1) / 2], [0.0, sy, (sy - 1) / 2]])


def shrunk(image: np.ndarray, side: int) -> tuple[np.ndarray, tuple[float, float]]:
    """``image`` with its longest side at most ``side`` (area-averaged; else itself), and the (x, y)
    scale it was resized by: each side rounds to whole pixels on its own, so the two differ slightly
    (:func:`resized_back` undoes them)."""
    h, w = image.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale == 1:
        return image, (1.0, 1.0)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))       # a 16 x 21000 strip keeps 1 px
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), (size[0] / w, size[1] / h)


def resized_back(boxes: np.ndarray, points: np.ndarray | None, scale: tuple[float, float]
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Boxes (x0, y0, x1, y1: pixel edges, which scale) and points (pixel centres, which map by
    :func:`reduced_frame`) found in an image ``cv2.resize``-d by ``scale`` = (sx, sy), in the
    source image's pixels: how a detector run on a resized copy reports its faces."""
    sx, sy = scale
    back = (np.asarray(boxes, np.float64) / np.array([sx, sy, sx, sy])).astype(np.float32)
    return back, None if points is None else transform_points(points, reduced_frame(1 / sx, 1 / sy))


def crop_reduction(kps5: np.ndarray, size: int, padding: float = 0.0, limit: int = 8) -> int:
    """The largest power of two r <= ``limit`` at which the face, decoded at 1/r, still has at
    least the crop's resolution: decoding at 1/r then costs a fraction of a full decode and,
    unlike a bilinear warp shrinking a large face several times, does not alias. 1 when the
    keypoints cannot define an alignment (the caller reports why).

    No similarity is fitted here (align fits it once, in the decoded frame): the crop's zoom
    (crop pixels per source pixel) is bounded by the ratio of the template's RMS spread to the
    keypoints'. The least-squares scale is tr(DS) / var_src <= std_dst / std_src (Umeyama;
    Cauchy-Schwarz), equal when the points are an exact similarity of the template, so r never
    leaves the face below the crop's resolution."""
    kps = np.asarray(kps5, np.float64)
    if kps.shape != (5, 2):
        return 1
    src = spread(kps)
    if not math.isfinite(src) or src < 1e-3:
        return 1
    zoom = _template_spread(size, padding) / src
    r = 1
    while r * 2 <= limit and zoom * r * 2 <= 1.0:
        r *= 2
    return r


def spread(points: np.ndarray | list[list[float]]) -> float:
    """RMS distance of 2-D points from their centroid: a face's size, whatever its pose (plain
    Python: five points cost less than numpy's per-call overhead)."""
    points = points.tolist() if isinstance(points, np.ndarray) else points
    n = len(points)
    mx, my = sum(p[0] for p in points) / n, sum(p[1] for p in points) / n
    return math.sqrt(sum((x - mx) ** 2 + (y - my) ** 2 for x, y in points) / n)


@functools.lru_cache(maxsize=16)
def _template_spread(size: int, padding: float) -> float:
    return spread(template(size, padding))


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (..., K, 2) points."""
    pts = np.asarray(points, np.float64)
    m = np.asarray(matrix, np.float64)
    return (pts @ m[:, :2].T + m[:, 2]).astype(np.float32)


def five_from_68(lmk68: np.ndarray) -> np.ndarray:
    """ArcFace-order 5 points from iBUG-68: eye centres, nose tip, mouth corners."""
    lmk68 = np.asarray(lmk68, np.float64)
    if lmk68.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {lmk68.shape}")
    return np.stack([
        lmk68[36:42].mean(0), lmk68[42:48].mean(0), lmk68[30], lmk68[48], lmk68[54],
    ]).astype(np.float32)


def flip_landmarks(lmk: np.ndarray, width: float) -> np.ndarray:
    """Landmarks of the horizontally flipped image, re-indexed so point semantics hold.

    Works for iBUG-68 (``FLIP_68``) and ArcFace-5 (``FLIP_5``). Pixel-centre
    convention: column x maps to ``width - 1 - x``. Flipping twice is the identity.
    """
    pts = np.asarray(lmk, np.float32)
    perm = {68: FLIP_68, 5: FLIP_5}.get(pts.shape[-2]) if pts.ndim >= 2 else None
    if perm is None or pts.shape[-1] != 2:
        raise ValueError(f"expected (..., 68, 2) or (..., 5, 2) landmarks, got {pts.shape}")
    flipped = pts[..., perm, :].copy()
    flipped[..., 0] = (width - 1) - flipped[..., 0]
    return flipped


@dataclass(frozen=True)
class Aligned:
    """An aligned face crop (RGB uint8), the source->crop matrix and crop-frame landmarks."""

    image: np.ndarray
    matrix: np.ndarray
    lmk68: np.ndarray | None


BORDERS = {"black": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE}


def align_face(image: np.ndarray, kps5: np.ndarray, size: int, padding: float = 0.0,
               lmk68: np.ndarray | None = None, border: str = "black") -> Aligned:
    """Warp ``image`` so ``kps5`` land on the template; transform ``lmk68`` with the same matrix.

    With ``padding=0`` the crop equals ``insightface.utils.face_align.norm_crop``
    (bilinear, black border). ``border="replicate"`` continues the image's edge instead: for an
    image that already is the crop, whose last pixel centres sit inside the crop's edge (as in a
    resize), so that edge does not fade to black.
    """
    return warp_face(image, estimate_norm(kps5, size, padding), size, lmk68, border)


def warp_face(image: np.ndarray, m: np.ndarray, size: int, lmk68: np.ndarray | None = None,
              border: str = "black") -> Aligned:
    """``image`` warped by the 2x3 image -> crop matrix ``m`` into a ``size`` crop (bilinear; ``border``
    as for :func:`align_face`), ``lmk68`` with it."""
    crop = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=BORDERS[border],
                          borderValue=0.0)
    lmk = transform_points(lmk68, m) if lmk68 is not None else None
    return Aligned(crop, np.asarray(m, np.float32), lmk)


def split_halves(face: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left half and the *mirrored* right half of an aligned face (split at the crop's midline).

    Both halves are ``size // 2`` wide; the mirrored right half looks like a left half (it is the
    left half of the horizontally flipped face). The split runs between columns ``size/2 - 1`` and
    ``size/2``, at x = size/2 - 0.5 in the warp's pixel-centre coordinates, which is also the axis of
    the flip (x -> size - 1 - x). The template's midline (the midpoints of its eyes and mouth
    corners, and its nose tip) lies at x = size/2 (55.9-56.1 at 112 px), so the split is half a
    pixel left of it at every crop size: an even crop has no pixel column to split at, and moving
    the template would break ``norm_crop`` parity; half a pixel is below the landmarks' own error.
    """
    if face.ndim < 2 or face.shape[1] % 2:
        raise ValueError(f"half-faces need an even crop width, got shape {face.shape}")
    mid = face.shape[1] // 2
    return np.ascontiguousarray(face[:, :mid]), np.ascontiguousarray(face[:, mid:][:, ::-1])


def half_landmarks(lmk68: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks in the frames of :func:`split_halves`' two halves (all 68, iBUG order).

    Left half: unchanged (points with x < size/2 fall inside it). Mirrored right half:
    the landmarks of the flipped face (``flip_landmarks``), so index i means the same
    facial point in both halves, e.g. 36 is the outer corner of the eye in view.
    """
    lmk = np.asarray(lmk68, np.float32)
    return lmk.copy(), flip_landmarks(lmk, size)
