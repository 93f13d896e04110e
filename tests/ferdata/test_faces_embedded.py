"""The embedded (offline) backend on real photos: faces found, landmarks inside the face,
alignment puts the eyes on the ArcFace template, batching changes nothing."""
from __future__ import annotations

import numpy as np
import pytest

from ferdata.faces import MissingModelError, create_backend, select_face
from ferdata.faces.embedded import DLIB_68, EmbeddedBackend, dlib_model_path
from ferdata.geometry import align_face, five_from_68, template, transform_points

pytestmark = pytest.mark.usefixtures("offline")


def inside(points: np.ndarray, box, margin: float) -> np.ndarray:
    x0, y0, x1, y1 = box
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin
    return ((points[:, 0] >= x0 - mx) & (points[:, 0] <= x1 + mx)
            & (points[:, 1] >= y0 - my) & (points[:, 1] <= y1 + my))


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_single_portrait(embedded, photos, name):
    faces = embedded.detect(photos[name])
    assert len(faces) == 1
    f = faces[0]
    assert f.score > 0.99 and f.backend == "embedded"
    h, w = photos[name].shape[:2]
    x0, y0, x1, y1 = f.box
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    assert 60 < x1 - x0 < 0.6 * w                         # a face, not the whole image
    assert f.kps5.shape == (5, 2) and f.lmk68.shape == (68, 2)
    assert inside(f.kps5, f.box, 0.0).all()
    assert inside(f.lmk68, f.box, 0.15).all()             # the jaw may leave a tight box a little
    assert inside(f.lmk68[17:], f.box, 0.0).mean() > 0.95  # brows, eyes, nose, mouth: inside


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_alignment_puts_eyes_on_template(embedded, photos, name):
    f = embedded.detect(photos[name])[0]
    for size in (112, 224):
        al = align_face(photos[name], f.kps5, size, lmk68=f.lmk68)
        tpl = template(size)
        unit = size / 112
        # the detector's own eye points (what the fit used) ...
        assert np.abs(transform_points(f.kps5, al.matrix)[:2] - tpl[:2]).max() < 3 * unit
        # ... and dlib's independent eye centres and nose tip (mouth corners move with a smile)
        five = five_from_68(al.lmk68)
        err = np.linalg.norm(five - tpl, axis=1)
        assert err[:2].max() < 4 * unit and err[2] < 6 * unit and err[3:].max() < 12 * unit, err
        assert al.image.shape == (size, size, 3)


def test_group_photo_six_faces(embedded, photos):
    faces = embedded.detect(photos["t1"])
    assert len(faces) == 6
    assert all(f.score > 0.9 for f in faces)
    for f in faces:
        assert inside(f.kps5, f.box, 0.05).all()
        assert inside(f.lmk68[17:], f.box, 0.1).mean() > 0.9
    largest = select_face(faces, photos["t1"].shape, "largest")
    assert largest.area == max(f.area for f in faces)
    central = select_face(faces, photos["t1"].shape, "central")
    h, w = photos["t1"].shape[:2]
    dist = [np.hypot((f.box[0] + f.box[2]) / 2 - w / 2, (f.box[1] + f.box[3]) / 2 - h / 2) for f in faces]
    assert central is faces[int(np.argmin(dist))]
    with pytest.raises(ValueError, match="largest"):
        select_face(faces, photos["t1"].shape, "biggest")


@pytest.mark.parametrize("mirrored", [False, True])
def test_dlib_points_agree_with_retinaface_keypoints_on_turned_faces_too(embedded, photos, mirrored):
    """Two detectors, one face: dlib's eyes, nose tip and mouth corners land where RetinaFace puts
    its 5 keypoints, within a fifth of the eyes-to-mouth distance, on every face of the group photo
    (two of them turned; started from RetinaFace's box, dlib missed them by 0.3-0.5)."""
    t1 = photos["t1"][:, ::-1].copy() if mirrored else photos["t1"]
    for f in embedded.detect(t1):
        k = f.kps5.astype(np.float64)
        eyes_to_mouth = np.linalg.norm((k[3] + k[4]) / 2 - (k[0] + k[1]) / 2)
        assert np.linalg.norm(five_from_68(f.lmk68) - k, axis=1).mean() < 0.2 * eyes_to_mouth


def test_lfw_faces_and_non_faces(embedded, lfw):
    faces, non_faces = lfw
    found = sum(bool(embedded.detect(x)) for x in faces[:40])
    false = sum(bool(embedded.detect(x)) for x in non_faces[:40])
    assert found >= 36, found
    assert false <= 1, false


def test_batch_equals_single(embedded, photos):
    import cv2

    a = photos["astronaut"]
    images = [cv2.resize(a, (128, 128)), cv2.resize(a[:, ::-1].copy(), (128, 128)),
              cv2.resize(a, (160, 128)), cv2.resize(photos["grace_hopper"], (128, 128))]
    batched = embedded.detect_batch(images, [None] * len(images))
    for img, got in zip(images, batched):
        want = embedded.detect(img)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g.box, w.box, atol=1e-3)
            np.testing.assert_allclose(g.kps5, w.kps5, atol=1e-3)
            np.testing.assert_array_equal(g.lmk68, w.lmk68)


def test_points_map_back_to_the_source_frame_as_pixel_centres(photos):
    """A 3x nearest-neighbour enlargement shrinks back (INTER_AREA) to exactly the original, so the
    detector sees the same pixels: original pixel x is enlarged pixels 3x .. 3x + 2, its centre
    3x + 1, so keypoints must come back as (x + 0.5) * 3 - 0.5 (dividing by the scale put them
    1 px short, a bias that grew with the image) and boxes, pixel edges, as 3x."""
    import cv2

    small = create_backend("embedded", {"det_size": 512})
    image = photos["astronaut"]
    assert image.shape[:2] == (512, 512)
    big = cv2.resize(image, (1536, 1536), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(small.prepare(big)[0], small.prepare(image)[0])
    want, got = small.detect(image)[0], small.detect(big)[0]
    np.testing.assert_allclose(got.kps5, (want.kps5 + 0.5) * 3 - 0.5, atol=1e-3)
    np.testing.assert_allclose(got.box, np.asarray(want.box) * 3, atol=1e-3)


def test_each_axis_maps_back_with_its_own_scale(embedded):
    """601 rows at 1000 -> 640 columns round to 385 rows: 385 / 601 is not 640 / 1000."""
    blob, scale = embedded.prepare(np.zeros((601, 1000, 3), np.uint8))
    assert blob.shape == (1, 3, 385, 640)
    assert scale == (640 / 1000, 385 / 601)
    assert embedded.prepare(np.zeros((300, 200, 3), np.uint8))[1] == (1.0, 1.0)


def test_blank_image_has_no_face(embedded):
    assert embedded.detect(np.full((200, 300, 3), 127, np.uint8)) == []


def test_extreme_aspect_ratio_has_no_face_not_a_crash(embedded):
    """16 x 21000 shrinks to under one pixel across at det_size 640: it keeps one (resize refused 0)."""
    assert embedded.detect(np.full((16, 21000, 3), 127, np.uint8)) == []
    assert embedded.detect_batch([np.full((21000, 16, 3), 127, np.uint8)], [None]) == [[]]


def test_available_and_signature():
    assert EmbeddedBackend.is_available()
    b = create_backend("embedded", {"score_threshold": 0.8})
    assert b.signature() != create_backend("embedded").signature()
    assert "score_threshold=0.8" in b.signature()


def test_missing_dlib_model_names_file_and_fix(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "face_recognition_models" else real(name, *a))
    monkeypatch.setattr("ferdata.faces.embedded.Path", _NoSystemPath)
    with pytest.raises(MissingModelError) as err:
        dlib_model_path(tmp_path)
    msg = str(err.value)
    assert DLIB_68 in msg and str(tmp_path) in msg and "pip install face-recognition-models" in msg
    assert not EmbeddedBackend.is_available(tmp_path)


class _NoSystemPath(type(__import__("pathlib").Path())):
    """A Path whose /usr/share/dlib copy (Debian's libdlib-data) never exists."""

    def is_file(self) -> bool:
        return not str(self).startswith("/usr/share/dlib") and super().is_file()


def test_threads_sharing_a_fresh_backend_load_each_model_once(monkeypatch):
    """A Predictor in a thread-pool server: the threads of the first requests each loaded the ONNX
    session and the ~100 MB dlib predictor themselves (8 threads: 8 loads, 8x the first answers' time)."""
    import threading
    import time

    import cv2
    from skimage import data

    loads = {"detector": 0, "predictor": 0}

    def counted(kind, load):
        def wrapper(self):
            loads[kind] += 1
            time.sleep(0.2)                               # a load takes a while: the others arrive meanwhile
            load(self)
        return wrapper

    monkeypatch.setattr(EmbeddedBackend, "load_detector", counted("detector", EmbeddedBackend.load_detector))
    monkeypatch.setattr(EmbeddedBackend, "load_predictor", counted("predictor", EmbeddedBackend.load_predictor))
    backend = EmbeddedBackend({"threads": 1})
    image = cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    start, found = threading.Barrier(6), []

    def first_call():
        start.wait()
        found.append(len(backend.detect(image)))

    threads = [threading.Thread(target=first_call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert found == [1] * 6 and loads == {"detector": 1, "predictor": 1}, (found, loads)


def test_the_detectors_threads_do_not_spin_between_runs():
    """ONNX Runtime's idle intra-op threads spin by default and took the cores the steps after each
    detection (dlib, the crop's decode, torch) ran on in ``ferdata predict``."""
    backend = EmbeddedBackend({"threads": 2})
    backend.load_detector()
    options = backend._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
