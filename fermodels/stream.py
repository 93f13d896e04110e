"""The training stream: one rank's epoch of shards -> uint8 batches, built in the loader workers.

Training streams the shards (sequential reads) along the epoch plan of :mod:`fermodels.distributed`
(exact per-rank split into shuffle streams, dealt to the workers), each stream optionally resampled for
class balance (:mod:`fermodels.sampling`) and through its own seeded shuffle buffer; a worker makes its
streams' batches in turn, and batches leave the workers through shared buffers (:mod:`fermodels.batchring`).

Workers only decode and resize (uint8); floats, augmentation and normalisation happen on the training
device (:func:`fermodels.modelinput.to_device`, :mod:`fermodels.augment`, :func:`fermodels.modelinput.normalise`).
"""
from __future__ import annotations

import itertools
import os
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterable, Iterator, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ferdata.parallel import one_thread_per_worker
from ferdata.tario import iter_tar_samples
from fermodels.batchring import BatchRing, received
from fermodels.data import SampleDecoder, assemble, decode_batch, sample_label
from fermodels.epochplan import StreamPlan, WorkerPlan, mix_seed, plan_epoch
from fermodels.indexed import close_loader
from fermodels.sampling import ClassRepeat, repeat_stream

PREFETCH = 4
RING_DEPTH = PREFETCH + 2         # shared buffers per worker (fermodels.batchring)


def read_pieces(pieces: Sequence, only: Collection[str] | None = None) -> Iterator[dict]:
    """Raw samples of the pieces (reads, never decodes); with ``only``, just those members of each
    sample (:func:`ferdata.tario.iter_tar_samples`), and ``__url__``, the shard (for errors that name
    it). Each dataset's (shard folder's) pieces are read in order, one shard at a time, and the
    datasets are interleaved in proportion to what each contributes, so any stretch of the stream
    holds them in the part's mix (read one after the other, a shuffle buffer smaller than a shard
    left most batches of one dataset, and a balanced stream that met its quota early cut the last
    one short). A shard with fewer samples than its piece ends at is an error (a resampling stream
    would otherwise read on past it)."""
    folders: dict[str, list] = {}
    for piece in pieces:
        folders.setdefault(os.path.dirname(piece.url), []).append(piece)
    if len(folders) < 2:
        yield from _read_in_order(pieces, only)
        return
    streams = [_read_in_order(group, only) for group in folders.values()]
    sizes = [sum(max(0, p.stop - p.start) for p in group) for group in folders.values()]
    taken = [0] * len(streams)
    while True:              # next from the dataset furthest behind its share (ties: the first)
        behind = [((taken[i] + 1) / sizes[i], i) for i in range(len(streams)) if taken[i] < sizes[i]]
        if not behind:
            return
        i = min(behind)[1]
        yield next(streams[i])
        taken[i] += 1


def _read_in_order(pieces: Sequence, only: Collection[str] | None) -> Iterator[dict]:
    """Raw samples of each piece in turn, in file order. A piece's samples are taken out of its
    shard at once and handed out from there: a stream paused between batches (a worker makes
    batches of several in turn) holds them, not the whole shard file it read them from."""
    for piece in pieces:
        if piece.stop <= piece.start:
            continue
        taken: deque[tuple[str, dict]] = deque()
        n = 0
        for n, sample in enumerate(iter_tar_samples(piece.url, only=only), 1):
            if n > piece.start:
                taken.append(sample)
            if n == piece.stop:
                break
        if n < piece.stop:
            raise ValueError(f"{piece.url} holds {n} samples, fewer than its split's _info.json lists: the shard "
                             "changed after it was written; check it with `ferdata verify`, then re-run the shard "
                             "stage (or `dvc pull` / `dvc checkout` it)")
        while taken:
            key, fields = taken.popleft()
            yield {"__key__": key, "__url__": piece.url, **fields}


def shuffled(samples: Iterable[dict], bufsize: int, rng: random.Random) -> Iterator[dict]:
    """Seeded shuffle buffer (reservoir swap), as ``wds.shuffle`` but reproducible."""
    buf: list[dict] = []
    for s in samples:
        if len(buf) < bufsize:
            buf.append(s)
            continue
        i = rng.randrange(bufsize)
        buf[i], s = s, buf[i]
        yield s
    rng.shuffle(buf)
    yield from buf


@dataclass(frozen=True)
class FixedEpoch:
    """The plans and shuffle seed of one epoch, fixed when the loader is made."""

    plans: tuple[WorkerPlan, ...]
    seed: int

    def __call__(self) -> tuple[Sequence[WorkerPlan], int]:
        return self.plans, self.seed


@dataclass(frozen=True)
class EpochPlanner:
    """Picklable: any epoch's worker plans and shuffle seed for one rank, from the epoch number
    (what the trainer computes each epoch; persistent workers compute it themselves)."""

    shards: tuple[tuple[str, int], ...]
    seed: int
    rank: int
    plan_kw: Mapping[str, Any] = field(default_factory=dict)     # plan_epoch's samples, batch_size, env, ...

    def plans(self, epoch: int, skip: int = 0) -> list[WorkerPlan]:
        return plan_epoch(self.shards, seed=self.seed, epoch=epoch, skip_batches=skip, **self.plan_kw)

    def stream_seed(self, epoch: int) -> int:
        return mix_seed(self.seed, epoch, self.rank)


@dataclass(frozen=True)
class PostedEpoch:
    """The epoch the main process posted in ``control`` (epoch, skip), planned by ``planner``:
    what a persistent worker reads when an epoch starts."""

    planner: EpochPlanner
    control: torch.Tensor

    def __call__(self) -> tuple[Sequence[WorkerPlan], int]:
        epoch, skip = (int(v) for v in self.control)
        return self.planner.plans(epoch, skip), self.planner.stream_seed(epoch)


class EpochStream(IterableDataset):
    """One rank's epoch: worker ``w`` makes the batches of the streams of plan ``w`` of ``epoch()``,
    round by round (into ``ring``'s shared buffers when it runs in a worker process)."""

    def __init__(self, epoch: Callable[[], tuple[Sequence[WorkerPlan], int]], decoder: SampleDecoder,
                 shuffle_buffer: int, repeat: ClassRepeat | None, ring: BatchRing | None = None) -> None:
        self.epoch, self.decoder = epoch, decoder
        self.shuffle_buffer, self.repeat, self.ring = shuffle_buffer, repeat, ring

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        wid = info.id if info is not None else 0
        ring = self.ring if info is not None else None
        plans, seed = self.epoch()
        plan = plans[wid]
        lanes, done = [self._samples(lane, seed) for lane in plan.streams], plan.skip_batches
        for n, (i, size) in enumerate(plan.order):
            raw = _take(lanes[i], size)
            serial = n - done
            if serial < 0:                                      # trained on before the resume
                continue
            if ring is None:
                fields, keys = decode_batch(self.decoder, raw)
                yield assemble(fields, {"key": keys})
            else:
                _, keys = decode_batch(self.decoder, raw, ring.acquire(wid, serial))
                yield BatchRing.message(wid, serial, size, {"key": keys})

    def _samples(self, lane: StreamPlan, seed: int) -> Iterator[dict]:
        """The raw samples of one stream, in its shuffled (and, balanced, resampled) order."""
        members = self.decoder.members
        if self.repeat is None:
            source: Iterable[dict] = read_pieces(lane.pieces, members)
        else:
            source = repeat_stream(lambda: read_pieces(lane.pieces, members), self.repeat, lane.num_samples,
                                   sample_label, seed)
        if self.shuffle_buffer > 1:
            rng = random.Random(mix_seed(seed, lane.stream))
            source = shuffled(source, buffer_size(lane, self.shuffle_buffer), rng)
        return iter(source)


def buffer_size(lane: StreamPlan, shuffle_buffer: int) -> int:
    """The shuffle buffer of a stream: ``shuffle_buffer``, or the largest piece of a shard the
    stream reads where that is larger. A piece is held whole anyway (:func:`_read_in_order`), so
    this at most doubles what a stream holds, and a one-shard dataset (CK+ at 800 faces; with
    JAFFE beside it; read twice an epoch) is shuffled whole: through a smaller buffer the file's
    last samples never reached an epoch's first batches."""
    return max(shuffle_buffer, max((p.stop - p.start for p in lane.pieces), default=0))


def _take(it: Iterator[dict], n: int) -> list[dict]:
    """Exactly ``n`` items of ``it``; fewer means the shards disagree with their ``_info.json``."""
    out = list(itertools.islice(it, n))
    if len(out) != n:
        raise RuntimeError(f"shards ended early: {len(out)} of {n} samples; their _info.json counts are "
                           "wrong (run `ferdata verify`)")
    return out


class StreamLoader:
    """One rank's epoch as batches the caller owns: a DataLoader over an :class:`EpochStream`
    (batches are built inside the workers, handed over through a :class:`BatchRing`)."""

    def __init__(self, plans: Sequence[WorkerPlan], decoder: SampleDecoder, *, workers: int, shuffle_buffer: int,
                 seed: int, repeat: ClassRepeat | None) -> None:
        if workers <= 0 and len(plans) > 1:          # in process, the one iterator reads plan 0 alone
            raise ValueError(f"{len(plans)} worker plans for an in-process loader (workers 0), which reads one: "
                             "plan the epoch with workers=0 (the same batches), or load with a worker per plan")
        self.plans, self.decoder, self.workers = list(plans), decoder, workers
        self.shuffle_buffer, self.seed, self.repeat = shuffle_buffer, seed, repeat
        self.pin_memory = torch.cuda.is_available()

    def __iter__(self) -> Iterator[dict]:
        n = len(self.plans) if self.workers > 0 else 0
        ring = None
        if n:
            workers, capacity = ring_shape(self.plans)
            ring = BatchRing(self.decoder.layout(), workers, RING_DEPTH, capacity)
        dataset = EpochStream(FixedEpoch(tuple(self.plans), self.seed), self.decoder, self.shuffle_buffer,
                              self.repeat, ring)
        loader = DataLoader(dataset, batch_size=None, collate_fn=_as_is, num_workers=n,
                            pin_memory=self.pin_memory and not n, prefetch_factor=PREFETCH if n else None,
                            worker_init_fn=one_thread_per_worker)
        return iter(loader) if ring is None else received(iter(loader), ring, self.pin_memory, assemble)


def ring_shape(plans: Sequence[WorkerPlan]) -> tuple[int, int]:
    """(workers, samples per buffer) of the batch ring that ``plans`` need: one worker per plan,
    buffers as large as the largest planned batch."""
    return len(plans), max(1, max((max(p.batch_sizes, default=0) for p in plans), default=0))


def _as_is(batch: dict) -> dict:
    """Batches leave the workers as they are built (DataLoader's default walks every key)."""
    return batch


def stream_loader(plans: Sequence[WorkerPlan], decoder: SampleDecoder, *, workers: int, shuffle_buffer: int,
                  seed: int, repeat: ClassRepeat | None) -> StreamLoader:
    """The loader of one rank's epoch (see :class:`StreamLoader`)."""
    return StreamLoader(plans, decoder, workers=workers, shuffle_buffer=shuffle_buffer, seed=seed, repeat=repeat)


class PersistentLoader:
    """A rank's epochs from the same worker processes and batch buffers: the workers are forked
    and the buffers made once (each epoch's start costs ~50 ms per worker pair otherwise; a tenth
    of an epoch on a small dataset at GPU speed). Before an epoch the main process posts its
    number in shared memory and the workers plan it themselves (:class:`EpochPlanner`), so each
    epoch's batches are exactly those of a fresh :func:`stream_loader` for it. An epoch stopped
    before its end leaves workers that may still write into the buffers: the next epoch then
    starts on fresh workers and buffers. ``workers=0`` runs each epoch in-process."""

    def __init__(self, planner: EpochPlanner, decoder: SampleDecoder, *, workers: int, shuffle_buffer: int,
                 repeat: ClassRepeat | None) -> None:
        self.planner, self.decoder, self.workers = planner, decoder, workers
        self.shuffle_buffer, self.repeat = shuffle_buffer, repeat
        self.pin_memory = torch.cuda.is_available()
        self.control = torch.zeros(2, dtype=torch.int64).share_memory_()
        self._loader: DataLoader | None = None
        self._ring: BatchRing | None = None
        self._shape: tuple[int, int] | None = None              # (workers, buffer capacity) they were made for
        self._clean = True

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[dict]:
        """The batches of ``epoch``, from batch ``skip`` (a resume inside the epoch)."""
        plans = self.planner.plans(epoch, skip)
        if self.workers <= 0:
            return iter(StreamLoader(plans, self.decoder, workers=0, shuffle_buffer=self.shuffle_buffer,
                                     seed=self.planner.stream_seed(epoch), repeat=self.repeat))
        shape = ring_shape(plans)
        if self._loader is None or not self._clean or shape != self._shape:
            self.close()
            self._ring = BatchRing(self.decoder.layout(), shape[0], RING_DEPTH, shape[1])
            dataset = EpochStream(PostedEpoch(self.planner, self.control), self.decoder, self.shuffle_buffer,
                                  self.repeat, self._ring)
            self._loader = DataLoader(dataset, batch_size=None, collate_fn=_as_is, num_workers=shape[0],
                                      prefetch_factor=PREFETCH, persistent_workers=True,
                                      worker_init_fn=one_thread_per_worker)
            self._shape = shape
        self.control[0], self.control[1] = epoch, skip
        self._ring.released.zero_()
        self._clean = False
        return self._received(iter(self._loader))

    def _received(self, messages: Iterator[dict]) -> Iterator[dict]:
        yield from received(messages, self._ring, self.pin_memory, assemble)
        self._clean = True                       # every batch taken: the workers are idle, the buffers free

    def close(self) -> None:
        """Stop the workers now (the next epoch forks new ones)."""
        if self._ring is not None:
            self._ring.release_all()                          # none may wait for a buffer while stopping
        close_loader(self._loader)
        self._loader = self._ring = self._shape = None
        self._clean = True
