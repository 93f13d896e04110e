"""An ``_info.json`` or a sample ``json`` nested deeper than Python's JSON decoder recurses (a crafted
or garbled file, audit h134): `ferdata verify` and `ferdata show` name the file, as for any JSON that
does not parse, where both ended on a ``RecursionError`` traceback."""
from __future__ import annotations

import json
import shutil

import pytest

from ferdata.layout import INFO
from ferdata.show import show
from ferdata.tario import TarShardWriter, iter_tar_samples, sha256_file
from ferdata.verify import verify_shards

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture
def shards(tiny_shards, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(tiny_shards, copy)
    return copy


def test_a_deep_info_file_is_a_problem_line_and_a_show_error(shards, tmp_path):
    (shards / "val" / INFO).write_text(DEEP)
    problems = verify_shards(shards)
    assert [p for p in problems if p.startswith(f"{shards / 'val' / INFO}: unreadable (RecursionError")], problems
    with pytest.raises(ValueError, match=rf"{shards / 'val' / INFO}: unreadable \(RecursionError"):
        show(shards / "val", tmp_path / "s.png", 1)


def test_a_deep_sample_json_is_a_problem_line_and_a_show_error(shards, tmp_path):
    info_path = shards / "train" / INFO
    info = json.loads(info_path.read_text())
    shard = shards / "train" / info["shards"][0]["name"]
    samples = list(iter_tar_samples(shard))
    samples[0][1]["json"] = DEEP.encode()
    shard.unlink()
    with TarShardWriter(shard.parent, "rewritten", maxcount=len(samples)) as w:
        for key, fields in samples:
            w.write(key, fields)
    (shard.parent / "rewritten-000000.tar").rename(shard)
    info["shards"][0].update(sha256=sha256_file(shard), bytes=shard.stat().st_size)
    info_path.write_text(json.dumps(info))
    key = samples[0][0]
    problems = verify_shards(shards)
    assert [p for p in problems if p.startswith(f"{shard}: sample {key!r} has a json that does not parse")], problems
    with pytest.raises(ValueError, match=rf"sample {key!r} cannot be shown \(RecursionError"):
        show(shard, tmp_path / "s.png", 1)
