"""Names in composed (NFC) and decomposed (NFD, as macOS writes them) form (audit h64)."""
from __future__ import annotations

import unicodedata
from pathlib import Path

from ferdata.datasets.base import open_reader
from ferdata.records import make_key
from ferdata.splits import assign_splits, unit_hash

NAMES = [f"{w}_{i:02d}.jpg" for w in ("café", "señora", "Zoë", "Ångström") for i in range(10)]


def test_a_name_in_either_normal_form_is_one_key():
    for name in NAMES:
        assert make_key("Happy", unicodedata.normalize("NFD", name)) == make_key("Happy", name)
    assert unit_hash(0, unicodedata.normalize("NFD", "Amélie")) == unit_hash(0, "Amélie")


def test_a_macs_copy_of_a_folder_dataset_is_split_as_the_dataset_is(tmp_path):
    """The same images under decomposed names (a copy made on a Mac, or unzipped from its archive)
    got other keys and so other splits: 21 of these 40 faces moved between train, val and test, so a
    model trained on one machine's shards was tested on its own training faces on the other's."""
    splits = {}
    for form in ("NFC", "NFD"):
        folder = tmp_path / form / "Happy"
        folder.mkdir(parents=True)
        for name in NAMES:
            (folder / unicodedata.normalize(form, name)).write_bytes(b"")
        records = list(open_reader("folder", tmp_path / form).read())
        got = assign_splits(records, seed=0, val_fraction=0.1, test_fraction=0.2, by="subject")
        splits[form] = {unicodedata.normalize("NFC", Path(r.path).name): (r.key, r.split) for r in got}
    assert splits["NFD"] == splits["NFC"]


def test_both_forms_side_by_side_stay_two_records(tmp_path):
    """Linux keeps ``café.jpg`` in both forms as two files: both are read, each under its own key."""
    folder = tmp_path / "Happy"
    folder.mkdir()
    for form in ("NFC", "NFD"):
        (folder / unicodedata.normalize(form, "café.jpg")).write_bytes(b"")
    keys = [r.key for r in open_reader("folder", tmp_path).read()]
    assert len(keys) == len(set(keys)) == 2
