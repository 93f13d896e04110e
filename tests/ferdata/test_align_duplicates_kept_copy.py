"""Which training copy of one picture and face stays must not follow the rows' order: the kept key decides the
carved split (by key or subject) and the shard bytes. An audit: 40 pictures twice in train, val carved by key,
the same records in three orders gave train/val 33/7, 32/8 and 31/9."""
from __future__ import annotations

import itertools

from tests.ferdata.test_align_duplicates import dedup, row


def test_the_copy_kept_in_a_training_split_is_the_same_in_any_row_order():
    rows = [row("b", 1, "train"), row("c", 1, "train"), row("a", 1, "train"), row("t", 1, "test"),
            row("z", 2, "", picture="cd" * 32), row("y", 2, "", picture="cd" * 32)]
    results = set()
    for order in itertools.permutations(rows):
        kept, drops, report = dedup(list(order))
        results.add((tuple(sorted(kept)), tuple(sorted(drops.items())),
                     tuple(sorted(report.notes["duplicates"].items()))))
    assert results == {(("a", "t", "y"),
                        (("b", "duplicate_image: b.jpg: same as a"), ("c", "duplicate_image: c.jpg: same as a"),
                         ("z", "duplicate_image: z.jpg: same as y")),
                        (("across_splits_train_test", 1),))}


def test_a_face_only_a_repeated_listing_names_keeps_its_other_copy():
    """A file listed twice under one key (an AffectNet CSV row per face: two faces of one image) whose second
    listing is a face copied under another key: that listing is dropped (duplicate_key), so its key must not be
    the copy kept, or the face loses every copy (the first row's rule kept "m")."""
    other = (200.0, 10.0, 290.0, 90.0)
    rows = [row("b", 1, "train", path="x.jpg"), row("b", 1, "train", box=other, path="x.jpg"),
            row("m", 1, "train", box=other, path="y.jpg")]
    for order in itertools.permutations(rows):
        kept, drops, _ = dedup(list(order))
        first_b = next(r for r in order if r["record"]["key"] == "b")
        # b's first listing keeps its face (the other listing: duplicate_key); the face copied as m keeps a copy
        assert sorted(kept) == (["b"] if first_b["face"]["box"] == list(other) else ["b", "m"]), drops


def test_the_copy_kept_is_the_smallest_key_not_dropped_for_its_listings_in_any_row_order():
    """Three copies of one face whose smallest key is also listed for another face with another label (dropped:
    conflicting_labels, every listing): the smallest of the others stays, whatever the rows' order (the first
    row of b and c stayed: the carved split followed the table's order)."""
    other = (200.0, 10.0, 290.0, 90.0)
    rows = [row("a", 1, "train"), row("a", 2, "train", box=other), row("b", 1, "train"), row("c", 1, "train")]
    results = set()
    for order in itertools.permutations(rows):
        if [r["record"]["label"] for r in order if r["record"]["key"] == "a"] == [1, 2]:    # a's listings in order
            kept, drops, _ = dedup(list(order))
            results.add((tuple(sorted(kept)), tuple(sorted(drops.items()))))
    assert results == {(("b",), (("a", "conflicting_labels: a.jpg: listed more than once, labelled Happy, Sad"),
                                 ("c", "duplicate_image: c.jpg: same as b")))}, results
