"""Videos in the containers phones and camcorders write (3GP, AVCHD's MPEG-TS .mts/.m2ts, MPEG-PS .mpg) are read as
videos: given by name they were decoded as a still image and reported ``not_an_image``, and in a folder skipped
as neither image nor video (audit h88)."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from fermodels.predict import expand_inputs, iter_frames


@pytest.mark.parametrize("name, fourcc", [("cam.mts", "mp4v"), ("CAM.M2TS", "mp4v"), ("phone.3gp", "mp4v"),
                                          ("old.mpg", "mp4v")])
def test_phone_and_camcorder_videos_are_read_frame_by_frame(tmp_path, name, fourcc, caplog):
    made = tmp_path / "made.mp4"                 # OpenCV writes MP4; the container's name is what predict goes by
    writer = cv2.VideoWriter(str(made), cv2.VideoWriter_fourcc(*fourcc), 5, (64, 64))
    for k in range(4):
        writer.write(np.full((64, 64, 3), 50 * k, np.uint8))
    writer.release()
    path = tmp_path / "in" / name
    path.parent.mkdir()
    made.rename(path)
    with caplog.at_level(logging.WARNING):
        assert expand_inputs([tmp_path / "in"]) == [path]
    assert not caplog.records
    assert [(i, p is not None, why) for i, p, why in iter_frames(path, 2)] == [(0, True, ""), (2, True, "")]
