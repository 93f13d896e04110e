"""What an image file is, read from its header without decoding a pixel: format, mode, size, EXIF
orientation, bit depth, alpha (and how it is stored), frames, and the conversions decoding it will
apply (:func:`read_header`, :func:`conversions_of`); whether it visibly ends early
(:func:`is_truncated`); and :class:`BadImage`, the error every unusable input raises with its
reason. Decoding is :mod:`ferdata.io`'s.
"""
from __future__ import annotations

import io
import warnings
import zlib
from dataclasses import dataclass

EXIF_ORIENTATION = 0x0112
TIFF_EXTRA_SAMPLES = 338          # ExtraSamples: 1 associated (premultiplied) alpha, 2 unassociated
TIFF_BITS_PER_SAMPLE = 258
JPEG_FORMATS = ("JPEG", "MPO")
_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
          (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"RIFF", "WEBP"))
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")   # ISO-BMFF major brands
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
GRAY_ALPHA_MODES = ("LA", "La")
_PNG = b"\x89PNG\r\n\x1a\n"
# The chunks PIL's getexif() reads the orientation from: EXIF, XMP (iTXt) and ImageMagick's raw profile (text)
_PNG_ORIENTATION = ((b"eXIf", b""), (b"iTXt", b"XML:com.adobe.xmp\0"), (b"tEXt", b"Raw profile type exif\0"),
                    (b"zTXt", b"Raw profile type exif\0"))
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}      # JPEG start-of-frame markers (not DHT, JPG, DAC)


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) a PNG's IHDR or a JPEG's frame header declares, found in a few marker hops
    without PIL (cheap enough for every member a loader decodes); None for anything else."""
    if data.startswith(_PNG) and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if not data.startswith(b"\xff\xd8"):
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:                          # fill byte
            i += 1
        elif marker == 0x00:                        # no marker: libjpeg skips it byte by byte, not by a length
            return None                             # (a decoy SOF could lie where a length would land): PIL reads it
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        elif marker in _SOF:
            return (int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")) \
                if i + 9 <= n else None
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


class BadImage(ValueError):
    """An input that cannot be used; ``reason`` is a short snake_case code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # rebuilt whole in the parent when a worker raises it (notes too)
        return (type(self), (self.reason, self.detail), self.__dict__)


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
    premultiplied: bool = False   # the decoded colour already holds alpha (see :func:`read_header`)
    frames: int = 1               # pages of a TIFF, frames of an animated WebP: the first is decoded
    grey_key: int | None = None   # a grey PNG's transparent sample value (tRNS), as the decoder gives samples

    @property
    def turn(self) -> int:
        """The orientation left to apply after decoding. TIFF's is tag 274 of the image itself, which
        libtiff-based decoders (OpenCV's whatever its flags, and PIL's, whose size is then the
        displayed one) already apply: turning again would rotate or mirror the face twice."""
        return 1 if self.format == "TIFF" else self.orientation


def sniff_format(data: bytes) -> str:
    """The format named by the file's magic bytes, or "" when it is none we know."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    return ""


def _orientation(im) -> int:
    from PIL import Image

    try:            # Image's own: a PNG's getexif() decodes every pixel to reach chunks after the image data
        value = Image.Image.getexif(im).get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not cost the picture: treat as upright
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def read_header(data: bytes) -> ImageHeader:
    """Parse the header with PIL (lazy: no pixel data is decoded)."""
    from PIL import Image

    # our own parsing, outside the handler below: a bug in it is a traceback, not every PNG "undecodable"
    moved = _png_orientation_first(data) if data.startswith(_PNG) else data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _pil_open(data, moved) as im:
                fmt, mode, (w, h) = im.format or "", im.mode, im.size
                alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info
                orientation = _orientation(im)
                tags = getattr(im, "tag_v2", {}) if fmt == "TIFF" else {}
                extra, bits = tags.get(TIFF_EXTRA_SAMPLES), tags.get(TIFF_BITS_PER_SAMPLE)
                frames = _frames(im) if fmt != "MPO" else 1     # an MPO's first picture is the photo itself
                key = im.info.get("transparency") if fmt == "PNG" and mode in ("1", "L", "I", "I;16") else None
    except Image.DecompressionBombError as e:
        raise BadImage("too_large", f"{e}: shrink it") from None
    except MemoryError:                      # the machine's, not the file's: no good image dropped for it
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types for an unreadable header
        kind = sniff_format(data)
        if not kind and data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:     # an iPhone's photo: no decoder here
            raise BadImage("heic_unsupported", f"HEIC/HEIF image (brand {data[8:12].decode()!r}) cannot be decoded "
                                               "here: convert it to JPEG or PNG") from None
        if not kind:
            raise BadImage("not_an_image", f"unknown file signature {data[:8]!r}") from None
        raise damaged(kind, data, f"{kind} header unreadable ({type(e).__name__})") from None
    wide = mode.startswith("I;16") or (fmt == "PPM" and mode == "I")      # PIL opens a 16-bit PGM as I
    depth = data[24] if fmt == "PNG" and len(data) > 24 else (16 if wide else 8)
    if bits:                                  # PIL shows a 16-bit RGBA TIFF as mode RGBA
        depth = max(bits) if isinstance(bits, (tuple, list)) else int(bits)
    # A TIFF's alpha is associated (ExtraSamples 1: colour stored premultiplied) or unassociated (2),
    # which OpenCV's libtiff path premultiplies itself for 8-bit colour samples (RGBA interface); the
    # raw 16-bit path does not, nor PIL, which reads grey + alpha (see :func:`decode_image`).
    # Premultiplied colour is already the picture over black.
    extra = tuple(extra) if isinstance(extra, (tuple, list)) else (extra,)
    opencv_multiplies = depth == 8 and mode not in GRAY_ALPHA_MODES
    premultiplied = alpha and fmt == "TIFF" and (1 in extra or (2 in extra and opencv_multiplies))
    if isinstance(key, int) and mode == "1":    # PIL gives a 1-bit key widened already (0 or 255), or not
        key = 255 if key else 0
    elif isinstance(key, int) and depth < 8:    # libpng scales 2/4-bit grey to 8 bits, not the key
        key *= 255 // (2 ** depth - 1)
    return ImageHeader(fmt, mode, w, h, orientation, depth, alpha, premultiplied, frames,
                       key if isinstance(key, int) else None)


def _pil_open(data: bytes, moved: bytes):
    """PIL's lazy open of ``data``; ``moved``: a PNG with its orientation chunks moved first
    (:func:`_png_orientation_first`), opened instead, or ``data`` as it is where PIL refuses a moved chunk."""
    from PIL import Image

    if moved is not data:
        try:
            return Image.open(io.BytesIO(moved))
        except Image.DecompressionBombError:       # the size, not a moved chunk: no second open
            raise
        except Exception:  # noqa: BLE001 - PIL's header rules for text (size, CRC): read as stored
            pass
    return Image.open(io.BytesIO(data))


def _png_orientation_first(data: bytes) -> bytes:
    """A PNG's bytes with the chunks after its image data that can hold its orientation (EXIF, XMP,
    a raw EXIF profile; CRC intact) moved before it, for PIL to read the header from: it reads chunks
    after the image data only once it has decoded every pixel (a 0.5 MB PNG of 121 MP took 100 MB
    before it was refused). Chunks are copied whole; anything else stays where it is."""
    chunks, pos = [], len(_PNG)
    while pos + 12 <= len(data):
        end = pos + 12 + int.from_bytes(data[pos:pos + 4], "big")
        if end > len(data):
            break
        chunks.append((data[pos + 4:pos + 8], pos, end))
        pos = end
    image = [i for i, (kind, _, _) in enumerate(chunks) if kind == b"IDAT"]
    moved = {i for i in range(image[-1] + 1, len(chunks)) if _orientation_chunk(data, *chunks[i])} if image else set()
    if not moved:
        return data
    first = chunks[image[0]][1]
    return data[:first] + b"".join(data[s:e] for i, (_, s, e) in enumerate(chunks) if i in moved) + b"".join(
        data[s:e] for i, (_, s, e) in enumerate(chunks) if i >= image[0] and i not in moved) + data[chunks[-1][2]:]


def _orientation_chunk(data: bytes, kind: bytes, start: int, end: int) -> bool:
    body = data[start + 8:end - 4]
    return (any(kind == k and body.startswith(prefix) for k, prefix in _PNG_ORIENTATION)
            and zlib.crc32(data[start + 4:end - 4]) == int.from_bytes(data[end - 4:end], "big"))


def _frames(im) -> int:
    """How many pictures the file holds (walking a TIFF's page directory, no pixels decoded)."""
    try:
        return max(1, int(getattr(im, "n_frames", 1)))
    except Exception:  # noqa: BLE001 - a broken later page must not cost the first: counted as one
        return 1


# What a drop's detail tells the user to do about a file its decoder could not read (audit h110)
DAMAGED_FIX = {"truncated": "the file ends early (an interrupted download, copy or unzip): copy it again from its "
                             "source",
               "undecodable": "its data does not decode (damaged, or a variant the decoders here do not read): copy it "
                              "again from its source, or re-save it as PNG or JPEG"}


def damaged(fmt: str, data: bytes, what: str) -> BadImage:
    """``truncated`` (:func:`is_truncated`) or ``undecodable`` for a ``fmt`` file whose ``what`` failed, with the
    fix in its detail."""
    reason = "truncated" if is_truncated(fmt, data) else "undecodable"
    return BadImage(reason, f"{what}: {DAMAGED_FIX[reason]}")


def is_truncated(fmt: str, data: bytes) -> bool:
    """True when the file visibly ends early (JPEG: no EOI after the last scan; PNG: no IEND; BMP
    and WebP: shorter than the size their header gives; GIF: no trailer byte)."""
    if fmt in JPEG_FORMATS:
        return data.rfind(b"\xff\xd9") < max(data.rfind(b"\xff\xda"), 2)
    if fmt == "PNG":
        return data.rfind(b"IEND") < 0
    if fmt == "BMP" and len(data) >= 6:
        return len(data) < int.from_bytes(data[2:6], "little")
    if fmt == "WEBP" and len(data) >= 8:
        return len(data) < 8 + int.from_bytes(data[4:8], "little")
    if fmt == "GIF":
        return not data.rstrip(b"\0").endswith(b";")
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
    if head.frames > 1:
        names.append("first_frame_only")         # a multi-page TIFF or animated WebP: its first picture
    if reduce > 1:
        names.append(f"downscaled_{reduce}x")
    return tuple(names)
