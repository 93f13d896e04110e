"""Robust image decoding and atomic file writes.

Decoding turns any bytes into RGB uint8 or raises :class:`BadImage` with a short
reason the stages record (never a silent skip). EXIF orientation is applied, alpha
is dropped, 16-bit and grayscale/CMYK images become 8-bit RGB, and huge images are
decoded at a reduced scale so memory stays bounded.
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

MAX_PIXELS = 40_000_000       # above this, decode at 1/2, 1/4 or 1/8 scale
MIN_SIDE = 16                 # smaller images cannot hold a usable face


class BadImage(ValueError):
    """An input that cannot be used; ``reason`` is a short snake_case code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header only, or None when PIL cannot parse it."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any parse failure means "unknown size"; cv2 decides below
        return None


def decode_rgb(data: bytes) -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 array (H, W, 3)."""
    if not data:
        raise BadImage("empty_file")
    size = _header_size(data)
    flags = cv2.IMREAD_COLOR
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        factor = size[0] * size[1] / MAX_PIXELS
        flags = (cv2.IMREAD_REDUCED_COLOR_2 if factor <= 4 else
                 cv2.IMREAD_REDUCED_COLOR_4 if factor <= 16 else cv2.IMREAD_REDUCED_COLOR_8)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None:
        raise BadImage("undecodable", "not an image or truncated beyond repair")
    if img.shape[0] < MIN_SIDE or img.shape[1] < MIN_SIDE:
        raise BadImage("too_small", f"{img.shape[1]}x{img.shape[0]}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


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
    """Decode a JPEG/PNG written by this pipeline (trusted size) to RGB or grayscale."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise BadImage("undecodable")
    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temp file in the same folder, then rename: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class atomic_open:
    """Context manager yielding a binary file that appears at ``path`` only on success."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self.f = os.fdopen(fd, "wb")
        return self.f

    def __exit__(self, exc_type, exc, tb) -> None:
        self.f.close()
        if exc_type is None:
            os.chmod(self.tmp, 0o644)
            os.replace(self.tmp, self.path)
        else:
            Path(self.tmp).unlink(missing_ok=True)
