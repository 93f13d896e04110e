"""File names with control characters on the console (audit h64)."""
from __future__ import annotations

import logging
import os

import pytest

from ferdata.datasets.base import DatasetLayoutError
from fermodels.predict import describe, expand_inputs

HOSTILE = ["pin/noface\nferdata: 0 face(s); all clean.jpg", "pin/esc\x1b[31mred\x1b]0;title\x07.jpg",
           "pin/cr\rdone.jpg", "pin/" + os.fsdecode(b"bad\xff.jpg"), "pin/rlo\u202egpj.exe"]


def one_inert_line(text: str) -> bool:
    return not any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 or c == "\u202e" or 0xd800 <= ord(c) < 0xe000
                   for c in text)


def test_shown_escapes_what_a_terminal_acts_on_and_keeps_the_rest():
    from ferdata.errors import shown

    assert shown("a\nb\x1b[31m\r\t\u202e") == "a\\nb\\x1b[31m\\r\\t\\u202e"
    assert shown(os.fsdecode(b"caf\xe9.jpg")) == "caf\\udce9.jpg"
    assert shown("café #%*?[\"' x.jpg") == "café #%*?[\"' x.jpg"


def test_predicts_summary_line_names_hostile_files_on_one_line():
    """A file named with a newline printed a second, made-up line after the summary (a fake "all
    clean"), ESC sequences recoloured the terminal or set its title, a carriage return overwrote it."""
    summary = [{"source": s, "frame": 0, "faces": 0} for s in HOSTILE]
    summary += [{"source": s, "frame": 0, "faces": 0, "problem": "not_an_image"} for s in HOSTILE]
    line = describe(summary, most=len(HOSTILE))
    assert one_inert_line(line), repr(line)
    assert "pin/noface\\nferdata" in line and "pin/cr\\rdone.jpg" in line


def test_predicts_warnings_name_hostile_files_inertly(tmp_path, caplog):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "ok.jpg").write_bytes(b"")
    (folder / "notes\x1b[2K\r\nINFO: done.txt").write_text("x")
    with caplog.at_level(logging.WARNING):
        expand_inputs([folder])
    assert caplog.records and all(one_inert_line(r.getMessage()) for r in caplog.records), caplog.text


def test_a_layout_error_lists_hostile_names_inertly(tmp_path):
    (tmp_path / "x\x1b]0;pwned\x07").mkdir()
    with pytest.raises(DatasetLayoutError) as err:
        raise DatasetLayoutError("folder", tmp_path, ["<class>/ folders"])
    found = [ln for ln in str(err.value).splitlines() if "found:" in ln]
    assert found and one_inert_line(found[0])
