"""A dataset unzipped from an archive made on a Mac holds ``__MACOSX/`` beside its folders, with a
``._x`` resource fork for every file: no data, read as the hidden files in it are (audit h107)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.ferdata.fixtures_datasets import read_all, write_image


@pytest.mark.parametrize("splits", [False, True])
def test_a_mac_zips_metadata_folder_is_a_counted_hidden_folder_not_a_class(tmp_path, splits):
    """Refused before: "unknown class name(s) ['__MACOSX'] ... fix: add an explicit mapping" at the root,
    and with split folders "mixes split folders with other folders ['__MACOSX']"."""
    top = tmp_path / "train" if splits else tmp_path
    write_image(top / "happy" / "a.jpg")
    write_image(top / "sad" / "b.jpg")
    (tmp_path / "__MACOSX" / top.relative_to(tmp_path) / "happy").mkdir(parents=True)
    (tmp_path / "__MACOSX" / top.relative_to(tmp_path) / "happy" / "._a.jpg").write_bytes(b"\0\5\26\7")
    records, drops, items = read_all("folder", tmp_path)
    assert sorted(r.native_label for r in records.values()) == ["happy", "sad"]
    assert drops == {"hidden_file": 1}
    assert [Path(d.detail.split(":")[0]).name for d in items] == ["__MACOSX"]


def test_one_inside_a_class_folder_is_counted_as_hidden(tmp_path):
    write_image(tmp_path / "happy" / "a.jpg")
    write_image(tmp_path / "happy" / "__MACOSX" / "._a.jpg")
    records, drops, _ = read_all("folder", tmp_path)
    assert list(records) == ["happy_a-jpg"] and drops == {"hidden_file": 1}
