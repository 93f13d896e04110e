"""An exponential moving average of a model's weights (``train.ema_decay``).

After every optimiser step ``avg = d * avg + (1 - d) * weights``, with the decay warmed up as
``d = min(decay, (1 + step) / (10 + step))`` so the first steps' random weights fade quickly
(TensorFlow's ``ExponentialMovingAverage(num_updates=...)``). Float buffers (BatchNorm's running
statistics) are averaged the same way, integer ones (batch counts) copied. The trainer validates
and saves the average as ``best.pt``; ``last.pt`` keeps the raw weights and the average, to resume.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """The average lives in ``module``, a frozen copy of the model in eval mode."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay!r}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay applied by the update after optimiser step ``step`` (0-based)."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """``avg += (1 - d) * (weights - avg)``, as one fused call over every float tensor (a loop of
        two kernels per tensor is ~200 launches per step for a ResNet-18 on a GPU)."""
        current = model.state_dict()
        averaged, now = [], []
        for name, avg in self.module.state_dict().items():
            if avg.is_floating_point():
                averaged.append(avg)
                now.append(current[name])
            else:
                avg.copy_(current[name])
        torch._foreach_lerp_(averaged, now, 1.0 - self.decay_at(step))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
