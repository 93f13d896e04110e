"""Under k-fold the val split is a fold dealt from every record, not the dataset's official val split: the official
val pictures detect dropped were written into the val fold's ``_info.json`` (evaluate then warned of "official val
pictures" that fold never held) (audit h120)."""
from __future__ import annotations

import dataclasses
import json

from ferdata.datasets import open_reader
from ferdata.layout import DROPPED_BEFORE, HELD_OUT_DROPS
from ferdata.params import load_params
from ferdata.records import FaceRecord
from ferdata.stages.align import AlignParams, run_align
from ferdata.stages.derive import DeriveParams, run_derive
from ferdata.stages.detect import DetectParams, run_detect
from ferdata.stages.shard import ShardParams, run_shard
from tests.fermodels.helpers import REPO, stage_params, write_affectnet


def _official_val_losing_one(records):
    """AffectNet's test records as an official val split (a train/val dataset: k-fold applies), one losing its
    landmarks (a detect drop)."""
    lost = False
    for r in records:
        if isinstance(r, FaceRecord) and r.split == "test":
            r = dataclasses.replace(r, split="val", subject=r.key)
            if not lost:
                lost, r = True, dataclasses.replace(r, landmarks=None, box=None)
        elif isinstance(r, FaceRecord):
            r = dataclasses.replace(r, subject=r.key)
        yield r


def test_official_val_drops_are_not_said_of_a_k_fold_val_split(tmp_path):
    params = load_params(REPO / "params.yaml")
    write_affectnet(tmp_path / "raw", 3, 2, range(7))
    records = _official_val_losing_one(open_reader("affectnet", tmp_path / "raw", {"protocol": "affectnet7"}).read())
    run_detect(records, stage_params(DetectParams, params["detect"], backend="annotations", workers=1,
                                     cache_dir=str(tmp_path / "cache")), tmp_path / "detect")
    run_align(tmp_path / "detect", stage_params(AlignParams, params["align"], workers=1), tmp_path / "aligned")
    run_derive(tmp_path / "aligned", stage_params(DeriveParams, params["derive"], workers=1), tmp_path / "derived")
    assert json.loads((tmp_path / "aligned" / "report.json").read_text())["notes"][HELD_OUT_DROPS] == {
        "val": {"no_landmarks": 1}}
    shard = stage_params(ShardParams, params["shard"], folds=3, fold=0, val_fraction=0.1, split_by="subject")
    run_shard(tmp_path / "aligned", tmp_path / "derived", shard, tmp_path / "shards")
    val = json.loads((tmp_path / "shards" / "val" / "_info.json").read_text())
    assert val.get("fold_assignment")                       # k-fold: val is a fold of every record
    assert DROPPED_BEFORE not in val
