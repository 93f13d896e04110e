"""What every model family shares: the batch type, the batch checked against a model's card (:func:`require`),
steps made on the input's device (:func:`arange_like`, which traces so), and the heatmap-centres choice."""
from __future__ import annotations

from typing import Mapping

from torch import Tensor

from fermodels.registry import ModelCard

Batch = Mapping[str, Tensor]


def require(batch: Batch, key: str, card: ModelCard, width: int | None = None) -> Tensor:
    """``batch[key]`` checked against the card: present, 4-D image-like tensors at input size.

    ``width`` overrides the expected width (half faces are S x S/2).
    """
    if not isinstance(batch, Mapping):          # model(images): ``key in tensor`` failed with "Tensor.__contains__ ..."
        raise TypeError(f"model {card.name!r} takes a batch dict of its card's fields {card.fields} (e.g. "
                        f"{{'image': (B, 3, {card.input_size}, {card.input_size}) float}}, normalised with the card's "
                        f"mean/std: fermodels.modelinput.normalise), got {type(batch).__name__}")
    if key not in batch:
        raise KeyError(f"model {card.name!r} needs batch[{key!r}]; its card lists fields "
                       f"{card.fields}, the batch has {sorted(batch)}")
    x = batch[key]
    if not (isinstance(x, Tensor) and x.is_floating_point()):    # uint8 pixels failed deep in a convolution
        raise TypeError(f"model {card.name!r} expects batch[{key!r}] as a float tensor"
                        + (" (images normalised with the card's mean/std: fermodels.modelinput.normalise(batch, "
                           "model.card) makes them from uint8 pixels)" if key in ("image", "left", "right", "heatmap")
                           else "") + f", got {x.dtype if isinstance(x, Tensor) else type(x).__name__}")
    s = card.input_size
    if key in ("image", "left", "right"):
        want = (s, s if width is None else width)
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != want:
            raise ValueError(f"model {card.name!r} expects batch[{key!r}] of shape (B, 3, {want[0]}, "
                             f"{want[1]}), got {tuple(x.shape)}; resize faces to the card's input_size")
    if key == "heatmap" and (x.dim() != 4 or tuple(x.shape[1:]) != (1, s // 4, s // 4)):
        raise ValueError(f"model {card.name!r} expects batch['heatmap'] of shape (B, 1, {s // 4}, {s // 4}) (a "
                         f"quarter of the input side), got {tuple(x.shape)}")
    if key == "lmk" and (x.dim() != 3 or tuple(x.shape[1:]) != (68, 2)):
        raise ValueError(f"model {card.name!r} expects batch['lmk'] of shape (B, 68, 2) (iBUG-68 x, y in image "
                         f"pixels), got {tuple(x.shape)}")
    if key != "image" and "image" in batch and x.shape[0] != batch["image"].shape[0]:
        raise ValueError(f"model {card.name!r}: batch[{key!r}] holds {x.shape[0]} samples, batch['image'] "
                         f"{batch['image'].shape[0]}")
    return x


HEATMAP_CENTRES = ("features", "cells")


def arange_like(like: Tensor, n: int) -> Tensor:
    """0, 1, ..., n - 1 in ``like``'s dtype, on its device, and so when traced: ``torch.arange(n,
    device=like.device)`` is traced with that device as a constant, and a TorchScript export moved to a GPU
    made these steps on the CPU and failed there (pcnn, pcda)."""
    return like.new_ones(n).cumsum(0, dtype=like.dtype) - 1


def check_heatmap_centres(centres: str) -> None:
    if centres not in HEATMAP_CENTRES:
        raise ValueError(f"heatmap_centres must be one of {HEATMAP_CENTRES}, got {centres!r}")
