"""`ferdata detect --part K/N` keeps the faces of one photo (ExpW's ``extra[PHOTO]``) in one part: split by
their keys, a photo with several labelled faces was read and detected on up to N machines (audit h140)."""
from __future__ import annotations

from ferdata.parts import Part
from ferdata.records import PHOTO, FaceRecord


def _face(key: str, photo: str | None) -> FaceRecord:
    return FaceRecord("expw", key, f"image/origin/{photo or key}.jpg", 3, "3", extra={PHOTO: photo} if photo else {})


def test_faces_of_one_photo_fall_in_one_part():
    faces = [_face(f"photo{p}_{i}", f"photo{p}") for p in range(40) for i in range(4)]
    for n in (2, 3, 4, 8):
        parts = [Part(k, n) for k in range(1, n + 1)]
        for f in faces:
            assert sum(part.holds_record(f) for part in parts) == 1
        for p in range(40):
            assert len({k for k, part in enumerate(parts) for f in faces[4 * p:4 * p + 4] if part.holds_record(f)}) == 1


def test_records_without_a_photo_are_split_by_key_as_before():
    part = Part(2, 3)
    for i in range(50):
        assert part.holds_record(_face(f"k{i}", None)) == part.holds(f"k{i}")
