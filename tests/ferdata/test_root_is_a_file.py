"""A file given as a dataset's root (audit h110): the error said ``found: (nothing)``; it names the file, and
for an archive says to unpack it first."""
from __future__ import annotations

import pytest

from ferdata.datasets import open_reader
from ferdata.datasets.base import DatasetLayoutError
from tests.ferdata.fixtures_datasets import write_image


def _error(root) -> str:
    with pytest.raises(DatasetLayoutError) as err:
        list(open_reader("folder", root).read())
    return str(err.value)


def test_an_image_given_as_the_root_is_named_with_the_folder_it_lies_in(tmp_path):
    text = _error(write_image(tmp_path / "faces" / "happy" / "a.jpg"))
    assert "(nothing)" not in text and "found:    a.jpg, a file" in text
    assert f"a.jpg lies in {tmp_path / 'faces' / 'happy'}" in text


@pytest.mark.parametrize("name", ["faces.zip", "faces.tar.gz"])
def test_an_archive_given_as_the_root_is_to_be_unpacked_first(tmp_path, name):
    (tmp_path / name).write_bytes(b"PK\x03\x04")
    text = _error(tmp_path / name)
    assert f"found:    {name}, an archive" in text and f"unpack {name} first" in text
