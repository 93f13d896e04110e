"""A val or test split holding one face twice (the picture re-encoded, resized or mirrored) scores it twice: the
figures weigh that face double, and a test set's count overstates its faces. Near copies were looked for across
splits only; within val and test they are now named (kept, as published, as align keeps exact copies) (audit h136)."""
from __future__ import annotations

import cv2
import numpy as np

from tests.ferdata.test_near_copies import _counted_is_near, _faces, _happy_folder, _jpeg, _prepared


def test_near_copies_within_one_set_of_faces_are_found_once_each_and_other_faces_are_not():
    from ferdata.nearcopies import NearCopies, face_vector
    faces = _faces(40)
    index = NearCopies()
    for f in faces:
        index.add("f", face_vector(_jpeg(f)))
    small = cv2.resize(cv2.resize(faces[3], (70, 70), interpolation=cv2.INTER_AREA), (100, 100))
    for copy in (_jpeg(faces[1], 60), _jpeg(small), _jpeg(np.ascontiguousarray(faces[5][:, ::-1]))):
        index.add("c", face_vector(copy))
    assert index.earlier() == [-1] * 40 + [1, 3, 5]


def test_a_test_split_holding_a_face_twice_names_it(tmp_path, caplog):
    from ferdata.stages.shard import ShardParams
    from tests.reliability.corpus import build, stage_params
    faces, root = _faces(12), tmp_path / "raw"
    small = cv2.resize(cv2.resize(faces[1], (70, 70), interpolation=cv2.INTER_AREA), (100, 100))
    _happy_folder(root, faces, {"train": range(6, 12), "test": range(6)},
                  {"test/c0.jpg": _jpeg(faces[0], 60), "test/c1.jpg": _jpeg(small),
                   "test/c2.jpg": _jpeg(np.ascontiguousarray(faces[2][:, ::-1])),
                   "test/same.jpg": _jpeg(faces[3])})              # f3's bytes: align's (within_test), not named again
    params = stage_params(tmp_path, backend="precropped")
    params["shard"] = build(ShardParams, "shard", maxcount=8, val_fraction=0.0)
    with caplog.at_level("WARNING", "ferdata.stages.shard"):
        report = _prepared(root, params, tmp_path / "out")
    assert report["notes"].get("near_copies_within_held_out") == {
        "test/test_happy_f0-jpg": "test/test_happy_c0-jpg", "test/test_happy_f1-jpg": "test/test_happy_c1-jpg",
        "test/test_happy_f2-jpg": "test/test_happy_c2-jpg"}
    assert "3 val/test face(s) are near copies of another face of their split" in caplog.text
    assert report["notes"]["test"] == 10                          # kept: the split as published


def test_faces_alike_by_a_side_light_only_are_passed_over_in_float_not_compared_one_by_one(monkeypatch):
    """Low-contrast faces lit strongly from one side correlate at 0.98 by the light alone, so every pair of them passed
    the float32 search and was compared exactly, one pair at a time in Python: a split of such faces took a split's
    pairs' worth (2,000 faces: 45 s; 10k: ~20 min). The lighting ramp is taken out in float32 too (audit h144)."""
    from ferdata.nearcopies import NearCopies, face_vector
    ramp = np.linspace(0, 1, 100)[None, :, None]
    lit = [face_vector(_jpeg(np.clip(f * 0.15 + 255 * 0.85 * ramp, 0, 255).astype(np.uint8))) for f in _faces(60)]
    copy = face_vector(_jpeg(np.clip(_faces(8)[7] * 0.15 + 255 * 0.85 * ramp, 0, 255).astype(np.uint8), 70))
    calls = _counted_is_near(monkeypatch)
    index = NearCopies()
    for v in lit + [copy]:
        index.add("f", v)
    assert index.earlier() == [-1] * 60 + [7]               # different people lit alike: not near; the copy is
    held = NearCopies()
    for v in lit[:30]:
        held.add("h", v)
    assert held.find_many(lit[30:]) == [None] * 30
    assert len(calls) <= 60                                 # of the order of the faces, not of their pairs (~3,000)
