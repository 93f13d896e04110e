"""A detected face checked before it is cropped (ferdata.crop): the 68 landmarks' distance bound
(MAX_LANDMARK_GAP, in keypoint spreads) and the off-image bound at the picture's edge."""
from __future__ import annotations

import numpy as np
import pytest

from ferdata.crop import BadGeometry, checked_points
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
