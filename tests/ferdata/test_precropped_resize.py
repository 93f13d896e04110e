"""A precropped (whole-image) face becomes the crop as a resize makes it, also for a non-square picture
(a similarity fitted to the template scaled to it cut rows off and smeared its edge columns over 13% of
the crop) and for one decoded reduced whose side is no multiple of the reduction (its shape rounds up)."""
import cv2
import numpy as np
import pytest

from ferdata.cache import face_to_dict
from ferdata.crop import crop_face, source_matrix
from ferdata.faces import create_backend
from ferdata.io import decode_image
from ferdata.records import FaceRecord

REC = FaceRecord(dataset="t", key="t_a", path="a.png", label=0, native_label="x", split="train")


def _resize_matrix(w, h, size):
    kx, ky = size / w, size / h
    return np.array([[kx, 0, (kx - 1) / 2], [0, ky, (ky - 1) / 2]])


@pytest.mark.parametrize("w, h, size", [(100, 140, 112), (140, 100, 112), (48, 64, 224), (100, 100, 112),
                                        (1001, 1001, 112), (1003, 997, 128), (1000, 1000, 112)])
def test_precropped_is_a_resize_at_any_shape(w, h, size):
    rng = np.random.default_rng(w * h)
    img = cv2.resize(rng.integers(0, 255, (h // 4, w // 4, 3), np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    png = cv2.imencode(".png", img)[1].tobytes()
    (f,) = create_backend("precropped").detect(img, REC)
    al, dec = crop_face(face_to_dict(f), "precropped", size, 0.0, lambda r: decode_image(png, r))
    np.testing.assert_allclose(source_matrix(al.matrix, dec.scale), _resize_matrix(w, h, size), atol=1e-4)
    assert min(dec.rgb.shape[:2]) >= size or dec.scale == 1          # never decoded below the crop's resolution
    if dec.scale == 1:                                                  # the pixels are the resize's
        ref = cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), (size, size), interpolation=cv2.INTER_LINEAR)
        assert np.abs(al.image.astype(int) - ref).max() <= 2


def test_precropped_padding_still_shrinks_about_the_centre():
    img = np.full((100, 140, 3), 200, np.uint8)
    (f,) = create_backend("precropped").detect(img, REC)
    png = cv2.imencode(".png", img)[1].tobytes()
    al, dec = crop_face(face_to_dict(f), "precropped", 112, 0.25, lambda r: decode_image(png, r))
    m = source_matrix(al.matrix, dec.scale)
    np.testing.assert_allclose(m[:, :2], np.diag([112 / 140, 112 / 100]) / 1.25, atol=1e-5)
    assert al.image.min() >= 199                                        # edges continued, never black


@pytest.mark.parametrize("w, h, size, padding", [(140, 100, 112, 0.25), (100, 140, 224, 1.0)])
def test_precropped_padding_shrinks_the_resize_about_the_crops_centre_not_the_pictures(w, h, size, padding):
    """Only the linear part was checked, on a flat picture: padding applied in the picture's frame (before
    the resize) or about another centre kept the test green while moving the face off-centre. By hand: the
    resize maps pixel centres x -> (x + 0.5) size / w - 0.5, then the crop shrinks by k = 1 / (1 + padding)
    about the template's centre c = size / 2 (as ferdata.geometry.template does): x -> c + k (x - c)."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    cx, cy = (w - 1) / 2 + 7.3, (h - 1) / 2 - 5.6                     # a smooth blob off the picture's centre
    blob = 255 * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * 6.0 ** 2))
    img = np.repeat(np.rint(blob).astype(np.uint8)[..., None], 3, axis=2)
    (f,) = create_backend("precropped").detect(img, REC)
    png = cv2.imencode(".png", img)[1].tobytes()
    al, dec = crop_face(face_to_dict(f), "precropped", size, padding, lambda r: decode_image(png, r))
    k, c = 1 / (1 + padding), size / 2
    kx, ky = size / w, size / h
    want = np.array([[k * kx, 0, c * (1 - k) + k * (kx - 1) / 2], [0, k * ky, c * (1 - k) + k * (ky - 1) / 2]])
    np.testing.assert_allclose(source_matrix(al.matrix, dec.scale), want, atol=1e-4)
    mass = al.image[..., 0].astype(np.float64)                          # the blob in the crop's pixels
    cys, cxs = np.mgrid[0:size, 0:size]
    got = np.array([(mass * cxs).sum(), (mass * cys).sum()]) / mass.sum()
    np.testing.assert_allclose(got, want[:, :2] @ [cx, cy] + want[:, 2], atol=0.3)


@pytest.mark.parametrize("w, h", [(1200, 300), (300, 1200)])
def test_a_long_thin_precropped_picture_is_decoded_by_its_short_side(w, h):
    """The pictures above are square-ish or small, so a reduction sized by the long side (1200 / 8 = 150
    >= 112) passed: the short side then came out at 300 / 8 = 37 px for a 112 crop. By hand: 300 / 2 = 150
    px >= 112, 300 / 4 = 75 < 112, so 1/2 is the largest reduction that keeps the crop's resolution."""
    img = np.full((h, w, 3), 128, np.uint8)
    (f,) = create_backend("precropped").detect(img, REC)
    png = cv2.imencode(".png", img)[1].tobytes()
    al, dec = crop_face(face_to_dict(f), "precropped", 112, 0.0, lambda r: decode_image(png, r))
    assert min(dec.rgb.shape[:2]) >= 112 and dec.scale == 0.5
