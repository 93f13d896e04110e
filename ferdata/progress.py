"""Progress bars for long work (tqdm on a terminal, quiet otherwise)."""
from __future__ import annotations

import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, unit: str = "it", total: int | None = None) -> Iterator[T]:
    from tqdm import tqdm

    return iter(tqdm(items, desc=desc, unit=unit, total=total, disable=not sys.stderr.isatty(),
                     dynamic_ncols=True))
