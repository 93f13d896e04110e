"""Model size and cost: parameters actually used in forward, and MACs at the card's input size.

Parameters are counted over the modules a forward pass calls (found with forward hooks), each
tensor once - shared trunks count once and registered-but-unused modules do not count, which is
how seed_models.md measured the public code. MACs come from
``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention; element-wise ops
are not counted) at batch size 1: MACs = FLOPs / 2.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from fermodels.examples import example_batch
from fermodels.registry import ModelCard, create_model


@dataclass(frozen=True)
class ModelInfo:
    """Size and cost of one model configuration, beside the card it measured (what the model
    needs and where it comes from: name, input size, fields, losses, paper, notes)."""

    card: ModelCard
    params_used: int
    params_registered: int
    params_trainable: int
    macs: int


def used_parameters(model: nn.Module, batch: dict[str, Tensor]) -> list[nn.Parameter]:
    """Parameters of the modules that one forward pass on ``batch`` calls (each once)."""
    called: list[nn.Module] = []
    hooks = [m.register_forward_pre_hook(lambda mod, _args: called.append(mod)) for m in model.modules()]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for h in hooks:
            h.remove()
    seen: dict[int, nn.Parameter] = {}
    for mod in called:
        for p in mod.parameters(recurse=False):
            seen.setdefault(id(p), p)
    return list(seen.values())


def count_macs(model: nn.Module, batch: dict[str, Tensor]) -> int:
    """Multiply-accumulates of one forward pass (FLOPs / 2 as counted by FlopCounterMode)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(batch)
    return counter.get_total_flops() // 2


def model_info(name: str, num_classes: int = 7, **kwargs: object) -> ModelInfo:
    """Build ``name`` and measure it at batch size 1 in eval mode."""
    model = create_model(name, num_classes=num_classes, **kwargs).eval()
    return describe(model)


def describe(model: nn.Module) -> ModelInfo:
    """:class:`ModelInfo` of an already built model (put in eval mode here)."""
    model.eval()
    card: ModelCard = model.card
    batch = example_batch(card, batch_size=1)
    used = used_parameters(model, batch)
    return ModelInfo(
        card=card, params_used=sum(p.numel() for p in used),
        params_registered=sum(p.numel() for p in model.parameters()),
        params_trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        macs=count_macs(model, batch))
