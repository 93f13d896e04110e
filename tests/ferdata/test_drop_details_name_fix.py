"""A drop's detail names the limit it broke or what the user can do (audit h110): a truncated file said only
``JPEG 128x128 RGB``, a tiny one ``12x12`` without the 16 px minimum, a huge PNG ``only JPEG decodes reduced``."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ferdata.io import MAX_PIXELS, MIN_SIDE, BadImage, decode_image, encode_jpeg, probe_image
from tests.ferdata.test_io_decode import bomb_png


def _png(side: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(out, "PNG")
    return out.getvalue()


def test_a_truncated_file_says_it_ends_early_and_to_copy_it_again():
    jpg = encode_jpeg(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8), 90)
    with pytest.raises(BadImage) as e:
        decode_image(jpg[:len(jpg) // 2])
    assert e.value.reason == "truncated"
    assert "JPEG 128x128" in e.value.detail and "ends early" in e.value.detail and "copy it again" in e.value.detail


def test_a_tiny_image_names_the_minimum_side():
    with pytest.raises(BadImage) as e:
        probe_image(_png(12))
    assert e.value.reason == "too_small" and e.value.detail.startswith("12x12") and f"{MIN_SIDE} px" in e.value.detail


def test_a_huge_png_names_the_limit_and_what_to_do():
    with pytest.raises(BadImage) as e:
        probe_image(bomb_png(7000))
    assert e.value.reason == "too_large" and str(MAX_PIXELS) in e.value.detail
    assert "shrink it" in e.value.detail and "save it as JPEG" in e.value.detail
