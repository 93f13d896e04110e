"""Labels, votes and pixels written as numbers: a whole number in any spelling is read, anything
else (a fraction, inf, nan, a value past int64) is a counted drop, never a truncated class or a crash."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ferdata.datasets.base import whole
from tests.ferdata import fixtures_datasets as fx


@pytest.mark.parametrize("text, value", [("3", 3), (" 3.0000000e+00\n", 3), ("7.0", 7), (2.0, 2), ("-1", -1)])
def test_whole_numbers_in_any_spelling(text, value):
    assert whole(text) == value


@pytest.mark.parametrize("text", ["3.7", "3.6e+00", "inf", "-inf", "nan", "1e400", "three", ""])
def test_anything_else_is_a_value_error(text):
    with pytest.raises(ValueError):
        whole(text)


def affectnet_npy(root: Path, value: str) -> str:
    fx.make_affectnet_npy(root)
    np.save(root / "train_set" / "annotations" / "0_exp.npy", np.array(value))
    return "train_0"


def ckplus(root: Path, value: str) -> str:
    fx.make_ckplus(root)
    fx.write_text(root / "Emotion" / "S005" / "001" / "S005_001_00000005_emotion.txt", f"   {value}\n")
    return "S005_001"


def affectnet_csv(root: Path, value: str) -> str:
    fx.make_affectnet_csv(root)
    lists = root / "Manually_Annotated_file_lists" / "training.csv"
    header, first, *rest = lists.read_text().splitlines()
    cells = first.split(",")
    cells[6] = value
    lists.write_text("\n".join([header, ",".join(cells), *rest]) + "\n")
    return "train_" + Path(cells[0]).with_suffix("").as_posix().replace("/", "_")


def ferplus(root: Path, value: str) -> str:
    fx.make_ferplus(root)
    plus = root / "fer2013new.csv"
    plus.write_text(plus.read_text().replace("Training,fer0000003.png,0,10,0", f"Training,fer0000003.png,0,{value},0"))
    return "fer0000003"


def fer2013(root: Path, value: str) -> str:
    fx.write_text(root / "fer2013.csv", "emotion,pixels,Usage\n"
                  f"3,{fx.pixel_text(50).replace('50', value, 1)},Training\n3,{fx.pixel_text(50)},Training\n")
    return "00000"


def rafdb(root: Path, value: str) -> str:
    fx.make_rafdb(root)
    labels = root / "EmoLabel" / "list_patition_label.txt"
    labels.write_text(labels.read_text().replace("train_00001.jpg 5\n", f"train_00001.jpg {value}\n"))
    return "train_00001"


def expw(root: Path, value: str) -> str:
    fx.make_expw(root)
    labels = root / "label" / "label.lst"
    labels.write_text(labels.read_text().replace("angry_actor_104.jpg 1 50 300 380 130 10.1 3\n",
                                                 f"angry_actor_104.jpg 1 50 300 380 130 10.1 {value}\n"))
    return "angry_actor_104_1"


CASES = [(affectnet_npy, "bad_label"), (ckplus, "bad_label"), (affectnet_csv, "bad_label"), (ferplus, "bad_votes"),
         (rafdb, "bad_label"), (expw, "bad_label")]


@pytest.mark.parametrize("make", [affectnet_npy, ckplus, affectnet_csv, rafdb, expw], ids=lambda c: c.__name__)
def test_a_whole_label_written_as_a_float_is_read_as_the_integer(tmp_path, make):
    """A label list re-saved by pandas or a spreadsheet ("3.0"): the same class as "3" (RAF-DB and
    ExpW dropped it as "label '3.0' not in 1..7")."""
    name = make.__name__.split("_")[0]
    labels = {}
    for value in ("3", "3.0"):
        key = make(tmp_path / value, value)
        records, _, drops = fx.read_all(name, tmp_path / value)
        assert not [d for d in drops if d.key == key], drops
        labels[value] = [(r.label, r.native_label) for k, r in records.items() if k.startswith(key)]
    assert labels["3.0"] == labels["3"] != []


@pytest.mark.parametrize("make, reason", CASES, ids=lambda c: getattr(c, "__name__", c))
@pytest.mark.parametrize("value", ["3.7", "inf", "nan", "1e400"])
def test_a_label_that_is_not_a_whole_number_is_dropped(tmp_path, make, reason, value):
    key = make(tmp_path, value)
    name = make.__name__.split("_")[0]
    records, _, drops = fx.read_all(name, tmp_path)
    assert not [k for k in records if k.startswith(key)]
    assert [d.reason for d in drops if d.key == key] == [reason]


def test_a_pixel_value_past_int64_is_a_bad_pixels_drop(tmp_path):
    key = fer2013(tmp_path, "99999999999999999999999")
    records, _, drops = fx.read_all("fer2013", tmp_path)
    assert list(records) == ["00001"] and [(d.key, d.reason) for d in drops] == [(key, "bad_pixels")]


@pytest.mark.parametrize("name, make, rel", [
    ("ckplus", fx.make_ckplus, "Emotion/S005/001/S005_001_00000005_emotion.txt"),
    ("ckplus", fx.make_ckplus, "Landmarks/S005/001/S005_001_00000005_landmarks.txt"),
    ("rafdb", fx.make_rafdb, "Annotation/manual/train_00001_manu_attri.txt"),
    ("rafdb", fx.make_rafdb, "Annotation/boundingbox/train_00001_boundingbox.txt"),
])
def test_a_byte_order_mark_in_a_per_image_file_changes_nothing(tmp_path, name, make, rel):
    """An annotation file re-saved by an editor that writes a BOM reads as the original: its first
    number is not unreadable (a CK+ sequence was dropped as bad_label, RAF-DB points or boxes lost)."""
    make(tmp_path / "plain")
    make(tmp_path / "bom")
    path = tmp_path / "bom" / rel
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    plain, plain_drops, _ = fx.read_all(name, tmp_path / "plain")
    bom, bom_drops, _ = fx.read_all(name, tmp_path / "bom")
    assert bom_drops == plain_drops and bom.keys() == plain.keys()
    for key, r in plain.items():
        assert (bom[key].label, bom[key].box) == (r.label, r.box)
        assert (bom[key].landmarks is None) == (r.landmarks is None)
        if r.landmarks is not None:
            np.testing.assert_array_equal(bom[key].landmarks, r.landmarks)
