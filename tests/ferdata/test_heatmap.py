"""Heatmaps: peaks where the landmarks are, sigma is the true std, numpy == torch, and the
stored uint8 map is the max of the per-landmark maps a model renders from lmk.npy."""
from __future__ import annotations

import numpy as np
import pytest

from ferdata.heatmap import gaussian_heatmaps, heatmap_stride, landmark_heatmaps, max_heatmap_u8

pytestmark = pytest.mark.usefixtures("offline")
RNG = np.random.default_rng(1)


def test_peak_at_the_point_at_stride_one():
    pts = np.array([[3.0, 7.0], [10.0, 2.0]], np.float32)
    maps = gaussian_heatmaps(pts, 16, 1.5)
    assert maps.shape == (2, 16, 16)
    for (x, y), m in zip(pts, maps):
        assert np.unravel_index(m.argmax(), m.shape) == (int(y), int(x))
        assert m.max() == pytest.approx(1.0)


def test_sigma_is_the_standard_deviation():
    for sigma in (0.7, 1.0, 2.5):
        m = gaussian_heatmaps(np.array([[31.0, 31.0]], np.float32), 64, sigma)[0]
        g = np.arange(64)
        w = m.sum(0)                               # marginal over rows -> x profile
        mean = (w * g).sum() / w.sum()
        std = np.sqrt((w * (g - mean) ** 2).sum() / w.sum())
        assert mean == pytest.approx(31.0, abs=1e-4)
        assert std == pytest.approx(sigma, rel=0.02)


def test_stride_maps_pixel_centres_to_cell_centres():
    # a landmark at the centre of a 4x4 pixel block is at that cell's centre
    stride = heatmap_stride(112, 28)
    assert stride == 4
    pts = np.array([[1.5 + 4 * 5, 1.5 + 4 * 9]], np.float32)     # block (col 5, row 9)
    m = gaussian_heatmaps(pts, 28, 1.0, stride)[0]
    assert m[9, 5] == pytest.approx(1.0, abs=1e-6)
    assert m[9, 4] == pytest.approx(m[9, 6]) and m[8, 5] == pytest.approx(m[10, 5])


def test_numpy_and_torch_agree_and_batch():
    torch = pytest.importorskip("torch")
    lmk = RNG.uniform(0, 112, (3, 68, 2)).astype(np.float32)
    a = landmark_heatmaps(lmk, 112, 28, 1.0)
    b = landmark_heatmaps(torch.from_numpy(lmk), 112, 28, 1.0)
    assert a.shape == tuple(b.shape) == (3, 68, 28, 28)
    np.testing.assert_allclose(a, b.numpy(), atol=1e-6)
    np.testing.assert_allclose(a[1], landmark_heatmaps(lmk[1], 112, 28, 1.0), atol=1e-7)


def test_stored_map_is_max_of_per_landmark_maps():
    lmk = RNG.uniform(10, 100, (68, 2)).astype(np.float32)
    u8 = max_heatmap_u8(lmk, 28, 1.0, 4.0)
    assert u8.dtype == np.uint8 and u8.shape == (28, 28)
    want = np.rint(landmark_heatmaps(lmk, 112, 28, 1.0).max(0) * 255).astype(np.uint8)
    np.testing.assert_array_equal(u8, want)
    assert u8.max() >= 200                          # landmarks near cell centres reach the top


def test_points_outside_fade_and_bad_arguments():
    m = gaussian_heatmaps(np.array([[-50.0, -50.0]], np.float32), 8, 1.0)
    assert m.max() < 1e-6
    with pytest.raises(ValueError, match="sigma"):
        gaussian_heatmaps(np.zeros((1, 2), np.float32), 8, 0.0)
    with pytest.raises(ValueError, match=r"\(\.\.\., K, 2\)"):
        gaussian_heatmaps(np.zeros((4, 3), np.float32), 8, 1.0)
    with pytest.raises(ValueError, match="positive"):
        heatmap_stride(112, 0)


def test_derive_writes_a_heatmap_only_for_a_face_with_landmarks():
    """A precropped face (no 68 points) gets no blank heatmap.png: a model that reads heatmaps is
    told the field is missing (fermodels' decoder names it) instead of training on zeros."""
    from ferdata.io import encode_jpeg
    from ferdata.tario import npy_bytes
    from ferdata.stages.derive import DeriveParams, DeriveWorker
    from fermodels.data import SampleDecoder

    face = np.full((112, 112, 3), 128, np.uint8)
    lmk = np.stack([np.linspace(20, 90, 68), np.linspace(30, 95, 68)], 1).astype(np.float32)
    derive = DeriveWorker(DeriveParams(28, 1.0, 95, 1, 1))
    _, with_points = derive(("a", {"jpg": encode_jpeg(face, 95), "lmk.npy": npy_bytes(lmk)}))
    _, without = derive(("b", {"jpg": encode_jpeg(face, 95)}))
    assert set(with_points) == {"heatmap.png", "left.jpg", "right.jpg", "regions.json"}
    assert set(without) == {"left.jpg", "right.jpg", "regions.json"}
    sample = {"__key__": "b", "jpg": encode_jpeg(face, 95), "cls": b"0", **without}
    with pytest.raises(ValueError, match="has no 'heatmap.png'"):
        SampleDecoder(("image", "heatmap"), 112)(sample)


def test_derive_stores_the_image_left_half_as_left_and_the_mirrored_right_half_as_right():
    """Guards against left.jpg and right.jpg swapped (or the right half stored unmirrored): as
    geometry.split_halves, left.jpg is columns 0..55 of the 112 px crop and right.jpg columns 56..111
    flipped left-right (the right half of the flipped face), so column j of right.jpg is column 111 - j."""
    from ferdata.io import decode_jpeg_rgb, encode_jpeg
    from ferdata.stages.derive import DeriveParams, DeriveWorker

    derive = DeriveWorker(DeriveParams(28, 1.0, 95, 1, 1))
    face = np.zeros((112, 112, 3), np.uint8)
    face[:, 56:] = 255
    _, out = derive(("k", {"jpg": encode_jpeg(face, 95)}))
    left, right = decode_jpeg_rgb(out["left.jpg"]), decode_jpeg_rgb(out["right.jpg"])
    assert left.shape == right.shape == (112, 56, 3)
    assert left.max() <= 3 and right.min() >= 252

    y, x = np.mgrid[0:112, 0:112]
    ramp = np.repeat((x + y)[..., None], 3, axis=2).astype(np.uint8)          # pixel (y, x) holds x + y
    _, out = derive(("k", {"jpg": encode_jpeg(ramp, 95)}))
    left, right = (decode_jpeg_rgb(out[f]).astype(int) for f in ("left.jpg", "right.jpg"))
    y, j = np.mgrid[0:112, 0:56]
    want_left, want_right = j + y, (111 - j) + y          # right.jpg column j is crop column 111 - j
    assert np.abs(left - want_left[..., None]).max() <= 4
    assert np.abs(right - want_right[..., None]).max() <= 4


@pytest.mark.parametrize("size, heatmap_size", [(112, 28), (224, 30)])
def test_derive_draws_the_heatmap_and_regions_from_the_samples_landmarks(embedded, photos, size, heatmap_size):
    """Derive's output was only checked for which fields it has: a heatmap drawn at the wrong stride
    or landmark regions replaced by the fixed grid passed every test. A real aligned face here:
    the heatmap is hot under every landmark, each region box holds its iBUG group and lies in the crop."""
    import json

    from ferdata.geometry import align_face
    import cv2

    from ferdata.io import encode_jpeg
    from ferdata.regions import LANDMARK_GROUPS
    from ferdata.stages.derive import DeriveParams, DeriveWorker
    from ferdata.tario import npy_bytes
    from tests.reliability.corpus import build

    face = max(embedded.detect(photos["astronaut"]), key=lambda f: f.area)
    al = align_face(photos["astronaut"], face.kps5, size, lmk68=face.lmk68)
    params = build(DeriveParams, "derive", heatmap_size=heatmap_size, workers=1)
    _, out = DeriveWorker(params)(("k", {"jpg": encode_jpeg(al.image, 95), "lmk.npy": npy_bytes(al.lmk68)}))
    heat = cv2.imdecode(np.frombuffer(out["heatmap.png"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert heat.shape == (heatmap_size, heatmap_size)
    cells = np.floor((al.lmk68 + 0.5) * heatmap_size / size).astype(int)      # the cell each landmark falls in
    inside = ((cells >= 0) & (cells < heatmap_size)).all(1)
    assert inside.sum() >= 60 and (heat[cells[inside, 1], cells[inside, 0]] >= 199).all()
    regions = json.loads(out["regions.json"])
    for name, group in LANDMARK_GROUPS.items():
        x0, y0, x1, y1 = regions["landmarks"][name]
        assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size, name
        pts = np.clip(al.lmk68[list(group)], 0, size - 1)
        assert (pts[:, 0] >= x0).all() and (pts[:, 0] <= x1).all() and (pts[:, 1] >= y0).all() \
            and (pts[:, 1] <= y1).all(), name
    assert regions["landmarks"] != regions["fixed"]
