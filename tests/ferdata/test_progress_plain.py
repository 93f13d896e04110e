"""Progress off a terminal: a plain line now and then (review h52)."""
from __future__ import annotations

import logging


def test_progress_off_a_terminal_is_a_plain_line_now_and_then(monkeypatch, caplog):
    """Off a terminal (CI logs, `dvc repro > log`) a stage of hours printed nothing until its end."""
    import io
    import sys

    import ferdata.progress as progress_module

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr(progress_module, "PLAIN_EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger="ferdata.progress")
    assert list(progress_module.progress(range(3), desc="detect", unit="img", total=3)) == [0, 1, 2]
    lines = [r.getMessage() for r in caplog.records if r.name == "ferdata.progress"]
    assert len(lines) == 3 and lines[0].startswith("detect: 1 of 3 img so far (") and " left)" in lines[0]
    assert not any("\r" in line for line in lines)


def test_progress_off_a_terminal_counts_a_list_given_without_total(monkeypatch, caplog):
    """The shard stage passes its keys (a list) without ``total``: tqdm counts it on a terminal, the
    plain line said neither "of N" nor the time left (review h53)."""
    import io
    import sys

    import ferdata.progress as progress_module

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr(progress_module, "PLAIN_EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger="ferdata.progress")
    assert list(progress_module.progress(["a", "b"], desc="shard train", unit="sample")) == ["a", "b"]
    lines = [r.getMessage() for r in caplog.records if r.name == "ferdata.progress"]
    assert lines[0].startswith("shard train: 1 of 2 sample so far (") and " left)" in lines[0]
    assert list(progress_module.progress(iter("ab"), desc="x")) == ["a", "b"]     # no len: counted only
