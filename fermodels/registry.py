"""Model registry and the card every model carries (timm-style ``create_model``).

Contract for every registered model (the trainer, evaluator, exporter and tests
rely on it):

* ``create_model(name, num_classes=7, **kwargs)`` returns an ``nn.Module`` with a
  ``card: ModelCard`` attribute.
* ``forward(batch)`` takes a dict of tensors and returns a dict with at least
  ``"logits"`` (B, num_classes); it may add named auxiliary outputs (features ...).
  Batch keys (all float32 unless noted, images normalised with the card's mean/std):
    - ``image``: (B, 3, S, S) aligned face, S = card.input_size
    - ``left``/``right``: (B, 3, S, S//2) left half and *mirrored* right half
    - ``heatmap``: (B, 1, S//4, S//4) landmark heatmap in [0, 1] (the max over the 68 Gaussians)
    - ``lmk``: (B, 68, 2) landmarks in ``image`` pixel coordinates (iBUG-68 order)
    - ``label``: (B,) int64 canonical class ids
  A model reads only the keys listed in ``card.fields``.
* ``losses(out, batch) -> dict[str, Tensor]`` returns named, already *weighted*
  scalar losses; the trainer optimises their sum and logs each one.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ferdata.registry import Registry
from fermodels.checkpoints import FROM_CHECKPOINT, WEIGHT_FILE_KWARGS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FIELDS = ("image", "left", "right", "heatmap", "lmk")


@dataclass(frozen=True)
class ModelCard:
    """What a model needs and where it comes from."""

    name: str
    input_size: int
    fields: tuple[str, ...]
    losses: tuple[str, ...]
    paper: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    notes: str = ""
    per_sample: bool = True      # False: an eval-mode prediction depends on the other samples in its batch

    def scoring_batch(self, batch_size: int) -> int:
        """The batch size that scores each face on its own: ``batch_size``, or 1 where a face's
        prediction depends on the others in its batch (``per_sample`` false)."""
        return batch_size if self.per_sample else 1

    def __post_init__(self) -> None:
        bad = set(self.fields) - set(FIELDS)
        if bad or "image" not in self.fields:
            raise ValueError(f"{self.name}: fields {self.fields} must include 'image' and be within {FIELDS}")
        if ("left" in self.fields) != ("right" in self.fields):      # a flip swaps them (augment, predict)
            raise ValueError(f"{self.name}: fields {self.fields} must hold both half-faces, 'left' and 'right', or "
                             "neither")


MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str) -> Callable:
    """Register a factory ``fn(num_classes, **kwargs) -> nn.Module`` under ``name``."""
    return MODELS.register(name)


def create_model(name: str, num_classes: int = 7, **kwargs) -> nn.Module:
    """Build a registered model; the result carries ``.card``."""
    _import_model_modules()
    factory = MODELS.get(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    model = factory(num_classes=num_classes, **kwargs)
    if not isinstance(getattr(model, "card", None), ModelCard):
        raise TypeError(f"model {name!r} has no ModelCard in .card")
    return model


def model_kwargs(name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` completed with the factory's defaults for every other keyword (checkpoints
    store this, so a later change of a default never changes a saved model)."""
    _import_model_modules()
    sig = inspect.signature(MODELS.get(name))
    bound = sig.bind_partial(**kwargs)          # an unknown keyword fails here, naming it
    bound.apply_defaults()
    return {k: v for k, v in bound.arguments.items() if k != "num_classes"}


def check_model_kwargs(name: str, kwargs: Mapping[str, Any], num_classes: int = 7) -> None:
    """Build ``name`` with ``kwargs`` on torch's meta device (no memory, no weight file read: a weight-file
    keyword stands for weights from a training checkpoint), so a bad value (a misspelt choice, a float where a
    count goes) is told now, as a ``ValueError``, rather than when training builds the model."""
    given = {k: (FROM_CHECKPOINT if k in WEIGHT_FILE_KWARGS and v else v) for k, v in kwargs.items()}
    try:
        with torch.device("meta"):
            create_model(name, num_classes=num_classes, **given)
    except NotImplementedError:                 # an operation meta tensors lack: judged when training builds it
        return
    except (ValueError, KeyError, TypeError, ArithmeticError, RuntimeError) as err:   # a zero or overflowing count
        # chained, not ``from None``: a TypeError or KeyError of a bug in the model's own code is caught here
        # too, and FER_TRACEBACK=1 must show where it was raised (it showed this line only)
        raise ValueError(f"model {name!r} cannot be built with {dict(kwargs)}: {err}") from err


def list_models() -> list[str]:
    _import_model_modules()
    return MODELS.names()


def _import_model_modules() -> None:
    import fermodels.models  # noqa: F401  (registers every model family)
