"""Loss formulas against hand-computed values and the public code's own formulation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ferdata.registry import UnknownNameError
from fermodels.info import example_batch
from fermodels.losses import LOSSES, half_alignment, neutral_aware_anchor
from fermodels.registry import create_model


def confident(index: int, n: int = 7, classes: int = 7) -> torch.Tensor:
    """Flat logits for ``n`` samples except sample ``index``, which is very confident."""
    logits = torch.zeros(n, classes)
    logits[index, 1] = 10.0
    return logits


# Neutral (0): f0, f1, f2; class 1: f3, f4, f5; class 2: f6 alone.
FEATS = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0],
                      [1.0, 1.0], [3.0, 1.0], [1.0, 5.0], [9.0, 9.0]])
LABELS = torch.tensor([0, 0, 0, 1, 1, 1, 2])


def test_neaa_matches_hand_computation() -> None:
    # neutral: pair MSEs d01=2, d02=2, d12=4; both orders summed = 16; / (3-1)^2 -> 4
    # class 1, anchor f4 (lowest entropy): MSE f3=2, f4=0, f5=10 -> 12 / 3 = 4; class 2 alone -> 0
    assert neutral_aware_anchor(FEATS, confident(4), LABELS).item() == pytest.approx(8.0)
    # anchor f5 instead: MSE f3=8, f4=10, f5=0 -> 18 / 3 = 6; total 10
    assert neutral_aware_anchor(FEATS, confident(5), LABELS).item() == pytest.approx(10.0)


def test_neaa_neutral_class_is_configurable_and_only_neutral_uses_all_pairs() -> None:
    # with class 1 as "neutral", the f3..f5 block uses all pairs: d34=2, d35=8, d45=10 -> 40/4 = 10
    # and class 0 becomes an anchor class: anchor = lowest entropy (all equal -> first, f0): 0+2+2 -> 4/3
    value = neutral_aware_anchor(FEATS, torch.zeros(7, 7), LABELS, neutral=1).item()
    assert value == pytest.approx(10.0 + 4.0 / 3.0)


def test_neaa_is_zero_for_singletons_and_differentiable() -> None:
    feats = torch.randn(4, 8, requires_grad=True)
    assert neutral_aware_anchor(feats, torch.randn(4, 7), torch.tensor([0, 1, 2, 3])).item() == 0.0
    loss = neutral_aware_anchor(feats, torch.randn(4, 7), torch.tensor([0, 0, 3, 3]))
    loss.backward()
    assert loss.item() > 0 and feats.grad is not None and feats.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="features"):
        neutral_aware_anchor(torch.randn(3, 8), torch.randn(4, 7), torch.tensor([0, 0, 1, 1]))


def test_half_alignment_equals_public_partition_loss() -> None:
    left, right = torch.randn(5, 256), torch.randn(5, 256)
    heads = F.log_softmax(torch.stack([left, right], dim=1), dim=1)
    public = 2 * heads.var(dim=1).mean()  # CMNet utils/loss.py PartitionLoss on Model_5's heads
    assert half_alignment(left, right).item() == pytest.approx(public.item(), rel=1e-5)


def test_registry_names_and_unknown() -> None:
    assert {"ce", "neaa", "half_alignment"} <= set(LOSSES.names())
    with pytest.raises(UnknownNameError, match="neaa"):
        LOSSES.get("center")


def test_model_loss_weights() -> None:
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1])
    logits, feats = torch.randn(4, 7), torch.randn(4, 16)
    ce = F.cross_entropy(logits, labels)

    pcda = create_model("pcda", dim=16, heads=2)
    got = pcda.losses({"logits": logits, "features": feats}, {"label": labels})
    assert got["ce"].item() == pytest.approx(ce.item())
    assert got["neaa"].item() == pytest.approx(0.01 * neutral_aware_anchor(feats, logits, labels).item())

    left, right = torch.randn(4, 256), torch.randn(4, 256)
    got = create_model("cmnet").losses(
        {"logits": logits, "left_desc": left, "right_desc": right}, {"label": labels})
    assert got["ce"].item() == pytest.approx(0.9 * ce.item())
    assert got["half_alignment"].item() == pytest.approx(0.1 * half_alignment(left, right).item())

    local = torch.randn(4, 7)
    got = create_model("pcnn").losses({"logits": logits, "local_logits": local}, {"label": labels})
    assert got["ce_main"].item() == pytest.approx(12 * ce.item())
    assert got["ce_local"].item() == pytest.approx(8 * F.cross_entropy(local, labels).item())


def test_pcda_neaa_acts_on_class_tokens_of_the_batch() -> None:
    model = create_model("pcda", dim=32, heads=4).train()
    batch = example_batch(model.card, batch_size=4)
    batch["label"] = torch.tensor([0, 0, 3, 3])
    out = model(batch)
    assert out["features"].shape == (4, 32)
    losses = model.losses(out, batch)
    assert losses["neaa"].item() > 0
    losses["neaa"].backward()
    assert model.image_backbone.input_layer[0].weight.grad is not None
