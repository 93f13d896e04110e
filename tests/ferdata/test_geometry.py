"""Geometry: alignment matches insightface's norm_crop on real photos; property tests for the
similarity fit, template scaling, landmark transforms, flips and half-faces."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from ferdata.geometry import (
    ARCFACE_112, FLIP_5, FLIP_68, IBUG_GROUPS, align_face, estimate_norm, five_from_68, flip_landmarks,
    half_landmarks, reduced_frame, similarity_matrix, split_halves, template, transform_points,
)

pytestmark = pytest.mark.usefixtures("offline")
RNG = np.random.default_rng(0)


def random_similarity(rng: np.random.Generator) -> np.ndarray:
    angle, scale = rng.uniform(-np.pi, np.pi), rng.uniform(0.2, 5.0)
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    return np.array([[c, -s, rng.uniform(-300, 300)], [s, c, rng.uniform(-300, 300)]])


def norm_crop_with_matrix(img, kps, size):
    from insightface.utils.face_align import estimate_norm as insight_estimate_norm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # skimage 0.26 FutureWarning inside insightface
        m = insight_estimate_norm(np.asarray(kps, np.float32), size)
    import cv2

    return cv2.warpAffine(img, m, (size, size), borderValue=0.0), m


@pytest.mark.parametrize("size", [112, 224, 128, 256])
def test_matches_insightface_norm_crop_on_real_photos(embedded, photos, size):
    from insightface.utils.face_align import norm_crop

    faces = [(photos[n], f) for n in ("astronaut", "grace_hopper", "t1") for f in embedded.detect(photos[n])]
    assert len(faces) == 8
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size)), -1).reshape(-1, 2).astype(np.float64)
    for img, f in faces:
        ours = align_face(img, f.kps5, size, lmk68=f.lmk68)
        theirs, m = norm_crop_with_matrix(img, f.kps5, size)
        # every crop pixel samples the same source point within 1 px (in fact ~1e-4 px)
        src_ours = transform_points(grid, np.linalg.inv(np.vstack([ours.matrix, [0, 0, 1]]))[:2])
        src_theirs = transform_points(grid, np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2])
        assert np.abs(src_ours - src_theirs).max() < 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = norm_crop(img, np.asarray(f.kps5, np.float32), size)
        diff = np.abs(ours.image.astype(int) - ref.astype(int))
        assert diff.max() <= 2 and diff.mean() < 0.1      # float32 vs float64 matrix rounding only
        np.testing.assert_allclose(ours.lmk68, transform_points(f.lmk68, m), atol=0.05)


def test_similarity_fit_recovers_random_transforms():
    for _ in range(200):
        m = random_similarity(RNG)
        src = RNG.uniform(-100, 100, size=(int(RNG.integers(2, 70)), 2))
        dst = transform_points(src, m)
        np.testing.assert_allclose(similarity_matrix(src, dst), m, rtol=1e-4, atol=1e-2)


def test_similarity_fit_is_least_squares_under_noise():
    for _ in range(50):
        m = random_similarity(RNG)
        src = RNG.uniform(-100, 100, size=(5, 2))
        dst = transform_points(src, m) + RNG.normal(0, 1.0, size=(5, 2))
        fit = similarity_matrix(src, dst)
        base = np.linalg.norm(transform_points(src, fit) - dst)
        for _ in range(5):                    # no nearby similarity does better
            c = random_similarity(RNG) * 1e-3
            c[:, :2] += fit[:, :2]
            c[:, 2] += fit[:, 2]
            assert base <= np.linalg.norm(transform_points(src, c) - dst) + 1e-6


def test_similarity_fit_equals_skimage_umeyama():
    """The 2-D closed form gives skimage's (Umeyama, SVD) estimate, also for noisy, mirrored
    (a reflection fits better, a similarity must not use it) and two-point inputs."""
    from skimage.transform import SimilarityTransform

    for i in range(300):
        k = int(RNG.integers(2, 70))
        src = RNG.uniform(-100, 100, size=(k, 2))
        dst = transform_points(src, random_similarity(RNG)) + RNG.normal(0, 5.0, size=(k, 2))
        if i % 3 == 0:
            dst[:, 0] *= -1
        ref = SimilarityTransform.from_estimate(src, dst) if hasattr(SimilarityTransform, "from_estimate") else None
        if ref is None:
            ref = SimilarityTransform()
            ref.estimate(src, dst)
        np.testing.assert_allclose(similarity_matrix(src, dst), ref.params[:2], rtol=1e-7, atol=1e-7)


def test_degenerate_and_bad_input():
    with pytest.raises(ValueError, match="degenerate"):
        similarity_matrix(np.ones((5, 2)), ARCFACE_112)
    with pytest.raises(ValueError, match="NaN"):
        estimate_norm(np.full((5, 2), np.nan), 112)
    with pytest.raises(ValueError, match="5 keypoints"):
        estimate_norm(np.zeros((4, 2)), 112)
    with pytest.raises(ValueError, match="multiple of 112 or 128"):
        template(100)
    with pytest.raises(ValueError, match="padding"):
        template(112, -0.1)


def test_template_scaling_rule():
    np.testing.assert_allclose(template(224), ARCFACE_112 * 2)
    np.testing.assert_allclose(template(128), ARCFACE_112 + [8, 0])
    np.testing.assert_allclose(template(256), (ARCFACE_112 + [8, 0]) * 2)
    padded = template(112, 0.25)
    centre = np.array([56.0, 56.0])
    np.testing.assert_allclose(padded - centre, (ARCFACE_112 - centre) / 1.25)
    assert abs(template(112)[:, 0].mean() - 56) < 0.2           # midline at the crop centre


def test_template_points_land_on_template():
    for size in (112, 224, 128):
        m = random_similarity(RNG)
        kps = transform_points(template(size), np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2])
        np.testing.assert_allclose(transform_points(kps, estimate_norm(kps, size)), template(size), atol=1e-3)


def test_flip_permutation_is_an_involution():
    np.testing.assert_array_equal(FLIP_68[FLIP_68], np.arange(68))
    np.testing.assert_array_equal(FLIP_5[FLIP_5], np.arange(5))
    assert sorted(FLIP_68.tolist()) == list(range(68))
    for a, b in (("brow1", "brow2"), ("eye1", "eye2")):
        assert set(FLIP_68[list(IBUG_GROUPS[a])]) == set(IBUG_GROUPS[b])
    for group in ("nose_bridge",):
        np.testing.assert_array_equal(FLIP_68[list(IBUG_GROUPS[group])], IBUG_GROUPS[group])
    assert FLIP_68[8] == 8 and FLIP_68[51] == 51 and FLIP_68[57] == 57   # chin, lip midpoints stay


def test_flip_landmarks_twice_is_identity_and_matches_image_flip(embedded, photos):
    img = photos["astronaut"]
    f = embedded.detect(img)[0]
    w = img.shape[1]
    np.testing.assert_allclose(flip_landmarks(flip_landmarks(f.lmk68, w), w), f.lmk68)
    np.testing.assert_allclose(flip_landmarks(flip_landmarks(f.kps5, w), w), f.kps5)
    mirrored = embedded.detect(np.ascontiguousarray(img[:, ::-1]))[0]
    # the detector on the mirrored photo agrees with our flipped landmarks (semantics kept)
    assert np.abs(mirrored.kps5 - flip_landmarks(f.kps5, w)).max() < 3.0
    assert np.median(np.abs(mirrored.lmk68 - flip_landmarks(f.lmk68, w))) < 3.0
    batch = np.stack([f.lmk68, f.lmk68 + 1])
    np.testing.assert_allclose(flip_landmarks(batch, w)[1], flip_landmarks(f.lmk68 + 1, w))


def test_five_from_68():
    lmk = RNG.uniform(0, 100, (68, 2))
    five = five_from_68(lmk)
    np.testing.assert_allclose(five[0], lmk[36:42].mean(0), rtol=1e-5)
    np.testing.assert_allclose(five[1], lmk[42:48].mean(0), rtol=1e-5)
    np.testing.assert_allclose(five[2:], lmk[[30, 48, 54]], rtol=1e-5)


def test_halves_split_at_midline_and_mirror():
    face = RNG.integers(0, 255, (112, 112, 3), dtype=np.uint8)
    left, right = split_halves(face)
    assert left.shape == right.shape == (112, 56, 3)
    np.testing.assert_array_equal(left, face[:, :56])
    np.testing.assert_array_equal(right, face[:, ::-1][:, :56])   # = left half of the flipped face
    np.testing.assert_array_equal(right[:, ::-1], face[:, 56:])
    with pytest.raises(ValueError, match="even"):
        split_halves(face[:, :111])


def test_half_landmarks_follow_the_mirrored_pixels(embedded, photos):
    f = embedded.detect(photos["grace_hopper"])[0]
    al = align_face(photos["grace_hopper"], f.kps5, 112, lmk68=f.lmk68)
    left_lmk, right_lmk = half_landmarks(al.lmk68, 112)
    np.testing.assert_allclose(left_lmk, al.lmk68)
    # right-half point i is the mirror of original point FLIP_68[i]: same pixel content
    for i in (36, 39, 48, 31):
        x, y = al.lmk68[FLIP_68[i]]
        xr, yr = right_lmk[i]
        assert abs(xr - (111 - x)) < 1e-4 and abs(yr - y) < 1e-4
    # the eye in the mirrored right half sits where the left half's eye sits (symmetric face)
    assert np.abs(right_lmk[36:42].mean(0) - left_lmk[36:42].mean(0)).max() < 6
    assert (right_lmk[36:48:1][:6, 0] < 56).all() and (left_lmk[36:42, 0] < 56).all()


@pytest.mark.parametrize("scale", [0.5, 0.25, 0.125])
def test_rescaled_faces_and_records_map_pixel_centres_as_the_reduced_decode(scale):
    """Detections made on a reduced decode go back to source pixels by the inverse of the map
    align uses into a reduced decode; a round trip returns the points (it shifted them by
    (r - 1) / 2 source px when points were only multiplied)."""
    from ferdata.faces.base import Face
    from ferdata.records import FaceRecord, scale_record

    rng = np.random.default_rng(0)
    kps, lmk = rng.uniform(0, 900, (5, 2)), rng.uniform(0, 900, (68, 2))
    face = Face((10.0, 20.0, 300.0, 400.0), 0.9, kps.astype(np.float32), lmk.astype(np.float32))
    np.testing.assert_allclose(face.scaled(scale).kps5, transform_points(kps, reduced_frame(scale)), atol=1e-3)
    back = face.scaled(scale).scaled(1 / scale)
    np.testing.assert_allclose(back.kps5, kps, atol=1e-3)
    np.testing.assert_allclose(back.lmk68, lmk, atol=1e-3)
    assert back.box == pytest.approx(face.box)
    rec = FaceRecord("d", "k", "x.jpg", 0, "", box=(10.0, 20.0, 300.0, 400.0), landmarks=lmk.astype(np.float32))
    np.testing.assert_allclose(scale_record(rec, scale).landmarks, face.scaled(scale).lmk68, atol=1e-4)


@pytest.mark.parametrize("size", [112, 128, 224, 256])
def test_the_halves_split_half_a_pixel_left_of_the_template_midline(size):
    """split_halves' docstring: the template's midline lies at x = size/2 (within 0.15 px per 112),
    the split and the flip axis at size/2 - 0.5 (pixel centres), whatever the crop size."""
    dst = template(size)
    midline = [(dst[0, 0] + dst[1, 0]) / 2, dst[2, 0], (dst[3, 0] + dst[4, 0]) / 2]
    assert np.allclose(midline, size / 2, atol=0.15 * size / 112)
    ramp = np.tile(np.arange(size, dtype=np.float32), (4, 1))            # each pixel holds its x
    left, right = split_halves(ramp)
    assert left[0, -1] == size / 2 - 1 and right[0, -1] == size / 2      # columns either side of the split
    assert (left[0, -1] + right[0, -1]) / 2 == size / 2 - 0.5
    x = np.array([[size / 2 - 0.5, 0.0]] * 68, np.float32)
    assert np.allclose(flip_landmarks(x, size)[:, 0], size / 2 - 0.5)  # the flip's fixed axis


def test_flip_68_equals_the_ibug_mirror_table_and_keeps_a_symmetric_face():
    """Guards against a wrong pair in FLIP_68 that is still an involution (e.g. the nostrils
    31..35 left unreversed): the table must equal face-alignment's ``shuffle_lr``, written out
    here pair by pair, and flipping a mirror-symmetric face must give back (almost) the same points."""
    pairs = [(i, 16 - i) for i in range(8)]                                   # jaw 0<->16 ... 7<->9
    pairs += [(17 + i, 26 - i) for i in range(5)]                             # brows 17<->26 ... 21<->22
    pairs += [(31, 35), (32, 34)]                                             # nostrils
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]     # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]               # outer lips
    pairs += [(60, 64), (61, 63), (65, 67)]                                   # inner lips
    expected = list(range(68))                                                # 8, 27-30, 33, 51, 57, 62, 66 stay
    for a, b in pairs:
        expected[a], expected[b] = b, a
    assert FLIP_68.tolist() == expected

    from fermodels.examples import synthetic_landmarks

    face = synthetic_landmarks(112).numpy()
    # the synthetic face is symmetric about x = 56 and the flip axis is x = 55.5: 1 px apart at most
    assert np.abs(flip_landmarks(face, 112) - face).max() < 2.0


def test_a_detector_on_a_shrunk_copy_maps_back_per_axis_as_cv2_resize_places_pixels():
    """Every shrink tested kept both axes' scale equal (1600 x 1200 -> 320 x 240), so one scale for both
    axes, or the x scale used for y, passed. A 1000 x 601 image shrunk to 640 rounds 384.64 rows to 385:
    sx = 640 / 1000, sy = 385 / 601. Boxes (pixel edges) divide by the scale; points (pixel centres) map
    as x = (x' + 0.5) / s - 0.5 on each axis; both checked against a blob cv2.resize itself moved."""
    import cv2

    from ferdata.geometry import resized_back, shrunk

    ys, xs = np.mgrid[0:601, 0:1000].astype(np.float64)
    cx, cy = 612.3, 377.8
    image = np.rint(255 * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * 40.0 ** 2))).astype(np.uint8)
    small, scale = shrunk(image, 640)
    assert small.shape == (385, 640) and scale == (640 / 1000, 385 / 601)
    sy_, sx_ = np.mgrid[0:385, 0:640]
    found = np.array([(small * sx_).sum(), (small * sy_).sum()]) / small.sum()      # the blob as detected there
    boxes, points = resized_back(np.array([[64.0, 38.5, 640.0, 385.0]]), found[None], scale)
    np.testing.assert_allclose(boxes, [[100.0, 38.5 * 601 / 385, 1000.0, 601.0]], rtol=1e-6)
    np.testing.assert_allclose(points[0], [cx, cy], atol=0.1)
    assert cv2.resize(image, (640, 385), interpolation=cv2.INTER_AREA).shape == small.shape
    # each axis its own offset, by hand: x' = (x + 0.5) / 2 - 0.5, y' = (y + 0.5) / 4 - 0.5
    np.testing.assert_allclose(reduced_frame(0.5, 0.25), [[0.5, 0, -0.25], [0, 0.25, -0.375]])
