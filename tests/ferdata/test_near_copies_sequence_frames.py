"""CK+'s protocol takes the last frames of each sequence up to its peak (``frames: 3``), consecutive frames of one
recording: alike by nature, each scored by the protocol. The check for near copies within a val or test split named
them as faces scored twice, on every fold of the README's CK+ protocol (two in three of its test faces); a frame
near a face of another sequence is still named (audit h139)."""
from __future__ import annotations

import json

import cv2
import numpy as np

from tests.ferdata.test_near_copies import _faces


def _ckplus(root, faces) -> None:
    """6 people, one sequence of 4 frames each (the face moving a pixel a frame, a little brighter), and S005's
    second sequence, whose peak frame is a copy of its first sequence's peak frame, a little brighter."""
    def frame(face, f):
        return np.clip(np.roll(face, f, axis=1).astype(np.int16) + 2 * f, 0, 255).astype(np.uint8)

    seqs = {(f"S{5 * (s + 1):03d}", "001"): [frame(faces[s], f) for f in range(1, 5)] for s in range(6)}
    seqs[("S005", "002")] = [frame(faces[10], f) for f in range(1, 4)] + [np.clip(frame(faces[0], 4) + 8, 0, 255)]
    for (subject, seq), frames in seqs.items():
        (root / "cohn-kanade-images" / subject / seq).mkdir(parents=True)
        for f, img in enumerate(frames, 1):
            cv2.imwrite(str(root / "cohn-kanade-images" / subject / seq / f"{subject}_{seq}_{f:08d}.png"), img)
        (root / "Emotion" / subject / seq).mkdir(parents=True)
        (root / "Emotion" / subject / seq / f"{subject}_{seq}_{len(frames):08d}_emotion.txt").write_text(
            "   5.0000000e+00\n")


def test_frames_of_one_sequence_are_not_near_copies_but_a_copy_from_another_sequence_is(tmp_path):
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
    named = {}
    for fold in range(3):
        shard = build(ShardParams, "shard", maxcount=8, val_fraction=0.0, folds=3, fold=fold, split_by="subject")
        report = run_shard(tmp_path / "aligned", tmp_path / "derived", shard, tmp_path / f"shards{fold}").to_dict()
        named.update(report["notes"].get("near_copies_within_held_out", {}))
        tested = json.loads((tmp_path / f"shards{fold}" / "test" / "_info.json").read_text())["num_samples"]
        assert tested >= 3
    assert list(named) == ["test/S005_002_00000004"]                  # the copy, not the frames of a sequence
    assert named["test/S005_002_00000004"].startswith("test/S005_001_")   # the first alike frame of the other
