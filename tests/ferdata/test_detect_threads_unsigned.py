"""``detect.options.threads`` says how fast a backend runs, never what it finds (``FaceBackend.UNSIGNED``):
it must not reach what the detect stage records, which the align report, every split's ``_info.json``
and the checkpoints carry on (another value there made ``select`` pin new hashes and training start over)."""
from __future__ import annotations

import json

import pytest

from ferdata.layout import FACES, REPORT
from ferdata.records import FaceRecord
from ferdata.stages.detect import DetectParams, run_detect

pytestmark = pytest.mark.usefixtures("offline")


def params(tmp_path, options: dict) -> DetectParams:
    return DetectParams(backend="embedded", select="largest", det_size=640, score_threshold=None, model_dir=None,
                        cache_dir=str(tmp_path / "cache"), workers=1, options=options)


def test_threads_stay_out_of_the_recorded_settings(tmp_path):
    assert params(tmp_path, {"threads": 4}).settings() == params(tmp_path, {}).settings()


def test_threads_do_not_change_the_detect_output(tmp_path, photos):
    import cv2

    path = tmp_path / "a.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(photos["astronaut"][:300, 100:400], cv2.COLOR_RGB2BGR))
    recs = [FaceRecord("t", "k0", str(path), 1, "x")]
    run_detect(recs, params(tmp_path, {}), tmp_path / "one")
    run_detect(recs, params(tmp_path, {"threads": 2}), tmp_path / "two")
    assert (tmp_path / "one" / FACES).read_bytes() == (tmp_path / "two" / FACES).read_bytes()
    settings = [json.loads((tmp_path / d / REPORT).read_text())["settings"] for d in ("one", "two")]
    assert settings[0] == settings[1]


def test_crossval_groups_folds_whatever_their_detect_threads():
    """Folds run on two machines with other thread counts are one cross-validation."""
    from fermodels.crossval import _shaping

    mine = {"backend": "embedded", "workers": 2, "options": {"threads": 4}}
    theirs = {"backend": "embedded", "workers": 8, "options": {}}
    assert _shaping("detect", mine) == _shaping("detect", theirs)
    datasets = {"ck": {"reader": "ckplus", "root": "raw/CK+", "detect": {"options": {"threads": 2}}}}
    assert _shaping("datasets", datasets) == _shaping("datasets", {"ck": {**datasets["ck"], "detect": {"options": {}}}})


@pytest.mark.parametrize("detector, recorded", [("sfd", False), ("dlib", False), ("embedded", True)])
def test_fan_score_threshold_is_recorded_only_where_it_filters(tmp_path, detector, recorded):
    """face_alignment's sfd and dlib detectors keep their own score filters (the threshold is out of
    their cache key): recording it anyway gave their identical faces new shard hashes and a new training."""
    def settings(threshold):
        return DetectParams(backend="face_alignment", select="largest", det_size=640, score_threshold=threshold,
                            model_dir=None, cache_dir=str(tmp_path), workers=1,
                            options={"detector": detector}).settings()
    assert (settings(0.3) != settings(None)) is recorded
    assert ("score_threshold" in settings(0.3)["options"]) is recorded


def test_crossval_groups_face_alignment_folds_whatever_their_sfd_threshold():
    """sfd and dlib keep their own score filters: folds that differ only in detect.score_threshold found the
    same faces and are one cross-validation; with the embedded detector the threshold filters, and splits them."""
    from fermodels.crossval import _shaping

    def detect(detector, threshold):
        return _shaping("detect", {"backend": "face_alignment", "score_threshold": threshold,
                                   "options": {"detector": detector, "threads": 2}})
    assert detect("sfd", 0.3) == detect("sfd", 0.9) and detect("dlib", None) == detect("dlib", 0.5)
    assert detect("embedded", 0.3) != detect("embedded", 0.9)
