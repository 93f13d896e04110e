"""Optimisers by name and learning-rate schedules as pure functions of the step."""
from __future__ import annotations

import math

import torch

from ferdata.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")
OPTIMIZERS.register("sgd")(lambda p, lr, wd, mom: torch.optim.SGD(p, lr=lr, momentum=mom, weight_decay=wd))
OPTIMIZERS.register("adam")(lambda p, lr, wd, mom: torch.optim.Adam(p, lr=lr, weight_decay=wd))
OPTIMIZERS.register("adamw")(lambda p, lr, wd, mom: torch.optim.AdamW(p, lr=lr, weight_decay=wd))
SCHEDULES = ("constant", "step", "exponential", "cosine")


def build_optimizer(name: str, params, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(name)(params, lr, weight_decay, momentum)


def lr_at(epoch_float: float, *, base_lr: float, schedule: str, epochs: int, warmup_epochs: float,
          step_size: int, gamma: float) -> float:
    """Learning rate at a (fractional) epoch: linear warm-up, then the named decay."""
    if warmup_epochs > 0 and epoch_float < warmup_epochs:
        return base_lr * (epoch_float + 1e-8) / warmup_epochs
    e = int(epoch_float)
    if schedule == "constant":
        return base_lr
    if schedule == "step":
        return base_lr * gamma ** (e // step_size)
    if schedule == "exponential":
        return base_lr * gamma ** e
    if schedule == "cosine":
        t = (epoch_float - warmup_epochs) / max(1e-8, epochs - warmup_epochs)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
