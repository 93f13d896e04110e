"""Large faces decode at 1/2..1/8 in the align stage: the same geometry as a full decode (the
source->crop matrix and crop landmarks agree), pixels like an anti-aliased downscale."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from ferdata.faces.base import select_face
from ferdata.geometry import align_face, crop_reduction, estimate_norm, template
from ferdata.io import decode_image
from ferdata.crop import checked_points, crop_face, source_matrix

ZOOM = 2                       # the photo upscaled 2x: its face is 4-8x larger than a 112 crop needs


@pytest.mark.parametrize("k, expected", [(1.0, 1), (1.9, 1), (2.0, 2), (2.5, 2), (5.0, 4), (9.0, 8), (20.0, 8)])
def test_crop_reduction_keeps_at_least_crop_resolution(k, expected):
    """Keypoints k times the template's spacing: the face at 1/r is still >= the crop (k / r >= 1)."""
    assert crop_reduction(template(112) * k, 112) == expected
    assert crop_reduction(template(112) * k, 112, limit=1) == 1


def test_crop_reduction_of_degenerate_points_is_one():
    assert crop_reduction(np.zeros((5, 2)), 112) == 1
    assert crop_reduction(np.full((5, 2), np.nan), 112) == 1
    assert crop_reduction(np.zeros((4, 2)), 112) == 1


def test_crop_reduction_never_undershoots_the_fitted_zoom():
    """On keypoints that are no exact similarity of the template (expressions, pose, detector
    noise), the reduction chosen without a fit still leaves the face at >= crop resolution by
    the fitted matrix, and is the fit's own choice in most cases."""
    rng = np.random.default_rng(0)
    same = 0
    for _ in range(500):
        k = rng.uniform(0.8, 12.0)
        angle = rng.uniform(-0.6, 0.6)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        kps = (template(112) * k) @ rot.T + rng.uniform(0, 800, 2) + rng.normal(0, 0.08 * k * 10, (5, 2))
        r = crop_reduction(kps, 112)
        fitted = np.sqrt(abs(np.linalg.det(estimate_norm(kps, 112)[:, :2])))   # crop px per source px
        assert r == 1 or fitted * r <= 1.0 + 1e-9                               # a small face: no reduction
        exact = 1
        while exact * 2 <= 8 and fitted * exact * 2 <= 1.0:
            exact *= 2
        assert r <= exact
        same += r == exact
    assert same >= 450


@pytest.fixture(scope="module")
def big_face(photos, embedded):
    """Grace Hopper at 2x as a q95 JPEG, with her face's points in the big image's pixels."""
    small = photos["grace_hopper"]
    face = select_face(embedded.detect(small), small.shape, "largest")
    big = cv2.resize(small, None, fx=ZOOM, fy=ZOOM, interpolation=cv2.INTER_CUBIC)
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(big, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    to_big = lambda p: (np.asarray(p, np.float64) + 0.5) * ZOOM - 0.5          # noqa: E731  pixel centres
    row = {"box": list(to_big(np.reshape(face.box, (2, 2))).ravel()), "kps5": to_big(face.kps5).tolist(),
           "lmk68": to_big(face.lmk68).tolist()}
    return jpg.tobytes(), row


def crop_at(data: bytes, row: dict, reduce: int):
    decoded = decode_image(data, reduce)
    kps5, lmk68 = checked_points(row, decoded.rgb.shape, decoded.scale)
    al = align_face(decoded.rgb, kps5, 112, lmk68=lmk68)
    return decoded, al


def test_reduced_decode_has_the_full_decodes_geometry(big_face):
    data, row = big_face
    reduce = crop_reduction(np.asarray(row["kps5"]), 112)
    assert reduce == 4                                   # the case under test really reduces (not the limit)
    full_dec, full = crop_at(data, row, 1)
    red_dec, red = crop_at(data, row, reduce)
    assert red_dec.scale == 1 / reduce and red_dec.rgb.shape[0] == -(-full_dec.rgb.shape[0] // reduce)
    assert red_dec.conversions == ()                     # not a conversion: resolution the crop never uses
    np.testing.assert_allclose(source_matrix(red.matrix, red_dec.scale), full.matrix, atol=1e-4)
    np.testing.assert_allclose(red.lmk68, full.lmk68, atol=1e-3)


def test_reduced_crop_matches_an_antialiased_downscale(big_face):
    """The 1/4 decode's crop equals (within JPEG/DCT differences) the crop of the full decode
    area-averaged 4x, with pixel centres mapped (x + 0.5) / 4 - 0.5; mapping them as x / 4
    shifts the face by 3/8 of a source pixel and is measurably worse; the plain full-decode
    warp (bilinear from 4x too many pixels) aliases and differs more."""
    data, row = big_face
    _, red = crop_at(data, row, 4)
    full_dec, full = crop_at(data, row, 1)
    area = cv2.resize(full_dec.rgb, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)

    def warp(shift: float) -> np.ndarray:
        kps = (np.asarray(row["kps5"]) + shift) * 0.25 - shift
        return align_face(area, kps, 112).image.astype(np.float64)

    def err(a: np.ndarray) -> float:
        return float(np.abs(red.image.astype(np.float64) - a)[8:-8, 8:-8].mean())

    right, shifted = err(warp(0.5)), err(warp(0.0))
    assert right < 1.5
    assert right < shifted
    assert right < err(full.image.astype(np.float64))


@pytest.mark.parametrize("side, size, reduce", [(240, 128, 1), (240, 112, 2), (1000, 112, 8), (1000, 128, 4),
                                                (1000, 256, 2)])
def test_precropped_decodes_at_no_less_than_the_crop(side, size, reduce):
    """A whole-image face is reduced by the crop it is warped to (this size's template), not by
    the 112 template the backend stored: at multiples of 128 the stored one allowed 1/2 on a
    240x240 image, 120 px upscaled to a 128 crop. Large images still decode reduced."""
    from ferdata.cache import face_to_dict
    from ferdata.faces import create_backend
    from ferdata.records import FaceRecord

    rng = np.random.default_rng(side)
    img = cv2.resize(rng.integers(0, 255, (side // 8, side // 8, 3), np.uint8), (side, side))
    ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    rec = FaceRecord(dataset="t", key="t_a", path="a.jpg", label=0, native_label="x", split="train")
    (f,) = create_backend("precropped").detect(img, rec)
    asked = []

    def decoded_at(r: int):
        asked.append(r)
        return decode_image(jpg.tobytes(), r)

    al, decoded = crop_face(face_to_dict(f), "precropped", size, 0.0, decoded_at)
    assert asked == [reduce] and decoded.scale == 1 / reduce
    assert min(decoded.rgb.shape[:2]) >= size
    zoom = np.sqrt(abs(np.linalg.det(al.matrix[:, :2])))               # crop px per decoded px
    assert zoom <= 1.0 + 1e-6 or reduce == 1
    np.testing.assert_allclose(source_matrix(al.matrix, decoded.scale)[:, :2], np.eye(2) * size / side, atol=1e-4)


def _face(kps: np.ndarray) -> dict:
    return {"box": [0.0, 0.0, 10.0, 10.0], "kps5": kps.tolist(), "lmk68": None}


def test_keypoints_no_face_has_are_dropped_and_turned_faces_kept():
    """Only coinciding or non-finite keypoints were dropped: a mirrored or shuffled order (a crop
    96% black, a face upside down) and a sub-pixel spread (a zoom of thousands) were cropped and
    kept as faces. Turned faces, up to full profile and pitched, stay."""
    from ferdata.geometry import ARCFACE_112, FLIP_5, template_misfit
    from ferdata.crop import MAX_MISFIT, BadGeometry

    face = ARCFACE_112 * 3 + 100                                # a face seen straight on
    shape = (600, 600, 3)
    centre = face.mean(0)
    profile = (face - centre) * [0.02, 1.0] + centre            # eyes and mouth almost on one line
    assert template_misfit(profile) < MAX_MISFIT
    pitched = (face - centre) * [0.02, 0.5] + centre            # full profile, seen from above
    for kept in (face, profile, pitched, (face - centre) * [0.5, 0.8] + centre):
        assert np.allclose(checked_points(_face(kept), shape)[0], kept, atol=1e-3)
    mirrored = face[FLIP_5]
    shuffled = face[[3, 4, 2, 0, 1]]                            # mouth where the eyes belong
    for bad in (mirrored, shuffled):
        with pytest.raises(BadGeometry, match=r"fit no face \(misfit 0\.9\d > 0.9") as drop:
            checked_points(_face(bad), shape)
        assert drop.value.reason == "implausible_landmarks"             # counted apart from malformed points
    with pytest.raises(BadGeometry, match=r"spread over 0.035 px .*no face that small"):
        checked_points(_face((face - centre) * 0.0005 + centre), shape)
    small = (face - centre) * 0.1 + centre                      # 2.3 px in the source, 0.6 px decoded at 1/4
    assert np.allclose(checked_points(_face(small), shape, 0.25)[0], (small + 0.5) / 4 - 0.5, atol=1e-3)


def test_keypoint_centre_checked_against_width_and_height_of_a_wide_picture():
    """Bug guarded: the image's height and width swapped in the off-image check: on a 600 x 100
    picture a face at x 300, y 50 was dropped as face_outside_image (and one past the bottom kept)."""
    from ferdata.geometry import ARCFACE_112
    from ferdata.crop import BadGeometry

    face = (ARCFACE_112 - ARCFACE_112.mean(0)) * 0.5 + [300.0, 50.0]
    assert np.allclose(checked_points(_face(face), (100, 600, 3))[0], face, atol=1e-3)
    below = face + [0.0, 100.0]                                     # centre (300, 150): under the picture
    with pytest.raises(BadGeometry) as drop:
        checked_points(_face(below), (100, 600, 3))
    assert drop.value.reason == "face_outside_image"


def test_non_finite_box_or_landmarks_are_dropped_by_reason():
    """Bug guarded: the box or the 68 landmarks not checked for NaN/inf: such a face was cropped and
    written (the crop's landmarks NaN, the json box NaN) instead of dropped as bad_box/bad_landmarks."""
    from ferdata.geometry import ARCFACE_112
    from ferdata.crop import BadGeometry

    kps = ARCFACE_112 * 3 + 100
    lmk = np.full((68, 2), 150.0)
    lmk[7] = np.nan
    for face, reason in (({"box": [0.0, float("nan"), 10.0, 10.0], "kps5": kps.tolist(), "lmk68": None}, "bad_box"),
                         ({"box": [0.0, 0.0, 10.0, 10.0], "kps5": kps.tolist(), "lmk68": lmk.tolist()},
                          "bad_landmarks")):
        with pytest.raises(BadGeometry) as drop:
            checked_points(face, (600, 600, 3))
        assert drop.value.reason == reason


def test_the_smallest_face_is_measured_in_source_pixels_not_in_the_reduced_decode():
    """Bug guarded: the MIN_SPREAD_PX bound (1 px RMS in the source) applied in the frame decoded
    at 1/4: a face of ~2 px spread in the source (0.5 px decoded) was dropped as bad_landmarks."""
    from ferdata.geometry import ARCFACE_112, spread

    face = ARCFACE_112 * 3 + 100
    centre = face.mean(0)
    small = (face - centre) * (2.0 / spread(face)) + centre        # 2 px RMS spread in the source
    assert abs(spread(small) - 2.0) < 1e-6
    assert np.allclose(checked_points(_face(small), (600, 600, 3), 0.25)[0], (small + 0.5) / 4 - 0.5, atol=1e-3)


def test_68_landmarks_that_are_not_the_keypoints_face_are_dropped(embedded, photos):
    """Only their shape and finiteness were checked: 68 points in mirrored order, all zeros or of a
    face 150 px away were kept, and derive drew eye boxes swapped, empty or off the crop. Here one
    real detection, its 68 points changed."""
    from ferdata.geometry import FLIP_68
    from ferdata.crop import BadGeometry

    face = max(embedded.detect(photos["astronaut"]), key=lambda f: f.area)
    row = {"box": list(face.box), "kps5": face.kps5.tolist(), "lmk68": face.lmk68.tolist()}
    shape = photos["astronaut"].shape
    kps, lmk = checked_points(row, shape)                               # the real pair passes
    np.testing.assert_allclose(lmk, face.lmk68, atol=1e-4)
    for name, points, reason, says in (
            ("mirrored", face.lmk68[FLIP_68], "implausible_landmarks", "the 68 landmarks fit no face"),
            ("zeros", np.zeros((68, 2)), "bad_landmarks", "the 68 landmarks coincide"),
            ("another face", face.lmk68 + [150.0, 0.0], "implausible_landmarks", "keypoint spreads from the 5")):
        with pytest.raises(BadGeometry, match=says) as drop:
            checked_points({**row, "lmk68": np.asarray(points).tolist()}, shape)
        assert drop.value.reason == reason, name


def test_a_face_outside_the_image_is_told_in_the_files_pixels():
    """The detail gave the centre and size in the reduced decode's frame: 'outside 32x32' for a
    256 px image decoded at 1/8."""
    from ferdata.geometry import ARCFACE_112
    from ferdata.crop import BadGeometry

    face = ARCFACE_112 * 0.5 + [900.0, 100.0]                           # centre about (928, 132) in the file
    with pytest.raises(BadGeometry, match=r"keypoint centre \(92\d, 13\d\) outside 256x256") as drop:
        checked_points(_face(face), (32, 32, 3), 0.125)
    assert drop.value.reason == "face_outside_image"


def test_the_stored_matrix_maps_source_landmarks_onto_the_crops_when_decoded_reduced(embedded, photos, tmp_path):
    """The json's source -> crop matrix was checked only as a function; here through the align worker,
    on a picture 4x the astronaut (decoded at a fraction): the detected source landmarks it maps
    land on the sample's own lmk.npy."""
    import hashlib
    import json

    from ferdata.cache import face_to_dict
    from ferdata.geometry import transform_points
    from ferdata.io import encode_jpeg
    from ferdata.records import FaceRecord, record_to_dict
    from ferdata.stages.align import AlignParams, AlignWorker
    from ferdata.tario import load_npy
    from tests.reliability.corpus import build

    big = cv2.resize(photos["astronaut"], None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    data = encode_jpeg(big, 92)
    (tmp_path / "big.jpg").write_bytes(data)
    face = max(embedded.detect(photos["astronaut"]), key=lambda f: f.area).scaled(4.0)
    rec = FaceRecord(dataset="t", key="k0", path=str(tmp_path / "big.jpg"), label=1, native_label="1")
    row = {"record": record_to_dict(rec), "face": face_to_dict(face), "backend": "embedded",
           "sha256": hashlib.sha256(data).hexdigest(), "num_faces": 1}
    sample = AlignWorker(build(AlignParams, "align", workers=1))(row)
    meta = json.loads(sample.fields["json"])
    assert decode_image(data, 2).scale < 1 and crop_reduction(face.kps5, 112, 0.0) > 1   # a reduced decode
    mapped = transform_points(np.asarray(row["face"]["lmk68"]), np.asarray(meta["matrix"]))
    np.testing.assert_allclose(mapped, load_npy(sample.fields["lmk.npy"]), atol=2e-3)
