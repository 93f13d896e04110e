"""Decoding the pipeline's own JPEG/PNG members: RGB channel order for JPEGs (decoded straight
to RGB), grayscale PNGs stay 2-D, colour PNGs come back RGB; checked against Pillow."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from skimage import data

from ferdata.io import BadImage, decode_jpeg_rgb, encode_jpeg, encode_png


def _pil(data_bytes: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data_bytes)))


def test_jpeg_decodes_to_rgb_like_pillow():
    face = data.astronaut()[:112, 200:312]
    jpg = encode_jpeg(face, 95)
    got = decode_jpeg_rgb(jpg)
    assert got.shape == (112, 112, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - _pil(jpg).astype(int)).max() <= 2          # same libjpeg, maybe other IDCT
    red = decode_jpeg_rgb(encode_jpeg(np.tile(np.array([250, 10, 10], np.uint8), (16, 16, 1)), 95))
    assert red[..., 0].min() > 200 and red[..., 2].max() < 60


@pytest.mark.parametrize("image", [np.arange(64 * 48, dtype=np.uint32).reshape(64, 48).astype(np.uint8),
                                   data.astronaut()[:40, :30]])
def test_png_round_trips_gray_and_rgb(image):
    png = encode_png(image)
    assert np.array_equal(decode_jpeg_rgb(png), image) and np.array_equal(_pil(png), image)


def test_undecodable_bytes_raise():
    with pytest.raises(BadImage):
        decode_jpeg_rgb(b"\xff\xd8not a jpeg")


def bomb_png(side: int, channels: int = 1) -> bytes:
    """A valid ``side`` x ``side`` PNG of zeros, a few kB per thousand pixels of side."""
    import struct
    import zlib

    comp = zlib.compressobj(9)
    row = b"\0" * (1 + side * channels)
    raw = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", side, side, 8, {1: 0, 3: 2}[channels], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def test_a_stored_picture_declaring_a_huge_size_is_refused_before_decoding():
    """Shards come from a remote or a colleague: a 60 kB heatmap.png of 8000 x 8000 (a 30000 x 30000
    one: 0.9 MB, 2-3.5 GB in train, evaluate and show) was decoded in full by every reader."""
    png = bomb_png(8000)
    assert len(png) < 200_000
    with pytest.raises(BadImage, match="too_large.*8000x8000"):
        decode_jpeg_rgb(png)
    big = np.zeros((4200, 4200, 3), np.uint8)
    with pytest.raises(BadImage, match="too_large.*4200x4200"):
        decode_jpeg_rgb(encode_jpeg(big, 50))                          # a JPEG's frame header read too
    assert decode_jpeg_rgb(bomb_png(28)).shape == (28, 28)
    assert decode_jpeg_rgb(bomb_png(1024, 3)).shape == (1024, 1024, 3)
    face = data.astronaut()[:300, 100:400]
    assert decode_jpeg_rgb(encode_jpeg(face, 95)).shape == (300, 300, 3)


def test_the_loader_names_the_sample_of_a_bomb():
    from fermodels.data import SampleDecoder

    sample = {"__key__": "k1", "__url__": "shards/train/train-000000.tar", "cls": b"1",
              "jpg": encode_jpeg(np.full((112, 112, 3), 128, np.uint8), 95), "heatmap.png": bomb_png(8000)}
    with pytest.raises(ValueError, match=r"sample 'k1' of .*train-000000.tar: its heatmap.png does not decode "
                                         r"\(too_large"):
        SampleDecoder(("image", "heatmap"), 112)(sample)


def test_declared_size_is_the_size_pil_reads():
    """The size checks read a JPEG's frame header or a PNG's IHDR by hand: they agree with PIL on the
    encoders' usual layouts (APP segments before the frame, progressive, grey, EXIF), and say
    nothing of other bytes."""
    from ferdata.imagefile import declared_size

    face = data.astronaut()[:120, :90]
    made = {"cv2 jpeg": encode_jpeg(face, 90), "png": encode_png(face), "grey png": encode_png(face[..., 0])}
    for name, options in (("progressive", {"progressive": True}), ("exif", {"exif": Image.Exif()}),
                          ("grey", {})):
        buf = io.BytesIO()
        (Image.fromarray(face).convert("L") if name == "grey" else Image.fromarray(face)).save(
            buf, "JPEG", quality=80, **options)
        made[name] = buf.getvalue()
    for name, encoded in made.items():
        assert declared_size(encoded) == Image.open(io.BytesIO(encoded)).size == (90, 120), name
    gif = io.BytesIO()
    Image.fromarray(face).save(gif, "GIF")
    assert declared_size(gif.getvalue()) is None and declared_size(b"\xff\xd8\xff\xe0") is None
    assert declared_size(b"not a picture") is None and declared_size(b"") is None


def _decoy_jpeg(side: int = 5000) -> bytes:
    """A JPEG of side x side that libjpeg decodes whole, with 'FF 00 LL LL' after its SOI (stray
    bytes to libjpeg, skipped one by one) whose 'length' takes a marker walk over the real frame
    header onto a 112 px one hidden in a comment."""
    import cv2

    real = cv2.imencode(".jpg", np.zeros((side, side, 3), np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 50])[1].tobytes()
    i = 2
    while real[i + 1] != 0xC0:
        i += 2 + int.from_bytes(real[i + 2:i + 4], "big")
    n = int.from_bytes(real[i + 2:i + 4], "big")
    sof = real[i:i + 2 + n]
    decoy = bytearray(sof)
    decoy[5:9] = (112).to_bytes(2, "big") * 2
    com = b"\xff\xfe" + (2 + len(decoy)).to_bytes(2, "big")
    body = real[2:i] + sof + com
    return b"\xff\xd8\xff\x00" + (len(body) + 2).to_bytes(2, "big") + body + bytes(decoy) + real[i + 2 + n:]


def test_a_huge_jpeg_is_refused_however_its_markers_are_laid_out():
    """The header walk read 'FF 00' as a marker with a length, as libjpeg does not: a 5000 px JPEG
    declared 112 px to it (a decoy frame header in a comment) and was decoded whole."""
    import cv2

    data = _decoy_jpeg()
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8).shape == (625, 625)
    with pytest.raises(BadImage, match="too_large.*5000x5000"):
        decode_jpeg_rgb(data)


@pytest.mark.parametrize("fault", [TypeError("a bug of ours"), MemoryError()])
def test_a_fault_of_ours_or_the_machines_is_no_undecodable_image(monkeypatch, fault):
    """read_header's handler for PIL's many errors also held this project's own PNG parsing (and a
    MemoryError): a bug there dropped every good PNG as "undecodable" (a recorded drop, no traceback)."""
    import ferdata.imagefile as imagefile

    def raising(data):
        raise fault

    monkeypatch.setattr(imagefile, "_png_orientation_first", raising)
    png = encode_png(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(type(fault)):
        imagefile.read_header(png)
    if isinstance(fault, MemoryError):
        monkeypatch.undo()
        monkeypatch.setattr(Image, "open", raising)
        with pytest.raises(MemoryError):
            imagefile.read_header(png)
