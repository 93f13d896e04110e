"""Under k-fold a dataset with official train and val splits but no test split (a folder of train/ and val/) is dealt
into folds whole, its train records too: a train picture detect dropped is in no fold as a val one is, but only
val's were counted in ``dropped_before_folds`` (5 pictures lost, 1 said; audit h139). One with an official test
split keeps it and its train drops stay uncounted, its report as before."""
from __future__ import annotations

import json

import cv2

from ferdata.layout import DROPPED_BEFORE_FOLDS, HELD_OUT_DROPS
from tests.ferdata.test_near_copies import _faces, _jpeg


def _folder(root, splits: dict[str, int], broken: dict[str, int]) -> None:
    """``splits[s]`` face crops of 6 people in ``<s>/happy/``, the first ``broken[s]`` bytes no decoder reads."""
    faces = iter(_faces(40))
    for split, n in splits.items():
        (root / split / "happy").mkdir(parents=True)
        for i in range(n):
            data = b"not a picture" if i < broken.get(split, 0) else _jpeg(cv2.resize(next(faces), (112, 112)))
            (root / split / "happy" / f"P{i % 6}_{split}{i}.jpg").write_bytes(data)


def _prepared(root, out, folds: int) -> tuple[dict, dict]:
    from ferdata.datasets import open_reader
    from ferdata.stages.align import run_align
    from ferdata.stages.derive import run_derive
    from ferdata.stages.detect import run_detect
    from ferdata.stages.shard import ShardParams, run_shard
    from tests.reliability.corpus import build, stage_params
    params = stage_params(out, backend="precropped")
    opened = open_reader("folder", root, {"subject": r"^(P\d)_"})
    run_detect(opened.read(), params["detect"], out / "detect", opened.official_splits())
    run_align(out / "detect", params["align"], out / "aligned")
    run_derive(out / "aligned", params["derive"], out / "derived")
    shard = build(ShardParams, "shard", maxcount=8, val_fraction=0.0, folds=folds, fold=0, split_by="subject")
    run_shard(out / "aligned", out / "derived", shard, out / "shards")
    info = {s: json.loads((out / "shards" / s / "_info.json").read_text()) for s in ("train", "test")}
    return json.loads((out / "aligned" / "report.json").read_text())["notes"].get(HELD_OUT_DROPS, {}), info


def test_train_pictures_dropped_from_a_train_val_dataset_are_counted_in_no_fold(tmp_path):
    _folder(tmp_path / "raw", {"train": 12, "val": 6}, {"train": 4, "val": 1})
    held, info = _prepared(tmp_path / "raw", tmp_path / "out", folds=3)
    assert held == {"train": {"not_an_image": 4}, "val": {"not_an_image": 1}}
    assert info["test"][DROPPED_BEFORE_FOLDS] == {"not_an_image": 5}
    assert "dropped_in_preparation" not in info["train"]


def test_a_dataset_with_a_test_split_counts_no_train_drops(tmp_path):
    _folder(tmp_path / "raw", {"train": 12, "test": 6}, {"train": 4, "test": 1})
    held, info = _prepared(tmp_path / "raw", tmp_path / "out", folds=3)    # keeps its test split
    assert held == {"test": {"not_an_image": 1}}
    assert info["test"]["dropped_in_preparation"] == {"not_an_image": 1}
    assert DROPPED_BEFORE_FOLDS not in info["test"]
