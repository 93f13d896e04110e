"""A recipe's dataset name that params.yaml lacks (`affectnet7`, where README's example names `affectnet`) was
told to be prepared with `ferdata prepare affectnet7 --root ...`, which fails: no reader has that name. The fix
told is one that works for any name (audit h116)."""
from __future__ import annotations

import pytest

from ferdata.selection import check_run_datasets


def test_a_missing_dataset_is_told_a_fix_that_works_for_a_name_no_reader_has(tmp_path):
    with pytest.raises(KeyError) as err:
        check_run_datasets(["affectnet7"], None, {"affectnet": {"reader": "affectnet", "root": "raw/AffectNet"}},
                           tmp_path)
    said = str(err.value)
    assert "ferdata prepare affectnet7 --root" not in said
    assert "add it to datasets (affectnet7: {reader: ..., root: ...})" in said
