"""Deterministic tar shards (WebDataset layout) and a reader that refuses unsafe members.

Writer: members sorted per sample, fixed mtime/uid/gid/mode/owner names, GNU format,
each shard built in memory, written to a temp file and renamed, so identical inputs
give byte-identical shards and a killed run never leaves a partial shard behind.
Headers are filled into a fixed 512-byte template (name, size, checksum) instead of going
through ``tarfile``'s general writer, which cost more than the JPEG encode of a 112 px face;
the bytes are the same as ``tarfile``'s GNU output (tested), long names go through ``tarfile``.
Reader (for shards from anywhere): rejects absolute paths, ``..``, links, devices,
anything but regular files, pickle-bearing members and oversized members; ``.npy``
payloads load with ``allow_pickle=False`` only.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator, Mapping

import numpy as np

from ferdata.io import atomic_write_bytes

PICKLE_EXTS = frozenset({"pyd", "pickle", "pkl", "pth", "pt", "ckpt", "joblib"})
MAX_MEMBER_BYTES = 64 << 20     # far above any face sample; stops a crafted member exhausting memory
WHOLE_FILE_BYTES = 256 << 20   # shards up to this size are read in one go and scanned in memory
BLOCK = tarfile.BLOCKSIZE
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
    head, slash, base = name.rpartition("/")
    base, _, ext = base.partition(".")
    return head + slash + base, ext.lower()


def shard_name_pattern(prefix: str) -> re.Pattern[str]:
    """Names :class:`TarShardWriter` gives its files: ``<prefix>-NNNNNN.tar``."""
    return re.compile(rf"{re.escape(prefix)}-\d{{6}}\.tar")


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
        if not key or "." in key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid sample key {key!r}")
        if self._buf is None:
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
        path = self.dir / f"{self.prefix}-{len(self.files):06d}.tar"
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


def check_member(m: tarfile.TarInfo, where: str) -> None:
    """Raise :class:`UnsafeTarError` unless ``m`` is a plain, relative, pickle-free regular file."""
    if not m.name or m.name.startswith("/") or ".." in m.name.split("/") or "\\" in m.name or "\0" in m.name:
        raise UnsafeTarError(f"{where}: unsafe member path {m.name!r}")
    if not m.isreg() or m.issparse():
        raise UnsafeTarError(f"{where}: member {m.name!r} is not a regular file (link/device/dir/fifo)")
    if split_member(m.name)[1].rsplit(".", 1)[-1] in PICKLE_EXTS:
        raise UnsafeTarError(f"{where}: member {m.name!r} is a pickle; shards must not carry pickles")
    if m.size > MAX_MEMBER_BYTES:
        raise UnsafeTarError(f"{where}: member {m.name!r} is {m.size} bytes (limit {MAX_MEMBER_BYTES})")


def load_npy(data: bytes, where: str = "") -> np.ndarray:
    """Load ``.npy`` bytes without ever unpickling; a pickled payload is refused."""
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise UnsafeTarError(f"{where}: .npy holds pickled objects; refused") from None
        raise UnsafeTarError(f"{where}: unreadable .npy ({e})") from None


class _Unusual(Exception):
    """A header the fast scanner leaves to ``tarfile`` (pax, links, sparse, base-256, bad checksum ...)."""


_MAGICS = (b"ustar  \0", b"ustar\x0000")
_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")


def _nts(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _number(field: bytes) -> int:
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _check_sum(head: bytes, pos: int, unsigned: int, signed: int | None = None) -> None:
    """A ustar/GNU header whose stored checksum matches neither the unsigned nor the (old) signed
    byte sum is corrupt: an error, where ``tarfile`` would silently end the archive there and
    drop every member after it."""
    try:
        stored = _number(head[148:156])
    except ValueError:
        stored = -1
    if stored == unsigned:
        return
    if signed is None:
        signed = unsigned - 256 * sum(b >= 128 for b in head[:148] + head[156:])
    if stored != signed:
        raise tarfile.ReadError(f"corrupt tar header at byte {pos}: checksum {stored} != {unsigned}")


def _member(head: bytes, pos: int, size: int, longname: str | None) -> tarfile.TarInfo:
    """The member of a plain regular-file header at byte ``pos`` (a preceding GNU long name
    applied), with tarfile's name, size and ``offset_data``; anything else is :class:`_Unusual`."""
    name = longname if longname is not None else _nts(head[:100])
    prefix = _nts(head[345:500])
    if prefix:
        name = f"{prefix}/{name}"
    if head[156:157] not in (b"0", b"\0") or name.endswith("/"):
        raise _Unusual
    info = tarfile.TarInfo(name)
    info.size, info.offset_data = size, pos + BLOCK
    return info


def _scan(f: BinaryIO, read_data: bool) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
    """Plain GNU/ustar regular files (and GNU long names) of an uncompressed tar, read directly:
    ``tarfile`` spends ~60 us per member on general header handling. Members get the same
    name, size and ``offset_data`` tarfile would give; any other header raises :class:`_Unusual`."""
    pos, longname = f.tell(), None
    while True:
        buf = f.read(BLOCK)
        if len(buf) < BLOCK or buf == bytes(BLOCK):
            if buf and buf != bytes(BLOCK):
                raise tarfile.ReadError("unexpected end of data")
            return
        if buf[257:265] not in _MAGICS or buf[124] & 0x80:
            raise _Unusual
        _check_sum(buf, pos, 256 + sum(buf[:148]) + sum(buf[156:]))
        size, kind = _number(buf[124:136]), buf[156:157]
        pad = -size % BLOCK
        if kind == b"L":                                  # GNU long name: the next header's real name
            longname = _nts(f.read(size + pad)[:size])
            pos += BLOCK + size + pad
            continue
        info, longname = _member(buf, pos, size, longname), None
        if read_data:
            data = f.read(size)
            if len(data) < size:
                raise tarfile.ReadError("unexpected end of data")
            f.seek(pad, os.SEEK_CUR)
        else:
            data = None
            f.seek(info.offset_data + size + pad)
        pos = info.offset_data + size + pad
        yield info, data


def _scan_buffer(buf: bytes) -> list[tarfile.TarInfo]:
    """:func:`_scan` for a whole archive in memory: every header is located and checked first
    (magic, sizes, types, names, all checksums in one numpy pass), so an unusual header raises
    :class:`_Unusual` before any member is handed out."""
    heads, pos, end = [], 0, len(buf)
    while pos + BLOCK <= end:
        head = buf[pos:pos + BLOCK]
        if head == bytes(BLOCK):
            break
        if head[257:265] not in _MAGICS or head[124] & 0x80:
            raise _Unusual
        size = _number(head[124:136])
        if pos + BLOCK + size > end:
            raise tarfile.ReadError("unexpected end of data")
        heads.append((pos, size, head))
        pos += BLOCK + size + (-size % BLOCK)
    else:
        if any(buf[pos:]):
            raise tarfile.ReadError("unexpected end of data")
    if heads:
        blocks = np.frombuffer(buf, np.uint8)[np.array([h[0] for h in heads])[:, None] + np.arange(BLOCK)]
        blocks[:, 148:156] = 32                                         # the checksum field counts as spaces
        unsigned = blocks.sum(1, dtype=np.int64)
        signed = unsigned - 256 * (blocks >= 128).sum(1)
        for (pos, _, head), u, sg in zip(heads, unsigned.tolist(), signed.tolist()):
            _check_sum(head, pos, u, sg)
    members, longname = [], None
    for pos, size, head in heads:
        kind = head[156:157]
        if kind == b"L":
            longname = _nts(buf[pos + BLOCK:pos + BLOCK + size])
            continue
        members.append(_member(head, pos, size, longname))
        longname = None
    return members


def iter_members(source: str | Path | BinaryIO, read_data: bool = True) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
    """Every member of a tar (path or seekable file object, optionally compressed) with its data
    (``read_data``) or with ``offset_data`` set, in file order. Plain archives (what the writer
    makes) take the fast scanner; anything else, from the first unusual header on, ``tarfile``."""
    own = isinstance(source, (str, os.PathLike))
    f = open(source, "rb") if own else source
    try:
        start = f.tell()
        done = 0
        if own and read_data and os.fstat(f.fileno()).st_size <= WHOLE_FILE_BYTES:
            buf = f.read()
            if not buf.startswith(_COMPRESSED):
                try:
                    members = _scan_buffer(buf)
                except _Unusual:
                    members = None
                if members is not None:
                    yield from ((m, buf[m.offset_data:m.offset_data + m.size]) for m in members)
                    return
            f.seek(start)
        if not f.read(6).startswith(_COMPRESSED):
            f.seek(start)
            try:
                for member in _scan(f, read_data):
                    yield member
                    done += 1
                return
            except _Unusual:
                pass
        f.seek(start)
        with tarfile.open(fileobj=f, mode="r|*" if read_data else "r:*") as tar:
            for i, m in enumerate(tar):
                if i >= done:
                    yield m, tar.extractfile(m).read() if read_data and m.isreg() else None
    finally:
        if own:
            f.close()


def iter_tar_samples(source: str | Path | BinaryIO, where: str = "") -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {ext: bytes}) for each sample of a tar, in file order, safely."""
    where = where or str(source)
    key, fields = None, {}
    for m, data in iter_members(source):
        check_member(m, where)
        k, ext = split_member(m.name)
        if k != key:
            if key is not None:
                yield key, fields
            key, fields = k, {}
        if ext in fields:
            raise UnsafeTarError(f"{where}: duplicate member {m.name!r}")
        fields[ext] = data
    if key is not None:
        yield key, fields


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
