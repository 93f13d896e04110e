"""Geometry of one image: the thin-plate-spline expression warp and the random pose.

The spline maps target (expression) landmarks in the face frame back to the source's
landmarks; the pose is a homography face frame -> output pixels. ``render`` composes the
two into one output -> portrait map, evaluated on a coarse grid (``coarse_grid``) and
upsampled exactly (``dense_field``), so every pixel is resampled once.
"""
from __future__ import annotations

import cv2
import numpy as np

ROTATION_DEG = 15.0
SQUEEZE = (0.82, 1.0)            # horizontal scale about the face: a yaw-like foreshortening
PERSPECTIVE = 0.06
FACE_SCALE = (0.15, 0.22)        # output pixels per face unit, as a fraction of image size
SHIFT = 0.08                     # face-centre translation, fraction of image size
MAP_STEP = 4                     # the spline is evaluated every MAP_STEP output pixels
SPLINE_SMOOTHING = 1e-3


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


def apply_h(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 3x3 homography to (N, 2) points."""
    p = np.hstack([pts, np.ones((len(pts), 1))]) @ h.T
    return p[:, :2] / p[:, 2:3]


def fit_pose(rng: np.random.Generator, size: int, flip: bool, target: np.ndarray) -> np.ndarray:
    """Draw a pose whose landmarks (and a forehead margin) stay inside the image."""
    guard = np.vstack([target, [[0.0, -1.0], [-1.1, -0.5], [1.1, -0.5]]])
    h = _pose(rng, size, flip)
    for _ in range(50):
        pts = apply_h(h, guard)
        if pts.min() >= 0.03 * size and pts.max() <= 0.97 * size:
            return h
        h = _pose(rng, size, flip)
    shrink = np.array([[0.8, 0, 0.1 * size], [0, 0.8, 0.1 * size], [0, 0, 1.0]])   # about the centre
    while True:
        pts = apply_h(h, target)
        if pts.min() >= 1 and pts.max() <= size - 2:
            return h
        h = shrink @ h


def coarse_grid(size: int, step: int) -> np.ndarray:
    """Output-pixel positions of a coarse grid with one extra sample beyond each edge,
    laid out so ``dense_field`` (cv2.resize) interpolates it exactly back to every pixel."""
    n = -(-size // step)
    return (np.arange(-1, n + 1) + 0.5) * step - 0.5


def dense_field(coarse: np.ndarray, size: int, step: int) -> np.ndarray:
    """Bilinearly upsample a ``coarse_grid`` field (m, m, C) to (size, size, C)."""
    m = coarse.shape[0]
    big = cv2.resize(coarse.astype(np.float32), (m * step, m * step), interpolation=cv2.INTER_LINEAR)
    return big[step:step + size, step:step + size]
