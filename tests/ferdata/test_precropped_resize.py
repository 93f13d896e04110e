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
