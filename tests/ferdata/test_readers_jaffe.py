"""JAFFE: labels from file names, subjects from the first name field."""
from __future__ import annotations

import pytest

from ferdata.datasets import DatasetLayoutError
from tests.ferdata.fixtures_datasets import make_jaffe, read_all

# hand-written: NE 0, HA 1, SA 2, SU 3, FE 4, DI 5, AN 6


def test_jaffe(tmp_path):
    make_jaffe(tmp_path)
    records, drops, items = read_all("jaffe", tmp_path)
    assert {k: (r.label, r.native_label, r.subject) for k, r in records.items()} == {
        "KA-AN1-39": (6, "AN", "KA"),
        "KA-HA2-30": (1, "HA", "KA"),
        "KL-NE1-155": (0, "NE", "KL"),
        "MK-FE2-1": (4, "FE", "MK"),
        "NA-SA1-2": (2, "SA", "NA"),
        "UY-DI1-1": (5, "DI", "UY"),
        "YM-SU3-60": (3, "SU", "YM"),
    }
    assert drops == {"bad_label": 1, "bad_filename": 1, "not_an_image": 1}           # the README too
    assert {d.key: d.reason for d in items} == {"XX-ZZ1-1": "bad_label", "random": "bad_filename",
                                                "README": "not_an_image"}
    assert all(r.split == "" and r.path.endswith(".tiff") for r in records.values())


def test_jaffe_in_subfolder(tmp_path):
    make_jaffe(tmp_path / "jaffe")
    records, _, _ = read_all("jaffe", tmp_path)
    assert len(records) == 7


def test_jaffe_layout_error(tmp_path):
    (tmp_path / "photo.jpg").write_bytes(b"")
    with pytest.raises(DatasetLayoutError) as err:
        read_all("jaffe", tmp_path)
    assert "expected: KA.AN1.39.tiff-style image files" in str(err.value)
    assert "found:    photo.jpg" in str(err.value)


def test_jaffe_converted_to_png_or_jpeg_is_read_alike(tmp_path):
    """Copies of JAFFE converted from TIFF keep the names: read with the same labels and subjects."""
    make_jaffe(tmp_path / "tiff")
    for path in (tmp_path / "tiff").glob("*.tiff"):
        converted = tmp_path / "converted" / path.with_suffix(".png" if "A" in path.name else ".JPG").name
        converted.parent.mkdir(exist_ok=True)
        converted.write_bytes(path.read_bytes())
    (tmp_path / "converted" / "README").write_bytes((tmp_path / "tiff" / "README").read_bytes())
    tiff, tiff_drops, _ = read_all("jaffe", tmp_path / "tiff")
    converted, drops, _ = read_all("jaffe", tmp_path / "converted")
    assert drops == tiff_drops
    assert {k: (r.label, r.subject) for k, r in converted.items()} == {k: (r.label, r.subject) for k, r in tiff.items()}
    assert {r.path.rpartition(".")[2] for r in converted.values()} == {"png", "JPG"}


def test_a_hidden_image_is_a_counted_drop(tmp_path):
    """macOS leaves ``._KA.SU1.41.tiff`` beside each file copied from its disks: not read, but counted."""
    from tests.ferdata.fixtures_datasets import write_image

    make_jaffe(tmp_path)
    write_image(tmp_path / "._KA.SU1.41.tiff", gray=True)
    records, drops, items = read_all("jaffe", tmp_path)
    assert len(records) == 7 and drops == {"bad_label": 1, "bad_filename": 1, "hidden_file": 1, "not_an_image": 1}
    assert [d.detail.split(":")[0] for d in items if d.reason == "hidden_file"] == [str(tmp_path / "._KA.SU1.41.tiff")]


def test_a_file_that_is_no_image_is_a_counted_drop(tmp_path):
    """A README (make_jaffe writes one) or a GIF beside the images was skipped without a trace (the
    folder reader counts them)."""
    make_jaffe(tmp_path)
    (tmp_path / "KA.HA1.29.gif").write_bytes(b"GIF89a")
    records, drops, items = read_all("jaffe", tmp_path)
    assert len(records) == 7 and drops == {"bad_label": 1, "bad_filename": 1, "not_an_image": 2}
    assert sorted(d.detail.split(":")[0] for d in items if d.reason == "not_an_image") == [
        str(tmp_path / "KA.HA1.29.gif"), str(tmp_path / "README")]


def test_lower_case_file_names_keep_their_label_and_subject(tmp_path):
    """Bug guarded: the expression code or the subject taken as written: a copy with lower-case names
    (``ka.ha2.30.tiff``) dropped every face as bad_label, or split subject KA into ``ka`` and ``KA``
    (leaking one person across leave-one-subject-out folds)."""
    from tests.ferdata.fixtures_datasets import write_image

    write_image(tmp_path / "ka.ha2.30.tiff")
    write_image(tmp_path / "KA.AN1.39.tiff")
    records, drops, _ = read_all("jaffe", tmp_path)
    assert not drops
    assert {k: (r.label, r.native_label, r.subject) for k, r in records.items()} == {
        "ka-ha2-30": (1, "HA", "KA"), "KA-AN1-39": (6, "AN", "KA")}


def test_jaffe_names_at_the_root_and_in_jaffe_is_an_error_naming_both(tmp_path):
    """Bug guarded: one JAFFE-named image at the root made the root the dataset: ``jaffe/`` with the
    other faces was never read and never reported."""
    from tests.ferdata.fixtures_datasets import write_image

    make_jaffe(tmp_path / "jaffe")
    write_image(tmp_path / "KA.AN1.39.tiff", gray=True)
    with pytest.raises(ValueError) as err:
        read_all("jaffe", tmp_path)
    message = str(err.value)
    assert f"{tmp_path} (1 JAFFE-named image(s))" in message
    assert f"{tmp_path / 'jaffe'} (8 JAFFE-named image(s))" in message
    assert "Move them into one folder" in message


def test_images_in_folders_not_read_are_counted_drops(tmp_path):
    """Bug guarded: images in sub-folders of the dataset's folder (or at the root when ``jaffe/`` is
    read) were skipped without a trace."""
    from tests.ferdata.fixtures_datasets import write_image

    make_jaffe(tmp_path)
    outside = [write_image(tmp_path / "extra" / "KA.AN1.40.tiff", gray=True),
               write_image(tmp_path / "jaffe" / "photo.png", gray=True)]
    hidden = write_image(tmp_path / "extra" / "._KA.AN1.40.tiff", gray=True)
    (tmp_path / "extra" / "notes.txt").write_text("not an image\n")
    records, drops, items = read_all("jaffe", tmp_path)
    assert len(records) == 7
    assert drops == {"bad_label": 1, "bad_filename": 1, "not_an_image": 1, "outside_dataset_folder": 2,
                     "hidden_file": 1}
    assert sorted(d.detail.split(":")[0] for d in items if d.reason == "outside_dataset_folder") == sorted(
        str(p) for p in outside)
    assert [d.detail.split(":")[0] for d in items if d.reason == "hidden_file"] == [str(hidden)]


def test_images_beside_jaffe_folder_are_counted_drops(tmp_path):
    """The same when ``jaffe/`` is read: an image at the root, or in a folder inside ``jaffe/``, is counted."""
    from tests.ferdata.fixtures_datasets import write_image

    make_jaffe(tmp_path / "jaffe")
    outside = [write_image(tmp_path / "cover.jpg"), write_image(tmp_path / "jaffe" / "old" / "KA.AN1.39.tiff")]
    records, drops, items = read_all("jaffe", tmp_path)
    assert len(records) == 7 and drops["outside_dataset_folder"] == 2
    assert sorted(d.detail.split(":")[0] for d in items if d.reason == "outside_dataset_folder") == sorted(
        str(p) for p in outside)
    assert all(f"directly in {tmp_path / 'jaffe'}" in d.detail for d in items if d.reason == "outside_dataset_folder")


def test_copies_converted_by_appending_an_extension_are_read_alike(tmp_path):
    """``for f in *.tiff; do convert $f $f.bmp; done`` names the copies ``KA.AN1.39.tiff.bmp``: the same key, label
    and subject as the TIFF (such a folder was refused whole: "does not look like this dataset")."""
    make_jaffe(tmp_path / "tiff")
    for path in (tmp_path / "tiff").glob("*.tiff"):
        converted = tmp_path / "converted" / f"{path.name}.{'bmp' if 'A' in path.name else 'png'}"
        converted.parent.mkdir(exist_ok=True)
        converted.write_bytes(path.read_bytes())
    tiff, _, _ = read_all("jaffe", tmp_path / "tiff")
    converted, drops, _ = read_all("jaffe", tmp_path / "converted")
    assert {k: (r.label, r.subject) for k, r in converted.items()} == {k: (r.label, r.subject) for k, r in tiff.items()}
    assert converted["KA-AN1-39"].path.endswith("KA.AN1.39.tiff.bmp") and converted["KA-AN1-39"].label == 6
    assert drops == {"bad_label": 1, "bad_filename": 1}     # XX.ZZ1.1.tiff.png, random.tiff.png as from the TIFFs
