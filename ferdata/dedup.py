"""Duplicates in a detect table: a file listed again, copies of one picture and face, copies whose
labels disagree, and training copies of held-out faces (:class:`Deduplicator`, given
:func:`conflicting_labels` of a first read); and near copies of held-out faces among the aligned
training faces (crops of one geometry re-encoded, resized or mirrored: :func:`face_hash`,
:class:`NearCopies`), which the shard stage looks for once the splits are known. A copy of the picture
that the face detector found again (another size, mirrored, cropped otherwise) is aligned 1-2 px
otherwise and is mostly not found (measured: 0 of 31 half-size copies, 3 of 32 mirrored, 4 of 31
re-cropped; JPEG quality 60: 25 of 32)."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import cv2
import numpy as np

from ferdata.classes import CLASSES
from ferdata.records import Dropped
from ferdata.report import StageReport


Identity = tuple[bytes, tuple[str, ...], str]
HELD_OUT = ("val", "test")
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
    held_out: dict[tuple[bytes, tuple[str, ...]], str] = field(default_factory=dict)   # face -> its val/test split


def conflicting_labels(rows: Iterable[dict]) -> Conflicts:
    """Faces given different labels by copies of one picture in one split, and files listed more
    than once (same key, same path) with different labels, each with those labels. A key repeated
    for another file is not a conflict: :class:`Deduplicator` keeps its first file."""
    first: dict[Identity, int] = {}
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
            continue
        listed[rec["key"]] = rec["path"], label
        if ident[2] in HELD_OUT:
            held_out.setdefault(ident, []).append(rec["key"])
    kept = {}                       # face -> a val/test split that keeps a copy (kept whole: Deduplicator)
    for ident, copies in held_out.items():
        if any(key not in keys for key in copies):
            kept.setdefault(ident[:2], ident[2])
    return Conflicts({i: _names(v) for i, v in faces.items()}, {k: _names(v) for k, v in keys.items()}, kept)


def _names(labels: set[int]) -> list[str]:
    return [CLASSES[c] for c in sorted(labels)]


class Deduplicator:
    """Keys must be unique: a file listed again is dropped (``duplicate_key``), and every listing
    of it when the labels disagree (``conflicting_labels``). Copies of one picture + face in one
    split: all are dropped when their labels disagree (``conflicting_labels``: neither label can be
    trusted), else the first is kept; in an official val or test split (the only ones align sees: the
    shard stage carves the others later) every copy is kept, as published, and counted
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
            held = split in HELD_OUT
            if ident in self.conflicts.faces and held:
                self.report.count("duplicates", f"conflicting_labels_in_{split}")
            elif ident in self.conflicts.faces:
                yield Dropped(rec["dataset"], rec["key"], "conflicting_labels",
                              f"{rec['path']}: copies of this picture and face "
                              f"{f'in split {split}' if split else 'in the dataset'} are labelled "
                              f"{', '.join(self.conflicts.faces[ident])}")
                continue
            if self.drop_train_copies and split == "train" and (picture, box) in self.conflicts.held_out:
                yield Dropped(rec["dataset"], rec["key"], "copy_of_held_out",
                              f"{rec['path']}: the same picture and face is in the "
                              f"{self.conflicts.held_out[picture, box]} split")
                continue
            seen = self.faces.setdefault((picture, box), {})          # split -> first key
            if split in seen and held:          # an official val/test split is scored as published
                self.report.count("duplicates", f"within_{split}")
                yield row
                continue
            if split in seen:
                yield Dropped(rec["dataset"], rec["key"], "duplicate_image", f"{rec['path']}: same as {seen[split]}")
                continue
            if seen:
                first_split = next(iter(seen))
                self.report.count("duplicates", f"across_splits_{first_split or 'none'}_{split or 'none'}")
            seen[split] = rec["key"]
            yield row


NEAR_BITS = 15          # of a face hash's 256 bits, at most this many differ between near copies
_PIECES = 16            # the hash in 16-bit pieces: two hashes within NEAR_BITS share a piece (pigeonhole)
# The bits dealt into pieces in a fixed shuffled order: a piece is no image row, which aligned faces share
# (any order keeps the pigeonhole guarantee; this one only spreads the index's buckets).
_ORDER = random.Random(0).sample(range(256), 256)
_CANDIDATES = 1 << 20   # (probe, held face) pairs compared at once: ~150 MB, whatever the pieces' buckets hold


def face_hash(jpg: bytes) -> tuple[int, int] | None:
    """A 256-bit difference hash of an aligned face (the signs of the horizontal gradients of its grey
    image at 17x16) and of its mirror image; None for bytes that do not decode. One aligned crop
    re-encoded or resized differs in a few bits (measured at most 17 of 256 at JPEG quality 60
    and 1-13 typically; mirrored: none, against the mirror's); different people's faces in 50 or more.
    The hash is not robust to the crop moving: shifted by 1 px it differs in 17 bits (median), by 2 px
    in 33, rotated 2 degrees in 19, so a copy re-aligned from another detection is mostly missed."""
    grey = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        return None

    def bits(img: np.ndarray) -> int:
        small = cv2.resize(img, (17, 16), interpolation=cv2.INTER_AREA).astype(np.int16)
        return int.from_bytes(np.packbits(small[:, 1:] > small[:, :-1]).tobytes(), "big")

    return bits(grey), bits(np.ascontiguousarray(grey[:, ::-1]))


class NearCopies:
    """Held-out faces by :func:`face_hash`, indexed by piece; :meth:`find_many` names, for each face, the
    first added whose hash is within :data:`NEAR_BITS` of the face's (else of its mirror's; every such
    face shares a piece with it). The index is sorted arrays, one per piece, searched for a batch of faces
    at once: a dict of lists scanned in Python took ~0.4 ms a face against 24k held-out faces, more as
    they grow (1.4x the rest of the shard stage at 80k training faces)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.hashes: list[int] = []
        self._index: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def add(self, name: str, hashes: tuple[int, int]) -> None:
        self.names.append(name)
        self.hashes.append(hashes[0])
        self._index = None

    def find(self, hashes: tuple[int, int]) -> str | None:
        return self.find_many([hashes])[0]

    def find_many(self, faces: list[tuple[int, int]], batch: int = 1024) -> list[str | None]:
        found: list[str | None] = [None] * len(faces)
        if not self.hashes or not faces:
            return found
        if self._index is None:
            raw = _raw(self.hashes)
            vals = _piece_values(raw)                               # (M, 16)
            order = np.argsort(vals, axis=0, kind="stable").T        # (16, M): per piece, held faces by value
            self._index = (order, np.take_along_axis(vals.T, order, 1), _words(raw))
        for start in range(0, len(faces), batch):
            part = faces[start:start + batch]
            best = self._best([f[0] for f in part])
            if (left := np.flatnonzero(best < 0)).size:             # no match: the mirror image's hash
                best[left] = self._best([part[i][1] for i in left])
            for i in np.flatnonzero(best >= 0):
                found[start + i] = self.names[best[i]]
        return found

    def _best(self, hashes: list[int]) -> np.ndarray:
        """For each hash, the first held face within NEAR_BITS of it, or -1."""
        order, sorted_vals, held = self._index
        raw = _raw(hashes)
        vals = _piece_values(raw)                                    # (N, 16)
        pieces = np.arange(_PIECES)
        lo = np.stack([np.searchsorted(sorted_vals[p], vals[:, p], "left") for p in pieces], 1)
        hi = np.stack([np.searchsorted(sorted_vals[p], vals[:, p], "right") for p in pieces], 1)
        counts = (hi - lo).ravel()
        total = int(counts.sum())
        best = np.full(len(hashes), len(self.hashes), np.int64)
        ends, words, first = np.cumsum(counts), _words(raw), lo.ravel()
        starts = ends - counts
        # (probe, piece, position) candidates a slice at a time: many held faces sharing a piece value
        # (identical hashes: blank faces, a still video's frames) give batch x 16 x their number of them
        for at in range(0, total, _CANDIDATES):
            j = np.arange(at, min(at + _CANDIDATES, total))
            row = np.searchsorted(ends, j, "right")                  # the (probe, piece) each candidate is of
            probe, piece = row // _PIECES, row % _PIECES
            cand = order[piece, first[row] + j - starts[row]]
            near = np.bitwise_count(words[probe] ^ held[cand]).sum(1) <= NEAR_BITS
            np.minimum.at(best, probe[near], cand[near])
        best[best == len(self.hashes)] = -1
        return best


def _raw(hashes: list[int]) -> np.ndarray:
    """(N, 32) the big-endian bytes of each 256-bit hash."""
    return np.frombuffer(b"".join(h.to_bytes(32, "big") for h in hashes), np.uint8).reshape(-1, 32)


def _piece_values(raw: np.ndarray) -> np.ndarray:
    """(N, 16) each hash's 16 pieces: piece k the 16-bit value of bits ``_ORDER[16k:16k+16]``, the first
    of them its highest bit."""
    bits = np.unpackbits(raw, axis=1)[:, ::-1]                      # column i: bit i of the hash
    dealt = np.packbits(bits[:, _ORDER].reshape(-1, _PIECES, 16), axis=-1)
    return np.ascontiguousarray(dealt).view(">u2").reshape(-1, _PIECES).astype(np.int64)


def _words(raw: np.ndarray) -> np.ndarray:
    """(N, 4) uint64 words of each 256-bit hash."""
    return raw.view(">u8").astype(np.uint64)
