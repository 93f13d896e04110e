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
    assert shown("a\u2028b\u2029c\u061cd.jpg") == "a\\u2028b\\u2029c\\u061cd.jpg"   # line/paragraph separators, ALM


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


# ---- audit h72: the call sites h64 left, which a dataset's or a shard folder's names reach --------------------

def test_sfews_loose_frame_warning_names_a_hostile_frame_inertly(tmp_path, caplog):
    """A frame not named <film>_<clip>_<frame> (the kind a hostile name is) was logged raw."""
    from ferdata.datasets import open_reader
    from tests.ferdata.fixtures_datasets import make_sfew, write_image

    make_sfew(tmp_path)
    write_image(tmp_path / "Train" / "Angry" / "\x1b[2J\x1b]0;pwned\x07.png")       # sorted first
    with caplog.at_level(logging.WARNING):
        list(open_reader("sfew", tmp_path).read())
    said = [r.getMessage() for r in caplog.records if "not named <film>" in r.getMessage()]
    assert said and all(one_inert_line(m) for m in said), said
    assert "e.g. \\x1b[2J\\x1b]0;pwned\\x07.png)" in said[0]


def test_aligns_cannot_read_now_error_names_a_hostile_image_inertly():
    """The `error:` line when the images moved since detect printed the first lost path raw."""
    from ferdata.records import Dropped
    from ferdata.stages.align import _check_readable

    lost = [Dropped("folder", f"k{i}", "unreadable_file", f"{name}: No such file or directory")
            for i, name in enumerate(HOSTILE)]
    with pytest.raises(FileNotFoundError) as err:
        _check_readable(lost, len(lost))
    assert one_inert_line(str(err.value)), repr(str(err.value))


def test_worker_notes_name_hostile_images_inertly():
    """"while processing <image>", the note a worker's error carries to the `error:` line and to a
    traceback, named the image raw (detect's batches, align's rows)."""
    from ferdata.records import FaceRecord
    from ferdata.stages.align import _row_name
    from ferdata.stages.detect_work import Job, batch_name

    for name in HOSTILE:
        rec = FaceRecord(dataset="folder", key="k", path=name, label=0, native_label="")
        job = Job(rec, sha="0" * 64, data=b"", cached=None, cacheable=False)
        assert one_inert_line(batch_name([job])) and one_inert_line(batch_name([job, job]))
        assert one_inert_line(_row_name({"record": {"key": "k", "path": name}}))


def test_predicts_no_landmarks_warning_names_a_hostile_file_inertly(caplog):
    """The sibling of the geometry warning h64 escaped: a face skipped for want of 68 landmarks."""
    from types import SimpleNamespace

    import numpy as np

    from fermodels.predictor import Predictor

    p = Predictor.__new__(Predictor)
    p.backend = SimpleNamespace(name="stub", detect=lambda rgb, record: [object()])
    p.aligned = lambda picture, face: ({}, SimpleNamespace(image=np.zeros((8, 8, 3), np.uint8), lmk68=None))
    p.card = SimpleNamespace(fields=("jpg", "heatmap"), name="stub_model")
    p.align = {"jpeg_quality": 90}
    p.grey = False
    p.keypoints = "detector"
    with caplog.at_level(logging.WARNING):
        for name in HOSTILE:
            assert p.faces(np.zeros((8, 8, 3), np.uint8), name, 0) == ([], 1)
    said = [r.getMessage() for r in caplog.records if "68 landmarks" in r.getMessage()]
    assert len(said) == len(HOSTILE) and all(one_inert_line(m) for m in said), said
