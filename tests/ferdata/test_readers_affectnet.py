"""AffectNet: official CSV layout and the re-packaged npy layout, labels 8-10, protocols."""
from __future__ import annotations

import numpy as np
import pytest

from ferdata.datasets import DatasetLayoutError, open_reader
from ferdata.records import Dropped, FaceRecord
from tests.ferdata.fixtures_datasets import (AFFECTNET_HEADER, _affectnet_row, landmarks68, make_affectnet_automatic,
                                            make_affectnet_csv, make_affectnet_npy, read_all, write_image, write_text)

# AffectNet ids are the canonical ids: 0 Neutral 1 Happy 2 Sad 3 Surprise 4 Fear 5 Disgust 6 Anger 7 Contempt


def test_csv_layout_affectnet8(tmp_path, caplog):
    make_affectnet_csv(tmp_path)
    records, drops, items = read_all("affectnet", tmp_path)
    assert {k: (r.split, r.label, r.native_label) for k, r in records.items()} == {
        "train_1_img0": ("train", 0, "0"),
        "train_1_img1": ("train", 7, "7"),
        "train_2_img5": ("train", 6, "6"),
        "test_3_v0": ("test", 6, "6"),
        "test_3_v1": ("test", 1, "1"),
    }
    assert drops == {"label_none": 1, "label_uncertain": 1, "label_no_face": 1, "missing_image": 1}
    # 100 landmark values: the face, its box and label are kept (a detector finds the landmarks), noted
    assert records["train_2_img5"].landmarks is None and records["train_2_img5"].box == (10.0, 20.0, 60.0, 80.0)
    assert "affectnet: 1 record(s) kept without landmarks" in caplog.text and "training.csv:8" in caplog.text
    assert {d.key: d.reason for d in items}["train_2_missing"] == "missing_image"
    r = records["train_1_img0"]
    assert r.box == (10.0, 20.0, 60.0, 80.0)          # x, y, x + w, y + h
    assert r.landmarks.dtype == np.float32 and r.landmarks.shape == (68, 2)
    np.testing.assert_allclose(r.landmarks, landmarks68(), atol=1e-2)
    assert r.extra == {"valence": 0.25, "arousal": -0.5}


def test_csv_layout_affectnet7_drops_contempt(tmp_path):
    make_affectnet_csv(tmp_path)
    records, drops, _ = read_all("affectnet", tmp_path, {"protocol": "affectnet7"})
    assert sorted(records) == ["test_3_v0", "test_3_v1", "train_1_img0", "train_2_img5"]
    assert drops["label_contempt_excluded"] == 1


@pytest.mark.parametrize("nested", [False, True])
def test_automatically_annotated_images_join_training_only_when_asked(tmp_path, nested):
    make_affectnet_automatic(make_affectnet_csv(tmp_path), nested)
    manual, _, _ = read_all("affectnet", tmp_path)
    assert not any("auto" in k for k in manual)                    # off by default
    records, drops, items = read_all("affectnet", tmp_path, {"automatic": True})
    auto = {k: r for k, r in records.items() if k not in manual}
    assert {k: (r.split, r.label) for k, r in auto.items()} == {"train_auto_1_img0": ("train", 2)}
    r = auto["train_auto_1_img0"]                                  # not the manual 1/img0.jpg
    assert r.path.endswith("Automatically_Annotated_Images/1/img0.jpg") and r.path != records["train_1_img0"].path
    assert r.extra == {"annotation": "automatic", "train_only": True, "valence": 0.25, "arousal": -0.5}
    np.testing.assert_allclose(r.landmarks, landmarks68(3.0), atol=1e-2)
    assert records["train_1_img0"].extra == {"valence": 0.25, "arousal": -0.5}
    reasons = {d.key: d.reason for d in items}
    assert reasons["train_auto_4_a1"] == "label_none" and reasons["train_auto_4_a2"] == "missing_image"
    assert drops["label_none"] == 2 and drops["missing_image"] == 2   # one manual, one automatic each


def test_automatic_needs_its_files_and_the_official_layout(tmp_path):
    make_affectnet_csv(tmp_path / "csv")
    with pytest.raises(DatasetLayoutError, match="(?s)automatically_annotated.csv.*fix: add AffectNet's "
                                                 "automatically annotated part there, or set options.automatic"):
        read_all("affectnet", tmp_path / "csv", {"automatic": True})
    records = open_reader("affectnet", tmp_path / "csv", {"automatic": True}).read()
    with pytest.raises(DatasetLayoutError):                 # at the first record, not after every manual one
        next(records)
    with pytest.raises(ValueError, match="automatic must be true or false"):
        read_all("affectnet", tmp_path / "csv", {"automatic": "yes"})
    make_affectnet_npy(tmp_path / "npy")
    with pytest.raises(ValueError, match="npy layout holds no automatically annotated"):
        read_all("affectnet", tmp_path / "npy", {"automatic": True})


def test_npy_layout_is_detected(tmp_path):
    make_affectnet_npy(tmp_path)
    records, drops, items = read_all("affectnet", tmp_path)
    assert {k: (r.split, r.label, r.native_label) for k, r in records.items()} == {
        "train_0": ("train", 0, "0"),
        "train_2": ("train", 7, "7"),
        "train_4": ("train", 5, "5"),
        "train_5": ("train", 2, "2"),
        "test_0": ("test", 6, "6"),
    }
    assert {d.key: d.reason for d in items} == {
        "train_1": "label_none", "train_3": "missing_image", "test_1": "label_no_face",
    }
    assert sum(drops.values()) == 3
    assert records["train_4"].landmarks is None          # its 10-value _lnd.npy: kept, noted
    r = records["train_0"]
    assert r.box is None and r.path.endswith("train_set/images/0.jpg")
    assert r.landmarks.dtype == np.float32 and r.landmarks.shape == (68, 2)
    np.testing.assert_allclose(r.landmarks, landmarks68(1.0))
    assert r.extra == pytest.approx({"valence": 0.785714, "arousal": -0.055556})
    assert records["train_5"].landmarks is None and records["train_5"].extra == {}
    assert records["test_0"].extra == {}                  # the -2 placeholders, as in the CSV layout


def test_npy_labels_saved_as_bytes_are_read(tmp_path):
    """A re-packaged label saved as bytes (``np.array(b"3")``) is the same number (``int()`` reads
    it); it was read as the text "b'3'" and every such record became a bad_label drop."""
    make_affectnet_npy(tmp_path)
    anno = tmp_path / "train_set" / "annotations"
    np.save(anno / "0_exp.npy", np.array(b"3"))
    np.save(anno / "0_val.npy", np.array(b"0.5"))
    records, drops, _ = read_all("affectnet", tmp_path)
    assert records["train_0"].label == 3 and drops["bad_label"] == 0
    assert records["train_0"].extra["valence"] == 0.5


def test_npy_layout_affectnet7(tmp_path):
    make_affectnet_npy(tmp_path)
    records, drops, _ = read_all("affectnet", tmp_path, {"protocol": "affectnet7", "layout": "npy"})
    assert sorted(records) == ["test_0", "train_0", "train_4", "train_5"]
    assert drops["label_contempt_excluded"] == 1


def test_layout_errors(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetLayoutError) as err:
        read_all("affectnet", tmp_path)
    msg = str(err.value)
    assert "expected: Manually_Annotated_Images/, training.csv, validation.csv" in msg
    assert "train_set/ val_set/" in msg and "found:    images" in msg
    make_affectnet_npy(tmp_path / "npy")
    (tmp_path / "npy" / "val_set" / "images").rename(tmp_path / "npy" / "val_set" / "imgs")
    with pytest.raises(DatasetLayoutError, match="val_set/images/"):
        read_all("affectnet", tmp_path / "npy")


def test_both_layouts_and_bad_options(tmp_path):
    make_affectnet_csv(tmp_path)
    make_affectnet_npy(tmp_path)
    with pytest.raises(ValueError, match="both layouts"):
        read_all("affectnet", tmp_path)
    records, _, _ = read_all("affectnet", tmp_path, {"layout": "csv"})
    assert len(records) == 5
    with pytest.raises(ValueError, match="protocol"):
        read_all("affectnet", tmp_path, {"protocol": "affectnet6"})
    with pytest.raises(ValueError, match="layout must be"):
        read_all("affectnet", tmp_path, {"layout": "zip"})
    for bad in (["affectnet7"], {"a": 1}):         # --option 'protocol=[affectnet7]': "unhashable type: 'list'"
        with pytest.raises(ValueError, match="protocol must be affectnet7 or affectnet8"):
            read_all("affectnet", tmp_path, {"layout": "csv", "protocol": bad})


HASHES = ["83dac9d7eec7fb0bfef79b4d35ddc69a6f7fb458d3bffc4e78f33ad9",
          "bc9ad400db82eca1882b11c9603348fb3e92f5b0d67391ac22a1bc79",
          "40e3adfe27564447d960163fa650063d3e1e10d8b393ec0d5798b968"]


def test_subset_lists_name_images_by_their_hash(tmp_path, caplog):
    """RAN's AffectNet lists name validation images as ``0/<hash>.jpg`` (pose) or ``val/0/<hash>/``
    (occlusion); records are matched by their file name, whatever folder they sit in."""
    images = tmp_path / "Manually_Annotated_Images"
    rels = [f"{10 + i}/{h}.jpg" for i, h in enumerate(HASHES)]
    for rel in rels:
        write_image(images / rel)
    write_text(tmp_path / "training.csv", f"{AFFECTNET_HEADER}\n{_affectnet_row('1/a.jpg', 1, landmarks68())}\n")
    write_image(images / "1" / "a.jpg")
    rows = [_affectnet_row(rel, label, landmarks68()) for rel, label in zip(rels, (0, 6, 7))]
    write_text(tmp_path / "validation.csv", "\n".join([AFFECTNET_HEADER, *rows]) + "\n")
    write_text(tmp_path / "pose30.txt", f"0/{HASHES[0]}.jpg\n7/{HASHES[2]}.jpg\n")
    write_text(tmp_path / "occlusion.txt", f"val/0/{HASHES[1]}/\nval/0/{'f' * 56}/\n")
    opts = {"subsets": {"pose30": "pose30.txt", "occlusion": "occlusion.txt"}}
    with caplog.at_level("WARNING"):
        records, _, _ = read_all("affectnet", tmp_path, opts)
    assert {r.path.rsplit("/", 1)[1]: r.extra.get("subsets") for r in records.values()} == {
        "a.jpg": None, f"{HASHES[0]}.jpg": ("pose30",), f"{HASHES[1]}.jpg": ("occlusion",),
        f"{HASHES[2]}.jpg": ("pose30",)}
    assert "subset 'occlusion' lists 1 of its 2 images" in caplog.text
    make_affectnet_npy(tmp_path / "npy")
    with pytest.raises(ValueError, match="official layout"):
        read_all("affectnet", tmp_path / "npy", {"subsets": {"pose30": str(tmp_path / "pose30.txt")}})


def test_blank_lines_and_rows_without_a_path(tmp_path):
    """A blank line is not a row; a row with no image path is a malformed_row drop (both crashed
    the whole read: Path('').with_suffix)."""
    make_affectnet_csv(tmp_path)
    csv_path = next(tmp_path.rglob("training.csv"))
    text = csv_path.read_text()
    csv_path.write_text(text.rstrip("\n") + "\n\n" + ",10,20,50,60," + ";".join(["1"] * 136) + ",1,0.1,0.1\n\n")
    records, drops, items = read_all("affectnet", tmp_path)
    assert len(records) == 5 and drops["malformed_row"] == 1
    assert any(d.reason == "malformed_row" and "no image path" in d.detail for d in items)


def test_fractional_expressions_and_sentinel_valence(tmp_path):
    """Expression 1.7 is no label (it was read as 1); valence/arousal outside [-1, 1] (the -2
    sentinel of automatic and No-Face rows) are not kept as values."""
    make_affectnet_csv(tmp_path)
    csv_path = next(tmp_path.rglob("training.csv"))
    lines = csv_path.read_text().splitlines()
    first = lines[1].split(",")
    fractional = ",".join([first[0].replace("img0", "img0b"), *first[1:6], "1.7", *first[7:]])
    sentinel = ",".join([*first[:6], first[6], "-2", "-2"])
    csv_path.write_text("\n".join([lines[0], sentinel, fractional, *lines[2:]]) + "\n")
    records, drops, items = read_all("affectnet", tmp_path)
    assert drops["bad_label"] == 1 and any("1.7" in d.detail for d in items if d.reason == "bad_label")
    assert "valence" not in records["train_1_img0"].extra and "arousal" not in records["train_1_img0"].extra


def test_a_byte_order_mark_is_not_part_of_the_header(tmp_path):
    """CSV files saved by Excel on Windows start with a UTF-8 byte order mark (the header check
    refused them)."""
    make_affectnet_csv(tmp_path)
    for csv_path in tmp_path.rglob("*.csv"):
        csv_path.write_bytes(b"\xef\xbb\xbf" + csv_path.read_bytes())
    records, _, _ = read_all("affectnet", tmp_path)
    assert len(records) == 5


def test_a_list_without_its_header_line_is_read_from_its_first_row(tmp_path, caplog):
    """Some copies of validation.csv lack the header: its first row is data, not a wrong header
    (which stopped the whole dataset); a first line that is neither stays an error."""
    make_affectnet_csv(tmp_path)
    val = tmp_path / "Manually_Annotated_file_lists" / "validation.csv"
    val.write_text(val.read_text().split("\n", 1)[1])
    records, _, _ = read_all("affectnet", tmp_path)
    assert {k for k, r in records.items() if r.split == "test"} == {"test_3_v0", "test_3_v1"}
    assert "has no header line" in caplog.text
    val.write_text("image,x,y,w,h,landmarks,label,valence,arousal\n" + val.read_text())
    with pytest.raises(ValueError, match="is not AffectNet's"):
        read_all("affectnet", tmp_path)


@pytest.mark.parametrize("layout", ["csv", "npy"])
def test_an_empty_validation_list_is_no_official_test_split(tmp_path, layout):
    """A corpus in AffectNet's layout without a test split (the validation list names nothing) has its
    test split carved or k-folded by the shard stage; a list whose images were all dropped stays official."""
    if layout == "csv":
        make_affectnet_csv(tmp_path)
        (val_csv,) = tmp_path.rglob("validation.csv")
        val_csv.write_text(AFFECTNET_HEADER + "\n\n")
    else:
        make_affectnet_npy(tmp_path)
        for p in (tmp_path / "val_set" / "annotations").iterdir():
            p.unlink()
    reader = open_reader("affectnet", tmp_path)
    assert reader.official_splits() == ("train",)
    assert {r.split for r in reader.read() if isinstance(r, FaceRecord)} == {"train"}


def test_a_validation_list_of_dropped_images_is_still_an_official_test_split(tmp_path):
    make_affectnet_csv(tmp_path)
    for p in (tmp_path / "Manually_Annotated_Images" / "3").iterdir():
        p.unlink()
    reader = open_reader("affectnet", tmp_path)
    assert reader.official_splits() == ("train", "test")
    assert {r.split for r in reader.read() if isinstance(r, FaceRecord)} == {"train"}


def test_npy_layout_counts_an_image_without_annotations(tmp_path):
    """The re-packaged layout's images are defined by their annotations: one without was ignored."""
    make_affectnet_npy(tmp_path)
    write_image(tmp_path / "train_set" / "images" / "77.jpg")
    write_image(tmp_path / "train_set" / "images" / "._0.jpg")            # macOS's copy of 0.jpg's metadata
    records, drops, items = read_all("affectnet", tmp_path)
    assert "train_77" not in records and drops["no_label"] == 1 and drops["hidden_file"] == 1
    assert [d.key for d in items if d.reason == "no_label"] == ["train_77"]


def test_valence_and_arousal_at_the_ends_of_their_range_are_kept():
    """Bug guarded: the range check made open at an end, dropping valence -1 (AffectNet's most
    negative value, which its annotators use) while the sentinels -2 stay out."""
    from ferdata.datasets.affectnet import affect

    assert affect(valence=lambda: -1.0, arousal=lambda: 1.0) == {"valence": -1.0, "arousal": 1.0}
    assert affect(valence=lambda: -2.0, arousal=lambda: 1.0001) == {}


def _write_training_csv(root, lines: list[str]) -> None:
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "training.csv").write_text("\n".join([AFFECTNET_HEADER, *lines]) + "\n")
    (lists / "validation.csv").write_text(AFFECTNET_HEADER + "\n")


def test_a_stray_quote_drops_its_own_row_only_and_a_trailing_comma_is_no_column(tmp_path):
    """csv's reader let a quote left open run on through every later line: one row swallowed the
    rest of the list into a single malformed drop. A trailing comma on every row (a 10th, empty
    cell) dropped every row as "10 columns"."""
    lmk = landmarks68()
    for i in range(4):
        write_image(tmp_path / "Manually_Annotated_Images" / "1" / f"i{i}.jpg")
    rows = [_affectnet_row(f"1/i{i}.jpg", 1, lmk) for i in range(4)]
    rows[1] = '"' + rows[1]
    _write_training_csv(tmp_path, rows)
    records, drops, items = read_all("affectnet", tmp_path, {"protocol": "affectnet8"})
    assert sorted(records) == ["train_1_i0", "train_1_i2", "train_1_i3"] and drops == {"malformed_row": 1}
    assert next(d.detail for d in items if d.reason == "malformed_row").startswith("training.csv:3: ")
    _write_training_csv(tmp_path, [row + "," for row in rows[:1] + rows[2:]])
    records, drops, _ = read_all("affectnet", tmp_path, {"protocol": "affectnet8"})
    assert sorted(records) == ["train_1_i0", "train_1_i2", "train_1_i3"] and not drops


def test_a_listed_path_that_leads_out_of_the_images_folder_is_dropped(tmp_path):
    lmk = landmarks68()
    write_image(tmp_path / "Manually_Annotated_Images" / "1" / "a.jpg")
    write_image(tmp_path / "outside.jpg")
    rows = [_affectnet_row(rel, 1, lmk) for rel in ("1/a.jpg", "../outside.jpg", str(tmp_path / "outside.jpg"))]
    _write_training_csv(tmp_path, rows)
    records, drops, items = read_all("affectnet", tmp_path, {"protocol": "affectnet8"})
    assert list(records) == ["train_1_a"] and drops == {"malformed_row": 2}
    assert all("leads out of Manually_Annotated_Images/" in d.detail for d in items if isinstance(d, Dropped))


def test_npy_layout_finds_images_of_any_type_and_case_and_counts_the_rest(tmp_path):
    """Labels name an image by its id: `0.JPG`, `2.jpeg` were "missing" (only .jpg/.png were
    tried) and an unlabelled `9.bmp` went unreported; a second file of one id and macOS's
    `._5_exp.npy` are counted drops, not labels."""
    make_affectnet_npy(tmp_path)
    images = tmp_path / "train_set" / "images"
    (images / "0.jpg").rename(images / "0.JPG")
    (images / "2.jpg").rename(images / "2.jpeg")
    write_image(images / "5.png")
    write_image(images / "9.bmp")
    (tmp_path / "train_set" / "annotations" / "._5_exp.npy").write_bytes(b"\x00\x05junk")
    records, drops, items = read_all("affectnet", tmp_path, {"protocol": "affectnet8"})
    assert records["train_0"].path.endswith("0.JPG") and records["train_2"].path.endswith("2.jpeg")
    assert records["train_5"].path.endswith("5.jpg")
    assert drops["duplicate_image"] == 1 and drops["hidden_file"] == 1
    by_reason = {d.reason: d.detail for d in items if isinstance(d, Dropped)}
    assert by_reason["duplicate_image"].endswith("5.png: annotations/5_exp.npy labels 5.jpg")
    assert [d.key for d in items if isinstance(d, Dropped) and d.reason == "no_label"] == ["train_9"]


def test_empty_valence_and_arousal_are_kept_and_a_merged_line_gets_a_short_key(tmp_path):
    """The empty cells of a row's last columns are data (valence, arousal: optional); only those a
    trailing comma adds beyond the 9 columns go. A line a stray quote merged into one cell was keyed
    by its whole text (864 characters)."""
    lmk = landmarks68()
    for i in range(3):
        write_image(tmp_path / "Manually_Annotated_Images" / "1" / f"e{i}.jpg")
    rows = [_affectnet_row(f"1/e{i}.jpg", 1, lmk) for i in range(3)]
    rows[0] = rows[0].rsplit(",", 1)[0] + ","                      # arousal empty
    rows[1] = rows[1].rsplit(",", 2)[0] + ",,"                     # valence and arousal empty
    rows[2] = '"' + rows[2]
    _write_training_csv(tmp_path, rows)
    records, drops, items = read_all("affectnet", tmp_path, {"protocol": "affectnet8"})
    assert sorted(records) == ["train_1_e0", "train_1_e1"] and drops == {"malformed_row": 1}
    assert records["train_1_e0"].extra == {"valence": 0.25} and records["train_1_e1"].extra == {}
    (key,) = [d.key for d in items if isinstance(d, Dropped)]
    assert key.startswith("train_training-csv-4") and len(key) < 40


def test_npy_labels_of_bad_bytes_or_several_values_are_bad_labels(tmp_path):
    """Bytes that are not ASCII digits are no number (not their digits with the rest ignored); an
    array of two values is not one label (not its first value)."""
    make_affectnet_npy(tmp_path)
    anno = tmp_path / "train_set" / "annotations"
    np.save(anno / "0_exp.npy", np.array(b"3\xff"))
    np.save(anno / "2_exp.npy", np.array([3, 4]))
    records, drops, items = read_all("affectnet", tmp_path)
    assert "train_0" not in records and "train_2" not in records
    reasons = {d.key: (d.reason, d.detail) for d in items}
    assert reasons["train_0"][0] == "bad_label"
    assert reasons["train_2"] == ("bad_label", "2_exp.npy: 2 values, expected 1")


def test_only_the_csv_layout_reads_its_lists_twice_for_exclude_classes(tmp_path, monkeypatch):
    """One annotation file per image cannot name a face twice: the npy layout needs no first pass."""
    from ferdata.datasets.base import DatasetReader

    passes = []
    real = DatasetReader._excluded_listings
    monkeypatch.setattr(DatasetReader, "_excluded_listings", lambda self: passes.append(self.options) or real(self))
    make_affectnet_npy(tmp_path / "npy")
    make_affectnet_csv(tmp_path / "csv")
    for layout in ("npy", "csv"):
        read_all("affectnet", tmp_path / layout, {"exclude_classes": ["Contempt"]})
    assert len(passes) == 1
