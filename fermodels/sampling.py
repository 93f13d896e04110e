"""Class imbalance: class-balanced resampling of sample streams and class weights for the loss
(what published AffectNet results need, datasets_and_pipeline.md §1.3).

Published AffectNet numbers come from ``ImbalancedDatasetSampler`` (per-sample weight
``1 / count(label)``, drawn with replacement; DAN, CMNet, POSTER++ issue #12). A WebDataset
stream has no random access, so the same expectation is reached by *repeating* samples: a
sample of class ``c`` is emitted ``floor(r_c)`` or ``ceil(r_c)`` times, with ``r_c`` = (epoch
samples / number of present classes) / count(c) and the rounding decided by a hash of (the
epoch's stream seed, pass, key). Rare classes repeat (Contempt about 10x on AffectNet-8),
frequent ones are mostly skipped (Happy about 0.27x), a different part of them every epoch, so
over epochs every sample is seen, as with drawing; a sample's copies are spread over the
following samples (:data:`COPY_SPREAD`), not emitted in a row. Each shuffle stream of each rank
makes its share of the epoch from its part of one pass over the split (``plan_epoch(one_pass=True)``)
with the split's rates. Deterministic: the same (seed, epoch) gives the same stream, so resumed
runs match.

The rates assume each part holds the split's class mix. With one dataset it does (the shard stage
hash-shuffles a dataset's samples into its shards); with several, each shard holds one dataset,
so each part takes the same fraction of every dataset (:func:`fermodels.epochplan._take_mixed`)
and reads them interleaved (:func:`fermodels.stream.read_pieces`): with parts of whole shards, a
part of one dataset filling its quota skewed the epoch (1,000 samples of class A alone beside
500 A + 500 B, one shard each: 62% A). The trainer logs what each epoch held
(``train/class_share/<class>``).
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ferdata.splits import unit_hash

SAMPLERS = ("shuffle", "balanced")


@dataclass(frozen=True)
class ClassRepeat:
    """Expected copies per sample of each canonical class id (index = class id)."""

    rates: tuple[float, ...]

    @classmethod
    def balanced(cls, histogram: Sequence[int], samples: int) -> "ClassRepeat":
        """Rates that give every class present in ``histogram`` the same expected share."""
        present = [n for n in histogram if n > 0]
        if not present:
            raise ValueError("class-balanced sampling needs a non-empty class histogram")
        share = samples / len(present)
        return cls(tuple(share / n if n > 0 else 0.0 for n in histogram))

    def rate(self, label: int) -> float:
        """Expected copies per sample of class ``label`` (0 for a class the split does not count)."""
        return self.rates[label] if 0 <= label < len(self.rates) else 0.0

    def copies(self, key: str, label: int, seed: int, pass_index: int) -> int:
        """How many times this sample appears in pass ``pass_index`` of the stream seeded ``seed``
        (0 = skipped). The seed is the epoch's, so the skipped samples change every epoch."""
        rate = self.rate(label)
        whole = math.floor(rate)
        return whole + (unit_hash(seed, f"{pass_index}:{key}") < rate - whole)


COPY_SPREAD = 16384     # a sample's further copies come out within this many samples of its first


def repeat_stream(read: Callable[[], Iterable[dict]], repeat: ClassRepeat, quota: int,
                  label_of: Callable[[dict], int], seed: int) -> Iterator[dict]:
    """Exactly ``quota`` samples: passes over ``read()`` with per-sample copies, cycling the
    source (a new pass each time) until the quota is met; ``seed``: the epoch's stream seed.

    A sample's first copy comes out where it is read, each further one at a hashed place within
    the next :data:`COPY_SPREAD` samples (no later than the quota's end; due copies go first), not
    back to back: ten copies of a rare face in a row filled batches with one image however the
    shuffle buffer downstream (500 by default) mixed them (75% of AffectNet-8 batches of 32 held a
    repeat; now 7% with the epoch in one part, 10% in 8, against 0.7% for drawing with replacement over
    the whole epoch: simulated, 2026-12-05). Copies due
    after the quota's end come sooner, so a part's last batches hold more repeats (2-3 a batch of 32
    at AffectNet-8's rates, 0.5 elsewhere). Copies wait as references to the one raw sample: at
    AffectNet-8's rates about 2,200 distinct raw samples are held at a time (tens of MB per shuffle
    stream).

    Copies go forward only, so the shorter a part, the more of it lies in the last ``COPY_SPREAD``
    samples where they crowd: at AffectNet-8's rates 28% of batches of 64 hold a repeat with 2 parts
    of the epoch, 33% with 8 and 38% with 16 (a simulation; drawing with replacement: 2.7%)."""
    due: list[tuple[int, int, dict]] = []           # (emission index, serial, sample): a heap
    emitted, pass_index, serial = 0, 0, 0
    while emitted < quota:
        possible = False
        for sample in read():
            while due and due[0][0] <= emitted:
                yield heapq.heappop(due)[2]
                emitted += 1
                if emitted == quota:
                    return
            key, label = sample["__key__"], label_of(sample)
            possible = possible or repeat.rate(label) > 0
            n = repeat.copies(key, label, seed, pass_index)
            if not n:
                continue
            yield sample
            emitted += 1
            if emitted == quota:
                return
            last = min(emitted + COPY_SPREAD, quota) - 1
            for j in range(1, n):
                at = emitted + int(unit_hash(seed, f"{pass_index}:{key}:{j}") * (last - emitted + 1))
                heapq.heappush(due, (at, serial, sample))
                serial += 1
        if not possible:        # chance alone can skip every sample of a pass; only rates of 0 skip them all
            raise ValueError("class-balanced sampling can emit nothing from this part of the split: no sample in "
                             "it has a class the split's histogram counts (its _info.json class_histogram?)")
        pass_index += 1


def expected_share(histogram: Mapping[str, int], repeat: ClassRepeat, names: Sequence[str]) -> dict[str, float]:
    """Expected fraction of each class in a balanced epoch (for logs and tests)."""
    mass = {n: histogram.get(n, 0) * repeat.rates[i] for i, n in enumerate(names)}
    total = sum(mass.values()) or 1.0
    return {n: m / total for n, m in mass.items()}


# Class-weighted loss: the trainer puts this tensor in ``batch["class_weight"]`` (EmoNet-style
# 1/count weights, normalised so a balanced split gives all ones); models pass it to their CE.

def class_weight_tensor(counts: Sequence[int], device: torch.device) -> torch.Tensor:
    """``N / (C_present * n_c)`` per class (1 for a balanced split, 0 for absent classes)."""
    c = np.asarray(counts, np.float64)
    w = np.where(c > 0, c.sum() / np.maximum(c, 1) / max(1, int((c > 0).sum())), 0.0)
    return torch.tensor(w, dtype=torch.float32, device=device)


def loss_reads(model: nn.Module, out: dict, batch: dict, key: str, one: object, other: object) -> bool:
    """Whether ``model.losses`` reads ``batch[key]``: any loss differs between the two values."""
    with torch.no_grad():
        a = model.losses(out, {**batch, key: one})
        b = model.losses(out, {**batch, key: other})
    return any(not torch.allclose(a[k].float(), b[k].float()) for k in a)


def check_class_weight_used(model: nn.Module, out: dict, batch: dict) -> bool | None:
    """Whether ``model.losses`` reads ``batch["class_weight"]`` (None: batch has one class)."""
    labels = batch["label"]
    if labels.unique().numel() < 2:
        return None
    skew = torch.full_like(batch["class_weight"], 1e-3)
    skew[labels[0]] = 1.0
    return loss_reads(model, out, batch, "class_weight", torch.ones_like(skew), skew)
