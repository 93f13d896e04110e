"""File names with control characters in ``ferdata predict``'s outputs (audit h64)."""
from __future__ import annotations

import csv

from fermodels.predictions import Results, written_as_scored


def _row(source: str) -> dict:
    return {"source": source, "frame": 0, "face": 0, "box": [1.0, 2.0, 3.0, 4.0], "score": 0.99,
            "expression": "Happy", "Neutral": 0.25, "Happy": 0.75}


def test_a_file_name_holding_a_carriage_return_stays_one_csv_row(tmp_path):
    """A bare ``\\r`` in a name was written unquoted (Python < 3.11.9 quotes only the line terminator's
    characters): every CSV reader ended the row there, one face's row read as two broken ones."""
    names = ["in/cr\rdone.jpg", "in/plain.jpg", "in/both\r\nx.jpg"]
    results = Results()
    with written_as_scored(results, ("Neutral", "Happy"), tmp_path / "out.csv", None, {}):     # as predict writes
        results.add([_row(n) for n in names])
    with open(tmp_path / "out.csv", newline="", encoding="utf-8") as f:
        read = list(csv.DictReader(f))
    assert [r["source"] for r in read] == names
    assert [r["Happy"] for r in read] == ["0.75"] * 3
