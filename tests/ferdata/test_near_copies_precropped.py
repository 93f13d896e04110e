"""What the shard stage's near-copy search finds of a precropped dataset's copies (FER2013's 48 px rows), whose
crops are not aligned again: the README's numbers (an audit, h115)."""
from __future__ import annotations

from tests.ferdata.test_near_copies import _faces, _jpeg, _moved


def test_precropped_copies_moved_a_pixel_or_more_are_mostly_missed_as_the_readme_says():
    """100 LFW faces at 48 px, upscaled to the aligned 112, against copies shifted or scaled at 48 px."""
    import cv2
    from ferdata.nearcopies import face_vector, is_near
    faces = [cv2.resize(f[..., 0], (48, 48), interpolation=cv2.INTER_AREA) for f in _faces(100)]

    def vector(img):
        return face_vector(_jpeg(cv2.resize(img, (112, 112))))[0]

    def found(dx: float, scale: float) -> int:
        return sum(is_near(vector(f), vector(_moved(f, dx, 0.0, 0.0, scale))) for f in faces)
    assert found(0.5, 1.0) >= 95 and 10 <= found(1.0, 1.0) <= 40 and found(1.5, 1.0) == 0
    assert 25 <= found(0.0, 0.95) <= 55 and found(0.0, 0.9) == 0
