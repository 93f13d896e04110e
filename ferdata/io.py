"""Robust image decoding and crash-safe file writes.

Decoding turns any bytes into RGB uint8 or raises :class:`BadImage` with a short
reason the stages record (never a silent skip). One policy for every stage, so the
detector and the aligner always see the same pixels in the same frame:

* EXIF orientation is read with PIL and applied here (OpenCV's own is switched off),
  so the pixel frame is the one a photo viewer shows;
* alpha is flattened onto black (the alignment border colour), so pixels hidden
  under full transparency never reach a model;
* 16-bit, grayscale, palette and CMYK images become 8-bit RGB;
* memory stays bounded: a JPEG above :data:`MAX_PIXELS` decodes at 1/2, 1/4 or 1/8
  scale inside libjpeg, and anything that would still need more (other formats,
  decompression bombs) is refused as ``too_large`` from its header alone.

Writes go to a temp file (or folder) beside the target and are renamed into place,
so a reader, or a re-run after a kill, sees the old complete output or the new one.
"""
from __future__ import annotations

import glob
import io
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import cv2
import numpy as np

MAX_PIXELS = 40_000_000            # above this a JPEG decodes reduced; other formats are refused
MAX_SOURCE_PIXELS = 178_956_970    # PIL's decompression-bomb limit: refused whatever the format
MIN_SIDE = 16                      # smaller images cannot hold a usable face
EXIF_ORIENTATION = 0x0112
_JPEG = ("JPEG", "MPO")
_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}
_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
          (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"RIFF", "WEBP"))
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class BadImage(ValueError):
    """An input that cannot be used; ``reason`` is a short snake_case code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageHeader:
    """What the file's header says, read without decoding pixels."""

    format: str
    mode: str
    width: int
    height: int
    orientation: int          # EXIF 1..8 (1 = as stored)
    bit_depth: int
    has_alpha: bool


@dataclass(frozen=True)
class Decoded:
    """An RGB uint8 image, its scale relative to the file (1, 1/2, 1/4, 1/8) and what was converted."""

    rgb: np.ndarray
    scale: float
    conversions: tuple[str, ...]


def sniff_format(data: bytes) -> str:
    """The format named by the file's magic bytes, or "" when it is none we know."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    return ""


def _orientation(im) -> int:
    try:
        value = im.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not cost the picture: treat as upright
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def read_header(data: bytes) -> ImageHeader:
    """Parse the header with PIL (lazy: no pixel data is decoded)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt, mode, (w, h) = im.format or "", im.mode, im.size
                alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info
                orientation = _orientation(im)
    except Image.DecompressionBombError as e:
        raise BadImage("too_large", str(e)) from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for an unreadable header
        kind = sniff_format(data)
        if not kind:
            raise BadImage("not_an_image", f"unknown file signature {data[:8]!r}") from None
        reason = "truncated" if is_truncated(kind, data) else "undecodable"
        raise BadImage(reason, f"{kind} header unreadable: {type(e).__name__}") from None
    depth = data[24] if fmt == "PNG" and len(data) > 24 else (16 if mode.startswith("I;16") else 8)
    return ImageHeader(fmt, mode, w, h, orientation, depth, alpha)


def is_truncated(fmt: str, data: bytes) -> bool:
    """True when the file visibly ends early (JPEG: no EOI after the last scan; PNG: no IEND)."""
    if fmt in _JPEG:
        return data.rfind(b"\xff\xd9") < max(data.rfind(b"\xff\xda"), 2)
    if fmt == "PNG":
        return data.rfind(b"IEND") < 0
    return False


def conversions_of(head: ImageHeader, reduce: int) -> tuple[str, ...]:
    """Names of the conversions decoding applies, for stage reports."""
    names = []
    if head.orientation != 1:
        names.append("exif_orientation")
    if head.has_alpha:
        names.append("alpha_flattened")
    if head.bit_depth > 8:
        names.append("high_bit_depth")
    if head.mode in _GRAY_MODES:
        names.append("grayscale")
    elif head.mode == "CMYK":
        names.append("cmyk")
    elif head.mode in ("P", "PA"):
        names.append("palette")
    if reduce > 1:
        names.append(f"downscaled_{reduce}x")
    return tuple(names)


def _reduction(head: ImageHeader) -> int:
    """1, 2, 4 or 8; raises ``too_large`` where bounded memory cannot be kept."""
    pixels = head.width * head.height
    if pixels > MAX_SOURCE_PIXELS:
        raise BadImage("too_large", f"{head.width}x{head.height} exceeds {MAX_SOURCE_PIXELS} pixels")
    if pixels <= MAX_PIXELS:
        return 1
    if head.format not in _JPEG:
        raise BadImage("too_large", f"{head.width}x{head.height} {head.format}: only JPEG decodes reduced")
    return next(r for r in (2, 4, 8) if pixels / (r * r) <= MAX_PIXELS)


def _to_u8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img >> 8).astype(np.uint8)        # the same rule as cv2.IMREAD_COLOR
    raise BadImage("unsupported_pixel_format", f"{img.dtype} samples")


def _flatten_alpha(img: np.ndarray) -> np.ndarray:
    """BGR(A)/gray(+alpha) of any depth -> BGR uint8, transparent areas black."""
    img = _to_u8(img)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    channels = img.shape[2]
    if channels in (2, 4):
        colour, alpha = img[..., :-1], img[..., -1:].astype(np.uint16)
        img = ((colour.astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
        channels -= 1
    return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if channels == 1 else img


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels into the displayed frame for EXIF orientation 1..8."""
    if orientation in (5, 6, 7, 8):
        img = np.swapaxes(img, 0, 1)          # transpose: orientation 5
        orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]
    if orientation == 2:
        img = img[:, ::-1]
    elif orientation == 3:
        img = img[::-1, ::-1]
    elif orientation == 4:
        img = img[::-1]
    return img


@dataclass(frozen=True)
class Probe:
    """What :func:`decode_image` would give, read from the header alone: the decoded image's
    (height, width) in the displayed frame, its scale and the conversions it would apply."""

    shape: tuple[int, int]
    scale: float
    conversions: tuple[str, ...]
    header: ImageHeader
    reduce: int


def probe_image(data: bytes, reduce_at_least: int = 1) -> Probe:
    """Check ``data`` as :func:`decode_image` does before decoding (same :class:`BadImage`
    reasons for empty, unknown, tiny and oversized inputs) and predict the decoded shape.

    Pixel-free face backends (annotations, precropped) need only this; a body that turns
    out undecodable is then dropped, with its reason, by the align stage's decode.
    """
    if not data:
        raise BadImage("empty_file")
    head = read_header(data)
    if min(head.width, head.height) < MIN_SIDE:
        raise BadImage("too_small", f"{head.width}x{head.height}")
    needed = _reduction(head)
    reduce = max(needed, reduce_at_least) if head.format in _JPEG and not head.has_alpha else needed
    # Flipped/rotated frames keep the pixel-centre rule x' = (x + 0.5) / r - 0.5 only when r
    # divides the stored size (libjpeg's last partial block sits at the far edge, which a flip
    # brings to the near one); an optional reduction backs off until it does.
    while reduce > needed and head.orientation != 1 and (head.width % reduce or head.height % reduce):
        reduce //= 2
    h, w = -(-head.height // reduce), -(-head.width // reduce)      # libjpeg rounds scaled sizes up
    shape = (w, h) if head.orientation in (5, 6, 7, 8) else (h, w)
    return Probe(shape, 1.0 / reduce, conversions_of(head, needed), head, reduce)


def decode_image(data: bytes, reduce_at_least: int = 1) -> Decoded:
    """Decode encoded image bytes to RGB uint8 (H, W, 3) in the displayed (EXIF) frame.

    ``reduce_at_least`` (2, 4, 8) lets a JPEG decode at that fraction of its size inside libjpeg
    when the caller needs no more resolution (the align stage, for large faces); other formats
    ignore it. Only a reduction forced by :data:`MAX_PIXELS` counts as a conversion.
    Raises :class:`BadImage` with reason ``empty_file``, ``not_an_image``,
    ``truncated``, ``undecodable``, ``too_large``, ``too_small`` or
    ``unsupported_pixel_format``.
    """
    probe = probe_image(data, reduce_at_least)
    head, reduce = probe.header, probe.reduce
    flags = cv2.IMREAD_UNCHANGED if head.has_alpha else _REDUCED[reduce] | cv2.IMREAD_IGNORE_ORIENTATION
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None:
        reason = "truncated" if is_truncated(head.format, data) else "undecodable"
        raise BadImage(reason, f"{head.format} {head.width}x{head.height} {head.mode}")
    if head.has_alpha:
        img = _flatten_alpha(img)
    rgb = cv2.cvtColor(np.ascontiguousarray(apply_orientation(img, head.orientation)), cv2.COLOR_BGR2RGB)
    return Decoded(rgb, probe.scale, probe.conversions)


def decode_rgb(data: bytes) -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 array (H, W, 3); see :func:`decode_image`."""
    return decode_image(data).rgb


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def encode_png(gray_or_rgb: np.ndarray) -> bytes:
    img = gray_or_rgb if gray_or_rgb.ndim == 2 else cv2.cvtColor(gray_or_rgb, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def decode_jpeg_rgb(data: bytes) -> np.ndarray:
    """Decode a JPEG/PNG written by this pipeline (trusted size): JPEGs to RGB (straight from the
    decoder, no BGR pass), PNGs to grayscale or RGB as stored."""
    buf = np.frombuffer(data, np.uint8)
    if data[:2] == _JPEG_SOI:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR_RGB)
    else:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        if img is not None and img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img is None:
        raise BadImage("undecodable")
    return img


_JPEG_SOI = b"\xff\xd8"


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _remove_stale_temps(path: Path) -> None:
    """Delete temp files a killed writer of ``path`` left behind (they would pollute DVC outputs)."""
    prefix = _temp_prefix(path)
    for p in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        p.unlink(missing_ok=True)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where folders cannot be opened)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class atomic_open:
    """Context manager yielding a binary file that appears at ``path`` only on success.

    The data goes to ``.<name>.<random>.tmp`` beside ``path``, is fsynced, then renamed;
    on an exception the temp file is removed, and temp files of earlier killed writers
    of the same path are removed when a new write starts.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __enter__(self) -> BinaryIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(self.path)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=_temp_prefix(self.path), suffix=".tmp")
        self.tmp = Path(tmp)
        self.f = os.fdopen(fd, "wb")
        return self.f

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc_type is None:
                self.f.flush()
                os.fsync(self.f.fileno())
            self.f.close()
            if exc_type is None:
                os.chmod(self.tmp, 0o644)
                os.replace(self.tmp, self.path)
                fsync_dir(self.path.parent)
        finally:
            self.tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temp file in the same folder, then rename: readers never see a partial file."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def require_dir(path: str | Path, what: str, fix: str) -> Path:
    """``path`` as a Path, or a clear error naming the fix when the folder is missing."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder {path} does not exist: {fix}")
    return path


class StageDirError(FileExistsError):
    """A stage was pointed at a folder holding files it did not write."""


class staged_dir:
    """Build a stage's whole output folder beside it, then swap it in.

    ``with staged_dir(out, owned) as tmp:`` yields an empty ``.<out>.partial`` folder;
    on success the old ``out`` is replaced by it, on an exception it is deleted. So
    ``out`` is always absent, the previous complete output, or the new complete one:
    never a mix, never stale chunks from a larger earlier run, never a partial shard.
    A kill leaves at most ``.<out>.partial``/``.<out>.old``, cleared by the next run.

    ``owned`` are glob patterns of the names the stage writes; an existing ``out``
    holding anything else is refused rather than deleted.
    """

    def __init__(self, out: str | Path, owned: tuple[str, ...]) -> None:
        self.out = Path(out).resolve()          # "." and symlinked folders get a real name and parent
        self.owned = owned
        self.partial = self.out.with_name(f".{self.out.name}.partial")
        self.old = self.out.with_name(f".{self.out.name}.old")

    def _check_owned(self) -> None:
        if not self.out.exists():
            return
        if not self.out.is_dir():
            raise StageDirError(f"{self.out} is a file; a stage output must be a folder: remove it or pick another")
        foreign = sorted(p.name for p in self.out.iterdir()
                         if not any(fnmatch(p.name, pat) for pat in (*self.owned, ".*.tmp")))
        if foreign:
            raise StageDirError(
                f"{self.out} holds files this stage did not write ({', '.join(foreign[:5])}); "
                f"it replaces the whole folder: move them away or choose an empty output folder")

    def __enter__(self) -> Path:
        self._check_owned()
        for stale in (self.partial, self.old):
            if stale.exists():
                shutil.rmtree(stale)
        self.partial.mkdir(parents=True)
        return self.partial

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            shutil.rmtree(self.partial, ignore_errors=True)
            return
        if self.out.exists():
            os.replace(self.out, self.old)
        os.replace(self.partial, self.out)
        fsync_dir(self.out.parent)
        if self.old.exists():
            shutil.rmtree(self.old)
