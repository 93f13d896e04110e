"""Loss formulas against hand-computed values and the public code's own formulation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fermodels.examples import example_batch
from fermodels.losses import (TARGET_KINDS, cross_entropy, draw_targets, half_alignment, label_loss,
                              neutral_aware_anchor, soft_cross_entropy)
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


def _neaa_per_class(features, logits, labels, neutral=0):
    """NeAA written class by class, as Eqs. 6-10 read: the reference for the batched version."""
    entropy = -(logits.float().log_softmax(-1).exp() * logits.float().log_softmax(-1)).sum(-1)
    total = features.new_zeros(())
    for c in sorted(set(labels.tolist())):
        idx = [i for i in range(len(labels)) if labels[i] == c]
        f, n = features[idx].float(), len(idx)
        if n < 2:
            continue
        if c == neutral:
            pairs = sum(((f[i] - f[j]) ** 2).mean() for i in range(n) for j in range(n) if i != j)
            total = total + pairs / (n - 1) ** 2
        else:
            anchor = f[min(range(n), key=lambda k: (float(entropy[idx[k]]), k))]      # lowest entropy, first of equals
            total = total + sum(((f[i] - anchor) ** 2).mean() for i in range(n)) / n
    return total


@pytest.mark.parametrize("seed", range(8))
def test_neaa_batched_equals_the_per_class_formula_with_its_gradient(seed) -> None:
    g = torch.Generator().manual_seed(seed)
    b = [5, 16, 33][seed % 3]
    labels = torch.randint(0, [2, 7, 7, 3][seed % 4], (b,), generator=g)
    if seed == 5:
        labels[:] = 0                                                    # neutral only
    if seed == 6:
        labels = torch.where(labels == 0, 1, labels)                    # no neutral at all
    logits = torch.randn(b, 7, generator=g) * 3
    logits[: b // 3] = 0.0                                               # equal entropies: the first one anchors
    feats = (torch.randn(b, 12, generator=g) + 5.0).requires_grad_()     # offset: pairs as differences of large values
    ref = feats.detach().clone().requires_grad_()
    got, want = neutral_aware_anchor(feats, logits, labels), _neaa_per_class(ref, logits, labels)
    got.backward()
    want.backward() if want.requires_grad else None
    assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(feats.grad, ref.grad if ref.grad is not None else torch.zeros_like(feats),
                               rtol=1e-4, atol=1e-6)


def test_neaa_of_no_samples_is_zero_and_a_bad_feature_outside_a_term_leaves_it_alone() -> None:
    empty = neutral_aware_anchor(torch.zeros(0, 4, requires_grad=True), torch.zeros(0, 7), torch.zeros(0, dtype=int))
    assert empty.item() == 0.0 and empty.requires_grad
    feats = torch.randn(6, 4)
    labels = torch.tensor([0, 0, 0, 3, 3, 5])                    # class 5: one sample, in no term
    want = _neaa_per_class(feats, torch.zeros(6, 7), labels)
    feats[5] = torch.inf
    assert neutral_aware_anchor(feats, torch.zeros(6, 7), labels).item() == pytest.approx(want.item())


def test_neaa_leaves_rows_marked_invalid_out_of_every_term() -> None:
    """A gathered DDP batch is padded to a fixed size; the padding (zeros, label 0 = neutral, or
    any junk) must not join the neutral pairs, a class's count or its anchor."""
    g = torch.Generator().manual_seed(3)
    labels = torch.tensor([0, 0, 0, 3, 3, 3, 5])
    feats, logits = torch.randn(7, 6, generator=g), torch.randn(7, 7, generator=g)
    want = _neaa_per_class(feats, logits, labels)
    pad_labels = torch.tensor([0, 3, 3])
    pad_logits = torch.zeros(3, 7)
    pad_logits[1, 3] = 50.0                                       # a padded row more confident than any real one
    padded = neutral_aware_anchor(torch.cat([feats, torch.full((3, 6), 9.0)]), torch.cat([logits, pad_logits]),
                                  torch.cat([labels, pad_labels]), valid=torch.arange(10) < 7)
    assert padded.item() == pytest.approx(want.item(), rel=1e-6)
    assert neutral_aware_anchor(torch.cat([feats, torch.full((3, 6), 9.0)]), torch.cat([logits, pad_logits]),
                                torch.cat([labels, pad_labels])).item() != pytest.approx(want.item(), rel=1e-3)


def test_neaa_gradient_with_padding_and_no_neutral_sample_is_the_unpadded_one() -> None:
    """A padded row (label 0 = neutral) of a step without a real neutral sample counted 0 samples:
    its 0/0 in the branch ``where`` drops made the gradient nan (DDP spread it to every rank)."""
    g = torch.Generator().manual_seed(5)
    labels = torch.tensor([3, 3, 5, 5, 1])
    feats, logits = torch.randn(5, 6, generator=g, requires_grad=True), torch.randn(5, 7, generator=g)
    neutral_aware_anchor(feats, logits, labels).backward()
    padded = torch.cat([feats.detach(), torch.zeros(3, 6)]).requires_grad_()
    loss = neutral_aware_anchor(padded, torch.cat([logits, torch.zeros(3, 7)]),
                                torch.cat([labels, torch.zeros(3, dtype=torch.long)]), valid=torch.arange(8) < 5)
    loss.backward()
    assert torch.isfinite(padded.grad).all()
    torch.testing.assert_close(padded.grad[:5], feats.grad)
    assert not padded.grad[5:].any()


def test_neaa_anchor_is_the_most_confident_even_beside_a_minus_infinite_logit() -> None:
    """The entropy was -(p log p) from log_softmax: a -inf logit made 0 * -inf = nan, and argmin
    took that sample, the least confident of its class, as the anchor."""
    logits = confident(4)
    logits[5, 2] = -torch.inf                                   # f5: flat otherwise, one class ruled out
    assert neutral_aware_anchor(FEATS, logits, LABELS).item() == pytest.approx(8.0)     # anchor f4, as above
    logits[3] = torch.nan                                       # a sample whose entropy is unknown: never the anchor
    assert neutral_aware_anchor(FEATS, logits, LABELS).item() == pytest.approx(8.0)


def test_neaa_reads_nothing_back_from_the_device() -> None:
    """The loss runs on the meta device (shapes, no data): no per-class loop, no ``unique`` or
    ``nonzero`` whose sizes would need the values, i.e. no wait for the GPU in a training step."""
    meta = torch.device("meta")
    loss = neutral_aware_anchor(torch.empty(8, 16, device=meta), torch.empty(8, 7, device=meta),
                                torch.empty(8, dtype=torch.int64, device=meta))
    assert loss.device == meta and loss.shape == ()


def test_half_alignment_equals_public_partition_loss() -> None:
    left, right = torch.randn(5, 256), torch.randn(5, 256)
    heads = F.log_softmax(torch.stack([left, right], dim=1), dim=1)
    public = 2 * heads.var(dim=1).mean()  # CMNet utils/loss.py PartitionLoss on Model_5's heads
    assert half_alignment(left, right).item() == pytest.approx(public.item(), rel=1e-5)


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


# ---- label distributions (FERPlus label modes) ------------------------------------------------

def _logits_targets(n: int = 6, classes: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g) * 2
    labels = torch.randint(0, classes, (n,), generator=g)
    return logits, labels


@pytest.mark.parametrize("weighted", [False, True])
def test_one_hot_targets_give_plain_cross_entropy(weighted: bool) -> None:
    logits, labels = _logits_targets()
    weight = torch.linspace(0.5, 2.0, 7) if weighted else None
    target = F.one_hot(labels, 8).float()                      # 8 canonical classes, a 7-class model
    kind = torch.zeros(6, dtype=torch.int64)
    want = F.cross_entropy(logits, labels, weight=weight)
    assert soft_cross_entropy(logits, target, kind, weight).item() == pytest.approx(want.item(), rel=1e-6)
    batch = {"label": labels, "target": target, "target_kind": kind, **({"class_weight": weight} if weighted else {})}
    assert label_loss(logits, batch).item() == pytest.approx(want.item(), rel=1e-6)


def test_soft_targets_cross_entropy_and_multi_target_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    p = logits.softmax(1)
    # row 0: crossentropy against (0.5, 0.3, 0.2) given over 4 classes with mass 0.2 on a 4th
    # (a class the model lacks: dropped and renormalised); row 1: multi_target over {0, 2}
    target = torch.tensor([[0.4, 0.24, 0.16, 0.2], [0.5, 0.0, 0.5, 0.0]])
    kind = torch.tensor([TARGET_KINDS["crossentropy"], TARGET_KINDS["multi_target"]])
    ce0 = -(0.5 * p[0, 0].log() + 0.3 * p[0, 1].log() + 0.2 * p[0, 2].log())
    mt1 = -torch.log(torch.maximum(p[1, 0], p[1, 2]))          # class 1, the most likely, is not a target
    assert soft_cross_entropy(logits, target, kind).item() == pytest.approx(((ce0 + mt1) / 2).item(), rel=1e-6)
    weight = torch.tensor([1.0, 2.0, 3.0])
    w0, w1 = 0.5 * 1 + 0.3 * 2 + 0.2 * 3, 0.5 * 1 + 0.5 * 3
    got = soft_cross_entropy(logits, target, kind, weight).item()
    assert got == pytest.approx(((w0 * ce0 + w1 * mt1) / (w0 + w1)).item(), rel=1e-6)
    logits.requires_grad_(True)
    soft_cross_entropy(logits, target, kind).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[1, 1] > 0   # pushed away from the non-target


def test_label_smoothing_is_torchs_on_hard_labels_and_mixes_soft_targets_by_hand() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 7), torch.tensor([0, 1, 2, 6, 6, 3])
    for e in (0.1, 0.3):
        want = F.cross_entropy(logits, labels, label_smoothing=e)
        got = label_loss(logits, {"label": labels, "label_smoothing": e})
        assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert label_loss(logits, {"label": labels, "label_smoothing": 0.0}).item() == pytest.approx(
        F.cross_entropy(logits, labels).item(), rel=1e-6)
    # weighted: each sample counts by its label's weight, its target is smoothed
    weight = torch.tensor([1.0, 2.0, 3.0, 1.0, 1.0, 1.0, 0.5])
    logp = logits.log_softmax(1)
    per = -(0.8 * logp[torch.arange(6), labels] + 0.2 / 7 * logp.sum(1))
    w = weight[labels]
    got = label_loss(logits, {"label": labels, "label_smoothing": 0.2, "class_weight": weight}).item()
    assert got == pytest.approx(((w * per).sum() / w.sum()).item(), rel=1e-6)
    # distributions mix the same way; a multi_target row (a set of labels) stays as it was
    small = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    p = small.softmax(1)
    target = torch.tensor([[0.5, 0.3, 0.2], [0.5, 0.0, 0.5]])
    kind = torch.tensor([TARGET_KINDS["crossentropy"], TARGET_KINDS["multi_target"]])
    mixed = [0.9 * t + 0.1 / 3 for t in (0.5, 0.3, 0.2)]
    ce0 = -sum(m * p[0, k].log() for k, m in enumerate(mixed))
    mt1 = -torch.maximum(p[1, 0], p[1, 2]).log()
    got = soft_cross_entropy(small, target, kind, smoothing=0.1).item()
    assert got == pytest.approx(((ce0 + mt1) / 2).item(), rel=1e-6)


def test_probability_rows_draw_one_label_per_step_from_their_distribution() -> None:
    dist = torch.tensor([0.7, 0.0, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0])
    n = 4000
    batch = {"label": torch.zeros(n, dtype=torch.int64), "target": dist.repeat(n, 1),
             "target_kind": torch.full((n,), TARGET_KINDS["probability"])}
    batch["target_kind"][0] = TARGET_KINDS["crossentropy"]     # not a probability row: left alone
    drawn = draw_targets(batch, torch.Generator().manual_seed(1), 8)
    assert torch.equal(drawn["target"][0], dist) and torch.equal(batch["target"][1], dist)   # input untouched
    rows = drawn["target"][1:]
    assert torch.equal(rows.sum(1), torch.ones(n - 1)) and set(rows.argmax(1).tolist()) == {0, 2}
    assert rows[:, 0].mean().item() == pytest.approx(0.7, abs=0.03)
    assert (drawn["target_kind"] == TARGET_KINDS["crossentropy"]).all()
    again = draw_targets(batch, torch.Generator().manual_seed(1), 8)
    assert torch.equal(again["target"], drawn["target"])       # the step's generator decides: resumable
    plain = {"label": torch.zeros(2, dtype=torch.int64)}
    assert draw_targets(plain, torch.Generator(), 8) is plain


def test_a_seven_class_model_draws_only_its_classes() -> None:
    """FERPlus votes for Contempt (class 7) on a face whose majority is kept: a 7-class model's
    draw comes from the other votes, renormalised, so every row keeps a full one-hot target and
    the loss is the cross-entropy of its drawn classes (a drawn Contempt was an all-zero row,
    which added nothing to the loss but counted in its mean)."""
    dist = torch.tensor([0.0, 0.6, 0.0, 0.0, 0.0, 0.0, 0.0, 0.4])       # Happy 6 votes, Contempt 4
    n = 2000
    batch = {"label": torch.ones(n, dtype=torch.int64), "target": dist.repeat(n, 1),
             "target_kind": torch.full((n,), TARGET_KINDS["probability"])}
    drawn = draw_targets(batch, torch.Generator().manual_seed(3), 7)
    assert set(drawn["target"].argmax(1).tolist()) == {1}
    logits = torch.zeros(n, 7)
    assert label_loss(logits, drawn).item() == pytest.approx(math.log(7), rel=1e-6)


@pytest.mark.parametrize("soft", [False, True])
def test_class_weights_of_a_smoothed_or_soft_loss_stay_exact_under_bf16_autocast(soft):
    """``t @ class_weight`` was a matmul, which autocast runs in bf16: each sample's weight rounded to
    8 bits of mantissa (up to 0.4%), and the loss 6e-4 off the documented weighted mean; the
    hard-label weighted loss was exact."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 7, generator=g).bfloat16()          # what a bf16 model hands the loss
    weight = torch.tensor([1.3, 0.7, 2.9, 1.1, 5.37, 9.81, 0.55])
    batch = {"label": torch.arange(7), "class_weight": weight, "label_smoothing": 0.1}
    if soft:
        batch |= {"target": torch.softmax(torch.randn(7, 8, generator=g), 1),
                  "target_kind": torch.zeros(7, dtype=torch.long)}
    want = label_loss(logits.float(), batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = label_loss(logits, batch)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_hard_labels_with_class_weights_give_torchs_weighted_mean() -> None:
    """The default path of train.class_weights (hard labels, no smoothing, no distributions) was only
    compared with itself under DDP: dividing by the sum of the class weights instead of the batch's
    weight sum (sum_i w[y_i]) passed. torch's weighted mean is the reference."""
    logits, labels = _logits_targets(n=9)
    weight = torch.tensor([1.3, 0.7, 2.9, 1.1, 5.37, 9.81, 0.55])
    want = F.cross_entropy(logits, labels, weight=weight)
    assert cross_entropy(logits, labels, weight).item() == pytest.approx(want.item(), rel=1e-6)
    assert label_loss(logits, {"label": labels, "class_weight": weight}).item() == pytest.approx(want.item(), rel=1e-6)


def test_a_probability_row_with_no_votes_in_the_models_classes_is_left_as_it_is() -> None:
    """A row whose every vote is Contempt has nothing for a 7-class model to draw: without the guard
    torch.multinomial raised on its all-zero row and stopped the training step."""
    only_contempt = torch.tensor([0.0] * 7 + [1.0])
    happy = torch.tensor([0.0, 1.0] + [0.0] * 6)
    batch = {"label": torch.tensor([7, 1]), "target": torch.stack([only_contempt, happy]),
             "target_kind": torch.full((2,), TARGET_KINDS["probability"])}
    drawn = draw_targets(batch, torch.Generator().manual_seed(0), 7)
    assert torch.equal(drawn["target"][0], only_contempt) and drawn["target_kind"][0] == TARGET_KINDS["probability"]
    assert torch.equal(drawn["target"][1], happy) and drawn["target_kind"][1] == TARGET_KINDS["crossentropy"]
