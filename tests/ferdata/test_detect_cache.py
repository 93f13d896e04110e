"""The detect stage's cache and parallelism: a repeat run detects nothing (and starts no
worker), a grown dataset detects only its new images, parameters invalidate, workers do
not change the output, drops carry reasons, and `auto` records the backend per sample."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

import ferdata.parallel as parallel
from ferdata.cache import DetectionCache
from ferdata.io import BadImage, decode_rgb
from ferdata.records import Dropped, FaceRecord
from ferdata.layout import FACES, read_faces
from ferdata.stages.detect import DetectParams, run_detect

pytestmark = pytest.mark.usefixtures("offline")


def params(tmp_path: Path, workers: int = 1, backend: str = "embedded", threshold: float = 0.9) -> DetectParams:
    return DetectParams(backend=backend, select="largest", det_size=640, score_threshold=threshold,
                        model_dir=None, cache_dir=str(tmp_path / "cache"), workers=workers)


@pytest.fixture(scope="module")
def images(tmp_path_factory, photos) -> list[Path]:
    """10 distinct real-photo JPEGs (crops, scales, mirrors), ~200-320 px."""
    folder = tmp_path_factory.mktemp("imgs")
    a, g, t = photos["astronaut"], photos["grace_hopper"], photos["t1"]
    variants = [a, g, a[:, ::-1], g[:, ::-1], a[20:400, 80:420], g[50:550, 20:500],
                t[80:500, 300:800], t[100:600, 700:1200], a[::-1, ::-1][::-1], g[::-1][::-1, ::-1]]
    paths = []
    for i, v in enumerate(variants):
        scale = 300 / max(v.shape[:2])
        small = cv2.resize(np.ascontiguousarray(v), None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        p = folder / f"img{i}.jpg"
        cv2.imwrite(str(p), cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90 - i])
        paths.append(p)
    return paths


def records(paths: list[Path], landmarks: dict[int, np.ndarray] | None = None) -> list[FaceRecord]:
    return [FaceRecord("t", f"k{i}", str(p), i % 7, "x", landmarks=(landmarks or {}).get(i))
            for i, p in enumerate(paths)]


def notes(report) -> dict:
    return report.to_dict()["notes"]


def test_repeat_detects_nothing_and_growth_detects_only_new(tmp_path, images, monkeypatch):
    first = run_detect(records(images[:8]), params(tmp_path), tmp_path / "a")
    assert notes(first)["detections_run"] == 8 and first.kept == 8
    with DetectionCache(tmp_path / "cache") as cache:
        assert len(cache) == 8

    def no_pool():
        raise AssertionError("a fully cached run must not start workers")

    monkeypatch.setattr(parallel, "_context", no_pool)
    again = run_detect(records(images[:8]), params(tmp_path, workers=2), tmp_path / "b")
    assert notes(again)["detections_run"] == 0 and notes(again)["cache_hits"] == 8
    assert (tmp_path / "a" / FACES).read_bytes() == (tmp_path / "b" / FACES).read_bytes()
    monkeypatch.undo()

    grown = run_detect(records(images), params(tmp_path), tmp_path / "c")
    assert notes(grown)["detections_run"] == 2 and notes(grown)["cache_hits"] == 8
    rows = list(read_faces(tmp_path / "c"))
    assert [r["record"]["key"] for r in rows] == [f"k{i}" for i in range(10)]     # reader order kept
    assert all(r["backend"] == "embedded" and r["face"]["backend"] == "embedded" for r in rows)

    changed = run_detect(records(images[:3]), params(tmp_path, threshold=0.8), tmp_path / "d")
    assert notes(changed)["detections_run"] == 3                   # new backend signature: new entries


def test_workers_do_not_change_the_output(tmp_path, images):
    one = run_detect(records(images), params(tmp_path / "1", workers=1), tmp_path / "o1")
    two = run_detect(records(images), params(tmp_path / "2", workers=2), tmp_path / "o2")
    assert notes(one)["detections_run"] == notes(two)["detections_run"] == 10
    assert (tmp_path / "o1" / FACES).read_bytes() == (tmp_path / "o2" / FACES).read_bytes()


def test_drops_carry_reasons_and_no_face_is_cached(tmp_path, images):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((120, 160, 3), 200, np.uint8))
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    try:
        decode_rgb(junk.read_bytes())
    except BadImage as e:
        junk_reason = e.reason                       # ferdata.io's code for "not an image"
    items = [FaceRecord("t", "blank", str(blank), 0, "x"), FaceRecord("t", "junk", str(junk), 0, "x"),
             FaceRecord("t", "gone", str(tmp_path / "missing.jpg"), 0, "x"),
             Dropped("t", "bad_label", "bad_label", "row 3"), *records(images[:1])]
    for out, run_no in (("r1", 0), ("r2", 1)):
        report = run_detect(items, params(tmp_path), tmp_path / out)
        d = report.to_dict()
        assert d["dropped"] == {"bad_label": 1, "no_face": 1, junk_reason: 1, "unreadable_file": 1}
        assert report.kept == 1
        assert d["notes"]["detections_run"] == (2 if run_no == 0 else 0)   # blank + the photo; junk never cached
        dropped = [json.loads(line) for line in (tmp_path / out / "dropped.jsonl").read_text().splitlines()]
        assert {x["key"]: x["reason"] for x in dropped} == {"blank": "no_face", "junk": junk_reason,
                                                             "gone": "unreadable_file", "bad_label": "bad_label"}


def test_auto_records_backend_per_sample(tmp_path, images, embedded, photos, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    lmk = embedded.detect(cv2.cvtColor(cv2.imread(str(images[1])), cv2.COLOR_BGR2RGB))[0].lmk68
    report = run_detect(records(images[:3], {1: lmk}), params(tmp_path, backend="auto"), tmp_path / "auto")
    rows = {r["record"]["key"]: r for r in read_faces(tmp_path / "auto")}
    assert {k: r["backend"] for k, r in rows.items()} == {"k0": "embedded", "k1": "annotations", "k2": "embedded"}
    np.testing.assert_allclose(rows["k1"]["face"]["lmk68"], lmk, atol=1e-3)
    assert notes(report)["detections_run"] == 3
    with DetectionCache(tmp_path / "cache") as cache:
        assert len(cache) == 2                                     # annotation results depend on the record


# ---- parallel_map: order, bounded memory, one fn copy per worker, errors --------------------

class _Square:
    """Records the worker pid of every call, and whether it was that copy's first call."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: int) -> tuple[int, int, bool]:
        self.calls += 1
        if x == -1:
            raise ValueError("boom")
        return x * x, os.getpid(), self.calls == 1


def test_parallel_map_order_locality_and_one_copy_per_worker():
    items = list(range(200))
    out = list(parallel.parallel_map(_Square(), items, workers=2, window=16, chunksize=4,
                                     local=lambda x: x % 10 == 0))
    assert [o[0] for o in out] == [x * x for x in items]
    remote = [o for x, o in zip(items, out) if x % 10]
    assert {o[1] for x, o in zip(items, out) if x % 10 == 0} == {os.getpid()}   # local items ran here
    assert os.getpid() not in {o[1] for o in remote}
    assert sum(o[2] for o in remote) <= 2                          # fn was installed once per worker


def test_parallel_map_is_bounded_and_propagates_errors():
    consumed = []

    def source():
        for i in range(1000):
            consumed.append(i)
            yield i

    it = parallel.parallel_map(_Square(), source(), workers=2, window=32, chunksize=8)
    for n, _ in enumerate(it):
        assert len(consumed) - n <= 32 + 8 + 1                     # never more than a window ahead
        if n == 100:
            break
    it.close()
    with pytest.raises(ValueError, match="boom"):
        list(parallel.parallel_map(_Square(), [1, 2, -1, 4], workers=2, chunksize=1))
    assert list(parallel.parallel_map(_Square(), [3], workers=1))[0][0] == 9
