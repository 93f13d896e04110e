"""The detect and align stages' summary lines name the files that list their drops (audit h110): under
``dvc repro`` the log said ``dropped {'too_small': 1}`` and nothing of where, while `ferdata prepare`'s last
line names each ``dropped.jsonl``."""
from __future__ import annotations

import numpy as np

from ferdata.datasets import open_reader
from ferdata.io import encode_jpeg
from ferdata.stages.align import AlignParams, run_align
from ferdata.stages.detect import DetectParams, run_detect
from tests.ferdata.fixtures_datasets import write_image


def _summary(caplog, stage: str) -> str:
    return next(r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{stage}: kept"))


def test_detect_and_align_summary_lines_name_dropped_jsonl_and_report_json(tmp_path, caplog):
    root = tmp_path / "faces"
    for i in range(3):
        write_image(root / "happy" / f"{i}.png", 100 + i, (64, 64))
    write_image(root / "sad" / "tiny.png", size=(12, 12))                      # too_small: detect's drop
    good = encode_jpeg(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8), 90)
    (root / "sad" / "cut.jpg").write_bytes(good[:len(good) // 2])   # truncated, found by align's decode (precropped)
    params = DetectParams(backend="precropped", select="largest", det_size=640, score_threshold=None,
                          model_dir=None, cache_dir=str(tmp_path / "cache"), workers=1)
    with caplog.at_level("INFO"):
        run_detect(open_reader("folder", str(root), {}).read(), params, tmp_path / "det")
        run_align(tmp_path / "det", AlignParams(112, 0.0, 95, 1, 100, "keep"), tmp_path / "aligned")
    for stage, folder in (("detect", "det"), ("align", "aligned")):
        line = _summary(caplog, stage)
        assert str(tmp_path / folder / "dropped.jsonl") in line and str(tmp_path / folder / "report.json") in line


def test_a_stage_that_drops_nothing_names_no_file(tmp_path, caplog):
    write_image(tmp_path / "faces" / "happy" / "a.png", size=(64, 64))
    params = DetectParams(backend="precropped", select="largest", det_size=640, score_threshold=None,
                          model_dir=None, cache_dir=str(tmp_path / "cache"), workers=1)
    with caplog.at_level("INFO"):
        run_detect(open_reader("folder", str(tmp_path / "faces"), {}).read(), params, tmp_path / "det")
    assert "dropped.jsonl" not in _summary(caplog, "detect")
