"""Any folder of labelled images: ``<root>/[<split>/]<class>/**/<image>``.

Class folder names map to canonical ids through ``ferdata.classes`` synonyms
(case-insensitive) or an explicit ``mapping`` option; an unknown folder name is an
error that lists every unknown name, because guessing (or sorting folder names, as
torchvision's ImageFolder does) silently scrambles labels. Optional split folders
(train/val/test and common spellings) give the official split. ``subject`` (a regular expression
searched in each image's path under its class folder, e.g. ``'^(S\\d+)_'`` for CK+48's
``S010_004_00000017.png``) names the person, so that the splits carved from the folder keep one person
(and the frames of one sequence) in one split; without it every image is split on its own.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from ferdata.classes import CLASSES, resolve_names
from ferdata.datasets.base import READERS, DatasetLayoutError, DatasetReader
from ferdata.errors import shown
from ferdata.io import IMAGE_EXTS, VIDEO_EXTS
from ferdata.records import Dropped, FaceRecord, make_key

log = logging.getLogger(__name__)

HEIF_EXTS = frozenset({".heic", ".heif"})     # an iPhone's photos: no decoder here (io.decode_image says so too)
MAC_ZIP_FOLDER = "__MACOSX"     # where an archive made on a Mac keeps a ``._x`` resource fork of each file
SPLIT_DIRS: Mapping[str, str] = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}


def subdirs(folder: Path) -> list[Path]:
    """Visible sub-folders of ``folder``, sorted by name (hidden ones like ``.trash/`` skipped)."""
    return sorted((p for p in folder.iterdir() if p.is_dir() and not hidden(p.name)), key=lambda p: p.name)


def hidden(name: str) -> bool:
    """A dot-name (``.DS_Store``, ``._x.jpg``, ``.thumbs/``) or a Mac archive's ``__MACOSX/``: no data."""
    return name.startswith(".") or name == MAC_ZIP_FOLDER


def visible_files(folder: Path, recursive: bool = True, fence: Path | None = None) -> list[Path]:
    """Files (and links, broken ones too) under ``folder``, sorted by relative path for a stable
    order. Hidden files that are no images (``.DS_Store``) are left out; hidden images and, when
    ``recursive``, hidden folders (``.thumbs/``) are listed, not walked, for :func:`unread` to count.

    Linked folders are walked like real ones (as torchvision's ImageFolder does; a class folder
    often links images kept elsewhere) when they stay inside ``folder`` or lead out of ``fence``
    (default ``folder``; readers pass the dataset's root). A link leading up to ``fence`` or above
    it, back into ``fence`` outside ``folder`` (another class's folder), or to a folder walked
    already is listed itself, not walked, for :func:`unread` to count: walked, it would loop, or
    read images a second time under this folder's label. An unreadable folder is an error.
    """
    if not recursive:
        return sorted(p for p in folder.iterdir() if not p.is_dir() and (not hidden(p.name) or is_image(p)))
    home, bound = os.path.realpath(folder), os.path.realpath(fence or folder)
    found: list[Path] = []
    walked = {home}

    def fail(err: OSError) -> None:     # its images cannot be counted, nor dropped one by one: the run stops
        if isinstance(err, (FileNotFoundError, NotADirectoryError)):    # no permission to give: it is not there
            err.add_note("a folder of the dataset gone since its parent was listed (moved or deleted meanwhile), "
                         "or never there: run again once the dataset is in place")
        else:
            err.add_note(f"a folder of the dataset that cannot be listed: nothing under it can be read or counted; "
                         f"give this user read access (its owner: chmod -R u+rX {shown(str(err.filename))}) or move "
                         f"it out of {shown(str(bound))}")
        raise err

    for top, dirs, files in os.walk(folder, onerror=fail, followlinks=True):
        here = Path(top)
        found += (here / f for f in files if not hidden(f) or is_image(here / f))
        kept = []
        for d in sorted(dirs, key=lambda d: (os.path.islink(here / d), d)):     # real folders claim first
            if hidden(d):
                found.append(here / d)
                continue
            real = os.path.realpath(here / d)
            elsewhere_inside = _within(real, bound) and not _within(real, home)
            if real in walked or _within(bound, real) or elsewhere_inside:
                found.append(here / d)
            else:
                walked.add(real)
                kept.append(d)
        dirs[:] = kept
    return sorted(found)


def _within(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or lies below it (both real paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def is_image(path: Path) -> bool:
    """Named as an image this package reads (any of ``IMAGE_EXTS``, in any case)."""
    return path.suffix.lower() in IMAGE_EXTS


def unread(path: Path) -> tuple[str, str] | None:
    """Why a listed file is no image to read, as a drop (reason, detail); None for an image."""
    if hidden(path.name):
        why = "a Mac archive's resource forks" if path.name == MAC_ZIP_FOLDER else "its name starts with '.'"
        return "hidden_file", f"{path}: hidden ({why}): not read"
    if path.is_dir():
        return "repeated_folder", (f"{path}: a link up the tree, into another folder of the dataset, or to a "
                                   "folder read already: not followed (a loop, or a second way in)")
    if path.suffix.lower() in HEIF_EXTS:        # as io.decode_image names one renamed .jpg
        return "heic_unsupported", f"{path}: a HEIC/HEIF photo cannot be decoded here: convert it to JPEG or PNG"
    if path.suffix.lower() in VIDEO_EXTS:      # video FER sets (RAVDESS, DFEW, AFEW) ship clips
        return "video_file", (f"{path}: a video: extract its frames first, into a folder of their own (ffmpeg -i "
                               f"{path.name} -vf fps=5 {path.stem}/%04d.png); a folder dataset keeps a clip's frames "
                               "in one split with options.subject, e.g. '^([^/]+)/'")
    if path.suffix.lower() == ".gif":
        return "not_an_image", (f"{path}: a GIF is not read (often an animated clip, whose first frame need not show "
                                "the expression): convert a still one to PNG, extract an animated one's frames")
    if not is_image(path):
        return "not_an_image", f"{path}: not one of {', '.join(sorted(IMAGE_EXTS))}"
    if not path.exists():               # a file listed with its folder, then moved or deleted, is no link (audit h141)
        return "missing_image", (f"{path}: a link to nothing" if path.is_symlink() else
                                 f"{path}: gone since its folder was listed (moved or deleted meanwhile)")
    if not path.is_file():
        return "not_an_image", f"{path}: not a regular file (a pipe, socket or device)"
    return None


def holds_a_file(folder: Path, images_only: bool = False) -> bool:
    """Whether anything under ``folder`` could be a sample: a file or a linked folder (hidden non-images
    such as ``.DS_Store`` aside; with ``images_only``, what the reader reads as one: a visible image file
    outside hidden folders, or a linked folder). Stops at the first one."""
    def counts(name: str) -> bool:
        return is_image(Path(name)) and not hidden(name) if images_only else is_image(Path(name)) or not hidden(name)

    for top, dirs, files in os.walk(folder):
        if images_only:
            dirs[:] = [d for d in dirs if not hidden(d)]
        if any(map(counts, files)) or any(os.path.islink(Path(top, d)) for d in dirs):
            return True
    return False


def files_beside(dataset: str, folder: Path, where: str) -> Iterator[Dropped]:
    """The visible files directly in ``folder`` (beside its class or split folders): no data,
    each a counted drop (keys prefixed by ``where``); and its hidden folders that hold a file
    (``.trash/``, ``.@__thumb/``), not read, each a ``hidden_file`` drop."""
    for path in visible_files(folder, recursive=False):
        yield Dropped(dataset, make_key(where, path.name), "outside_class_folder", str(path))
    for path in sorted(p for p in folder.iterdir() if hidden(p.name) and p.is_dir() and holds_a_file(p)):
        yield Dropped(dataset, make_key(where, path.name), *unread(path))


def stray_images(dataset: str, paths: Iterable[Path], base: Path, reason: str, hint: str) -> Iterator[Dropped]:
    """The image files among ``paths``, found where the dataset keeps none (CK+ frames outside a
    sequence folder, JAFFE images outside the folder read): not read, each a counted drop, ``reason``
    with ``hint`` (where they belong), a hidden one as ``hidden_file``; keyed by their path under ``base``."""
    for path in paths:
        if path.is_dir() or not is_image(path):
            continue
        key = make_key(path.relative_to(base).as_posix())
        why = unread(path) if hidden(path.name) else (reason, f"{path}: not read: {hint}")
        yield Dropped(dataset, key, *why)


def read_class_tree(
    dataset: str,
    split_dirs: Mapping[str, Path],
    mapping: Mapping[str, str | None] | None,
    root: Path,
    subject: re.Pattern[str] | None = None,
) -> Iterator[FaceRecord | Dropped]:
    """Records for ``{split: folder}`` where each folder holds one sub-folder per class.

    Folder names are resolved once over all splits (so an unknown name anywhere fails
    before any record is produced). Images in a class mapped to ``None`` are dropped
    with reason ``excluded_class``. Keys are ``<split>_<class>_<relative path>``. Every other
    visible file is a counted drop too: one beside the class folders (``outside_class_folder``),
    one that is no image file (``not_an_image``: notes, GIFs, pipes; ``video_file``: a clip), a link to nothing
    (``missing_image``), a hidden image or folder (``hidden_file``: ``._x.jpg``, ``.thumbs/``; ``.DS_Store`` is
    ignored), a link it does not follow (``repeated_folder``: up the tree, into another folder under ``root``,
    the dataset's folder, or to one read already). Other linked folders are read. ``subject``: the
    pattern whose first group (or group ``subject``) in the path under the class folder is the person.
    """
    per_split = {split: subdirs(folder) for split, folder in split_dirs.items()}
    names = sorted({d.name for dirs in per_split.values() for d in dirs})
    ids = resolve_names(names, mapping, where=f"{dataset} class folders")
    for split, dirs in per_split.items():
        yield from files_beside(dataset, split_dirs[split], split)
        for class_dir in dirs:
            cid = ids[class_dir.name]
            for path in visible_files(class_dir, fence=root):
                rel = path.relative_to(class_dir).as_posix()
                key = make_key(split, class_dir.name, rel)     # names alike after sanitising: DatasetReader.read
                if (why := unread(path)) is not None:
                    yield Dropped(dataset, key, *why, split=split)
                elif cid is None:
                    yield Dropped(dataset, key, "excluded_class", f"{class_dir.name}/{rel}", split=split)
                else:
                    yield FaceRecord(
                        dataset=dataset, key=key, path=str(path), label=cid,
                        native_label=class_dir.name, split=split, subject=subject_of(rel, subject),
                    )


def subject_pattern(value: object, reader: str) -> re.Pattern[str] | None:
    """The ``subject`` option compiled (None: not set); refused unless a pattern with a group."""
    if value is None:
        return None
    try:
        pattern = re.compile(value) if isinstance(value, str) and value else None
    except re.error as err:
        raise ValueError(f"{reader}: options.subject {value!r} is no regular expression ({err})") from None
    if pattern is None or not pattern.groups:
        raise ValueError(f"{reader}: options.subject must be a regular expression whose first group (or group "
                         f"'subject') is the person in a file's path under its class folder, e.g. '^(S\\d+)_' "
                         f"for CK+48's S010_004_00000017.png; got {value!r}")
    return pattern


def subject_of(rel: str, pattern: re.Pattern[str] | None) -> str:
    """The person ``pattern`` finds in ``rel`` ("" when none is set or the path does not match)."""
    match = pattern.search(rel) if pattern else None
    if match is None:
        return ""
    return (match["subject"] if "subject" in pattern.groupindex else match[1]) or ""


@READERS.register("folder")
class FolderReader(DatasetReader):
    """Class-named sub-folders, optionally under train/val/test folders."""

    name = "folder"
    expects = (
        "<root>/<class>/*.jpg or <root>/<train|val|test>/<class>/*.jpg; class folders named like "
        "happy/Happiness/angry/... or mapped with options.mapping"
    )
    option_defaults: Mapping[str, object] = {"mapping": {}, "dataset": "folder", "subject": None}

    def check_options(self) -> None:
        subject_pattern(self.options["subject"], self.name)

    def scan(self) -> Iterator[FaceRecord | Dropped]:
        dataset = str(self.options["dataset"])
        subject = subject_pattern(self.options["subject"], self.name)
        split_dirs = self._split_dirs()
        if "" not in split_dirs:                      # train/val/test folders: files beside them are no data
            log.info("%s: split folders %s", self.name, {k: v.name for k, v in split_dirs.items()})
            yield from files_beside(dataset, self.root, "root")
        images, loose = 0, []
        for item in read_class_tree(dataset, split_dirs, self.options["mapping"], self.root, subject):
            if subject and isinstance(item, FaceRecord):
                images += 1
                if not item.subject:
                    loose.append(item.path)
            yield item
        if loose:           # the splits carved from the folder then split these images one by one
            log.warning("%s: %d of %d images have no person in their path under options.subject %r (e.g. %s): each "
                        "goes to a split on its own", self.name, len(loose), images, subject.pattern, loose[0])

    def official_splits(self) -> tuple[str, ...]:
        """The split folders holding an image: a ``test/`` that holds none (empty, or a README) defines no
        test split (it is carved)."""
        return tuple(s for s, d in self._split_dirs().items() if s and holds_a_file(d, images_only=True))

    def _split_dirs(self) -> dict[str, Path]:
        """``{split: folder}``; split is "" when the root holds the class folders directly."""
        expected = [f"<class>/ folders ({', '.join(CLASSES)} or synonyms)", "or train/ val/ test/ folders of them"]
        if not self.root.is_dir():
            raise DatasetLayoutError(self.name, self.root, expected)
        top = subdirs(self.root)
        if not top:
            raise DatasetLayoutError(self.name, self.root, expected)
        is_split = [d.name.lower() in SPLIT_DIRS for d in top]
        if not any(is_split):
            return {"": self.root}
        if not all(is_split):
            mixed = sorted(d.name for d, s in zip(top, is_split) if not s)
            raise ValueError(
                f"{self.name}: {self.root} mixes split folders with other folders {mixed}; "
                "put class folders either all under train/val/test or all at the root"
            )
        out: dict[str, Path] = {}
        for d in top:
            split = SPLIT_DIRS[d.name.lower()]
            if split in out:
                raise ValueError(f"{self.name}: two folders mean split {split!r}: {out[split].name}, {d.name}")
            out[split] = d
        return out
