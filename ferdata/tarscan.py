"""Reading tar archives fast: plain GNU/ustar members are scanned directly, anything else by
``tarfile``.

``tarfile`` spends ~60 us per member on general header handling, which dominated the
training loader and the derive/shard stages (shards hold 4-8 members per sample). Here,
shards up to :data:`WHOLE_FILE_BYTES` are read whole and every header is checked (magic,
sizes, types, names, checksums in one numpy pass) before a member is handed out; other
sources are scanned block by block. From the first header the scanner does not handle (pax,
links, sparse files, base-256 sizes, compressed archives) ``tarfile`` takes over, so the
members are always the ones ``tarfile`` would give. Where ``tarfile`` would silently end the
archive early, the readers raise: a header with a valid magic and a wrong checksum, an archive
without its end-of-archive marker (cut short, perhaps between two samples), data after that
marker (a header zeroed) and, in an uncompressed archive, a header ``tarfile`` cannot read (one
overwritten). Safety checks
on the members themselves are the caller's (:func:`ferdata.tario.check_member`).
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import BinaryIO, Iterator, NamedTuple

import numpy as np

WHOLE_FILE_BYTES = 256 << 20   # shards up to this size are read in one go and scanned in memory
BLOCK = tarfile.BLOCKSIZE


class _Unusual(Exception):
    """A header the fast scanner leaves to ``tarfile`` (pax, links, sparse, base-256, bad checksum ...)."""


_MAGICS = (b"ustar  \0", b"ustar\x0000")
_REGULAR = (ord("0"), 0)
_MAGIC_WORDS = np.frombuffer(b"".join(_MAGICS), np.uint64)
_ZERO = bytes(BLOCK)
_LONGNAME = ord("L")
_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")
NOT_BY_OFFSET = ("a compressed archive (gzip, bzip2, xz or zstd): its members cannot be read by offset, as "
                 "evaluation reads shards; decompress it to a plain .tar")
_META_TYPES = {ord("L"): "GNU long name", ord("K"): "GNU long link name", ord("x"): "pax header",
               ord("g"): "pax global header"}
MAX_META_BYTES = 1 << 20       # a name or pax header is read whole: a crafted size must not exhaust memory


def _check_meta_size(kind: int, size: int, pos: int) -> None:
    """A long name or pax header (read whole, by this scanner or ``tarfile``) over :data:`MAX_META_BYTES`
    is damage or a crafted archive: refused before it is read."""
    if kind in _META_TYPES and size > MAX_META_BYTES:
        raise tarfile.ReadError(f"corrupt tar header at byte {pos}: a {_META_TYPES[kind]} of {size} bytes "
                                f"(limit {MAX_META_BYTES})")


class _CheckedInfo(tarfile.TarInfo):
    """``tarfile``'s header reading with :func:`_check_meta_size` first: the headers the fast scanners
    hand to ``tarfile`` (a base-256 size field, no ustar magic, a compressed archive) are held to the
    same limit before their long name or pax header is read (a 32 KB gzip made a 32 MiB name)."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        kind = self.type[0] if self.type else 0
        _check_meta_size(kind, self.size, self.offset)
        return super()._proc_member(tarfile_)


def is_compressed(head: bytes) -> bool:
    """Whether a file that starts with ``head`` (6 bytes or more) is gzip, bzip2, xz or zstd."""
    return head.startswith(_COMPRESSED)


def _nts(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _number(field: bytes) -> int:
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _size(buf: bytes, pos: int, where: int | None = None) -> int:
    """The size field of the header at ``buf[pos:]`` (file offset ``where``, default ``pos``):
    the writers' 11 octal digits and NUL directly, any other form through :func:`_number`."""
    size = -1
    if buf[pos + 135] == 0:
        try:
            size = int(buf[pos + 124:pos + 135], 8)
        except ValueError:
            pass
    if size < 0:
        try:
            size = _number(buf[pos + 124:pos + 136])
        except ValueError:              # a damaged digit (one bit flipped turns "0" into "8"): name the header
            raise tarfile.ReadError(f"corrupt tar header at byte {pos if where is None else where}: size field "
                                    f"{bytes(buf[pos + 124:pos + 136])!r} is not a number") from None
        if size < 0:
            raise tarfile.ReadError(f"corrupt tar header at byte {pos if where is None else where}: "
                                     f"negative size {size}")
    return size


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


class Member(NamedTuple):
    """A tar member as the readers need it: its name, size and where its data starts."""

    name: str
    size: int
    offset_data: int
    regular: bool = True         # a plain regular file: not a link, device, directory, fifo or sparse file


class Table(NamedTuple):
    """Every member of a whole archive in memory, as columns (what the fast scanners read)."""

    buf: bytes
    names: list[str]
    sizes: list[int]
    offsets: list[int]                  # where each member's data starts in ``buf``


def read_table(path: str | Path) -> Table | None:
    """The members of the tar file at ``path`` read whole and scanned in memory, or None when the
    file is too large for that, compressed, or has headers only ``tarfile`` reads (then use
    :func:`iter_members`)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size > WHOLE_FILE_BYTES:
            return None
        buf = f.read()
    if is_compressed(buf):
        return None
    try:
        return _scan_buffer(buf)
    except _Unusual:
        return None


def _member(buf: bytes, at: int, size: int, longname: str | None, offset_data: int) -> Member:
    """The member of the plain regular-file header at ``buf[at:]`` whose data starts at file
    offset ``offset_data`` (a preceding GNU long name applied); anything else is :class:`_Unusual`."""
    name = longname if longname is not None else _nts(buf[at:at + 100])
    if buf[at + 345] and longname is None:              # a GNU long name is the whole name (as tarfile has it)
        name = f"{_nts(buf[at + 345:at + 500])}/{name}"
    if buf[at + 156] not in _REGULAR or name.endswith("/"):
        raise _Unusual
    return Member(name, size, offset_data)


_NO_END = "cut short: it ends without the end-of-archive marker"


def _after_end(pos: int) -> str:
    return f"data after the end-of-archive marker at byte {pos} (a header zeroed, or bytes appended)"


def _only_zeros_after(f: BinaryIO, pos: int) -> None:
    """The rest of ``f`` after an end-of-archive block at ``pos``: anything but zeros is damage (a
    zeroed header would otherwise end the archive there, its later members silently gone)."""
    while chunk := f.read(1 << 20):
        if any(chunk):
            raise tarfile.ReadError(_after_end(pos))


def _check_end(f: BinaryIO, pos: int) -> None:
    """What follows the last member ``tarfile`` read (at ``pos``) must be the end-of-archive
    marker and zeros: ``tarfile`` ends silently at a header it cannot read (overwritten) and at the
    end of the file (cut short)."""
    head = f.read(BLOCK)
    if len(head) < BLOCK:
        raise tarfile.ReadError("unexpected end of data" if any(head) else _NO_END)
    if head != _ZERO:
        raise tarfile.ReadError(f"a damaged header at byte {pos}, where tarfile would end the archive")
    _only_zeros_after(f, pos)


def _from_tarfile(m: tarfile.TarInfo) -> Member:
    return Member(m.name, m.size, m.offset_data, m.isreg() and not m.issparse())


def _scan(f: BinaryIO, read_data: bool, max_size: int | None = None) -> Iterator[tuple[Member, bytes | None]]:
    """Plain GNU/ustar regular files (and GNU long names) of an uncompressed tar, read directly:
    ``tarfile`` spends ~60 us per member on general header handling. Members get the same
    name, size and ``offset_data`` tarfile would give; any other header raises :class:`_Unusual`.
    A member over ``max_size`` is not read (its data None)."""
    pos, longname = f.tell(), None
    end = f.seek(0, os.SEEK_END)                        # members skipped, not read: check they fit
    f.seek(pos)
    while True:
        buf = f.read(BLOCK)
        if buf == _ZERO:
            if longname is not None:
                raise tarfile.ReadError(_name_without_member(longname))
            _only_zeros_after(f, pos)
            return
        if len(buf) < BLOCK:
            raise tarfile.ReadError("unexpected end of data" if buf else _NO_END)
        if buf[257:265] not in _MAGICS or buf[124] & 0x80:
            raise _Unusual
        _check_sum(buf, pos, 256 + sum(buf[:148]) + sum(buf[156:]))
        size, kind = _size(buf, 0, pos), buf[156:157]
        _check_meta_size(buf[156], size, pos)
        pad = -size % BLOCK
        if kind == b"L":                                  # GNU long name: the next header's real name
            longname = _nts(f.read(size + pad)[:size])
            pos += BLOCK + size + pad
            continue
        info, longname = _member(buf, 0, size, longname, pos + BLOCK), None
        if read_data and (max_size is None or size <= max_size):
            data = f.read(size)
            if len(data) < size:
                raise tarfile.ReadError("unexpected end of data")
            f.seek(pad, os.SEEK_CUR)
        else:
            data = None
            if info.offset_data + size > end:
                raise tarfile.ReadError("unexpected end of data")
            f.seek(info.offset_data + size + pad)
        pos = info.offset_data + size + pad
        yield info, data


def _scan_buffer(buf: bytes) -> Table:
    """:func:`_scan` for a whole archive in memory: every header is located and checked first
    (magic, sizes, types, names, all checksums in one numpy pass), so an unusual header raises
    :class:`_Unusual` before any member is handed out. Archives as the writers make them are
    scanned without a Python step per header (:func:`_scan_blocks`)."""
    table = _scan_blocks(buf)
    if table is not None:
        return table
    starts, sizes, pos, end = [], [], 0, len(buf)
    while pos + BLOCK <= end:
        if buf[pos + 257:pos + 265] not in _MAGICS or buf[pos + 124] & 0x80:
            if buf[pos:pos + BLOCK] == _ZERO:
                if any(buf[pos:]):
                    raise tarfile.ReadError(_after_end(pos))
                break
            raise _Unusual
        size = _size(buf, pos)
        _check_meta_size(buf[pos + 156], size, pos)
        if pos + BLOCK + size > end:
            raise tarfile.ReadError("unexpected end of data")
        starts.append(pos)
        sizes.append(size)
        pos += BLOCK + size + (-size % BLOCK)
    else:
        raise tarfile.ReadError("unexpected end of data" if any(buf[pos:]) else _NO_END)
    if not starts:
        return Table(buf, [], [], [])
    _check_sums(buf, _blocks(buf)[np.array(starts) // BLOCK], starts)
    members, longname = [], None
    for pos, size in zip(starts, sizes):
        if buf[pos + 156] == _LONGNAME:
            longname = _nts(buf[pos + BLOCK:pos + BLOCK + size])
            continue
        members.append(_member(buf, pos, size, longname, pos + BLOCK))
        longname = None
    if longname is not None:
        raise tarfile.ReadError(_name_without_member(longname))
    return Table(buf, [m.name for m in members], [m.size for m in members], [m.offset_data for m in members])


def _name_without_member(longname: str) -> str:
    """A GNU long name is the next member's: one before the archive's end names nothing (a cut tar)."""
    return f"a GNU long name ({longname[:60]!r}) with no member after it: the archive was cut short"


def _blocks(buf: bytes) -> np.ndarray:
    return np.frombuffer(buf, np.uint8, len(buf) // BLOCK * BLOCK).reshape(-1, BLOCK)


def _octal(digits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row of ASCII octal digits as a number, and whether the row was all octal digits."""
    d = digits.astype(np.int64) - ord("0")
    return d @ (8 ** np.arange(d.shape[1] - 1, -1, -1)), ((d >= 0) & (d <= 7)).all(1)


def _scan_blocks(buf: bytes) -> Table | None:
    """The members of an archive as the writers make it, found with numpy alone: every block
    with a ustar/GNU magic is taken for a header, and the archive qualifies when those headers
    chain exactly (each one's data ends where the next header starts), all are plain regular
    files with the writers' size field (11 octal digits, NUL), no prefix or NUL in their names,
    and only zeros, at least one block of them, follow the last member. Anything else (None) takes
    the sequential scan."""
    rows = _blocks(buf)
    if len(buf) % BLOCK or not len(rows):
        return None
    magic = np.ascontiguousarray(rows[:, 257:265]).view(np.uint64).ravel()
    heads = np.flatnonzero(np.isin(magic, _MAGIC_WORDS))
    if not len(heads) or heads[0] != 0:
        return None
    blocks = rows[heads]
    sizes, octal = _octal(blocks[:, 124:135])
    after = heads + 1 + (sizes + BLOCK - 1) // BLOCK
    if (not octal.all() or blocks[:, 135].any() or (after[:-1] != heads[1:]).any() or after[-1] >= len(rows)
            or rows[after[-1]:].any() or blocks[:, 345].any() or not np.isin(blocks[:, 156], _REGULAR).all()):
        return None
    starts = (heads * BLOCK).tolist()
    _check_sums(buf, blocks, starts)
    field = blocks[:, :100]
    if ((field[:, :-1] == 0) & (field[:, 1:] != 0)).any():          # a NUL inside a name
        return None
    length = np.count_nonzero(field, axis=1)
    if not length.all() or (field[np.arange(len(field)), length - 1] == ord("/")).any():  # empty, directories
        return None
    raw = np.ascontiguousarray(field).view("S100").ravel().tolist()                       # trailing NULs dropped
    return Table(buf, [r.decode("utf-8", "surrogateescape") for r in raw], sizes.tolist(),
                 [s + BLOCK for s in starts])


def _check_sums(buf: bytes, blocks: np.ndarray, starts: list[int]) -> None:
    """Check the checksums of the header ``blocks`` (at byte ``starts``) in one numpy pass. The
    writers' form of the stored field (six octal digits, NUL, space) is read in numpy too; any
    other form, and any mismatch, goes through :func:`_check_sum` (which also accepts the old
    signed sums, or raises)."""
    field = blocks[:, 148:156].astype(np.int64)
    stored, octal = _octal(blocks[:, 148:154])
    standard = octal & (field[:, 6] == 0) & (field[:, 7] == ord(" "))
    unsigned = blocks.sum(1, dtype=np.uint32).astype(np.int64) - field.sum(1) + 8 * ord(" ")   # field as spaces
    for i in np.flatnonzero(~standard | (stored != unsigned)).tolist():
        head = buf[starts[i]:starts[i] + BLOCK]
        _check_sum(head, starts[i], int(unsigned[i]))


def iter_members(source: str | Path | BinaryIO, read_data: bool = True,
                 max_size: int | None = None) -> Iterator[tuple[Member, bytes | None]]:
    """Every member of a tar (path or seekable file object, optionally compressed) with its data
    (``read_data``; None for a member over ``max_size``, which is not read: a crafted member cannot
    exhaust memory before its size is checked) or with ``offset_data`` set (a plain tar only: a
    compressed one is a ``ReadError``), in file order. Plain
    archives (what the writer makes) take the fast scanner; anything else, from the first unusual
    header on, ``tarfile``."""
    fits = (lambda size: True) if max_size is None else (lambda size: size <= max_size)
    own = isinstance(source, (str, os.PathLike))
    f = open(source, "rb") if own else source
    try:
        start = f.tell()
        plain = not is_compressed(f.read(6))
        f.seek(start)
        done = 0
        if not (plain or read_data):            # offset_data would be offsets in the decompressed stream
            raise tarfile.ReadError(NOT_BY_OFFSET)
        if own and read_data and os.fstat(f.fileno()).st_size <= WHOLE_FILE_BYTES:
            table = read_table(source)
            if table is not None:
                buf = table.buf
                for name, size, offset in zip(table.names, table.sizes, table.offsets):
                    yield Member(name, size, offset), buf[offset:offset + size] if fits(size) else None
                return                   # else nothing was handed out yet: tarfile reads it all, below
        elif plain:
            try:
                for member in _scan(f, read_data, max_size):
                    yield member
                    done += 1
                return
            except _Unusual:
                pass
        f.seek(start)
        with tarfile.open(fileobj=f, mode="r|*" if read_data else "r:", tarinfo=_CheckedInfo) as tar:
            for i, m in enumerate(tar):
                if i >= done:
                    yield _from_tarfile(m), (tar.extractfile(m).read() if read_data and m.isreg() and fits(m.size)
                                             else None)
            end = start + tar.offset
        if plain:
            f.seek(end)
            _check_end(f, end)
    finally:
        if own:
            f.close()
