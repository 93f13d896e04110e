"""Self-describing training checkpoints: weights plus everything needed to rebuild,
resume and audit the run. Loaded with ``torch.load(weights_only=True)`` only."""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ferdata.classes import class_names
from fermodels.registry import create_model


def save_checkpoint(path: str | Path, *, model: nn.Module, model_name: str, model_kwargs: dict,
                    num_classes: int, optimizer: torch.optim.Optimizer | None, epoch: int, step: int,
                    best: dict, params: Any, data: dict) -> None:
    """Write atomically (temp + rename) so a kill never leaves a truncated checkpoint."""
    state = {
        "format": "fermodels-checkpoint/1",
        "model": model_name, "model_kwargs": dict(model_kwargs), "num_classes": num_classes,
        "classes": list(class_names(num_classes)), "card": asdict(model.card),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": epoch, "step": step, "best": dict(best),
        "params": asdict(params) if params is not None else {}, "data": data,
        "torch_rng": torch.get_rng_state(),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != "fermodels-checkpoint/1":
        raise ValueError(f"{path} is not a fermodels checkpoint (format {state.get('format')!r})")
    return state


def model_from_checkpoint(state: dict) -> nn.Module:
    """Rebuild the model named in a checkpoint and load its weights strictly."""
    model = create_model(state["model"], num_classes=state["num_classes"], **state["model_kwargs"])
    model.load_state_dict(state["state_dict"], strict=True)
    return model.eval()
