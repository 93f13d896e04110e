"""What a selection pins of a split (ferdata.selection): the k-fold assignment its folds were dealt
from, and no params hash."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ferdata.selection import SelectionError, read_info, selection

TRAIN = ("train", "val")


def _prepare(data: Path, name: str, **extra) -> Path:
    shards = data / name / "shards"
    for split in ("train", "val", "test"):
        (shards / split).mkdir(parents=True, exist_ok=True)
        info = {"split": split, "shards": [{"name": f"{split}-000000.tar", "count": 3, "sha256": f"{name}{split}"}],
                **extra}
        (shards / split / "_info.json").write_text(json.dumps(info))
    return shards


def test_a_k_fold_datasets_selection_pins_which_data_its_folds_were_dealt_from(tmp_path):
    _prepare(tmp_path / "data", "ck", fold_assignment="abc123")
    _prepare(tmp_path / "data", "raf")
    chosen = selection(tmp_path / "data", ["ck", "raf"], TRAIN)["datasets"]
    assert chosen["ck"]["fold_assignment"] == "abc123" and "fold_assignment" not in chosen["raf"]


def test_read_info_reads_a_splits_description_and_names_what_is_wrong(tmp_path):
    shards = _prepare(tmp_path / "data", "a")
    assert read_info(shards, "val")["split"] == "val"
    with pytest.raises(FileNotFoundError, match=r"nope/_info.json not found: prepare the dataset first"):
        read_info(shards, "nope")
    (shards / "val" / "_info.json").write_text("")
    with pytest.raises(SelectionError, match=r"val/_info.json is not JSON"):
        read_info(shards, "val")
    (shards / "val" / "_info.json").write_text("3")
    with pytest.raises(SelectionError, match=r"val/_info.json holds a int, not a split's description"):
        read_info(shards, "val")


def test_the_params_hash_is_no_part_of_a_splits_pin(tmp_path):
    _prepare(tmp_path / "a" / "data", "x", params_hash="one")
    _prepare(tmp_path / "b" / "data", "x", params_hash="two")
    pins = [selection(tmp_path / r / "data", ["x"], TRAIN)["datasets"]["x"]["splits"] for r in "ab"]
    assert pins[0] == pins[1]
