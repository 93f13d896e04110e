"""is_blank judged the whole array's range across channels: a crop of one flat colour other than a grey (a red
placeholder picture) spans the levels between its channels and was not counted blank."""
from __future__ import annotations

import numpy as np
import pytest

from ferdata.io import is_blank


@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 255, 255), (200, 50, 50), (20, 120, 220), (10, 12, 8)])
def test_a_crop_of_one_flat_colour_is_blank(colour):
    crop = np.empty((112, 112, 3), np.uint8)
    crop[:] = colour
    crop[5:9, 5:9] = [min(c + 2, 255) for c in colour]         # within BLANK_RANGE on every channel
    assert is_blank(crop) and is_blank(crop[..., 0])


def test_a_face_in_colour_or_grey_is_not_blank():
    face = np.zeros((112, 112, 3), np.uint8)
    face[:] = (120, 80, 60)
    face[40:50, 30:45] = (90, 60, 40)          # an eye, ten levels darker on every channel
    assert not is_blank(face) and not is_blank(face[..., 0])
