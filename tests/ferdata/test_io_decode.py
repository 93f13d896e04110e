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
