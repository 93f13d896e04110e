"""Optimisers by name, SAM, and learning-rate schedules as pure functions of the (fractional) epoch.

The papers' settings map onto these names: CMNet/PCNN ``sgd`` + ``step`` (StepLR per epoch),
CMNet AffectNet ``adam`` + ``exponential`` (ExponentialLR per epoch), POSTER/POSTER++ ``adam``
wrapped in SAM + ``exponential`` 0.98; ``cosine`` with linear warm-up for everything else.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn

from ferdata.registry import Registry

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")
# a decay: (base_lr, fractional epoch, epochs, warmup_epochs, step_size, gamma) -> lr after the warm-up
SCHEDULES: Registry[Callable[[float, float, int, float, int, float], float]] = Registry("schedule")


@SCHEDULES.register("constant")
def _constant(base_lr: float, epoch: float, epochs: int, warmup: float, step_size: int, gamma: float) -> float:
    return base_lr


@SCHEDULES.register("step")
def _step(base_lr: float, epoch: float, epochs: int, warmup: float, step_size: int, gamma: float) -> float:
    """torch's StepLR stepped per epoch, epochs counted from 0."""
    return base_lr * gamma ** (int(epoch) // step_size)


@SCHEDULES.register("exponential")
def _exponential(base_lr: float, epoch: float, epochs: int, warmup: float, step_size: int, gamma: float) -> float:
    """torch's ExponentialLR stepped per epoch, epochs counted from 0."""
    return base_lr * gamma ** int(epoch)


@SCHEDULES.register("cosine")
def _cosine(base_lr: float, epoch: float, epochs: int, warmup: float, step_size: int, gamma: float) -> float:
    """Smoothly from the end of the warm-up to 0 at ``epochs``."""
    t = (epoch - warmup) / max(1e-8, epochs - warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


@OPTIMIZERS.register("sgd")
def _sgd(params: Iterable[nn.Parameter], lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


@OPTIMIZERS.register("adam")
def _adam(params: Iterable[nn.Parameter], lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    """Adam with L2 weight decay (coupled), as the papers' ``torch.optim.Adam`` calls."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(params: Iterable[nn.Parameter], lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


class SAM:
    """Sharpness-Aware Minimisation (Foret et al., ICLR 2021) around a base optimiser.

    The POSTER lineage (POSTER, POSTER++; Nie et al. by inference) trains with
    ``SAM(Adam, rho=0.05)``. One step takes two gradients::

        loss(w).backward();       sam.first_step()    # w <- w + rho * g / ||g||
        loss(w + e).backward();   sam.second_step()   # w <- w - e, then the base step

    ``adaptive`` is ASAM's element-wise scaling by |w|. ``param_groups`` are the base
    optimiser's, so schedules set the learning rate on either object.
    """

    def __init__(self, base: torch.optim.Optimizer, rho: float, adaptive: bool = False) -> None:
        if rho <= 0:
            raise ValueError(f"SAM rho must be > 0, got {rho}")
        self.base, self.rho, self.adaptive = base, rho, adaptive
        self._perturbation: dict[nn.Parameter, torch.Tensor] = {}

    @property
    def param_groups(self) -> list[dict]:
        return self.base.param_groups

    def _params(self) -> list[nn.Parameter]:
        return [p for g in self.param_groups for p in g["params"] if p.grad is not None]

    @torch.no_grad()
    def first_step(self) -> None:
        """Climb to the worst nearby point and clear the gradients."""
        params = self._params()
        if not params:
            raise RuntimeError("SAM.first_step: no gradients; call backward() first")
        scaled = [(p.abs() * p.grad) if self.adaptive else p.grad for p in params]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in scaled]))
        scale = self.rho / (norm + 1e-12)
        for p, g in zip(params, scaled):
            e = g * scale * (p.abs() if self.adaptive else 1.0)
            p.add_(e)
            self._perturbation[p] = e
        self.zero_grad()

    @torch.no_grad()
    def second_step(self) -> None:
        """Return to the original weights and step with the gradient taken at the worst point."""
        if not self._perturbation:
            raise RuntimeError("SAM.second_step without first_step")
        for p, e in self._perturbation.items():
            p.sub_(e)
        self._perturbation.clear()
        self.base.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.base.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state)


def build_optimizer(name: str, params: Iterable[nn.Parameter], *, lr: float, weight_decay: float,
                    momentum: float, sam: bool, sam_rho: float,
                    sam_adaptive: bool = False) -> torch.optim.Optimizer | SAM:
    """The named optimiser, wrapped in :class:`SAM` (ASAM's with ``sam_adaptive``) when ``sam``."""
    base = OPTIMIZERS.get(name)(list(params), lr, weight_decay, momentum)
    return SAM(base, sam_rho, sam_adaptive) if sam else base


def set_lr(optimizer: torch.optim.Optimizer | SAM, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


def lr_at(epoch_float: float, *, base_lr: float, schedule: str, epochs: int, warmup_epochs: float,
          step_size: int, gamma: float) -> float:
    """Learning rate at a fractional epoch: linear warm-up, then the named decay.

    ``step`` and ``exponential`` change once per epoch (torch's StepLR/ExponentialLR stepped
    per epoch, as the papers do) and count epochs from 0, so a warm-up takes the place of the
    decay's first epochs (timm's convention; after ``warmup_epochs: 1`` an exponential decay
    starts at ``gamma * base_lr``); ``cosine`` decays smoothly from the end of the warm-up to 0
    at ``epochs``. No recipe warms up.
    """
    decay = SCHEDULES.get(schedule)
    if warmup_epochs > 0 and epoch_float < warmup_epochs:
        return base_lr * min(1.0, (epoch_float + 1e-8) / warmup_epochs)    # a warm-up under 1e-8 epochs: lr
    return decay(base_lr, epoch_float, epochs, warmup_epochs, step_size, gamma)
