"""A file far larger than any picture (a video or disk image named .jpg) is dropped as ``too_large`` from
its size, not read whole and shipped to a worker (audit h141: two 600 MB files named .jpg took 5 GB in
the parent, 3.7 GB in a worker); a held-out one counts as the split's loss, as a decoded too_large does."""
from __future__ import annotations

import numpy as np

from ferdata.io import encode_jpeg
from ferdata.layout import HELD_OUT_DROPS
from ferdata.records import MAX_IMAGE_BYTES as CAP, FaceRecord
from ferdata.stages.detect import DetectParams, run_detect


def test_a_file_larger_than_any_picture_is_dropped_unread(tmp_path):
    huge = tmp_path / "clip.jpg"
    with open(huge, "wb") as f:                  # sparse: no disk used (and, fixed, never read)
        f.write(b"\xff\xd8\xff\xe0")
        f.truncate(CAP + 1)
    small = tmp_path / "a.jpg"
    small.write_bytes(encode_jpeg(np.full((64, 64, 3), 120, np.uint8), 90))
    recs = [FaceRecord(dataset="d", key=p.stem, path=str(p), label=0, native_label="x", split="test")
            for p in (huge, small)]
    params = DetectParams("precropped", "largest", 640, None, None, str(tmp_path / "cache"), 1)
    report = run_detect(recs, params, tmp_path / "detect")
    assert report.kept == 1 and dict(report.dropped) == {"too_large": 1}
    drop = (tmp_path / "detect" / "dropped.jsonl").read_text()
    assert f"clip.jpg: a file of {CAP + 1:,} bytes, over the 1,024 MiB" in drop
    assert report.notes[HELD_OUT_DROPS] == {"test": {"too_large": 1}}
