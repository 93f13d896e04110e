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
