"""What CHANGES.md says of 1004590 (audit h121): a test split's ``dropped_in_preparation`` changes what
``runs/select/evaluate.json`` pins, not ``train.json`` (train and val: ``SPLITS_READ``), so a test split's count
alone does not start training over."""
from __future__ import annotations

import json

from ferdata.layout import DROPPED_BEFORE
from ferdata.selection import SPLITS_READ, selection
from tests.fermodels.helpers import build_shards, ferdata_quiet
from tests.fermodels.test_held_out_drops import _losing_test_faces


def test_a_test_splits_drop_count_changes_evaluate_json_not_train_json(tmp_path):
    with ferdata_quiet():
        shards = build_shards(tmp_path / "data" / "lossy", edit=_losing_test_faces())
    info_path = shards / "test" / "_info.json"
    counted = json.loads(info_path.read_text())
    assert DROPPED_BEFORE in counted
    before = {s: selection(tmp_path / "data", ["lossy"], s) for s in (SPLITS_READ, ("test",))}
    info_path.write_text(json.dumps({k: v for k, v in counted.items() if k != DROPPED_BEFORE}))   # as before 1004590
    after = {s: selection(tmp_path / "data", ["lossy"], s) for s in (SPLITS_READ, ("test",))}
    assert before[SPLITS_READ] == after[SPLITS_READ]                # train.json: the same bytes
    assert before[("test",)] != after[("test",)]                    # evaluate.json: another digest
