"""Where things live on disk: a dataset's stage folders and a split's shard index file.

The one definition of the per-dataset layout (``dvc.yaml`` mirrors it) and of the names a
``_info.json`` may list, shared by the stages that write them and every reader.
"""
from __future__ import annotations

from pathlib import Path

from ferdata.tario import UnsafeTarError

STAGES = ("detect", "aligned", "derived", "shards")
INFO = "_info.json"


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
