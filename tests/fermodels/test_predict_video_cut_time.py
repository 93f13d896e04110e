"""A video cut short says in its summary where its rows end (the time of its last frame scored): the entry
had the frame count only, so a reader of the .json could not tell which part of the clip was scored (audit h106)."""
from __future__ import annotations

import types

import cv2
import numpy as np

from fermodels.predict import describe, run_predict
from fermodels.predictor import FaceSample


class _OneFaceEach:
    """A predictor that finds one face in every picture (what is tested is the run's bookkeeping)."""

    card = types.SimpleNamespace(per_sample=True, name="stub")
    classes = ("Neutral", "Happy")
    backend = types.SimpleNamespace(name="stub")

    def faces(self, picture, source, frame=0):
        return [FaceSample(source, frame, 0, (1.0, 2.0, 3.0, 4.0), 0.9, {}, picture.time)], 0

    def probabilities(self, faces):
        return np.full((len(faces), 2), 0.5, np.float32)


def test_a_video_cut_short_says_when_its_scored_frames_end(tmp_path):
    writer = cv2.VideoWriter(str(tmp_path / "full.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 64))
    for k in range(40):
        writer.write(np.full((64, 64, 3), 5 * k, np.uint8))
    writer.release()
    whole = (tmp_path / "full.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(whole[: len(whole) * 3 // 4])
    rows, summary = run_predict(_OneFaceEach(), [tmp_path / "cut.avi"], batch_size=4, every=10)
    cut = summary[-1]
    assert cut["problem"] == "video_cut_short" and cut["time"] == rows[-1]["time"] == 2.0, summary
    assert f"{tmp_path / 'cut.avi'} (video_cut_short, scored to 2 s)" in describe(summary)
