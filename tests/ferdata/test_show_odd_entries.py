"""`ferdata show` over a folder holding entries named ``*.tar`` that are no tar files (audit h134)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ferdata.io import encode_jpeg
from ferdata.show import show
from ferdata.tario import TarShardWriter


def _shards(root: Path) -> Path:
    with TarShardWriter(root / "train", "train", 10) as w:
        for i in range(3):
            w.write(f"s{i}", {"jpg": encode_jpeg(np.full((112, 112, 3), 60 * i, np.uint8), 95), "cls": b"1",
                              "json": json.dumps({"backend": "embedded", "label": 1}).encode()})
    return root


def test_entries_named_tar_that_are_no_files_are_skipped_or_named(tmp_path):
    """A folder named ``*.tar`` (a shard unpacked beside it) was opened as a tar: "X is a folder, but a
    file must be written there: choose a file name", of a command that writes nothing there; a
    dangling link (a DVC cache link whose file is gone) gave a bare "[Errno 2]", and a FIFO hung."""
    shards = _shards(tmp_path / "shards")
    (shards / "train" / "unpacked.tar").mkdir()
    assert show(shards, tmp_path / "s.png", 3).is_file()
    (shards / "train" / "gone.tar").symlink_to(tmp_path / "nowhere.tar")
    with pytest.raises(ValueError, match=r"gone\.tar: not a regular file \(a dangling link, a pipe or a device\)"):
        show(shards, tmp_path / "s.png", 3)


def test_a_dangling_aligned_chunk_beside_the_shards_leaves_their_sheet_alone(tmp_path):
    """The shards are shown, not the aligned chunks beside them: an aligned chunk's link whose cache file is gone
    (a large intermediate removed to free the disk) stopped the shards' sheet, where it was drawn before."""
    _shards(tmp_path / "data" / "shards")
    (tmp_path / "data" / "aligned").mkdir()
    (tmp_path / "data" / "aligned" / "aligned-000000.tar").symlink_to(tmp_path / "nowhere.tar")
    assert show(tmp_path / "data", tmp_path / "s.png", 3).is_file()
