"""Ordered, memory-bounded parallel map over processes (the stages' only concurrency).

Items are sent in windows so at most ``window`` results are in flight whatever the
dataset size; with ``workers <= 1`` everything runs inline (debuggable, no pickling).
"""
from __future__ import annotations

import itertools
import multiprocessing as mp
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int,
                 window: int = 256, chunksize: int = 8) -> Iterator[R]:
    """``map(fn, items)`` in order; ``fn`` must be a picklable callable (no lambdas)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    ctx = mp.get_context("spawn" if mp.get_start_method(allow_none=True) == "spawn" else "fork")
    it = iter(items)
    with ctx.Pool(workers) as pool:
        while batch := list(itertools.islice(it, window)):
            yield from pool.imap(fn, batch, chunksize=chunksize)
