"""A worker's detect results go back to the parent without the pictures' bytes (audit h141): each
result carried its Job whole, so every image crossed the pipe twice and sat in the parent's memory a
second time (two 600 MB files named .jpg: 5.0 GB in the parent, 2.6 GB without)."""
from __future__ import annotations

import hashlib

import numpy as np

from ferdata.faces.base import Face
from ferdata.io import encode_png
from ferdata.records import FaceRecord
from ferdata.stages.detect import DetectParams
from ferdata.stages.detect_work import DetectWorker, Job


class OneFace:
    name = "stub"
    needs_pixels = True

    def detect_batch(self, images, records):
        return [[Face((2.0, 2.0, 30.0, 30.0), 0.99, np.zeros((5, 2), np.float32))] for _ in images]


def test_a_detected_batch_comes_back_without_the_pictures_bytes():
    data = encode_png(np.full((32, 32, 3), 90, np.uint8))
    rec = FaceRecord(dataset="d", key="k", path="", label=0, native_label="0", pixels=data)
    job = Job(rec, hashlib.sha256(data).hexdigest(), data, None, False)
    twin = Job(rec, job.sha, data, None, True)
    worker = DetectWorker(DetectParams("embedded", "largest", 640, None, None, "unused", 1))
    worker._backend = OneFace()
    out = worker([job, twin, twin])
    assert [r[0].data for r in out] == [None, None, None]
    assert [r[0].sha for r in out] == [job.sha] * 3 and all(r[1] is not None and r[1].faces for r in out)
    assert [r[4] for r in out] == [False, False, True]          # the third is the second's image, detected once
