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
