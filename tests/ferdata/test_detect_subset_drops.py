"""A test subset's listed image that the detect stage drops (no face) is counted in a warning, as README
says of every listed image not kept: the reader's own warning sees only images missing or excluded."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from ferdata.datasets import open_reader
from ferdata.stages.detect import DetectParams, run_detect

pytestmark = pytest.mark.usefixtures("offline")


def test_listed_test_image_without_a_face_is_warned_of(tmp_path, photos, caplog):
    root = tmp_path / "RAF-DB"
    (root / "Image" / "original").mkdir(parents=True)
    (root / "EmoLabel").mkdir()
    (root / "lists").mkdir()
    cv2.imwrite(str(root / "Image/original/test_0001.jpg"), cv2.cvtColor(photos["astronaut"], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(root / "Image/original/test_0002.jpg"), np.full((256, 256, 3), 128, np.uint8))   # no face
    (root / "EmoLabel/list_patition_label.txt").write_text("test_0001.jpg 4\ntest_0002.jpg 5\n")
    (root / "lists/occlusion.txt").write_text("test_0001_aligned 3 4\ntest_0002_aligned 1 2\n")
    params = DetectParams(backend="embedded", select="largest", det_size=640, score_threshold=None,
                          model_dir=None, cache_dir=str(tmp_path / "cache"), workers=1)
    reader = open_reader("rafdb", str(root), {"subsets": {"occlusion": "lists/occlusion.txt"}})
    with caplog.at_level("WARNING"):
        report = run_detect(reader.read(), params, tmp_path / "det")
    assert report.kept == 1 and dict(report.dropped) == {"no_face": 1}
    assert "subset 'occlusion' loses 1 of its listed images here" in caplog.text
    assert "test_0002" in caplog.text
