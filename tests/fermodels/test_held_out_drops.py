"""Official test pictures dropped in preparation are counted by split (detect's and align's reports), written into
the split's ``_info.json`` and reported by evaluate: its figures are over the faces kept, where a paper scores every
picture of the split, and nothing said how many were left out (audit h117)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from ferdata.records import FaceRecord
from tests.fermodels.helpers import build_shards, ferdata_quiet


def _losing_test_faces():
    """Two test records lose their landmarks (no face placed: a detect drop), a third gets landmarks on one spot
    (an align drop); a training record loses its landmarks too (not counted: no published split to score)."""
    seen = {"train": 0, "test": 0}

    def edit(record):
        if not isinstance(record, FaceRecord) or record.split not in seen:
            return record
        seen[record.split] += 1
        if (record.split, seen[record.split]) in {("test", 1), ("test", 2), ("train", 1)}:
            return dataclasses.replace(record, landmarks=None, box=None)
        if (record.split, seen[record.split]) == ("test", 3):
            return dataclasses.replace(record, landmarks=np.full((68, 2), 50.0, np.float32))
        return record
    return edit


def test_official_test_pictures_dropped_in_preparation_are_counted_and_evaluate_says_so(
        tmp_path, tiny_run, caplog, one_thread):
    from fermodels.evaluate import evaluate
    from tests.fermodels.test_grey_faces import _eval_params

    with ferdata_quiet():
        shards = build_shards(tmp_path / "lossy", edit=_losing_test_faces())
    base = shards.parent
    detect_notes = json.loads((base / "detect" / "report.json").read_text())["notes"]
    assert detect_notes["held_out_dropped"] == {"test": {"no_landmarks": 2}}
    align_notes = json.loads((base / "aligned" / "report.json").read_text())["notes"]
    assert align_notes["held_out_dropped"] == {"test": {"bad_landmarks": 1, "no_landmarks": 2}}
    test_info = json.loads((shards / "test" / "_info.json").read_text())
    assert test_info["dropped_in_preparation"] == {"bad_landmarks": 1, "no_landmarks": 2}
    for split in ("train", "val"):
        assert "dropped_in_preparation" not in json.loads((shards / split / "_info.json").read_text())

    with caplog.at_level("WARNING", logger="fermodels"):
        metrics = evaluate(tiny_run["ckpt"] / "best.pt", shards, _eval_params(), tmp_path / "eval",
                           datasets=["lossy"])
    assert metrics["dropped_in_preparation"] == {"bad_landmarks": 1, "no_landmarks": 2}
    assert metrics["num_samples"] == test_info["num_samples"] == 14 - 3        # 2 a class, 3 dropped
    said = [r.getMessage() for r in caplog.records if "dropped in preparation" in r.getMessage()]
    assert len(said) == 1 and "3 of lossy's official test pictures" in said[0], said
    assert "bad_landmarks 1, no_landmarks 2" in said[0]
    assert f"({base / 'detect'}, {base / 'aligned'})" in said[0]        # where they are listed, wherever that is
    whole = evaluate(tiny_run["ckpt"] / "best.pt", tiny_run["shards"], _eval_params(), tmp_path / "eval2",
                     datasets=["tiny"])
    assert whole["dropped_in_preparation"] == {}           # a split that lost nothing


def test_the_drop_warning_says_how_to_get_the_lists_where_only_the_shards_are_here(
        tmp_path, tiny_run, caplog, one_thread):
    """docs/sharing.md's machine B pulls only shard@<name>: the detect and align folders the warning names are
    not there, so it says how to fetch them instead of naming folders that do not exist."""
    import shutil

    from fermodels.evaluate import evaluate
    from tests.fermodels.test_grey_faces import _eval_params

    with ferdata_quiet():
        shards = build_shards(tmp_path / "lossy", edit=_losing_test_faces())
    pulled = tmp_path / "b" / "data" / "lossy" / "shards"
    shutil.copytree(shards, pulled)                      # machine B: `dvc pull shard@lossy`, nothing beside
    with caplog.at_level("WARNING", logger="fermodels"):
        evaluate(tiny_run["ckpt"] / "best.pt", pulled, _eval_params(), tmp_path / "eval", datasets=["lossy"])
    said = [r.getMessage() for r in caplog.records if "dropped in preparation" in r.getMessage()]
    assert len(said) == 1, said
    assert str(pulled.parent / "detect") not in said[0]
    assert "dvc pull detect@lossy align@lossy" in said[0]


def test_pictures_in_no_fold_reach_each_folds_metrics_and_the_cross_validation_table(
        tmp_path, tiny_run, caplog, one_thread):
    """Under k-fold the dataset's pictures detect or align dropped are in no fold: each fold's test ``_info.json``
    records them (``dropped_before_folds``), evaluate warns and writes them into metrics.json, and the
    cross-validation table and its text say the pooled figures leave them out (audit h136)."""
    import numpy as np

    from ferdata.classes import CLASSES
    from fermodels.crossval import FoldRun, Series, describe
    from fermodels.evaluate import evaluate
    from tests.ferdata.test_kfold_drops_counted import kfold_shards
    from tests.fermodels.test_grey_faces import _eval_params

    runs = {}
    for fold in range(2):
        with ferdata_quiet():
            shards = kfold_shards(tmp_path, fold, folds=2)
        with caplog.at_level("WARNING", logger="fermodels"):
            metrics = evaluate(tiny_run["ckpt"] / "best.pt", shards, _eval_params(), tmp_path / f"eval{fold}",
                               datasets=["unsplit"])
        assert metrics["dropped_before_folds"] == {"no_landmarks": 2}
        assert metrics["dropped_in_preparation"] == {}           # no official test split: none of its own
        runs[fold] = FoldRun(f"f{fold}", "c", fold, {}, metrics, (fold + 1) * np.eye(len(CLASSES), dtype=np.int64))
    said = [r.getMessage() for r in caplog.records if r.name.startswith("fermodels") and "in no fold" in r.getMessage()]
    assert len(said) == 2 and "2 of unsplit's pictures were dropped in preparation (no_landmarks 2)" in said[0]
    series = Series({"train": {"model": "cmnet"}}, 2, runs, [])
    assert series.table()["dropped_before_folds"] == {"no_landmarks": 2}
    assert "in no fold: 2 picture(s) dropped in preparation (no_landmarks 2)" in describe(series)
