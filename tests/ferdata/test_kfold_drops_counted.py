"""Under k-fold (CK+, JAFFE: no official split) every picture is tested once across the folds, so a picture that
detect or align dropped is missing from the pooled figures as an official test picture is from a benchmark's:
that one is counted (``dropped_in_preparation``), these were in no fold and said nowhere but the stages' reports
(audit h136). A copy dropped as a copy (``duplicate_image``) is no loss: its picture is kept once."""
from __future__ import annotations

import dataclasses
import json

from ferdata.datasets import open_reader
from ferdata.layout import DROPPED_BEFORE_FOLDS
from ferdata.params import load_params
from ferdata.records import FaceRecord
from ferdata.stages.align import AlignParams, run_align
from ferdata.stages.derive import DeriveParams, run_derive
from ferdata.stages.detect import DetectParams, run_detect
from ferdata.stages.shard import ShardParams, run_shard
from tests.fermodels.helpers import REPO, stage_params, write_affectnet


def _unsplit(records):
    """AffectNet's records as a dataset without splits of 5 people, two losing their landmarks (detect drops them),
    one listed twice under another key (align keeps the picture once)."""
    for i, r in enumerate(r for r in records if isinstance(r, FaceRecord)):
        r = dataclasses.replace(r, split="", subject=f"S{i % 5}")
        yield dataclasses.replace(r, landmarks=None, box=None) if i in (3, 8) else r
        if i == 5:
            yield dataclasses.replace(r, key=r.key + "copy")


def kfold_shards(tmp_path, fold: int, folds: int = 3):
    """The fixture prepared once under ``tmp_path`` (detect, align, derive) and sharded as fold ``fold`` of
    ``folds``: the shards dir."""
    params = load_params(REPO / "params.yaml")
    if not (tmp_path / "derived").is_dir():
        write_affectnet(tmp_path / "raw", 3, 1, range(7))
        records = _unsplit(open_reader("affectnet", tmp_path / "raw", {"protocol": "affectnet7"}).read())
        run_detect(records, stage_params(DetectParams, params["detect"], backend="annotations", workers=1,
                                         cache_dir=str(tmp_path / "cache")), tmp_path / "detect")
        run_align(tmp_path / "detect", stage_params(AlignParams, params["align"], workers=1), tmp_path / "aligned")
        run_derive(tmp_path / "aligned", stage_params(DeriveParams, params["derive"], workers=1),
                   tmp_path / "derived")
    shard = stage_params(ShardParams, params["shard"], folds=folds, fold=fold, val_fraction=0.0, split_by="subject")
    run_shard(tmp_path / "aligned", tmp_path / "derived", shard, tmp_path / f"shards{fold}")
    return tmp_path / f"shards{fold}"


def test_pictures_dropped_before_k_fold_are_recorded_with_the_test_split(tmp_path, caplog):
    params = load_params(REPO / "params.yaml")
    for fold in range(3):
        with caplog.at_level("WARNING", "ferdata.stages.shard"):
            shards = kfold_shards(tmp_path, fold)
        assert json.loads((tmp_path / "aligned" / "report.json").read_text())["dropped"] == {"duplicate_image": 1}
        info = {s: json.loads((shards / s / "_info.json").read_text()) for s in ("train", "test")}
        assert info["test"].get(DROPPED_BEFORE_FOLDS) == {"no_landmarks": 2}
        assert DROPPED_BEFORE_FOLDS not in info["train"]
    assert "2 of this dataset's pictures were dropped in preparation (no_landmarks 2) and are in no fold" in caplog.text
    carved = stage_params(ShardParams, params["shard"], val_fraction=0.2, test_fraction=0.2)   # no k-fold: as before
    run_shard(tmp_path / "aligned", tmp_path / "derived", carved, tmp_path / "carved")
    assert DROPPED_BEFORE_FOLDS not in json.loads((tmp_path / "carved" / "test" / "_info.json").read_text())
