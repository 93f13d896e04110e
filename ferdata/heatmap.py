"""Landmark heatmaps: one Gaussian renderer for the derive stage and for models.

Works on numpy arrays and on torch tensors (same code path via the array's own
``exp``), so the stored single-channel map and the per-landmark maps a model
renders on the GPU from ``lmk.npy`` agree exactly.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def gaussian_heatmaps(points: Any, size: int, sigma: float, stride: float = 1.0) -> Any:
    """Per-landmark Gaussian maps.

    points: (..., K, 2) in input-pixel coordinates (numpy or torch).
    Returns (..., K, size, size) with peak 1 at each point; grid cell centres are at
    ``(i + 0.5) * stride - 0.5`` input pixels, so the map is a downsampled view.
    ``sigma`` is in heatmap cells (the true standard deviation, not a window size).
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if isinstance(points, np.ndarray):
        xp_arange, exp = np.arange, np.exp
        grid = xp_arange(size, dtype=np.float32)
    else:  # torch
        import torch

        grid = torch.arange(size, dtype=points.dtype, device=points.device)
        exp = torch.exp
    cells = (points + 0.5) / stride - 0.5             # (..., K, 2) in heatmap cells
    dx = grid - cells[..., 0:1]                        # (..., K, W)
    dy = grid - cells[..., 1:2]                        # (..., K, H)
    gx = exp(-(dx * dx) / (2 * sigma * sigma))
    gy = exp(-(dy * dy) / (2 * sigma * sigma))
    return gy[..., :, None] * gx[..., None, :]         # separable: (..., K, H, W)


def summed_heatmap_u8(points: np.ndarray, size: int, sigma: float, stride: float) -> np.ndarray:
    """The stored single-channel map: max over landmarks, uint8 0..255."""
    maps = gaussian_heatmaps(np.asarray(points, np.float32), size, sigma, stride)
    return np.clip(np.rint(maps.max(axis=-3) * 255.0), 0, 255).astype(np.uint8)
