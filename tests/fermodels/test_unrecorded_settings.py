"""Shards that record no align/derive settings trained beside shards that do (review h52)."""
from __future__ import annotations

import logging

import pytest

from fermodels.shardsplit import open_split
from fermodels.trainparams import shards_preprocess
from tests.fermodels.helpers import copy_shards, unrecorded


UNRECORDED = "shards of an earlier version"


def test_the_unrecorded_warning_names_the_datasets_that_record_nothing(tiny_shards, preprocess, tmp_path, caplog):
    old = copy_shards(tiny_shards, tmp_path / "old" / "shards", unrecorded)
    new = copy_shards(tiny_shards, tmp_path / "new" / "shards", lambda d: None)
    caplog.set_level(logging.WARNING, logger="fermodels")
    assert shards_preprocess(open_split([old, new], "train"), preprocess) == preprocess
    said = [r.getMessage() for r in caplog.records if UNRECORDED in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"{old}: ") and str(new) not in said[0]


def test_a_dataset_recording_other_settings_beside_an_unrecorded_one_is_refused(tiny_shards, preprocess, tmp_path):
    """params.yaml's settings went into the checkpoint unchecked against the settings the other
    dataset does record (another align.padding: inference would crop its faces otherwise)."""
    old = copy_shards(tiny_shards, tmp_path / "old" / "shards", unrecorded)

    def padded(d: dict) -> None:
        d["preprocess"]["align"]["padding"] = 0.25

    new = copy_shards(tiny_shards, tmp_path / "new" / "shards", padded)
    with pytest.raises(ValueError, match=r"new/shards: .*'padding': 0.25.* other align/derive settings"):
        shards_preprocess(open_split([old, new], "train"), preprocess)
