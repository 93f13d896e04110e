"""A video frame's row says when the frame is shown (its timestamp), not only its index: a phone's
video has a variable frame rate, where index / fps is not the frame's time (audit h88)."""
from __future__ import annotations

import csv
import io

import cv2
import numpy as np

from fermodels.predict import iter_frames
from fermodels.predictions import csv_text

VFR_MS = [0.0, 40.0, 80.0, 2000.0, 2040.0, 5000.0]       # a pause, as a phone records one


class _VfrCapture:
    """A cv2.VideoCapture of a variable-frame-rate video: its fps (frames / duration) says nothing of when each
    frame is shown; CAP_PROP_POS_MSEC after a read is that frame's timestamp, as OpenCV's FFmpeg backend gives it."""

    def __init__(self) -> None:
        self.at = -1

    def isOpened(self) -> bool:
        return True

    def get(self, prop: int) -> float:
        if prop == cv2.CAP_PROP_FRAME_COUNT:
            return float(len(VFR_MS))
        if prop == cv2.CAP_PROP_POS_MSEC:
            return VFR_MS[self.at]
        return 1.2                                         # CAP_PROP_FPS: the average

    def read(self):
        if self.at + 1 >= len(VFR_MS):
            return False, None
        self.at += 1
        return True, np.zeros((8, 8, 3), np.uint8)

    def grab(self) -> bool:
        return self.read()[0]

    def release(self) -> None:
        pass


def test_each_frame_of_a_variable_frame_rate_video_carries_its_timestamp(tmp_path, monkeypatch):
    monkeypatch.setattr(cv2, "VideoCapture", lambda _: _VfrCapture())
    got = [(i, p.time) for i, p, _ in iter_frames(tmp_path / "phone.mp4", 2)]
    assert got == [(0, 0.0), (2, 0.08), (4, 2.04)]


def test_a_constant_rate_video_frames_times_are_index_over_fps(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 64))
    for k in range(6):
        writer.write(np.full((64, 64, 3), 40 * k, np.uint8))
    writer.release()
    assert [(i, p.time) for i, p, _ in iter_frames(path, 2)] == [(0, 0.0), (2, 0.4), (4, 0.8)]


def test_the_csv_has_a_time_column_empty_for_still_images():
    rows = [{"source": s, "frame": f, "face": 0, "box": [1.0, 2.0, 3.0, 4.0], "score": 0.9, "expression": "Happy",
             "Happy": 1.0, "time": t} for s, f, t in (("a.jpg", 0, None), ("v.mp4", 3, 2.04))]
    header, still, frame = list(csv.reader(io.StringIO(csv_text(rows, ("Happy",), header=True))))
    assert header[-1] == "time" and still[-1] == "" and frame[-1] == "2.04"
