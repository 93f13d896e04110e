"""The shard writer: byte-for-byte what ``tarfile`` writes (so any tar tool and webdataset read
it), deterministic, and read back safely by ``iter_tar_samples``."""
from __future__ import annotations

import io
import itertools
import tarfile
from pathlib import PurePosixPath

import numpy as np
import pytest

from ferdata.tario import TarShardWriter, iter_dir_samples, iter_tar_samples, member_header, split_member

NAMES = ["a.jpg", "x" * 98 + ".j", "x" * 99 + ".j", "dir/sub/key.lmk.npy", "k\u00e9y.json", "k" * 150 + ".json"]


def tarfile_archive(samples: list[tuple[str, dict[str, bytes]]]) -> bytes:
    """The reference: the same members written by the standard library's tarfile, GNU format."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for key, fields in samples:
            for ext in sorted(fields):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode, info.uid, info.gid = len(fields[ext]), 0, 0o444, 0, 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(fields[ext]))
    return buf.getvalue()


def random_samples(n: int, seed: int = 0) -> list[tuple[str, dict[str, bytes]]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        key = NAMES[i % len(NAMES)].split(".")[0] + f"_{i}"
        sizes = rng.choice([0, 1, 511, 512, 513, 5000], size=3)
        out.append((key, {ext: rng.bytes(int(s)) for ext, s in zip(("jpg", "json", "lmk.npy"), sizes)}))
    return out


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [0, 1, 512, 10 ** 6])
def test_member_header_matches_tarfile(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o444, 0, 0, "", ""
    assert member_header(name, size) == info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


@pytest.mark.parametrize("n", [1, 7, 40])
def test_shard_bytes_equal_tarfile_output(tmp_path, n):
    samples = random_samples(n)
    with TarShardWriter(tmp_path, "s", maxcount=1000) as w:
        for key, fields in samples:
            w.write(key, fields)
    written = (tmp_path / "s-000000.tar").read_bytes()
    assert written == tarfile_archive(samples)
    assert len(written) % tarfile.RECORDSIZE == 0


def test_roll_over_and_read_back(tmp_path):
    samples = random_samples(25, seed=3)
    with TarShardWriter(tmp_path, "s", maxcount=10) as w:
        for key, fields in samples:
            w.write(key, fields)
    assert [f.count for f in w.files] == [10, 10, 5]
    assert list(iter_dir_samples(tmp_path, "s")) == samples
    with tarfile.open(w.files[0].path) as tar:                 # any tar reader sees the same members
        assert [m.name for m in tar][:3] == [f"{samples[0][0]}.{e}" for e in sorted(samples[0][1])]
    first = iter_tar_samples(io.BytesIO(w.files[2].path.read_bytes()))
    assert list(first) == samples[20:]


def test_split_member_is_the_pathlib_rule_on_every_short_path():
    """The fast string split agrees with the pathlib definition on all paths over {a, b, ., /}."""
    def by_pathlib(name: str) -> tuple[str, str]:
        p = PurePosixPath(name)
        base, _, ext = p.name.partition(".")
        return (str(p.parent / base) if str(p.parent) != "." else base), ext.lower()

    names = ["".join(t) for n in range(1, 7) for t in itertools.product("ab./", repeat=n)]
    assert [split_member(n) for n in names if not n.startswith("/")] == \
        [by_pathlib(n) for n in names if not n.startswith("/")]
    assert split_member("dir/Key.LMK.npy") == ("dir/Key", "lmk.npy")
