"""Duplicates in a detect table (ferdata.dedup): a key used twice, copies of one picture whose boxes
differ below a pixel, and labels that conflict only between different faces."""
from __future__ import annotations

from ferdata.dedup import Deduplicator, conflicting_labels
from ferdata.records import Dropped
from ferdata.report import StageReport


def row(key: str, label: int, split: str, picture: str = "ab" * 32, box=(10.2, 10.0, 90.0, 90.4), path=None) -> dict:
    return {"record": {"dataset": "d", "key": key, "path": path or f"{key}.jpg", "label": label, "split": split},
            "face": {"box": list(box)}, "sha256": picture}


def dedup(rows: list[dict]) -> tuple[list[str], dict[str, str], StageReport]:
    report = StageReport("align")
    out = list(Deduplicator(report, conflicting_labels(rows))(rows))
    kept = [r["record"]["key"] for r in out if not isinstance(r, Dropped)]
    drops = {d.key: f"{d.reason}: {d.detail}" for d in out if isinstance(d, Dropped)}
    return kept, drops, report


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
