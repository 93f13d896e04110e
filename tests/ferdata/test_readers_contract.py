"""Contract over every registered reader: description, options, and wrong-root errors."""
from __future__ import annotations

from typing import Mapping

import pytest

from ferdata.datasets import READERS, DatasetLayoutError, open_reader
from ferdata.registry import UnknownNameError

ALL = ["affectnet", "ckplus", "expw", "fer2013", "ferplus", "folder", "jaffe", "rafdb", "sfew"]


def test_all_readers_registered():
    assert READERS.names() == ALL
    with pytest.raises(UnknownNameError, match="known: affectnet, ckplus"):
        READERS.get("raf-db")


@pytest.mark.parametrize("name", ALL)
def test_reader_describes_itself(name):
    cls = READERS.get(name)
    assert cls.name == name
    assert cls.expects and "\n" not in cls.expects
    assert isinstance(cls.option_defaults, Mapping)
    assert cls.__doc__


@pytest.mark.parametrize("name", ALL)
def test_missing_root_raises_layout_error(tmp_path, name):
    with pytest.raises(DatasetLayoutError) as err:
        list(open_reader(name, tmp_path / "nope").read())
    assert "(does not exist)" in str(err.value) and "expected:" in str(err.value)


@pytest.mark.parametrize("name", ALL)
def test_wrong_root_names_what_it_found(tmp_path, name):
    (tmp_path / "some_other_dataset.csv").write_text("a,b\n")
    with pytest.raises(DatasetLayoutError) as err:
        list(open_reader(name, tmp_path).read())
    assert "found:    some_other_dataset.csv" in str(err.value)


@pytest.mark.parametrize("name", ALL)
def test_unknown_option_rejected(tmp_path, name):
    with pytest.raises(ValueError, match="unknown option"):
        open_reader(name, tmp_path, {"no_such_option": 1})
