"""Contract over every registered reader: description, options, wrong-root errors and the
options every reader shares (``exclude_classes``)."""
from __future__ import annotations

from typing import Mapping

import pytest

from ferdata.classes import CLASSES
from ferdata.datasets import READERS, DatasetLayoutError, open_reader
from ferdata.records import SPLITS, FaceRecord
from ferdata.registry import UnknownNameError
from tests.ferdata import fixtures_datasets as fx

# every reader on a fixture of its own format (builder, reader options)
FIXTURES = {
    "affectnet": (fx.make_affectnet_csv, {"protocol": "affectnet8"}),
    "ckplus": (fx.make_ckplus, {}),
    "expw": (fx.make_expw, {}),
    "fer2013": (fx.make_fer2013, {}),
    "ferplus": (fx.make_ferplus, {}),
    "folder": (fx.make_folder_splits, {"mapping": {"calm": None}}),
    "jaffe": (fx.make_jaffe, {}),
    "rafdb": (fx.make_rafdb, {}),
    "sfew": (fx.make_sfew, {}),
}

ALL = ["affectnet", "ckplus", "expw", "fer2013", "ferplus", "folder", "jaffe", "rafdb", "sfew"]


def test_all_readers_registered():
    assert READERS.names() == ALL
    with pytest.raises(UnknownNameError, match="known: affectnet, ckplus"):
        READERS.get("raf-db")


@pytest.mark.parametrize("name", ALL)
def test_reader_describes_itself(name):
    cls = READERS.get(name)
    assert cls.name == name
    assert cls.expects and "\n" not in cls.expects
    assert isinstance(cls.option_defaults, Mapping)
    assert cls.__doc__


@pytest.mark.parametrize("name", ALL)
def test_missing_root_raises_layout_error(tmp_path, name):
    with pytest.raises(DatasetLayoutError) as err:
        list(open_reader(name, tmp_path / "nope").read())
    assert "(does not exist)" in str(err.value) and "expected:" in str(err.value)
    (tmp_path / "notes.txt").write_text("a file given as the root")
    with pytest.raises(DatasetLayoutError, match=r"notes\.txt \(is a file, not a folder\)"):
        list(open_reader(name, tmp_path / "notes.txt").read())


@pytest.mark.parametrize("name", ALL)
def test_wrong_root_names_what_it_found(tmp_path, name):
    (tmp_path / "some_other_dataset.csv").write_text("a,b\n")
    with pytest.raises(DatasetLayoutError) as err:
        list(open_reader(name, tmp_path).read())
    assert "found:    some_other_dataset.csv" in str(err.value)


@pytest.mark.parametrize("name", ALL)
def test_unknown_option_rejected(tmp_path, name):
    with pytest.raises(ValueError, match="unknown option"):
        open_reader(name, tmp_path, {"no_such_option": 1})


def test_every_reader_has_a_fixture_here():
    assert sorted(FIXTURES) == ALL


@pytest.mark.parametrize("name", ALL)
def test_exclude_classes_drops_exactly_those_records(tmp_path, name):
    build, options = FIXTURES[name]
    build(tmp_path)
    full = list(open_reader(name, tmp_path, options).read())
    labels = [i.label for i in full if isinstance(i, FaceRecord)]
    assert len(set(labels)) >= 2, "the fixture needs two classes for this test"
    gone = CLASSES[labels[0]]
    kept = list(open_reader(name, tmp_path, {**options, "exclude_classes": [gone.lower()]}).read())
    assert len(kept) == len(full)                      # nothing vanishes: every record is kept or dropped
    for before, after in zip(full, kept):
        if isinstance(before, FaceRecord) and CLASSES[before.label] == gone:
            assert (after.key, after.reason, after.dataset) == (before.key, "excluded_class", name)
            assert gone in after.detail
        else:
            assert after == before and type(after) is type(before)


@pytest.mark.parametrize("order", ["kept_first", "excluded_first"])
def test_a_file_listed_with_two_labels_one_excluded_is_a_conflict_not_the_other_label(tmp_path, order):
    """Align drops a file listed with two labels (conflicting_labels); with one of the two excluded,
    that listing was gone before align and the other label was trusted."""
    fx.make_rafdb(tmp_path)
    lines = (tmp_path / "EmoLabel" / "list_patition_label.txt").read_text().splitlines()
    again = "train_00002.jpg 2"                              # Fear; listed first as 1, Surprise
    lines = [again] + lines if order == "excluded_first" else lines + [again]
    (tmp_path / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    items = [i for i in open_reader("rafdb", tmp_path, {"exclude_classes": ["Fear"]}).read()
             if i.key == "train_00002"]
    assert not any(isinstance(i, FaceRecord) for i in items)
    assert sorted(i.reason for i in items) == ["conflicting_labels", "excluded_class"]
    assert next(i.detail for i in items if i.reason == "conflicting_labels").endswith(
        "train_00002.jpg: listed as Surprise and as Fear (excluded by options.exclude_classes)")


def test_exclude_classes_logs_what_the_scan_says_once(tmp_path, caplog):
    """The first pass over a label list (for a file listed twice) logged every warning of the scan
    (a CSV without a header, a row of only commas) a second time."""
    import logging
    from collections import Counter

    fx.make_affectnet_csv(tmp_path)
    for name in ("training.csv", "validation.csv"):             # no header line; a blank spreadsheet row
        p = tmp_path / "Manually_Annotated_file_lists" / name
        p.write_text("\n".join(p.read_text().splitlines()[1:] + [",,,,"]) + "\n")
    with caplog.at_level(logging.INFO):
        list(open_reader("affectnet", tmp_path, {"protocol": "affectnet8", "exclude_classes": ["Contempt"]}).read())
    said = Counter(r.getMessage() for r in caplog.records)
    assert said and all(n == 1 for n in said.values()), said
    assert any("has no header line" in m for m in said) and any("only commas" in m for m in said)


def test_only_readers_whose_lists_may_name_a_face_twice_read_twice(tmp_path, monkeypatch):
    """FER2013's 35,887 rows took 2.4x as long with a class excluded: one key per row is never
    listed twice, so no first pass."""
    from ferdata.datasets.base import DatasetReader

    passes = []
    real = DatasetReader._excluded_listings
    monkeypatch.setattr(DatasetReader, "_excluded_listings", lambda self: passes.append(self.name) or real(self))
    for name in ALL:
        build, options = FIXTURES[name]
        build(tmp_path / name)
        list(open_reader(name, tmp_path / name, {**options, "exclude_classes": ["Contempt"]}).read())
    assert sorted(passes) == ["affectnet", "expw", "rafdb"]


@pytest.mark.parametrize("bad, message", [
    ("Contempt", "must be a list"),
    (["Smile"], "'Smile' is not a class"),
    ([3], "3 is not a class"),
    (list(CLASSES), "excludes every class"),
])
def test_exclude_classes_rejects_what_it_cannot_mean(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        open_reader("ckplus", tmp_path, {"exclude_classes": bad})


@pytest.mark.parametrize("name", ALL)
def test_subsets_only_where_lists_can_name_the_images(tmp_path, name):
    """``options.subsets`` is a common option, refused up front by readers whose images no
    published list names (instead of silently tagging nothing), and checked for its shape."""
    cls = READERS.get(name)
    if cls.subset_pattern is None:
        with pytest.raises(ValueError, match="subsets is not supported.*readers that take subsets: affectnet, "
                                             "ferplus, rafdb"):
            open_reader(name, tmp_path, {"subsets": {"occlusion": "occlusion.txt"}})
    else:
        build, options = FIXTURES[name]
        build(tmp_path)
        with pytest.raises(ValueError, match="must map subset names to list files"):
            list(open_reader(name, tmp_path, {**options, "subsets": ["occlusion.txt"]}).read())


def test_a_dataset_with_nothing_in_it_or_text_not_utf8_is_refused(tmp_path):
    """A header-only CSV or empty class folders prepared 0 samples and exited 0; a Latin-1 label
    file failed with a bare codec error naming no file."""
    from tests.ferdata.fixtures_datasets import make_fer2013, read_all

    empty = tmp_path / "empty"
    (empty / "happy").mkdir(parents=True)
    with pytest.raises(ValueError, match=f"folder: no samples found under {empty}"):
        read_all("folder", empty)
    (empty / "README.txt").write_text("only a note\n")                  # a drop is no sample
    with pytest.raises(ValueError, match=r"no samples found .*dropped: \{'outside_class_folder': 1\}"):
        read_all("folder", empty)
    csv_path = make_fer2013(tmp_path / "fer") / "fer2013.csv"
    header = csv_path.read_text().splitlines()[0]
    csv_path.write_text(header + "\n")
    with pytest.raises(ValueError, match="fer2013: no samples found"):
        read_all("fer2013", tmp_path / "fer")
    csv_path.write_bytes(header.encode() + "\n0,1 2 3,Training # caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=rf"{csv_path} is not UTF-8 \(invalid continuation byte: byte b'\\xe9'"):
        read_all("fer2013", tmp_path / "fer")


@pytest.mark.parametrize("name", ALL)
def test_official_splits_are_the_splits_a_whole_dataset_gives(tmp_path, name):
    build, options = FIXTURES[name]
    reader = open_reader(name, build(tmp_path), options)
    splits = {item.split for item in reader.read() if isinstance(item, FaceRecord)} - {""}
    official = set(reader.official_splits())
    assert splits <= official <= set(SPLITS)
    if name == "ferplus":                 # the fixture's one PublicTest row has no usable votes
        assert official - splits == {"val"}
    else:
        assert official == splits


def test_csv_lines_reads_one_row_per_line_so_a_stray_quote_spoils_only_its_own(caplog):
    """csv's reader let an unclosed quote run on through every later line (all their rows one
    cell); blank lines, spaces-and-commas lines and a trailing comma's empty cells are not data."""
    import io

    from ferdata.datasets.base import csv_lines

    text = 'a,b\r\n"x,y\nc,"d"\n  ,  \n\ne,f,,\r\n'
    assert list(csv_lines(io.StringIO(text))) == [(1, ["a", "b"]), (2, ["x,y\n"]), (3, ["c", "d"]), (6, ["e", "f"])]
    # empty cells within the width are data (AffectNet's optional valence, arousal); a header sets it
    assert list(csv_lines(io.StringIO("h1,h2,h3,\n1,,\n2,3,4,\n"))) == [(1, ["h1", "h2", "h3"]),
                                                                          (2, ["1", "", ""]), (3, ["2", "3", "4"])]
    assert list(csv_lines(io.StringIO("1,,\n"), width=3)) == [(1, ["1", "", ""])]
    assert "1 line(s) of only commas skipped (no row), e.g. line 4" in caplog.text     # the first call's


def _keys_and_paths(name: str, root, options=None) -> list[tuple[str, str, bytes | None]]:
    return [(r.key, r.path, r.pixels) for r in open_reader(name, root, options).read() if isinstance(r, FaceRecord)]


def test_files_named_alike_after_key_sanitising_keep_keys_of_their_own(tmp_path, caplog):
    """AffectNet keys are the path without its suffix: `x.jpg`/`x.png`, `a b.jpg`/`a-b.jpg` and
    `1_2/z.jpg`/`1/2_z.jpg` were two images under one key, and align dropped the second as a
    "duplicate". The first keeps the key, the other gets a hash of its path; a file listed twice
    keeps one key (align drops the repeat); keys are stable from run to run and from root to root."""
    lmk = fx.landmarks68()
    rels = ["7/x.jpg", "7/x.png", "7/a b.jpg", "7/a-b.jpg", "1_2/z.jpg", "1/2_z.jpg"]
    for i, rel in enumerate(rels):
        fx.write_image(tmp_path / "a" / "Manually_Annotated_Images" / rel, value=20 * i)
    rows = [fx._affectnet_row(rel, 1, lmk) for rel in rels] + [fx._affectnet_row("7/x.jpg", 1, lmk)]
    lists = tmp_path / "a" / "Manually_Annotated_file_lists"
    fx.write_text(lists / "training.csv", "\n".join([fx.AFFECTNET_HEADER, *rows]) + "\n")
    val = fx._affectnet_row("7/x.jpg", 2, lmk)
    fx.write_text(lists / "validation.csv", "\n".join([fx.AFFECTNET_HEADER, val]) + "\n")
    with caplog.at_level("WARNING"):
        got = _keys_and_paths("affectnet", tmp_path / "a")
    by_file = {}
    for key, path, _ in got:
        by_file.setdefault(path.split("Manually_Annotated_Images/")[1], set()).add(key)
    train = {rel: {k for k in keys if k.startswith("train")} for rel, keys in by_file.items()}
    assert all(len(keys) == 1 for keys in train.values())                   # listed twice: one key
    assert len({next(iter(k)) for k in train.values()}) == len(rels)          # six files, six keys
    assert train["7/x.jpg"] == {"train_7_x"} and next(iter(train["7/x.png"])).startswith("train_7_x-")
    assert "3 record(s) named alike" in caplog.text
    (tmp_path / "a").rename(tmp_path / "b")
    assert [k for k, _, _ in _keys_and_paths("affectnet", tmp_path / "b")] == [k for k, _, _ in got]


def test_rows_of_one_image_name_with_other_pixels_keep_keys_of_their_own(tmp_path):
    """FERPlus names an image per row; a repeated name over other pixels is another image (align
    took the rows for one file listed twice and dropped both as conflicting); the same pixels
    under the same name keep one key."""
    root = fx.make_ferplus(tmp_path)
    plus = (root / "fer2013new.csv").read_text().replace("fer0000006.png", "fer0000003.png")
    (root / "fer2013new.csv").write_text(plus)
    got = _keys_and_paths("ferplus", root)
    keys = [k for k, _, _ in got]
    assert len(keys) == len(set(keys)) == 3
    three = [(k, pixels) for k, _, pixels in got if k.startswith("fer0000003")]
    assert len(three) == 2 and three[0][1] != three[1][1] and three[0][0] == "fer0000003"
    fer = (root / "fer2013.csv").read_text().splitlines()
    emotion, _, usage = fer[7].split(",")
    fer[7] = ",".join([emotion, fer[4].split(",")[1], usage])           # row 6 now has row 3's pixels too
    (root / "fer2013.csv").write_text("\n".join(fer) + "\n")
    assert [k for k, _, _ in _keys_and_paths("ferplus", root)].count("fer0000003") == 2


def test_an_absolute_dataset_root_is_warned_about_a_relative_one_is_not(caplog):
    """The shards record each image's source path: an absolute root makes machines that mount the
    data elsewhere write other shards (README and docs/sharing.md said so; the run said nothing)."""
    from ferdata.datasets import DatasetSpec, warn_absolute_root

    with caplog.at_level("WARNING"):
        warn_absolute_root("rafdb", DatasetSpec("rafdb", "raw/RAF-DB", {}))
        assert not caplog.text
        warn_absolute_root("rafdb", DatasetSpec("rafdb", "/mnt/data/RAF-DB", {}))
    assert "dataset rafdb's root /mnt/data/RAF-DB is absolute" in caplog.text and "raw/rafdb ->" in caplog.text


def test_prepare_warns_of_an_absolute_root_too(tmp_path, caplog):
    """Only the detect stage script warned: `ferdata prepare rafdb --root /abs/RAF-DB` wrote other
    shards than `--root raw/RAF-DB` and said nothing."""
    from ferdata.datasets import DatasetLayoutError
    from ferdata.params import load_params
    from ferdata.prepare import prepare
    from tests.fermodels.helpers import REPO

    with caplog.at_level("WARNING"), pytest.raises(DatasetLayoutError):
        prepare("rafdb", load_params(REPO / "params.yaml"), tmp_path / "data", root=tmp_path / "RAF-DB")
    assert f"dataset rafdb's root {tmp_path / 'RAF-DB'} is absolute" in caplog.text


def test_a_record_given_its_own_key_keeps_its_subset_membership(tmp_path):
    """Subset lists name images as the dataset does (FERPlus's name): a record whose key was
    changed for a collision lost its tag (and the "not kept" warning blamed the other)."""
    root = fx.make_ferplus(tmp_path)
    plus = (root / "fer2013new.csv").read_text().replace("fer0000006.png", "fer0000003.png")
    (root / "fer2013new.csv").write_text(plus)
    (root / "hard.txt").write_text("fer0000003\n")
    read = open_reader("ferplus", root, {"subsets": {"hard": "hard.txt"}}).read()
    tagged = {r.key: tuple(r.extra.get("subsets", ())) for r in read if isinstance(r, FaceRecord)}
    assert [k for k, tags in tagged.items() if tags == ("hard",)] == ["fer0000003", "fer0000003-05e57f77"]


def test_a_file_listed_with_two_excluded_labels_is_excluded_twice_not_a_conflict(tmp_path):
    """Both listings are of excluded classes: each is excluded_class (conflicting_labels is for a
    kept listing whose other listing was excluded); a kept third listing names the first excluded label."""
    fx.make_rafdb(tmp_path)
    label_file = tmp_path / "EmoLabel" / "list_patition_label.txt"
    lines = label_file.read_text().splitlines()
    lines = ["train_00001.jpg 2", "train_00001.jpg 3"] + lines       # Fear, Disgust; the file's own line: 5 Sad
    label_file.write_text("\n".join(lines) + "\n")
    items = [i for i in open_reader("rafdb", tmp_path, {"exclude_classes": ["Fear", "Disgust"]}).read()
             if i.key == "train_00001"]
    assert sorted(i.reason for i in items) == ["conflicting_labels", "excluded_class", "excluded_class"]
    assert next(i.detail for i in items if i.reason == "conflicting_labels").endswith(
        "train_00001.jpg: listed as Sad and as Fear (excluded by options.exclude_classes)")


def test_a_file_given_its_own_key_and_listed_with_an_excluded_label_is_a_conflict(tmp_path):
    """The first pass knows the listing by the key the scan gave it; the lookup must use that key,
    not the one the file got to stay distinct (``x.png`` after ``x.jpg``: ``train_7_x-<hash>``)."""
    lmk = fx.landmarks68()
    for i, rel in enumerate(["7/x.jpg", "7/x.png"]):
        fx.write_image(tmp_path / "Manually_Annotated_Images" / rel, value=20 * i)
    rows = [fx._affectnet_row("7/x.jpg", 1, lmk), fx._affectnet_row("7/x.png", 1, lmk),
            fx._affectnet_row("7/x.png", 4, lmk)]                        # x.png: Happy and Fear (excluded)
    lists = tmp_path / "Manually_Annotated_file_lists"
    fx.write_text(lists / "training.csv", "\n".join([fx.AFFECTNET_HEADER, *rows]) + "\n")
    fx.write_text(lists / "validation.csv",
                  "\n".join([fx.AFFECTNET_HEADER, fx._affectnet_row("7/x.jpg", 2, lmk)]) + "\n")
    items = list(open_reader("affectnet", tmp_path, {"exclude_classes": ["Fear"]}).read())
    kept = {i.path.split("Manually_Annotated_Images/")[1] for i in items if isinstance(i, FaceRecord)
            and i.split == "train"}
    assert kept == {"7/x.jpg"}
    conflict = [i for i in items if getattr(i, "reason", "") == "conflicting_labels"]
    assert len(conflict) == 1 and conflict[0].key.startswith("train_7_x-")


def test_nothing_excluded_reads_the_dataset_once(tmp_path, monkeypatch):
    """The first pass over the scan is made only when classes are excluded (it costs a whole scan)."""
    fx.make_rafdb(tmp_path)
    reader = open_reader("rafdb", tmp_path, {})
    scans = []
    real = type(reader).scan
    monkeypatch.setattr(type(reader), "scan", lambda self: scans.append(1) or real(self))
    list(reader.read())
    assert len(scans) == 1
    list(open_reader("rafdb", tmp_path, {"exclude_classes": ["Fear"]}).read())
    assert len(scans) == 3


def test_a_scan_not_utf8_is_named_when_classes_are_excluded_too(tmp_path, monkeypatch):
    """The first pass (exclude_classes) meets a decode error first: it is named as the second pass
    names it (one line naming the root), not a bare codec error."""
    fx.make_rafdb(tmp_path)
    reader = open_reader("rafdb", tmp_path, {"exclude_classes": ["Fear"]})

    def scan(self):
        yield from ()
        raise UnicodeDecodeError("utf-8", b"caf\xe9", 3, 4, "invalid continuation byte")

    monkeypatch.setattr(type(reader), "scan", scan)
    with pytest.raises(ValueError, match=r"rafdb: a text file under .* is not UTF-8"):
        list(reader.read())
