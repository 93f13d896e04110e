"""A model trained on several datasets, one read from its own crops (FERPlus: precropped) beside one placed by
its landmarks (AffectNet: annotations): new faces are aligned as the landmark-placed training faces were."""
from __future__ import annotations

import torch

from fermodels.export import LANDMARK_KEYPOINTS, alignment
from fermodels.predictor import Predictor
from fermodels.runstate import load_checkpoint

POOLED = {"annotations": 144, "precropped": 42}       # train.datasets [affectnet, ferplus]


def test_a_pooled_model_of_landmark_placed_and_precropped_faces_aligns_new_faces_by_their_landmarks(
        tiny_run, tmp_path, caplog):
    state = load_checkpoint(tiny_run["ckpt"] / "best.pt")
    torch.save({**state, "data": {**state["data"], "face_backends": POOLED}}, tmp_path / "pooled.pt")
    with caplog.at_level("INFO", logger="fermodels"):
        predictor = Predictor(tmp_path / "pooled.pt", device="cpu")
    assert predictor.keypoints == "landmarks"
    assert not [r for r in caplog.records if r.levelname == "WARNING" and "own crops" in r.getMessage()]
    assert alignment(state["preprocess"], predictor.card, POOLED)["keypoints_from"] == LANDMARK_KEYPOINTS
    # a model trained on a dataset's crops alone: the detector's keypoints, and the warning, as before
    torch.save({**state, "data": {**state["data"], "face_backends": {"precropped": 42}}}, tmp_path / "crops.pt")
    caplog.clear()
    with caplog.at_level("INFO", logger="fermodels"):
        assert Predictor(tmp_path / "crops.pt", device="cpu").keypoints == "detector"
    assert [r for r in caplog.records if r.levelname == "WARNING" and "own crops" in r.getMessage()]


def test_a_few_detector_placed_faces_do_not_turn_a_landmark_placed_model_to_the_detectors_keypoints():
    """RAF-DB read by ``auto``: a record without its manual file is placed by the embedded detector; that one face
    of 12,271 turned the whole model to RetinaFace's keypoints (0.5-3.9 px of 112 off the manual points' framing
    on the package photos, against 0.4-0.8 by the 68 landmarks' five). Most faces decide, as for the backend."""
    from fermodels.predictor import training_keypoints

    assert training_keypoints({"annotations": 12270, "embedded": 1}) == "landmarks"
    assert training_keypoints({"annotations": 12271, "embedded": 91793}) == "detector"      # RAF-DB with ExpW
    assert training_keypoints({"annotations": 144, "precropped": 42}) == "landmarks"
    assert training_keypoints({"precropped": 42}) == training_keypoints({}) == "detector"
