"""A lab dataset's shots of one person are alike by nature and its protocol scores each: CK+'s last frames of a
sequence up to its peak (``frames: 3``), the neutral first frames of a person's sequences (``neutral_frames``),
JAFFE's repeated shots. The check for near copies within a val or test split named them as faces scored twice, on
every fold of the README's CK+ protocol (two in three of its test faces; audit h139, review h142); a face near
another person's is still named."""
from __future__ import annotations

import cv2
import numpy as np

from tests.ferdata.test_near_copies import _counted_is_near, _faces, _jpeg


def _frame(face: np.ndarray, f: int) -> np.ndarray:
    """The face moved ``f`` pixels and a little brighter: a later frame of one recording."""
    return np.clip(np.roll(face, f, axis=1).astype(np.int16) + 2 * f, 0, 255).astype(np.uint8)


def _ckplus(root, faces) -> None:
    """6 people, one sequence of 4 frames each, and S005's second sequence: its frames alike to its first's (the
    same person, the same session)."""
    seqs = {(f"S{5 * (s + 1):03d}", "001"): [_frame(faces[s], f) for f in range(1, 5)] for s in range(6)}
    seqs[("S005", "002")] = [np.clip(_frame(faces[0], f) + 6, 0, 255) for f in range(1, 5)]
    for (subject, seq), frames in seqs.items():
        (root / "cohn-kanade-images" / subject / seq).mkdir(parents=True)
        for f, img in enumerate(frames, 1):
            cv2.imwrite(str(root / "cohn-kanade-images" / subject / seq / f"{subject}_{seq}_{f:08d}.png"), img)
        (root / "Emotion" / subject / seq).mkdir(parents=True)
        (root / "Emotion" / subject / seq / f"{subject}_{seq}_{len(frames):08d}_emotion.txt").write_text(
            "   5.0000000e+00\n")


def test_a_persons_frames_and_sequences_are_not_named_as_near_copies_on_any_fold(tmp_path):
    from ferdata.datasets import open_reader
    from ferdata.stages.align import run_align
    from ferdata.stages.derive import run_derive
    from ferdata.stages.detect import run_detect
    from ferdata.stages.shard import ShardParams, run_shard
    from tests.reliability.corpus import build, stage_params

    _ckplus(tmp_path / "raw", _faces(12))
    params = stage_params(tmp_path, backend="precropped")
    opened = open_reader("ckplus", tmp_path / "raw", {"frames": 3})
    run_detect(opened.read(), params["detect"], tmp_path / "detect", opened.official_splits())
    run_align(tmp_path / "detect", params["align"], tmp_path / "aligned")
    run_derive(tmp_path / "aligned", params["derive"], tmp_path / "derived")
    tested = 0
    for fold in range(3):
        shard = build(ShardParams, "shard", maxcount=8, val_fraction=0.0, folds=3, fold=fold, split_by="subject")
        report = run_shard(tmp_path / "aligned", tmp_path / "derived", shard, tmp_path / f"shards{fold}").to_dict()
        assert report["notes"].get("near_copies_within_held_out") is None, (fold, report["notes"])
        tested += report["notes"]["test"]
    assert tested == 7 * 3                               # every frame of the 7 sequences scored once


def test_a_face_near_another_persons_is_named_and_one_near_its_own_persons_is_not():
    from ferdata.nearcopies import face_vector
    from ferdata.stages.shard import _within

    faces = _faces(4)
    pictures = {"a1": _jpeg(faces[0]), "a2": _jpeg(_frame(faces[0], 1)), "b1": _jpeg(faces[0], 60),
                "c1": _jpeg(faces[2])}
    split = {key: ((key.encode(), ()), face_vector(data)) for key, data in pictures.items()}
    people = {"a1": "A", "a2": "A", "b1": "B", "c1": "C"}
    assert _within("test", split) == {"test/a2": "test/a1", "test/b1": "test/a1"}        # no one named: all pairs
    assert _within("test", split, people=people) == {"test/b1": "test/a1"}


def test_faces_near_only_their_own_persons_are_passed_over_without_comparing_every_earlier_face(monkeypatch):
    """A test split of 40 people's shots, each near the shots before it of its own person: each was then compared, one
    by one in Python, with every earlier face of the split (a split's pairs: 3,000 faces took 34 s, 10k several
    minutes); the faces of other people are left out with the bounds, as any other face is (audit h144)."""
    from ferdata.nearcopies import face_vector
    from ferdata.stages import shard
    faces, people = {}, {}
    for p, face in enumerate(_faces(40)):
        for f in range(8):
            img = np.clip(np.roll(face, f % 3, axis=1).astype(np.int16) + 2 * f, 0, 255).astype(np.uint8)
            faces[f"p{p:03d}_{f:03d}"] = ((f"p{p}_{f}".encode(), ()), face_vector(_jpeg(img)))
            people[f"p{p:03d}_{f:03d}"] = f"P{p}"
    faces["p999_000"], people["p999_000"] = ((b"copy", ()), faces["p007_005"][1].copy()), "P999"  # another person's
    calls = _counted_is_near(monkeypatch, shard)
    found = shard._within("test", faces, people=people)
    assert list(found) == ["test/p999_000"] and found["test/p999_000"].startswith("test/p007_")   # the copy only
    assert len(calls) <= 4 * len(faces)                 # of the order of the faces, not of their pairs (~50k)
