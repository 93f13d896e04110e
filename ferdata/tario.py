"""Deterministic tar shards (WebDataset layout) and a reader that refuses unsafe members.

Writer: members sorted per sample, fixed mtime/uid/gid/mode/owner names, GNU format,
each shard built in memory, written to a temp file and renamed, so identical inputs
give byte-identical shards and a killed run never leaves a partial shard behind.
Headers are filled into a fixed 512-byte template (name, size, checksum) instead of going
through ``tarfile``'s general writer, which cost more than the JPEG encode of a 112 px face;
the bytes are the same as ``tarfile``'s GNU output (tested), long names go through ``tarfile``.
Reader (for shards from anywhere; members come from :mod:`ferdata.tarscan`): rejects
absolute paths, ``..``, links, devices, anything but regular files, pickle-bearing members
and oversized members; ``.npy`` payloads load with ``allow_pickle=False`` only.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import re
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Collection, Iterable, Iterator, Mapping

import numpy as np

from ferdata.atomic import atomic_write_bytes
from ferdata.layout import INFO
from ferdata.tarscan import BLOCK, Member, Table, iter_members, read_table

PICKLE_EXTS = frozenset({"pyd", "pickle", "pkl", "pth", "pt", "ckpt", "joblib"})
MAX_MEMBER_BYTES = 64 << 20     # far above any face sample; stops a crafted member exhausting memory
RECORD = tarfile.RECORDSIZE


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


_TEMPLATE = _member_info("", 0).tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def member_header(name: str, size: int) -> bytes:
    """The GNU tar header of a read-only regular file ``name`` of ``size`` bytes, owned by
    uid/gid 0 with no owner names and mtime 0 (what :class:`TarShardWriter` writes)."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) >= 100 or size >= 8 ** 11:        # GNU long name / base-256 size: tarfile's general path
        return _member_info(name, size).tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    buf = bytearray(_TEMPLATE)
    buf[0:len(raw)] = raw
    buf[124:136] = b"%011o\0" % size
    buf[148:156] = b"        "
    buf[148:155] = b"%06o\0" % sum(buf)
    return bytes(buf)


class UnsafeTarError(ValueError):
    """A tar member (or payload) that a shard must never contain."""


class BadTarError(ValueError):
    """A shard or chunk that is not a readable tar (cut short, overwritten, not a tar at all)."""

    def __init__(self, where: str, err: Exception) -> None:
        super().__init__(f"{where}: not a readable tar ({err}); check it with `ferdata verify`, then re-run the "
                         "stage that wrote it (or `dvc pull` / `dvc checkout` it)")


@contextmanager
def readable_tar(where: str | Path | BinaryIO) -> Iterator[None]:
    """Turn ``tarfile``'s errors while reading ``where`` into :class:`BadTarError`, which names it."""
    try:
        yield
    except tarfile.TarError as e:
        raise BadTarError(str(where), e) from e


def listed_shard(split_dir: str | Path, name: str) -> Path:
    """The shard an ``_info.json`` in ``split_dir`` lists as ``name``; names are plain file names
    (an info file must not point a reader outside its folder)."""
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise UnsafeTarError(f"{Path(split_dir) / INFO}: shard name {name!r} is not a plain file name")
    return Path(split_dir) / name


@dataclass(frozen=True)
class ShardFile:
    path: Path
    count: int
    sha256: str
    size: int


def split_member(name: str) -> tuple[str, str]:
    """WebDataset rule: key = path up to the first dot of the basename, ext = the rest."""
    if "//" in name or "./" in name or "/." in name or name.endswith("/"):   # unusual: normalise like pathlib
        p = PurePosixPath(name)
        base, _, ext = p.name.partition(".")
        return (str(p.parent / base) if str(p.parent) != "." else base), ext.lower()
    return _split_plain(name)


NAME_DIGITS = 6                # the file number in the names :class:`TarShardWriter` gives
MAX_FILES = 10 ** NAME_DIGITS   # files per folder and prefix: the next number has a digit more


def shard_name_pattern(prefix: str) -> re.Pattern[str]:
    """Names :class:`TarShardWriter` gives its files: ``<prefix>-NNNNNN.tar``."""
    return re.compile(rf"{re.escape(prefix)}-\d{{{NAME_DIGITS}}}\.tar")


class TarShardWriter:
    """Writes samples into ``<dir>/<prefix>-%06d.tar``, rolling at ``maxcount`` samples.

    The writer owns ``<prefix>-NNNNNN.tar`` in its folder: files of that pattern left by
    an earlier (larger or interrupted) run are deleted when it starts, so a folder never
    mixes two runs' shards.
    """

    def __init__(self, directory: str | Path, prefix: str, maxcount: int) -> None:
        if maxcount < 1:
            raise ValueError("maxcount must be >= 1")
        self.dir = Path(directory)
        self.prefix = prefix
        self.maxcount = maxcount
        self.files: list[ShardFile] = []
        self._buf: io.BytesIO | None = None
        self._count = 0
        self._remove_stale()

    def _remove_stale(self) -> None:
        if not self.dir.is_dir():
            return
        pattern = shard_name_pattern(self.prefix)
        for p in self.dir.iterdir():
            if pattern.fullmatch(p.name):
                p.unlink()

    def write(self, key: str, fields: Mapping[str, bytes]) -> None:
        if not key or "." in key or "" in key.split("/") or any(c in key for c in "\\\0\n"):
            raise ValueError(f"invalid sample key {key!r}: no dots, empty path parts, backslashes, NUL or line "
                             "breaks (readers would rename or refuse it)")
        if self._buf is None:
            if len(self.files) >= MAX_FILES:      # a 7-digit name no reader lists: its samples were lost
                raise ValueError(f"{self.dir}: more than {MAX_FILES:,} {self.prefix} files of {self.maxcount} "
                                 "sample(s) each; put more samples in each (align/derive chunk_size, "
                                 "shard.maxcount)")
            self._buf = io.BytesIO()
        for ext in sorted(fields):
            data = fields[ext]
            self._buf.write(member_header(f"{key}.{ext}", len(data)))
            self._buf.write(data)
            self._buf.write(bytes(-len(data) % BLOCK))
        self._count += 1
        if self._count >= self.maxcount:
            self._flush()

    def _flush(self) -> None:
        if self._buf is None:
            return
        self._buf.write(bytes(2 * BLOCK))                  # end-of-archive, then pad to a full record
        self._buf.write(bytes(-self._buf.tell() % RECORD))
        data = self._buf.getvalue()
        path = self.dir / f"{self.prefix}-{len(self.files):0{NAME_DIGITS}d}.tar"
        atomic_write_bytes(path, data)
        self.files.append(ShardFile(path, self._count, hashlib.sha256(data).hexdigest(), len(data)))
        self._buf, self._count = None, 0

    def close(self) -> list[ShardFile]:
        self._flush()
        return self.files

    def __enter__(self) -> "TarShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()


def content_digest(files: Iterable[ShardFile]) -> str:
    """One digest of the chunks a stage wrote (their names and SHA-256s, which :class:`TarShardWriter`
    computes as it writes): in the stage's report (:data:`ferdata.layout.CONTENT`), it makes
    :func:`ferdata.layout.output_digest` see a change of content that keeps every size (landmarks
    moved a fraction of a pixel, a re-encoded crop)."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path.name):
        h.update(f"{f.path.name}\0{f.sha256}\0".encode())
    return h.hexdigest()


def check_member(m: Member, where: str, ext: str | None = None) -> None:
    """Raise :class:`UnsafeTarError` unless ``m`` is a plain, relative, pickle-free regular file
    (``ext``: its :func:`split_member` extension, when the caller has it already)."""
    name = m.name
    if not name or name[0] == "/" or "\\" in name or "\0" in name or (".." in name and ".." in name.split("/")):
        raise UnsafeTarError(f"{where}: unsafe member path {name!r}")
    if not m.regular:
        raise UnsafeTarError(f"{where}: member {name!r} is not a regular file (link/device/dir/fifo)")
    if (split_member(name)[1] if ext is None else ext).rpartition(".")[2] in PICKLE_EXTS:
        raise UnsafeTarError(f"{where}: member {name!r} is a pickle; shards must not carry pickles")
    if m.size > MAX_MEMBER_BYTES:
        raise UnsafeTarError(f"{where}: member {name!r} is {m.size} bytes (limit {MAX_MEMBER_BYTES})")


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes, where: str = "") -> np.ndarray:
    """Load ``.npy`` bytes without ever unpickling: its header read once, the array its bytes (a copy, as
    ``np.load`` gives); a pickled payload is refused, and so is a header numpy cannot parse or one declaring more
    bytes than the member holds (``np.load`` let its header parser's ``TokenError`` through, and made room for a
    declared 7 TiB array before reading: a ``MemoryError``)."""
    if not data.startswith(b"\x93NUMPY"):            # np.load would take it for a pickle ("holds pickled objects")
        raise UnsafeTarError(f"{where}: not a .npy array (no NUMPY header: damaged?); refused")
    head = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(head)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(head)
    except ValueError as e:
        raise UnsafeTarError(f"{where}: unreadable .npy ({e})") from None
    except Exception as e:                          # numpy's parser lets tokenize's errors through
        raise UnsafeTarError(f"{where}: unreadable .npy header ({type(e).__name__}: {e})") from None
    if dtype.hasobject:
        raise UnsafeTarError(f"{where}: .npy holds pickled objects; refused")
    if any(n < 0 for n in shape):                   # np.load: "negative dimensions are not allowed"
        raise UnsafeTarError(f"{where}: unreadable .npy (declares a negative dimension, shape {shape})")
    count = math.prod(shape)
    declared, held = count * dtype.itemsize, len(data) - head.tell()
    if declared > held:
        raise UnsafeTarError(f"{where}: declares a {dtype} array of shape {shape} ({declared} bytes), holds {held}; "
                             "refused")
    try:
        flat = np.frombuffer(data, dtype, count, head.tell())
    except ValueError as e:                         # a dtype of no bytes ("itemsize cannot be zero")
        raise UnsafeTarError(f"{where}: unreadable .npy ({e})") from None
    return (flat.reshape(shape[::-1]).transpose() if fortran else flat.reshape(shape)).copy(order="K")


def iter_tar_samples(source: str | Path | BinaryIO, where: str = "",
                     only: Collection[str] | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {ext: bytes}) for each sample of a tar, in file order, safely. With ``only``,
    a sample's dict holds just those extensions (a loader that needs two of six members skips
    copying the rest); every member is still checked and every sample still yielded."""
    where = where or str(source)
    key, fields = None, {}
    with readable_tar(where):
        table = read_table(source) if isinstance(source, (str, os.PathLike)) else None
        members = _table_members(table, where, only) if table is not None else _checked_members(source, where)
        for k, ext, data, name in members:
            if k != key:
                if key is not None:
                    yield key, fields
                key, fields = k, {}
            if data is None or (only is not None and ext not in only):
                continue
            if ext in fields:
                raise UnsafeTarError(f"{where}: duplicate member {name!r}")
            fields[ext] = data
    if key is not None:
        yield key, fields


def _checked_members(source: str | Path | BinaryIO, where: str) -> Iterator[tuple[str, str, bytes, str]]:
    """(key, ext, data, name) of each member, checked one by one."""
    for m, data in iter_members(source, max_size=MAX_MEMBER_BYTES):      # a larger one is not read ...
        k, ext = split_member(m.name)
        check_member(m, where, ext)                                         # ... but refused here
        yield k, ext, data, m.name


def _table_members(table: Table, where: str, only: Collection[str] | None = None
                   ) -> Iterator[tuple[str, str, bytes | None, str]]:
    """(key, ext, data, name) of each member of a whole archive (data None for an extension not
    in ``only``). The names are screened together (one pass over all of them for anything
    :func:`check_member` could refuse, every distinct extension once); only a flagged archive is
    checked member by member, for the exact error."""
    names, sizes, offsets, buf = table.names, table.sizes, table.offsets, table.buf
    joined = "\n" + "\n".join(names) + "\n"
    split = list(map(_split_plain, names)) if not _UNUSUAL_NAME.search(joined) else list(map(split_member, names))
    exts = {ext.rpartition(".")[2] for _, ext in split}
    if _SUSPECT_NAME.search(joined) or exts & PICKLE_EXTS or (sizes and max(sizes) > MAX_MEMBER_BYTES):
        for name, size, (_, ext) in zip(names, sizes, split):
            check_member(Member(name, size, 0), where, ext)
    for (k, ext), name, size, offset in zip(split, names, sizes, offsets):
        yield k, ext, buf[offset:offset + size] if only is None or ext in only else None, name


def _split_plain(name: str) -> tuple[str, str]:
    """:func:`split_member` of a name without ``//``, ``./``, ``/.`` or a trailing ``/``."""
    head, slash, base = name.rpartition("/")
    base, _, ext = base.partition(".")
    return head + slash + base, ext.lower()


_UNUSUAL_NAME = re.compile(r"//|\./|/\.|/\n")                # names split_member normalises like pathlib
_SUSPECT_NAME = re.compile(r"\n/|\\|\0|\.\.|\n\n")        # absolute, backslash, NUL, "..", empty


def iter_dir_samples(directory: str | Path, prefix: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """All samples of ``<dir>/<prefix>-NNNNNN.tar`` in shard order."""
    yield from (s for path in list_shards(directory, prefix) for s in iter_tar_samples(path))


def list_shards(directory: str | Path, prefix: str) -> list[Path]:
    """``<dir>/<prefix>-NNNNNN.tar`` files in order (temp files and strays ignored)."""
    pattern = shard_name_pattern(prefix)
    return sorted(p for p in Path(directory).glob(f"{prefix}-*.tar") if pattern.fullmatch(p.name))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
