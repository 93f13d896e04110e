"""AffectNet in both published layouts, detected from the files on disk.

Official (``layout: csv``): ``Manually_Annotated_Images/`` + ``training.csv`` /
``validation.csv`` with columns subDirectory_filePath, face_x, face_y, face_width,
face_height, facial_landmarks (136 ';'-separated floats, iBUG-68 x1;y1;...),
expression (0-10), valence, arousal.

Re-packaged "March 2021" / "4 GB" (``layout: npy``): ``train_set|val_set/images/<i>.jpg``
+ ``annotations/<i>_exp.npy, <i>_val.npy, <i>_aro.npy, <i>_lnd.npy``. Images are
face crops, so there is no box; ``_lnd`` holds 136 landmark values (verified here).

With ``automatic: true`` (official layout only) the automatically annotated images are added to
the training split: ``Automatically_Annotated_Images/<dir>/<file>.jpg`` (at the root or in
``Automatically_Annotated/``) listed by ``automatically_annotated.csv`` (same columns; at the root,
in ``Automatically_Annotated_file_lists/`` or in ``Automatically_Annotated/``), keyed
``train_auto_<dir>_<file>`` and marked ``extra["annotation"] = "automatic"``. Their labels come
from a classifier (noisy), so they are flagged ``train_only``: the validation split carved from
train (which picks the best epoch) and the test split hold manually annotated images only.

In all, labels 8-10 (None, Uncertain, No-Face) are dropped and counted, protocol
``affectnet7`` also drops 7 (Contempt), valence/arousal go to ``record.extra`` and
the official validation set is the test set (there are no public test labels). Unreadable
landmarks or box keep the face without them (counted in the log: a face detector still finds it);
a list file without its header line is read from its first row (some copies lack it).
"""
from __future__ import annotations

import itertools
import logging
import os
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ferdata.classes import to_canonical
from ferdata.datasets.base import (BOX_UNREADABLE, LANDMARKS_UNREADABLE, READERS, DatasetLayoutError, DatasetReader,
                                   csv_lines, open_text, whole)
from ferdata.datasets.folder import hidden, is_image, unread
from ferdata.datasets.subsets import AFFECTNET_ID
from ferdata.io import IMAGE_EXTS
from ferdata.records import TRAIN_ONLY, Dropped, FaceRecord, make_key, open_regular

log = logging.getLogger(__name__)

COLUMNS = (
    "subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
    "facial_landmarks", "expression", "valence", "arousal",
)
IMAGES = "Manually_Annotated_Images"
LISTS = {"train": "training.csv", "test": "validation.csv"}
LIST_DIRS = ("Manually_Annotated_file_lists", ".")
AUTO_IMAGES = "Automatically_Annotated_Images"
AUTO_LIST = "automatically_annotated.csv"
AUTO_LIST_DIRS = ("Automatically_Annotated_file_lists", "Automatically_Annotated", ".")
AUTO_IMAGE_DIRS = (".", "Automatically_Annotated")
NPY_SPLITS = {"train": "train_set", "test": "val_set"}
PROTOCOLS = {"affectnet7": 7, "affectnet8": 8}
LAYOUTS = ("auto", "csv", "npy")


def label_problem(native: int, num_classes: int) -> str:
    """The drop reason for AffectNet label ``native`` under a protocol, or "" if it is kept."""
    if native in (8, 9, 10):
        return f"label_{['none', 'uncertain', 'no_face'][native - 8]}"
    if native == 7 and num_classes == 7:
        return "label_contempt_excluded"
    if not 0 <= native < num_classes:
        return "bad_label"
    return ""


def load_npy(path: Path) -> np.ndarray:
    """``np.load`` without pickles; any unreadable file becomes ``ValueError`` (a drop, not a crash)."""
    try:
        with open_regular(path) as f:                 # a pipe under its name: refused, not waited on
            arr = np.load(f, allow_pickle=False)
    except (OSError, EOFError, ValueError) as err:
        raise ValueError(f"{path.name}: unreadable .npy ({err})") from err
    if not isinstance(arr, np.ndarray):               # a zip (.npz) under a .npy name: an NpzFile, no array
        raise ValueError(f"{path.name}: unreadable .npy (an .npz archive, not one array)")
    return arr


def npy_scalar(path: Path) -> float:
    """The single number in a re-packaged ``.npy`` (stored as a string or a number)."""
    arr = load_npy(path)
    if arr.size != 1:
        raise ValueError(f"{path.name}: {arr.size} values, expected 1")
    value = arr.reshape(-1)[0]
    return float(value.decode("ascii", "replace") if isinstance(value, bytes) else str(value))


def affect(**readers: Callable[[], float]) -> dict[str, float]:
    """Valence / arousal as read by ``readers`` (name -> a reader of the value), kept only where
    readable and in [-1, 1]: automatic and No-Face rows carry sentinels such as -2, in either layout."""
    out = {}
    for name, read in readers.items():
        try:
            value = read()
        except ValueError:
            continue
        if -1.0 <= value <= 1.0:
            out[name] = value
    return out


def _looks_like_a_row(cells: list[str]) -> bool:
    """A data row, not a header: 9 cells, an image path first and a whole-number expression."""
    if len(cells) != len(COLUMNS) or Path(cells[0].strip()).suffix.lower() not in IMAGE_EXTS:
        return False
    try:
        return float(cells[6]).is_integer()
    except ValueError:
        return False


def _lists_a_row(csv_path: Path) -> bool:
    """Whether an AffectNet list names any image (a line beyond the header that is not blank)."""
    with open_text(csv_path, newline="") as f:
        return any(tuple(c.strip() for c in cells) != COLUMNS for _, cells in csv_lines(f, len(COLUMNS)))


def _images_by_stem(folder: Path) -> dict[str, list[Path]]:
    """The image files of ``folder`` (any of ``IMAGE_EXTS``, in any case: ``0.JPG``, ``1.jpeg``) by
    name without suffix, in name order (``.jpg`` before ``.png``); the npy layout's labels name
    images by their id alone, and only ``.jpg``/``.png`` in lower case were found."""
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if is_image(path):
            found.setdefault(path.stem, []).append(path)
    return found


@READERS.register("affectnet")
class AffectNetReader(DatasetReader):
    """Both AffectNet layouts; ``protocol`` affectnet7 or affectnet8."""

    name = "affectnet"
    expects = (
        "Manually_Annotated_Images/<dir>/<file>.jpg + training.csv, validation.csv "
        "(at the root or in Manually_Annotated_file_lists/), "
        "or train_set|val_set/{images/<i>.jpg, annotations/<i>_exp.npy}"
    )
    option_defaults = {"protocol": "affectnet8", "layout": "auto", "automatic": False}
    official = tuple(LISTS)
    subset_pattern = AFFECTNET_ID

    def check_options(self) -> None:
        protocol = self.options["protocol"]
        if not isinstance(protocol, str) or protocol not in PROTOCOLS:
            raise ValueError(f"affectnet: protocol must be affectnet7 or affectnet8, got {self.options['protocol']!r}")
        if self.options["automatic"] not in (True, False):
            raise ValueError(f"affectnet: automatic must be true or false, got {self.options['automatic']!r}")
        if self.options["layout"] not in LAYOUTS:
            raise ValueError(f"affectnet: layout must be one of {LAYOUTS}, got {self.options['layout']!r}")

    def scan(self) -> Iterator[FaceRecord | Dropped]:
        num_classes = PROTOCOLS[self.options["protocol"]]
        if self._layout() == "npy":
            if self.options["automatic"]:
                raise ValueError("affectnet: options.automatic needs the official layout: the re-packaged npy "
                                 "layout holds no automatically annotated images")
            if self.options["subsets"]:
                raise ValueError("affectnet: options.subsets needs the official layout: subset lists name images "
                                 "by their hash file names, which the re-packaged npy layout replaced by numbers")
            for split, folder in NPY_SPLITS.items():
                yield from self._read_npy(self.root / folder, split, num_classes)
        else:
            lists = self._lists()
            automatic = self._automatic() if self.options["automatic"] else None   # found before any record
            for split, csv_path in lists.items():
                yield from self._read_csv(csv_path, split, num_classes, self.root / IMAGES)
            if automatic is not None:
                auto_csv, auto_images = automatic
                yield from self._read_csv(auto_csv, "train", num_classes, auto_images, automatic=True)

    def official_splits(self) -> tuple[str, ...]:
        """The splits whose list names at least one image: a corpus in AffectNet's layout with an
        empty validation.csv (or no val_set annotation) has no test split to keep, so the shard stage
        carves one (or k-fold assigns it); a list whose every image was dropped is an error there."""
        if self._layout() == "npy":
            return tuple(s for s, d in NPY_SPLITS.items()
                         if any((self.root / d / "annotations").glob("*_exp.npy")))
        return tuple(s for s, path in self._lists().items() if _lists_a_row(path))

    def subset_id(self, record: FaceRecord) -> str:
        """Subset lists name AffectNet images by their (hash) file name."""
        return Path(record.path).stem.lower()

    @property
    def lists_twice(self) -> bool:  # type: ignore[override]
        """The CSV layout's lists may name a file again; the npy layout has one annotation file per image."""
        return self._layout() == "csv"

    def _layout(self) -> str:
        layout = self.options["layout"]
        if layout != "auto":
            return layout
        has_npy = any((self.root / d / "annotations").is_dir() for d in NPY_SPLITS.values())
        has_csv = (self.root / IMAGES).is_dir()
        if has_npy and has_csv:
            raise ValueError(f"affectnet: {self.root} holds both layouts; set options.layout to csv or npy")
        return "npy" if has_npy else "csv"

    # ---- official CSV layout -----------------------------------------------------------

    def _lists(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for split, fname in LISTS.items():
            for d in LIST_DIRS:
                if (self.root / d / fname).is_file():
                    found[split] = self.root / d / fname
                    break
        if not (self.root / IMAGES).is_dir() or len(found) != len(LISTS):
            raise DatasetLayoutError(
                self.name, self.root,
                [f"{IMAGES}/", *LISTS.values(), "(or train_set/ val_set/ with images/ and annotations/)"],
            )
        return found

    def _automatic(self) -> tuple[Path, Path]:
        """The automatically annotated list and image folder."""
        csv_path = next((p for p in (self.root / d / AUTO_LIST for d in AUTO_LIST_DIRS) if p.is_file()), None)
        images = next((p for p in (self.root / d / AUTO_IMAGES for d in AUTO_IMAGE_DIRS) if p.is_dir()), None)
        if csv_path is None or images is None:
            raise DatasetLayoutError(self.name, self.root, [
                f"options.automatic: {AUTO_IMAGES}/ (or Automatically_Annotated/{AUTO_IMAGES}/)",
                f"{AUTO_LIST} (at the root, in Automatically_Annotated_file_lists/ or Automatically_Annotated/)"],
                "add AffectNet's automatically annotated part there, or set options.automatic: false")
        return csv_path, images

    def _read_csv(self, csv_path: Path, split: str, num_classes: int, images: Path,
                  automatic: bool = False) -> Iterator[FaceRecord | Dropped]:
        with open_text(csv_path, newline="") as f:
            rows = csv_lines(f, len(COLUMNS))
            first = next(rows, (1, []))
            header = tuple(h.strip() for h in first[1])
            if header != COLUMNS:
                if not _looks_like_a_row(first[1]):
                    raise ValueError(f"{csv_path}: header {header} is not AffectNet's {COLUMNS}")
                log.warning("%s: %s has no header line; reading its first line as a row", self.name, csv_path)
                rows = itertools.chain([first], rows)
            for lineno, row in rows:
                yield self._parse(row, split, num_classes, f"{csv_path.name}:{lineno}", images, automatic)

    def _parse(self, row: list[str], split: str, num_classes: int, where: str, images: Path,
               automatic: bool) -> FaceRecord | Dropped:
        rel = row[0].strip()
        name = Path(rel).with_suffix("").as_posix().replace("/", "_") if rel else ""
        whole_row = len(row) == len(COLUMNS)           # else a quote may have merged the line into its first cell
        key = make_key(split, f"auto_{name}" if automatic else name) if name and whole_row else make_key(split, where)
        if not whole_row or not name:
            return Dropped(self.name, key, "malformed_row", f"{where}: {len(row)} columns"
                           + ("" if name else ", no image path"), split=split)
        try:
            native = whole(row[6])
        except ValueError:
            return Dropped(self.name, key, "bad_label", f"{where}: expression {row[6]!r}", split=split)
        problem = label_problem(native, num_classes)
        if problem:
            return Dropped(self.name, key, problem, f"{where}: expression {native}", split=split)
        box: tuple[float, float, float, float] | None
        try:
            x, y, w, h = (float(v) for v in row[1:5])
            if not (np.isfinite([x, y, w, h]).all() and w > 0 and h > 0):
                raise ValueError("not a finite box of positive size")
            box = (x, y, x + w, y + h)
        except ValueError as err:
            self.note(BOX_UNREADABLE, key, f"{where}: face_x/y/width/height {row[1:5]}: {err}")
            box = None
        lmk: np.ndarray | None
        try:
            lmk = np.array([float(v) for v in row[5].split(";")], dtype=np.float32).reshape(68, 2)
            if not np.isfinite(lmk).all():
                raise ValueError("not finite")
        except ValueError as err:          # the face, its box and label are good: keep them
            self.note(LANDMARKS_UNREADABLE, key, f"{where}: facial_landmarks {err}")
            lmk = None
        if os.path.isabs(rel) or os.path.normpath(rel).split(os.sep)[0] == os.pardir:
            return Dropped(self.name, key, "malformed_row", f"{where}: {rel!r} leads out of {images.name}/",
                           split=split)
        path = images / rel
        if not path.is_file():
            return Dropped(self.name, key, "missing_image", str(path), split=split)
        extra: dict = {"annotation": "automatic", TRAIN_ONLY: True} if automatic else {}
        extra.update(affect(valence=partial(float, row[7]), arousal=partial(float, row[8])))
        return FaceRecord(
            dataset=self.name, key=key, path=str(path), label=to_canonical("affectnet", native),
            native_label=str(native), split=split, box=box, landmarks=lmk, extra=extra,
        )

    # ---- re-packaged npy layout --------------------------------------------------------

    def _read_npy(self, folder: Path, split: str, num_classes: int) -> Iterator[FaceRecord | Dropped]:
        if not (folder / "images").is_dir() or not (folder / "annotations").is_dir():
            raise DatasetLayoutError(
                self.name, self.root, [f"{d}/images/, {d}/annotations/" for d in NPY_SPLITS.values()]
            )
        labels = sorted((folder / "annotations").glob("*_exp.npy"))
        for path in labels:                                   # what copying from a Mac leaves: ._123_exp.npy
            if hidden(path.name):
                yield Dropped(self.name, make_key(split, path.name), *unread(path), split=split)
        ids = sorted((p.name[: -len("_exp.npy")] for p in labels if not hidden(p.name)), key=lambda i: (len(i), i))
        images = _images_by_stem(folder / "images")
        for image_id in ids:
            yield self._parse_npy(folder, image_id, split, num_classes, images.get(image_id, []))
            for other in images.get(image_id, [])[1:]:
                yield Dropped(self.name, make_key(split, other.name), "duplicate_image",
                              f"{other}: annotations/{image_id}_exp.npy labels {images[image_id][0].name}", split=split)
        labelled = set(ids)
        for stem, paths in images.items():                   # an image its annotations do not label
            for path in paths if stem not in labelled else ():
                why = unread(path) if hidden(path.name) else ("no_label", f"{path}: no annotations/{stem}_exp.npy")
                yield Dropped(self.name, make_key(split, stem), *why, split=split)

    def _parse_npy(self, folder: Path, image_id: str, split: str, num_classes: int,
                   images: list[Path]) -> FaceRecord | Dropped:
        key = make_key(split, image_id)
        anno = folder / "annotations"
        try:
            native = whole(npy_scalar(anno / f"{image_id}_exp.npy"))
        except ValueError as err:
            return Dropped(self.name, key, "bad_label", str(err), split=split)
        problem = label_problem(native, num_classes)
        if problem:
            return Dropped(self.name, key, problem, f"{folder.name}/{image_id}: expression {native}", split=split)
        if not images:
            return Dropped(self.name, key, "missing_image", f"{folder / 'images' / image_id}.jpg (or another image "
                           f"type: {', '.join(sorted(IMAGE_EXTS))})", split=split)
        path = images[0]
        lmk = None
        if (anno / f"{image_id}_lnd.npy").is_file():
            try:
                values = load_npy(anno / f"{image_id}_lnd.npy").astype(np.float32).reshape(-1)
                if values.size != 136 or not np.all(np.isfinite(values)):
                    raise ValueError(f"{values.size} values, expected 136 finite ones")
                lmk = values.reshape(68, 2)
            except ValueError as err:      # a pre-cropped face with a good label: keep it
                self.note(LANDMARKS_UNREADABLE, key, f"{image_id}_lnd.npy: {err}")
        extra = affect(**{name: partial(npy_scalar, anno / f"{image_id}{suffix}")
                          for name, suffix in (("valence", "_val.npy"), ("arousal", "_aro.npy"))
                          if (anno / f"{image_id}{suffix}").is_file()})
        return FaceRecord(
            dataset=self.name, key=key, path=str(path), label=to_canonical("affectnet", native),
            native_label=str(native), split=split, landmarks=lmk, extra=extra,
        )
