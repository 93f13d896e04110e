"""CK+'s 640x490 frames prepared with the precropped backend: their faces are marked by 68 landmarks alone, no
box, so the not_a_face_crop rule never judged them, and every frame was taken whole, squashed into the crop with
the face half the size a crop frames it, without a word (audit h129). A warning names them now (none dropped: the
scale is measured on CK+ only); a picture that is a crop, with its landmarks, is not named."""
from __future__ import annotations

import logging

import cv2
import numpy as np

from ferdata.datasets import open_reader
from ferdata.faces.embedded import EmbeddedBackend
from ferdata.geometry import align_face
from ferdata.stages.detect import DetectParams, run_detect
from tests.ferdata.fixtures_datasets import write_text


def _sequence(root, subject, grey, lmk):
    d = root / "cohn-kanade-images" / subject / "001"
    d.mkdir(parents=True)
    cv2.imwrite(str(d / f"{subject}_001_00000001.png"), grey)
    write_text(root / "Landmarks" / subject / "001" / f"{subject}_001_00000001_landmarks.txt",
               "".join(f"   {x:.7e}   {y:.7e}\n" for x, y in lmk))
    write_text(root / "Emotion" / subject / "001" / f"{subject}_001_00000001_emotion.txt", "   5.0000000e+00\n")


def test_ckplus_frames_under_precropped_are_named_and_a_crop_is_not(tmp_path, caplog):
    from skimage import data

    rgb = np.ascontiguousarray(data.astronaut()[..., :3])
    face = EmbeddedBackend().detect(rgb)[0]
    lmk = np.asarray(face.lmk68, np.float64)
    (x0, y0), (x1, y1) = lmk.min(0), lmk.max(0)
    s = 220.0 / (y1 - y0)                                   # a CK+ frame: the face under half its height
    m = np.array([[s, 0, 320 - s * (x0 + x1) / 2], [0, s, 250 - s * (y0 + y1) / 2]])
    frame = cv2.cvtColor(cv2.warpAffine(rgb, m, (640, 490), borderMode=cv2.BORDER_REPLICATE), cv2.COLOR_RGB2GRAY)
    crop = align_face(rgb, np.asarray(face.kps5, np.float32), 112, 0.0, lmk.astype(np.float32), "black")
    root = tmp_path / "ckplus"
    _sequence(root, "S100", frame, lmk @ m[:, :2].T + m[:, 2])
    _sequence(root, "S101", cv2.cvtColor(crop.image, cv2.COLOR_RGB2GRAY), crop.lmk68)
    params = DetectParams(backend="precropped", select="largest", det_size=640, score_threshold=None,
                          model_dir=None, cache_dir=str(tmp_path / "cache"), workers=1)
    with caplog.at_level(logging.WARNING, "ferdata.stages.detect"):
        report = run_detect(open_reader("ckplus", str(root), {"frames": 1}).read(), params, tmp_path / "det")
    assert report.kept == 2 and not report.dropped
    told = [r.getMessage() for r in caplog.records if "look like whole frames" in r.getMessage()]
    assert len(told) == 1 and told[0].startswith("detect: 1 face(s) marked by 68 landmarks"), caplog.text
    assert "S100" in told[0] and "S101" not in told[0]
