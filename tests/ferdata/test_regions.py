"""PCNN region boxes: the fixed fractions cut exactly like the public code; landmark boxes
enclose their landmark groups; both are chosen by name."""
from __future__ import annotations

import numpy as np
import pytest

from ferdata.geometry import align_face
from ferdata.regions import (
    LANDMARK_GROUPS, REGION_MODES, REGION_NAMES, crop_regions, fixed_regions, landmark_regions, region_boxes,
)
from ferdata.registry import UnknownNameError

pytestmark = pytest.mark.usefixtures("offline")


def pcnn_code_slices(h: int, w: int) -> dict[str, tuple[slice, slice]]:
    """hellloxiaotian/PCNN network/models.py (1656fc6), with its float32 torch fractions."""
    import torch

    w1, h1, h2 = torch.tensor(0.5), torch.tensor(0.5), torch.tensor(0.65)
    w_1, h_1, h_2 = int(w * w1), int(h * h1), int(h * h2)
    return {"eye_left": (slice(0, h_1), slice(0, w_1)), "eye_right": (slice(0, h_1), slice(w_1, w)),
            "cheek_left": (slice(h_1, h_2), slice(0, w_1)), "cheek_right": (slice(h_1, h_2), slice(w_1, w)),
            "mouth": (slice(h_2, h), slice(0, w))}


@pytest.mark.parametrize("size", [224, 112, 100, 128, 256])
def test_fixed_regions_match_the_public_code(size):
    pytest.importorskip("torch")
    image = np.arange(size * size * 3, dtype=np.int64).reshape(size, size, 3)
    ours = crop_regions(image, fixed_regions(size))
    for name, (rows, cols) in pcnn_code_slices(size, size).items():
        np.testing.assert_array_equal(ours[name], image[rows, cols])


def test_fixed_regions_at_224_are_the_documented_sizes():
    boxes = fixed_regions(224)
    sizes = {k: (b[3] - b[1], b[2] - b[0]) for k, b in boxes.items()}
    assert sizes == {"eye_left": (112, 112), "eye_right": (112, 112), "cheek_left": (33, 112),
                     "cheek_right": (33, 112), "mouth": (79, 224)}
    with pytest.raises(ValueError):
        fixed_regions(224, h1=0.7, h2=0.65)


def test_landmark_regions_enclose_their_groups(embedded, photos):
    f = embedded.detect(photos["astronaut"])[0]
    al = align_face(photos["astronaut"], f.kps5, 112, lmk68=f.lmk68)
    boxes = landmark_regions(al.lmk68, 112)
    assert list(boxes) == list(REGION_NAMES)
    for name, (x0, y0, x1, y1) in boxes.items():
        assert 0 <= x0 < x1 <= 112 and 0 <= y0 < y1 <= 112
        pts = np.clip(al.lmk68[list(LANDMARK_GROUPS[name])], 0, 112)
        assert (pts[:, 0] >= x0).all() and (pts[:, 0] <= x1).all()
        assert (pts[:, 1] >= y0).all() and (pts[:, 1] <= y1).all()
    # eyes above the mouth, image-left eye left of image-right eye
    assert boxes["eye_left"][0] < boxes["eye_right"][0]
    assert boxes["eye_left"][1] < boxes["mouth"][1]
    crops = crop_regions(al.image, boxes)
    assert all(c.ndim == 3 and c.size for c in crops.values())


def test_modes_by_name():
    lmk = np.random.default_rng(0).uniform(20, 90, (68, 2)).astype(np.float32)
    assert set(REGION_MODES.names()) == {"fixed", "landmarks"}
    assert region_boxes("fixed", 224) == fixed_regions(224)
    assert region_boxes("landmarks", 112, lmk) == landmark_regions(lmk, 112)
    with pytest.raises(ValueError, match="lmk.npy"):
        region_boxes("landmarks", 112)
    with pytest.raises(UnknownNameError, match="fixed"):
        region_boxes("grid", 112)
    with pytest.raises(ValueError, match=r"\(68, 2\)"):
        landmark_regions(lmk[:5], 112)
    with pytest.raises(ValueError, match="empty"):
        crop_regions(np.zeros((10, 10, 3)), {"x": [5, 5, 5, 9]})


def test_landmark_boxes_are_centred_on_their_points_pixels():
    """A landmark at pixel-centre (50, 60) is pixel column 50, row 60: a box around it, cut as
    slices, is centred on that pixel (it sat half a pixel up and left)."""
    lmk = np.tile(np.array([[50.0, 60.0]], np.float32), (68, 1))
    box = landmark_regions(lmk, 112)["mouth"]
    assert box == [48.5, 58.5, 52.5, 62.5]
    crop = crop_regions(np.arange(112 * 112).reshape(112, 112), {"mouth": box})["mouth"]
    assert crop.shape == (5, 5) and crop[2, 2] == 60 * 112 + 50


def test_landmark_groups_are_the_ibug_points_of_each_region_and_mirror_each_other():
    """The groups were only read back from the module: a right cheek built from the left mouth corner (48 for
    54) or an eye missing a corner kept every box test green. Written out from the iBUG-68 markup (0-based:
    jaw 0-16, brows 17-21 | 22-26, nostrils 31-35, eyes 36-41 | 42-47, lips 48-67; "left" = image left), and
    each right group must be its left group's mirror under the (separately pinned) iBUG flip table."""
    from ferdata.geometry import FLIP_68

    assert {k: sorted(v) for k, v in LANDMARK_GROUPS.items()} == {
        "eye_left": [17, 18, 19, 20, 21, 36, 37, 38, 39, 40, 41],
        "eye_right": [22, 23, 24, 25, 26, 42, 43, 44, 45, 46, 47],
        "cheek_left": [1, 2, 3, 4, 31, 40, 41, 48],
        "cheek_right": [12, 13, 14, 15, 35, 46, 47, 54],
        "mouth": list(range(48, 68)),
    }
    for left, right in (("eye_left", "eye_right"), ("cheek_left", "cheek_right"), ("mouth", "mouth")):
        assert sorted(int(FLIP_68[i]) for i in LANDMARK_GROUPS[left]) == sorted(LANDMARK_GROUPS[right])


def test_landmark_boxes_grow_by_the_margin_of_their_extent_and_clip_at_the_crops_edge():
    """The boxes above have no extent (all points on one pixel), so the margin (15% of the group's extent
    + 2 px a side) and the clip were never exercised: a doubled margin or a clip at size - 1 (the last
    pixel row lost: edges are in pixel-edge coordinates, the crop ends at 112) passed. By hand: mouth
    points spanning pixel centres x 40..60, y 100..110 are edges [40.5, 60.5] x [100.5, 110.5]; the pad is
    (20 * 0.15 + 2, 10 * 0.15 + 2) = (5, 3.5); the bottom edge 114 clips to 112."""
    lmk = np.tile(np.array([[50.0, 60.0]], np.float32), (68, 1))
    mouth = list(range(48, 68))
    lmk[mouth, 0] = np.linspace(40.0, 60.0, len(mouth))
    lmk[mouth, 1] = np.linspace(100.0, 110.0, len(mouth))
    assert landmark_regions(lmk, 112)["mouth"] == [35.5, 97.0, 65.5, 112.0]
    assert crop_regions(np.zeros((112, 112)), {"m": [35.5, 97.0, 65.5, 112.0]})["m"].shape == (15, 31)
