"""Robust image decoding, header probing and encoding (what a file is, read from its header, and
:class:`BadImage`: :mod:`ferdata.imagefile`).

Decoding turns any bytes into RGB uint8 or raises :class:`BadImage` with a short
reason the stages record (never a silent skip). One policy for every stage, so the
detector and the aligner always see the same pixels in the same frame:

* EXIF orientation is read with PIL and applied here (OpenCV's own is switched off),
  so the pixel frame is the one a photo viewer shows; a TIFF's orientation tag, which
  the TIFF decoders apply themselves, is left to them;
* alpha is flattened onto black (the alignment border colour), so pixels hidden
  under full transparency never reach a model;
* 16-bit, grayscale, palette and CMYK images become 8-bit RGB;
* a file holding several pictures (multi-page TIFF, animated GIF, WebP or PNG) gives its first, and
  says so (``first_frame_only``; not a camera's MPO JPEG, whose first picture is the photo and the
  rest previews or gain maps);
* a JPEG whose compressed data is damaged decodes as every decoder does (the damaged part grey or
  shifted), and says so where libjpeg notices (``corrupt_jpeg_data``, :func:`decode_image`);
* memory stays bounded: a JPEG above :data:`MAX_PIXELS` decodes at 1/2, 1/4 or 1/8
  scale inside libjpeg, and anything that would still need more (other formats,
  decompression bombs) is refused as ``too_large`` from its header alone.

Pipeline outputs are encoded here too (:func:`encode_jpeg`, :func:`encode_png`) and read back
with :func:`decode_jpeg_rgb`; writing them to disk safely is :mod:`ferdata.atomic`'s job.
"""
from __future__ import annotations

import functools
import io
import logging
import re
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from ferdata.imagefile import (GRAY_ALPHA_MODES, JPEG_FORMATS, BadImage, ImageHeader, conversions_of, damaged,
                               declared_size, read_header, sniff_format)

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm",
                        ".ppm"})      # file names read (.jfif: a JPEG as Windows' browsers save one)
# what OpenCV's FFmpeg reads: phones' .3gp, camcorders' AVCHD (.mts, .m2ts), MPEG-PS (.mpg); not .ts (TypeScript).
# `ferdata predict` scores their frames; no dataset reader reads a video (its frames are extracted first)
VIDEO_EXTS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".3gp", ".mts", ".m2ts", ".mpg", ".mpeg"})
MAX_PIXELS = 40_000_000            # above this a JPEG decodes reduced; other formats are refused
MAX_SOURCE_PIXELS = 178_956_970    # PIL's decompression-bomb limit: refused whatever the format
MIN_SIDE = 16                      # smaller images cannot hold a usable face
_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}
_REDUCED_RGB = {r: (f & ~cv2.IMREAD_COLOR) | cv2.IMREAD_COLOR_RGB for r, f in _REDUCED.items()}


@dataclass(frozen=True)
class Decoded:
    """An RGB uint8 image, its scale relative to the file (1, 1/2, 1/4, 1/8) and what was converted."""

    rgb: np.ndarray
    scale: float
    conversions: tuple[str, ...]
    damage: str = ""          # libjpeg's complaint about a JPEG whose compressed data is damaged (see decode_image)


def _reduction(head: ImageHeader) -> int:
    """1, 2, 4 or 8; raises ``too_large`` where bounded memory cannot be kept."""
    pixels = head.width * head.height
    if pixels > MAX_SOURCE_PIXELS:
        raise BadImage("too_large", f"{head.width}x{head.height} exceeds {MAX_SOURCE_PIXELS} pixels: shrink it")
    if pixels <= MAX_PIXELS:
        return 1
    if head.format not in JPEG_FORMATS:
        raise BadImage("too_large", f"{head.width}x{head.height} {head.format} exceeds {MAX_PIXELS} pixels, the most "
                       "decoded whole (only a JPEG decodes reduced): shrink it, or save it as JPEG")
    return next(r for r in (2, 4, 8) if pixels / (r * r) <= MAX_PIXELS)


def _to_u8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img >> 8).astype(np.uint8)        # the same rule as cv2.IMREAD_COLOR
    raise BadImage("unsupported_pixel_format", f"{img.dtype} samples")


def _flatten_alpha(img: np.ndarray, premultiplied: bool = False) -> np.ndarray:
    """BGR(A)/gray(+alpha) of any depth -> BGR uint8, transparent areas black; ``premultiplied``:
    the colour already holds alpha (multiplying again darkened half-transparent pixels)."""
    img = _to_u8(img)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    channels = img.shape[2]
    if channels in (2, 4):
        colour, alpha = img[..., :-1], img[..., -1:].astype(np.uint16)
        img = colour if premultiplied else ((colour.astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
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
        raise BadImage("too_small", f"{head.width}x{head.height}: a side under {MIN_SIDE} px, too small to hold a face")
    needed = _reduction(head)
    reduce = max(needed, reduce_at_least)
    # Flipped/rotated frames keep the pixel-centre rule x' = (x + 0.5) / r - 0.5 only when r
    # divides the stored size (libjpeg's last partial block sits at the far edge, which a flip
    # brings to the near one); an optional reduction backs off until it does. A forced one (over
    # MAX_PIXELS) cannot: there, on a reversed axis whose stored size N is no multiple of r,
    # points map (r * ceil(N / r) - N) / r decoded px off (under one decoded px; known, not corrected).
    # Other formats are shrunk after decoding, in the displayed frame (block_mean): no such offset.
    while reduce > needed and libjpeg_scales(head) and head.turn != 1 and (head.width % reduce or head.height % reduce):
        reduce //= 2
    h, w = -(-head.height // reduce), -(-head.width // reduce)      # libjpeg rounds scaled sizes up
    shape = (w, h) if head.turn in (5, 6, 7, 8) else (h, w)
    return Probe(shape, 1.0 / reduce, conversions_of(head, needed), head, reduce)


def decode_image(data: bytes, reduce_at_least: int = 1) -> Decoded:
    """Decode encoded image bytes to RGB uint8 (H, W, 3) in the displayed (EXIF) frame.

    ``reduce_at_least`` (2, 4, 8) decodes at that fraction of the size when the caller needs no
    more resolution (the align stage, for large faces): a JPEG inside libjpeg, other formats whole
    and then shrunk by r x r block means (:func:`block_mean`, libjpeg's rule: the face a warp
    would take from the full image is not aliased, whatever the file's format). Only a reduction
    forced by :data:`MAX_PIXELS` counts as a conversion.
    A JPEG whose compressed data is damaged decodes as every decoder reads it (the damaged part grey
    or shifted) with libjpeg's complaint in ``damage`` and ``corrupt_jpeg_data`` among the
    conversions: an RGB or grey JPEG is read by libjpeg-turbo in strict mode (simplejpeg: OpenCV's
    pixels bit for bit, at any reduction, in the same time), which stops at a warning, then by
    OpenCV, which reads on; other JPEGs (CMYK) are checked by :func:`jpeg_damage`.
    Raises :class:`BadImage` with reason ``empty_file``, ``not_an_image``, ``heic_unsupported``,
    ``truncated``, ``undecodable``, ``too_large``, ``too_small`` or
    ``unsupported_pixel_format``.
    """
    probe = probe_image(data, reduce_at_least)
    head, reduce = probe.header, probe.reduce
    inside = reduce if libjpeg_scales(head) else 1                      # the reduction the decoder makes itself
    img, damage = None, ""
    if libjpeg_scales(head) and head.mode in ("RGB", "L"):
        img, damage = _strict_jpeg(data, head, inside)
    elif head.format in JPEG_FORMATS:
        damage = jpeg_damage(data)
    grey_alpha_tiff = head.has_alpha and head.format == "TIFF" and head.mode in GRAY_ALPHA_MODES
    if grey_alpha_tiff:                           # OpenCV's TIFF reader drops a grey image's alpha
        img = _pil_pixels(data)
    elif img is None:           # without alpha the decoder writes RGB itself (BGR + cvtColor's pixels, a pass less)
        flags = cv2.IMREAD_UNCHANGED if head.has_alpha else _REDUCED_RGB[inside] | cv2.IMREAD_IGNORE_ORIENTATION
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None:
        raise damaged(head.format, data, f"{head.format} {head.width}x{head.height} {head.mode}")
    if head.grey_key is not None and img.ndim == 2:         # OpenCV ignores a grey PNG's tRNS
        img = np.where(img == head.grey_key, 0, img).astype(img.dtype)
    if head.has_alpha:
        img = cv2.cvtColor(_flatten_alpha(img, head.premultiplied), cv2.COLOR_BGR2RGB)
    rgb = np.ascontiguousarray(apply_orientation(img, head.turn))
    conversions = probe.conversions + ((JPEG_DAMAGED,) if damage else ())
    return Decoded(block_mean(rgb, reduce // inside), probe.scale, conversions, damage)


def _strict_jpeg(data: bytes, head: ImageHeader, reduce: int) -> tuple[np.ndarray | None, str]:
    """(RGB pixels of an RGB or grey JPEG at 1/``reduce``, "") from libjpeg-turbo in strict mode,
    or (None, libjpeg's complaint where the compressed data is damaged, else ""): the caller then
    decodes it with OpenCV, which reads on past a warning as every decoder does."""
    if (simplejpeg := _simplejpeg()) is None:
        return None, ""
    try:
        rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True, min_height=-(-head.height // reduce),
                                     min_width=-(-head.width // reduce))
    except ValueError as e:
        return None, _damage(str(e))
    except Exception:  # noqa: BLE001 - anything else it cannot read is OpenCV's to decode or refuse
        return None, ""
    return rgb, ""


@functools.lru_cache(maxsize=None)
def _simplejpeg():
    """The strict JPEG decoder's module, or None in a broken install without it: JPEGs then decode
    through OpenCV to the same pixels, damaged data unheard (said once)."""
    try:
        import simplejpeg
    except ImportError:
        logging.getLogger(__name__).warning("simplejpeg is not installed (pip install simplejpeg): JPEGs with "
                                            "damaged data are not noticed")
        return None
    return simplejpeg


_EXTRANEOUS = re.compile(r"(\d+) extraneous bytes before marker 0x([0-9a-f]{2})")
TRAILING_JUNK = 8          # extra bytes before the end marker a writer may leave (web-crawled sets have 1-3)


def _damage(message: str) -> str:
    """``message`` (a libjpeg warning or error) when it says the compressed data is damaged, else "".
    Extra bytes before a marker are libjpeg's usual (often only) sign that damaged data threw the
    decoder off: damage before a restart or scan marker, or more than :data:`TRAILING_JUNK` before
    the end marker; a few there ("1 extraneous bytes before marker 0xd9"), or before a table
    marker, are a writer's junk. An unknown JFIF revision is harmless. libjpeg notices only some
    damage: most single flipped bytes decode to wrong pixels without a warning."""
    if not message.startswith(("Corrupt JPEG data", "Premature end of JPEG file")):
        return ""
    extra = _EXTRANEOUS.search(message)
    if extra is None:
        return message
    count, marker = int(extra[1]), int(extra[2], 16)
    damaged = 0xD0 <= marker <= 0xD7 or marker == 0xDA or (marker == 0xD9 and count > TRAILING_JUNK)
    return message if damaged else ""


def _pil_pixels(data: bytes) -> np.ndarray | None:
    """The stored samples as PIL reads them (no EXIF turn, no conversion); None when it cannot."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im)
    except (OSError, ValueError, SyntaxError):      # damaged data: the caller names it
        return None


def libjpeg_scales(head: ImageHeader) -> bool:
    """Whether the decoder shrinks this file itself (libjpeg's scaled decode)."""
    return head.format in JPEG_FORMATS and not head.has_alpha


def is_grey(rgb: np.ndarray) -> bool:
    """Whether an RGB image is grey: R = G = B in every pixel, as a grey picture decodes (its value
    replicated) and stays through a warp or a JPEG round trip (the same on each channel)."""
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


BLANK_RANGE = 4     # a crop each of whose channels lies within this many levels shows no face


def is_blank(image: np.ndarray) -> bool:
    """Whether an image is one flat colour (each channel's values within :data:`BLANK_RANGE` levels: a flat red
    crop too, whose channels differ from each other): no face, yet the precropped backend takes any picture as one
    (FER2013's all-black rows were trained on and scored unsaid)."""
    values = image.reshape(-1, image.shape[-1] if image.ndim == 3 else 1)
    return bool((values.max(axis=0).astype(int) - values.min(axis=0)).max() <= BLANK_RANGE)


def grey_copy(decoded: Decoded) -> Decoded:
    """``decoded`` in grey: each pixel's luma (ITU-R BT.601, OpenCV's integer weights, which keep a grey
    pixel's value) replicated to R = G = B, as a grey picture decodes (FER2013's PNGs, JAFFE's TIFFs).
    A grey picture comes back unchanged."""
    grey = cv2.cvtColor(np.ascontiguousarray(decoded.rgb), cv2.COLOR_RGB2GRAY)
    return Decoded(cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB), decoded.scale, decoded.conversions, decoded.damage)


def decode_grey(data: bytes, reduce_at_least: int = 1,
                decode: Callable[[int], Decoded] | None = None) -> Decoded:
    """``decode_image(data, reduce_at_least)`` of the picture turned grey (:func:`grey_copy`), as that
    grey picture decodes: a JPEG's reduced decode is libjpeg's (its luma: turned grey as it comes); any
    other file is shrunk by block means after it is turned grey (turned grey after them, 15% of a large
    face's crop values came out one level off). The align stage (``detect.grey``) and inference for a
    grey model (:class:`fermodels.predictor.Picture`) both read grey pictures so. ``decode``: a
    memoised ``decode_image`` of ``data`` (reduce -> Decoded), else it is called."""
    decode = decode or functools.partial(decode_image, data)
    decoded = decode(reduce_at_least)
    whole_file = probe_image(data, 1) if reduce_at_least != 1 else None
    if whole_file is None or libjpeg_scales(whole_file.header) or whole_file.reduce != 1:
        return grey_copy(decoded)           # (a whole decode already reduced, over MAX_PIXELS: block means compound)
    whole = grey_copy(decode(1))
    return Decoded(block_mean(whole.rgb, reduce_at_least), decoded.scale, decoded.conversions, decoded.damage)


def block_mean(rgb: np.ndarray, reduce: int) -> np.ndarray:
    """``rgb`` at 1/``reduce`` the way libjpeg's reduced decode makes it: ceil(h/r) x ceil(w/r)
    pixels, each the mean of an r x r block (the last, partial blocks filled by repeating the edge,
    as a JPEG encoder pads them), so pixel centres map as ``reduced_frame(1 / reduce)`` says."""
    if reduce == 1:
        return rgb
    h, w = rgb.shape[:2]
    padded = cv2.copyMakeBorder(rgb, 0, -h % reduce, 0, -w % reduce, cv2.BORDER_REPLICATE)
    size = (padded.shape[1] // reduce, padded.shape[0] // reduce)
    return cv2.resize(padded, size, interpolation=cv2.INTER_AREA)      # integer factor: exact block means


JPEG_DAMAGED = "corrupt_jpeg_data"       # the conversion note of a kept JPEG whose compressed data is damaged


def jpeg_damage(data: bytes) -> str:
    """libjpeg's complaint about a JPEG whose compressed data is damaged ("Corrupt JPEG data:
    premature end of data segment", "Premature end of JPEG file"), "" for a sound one or another
    format (harmless warnings: :func:`_damage`). Decoders fill the damaged part with grey or shifted
    blocks and say nothing (OpenCV's and PIL's alike); this decodes in strict mode at 1/8 scale,
    which still reads every coefficient, at about half the cost of a full decode (:func:`decode_image`
    says so at no cost for RGB and grey JPEGs)."""
    if sniff_format(data) != "JPEG" or (simplejpeg := _simplejpeg()) is None:
        return ""
    try:
        simplejpeg.decode_jpeg(data, strict=True, min_height=1, min_width=1)
    except ValueError as e:
        return _damage(str(e))
    return ""


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


MAX_STORED_SIDE = 4096             # the largest align.size (the params refuse more): stored faces, halves, heatmaps
MAX_STORED_PIXELS = MAX_STORED_SIDE ** 2


def decode_jpeg_rgb(data: bytes, max_pixels: int = MAX_STORED_PIXELS) -> np.ndarray:
    """Decode a JPEG/PNG written by this pipeline: JPEGs to RGB (straight from the decoder, no BGR
    pass), PNGs to grayscale or RGB as stored. Shards come from anywhere (a remote, a colleague), so
    the size the header declares is checked first: a picture over ``max_pixels`` (a decompression
    bomb: a 0.9 MB PNG of 30000 x 30000 decodes to 0.9-2.7 GB) is refused as ``too_large``."""
    if not data:
        raise BadImage("empty_file")                # cv2.imdecode asserts on an empty buffer
    size = declared_size(data)
    if size is None:                                # not a JPEG or PNG of ours: PIL reads its header
        head = read_header(data)
        size = head.width, head.height
    if size[0] * size[1] > max_pixels:
        raise BadImage("too_large", f"{size[0]}x{size[1]} exceeds {max_pixels} pixels")
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
