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


def test_listed_test_image_the_align_stage_drops_is_warned_of(tmp_path, photos, caplog):
    """A listed image whose face the align stage drops (here: the picture changed since detection) left its
    subset scored on fewer images than the published list, with no word from any stage."""
    from ferdata.stages.align import AlignParams, run_align

    root = tmp_path / "RAF-DB"
    (root / "Image" / "original").mkdir(parents=True)
    (root / "EmoLabel").mkdir()
    (root / "lists").mkdir()
    face = cv2.cvtColor(photos["astronaut"], cv2.COLOR_RGB2BGR)
    for name, image in (("test_0001.jpg", face), ("test_0002.jpg", face[:, ::-1])):
        cv2.imwrite(str(root / "Image/original" / name), image)
    (root / "EmoLabel/list_patition_label.txt").write_text("test_0001.jpg 4\ntest_0002.jpg 5\n")
    (root / "lists/occlusion.txt").write_text("test_0001_aligned 3 4\n")
    params = DetectParams(backend="embedded", select="largest", det_size=640, score_threshold=None,
                          model_dir=None, cache_dir=str(tmp_path / "cache"), workers=1)
    reader = open_reader("rafdb", str(root), {"subsets": {"occlusion": "lists/occlusion.txt"}})
    assert run_detect(reader.read(), params, tmp_path / "det").kept == 2
    cv2.imwrite(str(root / "Image/original/test_0001.jpg"), face[::2, ::2])          # changed since detection
    with caplog.at_level("WARNING"):
        report = run_align(tmp_path / "det", AlignParams(112, 0.0, 95, 1, 100, "keep"), tmp_path / "aligned")
    assert report.kept == 1 and dict(report.dropped) == {"source_changed": 1}
    told = [r.getMessage() for r in caplog.records if "subset" in r.getMessage()]
    assert len(told) == 1 and "align: subset 'occlusion' loses 1 of its listed images here" in told[0]
    assert "test_0001" in told[0]
