"""A worker that dies on a FER2013 row (pixels in the CSV, path "") named "the 4 images from  on": the batch
name takes the record's key where it has no file, as drop details do since 39aa923 (audit h120)."""
from __future__ import annotations

from ferdata.records import FaceRecord
from ferdata.stages.detect_work import Job, batch_name


def test_a_batch_of_rows_without_a_file_is_named_by_its_first_key():
    rows = [Job(FaceRecord("fer2013", f"train-line{i}", "", 0, "angry", pixels=b"x"), "0" * 64, b"x", None, True)
            for i in (2, 3)]
    assert batch_name(rows) == "the 2 images from train-line2 on"
    assert batch_name(rows[:1]) == "train-line2"
