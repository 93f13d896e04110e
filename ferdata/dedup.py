"""Duplicates in a detect table: a file listed again, copies of one picture and face, and copies
whose labels disagree (:class:`Deduplicator`, given :func:`conflicting_labels` of a first read)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

from ferdata.classes import CLASSES
from ferdata.records import Dropped
from ferdata.report import StageReport


Identity = tuple[bytes, tuple[str, ...], str]


def face_identity(row: dict) -> Identity:
    """The picture (its sha256), the face (box rounded to pixels) and the split of a detect row."""
    return bytes.fromhex(row["sha256"])[:16], tuple(f"{v:.0f}" for v in row["face"]["box"]), row["record"]["split"]


@dataclass(frozen=True)
class Conflicts:
    """Labels that disagree, found by a first read of the detect table; every row they name is dropped."""

    faces: dict[Identity, list[str]] = field(default_factory=dict)   # copies of one face in one split
    keys: dict[str, list[str]] = field(default_factory=dict)         # one file listed again, otherwise labelled


def conflicting_labels(rows: Iterable[dict]) -> Conflicts:
    """Faces given different labels by copies of one picture in one split, and files listed more
    than once (same key, same path) with different labels, each with those labels. A key repeated
    for another file is not a conflict: :class:`Deduplicator` keeps its first file."""
    first: dict[Identity, int] = {}
    listed: dict[str, tuple[str, int]] = {}
    faces: dict[Identity, set[int]] = {}
    keys: dict[str, set[int]] = {}
    for row in rows:
        rec = row["record"]
        label = int(rec["label"])
        if rec["key"] in listed:
            path, was = listed[rec["key"]]
            if path == rec["path"] and was != label:
                keys.setdefault(rec["key"], {was}).add(label)
            continue
        listed[rec["key"]] = rec["path"], label
        ident = face_identity(row)
        if first.setdefault(ident, label) != label:
            faces.setdefault(ident, {first[ident]}).add(label)
    return Conflicts({i: _names(v) for i, v in faces.items()}, {k: _names(v) for k, v in keys.items()})


def _names(labels: set[int]) -> list[str]:
    return [CLASSES[c] for c in sorted(labels)]


class Deduplicator:
    """Keys must be unique: a file listed again is dropped (``duplicate_key``), and every listing
    of it when the labels disagree (``conflicting_labels``). Copies of one picture + face in one
    split: all are dropped when their labels disagree (``conflicting_labels``: neither label can be
    trusted), else the first is kept. ``conflicts`` is :func:`conflicting_labels` of the same rows.
    A face seen only in another official split is kept and counted, so official test sets stay whole."""

    def __init__(self, report: StageReport, conflicts: Conflicts | None = None) -> None:
        self.report = report
        self.conflicts = conflicts or Conflicts()
        self.keys: set[str] = set()
        self.faces: dict[tuple[bytes, tuple[str, ...]], dict[str, str]] = {}

    def __call__(self, rows: Iterable[dict]) -> Iterator[dict | Dropped]:
        for row in rows:
            rec = row["record"]
            if rec["key"] in self.conflicts.keys:
                labels = ", ".join(self.conflicts.keys[rec["key"]])
                yield Dropped(rec["dataset"], rec["key"], "conflicting_labels",
                              f"{rec['path']}: listed more than once, labelled {labels}")
                continue
            if rec["key"] in self.keys:
                yield Dropped(rec["dataset"], rec["key"], "duplicate_key", f"{rec['path']}: key used before")
                continue
            self.keys.add(rec["key"])
            picture, box, split = ident = face_identity(row)
            if ident in self.conflicts.faces:
                yield Dropped(rec["dataset"], rec["key"], "conflicting_labels",
                              f"{rec['path']}: copies of this picture and face "
                              f"{f'in split {split}' if split else 'in the dataset'} are labelled "
                              f"{', '.join(self.conflicts.faces[ident])}")
                continue
            seen = self.faces.setdefault((picture, box), {})          # split -> first key
            if split in seen:
                yield Dropped(rec["dataset"], rec["key"], "duplicate_image", f"{rec['path']}: same as {seen[split]}")
                continue
            if seen:
                first_split = next(iter(seen))
                self.report.count("duplicates", f"across_splits_{first_split or 'none'}_{split or 'none'}")
            seen[split] = rec["key"]
            yield row
