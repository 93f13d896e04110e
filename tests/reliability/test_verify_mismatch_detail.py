"""`ferdata verify` on a shard whose sha256 differs says what a look inside finds (audit h134): the
mismatch alone named no sample, nor said whether the file was cut short."""
from __future__ import annotations

import io
import json
import shutil
import tarfile

from ferdata.layout import INFO
from ferdata.verify import verify_shards


def _copy(tiny_shards, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards)
    info = json.loads((shards / "train" / INFO).read_text())
    return shards, shards / "train" / info["shards"][0]["name"], info["shards"][0]


def test_a_shard_cut_short_says_its_size_and_that_it_is_no_whole_tar(tiny_shards, tmp_path):
    shards, shard, listed = _copy(tiny_shards, tmp_path)
    shard.write_bytes(shard.read_bytes()[:listed["bytes"] // 2])
    problems = [p for p in verify_shards(shards) if p.startswith(f"{shard}: sha256 mismatch")]
    assert len(problems) == 1, problems
    assert f"; {listed['bytes'] // 2} bytes, {INFO} says {listed['bytes']}; refused: not a readable tar (" \
        in problems[0], problems
    assert "ferdata verify" not in problems[0], problems       # verify's line sent the user to verify


def test_a_member_taken_out_of_a_shard_is_named_with_its_sample(tiny_shards, tmp_path):
    shards, shard, _ = _copy(tiny_shards, tmp_path)
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    gone = next(m.name for m, _ in members if m.name.endswith(".cls"))
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        for m, data in members:
            if m.name != gone:
                tar.addfile(m, io.BytesIO(data))
    problems = [p for p in verify_shards(shards) if p.startswith(f"{shard}: sha256 mismatch")]
    assert len(problems) == 1 and f"; sample {gone.partition('.')[0]!r} has no cls" in problems[0], problems
