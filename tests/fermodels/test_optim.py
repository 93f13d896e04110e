"""Optimisers by name, SAM against its formula, and the schedules as pure functions."""
from __future__ import annotations

import math

import pytest
import torch

from ferdata.registry import UnknownNameError
from fermodels.optim import SAM, build_optimizer, lr_at, set_lr

KW = dict(base_lr=0.1, epochs=10, warmup_epochs=0, step_size=3, gamma=0.5)


def test_schedules():
    assert lr_at(0.0, schedule="constant", **KW) == 0.1
    assert [lr_at(e, schedule="step", **KW) for e in (0, 2.9, 3, 6.5)] == [0.1, 0.1, 0.05, 0.025]
    assert lr_at(2.7, schedule="exponential", **KW) == pytest.approx(0.1 * 0.5 ** 2)
    assert lr_at(0.0, schedule="cosine", **KW) == pytest.approx(0.1)
    assert lr_at(5.0, schedule="cosine", **KW) == pytest.approx(0.05)
    assert lr_at(10.0, schedule="cosine", **KW) == pytest.approx(0.0)
    warm = {**KW, "warmup_epochs": 2}
    assert lr_at(1.0, schedule="cosine", **warm) == pytest.approx(0.05)
    assert lr_at(2.0, schedule="cosine", **warm) == pytest.approx(0.1)
    assert lr_at(6.0, schedule="cosine", **warm) == pytest.approx(0.05)
    with pytest.raises(KeyError, match="unknown schedule 'poly'; known: constant, cosine, exponential, step"):
        lr_at(1.0, schedule="poly", **KW)                   # a registry's error, as an unknown optimizer's


def test_a_warm_up_shorter_than_its_rounding_never_exceeds_the_lr():
    """(e + 1e-8) / warmup_epochs made the first step 10x train.lr with warmup_epochs 1e-9."""
    assert lr_at(0.0, schedule="constant", **{**KW, "warmup_epochs": 1e-9}) == 0.1


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                      ("adamw", torch.optim.AdamW)])
def test_optimizers_by_name(name, cls):
    p = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer(name, [p], lr=0.1, weight_decay=0.01, momentum=0.9, sam=False, sam_rho=0.05)
    assert isinstance(opt, cls) and opt.param_groups[0]["weight_decay"] == 0.01
    with pytest.raises(UnknownNameError, match="adamw"):
        build_optimizer("lamb", [p], lr=0.1, weight_decay=0, momentum=0, sam=False, sam_rho=0.05)


def test_sam_step_matches_the_formula():
    """One SAM-SGD step on f(w) = sum(a * w^2): g' is taken at w + rho * g / |g|."""
    a = torch.tensor([1.0, 3.0, -0.5])
    w0 = torch.tensor([0.5, -1.0, 2.0])
    w = torch.nn.Parameter(w0.clone())
    sam = build_optimizer("sgd", [w], lr=0.1, weight_decay=0.0, momentum=0.0, sam=True, sam_rho=0.05)
    assert isinstance(sam, SAM)
    (a * w ** 2).sum().backward()
    sam.first_step()
    assert w.grad is None
    (a * w ** 2).sum().backward()
    sam.second_step()
    g = 2 * a * w0
    w_adv = w0 + 0.05 * g / g.norm()
    assert torch.allclose(w.detach(), w0 - 0.1 * (2 * a * w_adv), atol=1e-6)
    set_lr(sam, 0.01)
    assert sam.base.param_groups[0]["lr"] == 0.01
    assert set(sam.state_dict()) == {"state", "param_groups"}


def test_sam_refuses_misuse():
    w = torch.nn.Parameter(torch.ones(2))
    sam = build_optimizer("adam", [w], lr=0.1, weight_decay=0, momentum=0, sam=True, sam_rho=0.05)
    with pytest.raises(RuntimeError, match="backward"):
        sam.first_step()
    with pytest.raises(RuntimeError, match="first_step"):
        sam.second_step()
    with pytest.raises(ValueError, match="rho"):
        build_optimizer("adam", [w], lr=0.1, weight_decay=0, momentum=0, sam=True, sam_rho=0.0)


def test_sam_adaptive_scales_by_weight_magnitude():
    w = torch.nn.Parameter(torch.tensor([2.0, 0.0]))
    base = torch.optim.SGD([w], lr=0.0)
    sam = SAM(base, rho=0.1, adaptive=True)
    w.grad = torch.tensor([1.0, 1.0])
    sam.first_step()
    assert w.detach()[1] == 0.0 and w.detach()[0] == pytest.approx(2.0 + 0.1 * 4 / math.sqrt(4))


def test_warm_up_ends_exactly_at_warmup_epochs():
    """Bug guarded: the warm-up bound made inclusive: at epoch 1.0 after ``warmup_epochs: 1`` an
    exponential decay must give gamma * base_lr (timm's convention, the docstring's), not base_lr."""
    kw = dict(base_lr=0.1, epochs=10, warmup_epochs=1.0, step_size=1, gamma=0.5)
    assert lr_at(1.0, schedule="exponential", **kw) == pytest.approx(0.05)
    assert lr_at(1.0, schedule="step", **kw) == pytest.approx(0.05)
    assert lr_at(0.5, schedule="exponential", **kw) == pytest.approx(0.05)      # half-way up the warm-up


def test_adam_couples_weight_decay_into_the_gradient():
    """Bug guarded: ``adam`` built as AdamW (decoupled decay). The papers' torch.optim.Adam adds
    wd * w to the gradient: with zero loss gradient, w = 1, wd = 0.1, lr = 0.1 the first step sees
    gradient 0.1 and moves w by lr (Adam's first step is lr * sign), to 0.9; AdamW gives 0.99."""
    w = torch.nn.Parameter(torch.ones(1))
    opt = build_optimizer("adam", [w], lr=0.1, weight_decay=0.1, momentum=0.9, sam=False, sam_rho=0.05)
    w.grad = torch.zeros(1)
    opt.step()
    assert w.item() == pytest.approx(0.9, abs=1e-6)
