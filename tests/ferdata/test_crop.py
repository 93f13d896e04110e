"""A detected face checked before it is cropped (ferdata.crop): the 68 landmarks' distance bound
(MAX_LANDMARK_GAP, in keypoint spreads) and the off-image bound at the picture's edge."""
from __future__ import annotations

import numpy as np
import pytest

from ferdata.crop import BadGeometry, check_landmarks, checked_points
from ferdata.geometry import ARCFACE_112, reduced_frame, spread, transform_points


def _landmarks_of(kps: np.ndarray) -> np.ndarray:
    """68 points whose five (eye centres, nose tip, mouth corners) are ``kps``; the rest on a ring."""
    centre = kps.mean(0)
    t = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    lmk = centre + spread(kps) * np.stack([np.cos(t), np.sin(t)], 1)
    lmk[36:42], lmk[42:48], lmk[30], lmk[48], lmk[54] = kps[0], kps[1], kps[2], kps[3], kps[4]
    return lmk


@pytest.mark.parametrize("size", [1.0, 4.0])
@pytest.mark.parametrize("gaps, kept", [(0.9, True), (1.1, False)])
def test_68_landmarks_are_kept_up_to_one_keypoint_spread_from_the_5(size, gaps, kept):
    """The bound is relative to the face's size: the same offsets in spreads, at two face sizes."""
    kps = (ARCFACE_112 - ARCFACE_112.mean(0)) * size + 300.0
    lmk = _landmarks_of(kps) + [gaps * spread(kps), 0.0]
    face = {"box": [0.0, 0.0, 600.0, 600.0], "kps5": kps.tolist(), "lmk68": lmk.tolist()}
    if kept:
        _, got = checked_points(face, (600, 600, 3))
        np.testing.assert_allclose(got, lmk, atol=1e-3)
    else:
        with pytest.raises(BadGeometry, match=r"the 68 landmarks lie 1.10 keypoint spreads from the 5") as drop:
            checked_points(face, (600, 600, 3))
        assert drop.value.reason == "implausible_landmarks"


def test_a_keypoint_centre_on_the_right_or_bottom_edge_is_outside_the_picture():
    kps = (ARCFACE_112 - ARCFACE_112.mean(0)) * 0.5
    for offset in np.arange(100.0, 200.0):
        centre = transform_points(kps + offset, reduced_frame(1.0)).astype(np.float64).mean(0)
        if (centre == np.round(centre)).all():
            break
    else:
        pytest.skip("no offset gives a whole-pixel centre")
    w, h = int(centre[0]), int(centre[1])
    face = {"box": [0.0, 0.0, 10.0, 10.0], "kps5": (kps + offset).tolist(), "lmk68": None}
    checked_points(face, (h + 1, w + 1, 3))                                    # inside, by the last pixel
    for shape in ((h + 1, w, 3), (h, w + 1, 3)):
        with pytest.raises(BadGeometry) as drop:
            checked_points(face, shape)
        assert drop.value.reason == "face_outside_image"


def _kps_face(kps, lmk=None):
    return {"box": [0.0, 0.0, 600.0, 600.0], "kps5": np.asarray(kps).tolist(),
            "lmk68": None if lmk is None else np.asarray(lmk).tolist()}


@pytest.mark.parametrize("missing", [[2, 3, 4], [0, 3, 4], [1, 2, 3, 4], [0, 1, 2, 3], [0, 2, 3, 4]])
@pytest.mark.parametrize("placeholder", [(0.0, 0.0), (-1.0, -1.0)])
def test_keypoints_with_most_of_them_missing_are_dropped(missing, placeholder):
    """An annotation file's placeholder for a missing point, (0, 0) or (-1, -1), on 3 or 4 of the 5:
    their template misfit is 0.7-0.9, under MAX_MISFIT, and the face was aligned into a mostly black
    crop of the whole photo."""
    kps = ARCFACE_112 * 1.6 + [120.0, 30.0]
    kps[missing] = placeholder
    with pytest.raises(BadGeometry) as drop:
        checked_points(_kps_face(kps), (512, 512, 3))
    assert drop.value.reason == "bad_landmarks" and "lie on one spot" in str(drop.value)


def test_faces_squeezed_to_a_profile_are_still_kept():
    face = ARCFACE_112 * 3 + 100
    centre = face.mean(0)
    for kept in (face, (face - centre) * [0.02, 1.0] + centre, (face - centre) * [0.02, 0.5] + centre):
        assert np.allclose(checked_points(_kps_face(kept), (600, 600, 3))[0], kept, atol=1e-3)


def _plausible_68(kps: np.ndarray) -> np.ndarray:
    """68 points around the 5 keypoints: eye rings on the eye centres, nose tip and mouth corners on
    theirs, a jaw arc below, the rest scattered about the centre."""
    rng = np.random.default_rng(0)
    centre = kps.mean(0)
    lmk = centre + rng.normal(0, 12, (68, 2))
    for eye, ring in ((kps[0], slice(36, 42)), (kps[1], slice(42, 48))):
        lmk[ring] = eye + 5 * np.stack([np.cos(np.arange(6)), np.sin(np.arange(6))], 1)
        lmk[ring] += eye - lmk[ring].mean(0)
    lmk[30], lmk[48], lmk[54] = kps[2], kps[3], kps[4]
    arc = np.linspace(3.3, 6.1, 17)
    lmk[0:17] = centre + 45 * np.stack([np.cos(arc), -np.sin(arc)], 1)
    return lmk


@pytest.mark.parametrize("index, where", [(2, (1e6, 1e6)), (13, (-4000.0, 9000.0)), (20, (150.0, -3000.0))])
def test_one_misplaced_landmark_of_68_drops_the_face(index, where):
    """Only the 68's five points were compared with the keypoints: one typo'd jaw or brow point was
    kept, its region box the whole crop and the point lost from the heatmap."""
    kps = ARCFACE_112 * 1.5 + 150
    lmk = _plausible_68(kps)
    checked_points(_kps_face(kps, lmk), (600, 600, 3))           # kept as drawn
    lmk[index] = where
    with pytest.raises(BadGeometry) as drop:
        checked_points(_kps_face(kps, lmk), (600, 600, 3))
    assert drop.value.reason == "implausible_landmarks" and f"landmark {index} lies" in str(drop.value)


def test_keypoints_sharing_a_row_or_column_are_not_one_spot():
    """Integer annotations put eyes on one row and an eye above its mouth corner on one column: only
    points equal in x *and* y are one spot (a placeholder). Compared per axis, this frontal face of 5
    distinct points counted 3 "at one spot" and was dropped as missing points."""
    kps = np.array([[38.0, 52.0], [74.0, 52.0], [56.0, 72.0], [38.0, 92.0], [74.0, 92.0]]) * 2 + 100
    got, _ = checked_points(_kps_face(kps), (600, 600, 3))
    np.testing.assert_allclose(got, kps, atol=1e-3)


def test_a_turned_face_listed_in_the_subjects_order_is_dropped_not_warped_upside_down():
    """RAF-DB-style 5 points of a turned face (the sample's train_00033) listed subject-first fit the template
    with misfit 0.8996, under MAX_MISFIT: 22 of the sample's 480 faces so listed were kept, each crop a small
    face turned over. In image-left order the same points fit with misfit 0.30 and are kept."""
    ordered = np.array([[125.33, 116.62], [157.96, 107.59], [133.63, 148.56], [143.46, 183.61], [171.34, 172.68]])
    face = {"box": [108.0, 55.0, 234.0, 225.0], "kps5": ordered}
    kps, _ = checked_points(face, (256, 256, 3))
    assert np.allclose(kps, ordered, atol=1e-3)
    with pytest.raises(BadGeometry, match="mirror image"):
        checked_points({**face, "kps5": ordered[[1, 0, 2, 4, 3]]}, (256, 256, 3))
    for angle in (0, 90, 180, 270):                      # any roll of a face in ArcFace order is kept
        rot = np.array([[np.cos(np.radians(angle)), -np.sin(np.radians(angle))],
                        [np.sin(np.radians(angle)), np.cos(np.radians(angle))]])
        turned = (ARCFACE_112 - 56) @ rot.T + 128
        checked_points({"box": [0.0, 0.0, 256.0, 256.0], "kps5": turned}, (256, 256, 3))


def test_faces_in_full_profile_are_kept_whichever_way_detector_noise_lists_their_eyes():
    """A face in full profile has its eyes on one spot; a pixel of detector noise lists them either way round.
    The handedness as a sine was +-1 there, and 30% of such faces (1.5 px noise, 80 px eye to mouth) were dropped
    as mirror images; the misfit check kept them (test_faces_squeezed_to_a_profile_are_still_kept)."""
    face = ARCFACE_112 * 2 + 100
    centre = face.mean(0)
    noise = np.random.default_rng(0).normal(0, 1.5, (200, 5, 2))
    for n in noise:
        checked_points(_kps_face((face - centre) * [0.0, 1.0] + centre + n), (400, 400, 3))
    crossed = (face - centre) * [-0.01, 1.0] + centre           # the far eye a pixel past the near one
    checked_points(_kps_face(crossed), (400, 400, 3))


def test_5_points_with_only_the_mouth_corners_mirrored_are_dropped_not_shrunk():
    """RAF-DB-style manual points (astronaut's face: eye centres, nose tip, mouth corners from dlib's 68) with the
    eyes image-left first but the mouth corners the subject's: misfit 0.84, under MAX_MISFIT, and the eye check
    passes, so the face was aligned shrunk to 0.55 of its size, eyes and mouth 11 px of 112 off the template."""
    ordered = np.array([[203.0, 101.5], [246.33, 103.67], [225.0, 127.0], [200.0, 139.0], [245.0, 141.0]])
    face = {"box": [177.6, 57.0, 272.8, 177.2], "kps5": ordered}
    kps, _ = checked_points(face, (512, 512, 3))
    assert np.allclose(kps, ordered, atol=1e-3)
    with pytest.raises(BadGeometry, match="mouth corners are a mirror image") as drop:
        checked_points({**face, "kps5": ordered[[0, 1, 2, 4, 3]]}, (512, 512, 3))
    assert drop.value.reason == "implausible_landmarks"


def test_a_rolled_face_whose_landmarks_the_model_lost_is_told_so():
    """dlib's 68 points miss a face rolled a quarter turn while RetinaFace's 5 keypoints find it: the drop said
    only "they are another face's" (audit h129: 28 of 46 real faces rolled 60 degrees were dropped so)."""
    from skimage import data

    from ferdata.faces.embedded import EmbeddedBackend

    picture = np.ascontiguousarray(np.rot90(data.astronaut()[..., :3]))
    (face,) = EmbeddedBackend().detect(picture)
    with pytest.raises(BadGeometry, match="keypoint spreads") as drop:
        check_landmarks(np.asarray(face.lmk68), np.asarray(face.kps5))
    assert "the landmark model lost this one" in drop.value.detail and "rolled" in drop.value.detail
