"""Ordered, memory-bounded parallel map over processes (the stages' only concurrency).

* ``fn`` is sent to each worker **once** (pool initializer), so a callable that loads
  models lazily loads them once per worker, not once per task.
* Items go out in chunks of ``chunksize`` and at most ``window`` items are in flight,
  whatever the dataset size: memory stays flat.
* Items for which ``local(item)`` is true run in this process (e.g. cache hits, where
  shipping the item costs more than the work); the pool starts only when the first
  other item arrives, so a fully cached run starts no workers and loads no models.
* Under ``fork``, a callable with a ``before_fork()`` method gets it called just before
  the pool starts, to load read-only model data the workers then share; and the parent's
  objects are frozen for the fork (``gc.freeze``), so the workers' garbage collector does not
  write to their pages and copy them (it took a worker's private memory from 7 to 16 MB
  between 1k and 10k images; 7 MB at both with the freeze, ``bench/bench_streaming.py``).
* Each worker runs OpenCV and torch on one thread (:func:`one_thread_per_worker`): the processes
  are the parallelism; their default of a thread per core in each of N workers put N x N threads
  on N cores, and can hang a forked worker (see the function).
* ``workers <= 1`` runs everything inline (debuggable, no pickling).
"""
from __future__ import annotations

import gc
import multiprocessing as mp
import sys
from collections import deque
from typing import Callable, Iterable, Iterator, TypeVar

import cv2

T = TypeVar("T")
R = TypeVar("R")

_WORKER_FN: Callable | None = None


def one_thread_per_worker(*_: object) -> None:
    """In a worker process: OpenCV, and torch when it is loaded, on one thread (their pools
    default to one thread per core, in every worker). Also a DataLoader ``worker_init_fn``.

    Both matter in a forked child of a parent that used the pools, whose threads the child does
    not have: OpenCV is set to 0 (sequential), not 1, which resizes the parent's pool and hung 17
    of 20 such forks; torch's first multi-threaded operation there never returns (OpenMP), on one
    thread it runs (DataLoader's own workers do the same)."""
    cv2.setNumThreads(0)
    torch = sys.modules.get("torch")               # not imported for it: that costs a worker a second
    if torch is not None:
        torch.set_num_threads(1)


def _install(fn: Callable) -> None:
    global _WORKER_FN
    one_thread_per_worker()
    _WORKER_FN = fn


def _run_chunk(chunk: list) -> list:
    return [_WORKER_FN(x) for x in chunk]


def _start_pool(ctx: mp.context.BaseContext, workers: int, fn: Callable):
    """A pool whose workers hold ``fn``; under fork the parent's objects are frozen while the
    workers are forked (they stay frozen in the workers only)."""
    if ctx.get_start_method() != "fork":
        return ctx.Pool(workers, initializer=_install, initargs=(fn,))
    gc.freeze()
    try:
        return ctx.Pool(workers, initializer=_install, initargs=(fn,))
    finally:
        gc.unfreeze()


def _context() -> mp.context.BaseContext:
    """fork where it is the platform default (fast start, nothing re-imported), else spawn."""
    method = mp.get_start_method(allow_none=True) or ("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    return mp.get_context("spawn" if method == "spawn" else method)


class _Local:
    """A result computed in this process, queued like a pending chunk."""

    def __init__(self, values: list) -> None:
        self.values = values

    def ready(self) -> bool:
        return True

    def get(self) -> list:
        return self.values


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int,
                 window: int = 256, chunksize: int = 8,
                 local: Callable[[T], bool] | None = None) -> Iterator[R]:
    """``map(fn, items)`` in order; ``fn`` must be a picklable callable (no lambdas)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    pool = None
    pending: deque = deque()       # of (_Local | AsyncResult, item count)
    in_flight = 0
    chunk: list = []

    def submit() -> None:
        nonlocal pool, chunk, in_flight
        if pool is None:
            ctx = _context()
            if ctx.get_start_method() == "fork" and hasattr(fn, "before_fork"):
                fn.before_fork()
            pool = _start_pool(ctx, workers, fn)
        pending.append((pool.apply_async(_run_chunk, (chunk,)), len(chunk)))
        in_flight += len(chunk)
        chunk = []

    done = False
    try:
        for item in items:
            if local is not None and local(item):
                if chunk:
                    submit()
                pending.append((_Local([fn(item)]), 1))
                in_flight += 1
            else:
                chunk.append(item)
                if len(chunk) >= chunksize:
                    submit()
            while pending and (in_flight > window or pending[0][0].ready()):
                res, n = pending.popleft()
                in_flight -= n
                yield from res.get()
        if chunk:
            submit()
        while pending:
            res, _ = pending.popleft()
            yield from res.get()
        done = True
    finally:
        if pool is not None:
            if done:
                pool.close()       # let workers exit normally
            else:
                pool.terminate()   # error or consumer stopped early: stop the work now
            pool.join()
