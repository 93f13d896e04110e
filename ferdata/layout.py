"""Where things live on disk: a dataset's stage folders, the files in them, a split's index.

The one definition of the per-dataset layout (``dvc.yaml`` mirrors it), of the file names one
stage writes and the next reads, and of the names a ``_info.json`` may list; stages import their
inputs' names from here, not from the stage that wrote them.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterator

from ferdata.tario import UnsafeTarError

STAGES = ("detect", "aligned", "derived", "shards")
FACES = "faces.jsonl.gz"        # the detect table: one JSON row per kept record
ALIGNED = "aligned"             # chunk tar prefixes: aligned-000000.tar, derived-000000.tar
DERIVED = "derived"
INFO = "_info.json"


def read_faces(detect_dir: str | Path) -> Iterator[dict]:
    """Rows of a detect table."""
    with gzip.open(Path(detect_dir) / FACES, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def stage_dirs(data_dir: str | Path, name: str) -> dict[str, Path]:
    """``<data_dir>/<name>/{detect,aligned,derived,shards}``."""
    base = Path(data_dir) / name
    return {s: base / s for s in STAGES}


def listed_shard(split_dir: str | Path, name: str) -> Path:
    """The shard an ``_info.json`` in ``split_dir`` lists as ``name``; names are plain file names
    (an info file must not point a reader outside its folder)."""
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise UnsafeTarError(f"{Path(split_dir) / INFO}: shard name {name!r} is not a plain file name")
    return Path(split_dir) / name
