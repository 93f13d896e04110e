"""The exact split of an epoch into ranks and shuffle streams, and of the streams over the
DataLoader workers.

Why an explicit plan instead of ``wds.split_by_node`` + ``wds.split_by_worker``: those split at
shard granularity, so ranks get different sample counts (a rank with fewer batches hangs DDP at
its next collective), and fewer shards than workers leave workers idle. Here a run reads one
sequence of passes over the shards, each pass in its own seeded order (:func:`pass_seed`), and an
epoch is a window of it (one pass when the epoch is the split's size); each rank takes a range of the
window and each shuffle stream a part of its rank's range, the same share of every dataset
(:func:`_take_mixed`; one dataset: contiguous ranges, so shards are read sequentially), so an epoch
of the split's size reads every sample exactly once and every rank runs the same number of batches
(:func:`batch_sizes` shortens the last batches instead of dropping or repeating samples). The
loader workers only make the streams' batches (:func:`assign_streams`): their number changes no batch.
Pure planning: no torch, no process group (the rank and world size come in a
:class:`fermodels.distributed.DistEnv`).
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import math
import os
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from fermodels.distributed import DistEnv


@dataclass(frozen=True)
class Piece:
    """Samples ``[start, stop)`` (in file order) of one shard."""

    url: str
    start: int
    stop: int


@dataclass(frozen=True)
class StreamPlan:
    """One shuffle stream of a rank's epoch: what it reads, in which batches, how many of them
    were trained on already (a resume inside the epoch: read, not decoded)."""

    stream: int                # its index in the rank's epoch (seeds its shuffle)
    pieces: tuple[Piece, ...]
    batch_sizes: tuple[int, ...]
    skip_batches: int

    @property
    def num_samples(self) -> int:
        return sum(self.batch_sizes)


@dataclass(frozen=True)
class WorkerPlan:
    """What one DataLoader worker of one rank makes: the batches of its streams, round by round
    (in a round, one batch of each of its streams that has one left, in stream order)."""

    worker: int                # its place in the loader's round robin from the epoch's start
    streams: tuple[StreamPlan, ...]

    @functools.cached_property
    def order(self) -> tuple[tuple[int, int], ...]:
        """(index into ``streams``, batch size) of each batch the worker makes, in order."""
        rounds = max((len(s.batch_sizes) for s in self.streams), default=0)
        return tuple((i, s.batch_sizes[r]) for r in range(rounds) for i, s in enumerate(self.streams)
                     if r < len(s.batch_sizes))

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return tuple(size for _, size in self.order)

    @property
    def skip_batches(self) -> int:
        """The first batches of :attr:`order` already trained on (each stream's are its first)."""
        return sum(s.skip_batches for s in self.streams)

    @property
    def pieces(self) -> tuple[Piece, ...]:
        return tuple(p for s in self.streams for p in s.pieces)

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.streams)


def shard_order(shards: Sequence[tuple[str, int]], seed: int, shuffle: bool) -> list[tuple[str, int]]:
    """The shards in this epoch's order: seeded shuffle for training, file order otherwise. Shards
    of several datasets (one folder each) are shuffled within their folder, folder after folder in
    the order listed; :func:`_take_mixed` interleaves the datasets when it cuts the epoch into
    parts. One folder: the same order as a plain ``random.Random(seed).shuffle``."""
    order = list(shards)
    if not shuffle:
        return order
    rng = random.Random(seed)
    folders: dict[str, list[tuple[str, int]]] = {}
    for shard in order:
        folders.setdefault(os.path.dirname(shard[0]), []).append(shard)
    for group in folders.values():
        rng.shuffle(group)
    return [shard for group in folders.values() for shard in group]


def split_evenly(total: int, parts: int) -> list[int]:
    """``parts`` counts summing to ``total`` that differ by at most one (larger first)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def split_in_proportion(total: int, weights: Sequence[int]) -> list[int]:
    """Counts summing to ``total`` in proportion to ``weights`` (largest remainders, then the first,
    get the leftover units): each worker reads a part of the split as large, relative to the
    others, as the quota of samples it makes from it."""
    whole = sum(weights)
    exact = [total * w / whole for w in weights]
    counts = [math.floor(x) for x in exact]
    for i in sorted(range(len(weights)), key=lambda i: (counts[i] - exact[i], i))[: total - sum(counts)]:
        counts[i] += 1
    return counts


def batch_sizes(count: int, batch_size: int, num_batches: int) -> list[int]:
    """``num_batches`` sizes, each in ``[1, batch_size]``, summing to ``count``.

    Full batches first; the excess is taken from the last batches, so a rank with a few samples
    fewer than the others still runs as many steps (no sample dropped or repeated). A last batch
    under half the size shares the last two evenly: 65 samples at batch 64 are 33 + 32, not 64 + 1
    (an epoch ending on a full-rate step over one face, BatchNorm pulled toward it before validation).
    """
    if not num_batches <= count <= num_batches * batch_size:
        raise ValueError(f"cannot cut {count} samples into {num_batches} batches of 1..{batch_size}: with a "
                         "batch of 1 per rank every rank needs as many samples; use fewer ranks or a larger "
                         "train.batch_size")
    sizes = [batch_size] * num_batches
    excess = batch_size * num_batches - count
    for i in range(num_batches - 1, -1, -1):
        take = min(excess, sizes[i] - 1)
        sizes[i] -= take
        excess -= take
    if num_batches >= 2 and 2 * sizes[-1] < batch_size:
        sizes[-2:] = split_evenly(sizes[-2] + sizes[-1], 2)
    return sizes


def _take(sequence: list[tuple[str, int]], start: int, count: int) -> list[Piece]:
    """Pieces covering positions ``[start, start + count)`` of the concatenated shards."""
    pieces, pos, end = [], 0, start + count
    for url, n in sequence:
        lo, hi = max(start, pos), min(end, pos + n)
        if lo < hi:
            pieces.append(Piece(url, lo - pos, hi - pos))
        pos += n
        if pos >= end:
            break
    return pieces


def _take_mixed(sequence: list[tuple[str, int]], start: int, count: int, total: int) -> list[Piece]:
    """Pieces covering positions ``[start, start + count)`` of ``sequence`` (passes of ``total``
    samples over every shard) with each pass's datasets (shard folders) interleaved sample by
    sample in proportion (:func:`_mixed_order`): exactly ``count`` samples, each dataset's share of
    them to within a few samples a pass (measured: at most D - 1 for D datasets), however few shards
    a dataset has. Cutting whole shards gave a one-shard dataset (CK+, JAFFE) to one rank x worker
    part: its batches held all of it and the others none (a class-balanced epoch skewed, 0.62 of it
    class A in :mod:`fermodels.sampling`'s example). One dataset: the plain positions of the shard
    order."""
    names = sorted({os.path.dirname(url) for url, _ in sequence})
    if len(names) == 1:
        return _take(sequence, start, count)
    shards_per_pass = len({url for url, _ in sequence})           # each pass lists every shard once
    sizes = tuple(sum(n for url, n in sequence[:shards_per_pass] if os.path.dirname(url) == d) for d in names)
    order = _mixed_order(sizes)
    pieces: list[Piece] = []
    for p in range(start // total, math.ceil((start + count) / total)):
        lo, hi = max(start - p * total, 0), min(start + count - p * total, total)
        if lo >= hi:
            continue
        one_pass = sequence[p * shards_per_pass: (p + 1) * shards_per_pass]
        before, upto = (np.bincount(order[:x], minlength=len(names)) for x in (lo, hi))
        for d, name in enumerate(names):
            group = [shard for shard in one_pass if os.path.dirname(shard[0]) == name]
            pieces += _take(group, int(before[d]), int(upto[d] - before[d]))
    return pieces


@functools.lru_cache(maxsize=8)
def _mixed_order(sizes: tuple[int, ...]) -> np.ndarray:
    """The dataset index of each position of a pass over datasets of ``sizes`` samples, each
    dataset's k-th sample at (k + 1/2) / n of the pass (ties: the dataset listed first)."""
    times = np.concatenate([(np.arange(n) + 0.5) / n for n in sizes])
    which = np.repeat(np.arange(len(sizes), dtype=np.int16), sizes)
    return which[np.lexsort((which, times))]


def round_robin_skips(counts: Sequence[int], skip: int) -> list[int]:
    """How many of each stream's batches (``counts``) are among the epoch's first ``skip``: the
    epoch takes one batch of each stream in turn (stream 0, 1, ..., passing over those done),
    i.e. in (round, stream) order."""
    order = sorted((i, s) for s, c in enumerate(counts) for i in range(c))
    if skip > len(order):
        raise ValueError("resume point lies beyond the end of the epoch")
    done = [0] * len(counts)
    for _, s in order[:skip]:
        done[s] += 1
    return done


def plan_epoch(shards: Sequence[tuple[str, int]], *, samples: int, batch_size: int, env: DistEnv,
               workers: int, seed: int, shuffle: bool, epoch: int = 0, skip_batches: int = 0,
               one_pass: bool = False, streams: int | None = None, shuffle_buffer: int = 0) -> list[WorkerPlan]:
    """This rank's worker plans for epoch ``epoch`` of ``samples`` samples.

    ``shards`` are (path, sample count) pairs. The run reads one endless sequence: pass after pass
    over the shards, each pass in its own order (:func:`pass_seed`, from the run's ``seed``), and
    epoch ``e`` is its window ``[e * samples, (e + 1) * samples)``: an epoch of the split's size is
    one pass, a shorter one (``train.epoch_samples``) continues where the last stopped. (Cutting
    each epoch's own passes at ``samples`` read the same prefix of every shard each epoch: the rest
    of a one-shard dataset never, and a longer epoch read some samples twice and others once.)
    ``batch_size`` is per rank. Every rank gets ``ceil(largest rank share / batch_size)`` batches.
    ``skip_batches`` resumes inside the epoch.

    The rank's batches are cut into ``streams`` contiguous blocks (one per worker if None; fewer when
    each would read less than ``shuffle_buffer`` samples, :func:`stream_count`; no more than there are
    batches), each read from its own part of the sequence through its own shuffle,
    and taken round by round, one batch of each stream in turn: the epoch's batches depend on the
    streams, not on the ``workers`` that make them (:func:`assign_streams`).

    ``one_pass``: the streams read one pass over the split between them, whatever ``samples``
    is, and a class-balanced stream (:func:`fermodels.sampling.repeat_stream`) makes each its
    quota from its part: repeating shards instead would give a sample in two streams' parts the
    same keep-or-skip draw, so it came out twice and others never. Each part then holds the same
    fraction of every dataset (:func:`_take_mixed`, as every part is), so its class mix is the split's.
    """
    total = sum(n for _, n in shards)
    if total == 0 or samples <= 0:
        raise ValueError("the split has no samples")
    read = total if one_pass else samples
    start = epoch * read                                  # the epoch's window on the run's passes
    first = start // total
    sequence: list[tuple[str, int]] = []
    for p in range(first, math.ceil((start + read) / total)):
        sequence += shard_order(shards, pass_seed(seed, p), shuffle)
    per_rank = split_evenly(samples, env.world_size)
    if per_rank[-1] == 0:
        raise ValueError(f"an epoch of {samples} samples (the train split's, or train.epoch_samples) cannot give "
                         f"each of {env.world_size} ranks one: use fewer ranks")
    num_batches = math.ceil(per_rank[0] / batch_size)
    batch_sizes(per_rank[-1], batch_size, num_batches)      # the smallest share: every rank refuses what one must
    sizes = batch_sizes(per_rank[env.rank], batch_size, num_batches)
    asked = max(1, workers if streams is None else stream_count(streams, read // env.world_size, shuffle_buffer))
    blocks = split_evenly(len(sizes), min(asked, len(sizes)))
    skips = round_robin_skips(blocks, skip_batches)
    rank_reads = split_evenly(read, env.world_size)
    reads = None
    if one_pass:                    # each stream reads a part as large as its quota of the rank's samples
        quotas = [sum(sizes[b: b + n]) for b, n in zip(itertools.accumulate([0, *blocks]), blocks)]
        reads = split_in_proportion(rank_reads[env.rank], quotas)
    lanes, pos, b = [], start - first * total + sum(rank_reads[: env.rank]), 0
    for s, (n, skip) in enumerate(zip(blocks, skips)):
        lane_sizes = tuple(sizes[b: b + n])
        count = reads[s] if reads else sum(lane_sizes)
        pieces = _take_mixed(sequence, pos, count, total)
        if not any(p.stop > p.start for p in pieces):
            raise ValueError(f"a class-balanced epoch reads the split once between {env.world_size} rank(s) x "
                             f"{len(blocks)} stream(s): its {total} samples leave a part none to read; lower "
                             f"train.{'workers' if streams is None else 'streams'}")
        lanes.append(StreamPlan(s, tuple(pieces), lane_sizes, skip))
        pos, b = pos + count, b + n
    return assign_streams(lanes, workers, skip_batches)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes, unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") >> 1


def pass_seed(seed: int, p: int) -> int:
    """The shuffle seed of pass ``p`` over the shards of a run seeded ``seed``. (x 7919: the seed an
    epoch's first pass had when each epoch read its own passes, so epochs of one pass keep their order.)"""
    return mix_seed(seed, p) * 7919


def stream_count(streams: int, samples: int, shuffle_buffer: int) -> int:
    """How many shuffle streams one rank's epoch reading ``samples`` (a class-balanced epoch reads one
    pass over the split, however many it makes of them) is cut into: ``streams``, or fewer (the largest
    divisor of it) so that each stream shuffles at least ``shuffle_buffer`` samples it reads.
    Parts are contiguous in the shard order and a one-shard dataset (CK+, JAFFE, the sample) keeps
    its file order every epoch, so 8 parts of it would batch the same few dozen faces together in
    every epoch; one part of it is shuffled whole. Depends on the data and the params, never on the
    loader workers."""
    if shuffle_buffer <= 1:
        return streams
    return max(d for d in divisors(streams, most=max(1, samples // shuffle_buffer))
               if d == 1 or samples // d >= shuffle_buffer)


def divisors(n: int, most: int | None = None) -> list[int]:
    """The positive divisors of ``n`` (those up to ``most`` when given), ascending: bounded, since
    ``n`` may be any whole number params.yaml holds (train.streams 10**23 hung the params check)."""
    return [d for d in range(1, (n if most is None else min(n, most)) + 1) if n % d == 0]


def assign_streams(lanes: Sequence[StreamPlan], workers: int, skip_batches: int = 0) -> list[WorkerPlan]:
    """The streams dealt to loader workers (``workers``; 0: one, in-process) so that the DataLoader's
    round robin over the workers yields the streams' round-by-round order, whatever their number.

    With ``W`` workers, stream ``s`` goes to worker ``s mod W``, and the epoch's ``k``-th batch is then
    made by worker ``k mod W`` when ``W`` divides the number of streams (in a full round ``k = round x
    streams + s``; the last round holds the first streams only, as :func:`split_evenly` gives them the
    extra batch) or there is one round. So ``W`` is ``workers`` when it divides the streams (or more
    workers than streams: one each), else their greatest common divisor (fewer workers: what a small
    epoch cut into fewer streams than asked, :func:`stream_count`, leaves). Each worker makes its
    batches in that order, and the round robin, which takes worker 0, 1, ... in turn and passes over
    those done, interleaves them back. A resume at batch ``skip_batches`` starts with worker
    ``skip_batches mod W``."""
    asked = max(1, workers)
    one_round = max(len(lane.batch_sizes) for lane in lanes) <= 1
    n = min(asked, len(lanes)) if one_round or asked >= len(lanes) else math.gcd(asked, len(lanes))
    plans = [WorkerPlan(w, tuple(lane for lane in lanes if lane.stream % n == w)) for w in range(n)]
    first = skip_batches % n
    return plans[first:] + plans[:first]      # a resumed loader starts with the worker that is due
