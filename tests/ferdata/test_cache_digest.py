"""What the detection cache's code digest covers (every probe, scale, reduction, orientation, the
mapping back and the rounding), the cache's prune and merge, and align's stop on unreadable images."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ferdata.cache import Detection, DetectionCache
from ferdata.faces.base import Face


@pytest.fixture()
def fresh_digest():
    from ferdata.faces.probe import pipeline_digest

    pipeline_digest.cache_clear()
    yield pipeline_digest
    pipeline_digest.cache_clear()                 # not the patched code's digest for later tests


def _digest_with(monkeypatch, fresh_digest, module, name, make):
    whole = fresh_digest()
    fresh_digest.cache_clear()
    monkeypatch.setattr(module, name, make(getattr(module, name)))
    return whole, fresh_digest()


@pytest.mark.parametrize("what", ["pixel", "scale", "pixel_at_quarter"])
def test_the_digest_covers_every_decoded_pixel_scale_and_reduction(monkeypatch, fresh_digest, what):
    """One pixel, the scale reported, or only the 1/4 decode changed: each changes the digest."""
    import ferdata.io as fio

    def make(real):
        def decode(data, reduce=1):
            d = real(data, reduce)
            if what == "scale":
                return dataclasses.replace(d, scale=d.scale * 1.0001)
            if what == "pixel_at_quarter" and reduce != 4:
                return d
            rgb = d.rgb.copy()
            rgb[0, 0, 0] ^= 1
            return dataclasses.replace(d, rgb=rgb)
        return decode
    whole, changed = _digest_with(monkeypatch, fresh_digest, fio, "decode_image", make)
    assert changed != whole


def test_the_digest_covers_exif_orientation_8(monkeypatch, fresh_digest):
    import ferdata.io as fio

    def make(real):
        return lambda img, orientation: real(img, 6 if orientation == 8 else orientation)    # 8 taken for 6
    whole, changed = _digest_with(monkeypatch, fresh_digest, fio, "apply_orientation", make)
    assert changed != whole


@pytest.mark.parametrize("module, name", [("ferdata.geometry", "resized_back"), ("ferdata.cache", "_rounded")])
def test_the_digest_covers_the_mapping_back_and_the_caches_rounding(monkeypatch, fresh_digest, module, name):
    import importlib

    mod = importlib.import_module(module)
    if name == "resized_back":
        def make(real):
            return lambda boxes, points, scale: real(boxes + 0.5, points, scale)
    else:
        def make(real):
            return lambda f: real(dataclasses.replace(f, score=f.score / 2))
    whole, changed = _digest_with(monkeypatch, fresh_digest, mod, name, make)
    assert changed != whole


def test_a_probe_that_cannot_be_encoded_counts_as_unavailable(monkeypatch, fresh_digest):
    """OpenCV's imencode returning False (RuntimeError in _cv) must not stop the digest."""
    import ferdata.faces.probe as probe

    real = probe.cv2.imencode
    monkeypatch.setattr(probe.cv2, "imencode", lambda ext, *a: (False, None) if ext == ".bmp" else real(ext, *a))
    assert dict(probe.probe_files())["bmp"] is None
    assert len(fresh_digest()) == 12


# --- prune and merge -----------------------------------------------------------------------------------

FACE = Face((1.0, 2.0, 30.0, 40.0), 0.99, np.zeros((5, 2), np.float32), None, "embedded")


def test_prune_drops_the_entries_still_buffered_too(tmp_path):
    with DetectionCache(tmp_path / "c") as c:
        c.put("s1", "keep", Detection((50, 60), (FACE,)))
        c.flush()
        c.put("s2", "old", Detection((50, 60), (FACE,)))          # buffered, not yet written
        assert c.prune(["keep"]) == 1
        assert c.signatures() == {"keep": 1}


def test_prune_compacts_the_file(tmp_path):
    with DetectionCache(tmp_path / "c") as c:
        for i in range(2000):
            c.put(f"{i:064x}", "old", Detection((50, 60), (FACE,) * 3))
        c.put("a" * 64, "keep", Detection((50, 60), (FACE,)))
        c.flush()
        c.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        before = (tmp_path / "c" / "detections.sqlite").stat().st_size
        assert c.prune({"keep"}) == 2000
        c.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        after = (tmp_path / "c" / "detections.sqlite").stat().st_size
    assert after < before / 4


def test_prune_of_nothing_to_drop_keeps_everything(tmp_path):
    with DetectionCache(tmp_path / "c") as c:
        c.put("s1", "keep", Detection((50, 60), (FACE,)))
        assert c.prune(["keep", "other"]) == 0 and len(c) == 1


def test_merge_counts_an_entry_still_buffered_here_as_present(tmp_path):
    with DetectionCache(tmp_path / "a") as a:
        a.put("s1", "sig", Detection((50, 60), (FACE,)))
    with DetectionCache(tmp_path / "b") as b:
        b.put("s1", "sig", Detection((50, 60), (FACE,)))             # buffered
        counts = b.merge(tmp_path / "a")
    assert (counts.added, counts.present, counts.differing) == (0, 1, 0)


def test_merge_keeps_a_differing_entry_and_counts_it(tmp_path):
    other = dataclasses.replace(FACE, score=0.5)
    with DetectionCache(tmp_path / "a") as a:
        a.put("s1", "sig", Detection((50, 60), (other,)))
        a.put("s2", "sig", Detection((50, 60), (FACE,)))
    with DetectionCache(tmp_path / "b") as b:
        b.put("s1", "sig", Detection((50, 60), (FACE,)))
        b.put("s2", "sig", Detection((50, 60), (FACE,)))
        counts = b.merge(tmp_path / "a")
        assert b.get("s1", "sig").faces[0].score == pytest.approx(0.99)
    assert (counts.added, counts.present, counts.differing) == (0, 1, 1)


# --- align: images gone since detect -------------------------------------------------------------------

def _drops(reasons):
    from ferdata.records import Dropped

    return [Dropped("d", f"k{i}", r, f"p{i}: why") for i, r in enumerate(reasons)]


@pytest.mark.parametrize("reasons, rows, stops", [
    (["unreadable_file"], 2, True),                                 # exactly half
    (["unreadable_file"], 3, False),
    (["unreadable_file", "unreadable_file"], 4, True),
    (["bad_landmarks"] * 4, 4, False),                              # faces dropped, images read
    (["unreadable_file"] + ["bad_landmarks"] * 3, 4, False),
    ([], 0, False),                                                 # an empty detect table
])
def test_align_stops_from_half_the_images_unreadable(reasons, rows, stops):
    from ferdata.stages.align import _check_readable

    if stops:
        with pytest.raises(FileNotFoundError, match=f"align: {reasons.count('unreadable_file')} of the {rows} images"):
            _check_readable(_drops(reasons), rows)
    else:
        _check_readable(_drops(reasons), rows)
