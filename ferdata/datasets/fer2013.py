"""FER2013 (``fer2013.csv`` / Kaggle ``icml_face_data.csv``) and FERPlus (``fer2013new.csv``).

FER2013 rows are ``emotion,pixels,Usage`` with 2,304 space-separated grey values
(48x48) and labels 0 Angry .. 6 Neutral; ``icml_face_data.csv`` has the columns as
``emotion, Usage, pixels`` with leading spaces, so columns are found by stripped,
lower-cased name. Pixels travel as PNG bytes in ``record.pixels`` (path ""). Usage
gives the official split: Training -> train, PublicTest -> val, PrivateTest -> test.

FERPlus re-labels the same rows with 10 crowd votes (neutral, happiness, surprise,
sadness, anger, disgust, fear, contempt, unknown, NF). It is joined to FER2013
strictly by row position, never by the number in the image name, and rows with an
empty ``Image name`` are dropped with a reason, exactly like Microsoft's
``generate_training_data.py``. The converted layout that script writes
(``FER2013Train|Valid|Test/label.csv`` + PNGs) is read too. Label modes follow
``FERPlus/src/ferplus.py`` (see :func:`ferplus_distribution`); val and test always
use ``majority``, as the authors do.
"""
from __future__ import annotations

from itertools import zip_longest
from pathlib import Path
from typing import Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from ferdata.classes import NATIVE_TO_CANONICAL, to_canonical
from ferdata.datasets.base import (READERS, DatasetLayoutError, DatasetReader, csv_lines, leads_out, open_text,
                                   whole)
from ferdata.datasets.subsets import FERPLUS_ID, under_root
from ferdata.io import encode_png
from ferdata.records import LABEL_MODE, SOFT_LABEL, Dropped, FaceRecord, make_key

USAGE = {"training": "train", "publictest": "val", "privatetest": "test"}
FER_CSVS = ("fer2013.csv", "fer2013/fer2013.csv", "icml_face_data.csv")
FERPLUS_CSVS = ("fer2013new.csv", "FERPlus/fer2013new.csv")
FERPLUS_DIRS = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}
VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "nf")
LABEL_MODES = ("majority", "probability", "crossentropy", "multi_target")


class FERPlusUnlabelled(ValueError):
    """The votes give no usable label; ``reason`` is the drop reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def ferplus_distribution(votes: Sequence[float], mode: str) -> np.ndarray:
    """The FERPlus authors' target for 10 vote counts, as 8 floats in FERPlus order.

    Single votes are zeroed first (outlier removal). ``majority``: one-hot on the top
    emotion if it has more than half the remaining votes. ``probability`` /
    ``crossentropy``: the top emotions (ties taken together, at most 3) until 75 % of
    the votes are covered; discarded if 50 % or less are covered or unknown/NF ties
    first. ``multi_target``: every emotion with at least 30 % of the votes. Training
    (:data:`fermodels.losses.TARGET_KINDS`) uses it as the paper does: cross-entropy against it
    (crossentropy), one label drawn from it at every step (probability), or -log of the most
    probable of its emotions (multi_target); val and test are always read ``majority``.
    Raises :class:`FERPlusUnlabelled` (no_majority, no_agreement, label_unknown, not_face).
    """
    raw = [0.0 if v < 1.0 + 1e-9 else float(v) for v in votes]
    total = sum(raw)
    emotion = [0.0] * len(raw)
    if mode == "majority":
        top = max(raw)
        if not top > 0.5 * total:
            raise FERPlusUnlabelled("no_majority")
        emotion[raw.index(top)] = top
    elif mode in ("probability", "crossentropy"):
        covered, count, valid = 0.0, 0, True
        while covered < 0.75 * total and count < 3 and valid:
            top = max(raw)
            for i, v in enumerate(raw):
                if v == top:
                    emotion[i], raw[i] = top, 0.0
                    covered += top
                    count += 1
                    if i >= 8:          # unknown or NF ties with the current maximum
                        valid = False
                        if sum(emotion) > top:
                            emotion[i] = 0.0
                            count -= 1
                        break
        if sum(emotion) <= 0.5 * total or count > 3:
            raise FERPlusUnlabelled("no_agreement")
    elif mode == "multi_target":
        emotion = [v if v >= 0.3 * total else 0.0 for v in raw]
        if sum(emotion) <= 0.5 * total:
            raise FERPlusUnlabelled("no_agreement")
    else:
        raise ValueError(f"ferplus: label_mode must be one of {LABEL_MODES}, got {mode!r}")
    top_index = int(np.argmax(emotion))
    if top_index == 8:
        raise FERPlusUnlabelled("label_unknown")
    if top_index == 9:
        raise FERPlusUnlabelled("not_face")
    dist = np.asarray(emotion[:8], dtype=np.float64)
    return dist / dist.sum()


def to_canonical_order(dist: np.ndarray) -> list[float]:
    """FERPlus-order distribution -> canonical-order list of 8 floats."""
    out = [0.0] * 8
    for native, canonical in enumerate(NATIVE_TO_CANONICAL["ferplus"]):
        out[canonical] = float(dist[native])
    return out


def pixels_to_png(text: str) -> bytes:
    """2,304 space-separated grey values -> 48x48 PNG bytes; ``ValueError`` if malformed.

    The message names the one thing wrong (the count, a value out of range, a value that is no
    whole number): "2304 values, expected 2304 in 0..255" sent readers counting a right count.
    """
    try:
        values = np.array(text.split(), dtype=np.int64)
    except OverflowError:
        raise ValueError("a value far beyond 0..255") from None
    except ValueError:
        bad = next((v for v in text.split() if not v.lstrip("+-").isdigit()), text.strip())
        raise ValueError(f"pixel value {bad[:40]!r} is not a whole number in 0..255") from None
    if values.size != 48 * 48:
        raise ValueError(f"{values.size} pixel values, expected 2304 (48x48)")
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 255:
        out = ([f"min {low}"] if low < 0 else []) + ([f"max {high}"] if high > 255 else [])
        raise ValueError(f"values outside 0..255 ({', '.join(out)})")
    return encode_png(values.astype(np.uint8).reshape(48, 48))


def find_file(root: Path, candidates: Sequence[str], override: str = "", option: str = "csv") -> Path | None:
    """``override`` (relative to ``root``, or absolute under it) if given, else the first existing candidate."""
    if override:
        p = under_root(override, root, f"options.{option}")
        return p if p.is_file() else None
    return next((root / c for c in candidates if (root / c).is_file()), None)


class FerRow(NamedTuple):
    """One data line of fer2013.csv. ``idx`` counts data lines (the FER2013 key and FERPlus's join
    position); ``where`` is ``file:line`` for drop details; ``width`` against ``columns`` (the
    header's) tells a cut-off or quote-broken line from one whose values are wrong."""

    idx: int
    where: str
    width: int
    columns: int
    emotion: str
    pixels: str
    usage: str

    def malformed(self) -> str:
        """"N of M columns" when the line has not the header's cell count, else ""."""
        return "" if self.width == self.columns else f"{self.width} of {self.columns} columns"


def shown(cells: Sequence[str], width: int = 40) -> list[str]:
    """``cells`` for a message, each cut to ``width`` characters: a data line taken for the header
    quoted its 2,304 pixel values (9 KB)."""
    return [c if len(c) <= width else c[:width] + "..." for c in cells]


def fer_rows(csv_path: Path) -> Iterator[FerRow]:
    """Every data line of a FER2013 CSV, whatever the column order, one row per line
    (:func:`csv_lines`: FERPlus's file is read alike, so row positions join)."""
    with open_text(csv_path, newline="") as f:
        lines = csv_lines(f)
        header = [h.strip().lower() for h in next(lines, (0, []))[1]]
        missing = [c for c in ("emotion", "pixels", "usage") if c not in header]
        if missing:
            raise ValueError(f"{csv_path}: header {shown(header)} lacks {missing}; the first line must be the "
                             "header emotion,pixels,Usage (no header line? add it)")
        ie, ip, iu = header.index("emotion"), header.index("pixels"), header.index("usage")
        for idx, (lineno, row) in enumerate(lines):
            yield FerRow(idx, f"{csv_path.name}:{lineno}", len(row), len(header),
                         _cell(row, ie), _cell(row, ip), _cell(row, iu))


_ROW_COUNTS = ("{new} and {fer} have different row counts{counts}; they must be the same release (FERPlus joins "
               "FER2013 by row position; lines of only spaces or commas are no rows: a row blanked in one file "
               "puts the two out of step)")


def _data_rows(csv_path: Path) -> int:
    """The rows after the header, counted as the readers read them (:func:`csv_lines`: a line of
    only spaces was a row here and refused the dataset); a second or two for FER2013's 300 MB."""
    with open_text(csv_path, newline="") as f:
        return max(sum(1 for _ in csv_lines(f, warn=False)) - 1, 0)


def _same_row_count(new_csv: Path, fer_csv: Path) -> None:
    """Refuse files of two releases before any record (a mismatch found at the end came after every row)."""
    plus, fer = _data_rows(new_csv), _data_rows(fer_csv)
    if plus != fer:
        raise ValueError(_ROW_COUNTS.format(new=new_csv.name, fer=fer_csv.name, counts=f" ({plus} and {fer})"))


def _check_ferplus_header(new_csv: Path, header: list[str]) -> None:
    """Refuse a header that is not FERPlus's, naming any extra column (its rows would carry 11 votes)."""
    expected = "Usage,Image name," + ",".join(VOTE_COLUMNS)
    if header[:2] != ["usage", "image name"] or tuple(header[2:12]) != VOTE_COLUMNS:
        raise ValueError(f"{new_csv}: header {shown(header)} is not FERPlus's {expected} (no header line? add it)")
    if len(header) > len(VOTE_COLUMNS) + 2:
        raise ValueError(f"{new_csv}: header has extra column(s) {shown(header[12:])} after FERPlus's {expected}; "
                         "remove them (and their cells in every row)")


def _votes(cells: list[str]) -> list[int]:
    """The 10 vote counts of a FERPlus row; ``ValueError`` naming the one thing wrong (a count of
    cells, a cell that is no whole number, a negative vote) and its column."""
    if len(cells) != len(VOTE_COLUMNS):
        raise ValueError(f"{len(cells)} vote cells, expected {len(VOTE_COLUMNS)} ({','.join(VOTE_COLUMNS)})")
    votes = []
    for column, cell in zip(VOTE_COLUMNS, cells):
        try:
            votes.append(whole(cell))
        except ValueError:
            raise ValueError(f"vote {cell.strip()[:40]!r} in column {column} is not a whole number") from None
        if votes[-1] < 0:
            raise ValueError(f"negative vote {votes[-1]} in column {column}")
    return votes


def _cell(row: list[str], i: int) -> str:
    return row[i].strip() if i < len(row) else ""


@READERS.register("fer2013")
class FER2013Reader(DatasetReader):
    """FER2013 CSV rows; keys are the 0-based data-row index (``00000``)."""

    name = "fer2013"
    expects = "fer2013.csv (emotion,pixels,Usage) or icml_face_data.csv (emotion, Usage, pixels)"
    option_defaults: Mapping[str, object] = {"csv": ""}
    official = tuple(USAGE.values())

    def scan(self) -> Iterator[FaceRecord | Dropped]:
        csv_path = find_file(self.root, FER_CSVS, str(self.options["csv"]))
        if csv_path is None:
            raise DatasetLayoutError(self.name, self.root, [str(self.options["csv"]) or ", ".join(FER_CSVS)])
        for row in fer_rows(csv_path):
            yield self._parse(row)

    def _parse(self, row: FerRow) -> FaceRecord | Dropped:
        """The row's record, or a drop naming its line and what is wrong: the cell count first, as a
        cut-off line or a stray quote leaves no Usage to check ("Usage ''" named the wrong fault)."""
        key, where = f"{row.idx:05d}", f"{row.where} (row {row.idx})"
        if row.malformed():
            return Dropped(self.name, key, "malformed_row", f"{where}: {row.malformed()}")
        split = USAGE.get(row.usage.lower())
        if split is None:
            return Dropped(self.name, key, "bad_split", f"{where}: Usage {row.usage!r}, expected one of "
                           "Training, PublicTest, PrivateTest")
        try:
            emotion = whole(row.emotion)
            label = to_canonical("fer2013", emotion)
        except ValueError:
            return Dropped(self.name, key, "bad_label", f"{where}: emotion {row.emotion!r} is not a whole "
                           "number in 0..6 (0 Angry .. 6 Neutral)", split=split)
        try:
            png = pixels_to_png(row.pixels)
        except ValueError as err:
            return Dropped(self.name, key, "bad_pixels", f"{where}: {err}", split=split)
        return FaceRecord(dataset=self.name, key=key, path="", label=label, native_label=str(emotion),
                          split=split, pixels=png)


@READERS.register("ferplus")
class FERPlusReader(DatasetReader):
    """FERPlus votes joined to FER2013 by row position, or the official converted folders."""

    name = "ferplus"
    expects = (
        "fer2013new.csv + fer2013.csv (or icml_face_data.csv), or FER2013Train|Valid|Test/label.csv + PNGs"
    )
    option_defaults: Mapping[str, object] = {"label_mode": "majority", "fer2013_csv": ""}
    subset_pattern = FERPLUS_ID
    official = tuple(FERPLUS_DIRS)

    @property
    def lists_twice(self) -> bool:  # type: ignore[override]
        """The converted folders' ``label.csv`` may name a PNG again (the same file, with other votes);
        the CSV pair's rows are each a key of their own name and pixels (no first pass: FER2013's cost)."""
        return self._votes_csv() is None

    def _votes_csv(self) -> Path | None:
        """``fer2013new.csv``, unless the converted folders are read: there is none, or it lies beside
        the folders the converter made of it without ``fer2013.csv`` (nor ``options.fer2013_csv``)."""
        new_csv = find_file(self.root, FERPLUS_CSVS)
        if (new_csv is not None and not self.options["fer2013_csv"] and find_file(self.root, FER_CSVS) is None
                and all((self.root / d / "label.csv").is_file() for d in FERPLUS_DIRS.values())):
            return None
        return new_csv

    def check_options(self) -> None:
        if (mode := str(self.options["label_mode"])) not in LABEL_MODES:
            raise ValueError(f"{self.name}: label_mode must be one of {LABEL_MODES}, got {mode!r}")

    def scan(self) -> Iterator[FaceRecord | Dropped]:
        mode = str(self.options["label_mode"])
        new_csv = self._votes_csv()
        if new_csv is not None:
            fer_csv = find_file(self.root, FER_CSVS, str(self.options["fer2013_csv"]), "fer2013_csv")
            if fer_csv is None:
                raise DatasetLayoutError(self.name, self.root, [new_csv.name, "fer2013.csv (or options.fer2013_csv)"])
            yield from self._read_csvs(new_csv, fer_csv, mode)
        elif all((self.root / d / "label.csv").is_file() for d in FERPLUS_DIRS.values()):
            yield from self._read_folders(mode)
        else:
            raise DatasetLayoutError(
                self.name, self.root, ["fer2013new.csv + fer2013.csv", "or FER2013Train/ FER2013Valid/ FER2013Test/"]
            )

    def _read_csvs(self, new_csv: Path, fer_csv: Path, mode: str) -> Iterator[FaceRecord | Dropped]:
        """Both files one row per line (:func:`csv_lines`), so the same kinds of line are skipped in
        each and row ``i`` of one stays row ``i`` of the other."""
        with open_text(new_csv, newline="") as f:
            plus = csv_lines(f)
            _check_ferplus_header(new_csv, [h.strip().lower() for h in next(plus, (0, []))[1]])
            _same_row_count(new_csv, fer_csv)      # before any record: a mismatch surfaced after the detections
            for plus_row, fer_row in zip_longest(plus, fer_rows(fer_csv)):
                if plus_row is None or fer_row is None:
                    raise ValueError(_ROW_COUNTS.format(new=new_csv.name, fer=fer_csv.name, counts=""))
                yield self._join(f"{new_csv.name}:{plus_row[0]}", plus_row[1], fer_row, mode)

    def _join(self, plus_where: str, plus_row: list[str], fer_row: FerRow, mode: str) -> FaceRecord | Dropped:
        """FERPlus row ``plus_row`` (at ``plus_where``) with the pixels of the FER2013 row at its position."""
        name = plus_row[1].strip() if len(plus_row) > 1 else ""
        key = make_key(Path(name).stem) if name else f"row{fer_row.idx:05d}"
        where = f"{plus_where}, {fer_row.where} (row {fer_row.idx})"
        if not name:
            return Dropped(self.name, key, "no_image_name", f"{where}: empty Image name (not a face)")
        if fer_row.malformed():
            return Dropped(self.name, key, "malformed_row", f"{where}: FER2013 line has {fer_row.malformed()}")
        split = USAGE.get(fer_row.usage.lower())
        if split is None:
            return Dropped(self.name, key, "bad_split", f"{where}: FER2013 Usage {fer_row.usage!r}")
        if plus_row[0].strip().lower() != fer_row.usage.lower():
            return Dropped(self.name, key, "usage_mismatch", f"{where}: {plus_row[0]!r} vs FER2013 {fer_row.usage!r}",
                           split=split)
        try:
            png = pixels_to_png(fer_row.pixels)
        except ValueError as err:
            return Dropped(self.name, key, "bad_pixels", f"{where}: {err}", split=split)
        return self._record(key, plus_row[2:], split, mode, path="", pixels=png, where=where)

    def _read_folders(self, mode: str) -> Iterator[FaceRecord | Dropped]:
        for split, folder in FERPLUS_DIRS.items():
            with open_text(self.root / folder / "label.csv", newline="") as f:
                for n, (lineno, row) in enumerate(csv_lines(f)):
                    if n == 0 and {c.strip().lower() for c in row} & set(VOTE_COLUMNS):
                        continue                  # a header line (Microsoft's files have none): not an image
                    if not row[0].strip():
                        where = f"{folder}/label.csv:{lineno}"
                        yield Dropped(self.name, f"{split}-line{lineno}", "no_image_name", where, split=split)
                        continue
                    key = make_key(Path(row[0].strip()).stem)
                    if leads_out(row[0].strip()):
                        yield Dropped(self.name, key, "malformed_row", f"{folder}/label.csv:{lineno}: "
                                      f"{row[0].strip()!r} leads out of {folder}/", split=split)
                        continue
                    path = self.root / folder / row[0].strip()
                    # Microsoft's committed label.csv files carry the face box "(x, y, w, h)" before
                    # the 10 votes; generate_training_data.py writes the votes right after the name.
                    votes = row[2:] if len(row) == 12 and row[1].strip().startswith("(") else row[1:]
                    if not path.is_file():
                        yield Dropped(self.name, key, "missing_image", str(path), split=split)
                    else:
                        where = f"{folder}/label.csv:{lineno}"
                        yield self._record(key, votes, split, mode, path=str(path), pixels=None, where=where)

    def _record(
        self, key: str, vote_cells: list[str], split: str, mode: str, path: str, pixels: bytes | None, where: str
    ) -> FaceRecord | Dropped:
        try:
            votes = _votes(vote_cells)
        except ValueError as err:
            return Dropped(self.name, key, "bad_votes", f"{where}: {err}", split=split)
        try:
            dist = ferplus_distribution(votes, mode if split == "train" else "majority")
        except FERPlusUnlabelled as err:
            return Dropped(self.name, key, err.reason, f"votes {votes}", split=split)
        native = int(np.argmax(dist))
        return FaceRecord(
            dataset=self.name, key=key, path=path, label=to_canonical("ferplus", native),
            native_label=VOTE_COLUMNS[native], split=split, pixels=pixels,
            extra={SOFT_LABEL: to_canonical_order(dist), "votes": votes,
                   LABEL_MODE: mode if split == "train" else "majority"},
        )
