"""A HEIC photo (an iPhone's default) cannot be decoded here: it is refused as such, not as "not an image"
(audit h88)."""
from __future__ import annotations

import pytest

from ferdata.io import BadImage, decode_image, probe_image

HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 200


@pytest.mark.parametrize("read", [decode_image, probe_image])
def test_a_heic_photo_is_refused_by_name(read):
    with pytest.raises(BadImage) as e:
        read(HEIC)
    assert e.value.reason == "heic_unsupported" and "convert it to JPEG or PNG" in str(e.value)


def test_other_unknown_bytes_are_still_not_an_image():
    with pytest.raises(BadImage, match="not_an_image"):
        decode_image(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 200)
