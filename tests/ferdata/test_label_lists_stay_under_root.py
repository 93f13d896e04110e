"""A label list names images inside its dataset: a name that is absolute or climbs out with ``..``
is dropped (``malformed_row``), never read. Else a label file made by someone else (RAF-DB's
list_patition_label.txt, ExpW's label.lst, FERPlus's label.csv) put any picture on the machine, a
private photo, into the shards that are then shared (``dvc push``), as AffectNet's reader already refuses."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.ferdata.fixtures_datasets import make_expw, make_ferplus_folders, make_rafdb, read_all, write_image


@pytest.fixture
def private(tmp_path) -> Path:
    return write_image(tmp_path / "home" / "train_private.jpg", size=(200, 400))


def _escapes(records) -> list[str]:
    return [r.path for r in records.values() if "private" in r.path]


@pytest.mark.parametrize("how", ["relative", "absolute"])
def test_rafdb(tmp_path, private, how):
    root = make_rafdb(tmp_path / "RAF")
    name = "../../../home/train_private.jpg" if how == "relative" else str(private)
    labels = root / "EmoLabel" / "list_patition_label.txt"
    labels.write_text(labels.read_text() + f"{name} 3\n")
    records, reasons, drops = read_all("rafdb", root)
    assert not _escapes(records)
    assert any("leads out" in d.detail for d in drops if d.reason == "malformed_row")


@pytest.mark.parametrize("how", ["relative", "absolute"])
def test_expw(tmp_path, private, how):
    root = make_expw(tmp_path / "ExpW")
    name = "../../../home/train_private.jpg" if how == "relative" else str(private)
    labels = root / "label" / "label.lst"
    labels.write_text(labels.read_text() + f"{name} 0 5 5 100 100 50.0 3\n")
    records, reasons, drops = read_all("expw", root)
    assert not _escapes(records)
    assert any("leads out" in d.detail for d in drops if d.reason == "malformed_row")


def test_ferplus_folders(tmp_path, private):
    root = make_ferplus_folders(tmp_path / "FERPlus")
    labels = root / "FER2013Train" / "label.csv"
    labels.write_text(labels.read_text() + f"{private},0,10,0,0,0,0,0,0,0,0\n")
    records, reasons, drops = read_all("ferplus", root)
    assert not _escapes(records)
