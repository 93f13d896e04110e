"""What the detection cache's key holds of this package's own code: a digest of what it makes of
a set of small probe files and points (:func:`pipeline_digest`).

A cached detection is the backend's answer to the pixels :func:`ferdata.io.decode_image` made of
a file, mapped back to the file's pixels (:meth:`Face.scaled`, :func:`ferdata.geometry.resized_back`)
and rounded (:meth:`Detection.canonical`). The key named the backend, its options, model files and
packages, but none of that code: a fix to how a TIFF is turned, or an alpha flattened, left every
earlier detection of such files in the cache, and align cropped the right pixels at the wrong
places. Hashing the source would re-detect a whole dataset after any edit of those modules; this
digest changes only when what they make changes (for the cases probed: not the reduction forced on
JPEGs over 40 MP, nor CMYK). The probes are encoded by OpenCV (whose version the key holds anyway) or
written by hand, but for three TIFFs (uncompressed: the same bytes from pillow 11 to 13) and a grey PNG with
a transparent value (OpenCV writes none; its pixels, not its bytes, enter the digest) by PIL, and
stay off computations that may differ between CPUs (resizing only at whole-number factors, which
gives exact block means), so caches merged between machines keep matching. A format this OpenCV
build cannot write or read counts as such in the digest instead of stopping every detection.
"""
from __future__ import annotations

import hashlib
import io
import struct
from functools import lru_cache
from typing import Callable, Iterator

import cv2
import numpy as np


def _picture(h: int = 45, w: int = 61) -> np.ndarray:
    """An RGB test card of odd size: ramps, a diagonal and a checker (no random numbers)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 255 // (w - 1)), (y * 255 // (h - 1)), ((x + y) % 7) * 36 + ((x // 4 + y // 4) % 2) * 40],
                    axis=-1).astype(np.uint8)


def _cv(ext: str, img: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode the {ext} probe")
    return buf.tobytes()


def _with_orientation(jpeg: bytes, orientation: int) -> bytes:
    """``jpeg`` with an EXIF APP1 segment holding only the orientation tag (written by hand)."""
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">HHHIHHI", 1, 0x0112, 3, 1, orientation, 0, 0)
    body = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def _pil(img: np.ndarray, mode: str, fmt: str, **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).convert(mode).save(buf, format=fmt, **kw)
    return buf.getvalue()


def probe_files() -> Iterator[tuple[str, bytes | None]]:
    """(name, bytes) of each probe: the formats and modes :func:`ferdata.io.decode_image` converts
    (None for one this OpenCV build cannot write)."""
    for name, make in _probes():
        try:
            yield name, make()
        except (cv2.error, RuntimeError):
            yield name, None


def _probes() -> Iterator[tuple[str, Callable[[], bytes]]]:
    rgb = _picture()
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    alpha = np.linspace(0, 255, rgb.shape[1], dtype=np.uint8)[None, :].repeat(rgb.shape[0], 0)
    bgra = np.dstack([bgr, alpha])
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    even = np.ascontiguousarray(_picture(48, 64)[..., ::-1])        # whole blocks: reduced turns too
    quality = (cv2.IMWRITE_JPEG_QUALITY, 90)
    yield "jpeg", lambda: _cv(".jpg", bgr, *quality)
    yield "jpeg_grey", lambda: _cv(".jpg", grey, *quality)
    for orientation in (3, 6, 8):
        yield f"jpeg_exif{orientation}", lambda o=orientation: _with_orientation(_cv(".jpg", bgr, *quality), o)
        yield f"jpeg_even_exif{orientation}", lambda o=orientation: _with_orientation(_cv(".jpg", even, *quality), o)
    yield "png", lambda: _cv(".png", bgr)
    yield "png_rgba", lambda: _cv(".png", bgra)
    yield "png_16bit", lambda: _cv(".png", bgr.astype(np.uint16) * 257)
    yield "png_grey", lambda: _cv(".png", grey)
    yield "png_grey_trns", lambda: _pil(grey, "L", "PNG", transparency=int(grey[20, 30]))  # a transparent value
    yield "tiff_rgba", lambda: _pil(np.dstack([rgb, alpha]), "RGBA", "TIFF")    # OpenCV's lacks ExtraSamples
    yield "tiff_grey_alpha", lambda: _pil(np.dstack([grey, alpha]), "LA", "TIFF")
    yield "tiff_exif6", lambda: _pil(rgb, "RGB", "TIFF", exif=_orientation_exif(6))
    yield "webp", lambda: _cv(".webp", bgr, cv2.IMWRITE_WEBP_QUALITY, 101)          # lossless
    yield "bmp", lambda: _cv(".bmp", bgr)


def _orientation_exif(orientation: int) -> object:
    """A PIL ``Image.Exif`` holding only the orientation tag."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _points() -> tuple[np.ndarray, np.ndarray]:
    """Five points and 68 points in a 61 x 45 image, as a backend reports them."""
    t = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    lmk = np.stack([30.3 + 14.7 * np.cos(t), 22.1 + 16.9 * np.sin(t)], axis=1).astype(np.float32)
    kps = np.array([[24.25, 17.5], [36.75, 17.0], [30.5, 24.0], [25.5, 31.25], [35.5, 31.0]], np.float32)
    return kps, lmk


@lru_cache(maxsize=1)
def pipeline_digest() -> str:
    """12 hex digits of sha256 over what decoding (at each reduction a detector or align asks for)
    makes of :func:`probe_files`, and what the mapping of faces back to the file's pixels and the
    cache's rounding make of fixed points."""
    from ferdata.cache import Detection
    from ferdata.faces.base import Face
    from ferdata.geometry import resized_back, shrunk
    from ferdata.io import BadImage, Decoded, decode_image

    h = hashlib.sha256()
    for name, data in probe_files():
        for reduce in (1, 2, 4):
            try:
                d = decode_image(data, reduce) if data is not None else None
            except BadImage as err:                   # a reader this OpenCV build lacks
                d = err
            if not isinstance(d, Decoded):
                h.update(f"{name}/{reduce}:unavailable".encode())
                continue
            h.update(f"{name}/{reduce}:{d.rgb.shape}:{d.scale!r}".encode())   # what detections depend on
            h.update(np.ascontiguousarray(d.rgb).tobytes())
    kps, lmk = _points()
    small, scale = shrunk(np.zeros((45, 61, 3), np.uint8), 32)
    boxes, back = resized_back(np.array([[7.5, 3.25, 52.0, 41.5]]), kps[None], scale)
    face = Face(tuple(float(v) for v in boxes[0]), 0.987654321, back[0], lmk, "probe")
    detection = Detection((45, 61), (face, face.scaled(0.25), face.scaled(1 / 8))).canonical()
    h.update(f"{small.shape}:{scale!r}:{detection.to_json()}".encode())
    return h.hexdigest()[:12]
