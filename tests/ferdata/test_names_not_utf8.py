"""File names that are not UTF-8 and DVC (audit h64)."""
from __future__ import annotations

import logging
import os

from ferdata.datasets.base import open_reader
from ferdata.records import FaceRecord


def test_a_name_that_is_not_utf8_is_read_and_named_in_a_warning(tmp_path, caplog):
    """Such a name is read (as its bytes), but DVC cannot hash the root that holds it: `dvc add` and
    `dvc repro` stopped with "'utf-8' codec can't encode character '\\udce9'" and no file named;
    the reader now says which file and how to rename it."""
    (tmp_path / "Happy").mkdir()
    (tmp_path / "Happy" / os.fsdecode(b"caf\xe9.jpg")).write_bytes(b"")
    (tmp_path / "Happy" / "ok.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        items = list(open_reader("folder", tmp_path).read())
    assert sum(isinstance(i, FaceRecord) for i in items) == 2
    warned = [r.getMessage() for r in caplog.records if "not UTF-8" in r.getMessage()]
    assert len(warned) == 1 and "caf\\udce9.jpg" in warned[0] and "1 file name(s)" in warned[0]


def test_utf8_names_give_no_such_warning(tmp_path, caplog):
    (tmp_path / "Happy").mkdir()
    (tmp_path / "Happy" / "café.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        list(open_reader("folder", tmp_path).read())
    assert not [r for r in caplog.records if "not UTF-8" in r.getMessage()]
