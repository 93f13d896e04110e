"""A class folder named in decomposed form (NFD: a Mac's copy, or its zip) and a mapping typed in
composed form (NFC: params.yaml, a shell) name one folder (audit h107)."""
from __future__ import annotations

import unicodedata

import pytest

from ferdata.classes import resolve_names
from ferdata.datasets.base import open_reader

NAME = "Überrascht"


@pytest.mark.parametrize("folder_form, mapping_form", [("NFD", "NFC"), ("NFC", "NFD")])
def test_a_mapping_matches_its_folder_in_either_normal_form(folder_form, mapping_form):
    """Refused before: "mapping names ['überrascht'] match no class folder; present: ['Überrascht']"."""
    folder = unicodedata.normalize(folder_form, NAME)
    ids = resolve_names([folder, "Happy"], {unicodedata.normalize(mapping_form, NAME): "Surprise"})
    assert ids == {folder: 3, "Happy": 1}


def test_a_macs_copy_of_a_folder_dataset_reads_with_the_mapping_typed_here(tmp_path):
    (tmp_path / unicodedata.normalize("NFD", NAME)).mkdir()
    (tmp_path / unicodedata.normalize("NFD", NAME) / "a.jpg").write_bytes(b"")
    records = list(open_reader("folder", tmp_path, {"mapping": {NAME: "Surprise"}}).read())
    assert [r.label for r in records] == [3]
