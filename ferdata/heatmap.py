"""Landmark heatmaps: the Gaussian renderer of the derive stage's ``heatmap.png`` (and ``ferdata show``).

Works on numpy arrays and on torch tensors (same code path, the array's own ``exp``), so a model
could render per-landmark maps from ``lmk.npy`` that agree exactly with the stored map; none does
today: ``resnet18_heatmap`` reads the stored map, and ``pcda`` draws its own Gaussians centred on
IR-50's feature cells (``fermodels.models.pcda.GaussianLandmarkEncoder``), not on heatmap cells.
``sigma`` is the true standard deviation in heatmap cells (unlike face-alignment's
``draw_gaussian``, whose sigma only sets a window).
"""
from __future__ import annotations

from typing import Any

import numpy as np


def heatmap_stride(image_size: int, heatmap_size: int) -> float:
    """Input pixels per heatmap cell (e.g. 112 -> 28 is stride 4)."""
    if image_size <= 0 or heatmap_size <= 0:
        raise ValueError(f"sizes must be positive, got image {image_size}, heatmap {heatmap_size}")
    return image_size / heatmap_size


def gaussian_heatmaps(points: Any, size: int, sigma: float, stride: float = 1.0) -> Any:
    """Per-landmark Gaussian maps.

    points: (..., K, 2) in input-pixel coordinates (numpy or torch).
    Returns (..., K, size, size) with peak 1 at each point; cell (i, j) has its centre
    at input pixel ``((j + 0.5) * stride - 0.5, (i + 0.5) * stride - 0.5)``, so the map
    is an area-downsampled view of the crop in the pixel-centre convention.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if size <= 0 or stride <= 0:
        raise ValueError(f"size and stride must be positive, got {size}, {stride}")
    if isinstance(points, np.ndarray):
        points = points.astype(np.float32, copy=False)
        grid = np.arange(size, dtype=np.float32)
        exp = np.exp
    else:  # torch: imported lazily so the data pipeline never needs it
        import torch

        grid = torch.arange(size, dtype=points.dtype, device=points.device)
        exp = torch.exp
    if points.shape[-1] != 2:
        raise ValueError(f"points must be (..., K, 2), got {tuple(points.shape)}")
    cells = (points + 0.5) / stride - 0.5             # (..., K, 2) in heatmap cells
    dx = grid - cells[..., 0:1]                        # (..., K, W)
    dy = grid - cells[..., 1:2]                        # (..., K, H)
    inv = 1.0 / (2.0 * sigma * sigma)
    gx = exp(-(dx * dx) * inv)
    gy = exp(-(dy * dy) * inv)
    return gy[..., :, None] * gx[..., None, :]         # separable: (..., K, H, W)


def landmark_heatmaps(lmk: Any, image_size: int, heatmap_size: int, sigma: float) -> Any:
    """Per-landmark maps for a model: ``lmk`` (..., 68, 2) in crop pixels of an
    ``image_size`` crop -> (..., 68, heatmap_size, heatmap_size), peak 1."""
    return gaussian_heatmaps(lmk, heatmap_size, sigma, heatmap_stride(image_size, heatmap_size))


def max_heatmap_u8(points: np.ndarray, size: int, sigma: float, stride: float) -> np.ndarray:
    """The stored single-channel map: max over landmarks, uint8 0..255.

    Max (not sum) keeps every landmark's peak as high as it is alone however close the
    points are (255 on a cell centre, down to 199 half a cell off in both
    axes at sigma 1), so the map reads as a mask and needs no per-image normalisation.
    """
    maps = gaussian_heatmaps(np.asarray(points, np.float32), size, sigma, stride)
    return np.clip(np.rint(maps.max(axis=-3) * 255.0), 0, 255).astype(np.uint8)
