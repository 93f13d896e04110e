"""Reading tar archives fast: plain GNU/ustar members are scanned directly, anything else by
``tarfile``.

``tarfile`` spends ~60 us per member on general header handling, which dominated the
training loader and the derive/shard stages (shards hold 4-8 members per sample). Here,
shards up to :data:`WHOLE_FILE_BYTES` are read whole and every header is checked (magic,
sizes, types, names, checksums in one numpy pass) before a member is handed out; other
sources are scanned block by block. From the first header the scanner does not handle (pax,
links, sparse files, base-256 sizes, compressed archives) ``tarfile`` takes over, so the
members are always the ones ``tarfile`` would give. A header with a valid magic and a wrong
checksum is an error, where ``tarfile`` would silently end the archive there. Safety checks
on the members themselves are the caller's (:func:`ferdata.tario.check_member`).
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

WHOLE_FILE_BYTES = 256 << 20   # shards up to this size are read in one go and scanned in memory
BLOCK = tarfile.BLOCKSIZE


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
                    pass                 # nothing handed out yet: tarfile reads it all, below
                else:
                    yield from ((m, buf[m.offset_data:m.offset_data + m.size]) for m in members)
                    return
        elif not f.read(6).startswith(_COMPRESSED):
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
