"""One part of a dataset, for detecting faces on several machines (``ferdata detect --part K/N``).

A record belongs to part ``K`` of ``N`` by a hash of its key (of its photo's, where faces share one), so every
machine that reads the same dataset makes the same split without talking to the others, each record falls in
exactly one part, and parts are equal in size up to sampling noise, whatever order the reader yields.
Parts count from 1 (``1/4`` .. ``4/4``), like GNU ``split -n K/N``.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Iterable

from ferdata.records import PHOTO, FaceRecord


@dataclass(frozen=True)
class Part:
    """Part ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 1 <= self.index <= self.count:
            raise ValueError(f"part {self.index}/{self.count}: write K/N with 1 <= K <= N (parts count from 1)")

    @staticmethod
    def parse(text: str) -> "Part":
        """``"2/4"`` -> ``Part(2, 4)``; anything else is refused in words."""
        index, sep, count = text.partition("/")
        whole = [v.strip() for v in (index, count)]         # ASCII digits: "²".isdigit() holds, int("²") fails
        if not sep or not all(v.isascii() and v.isdigit() for v in whole):
            raise ValueError(f"part {text!r}: write K/N, e.g. 1/4 .. 4/4 for four machines")
        return Part(int(index), int(count))

    def holds(self, key: str) -> bool:
        """Whether the record with this key is in this part."""
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.count == self.index - 1

    def holds_record(self, record: FaceRecord) -> bool:
        """Whether ``record`` is in this part: by the photo it shares with other faces where it names one
        (ExpW), so that a photo is detected on one machine (its faces split by key were detected on up to N,
        each image once per part), else by its key."""
        return self.holds(record.extra.get(PHOTO) or record.key)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parts_missing(parts: Iterable[str]) -> str:
    """In words, what the parts ``"K/N"`` detected whole lack to cover a dataset, ``""`` when they cover it."""
    have: dict[int, set[int]] = {}                    # N -> the K detected
    for part in map(Part.parse, parts):
        have.setdefault(part.count, set()).add(part.index)
    if _cover(have):
        return ""
    if len(have) > 1:
        return (f"parts of {len(have)} different splits ({', '.join(f'x/{n}' for n in sorted(have))}) overlap "
                "and leave gaps: every machine must give the same N")
    (n, ks), = have.items()
    missing = ", ".join(f"{k}/{n}" for k in range(1, n + 1) if k not in ks)
    return f"{missing} missing (not merged, or its run did not finish)"


def _cover(have: dict[int, set[int]], most: int = 1 << 16) -> bool:
    """Whether parts (N -> the K detected) hold every record together: one N's parts all, or (a record is in part K
    of N by its hash modulo N, :meth:`Part.holds`) each residue modulo the N's least common multiple in one of them
    (1/2 with 2/4 and 4/4; not worked out where that multiple is over ``most``)."""
    if any(len(ks) == n for n, ks in have.items()):
        return True
    span = math.lcm(*have)
    return span <= most and all(any(r % n + 1 in ks for n, ks in have.items()) for r in range(span))
