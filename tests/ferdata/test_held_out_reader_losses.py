"""A listed picture of an official val or test split that the reader finds missing was dropped before any split,
so ``held_out_dropped`` (and evaluate's ``dropped_in_preparation``) left it out: the figures ran over fewer
pictures than the protocol's with no word. Each reader's drop now carries the record's split, and the losses
among them (:data:`ferdata.records.READ_LOSSES`) count; the protocol's own drops (a class left out) do not."""
from __future__ import annotations

import json
import os

import pytest

from ferdata.layout import HELD_OUT_DROPS
from ferdata.params import load_params
from ferdata.records import READ_LOSSES
from ferdata.stages.detect import DetectParams, run_detect
from ferdata.datasets import open_reader
from tests.ferdata.fixtures_datasets import (make_affectnet_csv, make_affectnet_npy, make_folder_splits,
                                             make_ferplus_folders, make_rafdb, make_sfew, read_all)
from tests.fermodels.helpers import REPO, stage_params, write_affectnet


def _remove(*rels):
    def edit(root):
        for rel in rels:
            (root / rel).unlink()
    return edit


def _dangling(rel):
    def edit(root):
        os.symlink(root / "nowhere.jpg", root / rel)
    return edit


CASES = {
    "affectnet_csv": ("affectnet", make_affectnet_csv, _remove("Manually_Annotated_Images/3/v0.jpg"), "test"),
    "affectnet_npy": ("affectnet", make_affectnet_npy, _remove("val_set/images/0.jpg"), "test"),
    "rafdb": ("rafdb", make_rafdb, _remove("Image/original/test_0002.jpg", "Image/aligned/test_0002_aligned.jpg"),
              "test"),
    "ferplus_folders": ("ferplus", make_ferplus_folders, _remove("FER2013Valid/fer0000002.png"), "val"),
    "folder": ("folder", make_folder_splits, _dangling("test/calm/gone.jpg"), "test", {"mapping": {"calm": "Neutral"}}),
    "sfew": ("sfew", make_sfew, _dangling("Val/Sad/gone.png"), "test"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_readers_missing_held_out_picture_carries_its_split(tmp_path, case):
    reader, make, edit, split, *options = CASES[case]
    root = make(tmp_path / "raw")
    _, before, _ = read_all(reader, root, *options)
    edit(root)
    records, after, drops = read_all(reader, root, *options)
    lost = [d for d in drops if d.reason == "missing_image" and d.split == split]
    assert after["missing_image"] == before["missing_image"] + 1 and len(lost) == 1, drops
    assert lost[0].reason in READ_LOSSES
    assert all(r.split for r in records.values()) and all(d.split in ("", "train", "val", "test") for d in drops)


def test_detect_counts_a_missing_test_picture_but_not_a_class_the_protocol_leaves_out(tmp_path):
    raw = tmp_path / "raw"
    write_affectnet(raw, 2, 2, range(8))            # class 7 (contempt): affectnet7 leaves it out of every split
    (raw / "Manually_Annotated_Images" / "2" / "c3_001.jpg").unlink()       # a validation (test) picture
    (raw / "Manually_Annotated_Images" / "1" / "c3_000.jpg").unlink()       # a training picture
    reader = open_reader("affectnet", raw, {"protocol": "affectnet7"})
    params = stage_params(DetectParams, load_params(REPO / "params.yaml")["detect"], backend="annotations",
                          workers=1, cache_dir=str(tmp_path / "cache"))
    report = run_detect(reader.read(), params, tmp_path / "detect")
    assert report.dropped["missing_image"] == 2 and report.dropped["label_contempt_excluded"] == 4
    notes = json.loads((tmp_path / "detect" / "report.json").read_text())["notes"]
    assert notes.get(HELD_OUT_DROPS) == {"test": {"missing_image": 1}}
    lines = [json.loads(line) for line in (tmp_path / "detect" / "dropped.jsonl").read_text().splitlines()]
    assert {(d["reason"], d["split"]) for d in lines} == {("missing_image", "test"), ("missing_image", "train"),
                                                          ("label_contempt_excluded", "test"),
                                                          ("label_contempt_excluded", "train")}


def test_a_rafdb_test_row_without_its_label_carries_its_split(tmp_path):
    """A damaged row (a test picture's line cut after its name) is a read loss whose split the name tells."""
    root = make_rafdb(tmp_path / "raw")
    labels = root / "EmoLabel" / "list_patition_label.txt"
    labels.write_text(labels.read_text().replace("test_0002.jpg 2", "test_0002.jpg"))
    _, _, drops = read_all("rafdb", root)
    (cut,) = [d for d in drops if d.key == "test_0002"]
    assert (cut.reason, cut.split) == ("malformed_row", "test") and cut.reason in READ_LOSSES
