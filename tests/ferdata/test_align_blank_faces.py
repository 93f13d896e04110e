"""FER2013 holds all-black rows (and near-flat pictures that are no face). The precropped backend takes any
picture as a face, so the align stage kept them without a word: trained on under some label, scored in the test
split. They stay (an official test set is scored whole) but are counted and named."""
from __future__ import annotations

import json
import logging

from ferdata.datasets import open_reader
from ferdata.params import load_params
from ferdata.stages.align import AlignParams, run_align
from ferdata.stages.detect import DetectParams, run_detect
from tests.ferdata.fixtures_datasets import pixel_text, write_text
from tests.fermodels.helpers import REPO, stage_params


def test_flat_faces_of_a_precropped_dataset_are_counted_and_named(tmp_path, caplog):
    rows = [("3", pixel_text(40), "Training"), ("0", " ".join(["0"] * 2304), "Training"),
            ("6", " ".join(["0"] * 2304), "PrivateTest"), ("2", pixel_text(90), "PrivateTest")]
    lines = "".join(f"{e},{p},{u}\n" for e, p, u in rows)
    write_text(tmp_path / "raw" / "fer2013.csv", "emotion,pixels,Usage\n" + lines)
    params = load_params(REPO / "params.yaml")
    opened = open_reader("fer2013", tmp_path / "raw")
    run_detect(opened.read(), stage_params(DetectParams, params["detect"], backend="precropped", workers=1,
                                           cache_dir=str(tmp_path / "cache")), tmp_path / "detect",
               opened.official_splits())
    with caplog.at_level(logging.WARNING, logger="ferdata.stages.align"):
        run_align(tmp_path / "detect", stage_params(AlignParams, params["align"], workers=1), tmp_path / "aligned")
    report = json.loads((tmp_path / "aligned" / "report.json").read_text())
    assert report["kept"] == 4 and report["notes"]["faces"] == {"blank": 2}
    assert "2 face(s) are one flat colour" in caplog.text and "00001, 00002" in caplog.text
