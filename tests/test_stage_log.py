"""What a stage script logs: its own lines, not a library's housekeeping (review h52)."""
from __future__ import annotations

import logging
from pathlib import Path


def test_a_stage_script_keeps_matplotlibs_info_lines_out_of_its_log(tmp_path, monkeypatch):
    """The evaluate stage's log said "matplotlib.font_manager: generated new fontManager" on a
    machine's first run: a library's housekeeping, at the stage's INFO level."""
    import sys
    import types

    from pipeline import _args

    (tmp_path / "params.yaml").write_text((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pipeline/x.py", "a"])
    monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace(__doc__="Usage: python -m pipeline.x A"))
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    logger = logging.getLogger("matplotlib")
    monkeypatch.setattr(logger, "level", logger.level)              # restored after the test
    monkeypatch.setattr(logging.root, "level", logging.INFO)        # a stage's level (basicConfig: handlers here)
    _args.setup(check_all=False)
    assert not logger.isEnabledFor(logging.INFO)
