"""Named test subsets given as list files (Occlusion, Pose>30, Pose>45 of RAF-DB, FERPlus, AffectNet).

The RAN authors (Wang et al., "Region Attention Networks", 2019) published the
challenging-condition subsets as plain lists whose line format varies by file:
``test_0003_aligned 3 4`` (occlusion), ``0/test_0004_aligned.jpg`` (pose) and others.
Only membership matters to us, so each line is reduced to the dataset's image id with the
reader's ``subset_pattern`` (``test_0003`` for RAF-DB and ``fer0032220`` for FERPlus: the
record key; AffectNet's hash file name from ``0/<hash>.jpg`` or ``val/0/<hash>/``), and the
labels written in those lists (in the RAN code's own class order) are ignored: our labels
come from the dataset.

:meth:`ferdata.datasets.base.DatasetReader.read` tags each record with
``extra["subsets"]`` (sorted names it belongs to) for every reader that has a
``subset_pattern``; the shard stage lists each split's members per subset in its
``_info.json`` and the evaluator reports metrics per subset from there.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Mapping

from ferdata.records import open_regular

log = logging.getLogger(__name__)

RAFDB_ID = re.compile(r"\b((?:train|test)_\d{4,5})(?:_aligned)?(?:\.\w+)?\b")
FERPLUS_ID = re.compile(r"(fer\d{7})(?!\d)")                      # also in 1_fer0034656.png (occlusion list)
AFFECTNET_ID = re.compile(r"(?<![0-9a-f])([0-9a-f]{40,64})(?![0-9a-f])")   # the image's hash name, any folder


def parse_list(path: str | Path, pattern: re.Pattern[str]) -> frozenset[str]:
    """Image ids named in a subset list file (one per line; blank and unmatched lines skipped).

    Raises ``ValueError`` when no line names an image, which means the wrong file
    (or the wrong ``pattern``) was given.
    """
    path = Path(path)
    ids: set[str] = set()
    skipped = 0
    with open_regular(path, "r", encoding="utf-8-sig", errors="replace") as f:      # a pipe: refused, not waited on
        text = f.read()
    for line in text.splitlines():
        m = pattern.search(line)
        if m:
            ids.add(m.group(1))
        elif line.strip():
            skipped += 1
    if not ids:
        raise ValueError(f"{path}: no image ids matching {pattern.pattern!r}; is this a subset list?")
    if skipped:
        log.info("%s: %d lines without an image id (headers or counts) skipped", path.name, skipped)
    return frozenset(ids)


def under_root(name: str, root: Path, what: str) -> Path:
    """``name`` (relative to ``root``, or absolute) as a path, refused when it lies outside ``root``:
    dvc.yaml's detect stage depends on the dataset root alone, so a file read from elsewhere could
    change without ``dvc repro`` seeing it (and the shards would keep what the old file said).
    Inside as written (``..`` folded: a link under the root is the root's content to DVC), or where
    links on both sides lead (a root that is a link, the file named by its target's path)."""
    path = Path(name).expanduser()
    path = path if path.is_absolute() else Path(root) / path
    if not (_inside(os.path.abspath(path), os.path.abspath(root))
            or _inside(os.path.realpath(path), os.path.realpath(root))):
        raise ValueError(f"{what} {name!r} lies outside the dataset root {root}: `dvc repro` tracks only the root, "
                         "so a change to that file would not prepare the dataset again; put the file (or a "
                         "symlink to it) under the root and name it relative to the root")
    return path


def _inside(path: str, root: str) -> bool:
    try:
        Path(path).relative_to(root)
    except ValueError:
        return False
    return True


def load_subsets(spec: Mapping[str, str], root: Path, pattern: re.Pattern[str],
                 reader: str) -> dict[str, frozenset[str]]:
    """``{name: list file}`` -> ``{name: ids}``; relative paths resolve against ``root``.

    A missing file is a user error and raises ``FileNotFoundError`` naming it.
    """
    if not isinstance(spec, Mapping) or not all(isinstance(n, str) and n and isinstance(f, str)
                                                for n, f in spec.items()):
        raise ValueError(f"{reader}: options.subsets must map subset names to list files, e.g. "
                         f"{{occlusion: lists/occlusion_list.txt}}, got {spec!r}")
    out: dict[str, frozenset[str]] = {}
    for name, rel in sorted(spec.items()):
        path = under_root(rel, root, f"{reader}: options.subsets.{name}")
        if not path.exists():               # a pipe or folder there: parse_list names what it is
            raise FileNotFoundError(f"subset {name!r}: list file {path} not found (set options.subsets.{name})")
        out[name] = parse_list(path, pattern)
    return out


def membership(image_id: str, subsets: Mapping[str, frozenset[str]]) -> tuple[str, ...]:
    """Sorted names of the subsets that contain ``image_id``."""
    return tuple(name for name in sorted(subsets) if image_id in subsets[name])
