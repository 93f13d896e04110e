"""RAF-DB: 1-based labels, split by name prefix, manual landmarks/boxes, test subsets."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ferdata.datasets import DatasetLayoutError
from ferdata.datasets.subsets import RAFDB_ID, parse_list
from ferdata.splits import assign_splits
from tests.ferdata.fixtures_datasets import make_rafdb, read_all, write_image, write_text

# hand-written: RAF-DB 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral
# -> canonical 0 Neutral 1 Happy 2 Sad 3 Surprise 4 Fear 5 Disgust 6 Anger
EXPECTED_ORIGINAL = {
    "train_00001": ("train", 2, "5"),
    "train_00002": ("train", 3, "1"),
    "train_00003": ("train", 0, "7"),
    "test_0001": ("test", 6, "6"),
    "test_0002": ("test", 4, "2"),
    "test_0004": ("test", 1, "4"),
}


def test_original_images_with_annotations(tmp_path, caplog):
    make_rafdb(tmp_path)
    records, drops, items = read_all("rafdb", tmp_path)
    got = {k: (r.split, r.label, r.native_label) for k, r in records.items()}
    assert {k: v for k, v in got.items() if k != "test_0003"} == EXPECTED_ORIGINAL
    assert drops == {"bad_label": 2, "missing_image": 1, "malformed_row": 1}
    assert {d.key: d.reason for d in items} == {
        "train_00004": "bad_label", "train_00005": "bad_label", "train_00006": "missing_image",
        "train_00007": "malformed_row",
    }
    # test_0003's manual landmark file is malformed: the image and label are kept without them, noted
    assert records["test_0003"].landmarks is None and records["test_0003"].split == "test"
    assert "rafdb: 1 record(s) kept without landmarks" in caplog.text and "test_0003" in caplog.text
    r = records["train_00001"]
    assert r.path.endswith("Image/original/train_00001.jpg")
    assert r.landmarks.dtype == np.float32 and r.landmarks.shape == (5, 2)
    np.testing.assert_allclose(r.landmarks[0], [33.5, 40.25])
    np.testing.assert_allclose(r.landmarks[4], [58.0, 70.5])
    assert r.box == (10.5, 20.0, 80.0, 90.0)
    assert r.extra == {"gender": 1, "race": 2, "age": 3}
    assert records["train_00002"].landmarks is None and records["train_00002"].box is None


def test_aligned_images_carry_no_source_annotations(tmp_path):
    make_rafdb(tmp_path)
    records, drops, _ = read_all("rafdb", tmp_path, {"images": "aligned"})
    assert set(records) == set(EXPECTED_ORIGINAL) | {"test_0003"}
    assert records["test_0003"].label == 5           # 3 Disgust
    assert drops == {"bad_label": 2, "missing_image": 1, "malformed_row": 1}
    assert records["train_00001"].path.endswith("Image/aligned/train_00001_aligned.jpg")
    assert all(r.landmarks is None and r.box is None for r in records.values())


def test_auto_picks_aligned_when_only_aligned_exists(tmp_path):
    make_rafdb(tmp_path)
    import shutil
    shutil.rmtree(tmp_path / "Image" / "original")
    records, _, _ = read_all("rafdb", tmp_path)
    assert records["test_0001"].path.endswith("_aligned.jpg")


def test_layout_error_names_expected_and_found(tmp_path):
    (tmp_path / "Image").mkdir()
    (tmp_path / "list.txt").write_text("")
    with pytest.raises(DatasetLayoutError) as err:
        read_all("rafdb", tmp_path)
    msg = str(err.value)
    # images: auto takes either folder (it named Image/original/ alone, as `ferdata datasets` does not)
    assert "expected: EmoLabel/list_patition_label.txt, Image/original/ or Image/aligned/" in msg
    assert "found:    Image, list.txt" in msg
    with pytest.raises(DatasetLayoutError, match="list_patition_label.txt, Image/aligned/\n"):
        read_all("rafdb", tmp_path, {"images": "aligned"})


def test_bad_option_value(tmp_path):
    make_rafdb(tmp_path)
    with pytest.raises(ValueError, match="images must be"):
        read_all("rafdb", tmp_path, {"images": "cropped"})
    with pytest.raises(ValueError, match="unknown option"):
        read_all("rafdb", tmp_path, {"image": "aligned"})


def test_subset_lists_in_both_published_formats(tmp_path):
    make_rafdb(tmp_path)
    occ = write_text(tmp_path / "lists" / "rafdb_occlusion_list.txt",
                     "test_0001_aligned 3 4\ntest_0004_aligned 0 1\ntest_0004_aligned 0 1\n")
    pose = write_text(tmp_path / "lists" / "val_raf_db_list_45.txt",
                      "0/test_0002_aligned.jpg\n4/test_0004_aligned.jpg\n")
    assert parse_list(occ, RAFDB_ID) == {"test_0001", "test_0004"}
    assert parse_list(pose, RAFDB_ID) == {"test_0002", "test_0004"}
    opts = {"subsets": {"occlusion": "lists/rafdb_occlusion_list.txt", "pose45": str(pose)}}
    records, _, _ = read_all("rafdb", tmp_path, opts)
    tags = {k: r.extra.get("subsets", ()) for k, r in records.items() if r.split == "test"}
    assert tags == {"test_0001": ("occlusion",), "test_0002": ("pose45",), "test_0003": (),
                    "test_0004": ("occlusion", "pose45")}
    assert all("subsets" not in r.extra for r in records.values() if r.split == "train")


def test_subset_list_problems(tmp_path):
    make_rafdb(tmp_path)
    with pytest.raises(FileNotFoundError, match="occlusion"):
        read_all("rafdb", tmp_path, {"subsets": {"occlusion": "nope.txt"}})
    # a wrong root is named as such, not as the list file missing under it
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        read_all("rafdb", tmp_path / "RAF-DBX", {"subsets": {"occlusion": "lists/occlusion_list.txt"}})
    write_text(tmp_path / "bad.txt", "558 7\n0\n4\n")
    with pytest.raises(ValueError, match="no image ids"):
        parse_list(tmp_path / "bad.txt", RAFDB_ID)


def test_the_compound_subset_is_refused_not_read_as_basic(tmp_path):
    """Compound's labels 1-11 in basic's layout: labels 1-7 would silently become basic classes."""
    make_rafdb(tmp_path)
    label_file = next(tmp_path.glob("EmoLabel/*.txt"))
    label_file.write_text("".join(f"train_{i:05d}.jpg {i % 11 + 1}\n" for i in range(1, 67)))
    with pytest.raises(ValueError, match="24 of 66 labels above 7: that is RAF-DB's compound subset"):
        read_all("rafdb", tmp_path)
    label_file.write_text("".join(f"train_{i:05d}.jpg {i % 11 + 1}\n" for i in range(1, 12)))   # a short list
    with pytest.raises(ValueError, match="4 of 11 labels above 7"):
        read_all("rafdb", tmp_path)


@pytest.mark.parametrize("text", ["-inf 0 inf 90", "10 20 inf 90", "10 20 80"])
def test_a_box_file_that_is_not_four_finite_ordered_numbers_is_refused(tmp_path, text):
    from ferdata.datasets.rafdb import parse_box

    (tmp_path / "x_boundingbox.txt").write_text(text + "\n")
    with pytest.raises(ValueError, match="x_boundingbox.txt: expected 'x0 y0 x1 y1' \\(finite\\)"):
        parse_box(tmp_path / "x_boundingbox.txt")


@pytest.mark.parametrize("text", ["10 20 80 90 5", "10 20 10 90", "10 50 80 40", "10 20 80 20"])
def test_a_box_file_of_five_numbers_or_no_area_is_refused(tmp_path, text):
    from ferdata.datasets.rafdb import parse_box

    (tmp_path / "x_boundingbox.txt").write_text(text + "\n")
    with pytest.raises(ValueError, match="x_boundingbox.txt: expected 'x0 y0 x1 y1' \\(finite\\)"):
        parse_box(tmp_path / "x_boundingbox.txt")


@pytest.mark.parametrize("seed", range(6))
def test_files_named_alike_share_a_split_whichever_the_list_names_first(tmp_path, seed):
    """train_00001.jpg and .png clean to one key: the file listed second is renamed, and the split
    (hashed by key) moved a picture between train and val when the list's lines were reordered."""
    img = tmp_path / "Image" / "original"
    write_image(img / "train_00001.jpg", value=10, size=(40, 40))
    write_image(img / "train_00001.png", value=200, size=(40, 40))
    write_image(img / "test_0001.jpg", value=90, size=(40, 40))
    seen = []
    for lines in (["train_00001.jpg 4", "train_00001.png 5"], ["train_00001.png 5", "train_00001.jpg 4"]):
        write_text(tmp_path / "EmoLabel" / "list_patition_label.txt", "\n".join([*lines, "test_0001.jpg 1"]) + "\n")
        records, _, _ = read_all("rafdb", tmp_path)
        assert len(records) == 3
        seen.append({Path(r.path).name: r.split for r in assign_splits(
            records.values(), seed=seed, val_fraction=0.5, test_fraction=0.1, official={"train", "test"})})
    assert seen[0] == seen[1]
    assert seen[0]["train_00001.jpg"] == seen[0]["train_00001.png"]
