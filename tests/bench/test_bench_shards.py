"""The shard size benchmark runs end to end (``--quick``, in-process) and its accounting holds.

The shards it built are read again here with ``tarfile`` (not the benchmark's own reader), so
a field missing from the table, a per-field sum that does not add up to the files' bytes, or a
quality sweep that is not ordered fails. Nothing about time is asserted.
"""
from __future__ import annotations

import contextlib
import io
import math
import tarfile
from pathlib import Path

import pytest

from tests.bench.helpers import load_bench


def read_tars(folder: Path) -> tuple[set[str], set[str], int]:
    """(fields, sample keys, total file bytes) of every shard tar under ``folder``."""
    fields, keys, total = set(), set(), 0
    tars = sorted(folder.glob("*/*.tar"))
    assert tars, f"no shard tars under {folder}"
    for path in tars:
        with tarfile.open(path) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                keys.add(key)
                fields.add(ext)
        total += path.stat().st_size
    return fields, keys, total


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One quick run shared by the tests: (module, results, printed output, work folder)."""
    work = tmp_path_factory.mktemp("bench_shards")
    bench, out = load_bench("bench_shards"), io.StringIO()
    with contextlib.redirect_stdout(out):
        results = bench.main(["--quick", "--work", str(work)])
    return bench, results, out.getvalue(), work


def test_a_quick_run_says_its_choices_judge_nothing(run):
    """--quick drew "params.yaml's q95 is the knee" from 8 images with no n/a, unlike the other benchmarks."""
    _, _, out, _ = run
    assert "): n/a (--quick: computed on a few images, judging nothing)" in out


def test_ratios_are_printed_last(run):
    _, results, out, _ = run
    tail = out[out.rindex("\nratios\n"):]
    for line in ("crop bytes JPEG q90 / q95", "heatmap bytes PNG / float32 npy", "tar overhead / shard bytes"):
        assert line in tail
    assert len(tail.strip().splitlines()) == 1 + len(results["ratios"])
    assert all(v > 0 and math.isfinite(v) for v in results["ratios"].values())


def test_every_shard_field_is_in_the_table_and_adds_up(run):
    bench, results, out, work = run
    assert set(results["shards"]) == {results["size"], 224}
    for size, acct in results["shards"].items():
        fields, keys, total = read_tars(work / f"size{size}" / "shards")
        assert {"jpg", "cls", "json", "lmk.npy", "heatmap.png", "left.jpg", "right.jpg"} <= fields
        assert set(acct["fields"]) == fields
        assert acct["samples"] == len(keys) > 0
        assert acct["file_bytes"] == total
        assert acct["per_sample"] == pytest.approx(total / len(keys))
        summed = sum(f["total"] for f in acct["fields"].values()) + acct["trailer"]
        assert summed == pytest.approx(acct["per_sample"], rel=1e-12)
        for ext, f in acct["fields"].items():
            assert f["data"] > 0, ext
            assert f["total"] == pytest.approx(f["data"] + f["overhead"])
            # each member: one 512-byte header, then its data padded to a whole 512-byte block
            per_member = f["overhead"] * acct["samples"] / f["present"]
            assert bench.BLOCK <= per_member < 2 * bench.BLOCK, ext
            assert f"\n  {ext:<14}" in out, f"{ext} missing from the printed table"


def test_quality_sweep_is_ordered_and_png_is_lossless(run):
    bench, results, _, _ = run
    s = results["crops"]["settings"]
    assert results["crops"]["crops"] > 0
    jpeg = [s[f"jpeg q{q}"] for q in bench.QUALITIES]
    assert [r["bytes"] for r in jpeg] == sorted(r["bytes"] for r in jpeg)
    assert all(a["bytes"] < b["bytes"] for a, b in zip(jpeg, jpeg[1:]))
    assert all(a["psnr"] < b["psnr"] for a, b in zip(jpeg, jpeg[1:]))
    assert all(math.isfinite(r["psnr"]) and r["mae"] > 0 for r in jpeg)
    png = s["png"]
    assert png["psnr"] == math.inf and png["mae"] == 0 and png["max_err"] == 0 and png["nme"] == 0
    assert png["bytes"] > jpeg[-1]["bytes"]
    assert results["crops"]["reference_nme"] > 0


def test_heatmap_quantisation_is_within_half_a_level(run):
    _, results, _, _ = run
    h = results["heatmap"]
    assert 0 < h["max_err"] <= 0.5 / 255 + 1e-6
    assert h["bytes"]["png"] < h["bytes"]["npy f32"]
    assert h["tar_bytes"]["npy f32"] > h["bytes"]["npy f32"]
