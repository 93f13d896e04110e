"""What a stage logs at its end: counts a person reads, not the digests report.json keeps."""
from __future__ import annotations

import logging
import re

from ferdata.layout import CONTENT
from ferdata.stages.align import run_align
from tests.reliability.corpus import stage_params


def test_align_logs_its_counts_and_notes_without_the_chunks_digest(bad_corpus_run, tmp_path, caplog):
    """Its last line carried the 64-hex-digit digest of its chunks among the notes."""
    src, _ = bad_corpus_run
    caplog.set_level(logging.INFO, logger="ferdata")
    report = run_align(src / "detect", stage_params(tmp_path)["align"], tmp_path / "aligned")
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("align: kept"))
    assert f"kept {report.kept}," in line and CONTENT in report.notes
    assert CONTENT not in line and not re.search(r"[0-9a-f]{64}", line)
