"""Progress for long work: a tqdm bar on a terminal; elsewhere (a log file, CI, `dvc repro` with its
output redirected) a plain log line at most every ``PLAIN_EVERY_S`` seconds, so that a run of hours
shows it is alive, without a bar's carriage returns."""
from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
PLAIN_EVERY_S = 60.0


def progress(items: Iterable[T], desc: str, unit: str = "it", total: int | None = None) -> Iterator[T]:
    if sys.stderr.isatty():
        from tqdm import tqdm

        return iter(tqdm(items, desc=desc, unit=unit, total=total, dynamic_ncols=True))
    if total is None and hasattr(items, "__len__"):      # as tqdm takes it: the count and the time left
        try:
            total = len(items)
        except TypeError:                                   # e.g. a DataLoader over an IterableDataset
            pass
    return _plain(items, desc, unit, total)


def _plain(items: Iterable[T], desc: str, unit: str, total: int | None) -> Iterator[T]:
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= PLAIN_EVERY_S:
            last = now
            rate = done / max(now - start, 1e-9)
            left = f", about {_duration((total - done) / rate)} left" if total else ""
            log.info("%s: %d%s %s so far (%.1f %s/s%s)", desc, done, f" of {total}" if total else "", unit, rate,
                     unit, left)


def _duration(seconds: float) -> str:
    """``seconds`` as a person reads a wait: "40 s", "12 min", "3.5 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
