"""FER2013's CSV holds train/test copies of one picture in either row order: the align report counted them under
two names (across_splits_train_test 3, across_splits_test_train 2), which read as two kinds of copy."""
from __future__ import annotations

import itertools

from tests.ferdata.test_align_duplicates import dedup, row


def test_copies_across_two_splits_are_counted_under_one_name_whatever_the_row_order():
    rows = [row("a", 1, "train"), row("t", 1, "test"), row("u", 1, "test", picture="cd" * 32),
            row("b", 1, "train", picture="cd" * 32), row("v", 1, "val", picture="ef" * 32),
            row("c", 1, "train", picture="ef" * 32)]
    _, _, report = dedup(rows)
    assert report.notes["duplicates"] == {"across_splits_train_test": 2, "across_splits_train_val": 1}


def test_a_face_in_three_splits_is_counted_alike_in_any_row_order():
    for order in itertools.permutations(("train", "val", "test")):
        _, _, report = dedup([row(f"k{i}", 1, split) for i, split in enumerate(order)])
        assert report.notes["duplicates"] == {"across_splits_train_val": 1, "across_splits_train_test": 1,
                                              "across_splits_val_test": 1}, order


def test_a_training_face_also_in_val_and_test_is_one_training_face_told():
    """align's warning counts training faces that are the same file as a val/test face: one in both val and test
    (FER2013's three splits share copies) is one face, named with both copies (it was counted twice)."""
    from ferdata.dedup import Deduplicator, conflicting_labels
    from ferdata.report import StageReport
    for rows in ([row("v", 1, "val"), row("t", 1, "test"), row("a", 1, "train")],
                 [row("a", 1, "train"), row("v", 1, "val"), row("t", 1, "test")]):
        dedup_ = Deduplicator(StageReport("align"), conflicting_labels(rows))
        list(dedup_(rows))
        assert {k: sorted(v) for k, v in dedup_.trained_held.items()} == {"train/a": ["test/t", "val/v"]}
