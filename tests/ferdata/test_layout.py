"""A chunked stage output's identity (ferdata.layout.output_digest) and the report parts a stage reads."""
from __future__ import annotations

import json

import pytest

from ferdata.layout import REPORT, output_digest, report_inputs, report_notes, report_settings


def _stage(folder, report: dict, chunks: dict[str, bytes]):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / REPORT).write_text(json.dumps(report))
    for name, data in chunks.items():
        (folder / name).write_bytes(data)
    return folder


def test_output_digest_follows_the_report_and_the_chunks_names_and_sizes(tmp_path):
    """Another report, or a chunk of another size, is another output; other files in the folder are not."""
    report = {"counts": {"kept": 2}, "settings": {"size": 112}}
    chunks = {"aligned-000000.tar": b"a" * 1024, "aligned-000001.tar": b"b" * 512}
    base = output_digest(_stage(tmp_path / "base", report, chunks), "aligned")
    assert output_digest(_stage(tmp_path / "again", report, chunks), "aligned") == base      # deterministic
    other_report = _stage(tmp_path / "report", {**report, "settings": {"size": 224}}, chunks)
    assert output_digest(other_report, "aligned") != base
    grown = _stage(tmp_path / "grown", report, {**chunks, "aligned-000001.tar": b"b" * 1536})
    assert output_digest(grown, "aligned") != base
    renamed = _stage(tmp_path / "renamed", report,
                     {"aligned-000000.tar": b"a" * 1024, "aligned-000002.tar": b"b" * 512})
    assert output_digest(renamed, "aligned") != base
    beside = _stage(tmp_path / "beside", report, {**chunks, "derived-000000.tar": b"c" * 512, "notes.txt": b"x"})
    assert output_digest(beside, "aligned") == base                  # only the prefix's chunks count


def test_a_report_part_that_is_null_or_absent_reads_as_empty(tmp_path):
    """report_settings/inputs/notes give {} for a part recorded as null, missing, or no report at all."""
    folder = _stage(tmp_path / "null", {"settings": None, "inputs": None, "notes": None}, {})
    assert report_settings(folder) == report_inputs(folder) == report_notes(folder) == {}
    assert report_settings(tmp_path / "nowhere") == {}
    folder = _stage(tmp_path / "given", {"settings": {"size": 112}, "notes": {"cross_split_copies": "drop"}}, {})
    assert report_settings(folder) == {"size": 112} and report_notes(folder) == {"cross_split_copies": "drop"}
    assert report_inputs(folder) == {}


@pytest.mark.parametrize("text", ["\0" * 100, "[1]", '{"stage": "detect", "settings": {'],
                         ids=["zero-filled", "not an object", "cut short"])
def test_a_damaged_report_is_named_with_the_fix(tmp_path, text):
    """The align stage reads the detect stage's report.json for its settings: a damaged one stopped it with
    "error: Expecting value: line 1 column 1 (char 0)" (no file named), or an AttributeError traceback."""
    (tmp_path / REPORT).write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{REPORT} is damaged .*re-run the stage"):
        report_settings(tmp_path)
