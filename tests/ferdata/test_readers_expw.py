"""ExpW: top,left,right,bottom boxes, several faces per image, FER2013 label order."""
from __future__ import annotations

import pytest

from ferdata.datasets import DatasetLayoutError
from tests.ferdata.fixtures_datasets import make_expw, read_all


def test_expw(tmp_path):
    make_expw(tmp_path)
    records, drops, items = read_all("expw", tmp_path)
    got = {k: (r.label, r.native_label, r.box) for k, r in records.items()}
    assert got == {
        # line: top=28 left=113 right=226 bottom=141 -> (x0, y0, x1, y1) = (113, 28, 226, 141)
        "angry_actor_104_0": (6, "0", (113.0, 28.0, 226.0, 141.0)),
        "angry_actor_104_1": (1, "3", (300.0, 50.0, 380.0, 130.0)),
        "sad_y_4_2": (0, "6", (12.0, 10.0, 50.0, 40.0)),
    }
    assert drops == {"bad_box": 1, "bad_label": 1, "missing_image": 1, "malformed_row": 1}
    assert {d.key: d.reason for d in items} == {
        "happy_x_1_0": "bad_box", "happy_x_2_0": "bad_label", "missing_3_0": "missing_image",
        "sad_y_3_0": "malformed_row",
    }
    r = records["angry_actor_104_0"]
    assert r.extra == {"face_id": 0, "confidence": 22.9, "photo": "angry_actor_104"}
    assert records["angry_actor_104_1"].extra["photo"] == "angry_actor_104"   # both faces: one photo
    assert r.path.endswith("image/origin/angry_actor_104.jpg") and r.split == ""


def test_expw_layout_error(tmp_path):
    (tmp_path / "label").mkdir()
    with pytest.raises(DatasetLayoutError) as err:
        read_all("expw", tmp_path)
    assert "expected: label/label.lst, image/origin/" in str(err.value) and "found:    label" in str(err.value)


def test_a_box_that_is_not_finite_is_a_bad_box(tmp_path):
    """``-inf``/``inf`` passed the order check (right > left) and reached the crop as a box."""
    make_expw(tmp_path)
    lst = tmp_path / "label" / "label.lst"
    lst.write_text(lst.read_text() + "sad_y_4.jpg 3 10 -inf inf 40 30.0 6\n")
    records, drops, items = read_all("expw", tmp_path)
    assert drops["bad_box"] == 2 and "sad_y_4_3" not in records
    assert next(d for d in items if d.key == "sad_y_4_3").reason == "bad_box"


@pytest.mark.parametrize("box", ["10 12 inf 40", "10 12 50 nan", "10 12 50 10"])
def test_a_box_with_one_side_not_finite_or_no_height_is_a_bad_box(tmp_path, box):
    make_expw(tmp_path)
    lst = tmp_path / "label" / "label.lst"
    lst.write_text(lst.read_text() + f"sad_y_4.jpg 3 {box} 30.0 6\n")
    records, drops, items = read_all("expw", tmp_path)
    assert drops["bad_box"] == 2 and "sad_y_4_3" not in records
    assert next(d for d in items if d.key == "sad_y_4_3").reason == "bad_box"
