"""Deterministic tar shards (WebDataset layout) and a reader that refuses unsafe members.

Writer: members sorted per sample, fixed mtime/uid/gid/mode/owner names, GNU format,
written to a temp file and renamed, so identical inputs give byte-identical shards
and a killed run never leaves a partial shard behind.
Reader: rejects absolute paths, ``..``, links, devices and anything but regular files.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator, Mapping

from ferdata.io import atomic_write_bytes


class UnsafeTarError(ValueError):
    """A tar member that a shard must never contain."""


@dataclass(frozen=True)
class ShardFile:
    path: Path
    count: int
    sha256: str
    size: int


def split_member(name: str) -> tuple[str, str]:
    """WebDataset rule: key = path up to the first dot of the basename, ext = the rest."""
    p = PurePosixPath(name)
    base, _, ext = p.name.partition(".")
    return (str(p.parent / base) if str(p.parent) != "." else base), ext.lower()


class TarShardWriter:
    """Writes samples into ``<dir>/<prefix>-%06d.tar``, rolling at ``maxcount`` samples."""

    def __init__(self, directory: str | Path, prefix: str, maxcount: int) -> None:
        if maxcount < 1:
            raise ValueError("maxcount must be >= 1")
        self.dir = Path(directory)
        self.prefix = prefix
        self.maxcount = maxcount
        self.files: list[ShardFile] = []
        self._buf: io.BytesIO | None = None
        self._tar: tarfile.TarFile | None = None
        self._count = 0

    def write(self, key: str, fields: Mapping[str, bytes]) -> None:
        if "." in key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid sample key {key!r}")
        if self._tar is None:
            self._buf = io.BytesIO()
            self._tar = tarfile.open(fileobj=self._buf, mode="w", format=tarfile.GNU_FORMAT)
        for ext in sorted(fields):
            data = fields[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        if self._count >= self.maxcount:
            self._flush()

    def _flush(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        data = self._buf.getvalue()
        path = self.dir / f"{self.prefix}-{len(self.files):06d}.tar"
        atomic_write_bytes(path, data)
        self.files.append(ShardFile(path, self._count, hashlib.sha256(data).hexdigest(), len(data)))
        self._tar, self._buf, self._count = None, None, 0

    def close(self) -> list[ShardFile]:
        self._flush()
        return self.files

    def __enter__(self) -> "TarShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()


def _check_member(m: tarfile.TarInfo, where: str) -> None:
    p = PurePosixPath(m.name)
    if p.is_absolute() or ".." in p.parts:
        raise UnsafeTarError(f"{where}: unsafe member path {m.name!r}")
    if not m.isfile():
        raise UnsafeTarError(f"{where}: member {m.name!r} is not a regular file (link/device/dir)")


def iter_tar_samples(source: str | Path | BinaryIO, where: str = "") -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {ext: bytes}) for each sample of a tar, in file order, safely."""
    where = where or str(source)
    with (tarfile.open(source, mode="r|*") if isinstance(source, (str, os.PathLike))
          else tarfile.open(fileobj=source, mode="r|*")) as tar:
        key, fields = None, {}
        for m in tar:
            _check_member(m, where)
            k, ext = split_member(m.name)
            if k != key:
                if key is not None:
                    yield key, fields
                key, fields = k, {}
            if ext in fields:
                raise UnsafeTarError(f"{where}: duplicate member {m.name!r}")
            fields[ext] = tar.extractfile(m).read()
        if key is not None:
            yield key, fields


def iter_dir_samples(directory: str | Path, prefix: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """All samples of ``<dir>/<prefix>-*.tar`` in shard order."""
    for path in sorted(Path(directory).glob(f"{prefix}-*.tar")):
        yield from iter_tar_samples(path)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
