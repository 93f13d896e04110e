"""Duplicates in a detect table: a file listed again, copies of one picture and face, copies whose
labels disagree, and training copies of held-out faces (:class:`Deduplicator`, given
:func:`conflicting_labels` of a first read). Near copies (another file of the same face) are
:mod:`ferdata.nearcopies`'s."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

from ferdata.classes import CLASSES
from ferdata.records import HELD_OUT, SPLITS, Dropped
from ferdata.report import StageReport


Identity = tuple[bytes, tuple[str, ...], str]
CROSS_SPLIT_COPIES = ("keep", "drop_train")       # align.cross_split_copies


def face_identity(row: dict) -> Identity:
    """The picture (its sha256), the face (box rounded to pixels) and the split of a detect row."""
    return bytes.fromhex(row["sha256"])[:16], tuple(f"{v:.0f}" for v in row["face"]["box"]), row["record"]["split"]


@dataclass(frozen=True)
class Conflicts:
    """What a first read of the detect table finds: labels that disagree (every row they name is
    dropped), and the faces of the official val and test splits (a training copy of one is a test
    face seen in training: dropped when asked, ``align.cross_split_copies: drop_train``)."""

    faces: dict[Identity, list[str]] = field(default_factory=dict)   # copies of one face in one split
    keys: dict[str, list[str]] = field(default_factory=dict)         # one file listed again, otherwise labelled
    # face -> a val/test split keeping a copy of it, and that copy's key
    held_out: dict[tuple[bytes, tuple[str, ...]], tuple[str, str]] = field(default_factory=dict)
    # copies of one face in one training (or unsplit) split -> the key kept: the smallest, whatever the rows' order
    keepers: dict[Identity, str] = field(default_factory=dict)


def conflicting_labels(rows: Iterable[dict]) -> Conflicts:
    """Faces given different labels by copies of one picture in one split, and files listed more
    than once (same key, same path) with different labels, each with those labels. A key repeated
    for another file is not a conflict: :class:`Deduplicator` keeps its first file."""
    first: dict[Identity, int] = {}                 # the face's first label
    first_key: dict[Identity, str] = {}             # the key of its first copy (first listings only)
    copied: dict[Identity, list[str]] = {}          # faces with copies under other keys -> every copy's key
    listed: dict[str, tuple[str, int]] = {}
    faces: dict[Identity, set[int]] = {}
    keys: dict[str, set[int]] = {}
    held_out: dict[Identity, list[str]] = {}        # a val/test face -> the keys of its copies
    for row in rows:
        rec = row["record"]
        label = int(rec["label"])
        again = listed.get(rec["key"])
        if again and again[0] != rec["path"]:
            continue                                # another file under a taken key: it says nothing of this one
        if again and again[1] != label:
            keys.setdefault(rec["key"], {again[1]}).add(label)
        ident = face_identity(row)
        if first.setdefault(ident, label) != label:     # the picture carries this label too, whichever file says so
            faces.setdefault(ident, {first[ident]}).add(label)
        if again:
            continue        # a listing Deduplicator drops (duplicate_key): its key keeps no face
        if (key := first_key.setdefault(ident, rec["key"])) != rec["key"]:
            copied.setdefault(ident, [key]).append(rec["key"])
        listed[rec["key"]] = rec["path"], label
        if ident[2] in HELD_OUT:
            held_out.setdefault(ident, []).append(rec["key"])
    kept = {}                       # face -> a val/test split that keeps a copy (kept whole: Deduplicator), its key
    for ident, copies in held_out.items():
        if (key := next((key for key in copies if key not in keys), None)) is not None:
            kept.setdefault(ident[:2], (ident[2], key))
    keepers = {i: min(k for k in copies if k not in keys) for i, copies in copied.items()   # a key dropped as
               if i[2] not in HELD_OUT and any(k not in keys for k in copies)}     # listed otherwise keeps nothing
    return Conflicts({i: _names(v) for i, v in faces.items()}, {k: _names(v) for k, v in keys.items()}, kept, keepers)


def _dropped(rec: dict, reason: str, why: str) -> Dropped:
    """The drop of the table's record ``rec`` (its split with it), its detail naming the record's file,
    or its key where the dataset has none (FER2013's CSV rows), as :attr:`FaceRecord.where` does."""
    return Dropped(rec["dataset"], rec["key"], reason, f"{rec['path'] or rec['key']}: {why}", rec.get("split", ""))


def _names(labels: set[int]) -> list[str]:
    return [CLASSES[c] for c in sorted(labels)]


def across_splits(a: str, b: str) -> str:
    """The ``duplicates`` count of a face in splits ``a`` and ``b``, named in split order (train, val, test)
    whichever the table gave first: FER2013's train/test copies were counted under two names by row order."""
    first, second = sorted((a, b), key=lambda s: SPLITS.index(s) if s in SPLITS else -1)
    return f"across_splits_{first or 'none'}_{second or 'none'}"


class Deduplicator:
    """Keys must be unique: a file listed again is dropped (``duplicate_key``), and every listing
    of it when the labels disagree (``conflicting_labels``). Copies of one picture + face in one
    split: all are dropped when their labels disagree (``conflicting_labels``: neither label can be
    trusted), else the one with the smallest key is kept, in any row order (the kept key decides a carved
    split); in an official val or test split (the only ones align sees: the shard stage carves the others later)
    every copy is kept, as published, and counted
    (``duplicates``: ``within_<split>``, ``conflicting_labels_in_<split>``), so a benchmark's test set is
    scored whole (FER2013's PrivateTest holds copies of one picture, some labelled otherwise).
    ``conflicts`` is :func:`conflicting_labels` of the same rows.
    A face seen in another official split is kept and counted, so official test sets stay whole; with
    ``drop_train_copies`` its copies in the train split are dropped (``copy_of_held_out``), so no
    val or test face is trained on (the papers' splits keep them: the default)."""

    def __init__(self, report: StageReport, conflicts: Conflicts | None = None,
                 drop_train_copies: bool = False) -> None:
        self.report = report
        self.conflicts = conflicts or Conflicts()
        self.drop_train_copies = drop_train_copies
        self.keys: set[str] = set()
        self.faces: dict[tuple[bytes, tuple[str, ...]], dict[str, str]] = {}
        self.trained_held: dict[str, list[str]] = {}    # "train/<key>" -> "<split>/<key>"s: val/test faces in train

    def __call__(self, rows: Iterable[dict]) -> Iterator[dict | Dropped]:
        for row in rows:
            rec = row["record"]
            if rec["key"] in self.conflicts.keys:
                labels = ", ".join(self.conflicts.keys[rec["key"]])
                yield _dropped(rec, "conflicting_labels", f"listed more than once, labelled {labels}")
                continue
            if rec["key"] in self.keys:
                yield _dropped(rec, "duplicate_key", "key used before")
                continue
            self.keys.add(rec["key"])
            picture, box, split = ident = face_identity(row)
            held = split in HELD_OUT
            if ident in self.conflicts.faces and held:
                self.report.count("duplicates", f"conflicting_labels_in_{split}")
            elif ident in self.conflicts.faces:
                yield _dropped(rec, "conflicting_labels", "copies of this picture and face "
                               f"{f'in split {split}' if split else 'in the dataset'} are labelled "
                               f"{', '.join(self.conflicts.faces[ident])}")
                continue
            if self.drop_train_copies and split == "train" and (picture, box) in self.conflicts.held_out:
                held, copy = self.conflicts.held_out[picture, box]
                yield _dropped(rec, "copy_of_held_out", f"the same picture and face is in the {held} split ({copy})")
                continue
            seen = self.faces.setdefault((picture, box), {})          # split -> first key
            if split in seen and held:          # an official val/test split is scored as published
                self.report.count("duplicates", f"within_{split}")
                yield row
                continue
            keeper = self.conflicts.keepers.get(ident)      # the smallest key: the rows' order does not choose
            if split in seen or keeper not in (None, rec["key"]):
                yield _dropped(rec, "duplicate_image", f"same as {keeper or seen[split]}")
                continue
            for other in seen:          # each pair of splits once: a face in three is named alike in any row order
                self.report.count("duplicates", across_splits(other, split))
                if "train" in (split, other) and {split, other} & set(HELD_OUT):
                    mine, theirs = (rec["key"], f"{other}/{seen[other]}") if split == "train" else \
                        (seen["train"], f"{split}/{rec['key']}")
                    self.trained_held.setdefault(f"train/{mine}", []).append(theirs)     # in val and test: one face
            seen[split] = rec["key"]
            yield row
