"""A pipe or device under an image's name, in readers that list images by name (audit h64)."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from ferdata.datasets.base import open_reader
from ferdata.records import FaceRecord, load_image_bytes
from ferdata.stages.detect import DetectParams, run_detect
from tests.ferdata.fixtures_datasets import make_ckplus


def _within(seconds: float, fn, fifo: Path | None = None):
    """``fn()``'s result or exception, failing the test (instead of hanging it) when it takes longer;
    a reader stuck on ``fifo`` is released by opening it for writing."""
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:      # noqa: BLE001
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        if fifo is not None:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))     # the reader gets EOF and goes on
            t.join(seconds)
        pytest.fail(f"still running after {seconds} s (waiting on a pipe?)")
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_a_pipe_named_as_an_image_is_an_error_not_a_wait(tmp_path):
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    rec = FaceRecord(dataset="d", key="x", path=str(fifo), label=0, native_label="0")
    with pytest.raises(OSError, match="not a regular file"):
        _within(10, lambda: load_image_bytes(rec), fifo)


def test_a_ckplus_frame_that_is_a_pipe_is_a_recorded_drop(tmp_path):
    """CK+ lists a sequence's frames by name: a pipe among them hung `ferdata prepare ckplus` for ever."""
    root = make_ckplus(tmp_path / "ck")
    records = [r for r in open_reader("ckplus", root).read() if isinstance(r, FaceRecord)]
    fifo = Path(records[0].path)
    fifo.unlink()
    os.mkfifo(fifo)
    params = DetectParams(backend="precropped", select="largest", det_size=640, score_threshold=None,
                          model_dir=None, cache_dir=str(tmp_path / "cache"), workers=1)
    report = _within(60, lambda: run_detect(records, params, tmp_path / "detect"), fifo)
    assert report.dropped["unreadable_file"] == 1
    assert "not a regular file" in report.examples["unreadable_file"][0]["detail"]
    assert report.kept == len(records) - 1


def test_out_of_descriptors_stops_detect_instead_of_dropping_good_images(tmp_path, monkeypatch):
    """EMFILE (or ENOMEM, a network mount gone) is the machine's state, not the image's: dropped as
    unreadable_file, good images went missing from a run that ended well (exit 0, shards written)."""
    import errno

    import ferdata.stages.detect_work as work

    root = make_ckplus(tmp_path / "ck")
    records = [r for r in open_reader("ckplus", root).read() if isinstance(r, FaceRecord)]
    real = work.load_image_bytes

    def out_of_descriptors(rec):
        if rec.key == records[-1].key:
            raise OSError(errno.EMFILE, "Too many open files", rec.path)
        return real(rec)

    monkeypatch.setattr(work, "load_image_bytes", out_of_descriptors)
    params = DetectParams(backend="precropped", select="largest", det_size=640, score_threshold=None,
                          model_dir=None, cache_dir=str(tmp_path / "cache"), workers=1)
    with pytest.raises(OSError, match="Too many open files") as err:
        run_detect(records, params, tmp_path / "detect")
    assert any("not the image's" in note for note in err.value.__notes__)
    assert not (tmp_path / "detect").exists()          # no output that looks complete


def test_a_ckplus_label_file_that_is_a_pipe_is_a_drop_not_a_wait(tmp_path):
    """The image fix left the readers' own text files: a pipe named ``*_emotion.txt`` hung the CK+ reader
    (and so `ferdata prepare ckplus`) for ever (audit h70)."""
    from ferdata.records import Dropped

    root = make_ckplus(tmp_path / "ck")
    label = sorted(root.rglob("*_emotion.txt"))[0]
    label.unlink()
    os.mkfifo(label)
    items = _within(30, lambda: list(open_reader("ckplus", root).read()), label)
    bad = [d for d in items if isinstance(d, Dropped) and d.reason == "bad_label" and label.name in d.detail]
    assert len(bad) == 1 and "not a regular file" in bad[0].detail, bad


def test_an_affectnet_npy_label_that_is_a_pipe_is_a_drop_not_a_wait(tmp_path):
    from ferdata.records import Dropped
    from tests.ferdata.fixtures_datasets import make_affectnet_npy

    root = make_affectnet_npy(tmp_path / "an")
    label = root / "train_set" / "annotations" / "0_exp.npy"
    label.unlink()
    os.mkfifo(label)
    items = _within(30, lambda: list(open_reader("affectnet", root).read()), label)
    bad = [d for d in items if isinstance(d, Dropped) and d.reason == "bad_label"]
    assert any("not a regular file" in d.detail for d in bad), bad


def test_a_subset_list_that_is_a_pipe_is_an_error_not_a_wait(tmp_path):
    """A test-subset list (datasets.<name>.options.subsets) given as a pipe hung reading it."""
    from ferdata.datasets.subsets import RAFDB_ID, parse_list

    fifo = tmp_path / "occlusion_list.txt"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        _within(10, lambda: parse_list(fifo, RAFDB_ID), fifo)


def test_a_subset_list_that_is_a_pipe_is_named_as_such_by_load_subsets(tmp_path):
    """load_subsets (parse_list's only caller) asked is_file() first: a pipe was "not found"."""
    from ferdata.datasets.subsets import RAFDB_ID, load_subsets

    os.mkfifo(tmp_path / "occlusion_list.txt")
    with pytest.raises(OSError, match="not a regular file"):
        _within(10, lambda: load_subsets({"occlusion": "occlusion_list.txt"}, tmp_path, RAFDB_ID, "rafdb"),
                tmp_path / "occlusion_list.txt")


def test_an_affectnet_npy_label_that_is_an_npz_archive_is_a_drop_not_a_crash(tmp_path):
    """np.load returns an NpzFile for a zip: `.size` was an AttributeError that ended the whole reader."""
    import numpy as np

    from ferdata.records import Dropped
    from tests.ferdata.fixtures_datasets import make_affectnet_npy

    root = make_affectnet_npy(tmp_path / "an")
    label = root / "train_set" / "annotations" / "0_exp.npy"
    with open(label, "wb") as f:
        np.savez(f, x=np.array("3"))
    items = list(open_reader("affectnet", root).read())
    bad = [d for d in items if isinstance(d, Dropped) and d.reason == "bad_label"]
    assert any(".npz archive" in d.detail for d in bad), bad
