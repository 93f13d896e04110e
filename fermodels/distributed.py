"""torchrun/DDP set-up from the environment, and the exact split of an epoch into ranks and
shuffle streams, and of the streams over the DataLoader workers.

Why an explicit plan instead of ``wds.split_by_node`` + ``wds.split_by_worker``: those split at
shard granularity, so ranks get different sample counts (a rank with fewer batches hangs DDP at
its next collective), and fewer shards than workers leave workers idle. Here the epoch's shard
order (seeded by seed and epoch) defines one sequence of samples per dataset; each rank takes a
range of it and each shuffle stream a part of its rank's range, the same share of every dataset
(:func:`_take_mixed`; one dataset: contiguous ranges, so shards are read sequentially), so every
sample is read exactly once per epoch and every rank runs the same number of batches
(:func:`batch_sizes` shortens the last batches instead of dropping or repeating samples). The
loader workers only make the streams' batches (:func:`assign_streams`): their number changes no batch.

Launch: ``torchrun --nproc_per_node=N -m pipeline.train ...`` (one node) or with ``--nnodes``,
``--node_rank`` and ``--master_addr``/``--master_port`` on several; the process group is set up from
torchrun's environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``).
A rank that stops answering (alive, but stuck) holds the others at their next collective for
torch's default timeout (10 minutes with NCCL, 30 with gloo); ``FER_DIST_TIMEOUT_S`` sets it.
"""
from __future__ import annotations

import functools
import itertools
import math
import os
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job (rank 0 of 1 outside torchrun)."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes checkpoints and metrics."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_from_os() -> DistEnv:
    """Rank and world size as torchrun sets them; a plain ``python`` run is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}; launch with torchrun")
    return DistEnv(rank, world, int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str, env: DistEnv) -> torch.device:
    """``auto`` = this rank's GPU when CUDA is present, else CPU; ``cuda`` = ``cuda:LOCAL_RANK``;
    ``cpu`` or ``cuda:N``. A GPU that is not there is refused here, in words, not by the first
    tensor moved to it."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device("cuda", env.local_rank) if name == "cuda" else torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r}: expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {name!r}: no CUDA device is visible here (torch.cuda.is_available() is "
                             "False); use auto or cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {name!r}: cuda:{device.index} does not exist, {count} CUDA device(s) are "
                             "visible (LOCAL_RANK picks the GPU under torchrun)")
    return device


TIMEOUT_ENV = "FER_DIST_TIMEOUT_S"


def collective_timeout() -> timedelta | None:
    """How long a collective waits for a rank that does not arrive: ``FER_DIST_TIMEOUT_S`` seconds,
    or None (torch's default: 10 minutes with NCCL, 30 with gloo)."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or not raw.strip():          # unset or set empty (FER_DIST_TIMEOUT_S= ...): the default
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds above 0 (e.g. 300)")
    return timedelta(seconds=seconds)


def init_distributed(device: torch.device, env: DistEnv) -> bool:
    """Join the process group (NCCL on CUDA, gloo on CPU) with :func:`collective_timeout`; True if
    this call created it."""
    if not env.distributed or dist.is_initialized():
        return False
    if device.type == "cuda":
        # every rank on one GPU fails at NCCL's first step ("duplicate GPU"); a launcher that shows each
        # rank only its own GPU (fewer visible than LOCAL_RANK) makes cuda:0 right
        if device.index != env.local_rank and torch.cuda.device_count() > env.local_rank:
            raise ValueError(f"device cuda:{device.index} under torchrun: each rank takes the GPU of its "
                             f"LOCAL_RANK (this one cuda:{env.local_rank}); set the device to cuda or auto, and "
                             "choose GPUs with CUDA_VISIBLE_DEVICES")
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=collective_timeout(),
                            device_id=device if device.type == "cuda" else None)
    return True


def shutdown(created: bool) -> None:
    """Leave the process group if :func:`init_distributed` created it."""
    if created and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj``, in rank order (just ``[obj]`` outside DDP)."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_buffers(module: torch.nn.Module, env: DistEnv) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP copies them only at
    the start of a training forward, so after an epoch's last step each rank's hold its own last
    batch; evaluating then would score each rank's share with a slightly different model."""
    if env.distributed:
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def max_over_ranks(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """The largest of every rank's ``value`` (every rank must call it at the same point)."""
    if not env.distributed:
        return value
    out = value.clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


class LauncherGoneError(RuntimeError):
    """torchrun, which started this rank, is gone: every rank stops together."""


@dataclass(frozen=True)
class LauncherWatch:
    """Whether torchrun's agent, this rank's parent, still runs. torchrun starts each rank in a
    session of its own, so a SIGKILL to torchrun (which it cannot pass on) or to its process group
    left the ranks training unsupervised, holding the run against a relaunch. ``pid`` None: not
    started by torchrun (a plain run goes on when its parent ends, as any program)."""

    pid: int | None = None

    @staticmethod
    def here() -> LauncherWatch:
        return LauncherWatch(os.getppid() if os.environ.get("TORCHELASTIC_RUN_ID") else None)

    def gone(self) -> bool:
        return self.pid is not None and os.getppid() != self.pid

    def check(self, gone: torch.Tensor) -> None:
        """Raise when any rank found the launcher gone (``gone``: :func:`max_over_ranks` of each
        rank's :meth:`gone`, so the ranks stop at the same step, none left in a collective)."""
        if float(gone) > 0:
            raise LauncherGoneError(f"torchrun (pid {self.pid}), which started the ranks, is gone (killed?): every "
                                    "rank stops here; launch it again to resume from last.pt")


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


@dataclass(frozen=True)
class GlobalBatch:
    """A loss over the whole step's batch under DDP, not each rank's share (NeAA's anchors and
    neutral pairs): its value and gradient are one process's over that batch, however many GPUs
    share it (the rest of the step, per-rank means and the sample order, is not made so).

    ``capacity`` is the per-rank batch size (no rank's batch is larger): every rank pads its rows to
    it, so one fixed-size gather serves any uneven last batch without a size exchange or a host
    sync. Each rank computes the loss on the gathered rows, its own with their graph and the
    others' as constants, so it differentiates only through its own samples; DDP then averages the
    parameter gradients over the ranks. :meth:`loss` therefore scales the gradient (not the value)
    by the world size: the average of ``W * dL/df_r * df_r/dtheta`` over the ranks is the
    single-process gradient of ``L`` over the global batch. No collective runs in the backward pass.
    """

    world_size: int
    rank: int
    capacity: int

    def gather(self, *rows: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every rank's ``rows`` (tensors of equal length B <= capacity) in rank order, each rank's
        padded with zeros to ``capacity``, and the mask of real rows. One all_gather of float32 (the
        values of integer tensors must be exact in float32: labels, counts)."""
        n = rows[0].shape[0]
        if n > self.capacity or any(r.shape[0] != n for r in rows):
            raise ValueError(f"rows of lengths {[r.shape[0] for r in rows]} for a capacity of {self.capacity}")
        flat = [r.detach().reshape(n, math.prod(r.shape[1:])).float() for r in rows]
        widths = [f.shape[1] for f in flat]
        local = rows[0].new_zeros((self.capacity, sum(widths) + 1), dtype=torch.float32)
        local[:n] = torch.cat([*flat, local.new_ones((n, 1))], 1)
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        columns = [part.split([*widths, 1], 1) for part in parts]
        out = []
        for i, r in enumerate(rows):
            own = torch.cat([r, r.new_zeros((self.capacity - n, *r.shape[1:]))])
            out.append(torch.cat([own if k == self.rank else cols[i].to(r.dtype).reshape(own.shape)
                                  for k, cols in enumerate(columns)]))
        return out, torch.cat([cols[-1].flatten() > 0 for cols in columns])

    def mean_over_ranks(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of ``x`` over the ranks, as a constant (one all_reduce). A weighted loss's sum on
        each rank divided by the mean of the ranks' weight sums is that rank's share of the weighted
        mean over the global batch, and DDP's average of the ranks' gradients is its gradient (each
        rank dividing by its own weight sum weighted a rare class by the rank's share instead)."""
        total = x.detach().float().clone()
        dist.all_reduce(total)
        return total / self.world_size

    def loss(self, fn: Callable[..., torch.Tensor], *rows: torch.Tensor) -> torch.Tensor:
        """``fn(*gathered_rows, valid=mask)``: its value over the global batch, its gradient scaled
        as the class docstring says."""
        gathered, valid = self.gather(*rows)
        value = fn(*gathered, valid=valid)
        return value * self.world_size - (value * (self.world_size - 1)).detach()


# ---- the epoch plan ------------------------------------------------------------------------

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
    them to within one sample, however few shards a dataset has. Cutting whole shards gave a
    one-shard dataset (CK+, JAFFE) to one rank x worker part: its batches held all of it and the
    others none (a class-balanced epoch skewed, 0.62 of it class A in :mod:`fermodels.sampling`'s
    example). One dataset: the plain positions of the shard order."""
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
               workers: int, seed: int, shuffle: bool, skip_batches: int = 0,
               one_pass: bool = False, streams: int | None = None, shuffle_buffer: int = 0) -> list[WorkerPlan]:
    """This rank's worker plans for one epoch of ``samples`` samples.

    ``shards`` are (path, sample count) pairs. The sequence is the shard order repeated
    (each pass reshuffled) and cut at ``samples``; ``batch_size`` is per rank. Every rank gets
    ``ceil(largest rank share / batch_size)`` batches. ``skip_batches`` resumes inside the epoch.

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
    sequence: list[tuple[str, int]] = []
    for p in range(math.ceil(read / total)):
        sequence += shard_order(shards, seed * 7919 + p, shuffle)
    per_rank = split_evenly(samples, env.world_size)
    if per_rank[-1] == 0:
        raise ValueError(f"an epoch of {samples} samples (the train split's, or train.epoch_samples) cannot give "
                         f"each of {env.world_size} ranks one: use fewer ranks")
    sizes = batch_sizes(per_rank[env.rank], batch_size, math.ceil(per_rank[0] / batch_size))
    asked = max(1, workers if streams is None else stream_count(streams, read // env.world_size, shuffle_buffer))
    blocks = split_evenly(len(sizes), min(asked, len(sizes)))
    skips = round_robin_skips(blocks, skip_batches)
    rank_reads = split_evenly(read, env.world_size)
    reads = None
    if one_pass:                    # each stream reads a part as large as its quota of the rank's samples
        quotas = [sum(sizes[b: b + n]) for b, n in zip(itertools.accumulate([0, *blocks]), blocks)]
        reads = split_in_proportion(rank_reads[env.rank], quotas)
    lanes, pos, b = [], sum(rank_reads[: env.rank]), 0
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
    return max(d for d in divisors(streams) if d == 1 or samples // d >= shuffle_buffer)


def divisors(n: int) -> list[int]:
    """The positive divisors of ``n``, ascending."""
    return [d for d in range(1, n + 1) if n % d == 0]


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
