"""Stand-in model inputs where no face was prepared: a plausible 68-point shape and a random batch of
exactly a card's fields (model checks, torch.compile's trial step, export's tracing, size counts, tests)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from fermodels.registry import ModelCard


def synthetic_landmarks(size: int) -> Tensor:
    """A plausible frontal iBUG-68 shape (68, 2) in pixel coordinates of a ``size`` crop.

    Drawn from ellipses and lines (jaw, brows, nose, eyes, lips) in fractions of the crop, 0 and 1
    the first and last pixel centres; used for examples and tests wherever a model needs landmarks
    and no detector ran.
    """
    def arc(cx: float, cy: float, rx: float, ry: float, degrees: list[float]) -> list[tuple[float, float]]:
        return [(cx + rx * math.cos(math.radians(a)), cy - ry * math.sin(math.radians(a))) for a in degrees]

    def line(x0: float, y0: float, x1: float, y1: float, n: int) -> list[tuple[float, float]]:
        return [(x0 + (x1 - x0) * i / (n - 1), y0 + (y1 - y0) * i / (n - 1)) for i in range(n)]

    jaw = [(0.5 - 0.42 * math.cos(s), 0.38 + 0.55 * math.sin(s))
           for s in (math.pi * i / 16 for i in range(17))]
    eye = [180.0, 120.0, 60.0, 0.0, -60.0, -120.0]
    pts = (jaw + line(0.17, 0.30, 0.43, 0.28, 5) + line(0.57, 0.28, 0.83, 0.30, 5)
           + line(0.5, 0.38, 0.5, 0.58, 4) + line(0.42, 0.63, 0.58, 0.63, 5)
           + arc(0.32, 0.42, 0.08, 0.03, eye) + arc(0.68, 0.42, 0.08, 0.03, eye)
           + arc(0.5, 0.78, 0.15, 0.06, [180.0 - 30.0 * i for i in range(12)])
           + arc(0.5, 0.78, 0.10, 0.025, [180.0 - 45.0 * i for i in range(8)]))
    return torch.tensor(pts, dtype=torch.float32) * (size - 1)


def example_batch(card: ModelCard, batch_size: int = 2, num_classes: int = 7,
                  seed: int = 0) -> dict[str, Tensor]:
    """A random batch holding exactly ``card.fields`` (+ ``label``) at the card's input size."""
    g = torch.Generator().manual_seed(seed)
    s = card.input_size
    batch: dict[str, Tensor] = {"label": torch.arange(batch_size) % num_classes}
    for field in card.fields:
        if field == "image":
            batch[field] = torch.randn(batch_size, 3, s, s, generator=g)
        elif field in ("left", "right"):
            batch[field] = torch.randn(batch_size, 3, s, s // 2, generator=g)
        elif field == "heatmap":
            batch[field] = torch.rand(batch_size, 1, s // 4, s // 4, generator=g)
        elif field == "lmk":
            jitter = torch.randn(batch_size, 68, 2, generator=g) * (s / 100)
            batch[field] = synthetic_landmarks(s)[None] + jitter
    return batch
