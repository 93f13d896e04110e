"""Photos as phones and browsers name them (audit h107): a JPEG saved as ``.jfif`` (Windows' browsers)
or ``.jpe`` is read; an iPhone's ``IMG_0001.HEIC`` is refused as HEIC, with the fix, as one named
``.jpg`` already was (h88), not as "not one of .bmp, .jpeg, ..."."""
from __future__ import annotations

from pathlib import Path

from ferdata.io import decode_image
from tests.ferdata.fixtures_datasets import read_all, write_image

HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 200


def test_a_jpeg_named_jfif_or_jpe_is_read(tmp_path):
    for name in ("a.jfif", "b.JPE"):
        write_image(tmp_path / "sad" / "x.jpg").rename(tmp_path / "sad" / name)
    write_image(tmp_path / "happy" / "c.jpg")
    records, drops, _ = read_all("folder", tmp_path)
    assert sorted(Path(r.path).name for r in records.values()) == ["a.jfif", "b.JPE", "c.jpg"] and not drops
    assert decode_image((tmp_path / "sad" / "a.jfif").read_bytes()).rgb.shape == (24, 24, 3)


def test_an_iphone_heic_photo_is_dropped_as_heic_with_the_fix(tmp_path):
    write_image(tmp_path / "happy" / "a.jpg")
    (tmp_path / "happy" / "IMG_0001.HEIC").write_bytes(HEIC)
    _, drops, items = read_all("folder", tmp_path)
    assert drops == {"heic_unsupported": 1}
    assert "IMG_0001.HEIC" in items[0].detail and "convert it to JPEG or PNG" in items[0].detail
