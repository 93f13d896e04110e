"""The dataset-reader interface and its registry.

A reader turns a dataset root in its publisher's on-disk format into a stream of
``FaceRecord`` (kept) and ``Dropped`` (counted by reason) items. Readers never
decode pixels except where the labels live in the pixels' container (FER2013 CSV).

Each reader implements ``scan`` (its format); :meth:`DatasetReader.read` applies the
options every reader shares (``COMMON_OPTIONS``) on top, so no caller can skip them.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import itertools
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, TextIO

from ferdata.classes import CLASSES, canonical_id
from ferdata.datasets.subsets import load_subsets, membership
from ferdata.errors import shown, utf8_name
from ferdata.records import LISTED_AS, SOFT_LABEL, Dropped, FaceRecord, NotRegularFile, open_regular
from ferdata.registry import Registry

log = logging.getLogger(__name__)

READERS: Registry[type["DatasetReader"]] = Registry("dataset reader")


def without_classes(distribution: list[float], excluded: frozenset[int]) -> list[float]:
    """A label distribution (canonical order) with the ``excluded`` classes' shares removed and the
    rest renormalised: a FERPlus face of 6 Anger and 4 Disgust votes, Disgust excluded, trains as
    Anger alone (the trainer drops Contempt's share so for a 7-class model). Its label is never an
    excluded class (such records are dropped), so some share remains."""
    kept = [0.0 if c in excluded else float(v) for c, v in enumerate(distribution)]
    total = sum(kept)
    return [v / total for v in kept]


# Options every reader takes, beside its own ``option_defaults``.
#   exclude_classes: canonical class names (or synonyms) whose records are dropped with reason
#   ``excluded_class``, e.g. [Contempt] for FERPlus's 7-class protocol (CK+'s also needs neutral_frames);
#   a kept record's label distribution (FERPlus votes) loses their shares, so no target names them.
#   subsets: {name: list file} of named test subsets (RAN's Occlusion / Pose>30 / Pose>45 lists);
#   records listed are tagged ``extra["subsets"]`` and the evaluator reports each subset apart.
#   Readers whose image ids such lists name set ``subset_pattern`` (:mod:`ferdata.datasets.subsets`).
COMMON_OPTIONS: Mapping[str, Any] = {"exclude_classes": (), "subsets": {}}


class DatasetLayoutError(FileNotFoundError):
    """The root does not look like the dataset: names what was expected and what was found."""

    def __init__(self, reader: str, root: Path, expected: list[str],
                 fix: str = "point --root (or params.yaml datasets.<name>.root) at the dataset's top folder") -> None:
        root = Path(root)
        state = "exists" if root.is_dir() else "is a file, not a folder" if root.exists() else "does not exist"
        where = f"{root} ({state})"
        found, instead = _at_root(root)
        super().__init__(
            f"{reader}: {where} does not look like this dataset.\n"
            f"  expected: {', '.join(expected)}\n"
            f"  found:    {found}\n"
            f"  fix: {fix}{instead}"
        )


ARCHIVES = (".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".7z", ".rar")


def _at_root(root: Path) -> tuple[str, str]:
    """What is at a dataset's ``root`` for :class:`DatasetLayoutError`: the first names in the folder, or
    the file given instead of one (``found: (nothing)`` said no more, audit h110), with what to do then."""
    if root.is_dir():
        return ", ".join(sorted(shown(p.name) for p in root.iterdir())[:20]) or "(nothing)", ""
    if not root.exists():
        return "(nothing)", ""
    name = shown(root.name)
    if name.lower().endswith(ARCHIVES):
        return f"{name}, an archive", f"; unpack {name} first and give the folder it makes"
    return f"{name}, a file", f"; a folder, not a file in it ({name} lies in {shown(str(root.parent))})"


# An unreadable annotation is a note, not a drop: the image and its label are the data, and a record
# without landmarks or box is what a dataset without them gives (a face detector finds the face).
LANDMARKS_UNREADABLE = "kept without landmarks (their landmark file or column is unreadable)"
BOX_UNREADABLE = "kept without a face box (its file or columns are unreadable)"


class DatasetReader:
    """Base class: subclasses set ``name``/``expects`` and implement ``scan``.

    ``options`` are the reader's own settings from params.yaml
    (``datasets.<name>.options``) plus ``COMMON_OPTIONS``; unknown option names raise
    ``ValueError``.
    """

    name: ClassVar[str] = ""
    expects: ClassVar[str] = ""          # one line: what must be on disk, shown by `ferdata datasets`
    option_defaults: ClassVar[Mapping[str, Any]] = {}
    subset_pattern: ClassVar[re.Pattern[str] | None] = None   # a subset-list line -> the subset_id it names
    official: ClassVar[tuple[str, ...]] = ()     # the splits the publisher defines (none: ferdata.splits carves)
    lists_twice: ClassVar[bool] = False          # a label list may name one face twice (see _excluded_listings)

    def __init__(self, root: str | Path, **options: Any) -> None:
        known = {**COMMON_OPTIONS, **self.option_defaults}
        unknown = set(options) - set(known)
        if unknown:
            raise ValueError(f"{self.name}: unknown option(s) {sorted(unknown)}; known: {sorted(known)}")
        self.root = Path(root)
        self._prefix = str(self.root).rstrip(os.sep) + os.sep         # of the paths the readers join to it
        self.options = {**known, **options}
        self._notes: dict[str, tuple[str, str]] = {}     # key -> (what, example): the flaw of a record scanned
        self.excluded = excluded_ids(self.options["exclude_classes"], self.name)
        if self.options["subsets"] and self.subset_pattern is None:
            takers = ", ".join(n for n in READERS.names() if READERS.get(n).subset_pattern is not None)
            raise ValueError(f"{self.name}: options.subsets is not supported: no published subset lists name "
                             f"this dataset's images (readers that take subsets: {takers}); remove options.subsets")
        self.check_options()

    def check_options(self) -> None:
        """Refuse an option value this reader cannot take, in words, before any file is read: built when
        params.yaml is checked whole (:func:`ferdata.datasets.check_reader`), so a value misspelt for one
        dataset is told before any stage runs, not when its detect stage starts after the other datasets'
        detection. Readers with options override it; none to check here."""

    def official_splits(self) -> tuple[str, ...]:
        """The splits the dataset's publisher defines, whether or not any of their records survive
        (the shard stage refuses to carve one that lost every sample out of train)."""
        return self.official

    def read(self) -> Iterator[FaceRecord | Dropped]:
        """Every item of :meth:`scan`, with the records of excluded classes dropped (and a file's
        listing whose other listing is of an excluded class: ``conflicting_labels``) and the
        records named by ``options.subsets`` tagged ``extra["subsets"]``."""
        self._notes = {}
        excluded = self._excluded_listings() if self.excluded and self.lists_twice else {}
        scanned = self.scan()
        try:
            # A root laid out otherwise is named by the scan's first step, before the subset lists
            # under it are looked for (a wrong --root was reported as a missing list file).
            first = list(itertools.islice(scanned, 1))
        except UnicodeDecodeError as e:
            raise self._not_utf8(e) from e
        subsets = (load_subsets(self.options["subsets"], self.root, self.subset_pattern, self.name)
                   if self.options["subsets"] else {})
        tagged: set[str] = set()
        owners: dict[str, int] = {}                       # key -> digest of the file (or pixels) that took it
        renamed: list[str] = []                           # "<file> as <key>" of each record given its own key
        not_utf8: list[str] = []                          # paths whose names are not UTF-8 (DVC cannot hash them)
        records, drops = 0, Counter()
        example: dict[str, str] = {}                      # reason -> its first drop's detail (no sample: named)
        noted: dict[str, list] = {}                       # what -> [records kept with it, first example]
        try:
            for item in itertools.chain(first, scanned):
                note = self._notes.pop(item.key, None)        # counted below only if the record stays
                if not isinstance(item, FaceRecord):
                    drops[item.reason] += 1
                    example.setdefault(item.reason, item.detail)
                    yield item
                    continue
                records += 1
                if item.path and not utf8_name(item.path):
                    not_utf8.append(item.path)
                identity = self._identity(item)
                own = self._distinct(item, identity, owners)
                if own.key != item.key:
                    renamed.append(f"{item.path or item.key} as {own.key}")
                other = excluded.get((item.key, identity), own.label)
                if own.label not in self.excluded and other != own.label:
                    yield own.dropped("conflicting_labels", f"{item.where}: listed as {CLASSES[own.label]} and as "
                                      f"{CLASSES[other]} (excluded by options.exclude_classes)")
                    continue
                if own.label in self.excluded:
                    yield own.dropped("excluded_class", f"{CLASSES[own.label]} (options.exclude_classes)")
                    continue
                if self.excluded and SOFT_LABEL in own.extra:
                    own = dataclasses.replace(own, extra={
                        **own.extra, SOFT_LABEL: without_classes(own.extra[SOFT_LABEL], self.excluded)})
                if subsets:
                    image_id = self.subset_id(item)           # as the lists name it: before any new key
                    tags = membership(image_id, subsets)
                    if tags:
                        tagged.add(image_id)
                        own = dataclasses.replace(own, extra={**own.extra, "subsets": tags})
                if note is not None:
                    noted.setdefault(note[0], [0, note[1]])[0] += 1
                yield own
        except UnicodeDecodeError as e:
            raise self._not_utf8(e) from e
        if not records:              # an empty label file or class folders: nothing to prepare
            dropped = f"; dropped: {dict(sorted(drops.items()))}, e.g. {example[drops.most_common(1)[0][0]]}" \
                if drops else ""
            raise ValueError(f"{self.name}: no samples found under {self.root} (expected {self.expects}){dropped}")
        if renamed:
            log.warning("%s: %d record(s) named alike after key sanitising took their own key (a hash of their "
                        "path under the root, or of their pixels, appended), e.g. %s", self.name, len(renamed),
                        shown(renamed[0]))
        if not_utf8:
            log.warning("%s: %d file name(s) are not UTF-8, e.g. %s: read here, but DVC cannot hash them (`dvc "
                        "add` and `dvc repro` fail on this root with \"'utf-8' codec can't encode character ...\", "
                        "naming no file); rename them to UTF-8, e.g. convmv -f latin1 -t utf8 -r --notest %s",
                        self.name, len(not_utf8), shown(not_utf8[0]), shown(self.root))
        for what, (n, example) in sorted(noted.items()):
            log.warning("%s: %d record(s) %s, e.g. %s", self.name, n, what, shown(example))
        for name, ids in sorted(subsets.items()):
            if ids - tagged:
                log.warning("%s: subset %r lists %d of its %d images that were not kept (not in the dataset, "
                            "dropped, or excluded)", self.name, name, len(ids - tagged), len(ids))

    def _excluded_listings(self) -> dict[tuple[str, str], int]:
        """(key, :meth:`_identity`) -> label of each record of an excluded class (a face of a file: a
        file may hold several, each with its key and label). A file listed again with another label
        is a conflict, as align's ``conflicting_labels`` judges one, where the excluded listing never
        reaches align. A first, silent pass over the scan (its warnings come from the second), made
        only for readers whose label lists may name a face twice (``lists_twice``) when classes are
        excluded; it holds the excluded records only."""
        listed: dict[tuple[str, str], int] = {}
        with _muted(log, logging.getLogger(type(self).__module__)):
            try:
                for item in self.scan():
                    if isinstance(item, FaceRecord) and item.label in self.excluded:
                        listed.setdefault((item.key, self._identity(item)), item.label)
            except UnicodeDecodeError as e:
                raise self._not_utf8(e) from e
        self._notes = {}
        return listed

    def _identity(self, record: FaceRecord) -> str:
        """Which file (its path under the root) or pixels (their hash) a record is."""
        return (f"path:{self._under_root(record.path)}" if record.path else
                "pixels:" + hashlib.sha1(record.pixels or b"").hexdigest())

    def _distinct(self, record: FaceRecord, identity: str, owners: dict[str, int]) -> FaceRecord:
        """``record`` with a key no other file has: names alike after sanitising (``a b.jpg`` and
        ``a-b.jpg``, ``x.jpg`` and ``x.png``, rows of one image name with other pixels) were two images
        under one key, and align kept the first as a "duplicate". The first file keeps the key, another
        gets a hash of its path relative to the root (or of its pixels) appended: keys stay stable and
        readable, and the key it was listed under (``extra[LISTED_AS]``) puts both in one split, whichever
        the list names first. The same file (``identity``) listed again keeps the key: align drops
        the repeat (``duplicate_key``).
        ``owners`` holds 8 bytes of digest per key (~70 MB for AffectNet's 400k)."""
        digest = hashlib.sha1(identity.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        key = record.key
        while owners.setdefault(key, int(digest, 16)) != int(digest, 16):
            key = f"{key}-{digest[:8]}"
        return record if key == record.key else dataclasses.replace(
            record, key=key, extra={**record.extra, LISTED_AS: record.key})   # splits group by the listed key

    def _under_root(self, path: str) -> str:
        """``path`` relative to the root (what does not move with the dataset's mount point); the
        readers join their paths to the root, so mostly a prefix cut (``relpath`` asks for the working
        folder twice per call)."""
        return path[len(self._prefix):] if path.startswith(self._prefix) else os.path.relpath(path, self.root)

    def _not_utf8(self, e: UnicodeDecodeError) -> ValueError:
        return ValueError(f"{self.name}: a text file under {self.root} is not UTF-8 ({e}); "
                          "save it as UTF-8 (the publishers' files are)")

    def scan(self) -> Iterator[FaceRecord | Dropped]:
        """The dataset as its publisher lays it out: records and dropped items, in a stable order."""
        raise NotImplementedError

    def note(self, what: str, key: str, example: str) -> None:
        """Mark record ``key`` as kept despite a flaw (``what``: "kept without landmarks ..."), before
        it is yielded; :meth:`read` counts it when the record stays (not dropped after all) and logs
        each count with its first example when the scan ends."""
        self._notes[key] = (what, example)

    def subset_id(self, record: FaceRecord) -> str:
        """The id by which subset lists name ``record`` (what ``subset_pattern`` extracts): its key."""
        return record.key


@contextlib.contextmanager
def _muted(*loggers: logging.Logger) -> Iterator[None]:
    """Nothing logged directly on ``loggers`` meanwhile (a pass whose findings the next one reports)."""
    def drop(_: logging.LogRecord) -> bool:
        return False

    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


@contextlib.contextmanager
def open_text(path: Path, newline: str | None = None) -> Iterator[TextIO]:
    """A publisher's text file (UTF-8, a byte-order mark allowed); a byte that is not UTF-8, wherever
    reading meets it, is a ``ValueError`` naming the file."""
    try:
        with open_regular(path, "r", newline=newline, encoding="utf-8-sig") as f:
            yield f
    except NotRegularFile as e:            # a pipe there waited for ever: a drop or an error naming it
        raise ValueError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 ({e.reason}: byte {e.object[e.start:e.start + 1]!r} at offset "
                         f"{e.start}); save it as UTF-8 (the publishers' files are)") from None


def csv_lines(f: TextIO, width: int | None = None, warn: bool = True) -> Iterator[tuple[int, list[str]]]:
    """``(line number, cells)`` of each line of a publisher's CSV list that holds more than spaces
    and commas, without the empty cells a trailing comma adds beyond ``width`` cells (None: the first
    line's own width, without such cells: a header's). Empty cells within ``width`` stay (AffectNet
    leaves valence and arousal empty). Lines of only commas (what a spreadsheet writes for a blank
    row) are skipped and counted in a warning (``warn``).

    One row per line: no field of these lists spans lines, and ``csv.reader`` over the whole file
    lets a stray opening quote run on through every later line, taking their rows into one cell
    (one bad row took the rest of the file with it, line numbers after it wrong). Here such a line
    alone reads wrong (its cell count or its values) and the reader drops it with that reason."""
    commas: list[int] = []
    for number, line in enumerate(f, 1):
        try:
            cells = next(csv.reader([line]), [])
        except csv.Error as e:          # a cell over csv's field limit: a zero-filled or other non-CSV file
            raise ValueError(f"{getattr(f, 'name', 'a list')}: line {number} is not a CSV row ({e}): a damaged "
                             "(e.g. zero-filled) or wrong file? replace it with the publisher's") from None
        if not any(c.strip() for c in cells):
            if line.strip():
                commas.append(number)
            continue
        if width is None:
            width = len(cells)
            while width and not cells[width - 1].strip():
                width -= 1
        while len(cells) > width and not cells[-1].strip():
            cells.pop()
        yield number, cells
    if commas and warn:
        log.warning("%s: %d line(s) of only commas skipped (no row), e.g. line %d", getattr(f, "name", "a list"),
                    len(commas), commas[0])


def read_text(path: Path) -> str:
    """A small per-image annotation file's text, read as :func:`open_text` reads a list (a byte-order
    mark left by an editor is not part of its first number)."""
    with open_text(path) as f:
        return f.read()


def leads_out(rel: str) -> bool:
    """Whether an image name a label list gives (relative to the images' folder) leads out of that
    folder: absolute, or ``..`` past its top. Such a list would read any picture on the machine (a
    private photo) into the shards, which are shared (``dvc push``), and outside what DVC tracks
    (the dataset root); a link under the root is the root's content and stays allowed."""
    return os.path.isabs(rel) or os.path.normpath(rel).split(os.sep)[0] == os.pardir


def whole(text: object) -> int:
    """A label or count written as a whole number ("3", "3.0", CK+'s "3.0000000e+00"); anything
    else (3.7, inf, nan, a word) is a ``ValueError``, never a class truncated or an overflow."""
    value = float(str(text).strip())
    if not value.is_integer():                      # False for nan and inf too
        raise ValueError(f"{text!r} is not a whole number")
    return int(value)


def excluded_ids(names: Any, reader: str) -> frozenset[int]:
    """Canonical ids of the ``exclude_classes`` option (class names or synonyms, any case)."""
    if not isinstance(names, (list, tuple)):
        raise ValueError(f"{reader}: options.exclude_classes must be a list of class names, "
                         f"e.g. [Contempt], got {names!r}")
    ids = set()
    for n in names:
        try:
            ids.add(canonical_id(str(n)))
        except ValueError:
            raise ValueError(f"{reader}: options.exclude_classes: {n!r} is not a class; "
                             f"use the canonical names {list(CLASSES)}") from None
    if len(ids) >= len(CLASSES):
        raise ValueError(f"{reader}: options.exclude_classes {list(names)} excludes every class")
    return frozenset(ids)


def open_reader(name: str, root: str | Path, options: Mapping[str, Any] | None = None) -> DatasetReader:
    """Instantiate the reader registered as ``name``."""
    cls = READERS.get(name)
    options = dict(options or {})
    if not_names := sorted(repr(k) for k in options if not isinstance(k, str) or k == "root"):
        known = sorted({**COMMON_OPTIONS, **cls.option_defaults})      # a keyword error was a traceback
        raise ValueError(f"{cls.name}: unknown option(s) {', '.join(not_names)}; known: {known} (the root is "
                         "datasets.<name>.root, not an option)")
    return cls(root, **options)
