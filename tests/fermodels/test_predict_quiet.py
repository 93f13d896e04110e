"""`ferdata predict` logs no line per image unless verbose (review h52)."""
from __future__ import annotations

import logging


def test_predict_tells_no_line_per_image_unless_verbose(tiny_run, tmp_path, caplog):
    """`ferdata predict` on a folder logged one INFO line per image (per scored frame of a video):
    10 000 lines for 10 000 images, the summary line after them saying the same in one."""
    import cv2
    import numpy as np

    from fermodels.predict import run_predict
    from fermodels.predictor import Predictor

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"p{i}.jpg"), np.full((64, 64, 3), 40 * i, np.uint8))
    predictor = Predictor(tiny_run["ckpt"] / "best.pt", backend="embedded", device="cpu")
    caplog.set_level(logging.INFO, logger="fermodels")
    run_predict(predictor, sorted(tmp_path.glob("p*.jpg")), batch_size=4, every=1)
    assert "face(s)" not in caplog.text
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="fermodels")
    run_predict(predictor, sorted(tmp_path.glob("p*.jpg")), batch_size=4, every=1)
    assert caplog.text.count(": 0 face(s)") == 3
