"""`ferdata show` reads only the tars its sheet needs, one at a time (it opened every tar of a dataset
at once, each read whole into memory: 1.75 GB peak for a 2-sample sheet of a 1.66 GB shards folder),
and keeps the round-robin order over the tars."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

import ferdata.show as show_mod
from ferdata.io import encode_jpeg
from ferdata.tario import TarShardWriter


def _shards(root, sizes):
    """One split folder, a tar per entry of ``sizes`` holding that many samples (0: an empty tar)."""
    face = encode_jpeg(np.full((112, 112, 3), 128, np.uint8), 90)
    for t, size in enumerate(sizes):
        with TarShardWriter(root / "train", f"t{t:02d}", 1000) as w:
            for i in range(size):
                w.write(f"t{t}_{i}", {"jpg": face, "json": json.dumps({"backend": "x"}).encode()})
        if size == 0:                                   # the writer makes no file for no samples
            (root / "train").mkdir(parents=True, exist_ok=True)
            (root / "train" / f"t{t:02d}-000000.tar").write_bytes(b"\0" * 1024)


def _old_order(root):
    return [k for group in itertools.zip_longest(*map(show_mod._tar_samples, show_mod._tars(root)))
            for _, k, _ in (s for s in group if s is not None)]


def test_show_opens_one_tar_at_a_time_and_only_those_it_needs(tmp_path, monkeypatch):
    _shards(tmp_path, [5] * 6)
    real = show_mod._tar_samples
    opened, live, most = [], [0], [0]

    def tracked(tar):
        opened.append(tar.name)
        live[0] += 1
        most[0] = max(most[0], live[0])
        try:
            yield from real(tar)
        finally:
            live[0] -= 1

    monkeypatch.setattr(show_mod, "_tar_samples", tracked)
    show_mod.show(tmp_path, tmp_path / "sheet.png", 2)
    assert most[0] == 1, f"{most[0]} tars held open (each read whole into memory) for a 2-sample sheet"
    assert opened == ["t00-000000.tar", "t01-000000.tar"]


@pytest.mark.parametrize("sizes", [[5] * 6, [0, 0, 3, 1, 7], [1, 4, 0, 2], [9], [2, 2]])
@pytest.mark.parametrize("limit", [1, 2, 3, 5, 8, 13, 40])
def test_show_keeps_the_round_robin_order(tmp_path, sizes, limit):
    _shards(tmp_path, sizes)
    assert [k for _, k, _ in show_mod._samples(tmp_path, limit)] == _old_order(tmp_path)[:limit]
