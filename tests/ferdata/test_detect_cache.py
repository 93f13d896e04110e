"""The detect stage's cache and parallelism: a repeat run detects nothing (and starts no
worker), a grown dataset detects only its new images, parameters invalidate, workers do
not change the output, drops carry reasons, `auto` records the backend per sample, and parts
detected on several machines merge into the single-machine result."""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

import ferdata.parallel as parallel
import ferdata.stages.detect as detect_stage
from ferdata.cache import CacheError, Detection, DetectionCache
from ferdata.faces.base import Face
from ferdata.io import BadImage, decode_rgb
from ferdata.records import Dropped, FaceRecord
from ferdata.layout import FACES, read_faces
from ferdata.parts import Part
from ferdata.stages.detect import DetectParams, fill_cache, run_detect

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


@pytest.mark.parametrize("workers", [1, 2])
def test_the_faces_of_one_photo_are_detected_once(tmp_path, images, workers, monkeypatch):
    """ExpW lists each labelled face of a photo as a record: the photo was detected once per face
    (21 detections for 9 photos). Records of one image next to each other share one detection, also
    across a batch boundary; their rows are what separate detections give."""
    paths = [images[0]] * 3 + [images[1]] + [images[2]] * 7 + [images[3]] * 2     # 13 records, 4 photos
    recs = [FaceRecord("t", f"k{i:02d}", str(p), 1, "x") for i, p in enumerate(paths)]
    once = run_detect(recs, params(tmp_path, workers=workers), tmp_path / "once")
    assert notes(once)["detections_run"] == 4 and notes(once)["cache_hits"] == 9 and once.kept == 13
    apart = [run_detect([r], params(tmp_path / f"apart{i}"), tmp_path / f"apart{i}" / "out") for i, r in
             enumerate(recs[:4])]
    assert all(notes(r)["detections_run"] == 1 for r in apart)
    rows = {r["record"]["key"]: r["face"] for r in read_faces(tmp_path / "once")}
    for i in range(4):
        assert rows[f"k{i:02d}"] == next(iter(read_faces(tmp_path / f"apart{i}" / "out")))["face"]


def test_a_long_run_of_one_image_makes_bounded_batches_carrying_its_bytes_once(tmp_path, images):
    """A list naming one file 5,000 times in a row made one batch of 5,000 jobs, each with its own copy
    of the file's bytes, pickled to one worker whole (the pool's window counts batches): memory grew
    with the run's length times the image's size."""
    from ferdata.stages.detect_work import BATCH, Job, batches_of, jobs

    class Caching:
        def cacheable_for(self, _):
            return True

    recs = [FaceRecord("t", f"k{i}", str(images[0]), 1, "x") for i in range(5_000)]
    few = [FaceRecord("t", f"p{i}", str(images[1]), 1, "x") for i in range(BATCH - 1)] + recs[:5]
    with DetectionCache(tmp_path / "cache") as cache:
        batches = list(batches_of(jobs(recs, Caching(), cache, "sig")))
        first = next(batches_of(jobs(few, Caching(), cache, "sig")))
    assert sum(map(len, batches)) == 5_000 and max(map(len, batches)) <= 8 * BATCH
    assert all(isinstance(j, Job) and j.cacheable for b in batches for j in b)
    assert len({id(j.data) for b in batches for j in b}) == 1
    assert [j.record.key for j in first][-5:] == [f"k{i}" for i in range(5)]        # a photo's faces: one batch


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
    for name in (FACES, "report.json", "dropped.jsonl"):        # the whole output: DVC sees no change
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    monkeypatch.undo()

    grown = run_detect(records(images), params(tmp_path), tmp_path / "c")
    assert notes(grown)["detections_run"] == 2 and notes(grown)["cache_hits"] == 8
    rows = list(read_faces(tmp_path / "c"))
    assert [r["record"]["key"] for r in rows] == [f"k{i}" for i in range(10)]     # reader order kept
    assert all(r["backend"] == "embedded" and r["face"]["backend"] == "embedded" for r in rows)

    changed = run_detect(records(images[:3]), params(tmp_path, threshold=0.8), tmp_path / "d")
    assert notes(changed)["detections_run"] == 3                   # new backend signature: new entries


def test_images_cached_under_another_signature_are_named_when_detected_again(tmp_path, images, caplog):
    """Detecting again what the cache holds under another signature (``auto`` on a machine without
    the models the cache was filled with, a changed setting or model file) is worth a warning that
    names both: silently it looks like a cache that does not work."""
    first = run_detect(records(images[:4]), params(tmp_path), tmp_path / "a")
    assert "other signatures" not in caplog.text
    old_sig = notes(first)["backend"]
    caplog.clear()
    changed = run_detect(records(images[:6]), params(tmp_path, threshold=0.8), tmp_path / "b")
    warned = [r.getMessage() for r in caplog.records if "other signatures" in r.getMessage()]
    assert notes(changed)["detections_run"] == 6 and len(warned) == 1
    assert f"{old_sig} (4 images)" in warned[0] and notes(changed)["backend"] in warned[0]
    caplog.clear()
    run_detect(records(images[6:]), params(tmp_path, threshold=0.8), tmp_path / "c")     # new images only
    assert "other signatures" not in caplog.text


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


# ---- several machines: parts detected apart, caches merged, then detect runs no model ------

def test_parts_partition_keys_whatever_the_order():
    keys = [f"train/{i:05d}.jpg" for i in range(4000)]
    parts = [Part(k, 4) for k in range(1, 5)]
    members = [{key for key in keys if p.holds(key)} for p in parts]
    assert sum(len(m) for m in members) == len(keys) and set().union(*members) == set(keys)   # disjoint, complete
    assert all(850 <= len(m) <= 1150 for m in members), [len(m) for m in members]            # about a quarter each
    assert {key for key in reversed(keys) if parts[0].holds(key)} == members[0]              # order plays no part
    assert all(Part(1, 1).holds(key) for key in keys[:100])


@pytest.mark.parametrize("text", ["0/4", "5/4", "2/0", "3", "a/4", "1/4/2", "-1/4", "", "²/4", "1/٤"])
def test_a_bad_part_is_refused_in_words(text):
    with pytest.raises(ValueError, match="K/N"):
        Part.parse(text)


def test_parts_detected_apart_and_merged_give_the_single_machine_table(tmp_path, images, monkeypatch):
    whole = run_detect(records(images), params(tmp_path / "one"), tmp_path / "single")
    caches = []
    for k in (1, 2, 3):                                    # three "machines", each with its own cache
        part = Part(k, 3)
        mine = [r for r in records(images) if part.holds(r.key)]
        report = fill_cache(iter(mine), params(tmp_path / f"m{k}"))
        assert notes(report)["detections_run"] == len(mine) and report.kept == len(mine)
        caches.append(tmp_path / f"m{k}" / "cache")
    with DetectionCache(tmp_path / "merged") as merged:
        counts = [merged.merge(c) for c in caches]
        assert [c.added for c in counts] == [len([r for r in records(images) if Part(k, 3).holds(r.key)])
                                             for k in (1, 2, 3)]
        assert sum(c.added for c in counts) == len(images) and all(c.differing == 0 for c in counts)
        again = merged.merge(caches[0] / "detections.sqlite")          # the file works like its folder
        assert (again.added, again.present) == (0, counts[0].added)

    monkeypatch.setattr(parallel, "_context", lambda: pytest.fail("merged parts must leave nothing to detect"))
    merged_run = run_detect(records(images), DetectParams(**{**vars(params(tmp_path)), "cache_dir":
                                                             str(tmp_path / "merged")}), tmp_path / "from_parts")
    assert notes(merged_run)["detections_run"] == 0 and notes(merged_run)["cache_hits"] == len(images)
    assert merged_run.kept == whole.kept == len(images)
    assert (tmp_path / "from_parts" / FACES).read_bytes() == (tmp_path / "single" / FACES).read_bytes()


def test_merge_keeps_what_is_here_and_refuses_what_is_not_a_cache(tmp_path):
    face = Face((1.0, 2.0, 30.0, 40.0), 0.99, np.zeros((5, 2), np.float32), None, "embedded")
    other = Face((1.0, 2.0, 30.0, 40.5), 0.99, np.zeros((5, 2), np.float32), None, "embedded")
    with DetectionCache(tmp_path / "a") as a:
        a.put("s1", "sig", Detection((50, 60), (face,)))
        a.put("s2", "sig", Detection((50, 60), (face,)))
        a.put("s3", "sig2", Detection((50, 60), ()))
    with DetectionCache(tmp_path / "b") as b:
        b.put("s1", "sig", Detection((50, 60), (face,)))
        b.put("s2", "sig", Detection((50, 60), (other,)))
        counts = b.merge(tmp_path / "a")
        assert (counts.added, counts.present, counts.differing) == (1, 1, 1)
        assert b.get("s2", "sig").faces[0].box == other.box                 # the entry here stays
        assert b.signatures() == {"sig": 2, "sig2": 1}
        with pytest.raises(ValueError, match="itself"):
            b.merge(tmp_path / "b")
        with pytest.raises(FileNotFoundError, match="no detection cache"):
            b.merge(tmp_path / "nowhere")
        (tmp_path / "x.sqlite").write_bytes(b"not a database, just bytes" * 100)
        with pytest.raises(ValueError, match="not a ferdata detection cache"):
            b.merge(tmp_path / "x.sqlite")
        assert len(b) == 3                                                  # nothing half-merged


def test_a_damaged_entry_is_a_miss_detected_again_and_never_merged(tmp_path, images, caplog):
    """A cache entry that does not parse (a damaged copy) costs one detection, not the run; merging
    skips it and counts it."""
    run_detect(records(images[:3]), params(tmp_path), tmp_path / "cold")
    cache_file = tmp_path / "cache" / "detections.sqlite"
    db = sqlite3.connect(cache_file)
    db.execute("UPDATE det SET value='garbage' WHERE rowid IN (SELECT rowid FROM det LIMIT 1)")
    db.commit()
    db.close()
    with DetectionCache(tmp_path / "merged") as m:
        assert m.merge(cache_file).corrupt == 1 and len(m) == 2
    with caplog.at_level("WARNING", logger="ferdata.cache"):
        again = run_detect(records(images[:3]), params(tmp_path), tmp_path / "warm")
    assert notes(again)["detections_run"] == 1 and notes(again)["cache_hits"] == 2
    assert "damaged entry" in caplog.text
    assert (tmp_path / "cold" / FACES).read_bytes() == (tmp_path / "warm" / FACES).read_bytes()
    with DetectionCache(tmp_path / "merged") as m:                      # the re-detection replaced it
        assert m.merge(cache_file).corrupt == 0


@pytest.mark.parametrize("edit", [
    lambda d: d.update(shape=[[480, 640]]), lambda d: d.update(shape=[480, 0]),
    lambda d: d["faces"][0].update(kps5=[[1.0, 2.0]] * 4), lambda d: d["faces"][0].update(box=[1, 2, 3]),
    lambda d: d["faces"][0].update(lmk68=[[0.0, 0.0]] * 67), lambda d: d["faces"][0].update(score="0.9"),
    lambda d: d["faces"][0].update(box=[0, 0, float("nan"), 10]),
])
def test_an_entry_of_the_wrong_form_is_a_miss(tmp_path, edit, caplog):
    """Valid JSON of another form (a hand-edited or damaged entry) was used as it was: the faces were
    cropped from wrong numbers (output differing from a clean run, rc 0)."""
    face = Face((10.0, 20.0, 110.0, 140.0), 0.9, np.arange(10, dtype=np.float32).reshape(5, 2),
                np.zeros((68, 2), np.float32), "embedded")
    with DetectionCache(tmp_path / "c") as cache:
        cache.put("sha", "sig", Detection((480, 640), (face,)))
        assert cache.get("sha", "sig").shape == (480, 640)
    db = sqlite3.connect(tmp_path / "c" / "detections.sqlite")
    entry = json.loads(db.execute("SELECT value FROM det").fetchone()[0])
    edit(entry)
    db.execute("UPDATE det SET value=?", (json.dumps(entry),))
    db.commit()
    db.close()
    with caplog.at_level("WARNING", logger="ferdata.cache"), DetectionCache(tmp_path / "c") as cache:
        assert cache.get("sha", "sig") is None
    assert "damaged entry" in caplog.text


def test_a_damaged_cache_file_is_named_with_what_to_do(tmp_path, images):
    cache_file = tmp_path / "cache" / "detections.sqlite"
    cache_file.parent.mkdir()
    cache_file.write_bytes(os.urandom(5000))
    with pytest.raises(CacheError, match=rf"detection cache {cache_file}: .*the file is damaged: delete it"):
        run_detect(records(images[:2]), params(tmp_path), tmp_path / "out")
    cache_file.unlink()
    run_detect(records(images[:2]), params(tmp_path), tmp_path / "out")          # deleted: it is rebuilt


def test_a_cache_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    with DetectionCache(tmp_path / "c") as cache:
        monkeypatch.setattr(cache, "db", _FullDisk())
        with pytest.raises(CacheError, match=r"detection cache .*detections.sqlite: database or disk is full; "
                                             r"is its disk full or read-only\?"):
            cache.put("s", "sig", Detection((5, 5), ()))
            cache.flush()
        monkeypatch.undo()


class _FullDisk:
    def execute(self, *args):
        raise sqlite3.OperationalError("database or disk is full")

    executemany = execute

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_two_runs_sharing_a_cache_do_not_lock_each_other_out(tmp_path):
    """A transaction held open across 256 puts kept the write lock for minutes: a second detect run
    on the same cache (another dataset, another --part) failed after 60 s."""
    first, second = DetectionCache(tmp_path / "c"), DetectionCache(tmp_path / "c")
    second.db.close()
    second.db = sqlite3.connect(second.path, timeout=1)
    first.put("a", "sig", Detection((5, 5), ()))                # the first run is mid-way
    second.put("b", "sig", Detection((6, 6), ()))
    second.flush()                                              # waited for the lock, then failed
    assert first.get("a", "sig") == Detection((5, 5), ())       # its own puts, before they are written
    first.close()
    second.close()
    with DetectionCache(tmp_path / "c") as cache:
        assert len(cache) == 2 and cache.get("b", "sig").shape == (6, 6)


def test_a_cache_another_process_holds_says_so(tmp_path):
    from ferdata.cache import CacheError

    with DetectionCache(tmp_path / "c") as cache:
        err = CacheError(cache.path, sqlite3.OperationalError("database is locked"))
    assert "another process held it" in str(err) and "disk full" not in str(err)


def test_fill_cache_refuses_a_backend_that_caches_nothing(tmp_path, images):
    with pytest.raises(ValueError, match="caches nothing .*: there is no detection to share between machines; "
                                         "`ferdata prepare` or `dvc repro` on one machine"):
        fill_cache(records(images[:1]), params(tmp_path, backend="annotations"))


def test_fill_cache_says_what_auto_placed_by_the_datasets_landmarks_left_out_of_the_cache(tmp_path, images,
                                                                                          caplog):
    """`ferdata detect --part --backend auto` on records with their own 68 points (AffectNet, the
    sample) said "3 detected" and cached nothing: auto places them by the annotations, uncached."""
    from tests.reliability.corpus import face_landmarks

    placed = records(images[:3], {i: face_landmarks() for i in range(2)})    # k2 has no points: detected
    with caplog.at_level(logging.WARNING):
        report = fill_cache(placed, params(tmp_path, backend="auto"))
    assert notes(report)["detections_run"] == 3 and notes(report)["stored"] == 1
    assert any("2 of the 3 records were placed by the dataset's own landmarks (auto), which runs no model and "
               "caches nothing" in r.getMessage() for r in caplog.records), caplog.text
    with DetectionCache(tmp_path / "cache") as cache:
        assert len(cache) == 1


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


class _FrozenCount:
    def __call__(self, x: int) -> int:
        import gc

        return gc.get_freeze_count()


def test_forked_workers_leave_the_parents_objects_to_copy_on_write():
    """The parent's objects are frozen in the workers (their collector never writes the shared
    pages) and in the parent only while forking."""
    import gc

    if parallel._context().get_start_method() != "fork":
        pytest.skip("only fork shares the parent's pages")
    before = gc.get_freeze_count()
    counts = list(parallel.parallel_map(_FrozenCount(), range(8), workers=2, chunksize=2))
    assert min(counts) > before + 1000                   # this test process's objects, frozen in each worker
    assert gc.get_freeze_count() == before


_AFTER_THE_PARENTS_POOL = """
import cv2, numpy as np, torch
from ferdata import parallel

BIG = np.full((1080, 1920, 3), 7, np.uint8)


class Work(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        assert float((MANY * 2).sum()) == 2 * MANY.numel()
        return int(cv2.cvtColor(BIG, cv2.COLOR_RGB2GRAY)[0, 0]), cv2.getNumThreads(), torch.get_num_threads()

    __call__ = __getitem__


MANY = torch.ones(1 << 20)
cv2.setNumThreads(4)
torch.set_num_threads(2)
cv2.cvtColor(BIG, cv2.COLOR_RGB2GRAY)                 # the parents' pool threads exist at the fork
(MANY * 2).sum()
pool = set(parallel.parallel_map(Work(), range(8), workers=2, chunksize=1))
loader = torch.utils.data.DataLoader(Work(), batch_size=None, num_workers=2,
                                     worker_init_fn=parallel.one_thread_per_worker)
print(sorted(pool), sorted({tuple(int(v) for v in item) for item in loader}), cv2.getNumThreads())
"""


def test_workers_limit_opencv_and_torch_without_hanging_after_the_parent_used_their_pools():
    """Workers run OpenCV and torch on one thread (N workers with a thread per core each would run
    N x N threads on N cores), the parent keeps its own. A forked worker has none of the parent's
    pool threads: limiting OpenCV must not resize its pool (``cv2.setNumThreads(1)`` there hangs
    most forks), and torch must run on one thread (its first multi-threaded operation never returns)."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", _AFTER_THE_PARENTS_POOL], capture_output=True, text=True,
                          timeout=120, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "[(7, 1, 1)] [(7, 1, 1)] 4", proc.stdout   # the parent keeps its own


def test_an_image_the_backend_fails_on_is_a_recorded_drop_and_a_broken_backend_ends_the_run(
        tmp_path, images, monkeypatch):
    """One image on which the detector raises (an odd size, a library bug) is dropped with the
    error, its batch-mates detected one by one; a backend failing on most images is no image's
    fault: the run ends naming the first error and leaves no output."""
    import hashlib

    from ferdata.faces.embedded import EmbeddedBackend

    bad = hashlib.sha1(decode_rgb(images[2].read_bytes()).tobytes()).digest()
    faces = EmbeddedBackend._faces

    def flaky(self, image, decoded):
        if hashlib.sha1(np.ascontiguousarray(image).tobytes()).digest() == bad:
            raise RuntimeError("RetinaFace gave 10 anchors, expected 12")
        return faces(self, image, decoded)

    monkeypatch.setattr(EmbeddedBackend, "_faces", flaky)
    report = run_detect(records(images[:4]), params(tmp_path), tmp_path / "one")
    assert report.kept == 3 and report.to_dict()["dropped"] == {"detector_failed": 1}
    dropped = [json.loads(line) for line in (tmp_path / "one" / "dropped.jsonl").read_text().splitlines()]
    assert dropped == [{"dataset": "t", "key": "k2", "reason": "detector_failed", "split": "",
                        "detail": f"{images[2]}: RuntimeError: RetinaFace gave 10 anchors, expected 12"}]

    calls = []

    def broken(self, image, decoded):
        calls.append(1)
        raise RuntimeError("symbol not found in libonnxruntime")

    monkeypatch.setattr(EmbeddedBackend, "_faces", broken)
    with pytest.raises(RuntimeError, match="failed on 10 images and ran on 0: a broken install or model, not odd "
                                           "images; the first: .*img0.jpg: RuntimeError: symbol not found"):
        run_detect(records(images * 4), params(tmp_path / "fresh"), tmp_path / "all")
    assert not (tmp_path / "all").exists()
    assert len(calls) < 24                    # stopped after the first 10 failures, not after all 40 images


def test_an_unflushed_entry_is_found_under_its_own_signature_only(tmp_path):
    """Bug guarded: a pending (not yet committed) entry looked up by image hash alone, so a detection
    made by another backend or setting in this run was served as this signature's cache hit."""
    cache = DetectionCache(tmp_path / "cache")
    try:
        det = Detection((10, 20), (Face((1.0, 2.0, 5.0, 6.0), 0.9, np.zeros((5, 2), np.float32)),))
        cache.put("ab" * 32, "embedded:v3:a", det)
        assert cache.get("ab" * 32, "embedded:v3:b") is None
        assert cache.get("ab" * 32, "embedded:v3:a").shape == (10, 20)
    finally:
        cache.close()


def test_auto_uses_a_cached_model_detection_only_for_records_without_landmarks(tmp_path, monkeypatch):
    """Bug guarded: the cache lookup ignored the backend's ``cacheable_for``: under ``auto`` a record
    with the dataset's own landmarks (found by the annotations, which depend on the record, not on the
    pixels) was served the model's cached detection of its image. Two records of one image, the cache
    holding a model detection of it: the one with landmarks gets the annotations, the other the entry."""
    import hashlib

    from tests.reliability.corpus import encode, face_landmarks, picture

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = tmp_path / "photo.jpg"
    path.write_bytes(encode(picture(7), quality=90))
    own = face_landmarks()                                   # the dataset's landmarks (160 px picture)
    model = (own + 3.0).astype(np.float32)                   # the cached model's, told apart from them
    cached = Face((25.0, 20.0, 135.0, 150.0), 0.99, model[[36, 45, 30, 48, 54]], model, "embedded")
    p = params(tmp_path, backend="auto")
    with DetectionCache(tmp_path / "cache") as cache:
        cache.put(hashlib.sha256(path.read_bytes()).hexdigest(), p.create_backend().signature(),
                  Detection((160, 160), (cached,)))
    recs = [FaceRecord("t", "marked", str(path), 1, "x", landmarks=own), FaceRecord("t", "bare", str(path), 2, "x")]
    report = run_detect(recs, p, tmp_path / "out")
    rows = {r["record"]["key"]: r for r in read_faces(tmp_path / "out")}
    assert {k: r["backend"] for k, r in rows.items()} == {"marked": "annotations", "bare": "embedded"}
    np.testing.assert_allclose(rows["marked"]["face"]["lmk68"], own, atol=1e-3)
    np.testing.assert_allclose(rows["bare"]["face"]["lmk68"], model, atol=1e-3)
    assert (notes(report)["detections_run"], notes(report)["cache_hits"]) == (1, 1)


@pytest.fixture()
def fresh_digest():
    from ferdata.faces.probe import pipeline_digest

    pipeline_digest.cache_clear()
    yield pipeline_digest
    pipeline_digest.cache_clear()                 # not the patched code's digest for later tests


@pytest.mark.parametrize("change", ["turn", "alpha", "points"])
def test_a_change_to_decoding_or_point_mapping_detects_again(tmp_path, images, monkeypatch, fresh_digest, change):
    """The cache key named the backend, options, models and packages, not this package's decoding:
    fixes to how TIFFs are turned (twice) or alpha flattened left every earlier detection in the
    cache, and align cropped the right pixels at the wrong places (exit 0). Here the code of run 1
    stands in for the code before such a fix."""
    import ferdata.faces.base as base
    import ferdata.io as fio

    first = run_detect(records(images[:4]), params(tmp_path), tmp_path / "a")
    assert notes(first)["detections_run"] == 4
    real = {"turn": fio.apply_orientation, "alpha": fio._flatten_alpha, "points": base.scaled_points}[change]
    broken = {"turn": lambda img, turn: real(real(img, turn), turn),                       # turned twice
              "alpha": lambda img, *a: (real(img, *a) * 0.9).astype(np.uint8),           # darkened
              "points": lambda pts, factor: real(pts, factor * 1.001)}[change]
    monkeypatch.setattr(*{"turn": (fio, "apply_orientation"), "alpha": (fio, "_flatten_alpha"),
                          "points": (base, "scaled_points")}[change], broken)
    fresh_digest.cache_clear()
    again = run_detect(records(images[:4]), params(tmp_path), tmp_path / "b")
    assert notes(again)["cache_hits"] == 0 and notes(again)["detections_run"] == 4
    assert notes(again)["backend"] != notes(first)["backend"]


def test_the_pipeline_digest_is_the_same_in_a_fresh_process_with_another_hash_seed(fresh_digest):
    import subprocess
    import sys

    code = "from ferdata.faces.probe import pipeline_digest; print(pipeline_digest())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": "77"},
                         capture_output=True, text=True, check=True, timeout=120).stdout.strip()
    assert out == fresh_digest() and len(out) == 12


@pytest.mark.parametrize("fails_at", ["connect", "first read"])
def test_a_source_on_read_only_media_is_merged(tmp_path, monkeypatch, fails_at):
    """A WAL cache cannot be opened mode=ro where SQLite cannot make its -shm file ('unable to open
    database file': the merge called it no detection cache); no run can write it there, so it is
    read immutable. (Permissions do not bind root: mode=ro is made to fail as it does there.)"""
    import ferdata.cache as cache

    face = Face((1.0, 2.0, 30.0, 40.0), 0.99, np.zeros((5, 2), np.float32), None, "embedded")
    with DetectionCache(tmp_path / "a") as a:
        a.put("s1", "sig", Detection((50, 60), (face,)))
    real = sqlite3.connect

    class NoShm:                                     # connects, then cannot make the -shm file
        def execute(self, *args):
            raise sqlite3.OperationalError("unable to open database file")

        def close(self):
            pass

    def read_only_media(database, *args, **kwargs):
        if isinstance(database, str) and database.endswith("?mode=ro"):
            if fails_at == "first read":
                return NoShm()
            return real((tmp_path / "no" / "such" / "folder.sqlite").as_uri() + "?mode=ro", *args, **kwargs)
        return real(database, *args, **kwargs)
    monkeypatch.setattr(cache.sqlite3, "connect", read_only_media)
    with DetectionCache(tmp_path / "b") as b:
        assert b.merge(tmp_path / "a").added == 1


def test_a_killed_runs_cache_on_read_only_media_is_not_merged_without_its_wal(tmp_path, monkeypatch):
    """A killed run's cache copied with its -wal (as README says) to read-only media was read immutable,
    which reads the main file alone: the -wal's entries were left out, silently."""
    import shutil

    import ferdata.cache as cache

    face = Face((1.0, 2.0, 30.0, 40.0), 0.99, np.zeros((5, 2), np.float32), None, "embedded")
    running = DetectionCache(tmp_path / "run")
    for i in range(50):
        running.put(f"{i:064x}", "sig", Detection((50, 60), (face,)))
    running.flush()                                   # committed into the -wal, no checkpoint: then "killed"
    (tmp_path / "media").mkdir()
    for name in ("detections.sqlite", "detections.sqlite-wal"):
        shutil.copy(tmp_path / "run" / name, tmp_path / "media" / name)
    running.db.close()
    assert (tmp_path / "media" / "detections.sqlite-wal").stat().st_size > 0
    real = sqlite3.connect

    def read_only_media(database, *args, **kwargs):
        if isinstance(database, str) and database.endswith("?mode=ro"):
            raise sqlite3.OperationalError("unable to open database file")
        return real(database, *args, **kwargs)
    monkeypatch.setattr(cache.sqlite3, "connect", read_only_media)
    with DetectionCache(tmp_path / "b") as b:
        with pytest.raises(ValueError, match=r"detections.sqlite-wal \(a killed run's last entries\).*copy "
                                             r"detections.sqlite and detections.sqlite-wal to a writable folder"):
            b.merge(tmp_path / "media")
        assert len(b) == 0
    monkeypatch.setattr(cache.sqlite3, "connect", real)
    with DetectionCache(tmp_path / "b") as b:              # from a writable folder: every entry
        assert b.merge(tmp_path / "media").added == 50


def _killed_machine_cache(folder: Path) -> DetectionCache:
    """A machine's cache: 10 entries a finished run checkpointed, then 20 of a killed run (committed
    into the -wal, never checkpointed); returned open, as the killed run left it."""
    face = Face((1.0, 2.0, 30.0, 40.0), 0.99, np.zeros((5, 2), np.float32), None, "embedded")
    with DetectionCache(folder) as done:
        for i in range(10):
            done.put(f"{i:064x}", "sig", Detection((50, 60), (face,)))
    running = DetectionCache(folder)
    for i in range(10, 30):
        running.put(f"{i:064x}", "sig", Detection((50, 60), (face,)))
    running.flush()
    return running


def test_a_renamed_copy_whose_wal_kept_its_name_is_refused_not_merged_short(tmp_path):
    """README said: copy each machine's detections.sqlite (and a killed run's detections.sqlite-wal)
    and merge m2.sqlite: SQLite reads m2.sqlite-wal for it, so the killed run's entries were left out."""
    import shutil

    running = _killed_machine_cache(tmp_path / "m2")
    main = tmp_path / "main"
    main.mkdir()
    shutil.copy(tmp_path / "m2" / "detections.sqlite", main / "m2.sqlite")
    shutil.copy(tmp_path / "m2" / "detections.sqlite-wal", main / "detections.sqlite-wal")
    running.db.close()
    with DetectionCache(tmp_path / "target") as target:
        with pytest.raises(ValueError, match=r"m2.sqlite: the detections.sqlite-wal beside it .* SQLite reads "
                                             r"m2.sqlite-wal; rename it so, or copy the machine's cache folder"):
            target.merge(main / "m2.sqlite")
        assert len(target) == 0
    (main / "detections.sqlite-wal").rename(main / "m2.sqlite-wal")
    with DetectionCache(tmp_path / "target") as target:
        assert target.merge(main / "m2.sqlite").added == 30


def test_a_machines_cache_folder_copied_whole_merges_every_entry(tmp_path):
    import shutil

    running = _killed_machine_cache(tmp_path / "m2")
    shutil.copytree(tmp_path / "m2", tmp_path / "main" / "m2")
    running.db.close()
    with DetectionCache(tmp_path / "target") as target:
        assert target.merge(tmp_path / "main" / "m2").added == 30


def test_a_source_damaged_part_way_keeps_what_it_gave_before(tmp_path):
    """The merge rolled back every entry when the source's damage came part way through (the CLI said
    'nothing after this point of it was merged', and the target held none)."""
    face = Face((1.0, 2.0, 30.0, 40.0), 0.99, np.zeros((5, 2), np.float32), None, "embedded")
    with DetectionCache(tmp_path / "a") as a:
        for i in range(3000):
            a.put(f"{i:064x}", "sig", Detection((50, 60), (face,)))
    data = bytearray((tmp_path / "a" / "detections.sqlite").read_bytes())
    page = 4096
    at = (len(data) * 2 // 3) // page * page
    data[at:at + page] = b"\xa5" * page                                  # one page two thirds in
    (tmp_path / "a" / "detections.sqlite").write_bytes(bytes(data))
    b = DetectionCache(tmp_path / "b")
    with pytest.raises(ValueError, match="not a whole ferdata detection cache") as err:
        b.merge(tmp_path / "a")
    b.db.close()                        # no flush, no commit of its own: what the merge kept is on disk
    with DetectionCache(tmp_path / "b") as again:
        kept = len(again)
    assert 0 < kept < 3000 and err.value.__notes__ == [f"the {kept} entries added before it are kept"]


@pytest.mark.parametrize("lacks", ["writer", "reader"])
def test_an_opencv_build_without_a_format_still_detects(monkeypatch, fresh_digest, lacks):
    """A build without WebP (say) made every backend's signature, so every detect run, fail."""
    import ferdata.faces.probe as probe
    import ferdata.io as fio

    whole = fresh_digest()
    fresh_digest.cache_clear()
    if lacks == "writer":
        real = probe.cv2.imencode

        def no_webp(ext, *args):
            if ext == ".webp":
                raise cv2.error("could not find encoder for the specified extension")
            return real(ext, *args)
        monkeypatch.setattr(probe.cv2, "imencode", no_webp)
    else:
        real = fio.decode_image

        def no_webp(data, *args):
            if data[:4] == b"RIFF":
                raise BadImage("undecodable", "WEBP 61x45 RGB")
            return real(data, *args)
        monkeypatch.setattr(fio, "decode_image", no_webp)
    assert fresh_digest() != whole and len(fresh_digest()) == 12


def test_align_stops_when_the_images_detect_read_are_gone(tmp_path, images):
    """Run from another folder (the table's paths are the detect run's) or after the dataset moved,
    every face was dropped as unreadable_file and the stage succeeded with nothing kept."""
    import shutil

    from ferdata.stages.align import AlignParams, run_align
    from tests.reliability.corpus import build

    pictures = tmp_path / "pictures"
    pictures.mkdir()
    moved = [Path(shutil.copy(p, pictures / p.name)) for p in images[:4]]
    run_detect(records(moved), params(tmp_path), tmp_path / "detect")
    align = build(AlignParams, "align", workers=1)
    run_align(tmp_path / "detect", align, tmp_path / "aligned")
    before = sorted(p.name for p in (tmp_path / "aligned").iterdir())
    moved[0].unlink()                                                 # one image gone: a recorded drop
    assert run_align(tmp_path / "detect", align, tmp_path / "aligned").dropped["unreadable_file"] == 1
    pictures.rename(tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match=r"align: 4 of the 4 images the detect stage read cannot be read "
                                                r"now \(e.g. .*pictures/.*\): run from the folder detect ran in"):
        run_align(tmp_path / "detect", align, tmp_path / "aligned")
    assert sorted(p.name for p in (tmp_path / "aligned").iterdir()) == before     # the last output stays


def test_a_missing_or_damaged_detect_table_and_a_wrong_derive_input_are_named(tmp_path, images):
    """'[Errno 2] No such file', 'Expecting value: line 1 column 1' (no file named) and an EOFError
    traceback for the table; derive given another stage's folder wrote an empty output."""
    import gzip

    from ferdata.stages.derive import DeriveParams, run_derive
    from tests.reliability.corpus import build

    with pytest.raises(FileNotFoundError, match="faces.jsonl.gz not found: run the detect stage first"):
        list(read_faces(tmp_path / "none"))
    run_detect(records(images[:3]), params(tmp_path), tmp_path / "d")
    whole = (tmp_path / "d" / FACES).read_bytes()
    for name, data in (("cut", whole[:len(whole) // 2]), ("garbage", gzip.compress(b"not json\n"))):
        (tmp_path / name).mkdir()
        (tmp_path / name / FACES).write_bytes(data)
        with pytest.raises(ValueError, match=rf"{name}/faces.jsonl.gz: damaged after \d+ rows .*re-run the detect"):
            list(read_faces(tmp_path / name))
    with pytest.raises(ValueError, match=r"d is no align stage's output \(its report.json says 'detect'\)"):
        run_derive(tmp_path / "d", build(DeriveParams, "derive", workers=1), tmp_path / "derived")
    assert not (tmp_path / "derived").exists()


def test_align_drops_training_copies_of_test_faces_when_the_params_say_so_and_the_shards_record_it(tmp_path, images):
    """align.cross_split_copies reaches the stage: the same photo listed in train and test keeps both
    copies by default and only the test copy with drop_train."""
    import dataclasses

    from ferdata.stages.align import AlignParams, run_align
    from ferdata.stages.derive import DeriveParams, run_derive
    from ferdata.stages.shard import ShardParams, run_shard
    from ferdata.summary import check_info
    from tests.reliability.corpus import build

    recs = [dataclasses.replace(r, split=s) for r, s in zip(records([images[0], images[0], images[1]]),
                                                            ("train", "test", "train"))]
    run_detect(recs, params(tmp_path), tmp_path / "detect")
    keep = build(AlignParams, "align", workers=1)
    kept = run_align(tmp_path / "detect", keep, tmp_path / "kept")
    assert kept.kept == 3 and "cross_split_copies" not in kept.notes
    dropped = run_align(tmp_path / "detect", dataclasses.replace(keep, cross_split_copies="drop_train"),
                        tmp_path / "dropped")
    assert dropped.kept == 2 and dropped.dropped == {"copy_of_held_out": 1}
    assert dropped.notes["cross_split_copies"] == "drop_train"          # which choice made the output
    for made in ("kept", "dropped"):                                     # and the shards say so, where drop_train
        run_derive(tmp_path / made, build(DeriveParams, "derive", workers=1), tmp_path / f"{made}_derived")
        run_shard(tmp_path / made, tmp_path / f"{made}_derived", build(ShardParams, "shard"), tmp_path / f"{made}_s")
    for split in ("train", "test"):
        assert "cross_split_copies" not in json.loads((tmp_path / "kept_s" / split / "_info.json").read_text())
        info = json.loads((tmp_path / "dropped_s" / split / "_info.json").read_text())
        assert info["cross_split_copies"] == "drop_train"
        check_info(info)


def test_an_image_that_kills_a_worker_is_named(tmp_path, images, monkeypatch):
    """A crash in native code on one image (a decoder or model bug) was named by the up to ~72 images
    of the batches in flight; they are run again alone in a fresh worker, down to the one image."""
    import ferdata.stages.detect_work as detect_work

    deadly = images[9].read_bytes()
    decode = detect_work.decode_image

    def crashing_decode(data, *args, **kwargs):
        if data == deadly:
            os._exit(1)                            # as a segfault: no exception, the process is gone
        return decode(data, *args, **kwargs)

    monkeypatch.setattr(detect_work, "decode_image", crashing_decode)      # the workers are forked
    with pytest.raises(ChildProcessError) as caught:
        run_detect(records(images), params(tmp_path, workers=2), tmp_path / "out")
    assert f"while processing {images[9]}: run again alone" in str(caught.value)
    # named by more records in a row than a batch holds: two batches in flight hold it, and the check for a
    # worker that dies whatever its input ran the second one, the same image, and blamed every input
    run = [FaceRecord("t", "k0", str(images[0]), 1, "x")] + [
        FaceRecord("t", f"d{i}", str(images[9]), 1, "x") for i in range(100)]
    with pytest.raises(ChildProcessError) as caught:
        run_detect(run, params(tmp_path / "run", workers=2), tmp_path / "run" / "out")
    assert f"while processing {images[9]}: run again alone" in str(caught.value), str(caught.value)


def test_a_cache_another_process_is_creating_is_waited_for_not_locked_out(tmp_path):
    """A new detections.sqlite is in rollback mode until DetectionCache switches it to WAL;
    while another process creating it holds its write lock (its CREATE TABLE), SQLite answers this
    process's `PRAGMA journal_mode=WAL` with "database is locked" at once, not after the busy timeout:
    two runs started together on a new detect.cache_dir failed."""
    folder = tmp_path / "c"
    folder.mkdir()
    other = sqlite3.connect(folder / "detections.sqlite", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")                        # the other process, mid-way through creating it
    other.execute("CREATE TABLE IF NOT EXISTS det (sha TEXT, sig TEXT, value TEXT, PRIMARY KEY (sha, sig))")
    timer = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    timer.start()
    try:
        with DetectionCache(folder) as cache:               # waits for it (as every other statement does)
            cache.put("a", "sig", Detection((5, 5), ()))
        with DetectionCache(folder) as cache:
            assert len(cache) == 1
    finally:
        timer.join()
        other.close()


class _VacuumFails:
    """The cache's connection, whose VACUUM fails as on a full disk (the DELETE before it fits)."""

    def __init__(self, db):
        self._db = db

    def execute(self, sql, *args):
        if sql.strip().upper() == "VACUUM":
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._db, name)


def _pages(path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA page_count").fetchone()[0]
    finally:
        db.close()


def test_a_prune_whose_compaction_failed_is_compacted_by_the_next_prune(tmp_path):
    """Prune commits its DELETE, then VACUUMs; when the VACUUM fails (a full disk: the reason to
    prune) the entries are gone, and every later prune drops 0 and skipped VACUUM ("if dropped"):
    the file was never compacted."""
    value = Detection((100, 100), ())
    with DetectionCache(tmp_path / "c") as cache:
        for i in range(3000):
            cache.put(f"{i:064x}" * 8, "keep" if i % 4 else "old", value)     # long keys: many pages
    with DetectionCache(tmp_path / "c") as cache:
        real = cache.db
        cache.db = _VacuumFails(real)
        try:
            cache.prune(["keep"])
            raise AssertionError("the VACUUM did not fail")
        except CacheError as err:
            assert "disk is full" in str(err)
        finally:
            cache.db = real
    full = _pages(cache.path)
    with DetectionCache(tmp_path / "c") as cache:
        assert cache.prune(["keep"]) == 0 and len(cache) == 2250
    assert _pages(cache.path) < 0.9 * full, "the second prune did not compact the file"


def test_merge_replaces_an_entry_here_that_does_not_parse(tmp_path):
    """An entry here that `get` cannot use (damaged: a miss, detected again) was kept over the
    source's whole entry for the same image and counted as "differing (kept it)"."""
    good = Detection((120, 80), ())
    with DetectionCache(tmp_path / "m2") as other:
        other.put("a" * 64, "sig", good)
        other.put("b" * 64, "sig", Detection((7, 7), ()))
    with DetectionCache(tmp_path / "main") as main:
        main.put("a" * 64, "sig", good)
        main.put("b" * 64, "sig", Detection((9, 9), ()))          # another whole detection: kept, counted
    db = sqlite3.connect(tmp_path / "main" / "detections.sqlite")
    db.execute("UPDATE det SET value = substr(value, 1, 12) WHERE sha = ?", ("a" * 64,))
    db.commit()
    db.close()
    with DetectionCache(tmp_path / "main") as main:
        counts = main.merge(tmp_path / "m2")
        assert (counts.added, counts.differing) == (1, 1)
        assert main.get("a" * 64, "sig") == good
        assert main.get("b" * 64, "sig") == Detection((9, 9), ())


def test_a_detect_run_storing_an_image_a_merge_adds_does_not_fail_the_merge(tmp_path):
    """The merge looked an entry up outside any transaction, then INSERTed it: another process
    storing the same entry in between made it fail with "UNIQUE constraint failed", reported as "the
    file is damaged: delete it". The other process's commit is injected at the merge's BEGIN."""
    value = Detection((5, 5), ())
    with DetectionCache(tmp_path / "m2") as other:
        other.put("a" * 64, "sig", value)
    with DetectionCache(tmp_path / "main") as main:
        writer = sqlite3.connect(main.path, timeout=60)

        def at(sql):
            if sql.startswith("BEGIN"):
                with writer:
                    writer.execute("INSERT OR REPLACE INTO det VALUES (?, ?, ?)", ("a" * 64, "sig", value.to_json()))

        main.db.set_trace_callback(at)
        counts = main.merge(tmp_path / "m2")
        main.db.set_trace_callback(None)
        writer.close()
        assert (counts.added, counts.present) == (0, 1) and main.get("a" * 64, "sig") == value


def test_a_cache_whose_last_write_fails_is_closed_all_the_same(tmp_path):
    """close() writes the buffered puts, then closes the file: a write failing there (a full disk)
    left the connection, and its file handles, open."""
    class FullDisk:
        def __init__(self, db):
            self._db = db

        def executemany(self, *args):
            raise sqlite3.OperationalError("database or disk is full")

        def __enter__(self):
            return self._db.__enter__()

        def __exit__(self, *exc):
            return self._db.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self._db, name)

    cache = DetectionCache(tmp_path / "c")
    real = cache.db
    cache.put("a" * 64, "sig", Detection((5, 5), ()))
    cache.db = FullDisk(real)
    with pytest.raises(CacheError, match="disk is full"):
        cache.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed database"):
        real.execute("SELECT 1")


def test_a_prune_with_nothing_to_drop_on_a_full_disk_says_zero(tmp_path, caplog):
    """Compacting needs the file's size again in free space: with nothing to drop, a full disk is no
    error (`ferdata cache prune` stopped there, before a later cache whose stale entries free space)."""
    with DetectionCache(tmp_path / "c") as cache:
        for i in range(50):
            cache.put(f"{i:064x}", "keep", Detection((100, 100), ()))
    with DetectionCache(tmp_path / "c") as cache:
        real = cache.db
        cache.db = _VacuumFails(real)
        try:
            with caplog.at_level("WARNING", logger="ferdata.cache"):
                assert cache.prune(["keep"]) == 0
        finally:
            cache.db = real
        assert len(cache) == 50 and "nothing to drop; not compacted" in caplog.text


@pytest.mark.parametrize("workspace", [("tmpab12cd",), ("standalone", "tmpab12cd")], ids=["queued", "temp"])
def test_a_relative_cache_dir_in_an_experiment_workspace_is_the_repositorys(workspace, tmp_path, monkeypatch):
    """`dvc exp run --queue` + `dvc queue start` run each experiment in <repo>/.dvc/tmp/exps/<tmp>/, whose
    git tree holds no .cache/: a relative detect.cache_dir made a new, empty cache there (every image
    detected again: hours on AffectNet), and DVC deleted it with the workspace. `dvc exp run --temp` runs
    one folder deeper, in .../exps/standalone/<tmp>/: the cache was taken in <repo>/<tmp>/.cache/ferdata,
    a new, empty folder left in the repository."""
    from ferdata.cache import cache_folder

    repo = (tmp_path / "repo").resolve()
    work = repo.joinpath(".dvc", "tmp", "exps", *workspace)
    (work / "sub").mkdir(parents=True)
    with DetectionCache(repo / ".cache" / "ferdata") as main:
        main.put("a" * 64, "sig", Detection((5, 6), ()))
    monkeypatch.chdir(work)
    with DetectionCache(".cache/ferdata") as cache:
        assert cache.path.resolve() == repo / ".cache" / "ferdata" / "detections.sqlite"
        assert cache.get("a" * 64, "sig") is not None
    assert not (work / ".cache").exists() and not (repo / "tmpab12cd").exists()
    monkeypatch.chdir(work / "sub")                     # a stage's wdir below the workspace's root
    assert cache_folder("c").resolve() == repo / "sub" / "c"
    assert cache_folder("/abs/c") == Path("/abs/c")     # an absolute one is left as it is
    monkeypatch.chdir(repo)                             # in the repository itself: as before
    assert cache_folder(".cache/ferdata") == Path(".cache/ferdata")


@pytest.mark.parametrize("warm", [False, True], ids=["empty-cache", "warm-cache"])
def test_ctrl_c_stays_the_error_when_the_cache_cannot_save_too(tmp_path, photos, monkeypatch, caplog, warm):
    """A Ctrl-C midway closes the detection cache, which flushes; a flush that failed too (another run
    holding the cache past the lock's wait) replaced the KeyboardInterrupt (exit 1, not 130, and the
    cache's error told instead of the interruption) (audit h68's left). An empty cache was not closed at
    all (``if cache:`` asked its length)."""
    path = tmp_path / "a.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(photos["astronaut"][:300, 100:400], cv2.COLOR_RGB2BGR))
    params = DetectParams(backend="embedded", select="largest", det_size=640, score_threshold=None,
                          model_dir=None, cache_dir=str(tmp_path / "cache"), workers=1)
    if warm:
        run_detect([FaceRecord("t", "k0", str(path), 1, "x")], params, tmp_path / "first")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    def failing_close(self):
        raise CacheError(tmp_path / "cache", sqlite3.OperationalError("database is locked"))
    monkeypatch.setattr(DetectionCache, "close", failing_close)
    monkeypatch.setattr(detect_stage._Table, "row", interrupted)      # Ctrl-C as the first face comes back
    with caplog.at_level(logging.WARNING), pytest.raises(KeyboardInterrupt):
        run_detect([FaceRecord("t", "k0", str(path), 1, "x")], params, tmp_path / "detect")
    assert "could not save this run's last detections: detection cache" in caplog.text
    assert "database is locked" in caplog.text
