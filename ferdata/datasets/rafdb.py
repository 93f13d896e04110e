"""RAF-DB (basic subset): ``EmoLabel/list_patition_label.txt`` + ``Image/{original,aligned}/``.

Each label line is ``train_00001.jpg 5`` with **1-based** labels 1 Surprise, 2 Fear,
3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral; the split is the name prefix
(12,271 train + 3,068 test). Original images come with the 5 manual landmarks
(``Annotation/manual/<name>_manu_attri.txt``: 5 ``x y`` lines, then gender, race,
age) and a box (``Annotation/boundingbox/<name>_boundingbox.txt``: ``x0 y0 x1 y1``),
which we attach so the ``annotations`` backend can align without a detector.
Aligned images (100x100) are already face crops; source-frame annotations do not
apply to them and are not attached. There is no official validation split.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from ferdata.classes import to_canonical
from ferdata.datasets.base import (BOX_UNREADABLE, LANDMARKS_UNREADABLE, READERS, DatasetLayoutError, DatasetReader,
                                   leads_out, open_text, read_text, whole)
from ferdata.datasets.subsets import RAFDB_ID
from ferdata.records import Dropped, FaceRecord, make_key


LABEL_FILES = ("EmoLabel/list_patition_label.txt", "EmoLabel/list_partition_label.txt")
IMAGE_DIRS = {"original": "Image/original", "aligned": "Image/aligned"}
MANUAL_DIR = "Annotation/manual"
BOX_DIR = "Annotation/boundingbox"
ATTRIBUTES = ("gender", "race", "age")


def parse_manual(path: Path) -> tuple[np.ndarray, dict[str, int]]:
    """A ``*_manu_attri.txt`` file: (5, 2) float32 landmarks and the attributes present.

    Raises ``ValueError`` if the first five lines are not five ``x y`` pairs.
    """
    lines = [ln.split() for ln in read_text(path).splitlines() if ln.strip()]
    if len(lines) < 5 or any(len(ln) != 2 for ln in lines[:5]):
        raise ValueError(f"{path.name}: first 5 lines must be 'x y' landmark pairs")
    lmk = np.array(lines[:5], dtype=np.float32)
    if not np.all(np.isfinite(lmk)):
        raise ValueError(f"{path.name}: non-finite landmark")
    attrs = {name: int(ln[0]) for name, ln in zip(ATTRIBUTES, lines[5:8]) if len(ln) == 1 and ln[0].isdigit()}
    return lmk, attrs


def parse_box(path: Path) -> tuple[float, float, float, float]:
    """A ``*_boundingbox.txt`` file: ``x0 y0 x1 y1``; ``ValueError`` if not 4 ordered numbers."""
    v = [float(t) for t in read_text(path).split()]
    if len(v) != 4 or not (np.isfinite(v).all() and v[2] > v[0] and v[3] > v[1]):
        raise ValueError(f"{path.name}: expected 'x0 y0 x1 y1' (finite) with x1>x0, y1>y0, got {v}")
    return v[0], v[1], v[2], v[3]


@READERS.register("rafdb")
class RAFDBReader(DatasetReader):
    """RAF-DB basic; ``images`` picks original (with annotations) or aligned crops."""

    name = "rafdb"
    expects = (
        "EmoLabel/list_patition_label.txt + Image/original/ and/or Image/aligned/ "
        "(+ optional Annotation/manual/, Annotation/boundingbox/)"
    )
    option_defaults: Mapping[str, Any] = {"images": "auto"}
    subset_pattern = RAFDB_ID
    official = ("train", "test")
    lists_twice = True               # its label list may name a file again

    def check_options(self) -> None:
        if self.options["images"] not in ("auto", *IMAGE_DIRS):
            raise ValueError(f"{self.name}: images must be auto, original or aligned, got {self.options['images']!r}")

    def scan(self) -> Iterator[FaceRecord | Dropped]:
        label_file, kind = self._layout()
        image_dir = self.root / IMAGE_DIRS[kind]
        annotated = kind == "original"
        manual = self.root / MANUAL_DIR if annotated and (self.root / MANUAL_DIR).is_dir() else None
        boxes = self.root / BOX_DIR if annotated and (self.root / BOX_DIR).is_dir() else None
        with open_text(label_file) as f:
            lines = f.readlines()
        self._refuse_compound(lines, label_file)
        for lineno, line in enumerate(lines, start=1):
            if line.strip():
                yield self._parse(line, f"{label_file.name}:{lineno}", image_dir, kind, manual, boxes)

    def _refuse_compound(self, lines: list[str], label_file: Path) -> None:
        """RAF-DB's compound subset has the same layout with labels 1-11: read as basic, its labels
        1-7 would become basic classes. A file with labels past 7 in 5% of its rows or more (compound:
        a third of them) is it; a few are bad rows of basic, dropped one by one."""
        labels = [fields[1] for fields in (ln.split() for ln in lines) if len(fields) == 2]
        beyond = 0
        for v in labels:
            try:
                beyond += whole(v) > 7
            except ValueError:                      # a bad row of either subset: dropped later, one by one
                pass
        if beyond >= max(3, 0.05 * len(labels)):
            raise ValueError(f"{self.name}: {label_file} has {beyond} of {len(labels)} labels above 7: that is "
                             "RAF-DB's compound subset (labels 1-11), not basic (1-7); point the root at basic/")

    def _layout(self) -> tuple[Path, str]:
        label_file = next((self.root / p for p in LABEL_FILES if (self.root / p).is_file()), None)
        asked = kind = self.options["images"]
        if kind == "auto":
            kind = next((k for k, d in IMAGE_DIRS.items() if (self.root / d).is_dir()), "original")
        if label_file is None or not (self.root / IMAGE_DIRS[kind]).is_dir():
            images = " or ".join(f"{d}/" for d in IMAGE_DIRS.values()) if asked == "auto" else f"{IMAGE_DIRS[kind]}/"
            raise DatasetLayoutError(self.name, self.root, [LABEL_FILES[0], images])
        return label_file, kind

    def _parse(
        self, line: str, where: str, image_dir: Path, kind: str,
        manual: Path | None, boxes: Path | None,
    ) -> FaceRecord | Dropped:
        fields = line.split()
        stem = Path(fields[0]).stem
        key = make_key(stem)
        split = stem.split("_", 1)[0]
        if len(fields) != 2:                    # its name still tells its split: a test row's loss is counted
            return Dropped(self.name, key, "malformed_row", f"{where}: {len(fields)} fields",
                           split=split if split in ("train", "test") else "")
        if split not in ("train", "test"):
            return Dropped(self.name, key, "bad_split", f"{where}: name {fields[0]!r} lacks train_/test_")
        try:
            native = whole(fields[1])                   # "3" or a re-saved "3.0"; never 3.7 truncated
            label = to_canonical("rafdb", native - 1)   # the file is 1-based
        except ValueError:
            return Dropped(self.name, key, "bad_label", f"{where}: label {fields[1]!r} not in 1..7", split=split)
        name = f"{stem}_aligned{Path(fields[0]).suffix}" if kind == "aligned" else fields[0]
        if leads_out(fields[0]):
            return Dropped(self.name, key, "malformed_row", f"{where}: {fields[0]!r} leads out of {image_dir.name}/",
                           split=split)
        path = image_dir / name
        if not path.is_file():
            return Dropped(self.name, key, "missing_image", str(path), split=split)
        lmk, box, extra = None, None, {}
        try:
            if manual is not None and (manual / f"{stem}_manu_attri.txt").is_file():
                lmk, extra = parse_manual(manual / f"{stem}_manu_attri.txt")
        except ValueError as err:
            self.note(LANDMARKS_UNREADABLE, key, str(err))
        try:
            if boxes is not None and (boxes / f"{stem}_boundingbox.txt").is_file():
                box = parse_box(boxes / f"{stem}_boundingbox.txt")
        except ValueError as err:
            self.note(BOX_UNREADABLE, key, str(err))
        return FaceRecord(
            dataset=self.name, key=key, path=str(path), label=label, native_label=str(native),
            split=split, box=box, landmarks=lmk, extra=extra,
        )
