"""Loss functions of the seed models.

Models combine these into their ``losses(out, batch)`` dict with their own weights; the
functions here are unweighted so tests can check each formula against its paper or code.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ferdata.classes import NEUTRAL

# The batch key under which the trainer hands a model's losses, under DDP, the
# :class:`fermodels.distributed.GlobalBatch` for losses over the whole step's batch (NeAA).
GLOBAL_BATCH = "global_batch"


Norm = Callable[[Tensor], Tensor]


def cross_entropy(logits: Tensor, labels: Tensor, class_weight: Tensor | None = None,
                  norm: Norm | None = None) -> Tensor:
    """Softmax cross-entropy; with ``class_weight`` (C,) the weighted mean torch defines.

    Models pass ``batch.get("class_weight")`` so the trainer's ``train.class_weights`` works.
    ``norm`` maps the batch's weight sum to the divisor (under DDP: the ranks' mean,
    :meth:`fermodels.distributed.GlobalBatch.mean_over_ranks`).
    """
    if class_weight is None:
        return F.cross_entropy(logits, labels)
    weights = class_weight[labels].sum()
    return F.cross_entropy(logits, labels, weight=class_weight, reduction="sum") / (norm(weights) if norm else weights)


# How a sample's label distribution (``batch["target"]``, FERPlus votes) is trained on, by the
# reader's label mode (Barsoum et al. 2016; microsoft/FERPlus src/train.py): 0 cross-entropy
# against the distribution, 1 one label drawn from it at every step (:func:`draw_targets`),
# 2 any label of it: -log of the highest probability among its classes.
TARGET_KINDS = {"crossentropy": 0, "probability": 1, "multi_target": 2}


def soft_cross_entropy(logits: Tensor, target: Tensor, kind: Tensor, class_weight: Tensor | None = None,
                       smoothing: float = 0.0, norm: Norm | None = None) -> Tensor:
    """Cross-entropy against per-sample distributions ``target`` (B, >= C; truncated to the C
    classes of ``logits`` and renormalised), or for ``kind`` 2 rows ``-log max_{k: t_k > 0} p_k``.
    One-hot targets give exactly :func:`cross_entropy`; ``class_weight`` weighs a sample by its
    target's mean class weight (the weighted mean torch defines, for one-hot targets).
    ``smoothing`` e trains distributions against ``(1 - e) t + e / C`` (label smoothing; one-hot
    targets without weights give torch's ``label_smoothing``); a sample's weight stays its
    unsmoothed target's, and ``kind`` 2 rows (a set of labels, not a distribution) are not smoothed.
    ``norm``: as :func:`cross_entropy`'s, for the weighted mean."""
    t = target[:, : logits.shape[1]].float()
    t = t / t.sum(1, keepdim=True).clamp_min(1e-12)
    logp = F.log_softmax(logits.float(), dim=1)
    smoothed = (1 - smoothing) * t + smoothing / logits.shape[1] if smoothing else t
    per = -(smoothed * logp).sum(1)
    multi = kind == TARGET_KINDS["multi_target"]
    if bool(multi.any()):
        per = torch.where(multi, -logp.masked_fill(t <= 0, float("-inf")).amax(1), per)
    if class_weight is None:
        return per.mean()
    w = (t * class_weight.float()).sum(1)          # not a matmul: autocast would run it in bf16 / fp16
    return (w * per).sum() / (norm(w.sum()) if norm else w.sum())


def label_loss(logits: Tensor, batch: dict) -> Tensor:
    """A model's classification loss for ``batch``: :func:`cross_entropy` on its labels, or
    :func:`soft_cross_entropy` when it carries label distributions (``target``, ``target_kind``)
    or ``label_smoothing`` (the trainer's ``train.label_smoothing``, when above 0); with
    ``batch["class_weight"]`` when the trainer's ``train.class_weights`` is on: under DDP the weighted
    mean over the step's global batch (the ranks' weight sums exchanged)."""
    smoothing = float(batch.get("label_smoothing", 0.0))
    weight, whole = batch.get("class_weight"), batch.get(GLOBAL_BATCH)
    norm = whole.mean_over_ranks if weight is not None and whole is not None else None
    if "target" in batch:
        return soft_cross_entropy(logits, batch["target"], batch["target_kind"], weight, smoothing, norm)
    if smoothing:
        labels = batch["label"]
        return soft_cross_entropy(logits, F.one_hot(labels, logits.shape[1]), torch.zeros_like(labels),
                                  weight, smoothing, norm)
    return cross_entropy(logits, batch["label"], weight, norm)


def draw_targets(batch: dict, generator: torch.Generator, num_classes: int) -> dict:
    """The batch with each ``probability`` row's distribution replaced by one class drawn from it
    (one-hot, trained as cross-entropy): FERPlus's PROB mode, a new draw at every step. Only the
    model's ``num_classes`` are drawn (the distribution renormalised over them, as the other modes
    do): a 7-class model never draws Contempt, which would leave a sample with no target."""
    if "target" not in batch:
        return batch
    mass = batch["target"][:, :num_classes].float()
    rows = ((batch["target_kind"] == TARGET_KINDS["probability"]) & (mass.sum(1) > 0)).nonzero().flatten()
    if not len(rows):
        return batch
    target, kind = batch["target"].clone(), batch["target_kind"].clone()
    drawn = torch.multinomial(mass[rows], 1, generator=generator).flatten()
    target[rows] = F.one_hot(drawn, target.shape[1]).to(target.dtype)
    kind[rows] = TARGET_KINDS["crossentropy"]
    return {**batch, "target": target, "target_kind": kind}


def half_alignment(left: Tensor, right: Tensor) -> Tensor:
    """CMNet's half-face alignment loss: MSE between pooled left/right half descriptors.

    The public code stacks the two (B, C) descriptors, log-softmaxes over the 2-element half
    axis and returns ``2 * var(dim=1).mean()``. The log-softmax shifts both entries by the same
    constant and the unbiased variance of two numbers is (a - b)^2 / 2, so the loss is exactly
    ``mean((left - right)^2)`` - computed directly here (seed_models.md §2.4).
    """
    return torch.mean((left.float() - right.float()) ** 2)  # float32 under autocast too


def neutral_aware_anchor(features: Tensor, logits: Tensor, labels: Tensor, neutral: int = NEUTRAL,
                         valid: Tensor | None = None) -> Tensor:
    """Neutral-expression-aware anchor loss (Nie et al., CVM 2024, §3.2, Eqs. 6-10), batch-wise.

    * each non-neutral class c present in the batch: the anchor is its most confident sample,
      i.e. the one whose softmax over ``logits`` has the lowest entropy (Eq. 6); the loss adds
      ``1/N_c * sum_i MSE(f_i, f_anchor)`` over the class's N_c samples (Eqs. 7-8);
    * the neutral class: ``1/(N_n-1)^2 * sum_i sum_{j != i} MSE(f_i, f_j)`` (Eq. 9);
    * L_NeAA is the sum of both parts (Eq. 10); a class with fewer than 2 samples adds 0.

    ``MSE`` is the mean over feature dimensions. The anchor is chosen without gradient
    (argmin), but gradients flow through both the samples and the anchor feature, as the
    paper does not stop them. Computed for all classes at once, without reading anything back
    from the device (a loop over the classes present waited for the GPU once per class): the
    neutral pairs through their spread about the mean, ``sum_ij MSE(f_i, f_j) = 2 N/D sum_i
    |f_i - mean|^2`` (exact in arithmetic; in float32 it loses precision only for features whose
    offset is orders of magnitude above their spread). Masks select with ``where``, so a sample
    outside a term cannot spoil it (an infinite feature times 0 is nan). ``valid`` (B,) bool
    leaves the other rows out of every term (the padding of a gathered DDP batch,
    :class:`fermodels.distributed.GlobalBatch`).
    """
    if features.dim() != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"features must be (B, D) matching labels (B,), got "
                         f"{tuple(features.shape)} and {tuple(labels.shape)}")
    features = features.float()  # distances in float32 under autocast
    if labels.numel() == 0:
        return features.sum()                                                # 0, on the graph
    real = torch.ones_like(labels, dtype=torch.bool) if valid is None else valid
    member = F.one_hot(labels, logits.shape[-1]).bool() & real[:, None]      # (B, K)
    count = member.sum(0)[labels].float()                                    # N_c of each sample's class
    with torch.no_grad():         # entr(0) = 0: a -inf logit is a certain 0, not 0 * -inf = nan
        entropy = torch.special.entr(torch.softmax(logits.float(), dim=-1)).sum(-1)
        entropy = entropy.nan_to_num(nan=torch.finfo(entropy.dtype).max)     # never the anchor, still a member
        # each class's most confident sample (the first of equals, as argmin over the class's samples)
        anchor = torch.where(member, entropy[:, None], torch.inf).argmin(0)[labels]
    to_anchor = ((features - features[anchor]) ** 2).mean(-1)               # (B,)
    # count >= 1 in the divisor: a padded row's count may be 0, and 0/0 in the branch ``where`` drops is a
    # nan gradient all the same
    anchored = torch.where(real & (count >= 2) & (labels != neutral), to_anchor / count.clamp(min=1), 0.0).sum()
    is_neutral = real & (labels == neutral)
    n = is_neutral.sum().float()
    neutral_features = torch.where(is_neutral[:, None], features, 0.0)
    mean = neutral_features.sum(0) / n.clamp(min=1)
    spread = torch.where(is_neutral, ((neutral_features - mean) ** 2).sum(-1), 0.0).sum()   # sum_i |f_i - mean|^2
    pairs = 2 * n * spread / (features.shape[1] * (n - 1).clamp(min=1) ** 2)
    return anchored + torch.where(n >= 2, pairs, 0.0)
