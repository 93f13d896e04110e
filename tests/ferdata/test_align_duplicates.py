"""The align stage's deduplication: repeated keys, copies of one face, and copies whose labels disagree."""
from __future__ import annotations

import pytest

from ferdata.records import Dropped
from ferdata.report import StageReport
from ferdata.dedup import Deduplicator, conflicting_labels


def row(key: str, label: int, split: str, picture: str = "ab" * 32, box=(10.2, 10.0, 90.0, 90.4),
        path: str | None = None) -> dict:
    return {"record": {"dataset": "d", "key": key, "path": path or f"{key}.jpg", "label": label, "split": split},
            "face": {"box": list(box)}, "sha256": picture}


def dedup(rows: list[dict], drop_train_copies: bool = False) -> tuple[list[str], dict[str, str], StageReport]:
    report = StageReport("align")
    out = list(Deduplicator(report, conflicting_labels(rows), drop_train_copies)(rows))
    kept = [r["record"]["key"] for r in out if not isinstance(r, Dropped)]
    drops = {d.key: f"{d.reason}: {d.detail}" for d in out if isinstance(d, Dropped)}
    return kept, drops, report


def test_copies_with_other_labels_are_all_dropped_and_named_by_split_or_dataset():
    for split, where in (("train", "in split train"), ("", "in the dataset")):
        kept, drops, _ = dedup([row("a", 1, split), row("b", 2, split), row("c", 1, split, picture="cd" * 32)])
        assert kept == ["c"]
        assert drops == {k: f"conflicting_labels: {k}.jpg: copies of this picture and face {where} are labelled "
                            "Happy, Sad" for k in ("a", "b")}


def test_same_label_copies_keep_the_first_and_official_splits_keep_theirs():
    kept, drops, report = dedup([row("a", 1, "train"), row("b", 1, "train"), row("a", 1, "train"),
                                 row("t", 1, "test")])
    assert kept == ["a", "t"]
    assert drops == {"b": "duplicate_image: b.jpg: same as a", "a": "duplicate_key: a.jpg: key used before"}
    assert report.notes["duplicates"] == {"across_splits_train_test": 1}


def test_a_file_listed_again_with_another_label_is_dropped_every_time():
    rows = [row("a", 1, "train"), row("b", 2, "train", picture="cd" * 32), row("a", 3, "train")]
    out = list(Deduplicator(StageReport("align"), conflicting_labels(rows))(rows))
    assert [r["record"]["key"] for r in out if not isinstance(r, Dropped)] == ["b"]
    assert [f"{d.key} {d.reason}: {d.detail}" for d in out if isinstance(d, Dropped)] == \
        ["a conflicting_labels: a.jpg: listed more than once, labelled Happy, Surprise"] * 2


@pytest.mark.parametrize("order", [(0, 1, 2), (1, 0, 2), (2, 0, 1)])
def test_a_copy_of_a_file_listed_with_two_labels_is_dropped_in_any_order(order):
    """File a is listed as Happy and as Surprise, b holds a's bytes as Happy: the picture carries both
    labels, so no copy stays (b was kept as Happy when a's Happy listing came first)."""
    listings = [row("a", 1, "train"), row("a", 3, "train"), row("b", 1, "train")]
    kept, drops, _ = dedup([listings[i] for i in order])
    assert kept == []
    assert drops["b"] == ("conflicting_labels: b.jpg: copies of this picture and face in split train are labelled "
                          "Happy, Surprise")
    assert drops["a"].startswith("conflicting_labels: a.jpg: ")


def test_a_key_repeated_for_another_file_keeps_the_first_file():
    rows = [row("a", 1, "train"), {**row("a", 3, "train", picture="cd" * 32),
                                   "record": {**row("a", 3, "train")["record"], "path": "other/a.jpg"}}]
    kept, drops, _ = dedup(rows)
    assert kept == ["a"] and drops == {"a": "duplicate_key: other/a.jpg: key used before"}


def test_a_key_repeated_for_a_copy_with_another_label_is_no_label_conflict():
    """The repeated key is dropped as such and its label not weighed: the first file stays."""
    kept, drops, _ = dedup([row("a", 1, "train"), row("a", 3, "train", path="other/a.jpg")])
    assert kept == ["a"] and drops == {"a": "duplicate_key: other/a.jpg: key used before"}
    assert conflicting_labels([row("a", 1, "train"), row("a", 3, "train", path="other/a.jpg")]).faces == {}


def test_copies_whose_boxes_differ_below_a_pixel_are_one_face():
    kept, drops, _ = dedup([row("a", 1, "train", box=(10.2, 10.0, 90.0, 90.4)),
                            row("b", 1, "train", box=(10.4, 9.8, 90.3, 90.1))])
    assert kept == ["a"] and drops == {"b": "duplicate_image: b.jpg: same as a"}
    _, drops, _ = dedup([row("a", 1, "train", box=(10.2, 10.0, 90.0, 90.4)),
                         row("b", 2, "train", box=(10.4, 9.8, 90.3, 90.1))])
    assert set(drops) == {"a", "b"} and all(d.startswith("conflicting_labels") for d in drops.values())


def test_copies_in_other_official_splits_with_other_labels_are_kept():
    """A face seen only in another split is no conflict: official test sets stay whole."""
    kept, drops, report = dedup([row("a", 1, "train"), row("t", 2, "test")])
    assert kept == ["a", "t"] and drops == {}
    assert report.notes["duplicates"] == {"across_splits_train_test": 1}


@pytest.mark.parametrize("order", ["train_first", "test_first"])
def test_training_copies_of_held_out_faces_are_dropped_when_asked(order):
    """align.cross_split_copies: drop_train. A face in the official test (or val) split and again in
    train was trained on and tested on; the train copy goes, wherever it comes in the table, naming the
    held-out copy, and the held-out copies stay (the default keeps every copy, as the papers' splits do)."""
    rows = [row("tr", 1, "train"), row("te", 1, "test"), row("va", 1, "val", picture="cd" * 32),
            row("tr2", 1, "train", picture="cd" * 32), row("own", 1, "train", picture="ef" * 32)]
    if order == "test_first":
        rows = rows[1:3] + rows[:1] + rows[3:]
    kept, drops, report = dedup(rows, drop_train_copies=True)
    assert sorted(kept) == ["own", "te", "va"]
    assert drops == {"tr": "copy_of_held_out: tr.jpg: the same picture and face is in the test split (te)",
                     "tr2": "copy_of_held_out: tr2.jpg: the same picture and face is in the val split (va)"}
    assert "duplicates" not in report.notes                          # a dropped copy is no cross-split copy
    kept, _, report = dedup(rows)
    assert sorted(kept) == ["own", "te", "tr", "tr2", "va"]
    assert sum(report.notes["duplicates"].values()) == 2


def test_a_face_in_train_val_and_test_loses_only_its_training_copy():
    rows = [row("tr", 1, "train"), row("va", 1, "val"), row("te", 1, "test")]
    kept, drops, report = dedup(rows, drop_train_copies=True)
    assert kept == ["va", "te"] and list(drops) == ["tr"]
    assert report.notes["duplicates"] == {"across_splits_val_test": 1}


def test_an_official_test_split_keeps_every_copy_and_its_training_copy_goes_when_asked():
    """FER2013's PrivateTest holds copies of one picture, some labelled otherwise: the copies in one
    official test (or val) split were dropped (duplicate_image, conflicting_labels), so the benchmark's
    test set shrank (3589 published) with an info line only, and a training copy of a face whose test
    copies disagreed stayed under drop_train. Every held-out copy is kept now, and counted."""
    rows = [row("tr", 1, "train"), row("te1", 1, "test"), row("te2", 2, "test"),
            row("s1", 3, "test", picture="cd" * 32), row("s2", 3, "test", picture="cd" * 32),
            row("v1", 4, "val", picture="ef" * 32), row("v2", 4, "val", picture="ef" * 32)]
    kept, drops, report = dedup(rows, drop_train_copies=True)
    assert kept == ["te1", "te2", "s1", "s2", "v1", "v2"]
    assert drops == {"tr": "copy_of_held_out: tr.jpg: the same picture and face is in the test split (te1)"}
    assert report.notes["duplicates"] == {"conflicting_labels_in_test": 2, "within_test": 2, "within_val": 1}
    kept, drops, _ = dedup(rows)
    assert kept == ["tr", "te1", "te2", "s1", "s2", "v1", "v2"] and drops == {}


def test_drops_of_rows_without_a_file_name_their_key():
    """FER2013 and FERPlus rows have no file (path ""): their drop details began ": the same picture ..."."""
    rows = [row("00001", 1, "train"), row("00002", 1, "train"), row("00003", 2, "train", picture="cd" * 32),
            row("00004", 2, "test", picture="cd" * 32), row("00001", 1, "train")]
    for r in rows:
        r["record"]["path"] = ""
    _, drops, _ = dedup(rows, drop_train_copies=True)
    assert drops == {"00002": "duplicate_image: 00002: same as 00001",
                     "00003": "copy_of_held_out: 00003: the same picture and face is in the test split (00004)",
                     "00001": "duplicate_key: 00001: key used before"}
