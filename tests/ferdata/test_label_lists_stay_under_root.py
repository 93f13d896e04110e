"""A label list names images inside its dataset: a name that is absolute or climbs out with ``..``
is dropped (``malformed_row``), never read. Else a label file made by someone else (RAF-DB's
list_patition_label.txt, ExpW's label.lst, FERPlus's label.csv) put any picture on the machine, a
private photo, into the shards that are then shared (``dvc push``), as AffectNet's reader already refuses."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.ferdata.fixtures_datasets import make_expw, make_ferplus_folders, make_rafdb, read_all, write_image


@pytest.fixture(params=["home", "my home"])
def private(tmp_path, request) -> Path:
    """The private photo, also in a folder whose name has a space (so is $TMPDIR's on some machines)."""
    return write_image(tmp_path / request.param / "train_private.jpg", size=(200, 400))


def _escapes(records) -> list[str]:
    return [r.path for r in records.values() if "private" in r.path]


LISTS = {   # reader: (fixture maker, its label list, the line naming an image, "{name}" for the image's name)
    "rafdb": (make_rafdb, "EmoLabel/list_patition_label.txt", "{name} 3\n"),
    "expw": (make_expw, "label/label.lst", "{name} 0 5 5 100 100 50.0 3\n"),
    "ferplus": (make_ferplus_folders, "FER2013Train/label.csv", "{name},0,10,0,0,0,0,0,0,0,0\n"),
}


@pytest.mark.parametrize("how", ["relative", "absolute"])
@pytest.mark.parametrize("reader", sorted(LISTS))
def test_a_label_list_cannot_read_an_image_outside_its_dataset(tmp_path, private, reader, how):
    make, listed, line = LISTS[reader]
    root = make(tmp_path / reader)
    name = f"../../../{private.parent.name}/train_private.jpg" if how == "relative" else str(private)
    labels = root / listed
    labels.write_text(labels.read_text() + line.format(name=name))
    records, reasons, drops = read_all(reader, root)
    assert not _escapes(records)
    if reader != "ferplus" and " " in name:    # a whitespace-separated list cannot name it: a row of more fields
        row = len(labels.read_text().splitlines())
        assert any(d.reason == "malformed_row" and d.detail.startswith(f"{Path(listed).name}:{row}: ")
                   for d in drops), drops
    else:
        assert any("leads out" in d.detail for d in drops if d.reason == "malformed_row")
