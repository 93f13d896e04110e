"""SFEW 2.0 as its archives unpack: Train_Aligned_Faces.zip and Val_Aligned_Faces_new.zip make
``<Split>_Aligned_Faces/<Class>/`` folders, kept at the root or moved into ``Train/`` and ``Val/``; the
reader refused both, naming the folder reader as the fix (audit h122)."""
import pytest

from tests.ferdata.fixtures_datasets import make_sfew, read_all


def _aligned(tmp_path, at_root: bool):
    make_sfew(tmp_path / "flat")
    for split, inner in (("Train", "Train_Aligned_Faces"), ("Val", "Val_Aligned_Faces_new")):
        target = tmp_path / "sfew" / (inner if at_root else f"{split}/{inner}")
        target.parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "flat" / split).rename(target)
    return tmp_path / "sfew"


@pytest.mark.parametrize("at_root", [False, True], ids=["in_split_folders", "at_root"])
def test_the_released_aligned_faces_folders_are_read_as_train_and_val(tmp_path, at_root):
    records, drops, _ = read_all("sfew", _aligned(tmp_path, at_root))
    got = sorted((r.split, r.label, r.native_label) for r in records.values())
    assert got == [("test", 2, "Sad"), ("test", 3, "Surprise"),
                   ("train", 0, "Neutral"), ("train", 1, "Happy"), ("train", 6, "Angry")]
    assert not drops


def test_a_split_both_as_frames_and_as_aligned_faces_is_refused_naming_both(tmp_path):
    root = make_sfew(tmp_path)
    (root / "Train").rename(root / "Train_Aligned_Faces")
    make_sfew(root)
    with pytest.raises(ValueError, match="Train, Train_Aligned_Faces"):
        read_all("sfew", root)


def test_aligned_faces_unpacked_beside_the_class_folders_of_a_split_are_refused_naming_both(tmp_path):
    """Train/ holding its class folders and Train_Aligned_Faces/ named the folder reader as the fix (audit h125)."""
    root = make_sfew(tmp_path / "sfew")
    (make_sfew(tmp_path / "other") / "Train").rename(root / "Train" / "Train_Aligned_Faces")
    with pytest.raises(ValueError, match="holds a split twice .*Train_Aligned_Faces"):
        read_all("sfew", root)
