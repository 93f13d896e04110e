"""Loader workers hand their batches to the main process through shared buffers made once.

torch's DataLoader moves every tensor a worker returns into a fresh shared-memory segment and
passes its file descriptor over a socket: the page faults of the fresh pages and the descriptor
hand-shakes cost as much as decoding the JPEGs (BENCHMARKS.md, Loader). Here the main process
makes, before the workers start, a ring of ``depth`` batch buffers per worker for every field of
the batch (:data:`Layout`: the fields, their per-sample shape and dtype). A worker writes batch
``serial`` into its buffer ``serial % depth`` and sends only a small message (which buffer, how
many samples, the keys). The main process copies the batch out (into pinned memory when it is
bound for a GPU) and releases the buffer through a shared counter per worker; a worker waits for
that release before it writes into the buffer again. So the batches a loader hands out are
ordinary tensors their caller owns, and the wait can never deadlock: batches are taken in the
order they were planned, and the one the main process needs next never waits on a later one.
"""
from __future__ import annotations

import multiprocessing
import os
import time
from typing import Callable, Iterator, Mapping

import torch

from ferdata.parallel import alive

Layout = Mapping[str, tuple[tuple[int, ...], torch.dtype]]    # field -> (per-sample shape, dtype)
TAG = "_ring"                        # (worker, serial, samples) of a batch written into the ring
RELEASE_ALL = 1 << 62
_POLL_S = 2e-4
ORPHAN_CHECK_S = 0.01          # how often a waiting worker whose parent is not the main process looks for it


SHM_DIR = "/dev/shm"


def require_shared_memory(nbytes: int, where: str = SHM_DIR) -> None:
    """Refuse, with what to do, a ring larger than the free shared memory: a full ``/dev/shm``
    would otherwise kill the loader with a bus error on its first write (Docker's default is
    64 MB). Systems without ``/dev/shm`` are not checked."""
    try:
        st = os.statvfs(where)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if nbytes > free:
        raise RuntimeError(f"the loader's shared batch buffers need {nbytes / 2**20:.0f} MB of shared memory but "
                           f"{where} has {free / 2**20:.0f} MB free: give the container more (docker run "
                           f"--shm-size=2g, or a larger tmpfs), or lower train.workers or train.batch_size")


class BatchRing:
    """``depth`` buffers of up to ``capacity`` samples per worker and field, in shared memory."""

    def __init__(self, layout: Layout, workers: int, depth: int, capacity: int) -> None:
        if depth < 1 or workers < 1 or capacity < 1:
            raise ValueError(f"workers, depth and capacity must be >= 1, got {workers}, {depth}, {capacity}")
        self.layout, self.depth = dict(layout), depth
        need = workers * depth * capacity * sum(torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
                                                for shape, dtype in self.layout.values())
        require_shared_memory(need)
        self.buffers = {name: torch.zeros((workers, depth, capacity, *shape), dtype=dtype).share_memory_()
                        for name, (shape, dtype) in self.layout.items()}
        self.released = torch.zeros(workers, dtype=torch.int64).share_memory_()
        self._parent = os.getpid()
        self._next_check = 0.0                           # a worker's next look beyond its parent pid

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers.values())

    # ---- worker side ---------------------------------------------------------------------------

    def acquire(self, worker: int, serial: int) -> Callable[[str, tuple[int, ...], torch.dtype], torch.Tensor]:
        """``empty(name, shape, dtype)`` for batch ``serial`` of ``worker``: its buffers, once the
        main process has released the batch that used them ``depth`` batches earlier."""
        need = serial - self.depth + 1
        while int(self.released[worker]) < need:
            if self._orphaned():
                raise RuntimeError("the loader's main process is gone")
            time.sleep(_POLL_S)
        slot = serial % self.depth

        def empty(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
            want = self.layout.get(name)
            buf = self.buffers.get(name)
            if want != (tuple(shape[1:]), dtype) or buf is None or shape[0] > buf.shape[2]:
                raise ValueError(f"batch field {name!r} {tuple(shape)} {dtype} does not fit the loader's "
                                 f"buffers {want} x {buf.shape[2] if buf is not None else 0}")
            return buf[worker, slot, : shape[0]]

        return empty

    def _orphaned(self) -> bool:
        """In a worker: the loader's main process is gone. A worker's parent is the main process under
        fork and spawn (alive while it is the parent: the quick answer), but the fork server under
        forkserver (Python 3.14's default on Linux). Otherwise, at most every
        :data:`ORPHAN_CHECK_S`, the main process is watched itself: through multiprocessing's handle
        on it (a pipe closed at its exit, unless a later forked sibling holds it open) or its pid
        (gone, or a zombie not yet reaped)."""
        if os.getppid() == self._parent:
            return False
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + ORPHAN_CHECK_S
        parent = multiprocessing.parent_process()
        return (parent is not None and parent.pid == self._parent and not parent.is_alive()) or not alive(self._parent)

    @staticmethod
    def message(worker: int, serial: int, samples: int, rest: dict) -> dict:
        """What a worker sends for a batch it wrote into the ring: where it is, plus ``rest`` (the
        fields that are not tensors, e.g. the keys)."""
        return {TAG: (worker, serial, samples), **rest}

    # ---- main-process side ---------------------------------------------------------------------

    def receive(self, message: dict, pin: bool) -> dict[str, torch.Tensor]:
        """The caller's own copy of the fields of a received batch (pinned with ``pin``); the
        buffers go back to their worker."""
        worker, serial, n = message[TAG]
        slot = serial % self.depth
        own = {}
        for name, buf in self.buffers.items():
            own[name] = copy_out(buf[worker, slot, :n], pin)
        self.released[worker] = serial + 1
        return own

    def release_all(self) -> None:
        """Let every worker go on (the main process stopped reading: the loader is shutting down)."""
        self.released.fill_(RELEASE_ALL)


# a dtype NumPy lacks (bfloat16, the float8s, complex32) is copied as the integers of its width
_SAME_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def copy_out(src: torch.Tensor, pin: bool) -> torch.Tensor:
    """A dense copy of ``src`` made by one thread (NumPy's), pinned with ``pin``: the
    main process's copy of a ring buffer, or of any host tensor bound for a GPU. torch's own copy of
    a batch-sized tensor runs in its OpenMP pool, whose threads then spin for a while waiting for
    more work, on the cores the workers decode on: with torch's default threads in the main
    process that made the loader 1.7-2x slower on 2 cores (BENCHMARKS.md, the GPU section)."""
    own = torch.empty_like(src, pin_memory=pin)
    try:
        own.numpy()[...] = src.numpy()
    except TypeError:                                  # a dtype NumPy lacks: its bits, as integers
        width = _SAME_WIDTH[src.element_size()]
        own.view(width).numpy()[...] = src.view(width).numpy()
    return own


def received(messages: Iterator[dict], ring: BatchRing, pin: bool,
             assemble: Callable[[dict, dict], dict]) -> Iterator[dict]:
    """The main process's side of a ring: ``assemble(fields, message)`` of each batch's own copy;
    when the caller stops early, every worker is let go so the loader can shut down at once."""
    try:
        for message in messages:
            yield assemble(ring.receive(message, pin), message)
    finally:
        ring.release_all()
