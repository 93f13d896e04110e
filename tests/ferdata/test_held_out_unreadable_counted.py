"""An official test picture that detect cannot read (``unreadable_file``) is a held-out drop like one without a face:
it was left out of ``held_out_dropped`` (audit h120)."""
from __future__ import annotations

import dataclasses
import json

from ferdata.datasets import open_reader
from ferdata.layout import HELD_OUT_DROPS
from ferdata.params import load_params
from ferdata.records import FaceRecord
from ferdata.stages.detect import DetectParams, run_detect
from tests.fermodels.helpers import REPO, stage_params, write_affectnet


def test_an_unreadable_official_test_picture_is_counted_by_split(tmp_path):
    write_affectnet(tmp_path / "raw", 2, 2, range(7))
    firsts = {"test": 0, "train": 0}

    def gone(record):
        if isinstance(record, FaceRecord) and record.split in firsts and not firsts[record.split]:
            firsts[record.split] = 1
            return dataclasses.replace(record, path=str(tmp_path / "raw" / "missing.jpg"))
        return record
    records = map(gone, open_reader("affectnet", tmp_path / "raw", {"protocol": "affectnet7"}).read())
    params = stage_params(DetectParams, load_params(REPO / "params.yaml")["detect"], backend="annotations",
                          workers=1, cache_dir=str(tmp_path / "cache"))
    report = run_detect(records, params, tmp_path / "detect")
    assert report.dropped["unreadable_file"] == 2
    notes = json.loads((tmp_path / "detect" / "report.json").read_text())["notes"]
    assert notes.get(HELD_OUT_DROPS) == {"test": {"unreadable_file": 1}}
