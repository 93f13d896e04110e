"""What a video file's container says of its own length (:func:`missing_bytes`), to find a file cut short.

OpenCV decodes a cut file's frames up to the cut and stops as at its end. Its frame count shows the loss only
where the header lists the frames (AVI, MP4): for Matroska/WebM it is the duration x fps, and the duration is
written at the start, so a cut file gives the whole file's count. Each of these containers records its parts'
sizes, which a cut file cannot hold: AVI its RIFF chunks, MP4/MOV/3GP its top-level boxes, Matroska/WebM its
Segment (unless written live, with its size unknown). MPEG-TS and MPEG-PS record none.
"""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

EBML, SEGMENT = b"\x1a\x45\xdf\xa3", 0x18538067
MP4_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"}     # what an MP4/MOV starts with


def missing_bytes(path: Path) -> int:
    """Bytes the container's sizes say lie past the end of ``path``: 0 for a whole file, one whose
    container records no sizes (MPEG-TS/PS, a live WebM), or one no longer there to read."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            return max(0, _declared_end(f) - size)
    except OSError:
        return 0


def _declared_end(f: BinaryIO) -> int:
    """Where the file's container says it ends (0: it does not say)."""
    f.seek(0)
    head = f.read(8)
    size = f.seek(0, 2)
    if head[:4] == b"RIFF":
        return _chunks_end(f, size, little=True)
    if head[4:8] in MP4_BOXES:
        return _chunks_end(f, size, little=False)
    return _segment_end(f) if head[:4] == EBML else 0


def unindexed_mp4(path: Path) -> bool:
    """Whether ``path`` is an MP4/MOV whose top-level boxes hold its media (``mdat``) and no index (``moov``): a
    recording stopped before writing the index it writes last, its ``mdat`` size still the placeholder 0 ("to the
    end of the file", as ffmpeg and OpenCV write it), so :func:`missing_bytes` finds nothing missing."""
    kinds: set[bytes] = set()
    try:
        with open(path, "rb") as f:
            if f.read(8)[4:8] not in MP4_BOXES:
                return False
            _chunks_end(f, f.seek(0, 2), little=False, kinds=kinds)
    except OSError:
        return False
    return b"mdat" in kinds and b"moov" not in kinds


def _chunks_end(f: BinaryIO, size: int, little: bool, kinds: set[bytes] | None = None) -> int:
    """Where the last of the file's top-level RIFF chunks (little-endian sizes, padded to even) or MP4 boxes
    (big-endian; 1: a 64-bit size follows, 0: to the end of the file) ends; the walk stops at bytes that are
    no chunk (an ID other than RIFF, a box type that is not four letters: data appended, not a part cut).
    ``kinds``: filled with the types of the chunks or boxes walked."""
    at = 0
    while at + 8 <= size:
        f.seek(at)
        head = f.read(16)
        kind = head[:4] if little else head[4:8]
        if (kind != b"RIFF") if little else not all(32 < c < 127 for c in kind):
            return at
        if kinds is not None:
            kinds.add(kind)
        n = int.from_bytes(head[4:8] if little else head[:4], "little" if little else "big")
        if little:
            at += 8 + n + (n & 1)
        elif n == 0:
            return size
        elif n == 1 and len(head) < 16:     # the 64-bit size cut off: the box's header alone runs past the end
            return at + 16
        elif n == 1 and int.from_bytes(head[8:16], "big") < 16:     # 0 (a placeholder) or less than a header
            return 0
        elif n == 1:
            at += int.from_bytes(head[8:16], "big")
        elif n < 8:                     # no box is shorter than its header: not an MP4 after all
            return 0
        else:
            at += n
    return at


def _segment_end(f: BinaryIO) -> int:
    """Where a Matroska/WebM file's Segment ends by its size (0: a size written as unknown, or no Segment)."""
    f.seek(len(EBML))
    header, _ = _vint(f)                # the EBML header's size: its content is skipped
    f.seek(f.tell() + header)
    element, _ = _vint(f, raw=True)
    size, width = _vint(f)
    return 0 if element != SEGMENT or size == (1 << 7 * width) - 1 else f.tell() + size


def _vint(f: BinaryIO, raw: bool = False) -> tuple[int, int]:
    """(value, byte count) of the EBML variable-size integer at the file's position: an element's size, or with
    ``raw`` its ID (the length marker kept)."""
    first = f.read(1)
    if not first:
        return 0, 1
    n = next((k for k in range(1, 9) if first[0] & (0x80 >> (k - 1))), 8)
    value = int.from_bytes(first + f.read(n - 1), "big")
    return (value if raw else value & ((1 << 7 * n) - 1)), n
