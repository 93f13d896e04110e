"""The generic class-folder reader and SFEW (which shares its tree walker)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from ferdata.classes import UnknownClassError
from ferdata.datasets import DatasetLayoutError, open_reader
from ferdata.splits import assign_splits
from tests.ferdata.fixtures_datasets import make_folder_splits, make_sfew, read_all, write_image


def test_folder_with_splits_needs_mapping_for_unknown(tmp_path):
    make_folder_splits(tmp_path)
    with pytest.raises(UnknownClassError) as err:
        read_all("folder", tmp_path)
    assert err.value.unknown == ["calm"]


@pytest.mark.parametrize("mapping", [5, ["calm"], "calm: Neutral", {1.5: "Happy"}, {"calm": 3}])
def test_a_mapping_that_is_not_names_to_classes_is_refused_by_name(tmp_path, mapping):
    make_folder_splits(tmp_path)
    with pytest.raises(ValueError, match=r"options.mapping must map folder names to classes .* got "):
        read_all("folder", tmp_path, {"mapping": mapping})


def test_folder_with_splits_and_mapping(tmp_path):
    make_folder_splits(tmp_path)
    records, drops, _ = read_all("folder", tmp_path, {"mapping": {"calm": "Neutral"}})
    got = {k: (r.split, r.label, r.native_label) for k, r in records.items()}
    assert got == {
        "train_Happiness_x-jpg": ("train", 1, "Happiness"),
        "train_ANGRY_y-png": ("train", 6, "ANGRY"),
        "train_ANGRY_sub-y2-jpg": ("train", 6, "ANGRY"),
        "val_sad_z-jpg": ("val", 2, "sad"),
        "test_Contempt_w-jpg": ("test", 7, "Contempt"),
        "test_calm_q-jpg": ("test", 0, "calm"),
    }
    assert drops == {"not_an_image": 1}                     # train/Happiness/notes.txt (.DS_Store: hidden)
    assert all(r.dataset == "folder" and r.path.endswith((".jpg", ".png")) for r in records.values())


def test_an_empty_split_folder_defines_no_split(tmp_path):
    """test/ holding no image (an empty class folder, a .DS_Store, a README, Thumbs.db, a hidden folder's
    image) is no official split (the shard stage carves one; a README made it one that the shard stage
    then found empty); one image in it, even an unreadable one, makes it official."""
    write_image(tmp_path / "train" / "happy" / "a.jpg")
    (tmp_path / "test" / "sad").mkdir(parents=True)
    (tmp_path / "test" / "sad" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "test" / "README.txt").write_text("labels withheld\n")
    (tmp_path / "test" / "sad" / "Thumbs.db").write_bytes(b"\0")
    write_image(tmp_path / "test" / "sad" / ".thumbs" / "b.jpg")
    reader = open_reader("folder", tmp_path)
    assert reader.official_splits() == ("train",)
    (tmp_path / "test" / "sad" / "b.jpg").write_bytes(b"")
    assert sorted(reader.official_splits()) == ["test", "train"]


def test_folder_excluded_class_is_counted(tmp_path):
    make_folder_splits(tmp_path)
    records, drops, items = read_all("folder", tmp_path, {"mapping": {"calm": None}, "dataset": "mine"})
    assert len(records) == 5
    assert drops == {"excluded_class": 1, "not_an_image": 1}
    excluded = next(d for d in items if d.reason == "excluded_class")
    assert excluded.key == "test_calm_q-jpg" and excluded.dataset == "mine"


def test_folder_flat_layout(tmp_path):
    write_image(tmp_path / "happy" / "a.jpg")
    write_image(tmp_path / "Joy" / "b.jpg")
    write_image(tmp_path / "surprised" / "c.jpg")
    records, drops, _ = read_all("folder", tmp_path)
    assert {k: (r.label, r.split) for k, r in records.items()} == {
        "happy_a-jpg": (1, ""), "Joy_b-jpg": (1, ""), "surprised_c-jpg": (3, ""),
    }


def test_folder_numeric_folders_are_not_guessed(tmp_path):
    write_image(tmp_path / "0" / "a.jpg")
    write_image(tmp_path / "10" / "a.jpg")
    with pytest.raises(UnknownClassError) as err:
        read_all("folder", tmp_path)
    assert err.value.unknown == ["0", "10"]


def test_folder_mixed_split_and_class_folders_raise(tmp_path):
    write_image(tmp_path / "train" / "happy" / "a.jpg")
    write_image(tmp_path / "sad" / "b.jpg")
    with pytest.raises(ValueError, match="mixes split folders"):
        read_all("folder", tmp_path)


def test_folder_empty_root_layout_error(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DatasetLayoutError) as err:
        read_all("folder", tmp_path)
    assert "expected: <class>/ folders" in str(err.value)
    assert "found:    readme.txt" in str(err.value)


def test_sfew(tmp_path):
    make_sfew(tmp_path)
    records, drops, _ = read_all("sfew", tmp_path)
    got = {k: (r.split, r.label, r.native_label) for k, r in records.items()}
    assert got == {
        "train_Angry_a_001-png": ("train", 6, "Angry"),
        "train_Happy_b_002-png": ("train", 1, "Happy"),
        "train_Neutral_c_003-png": ("train", 0, "Neutral"),
        "test_Sad_d_004-png": ("test", 2, "Sad"),
        "test_Surprise_e_005-png": ("test", 3, "Surprise"),
    }
    assert not drops


def test_sfew_val_as_val(tmp_path):
    make_sfew(tmp_path)
    records, _, _ = read_all("sfew", tmp_path, {"val_as": "val"})
    assert sorted(r.split for r in records.values()) == ["train", "train", "train", "val", "val"]
    assert open_reader("sfew", tmp_path, {"val_as": "val"}).official_splits() == ("train", "val")


def test_sfew_val_without_images_defines_no_split(tmp_path):
    """Val/ of empty class folders (only Train unpacked) is carved, as README says of a folder naming no
    image; the shard stage refused it after detection ("restore or fix those images")."""
    make_sfew(tmp_path)
    assert open_reader("sfew", tmp_path).official_splits() == ("train", "test")
    for image in (tmp_path / "Val").rglob("*.png"):
        image.unlink()
    (tmp_path / "Val" / "Sad" / ".DS_Store").write_bytes(b"\0")
    assert open_reader("sfew", tmp_path).official_splits() == ("train",)


def test_sfew_frame_named_in_another_encoding_is_split(tmp_path):
    """A frame whose name is Latin-1 bytes (zips made on Windows): its film, undecodable byte and all,
    groups it for the split (the split's hash refused the name after detect, align and derive had run)."""
    make_sfew(tmp_path)
    odd = os.fsencode(tmp_path / "Train" / "Happy") + b"/Caf\xe9_000123_00000001.png"
    os.replace(write_image(tmp_path / "tmp.png"), odd)
    records, drops, _ = read_all("sfew", tmp_path)
    film = {r.extra.get("movie") for r in records.values()} - {None}
    assert "Caf\udce9" in film, film
    split = list(assign_splits(records.values(), seed=0, val_fraction=0.5, test_fraction=0.0,
                               official={"train", "test"}))
    assert sorted(r.key for r in split) == sorted(records) and not drops


def test_sfew_rejects_non_sfew_class_folder(tmp_path):
    make_sfew(tmp_path)
    write_image(tmp_path / "Train" / "Contempt" / "x.png")
    with pytest.raises(ValueError, match=r"\['Contempt'\]"):
        read_all("sfew", tmp_path)


def test_sfew_layout_error(tmp_path):
    write_image(tmp_path / "Train" / "Happy" / "a.png")
    with pytest.raises(DatasetLayoutError) as err:
        read_all("sfew", tmp_path)
    assert "expected: Train/, Val/" in str(err.value) and "found:    Train" in str(err.value)


def test_folder_names_alike_after_sanitising_stay_distinct_images(tmp_path):
    """`img 1.jpg`, `img-1.jpg` and `img.1.jpg` all sanitise to `img-1-jpg`: the first keeps the
    plain key, the others get a hash of their name (two of three were dropped as duplicate_key)."""
    for name in ("img 1.jpg", "img-1.jpg", "img.1.jpg"):
        write_image(tmp_path / "happy" / name)
    records, drops, _ = read_all("folder", tmp_path)
    assert not drops and len(records) == 3
    assert sorted(r.path.rsplit("/", 1)[1] for r in records.values()) == ["img 1.jpg", "img-1.jpg", "img.1.jpg"]
    assert "happy_img-1-jpg" in records and all(k.startswith("happy_img-1-jpg") for k in records)
    again, _, _ = read_all("folder", tmp_path)
    assert {k: r.path for k, r in again.items()} == {k: r.path for k, r in records.items()}   # stable keys


def test_a_key_part_of_separators_only_gets_its_hash_not_nothing():
    """`-`, ` ` and `..` clean to nothing: each becomes a hash of its text, so no key is empty
    and `a_` is not shared by `('a', '-')` and `('a', ' ')`; an empty key is refused."""
    from ferdata.records import FaceRecord, make_key

    keys = [make_key(p) for p in ("-", " ", "..", "/")]
    assert all(k and len(k) == 8 for k in keys) and len(set(keys)) == 4
    assert make_key("-") == make_key("-")                                       # stable
    assert make_key("a", "-") != make_key("a", " ") and make_key("a", "-").startswith("a_")
    assert make_key("a", "-") != make_key("a") and make_key("a", "", "b") == "a_b"
    assert make_key("img 1.jpg") == "img-1-jpg"                                 # readable parts unchanged
    with pytest.raises(ValueError, match="empty key"):
        FaceRecord(dataset="mine", key="", path="x.jpg", label=0, native_label="happy")
    with pytest.raises(ValueError, match="empty key"):
        FaceRecord(dataset="mine", key=make_key(), path="x.jpg", label=0, native_label="happy")


def test_a_file_name_that_is_not_utf8_is_read_not_fatal(tmp_path):
    """Latin-1 `café.jpg` next to UTF-8 `café.jpg`: both read, distinct keys (the name's hash was
    taken of its UTF-8 encoding, which a lone surrogate has not: the whole dataset failed)."""
    import os

    write_image(tmp_path / "happy" / "café.jpg", value=40)
    os.rename(write_image(tmp_path / "happy" / "x.jpg", value=90),
              os.path.join(os.fsencode(tmp_path / "happy"), b"caf\xe9.jpg"))
    records, drops, _ = read_all("folder", tmp_path)
    assert not drops and len(records) == 2
    assert {os.fsencode(r.path).rsplit(b"/", 1)[1] for r in records.values()} == {"café.jpg".encode(), b"caf\xe9.jpg"}


def test_every_visible_file_is_read_or_counted(tmp_path):
    """Nothing is skipped silently: an image beside the class folders, a GIF, a text file and a
    link to nothing are counted drops with their paths; hidden files are not data."""
    write_image(tmp_path / "train" / "happy" / "a.jpg")
    write_image(tmp_path / "train" / "stray.jpg")
    (tmp_path / "labels.txt").write_text("beside the split folders\n")
    (tmp_path / "train" / "happy" / "e.gif").write_bytes(b"GIF89a" + bytes(40))
    (tmp_path / "train" / "sad").mkdir()
    (tmp_path / "train" / "sad" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "train" / "sad" / ".thumbs.db").write_bytes(b"x")
    records, drops, items = read_all("folder", tmp_path)
    assert list(records) == ["train_happy_a-jpg"]
    assert drops == {"outside_class_folder": 2, "not_an_image": 1, "missing_image": 1}
    details = {d.reason: d.detail for d in items}
    outside = sorted(d.detail for d in items if d.reason == "outside_class_folder")
    assert outside == [str(tmp_path / "labels.txt"), str(tmp_path / "train" / "stray.jpg")]
    assert "e.gif: a GIF is not read" in details["not_an_image"] and "gone.jpg" in details["missing_image"]


def test_linked_folders_are_read_and_loops_counted(tmp_path):
    """A class folder that links a folder of images kept elsewhere is read (Python 3.11's rglob
    skipped it: its images were lost without a count), so is a class folder that is a link; a link
    back up the tree is walked once and counted as a drop, not followed forever."""
    root, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    write_image(root / "happy" / "a.jpg")
    write_image(elsewhere / "more" / "b.jpg")
    write_image(elsewhere / "c.jpg")
    write_image(tmp_path / "sad_images" / "d.jpg")
    (root / "happy" / "batch2").symlink_to(elsewhere)
    (elsewhere / "more" / "up").symlink_to(elsewhere)              # a loop
    (root / "sad").symlink_to(tmp_path / "sad_images", target_is_directory=True)
    records, drops, items = read_all("folder", root)
    assert sorted(records) == ["happy_a-jpg", "happy_batch2-c-jpg", "happy_batch2-more-b-jpg", "sad_d-jpg"]
    assert records["happy_batch2-more-b-jpg"].label == 1 and records["sad_d-jpg"].label == 2
    assert drops == {"repeated_folder": 1}
    assert items[0].detail.startswith(str(root / "happy" / "batch2" / "more" / "up") + ":")


def test_sfew_frames_carry_their_film_and_one_film_stays_in_one_split(tmp_path, caplog):
    """SFEW names frames <film>_<clip>_<frame>: the carved validation split must not share films
    with training (frames of one clip are near-duplicates); frames named otherwise are said."""
    from collections import defaultdict

    from ferdata.records import MOVIE
    from ferdata.splits import assign_splits

    films = [f"Film{f}" for f in range(30)] + ["Harry_Potter_2"]
    for i, film in enumerate(films):
        for clip, frame in ((f"{100 + i:09d}", 5), (f"{100 + i:09d}", 12), (f"{900 + i:09d}", 3)):
            write_image(tmp_path / "Train" / ("Happy", "Sad")[i % 2] / f"{film}_{clip}_{frame:08d}.png")
    write_image(tmp_path / "Train" / "Happy" / "frame 7.png")                 # another form: no film
    write_image(tmp_path / "Val" / "Angry" / "Airheads_000519240_00000005.png")
    with caplog.at_level("WARNING", logger="ferdata.datasets.sfew"):
        records, drops, _ = read_all("sfew", tmp_path)
    assert ("1 of 95 frames are not named <film>_<clip>_<frame> as SFEW's release names them (e.g. frame 7.png)"
            in caplog.text)
    assert not drops
    assert {r.extra.get(MOVIE) for r in records.values()} == {*films, "Airheads", None}
    assert records["train_Happy_frame-7-png"].extra == {}
    assert records["train_Happy_Harry_Potter_2_000000130_00000005-png"].extra[MOVIE] == "Harry_Potter_2"
    per_film = defaultdict(set)
    for r in assign_splits(records.values(), seed=0, val_fraction=0.3, test_fraction=0.2, by="subject"):
        per_film[r.extra.get(MOVIE)].add(r.split)
    assert per_film.pop("Airheads") == {"test"}
    assert all(len(s) == 1 for film, s in per_film.items() if film), per_film
    assert set().union(*per_film.values()) == {"train", "val"}


def test_links_back_into_the_dataset_are_counted_not_read_under_another_label(tmp_path):
    """happy/up -> .. (the root) and happy/theirs -> ../sad would read sad's images a second time,
    labelled Happy; a link to / would walk the machine. Each is one counted repeated_folder drop."""
    write_image(tmp_path / "happy" / "a.jpg")
    write_image(tmp_path / "sad" / "s.jpg")
    (tmp_path / "happy" / "up").symlink_to(tmp_path)
    (tmp_path / "happy" / "theirs").symlink_to(tmp_path / "sad")
    (tmp_path / "happy" / "everything").symlink_to("/")
    records, drops, items = read_all("folder", tmp_path)
    assert {k: r.label for k, r in records.items()} == {"happy_a-jpg": 1, "sad_s-jpg": 2}
    assert drops == {"repeated_folder": 3}
    assert sorted(Path(d.detail.split(":")[0]).name for d in items) == ["everything", "theirs", "up"]


def test_hidden_images_and_folders_and_pipes_are_counted_not_skipped(tmp_path):
    write_image(tmp_path / "happy" / "a.jpg")
    write_image(tmp_path / "happy" / "._a.jpg")                      # macOS AppleDouble beside the image
    write_image(tmp_path / "happy" / ".thumbs" / "c.jpg")
    (tmp_path / "happy" / ".DS_Store").write_bytes(b"\0")           # no image: ignored
    os.mkfifo(tmp_path / "happy" / "pipe.jpg")
    records, drops, items = read_all("folder", tmp_path)
    assert list(records) == ["happy_a-jpg"]
    assert drops == {"hidden_file": 2, "not_an_image": 1}
    assert {Path(d.detail.split(":")[0]).name for d in items} == {"._a.jpg", ".thumbs", "pipe.jpg"}


@pytest.mark.parametrize("splits", [False, True])
def test_hidden_folders_beside_the_class_or_split_folders_are_counted(tmp_path, splits):
    """A NAS's `.@__thumb/` or a `.trash/happy/` next to the class folders (or the split folders)
    was skipped without a trace; empty hidden folders (`.git/` of nothing) stay silent."""
    top = tmp_path / "train" if splits else tmp_path
    write_image(top / "happy" / "a.jpg")
    write_image(top / "sad" / "b.jpg")
    write_image(top / ".trash" / "happy" / "c.jpg")
    write_image(tmp_path / ".@__thumb" / "d.jpg")
    (tmp_path / ".empty" / "sub").mkdir(parents=True)
    records, drops, items = read_all("folder", tmp_path)
    assert sorted(r.native_label for r in records.values()) == ["happy", "sad"]
    assert drops == {"hidden_file": 2}
    assert sorted(Path(d.detail.split(":")[0]).name for d in items) == [".@__thumb", ".trash"]


@pytest.mark.parametrize("name, split", [("validation", "val"), ("Valid", "val"), ("testing", "test"),
                                         ("Training", "train")])
def test_split_folder_spellings_mean_their_split(tmp_path, name, split):
    """Bug guarded: a spelling of a split folder mapped to another split (``validation`` read as
    test would score the model on the set that picked its best epoch)."""
    write_image(tmp_path / name / "happy" / "a.png")
    records, drops, _ = read_all("folder", tmp_path)
    assert not drops and [r.split for r in records.values()] == [split]


def _ckplus48(root: Path) -> None:
    """Kaggle's CK+48 layout: <class>/S<subject>_<sequence>_<frame>.png, three peak frames per sequence."""
    for s in range(12):
        for frame in range(3):
            write_image(root / ("happy", "sadness", "anger")[s % 3] / f"S{s + 10:03d}_001_{frame + 15:08d}.png",
                        value=10 * s + frame)


def test_folder_subject_option_keeps_a_person_and_a_sequence_in_one_carved_split(tmp_path):
    """Without a subject every frame was carved on its own: frames of one sequence (near-duplicates) and
    one person landed in train and in test. options.subject names the person in the file's path."""
    _ckplus48(tmp_path)
    records, drops, _ = read_all("folder", tmp_path, {"subject": r"^(S\d+)_"})
    assert not drops and {r.subject for r in records.values()} == {f"S{s + 10:03d}" for s in range(12)}
    splits: dict[str, set[str]] = {}
    for r in assign_splits(records.values(), seed=0, val_fraction=0.3, test_fraction=0.3):
        splits.setdefault(r.subject, set()).add(r.split)
    assert all(len(s) == 1 for s in splits.values()), splits
    assert {"train", "test"} <= set().union(*splits.values())


def test_folder_subject_option_named_group_unmatched_names_and_bad_patterns(tmp_path, caplog):
    _ckplus48(tmp_path)
    write_image(tmp_path / "happy" / "odd.png")
    with caplog.at_level("WARNING", "ferdata.datasets.folder"):
        records, _, _ = read_all("folder", tmp_path, {"subject": r"(?P<subject>S\d+)_(?P<seq>\d+)"})
    assert records["happy_odd-png"].subject == "" and records["happy_S010_001_00000015-png"].subject == "S010"
    assert "1 of 37 images have no person in their path" in caplog.text
    for bad in ("S\\d+", "(unclosed", 3, ""):
        with pytest.raises(ValueError, match="options.subject"):
            read_all("folder", tmp_path, {"subject": bad})


def test_a_test_split_carved_per_image_is_warned_of(tmp_path, caplog):
    """A folder without subjects carves its test split image by image: said at info level only, so a
    CK+48-style folder put one sequence's frames in train and test without a warning."""
    _ckplus48(tmp_path)
    records, _, _ = read_all("folder", tmp_path)
    with caplog.at_level("INFO", "ferdata.splits"):
        list(assign_splits(records.values(), seed=0, val_fraction=0.2, test_fraction=0.2))
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("36 records have no subject and were grouped by key: the carved test split is per image" in m
               for m in warned), caplog.text


def test_a_file_gone_after_its_folder_was_listed_is_not_called_a_link(tmp_path):
    """A class folder is listed whole before its first record goes to detection; a file deleted or moved
    meanwhile (hours, on a large folder) was dropped as "a link to nothing" (audit h141)."""
    for name in ("a.jpg", "b.jpg"):
        write_image(tmp_path / "happy" / name)
    (tmp_path / "happy" / "c.jpg").symlink_to("nowhere.jpg")
    items = open_reader("folder", tmp_path).read()
    first = next(items)
    (tmp_path / "happy" / "b.jpg").unlink()
    drops = {d.key: d.detail for d in items if not hasattr(d, "label")}
    assert first.key == "happy_a-jpg"
    assert drops["happy_b-jpg"].endswith("b.jpg: gone since its folder was listed (moved or deleted meanwhile)")
    assert drops["happy_c-jpg"].endswith("c.jpg: a link to nothing")
