"""The streaming benchmark runs end to end (``--quick``): both input sizes go through every
stage in child processes without losing a sample, and the ratios come last.

Times and memory are printed, not asserted (other jobs share the machine).
"""
from __future__ import annotations

from tests.bench.helpers import load_bench


def test_quick_benchmark_streams_every_sample_and_prints_ratios_last(capsys):
    ratios = load_bench("bench_streaming").main(["--quick"])        # raises if any stage lost a sample
    out = capsys.readouterr().out
    table = out[out.index("images/s (wall)"):out.index("peak memory")]
    assert [line.split()[0] for line in table.splitlines()[1:6]] == ["detect", "align", "derive", "shard", "total"]
    tail = out[out.index("\nratios\n"):]
    assert "peak RSS, main process, 160 / 40 inputs" in tail and tail.rstrip().splitlines()[-1].startswith("  repeat")
    assert set(ratios) >= {"rss_main_big_over_small", "rss_worker_big_over_small", "private_worker_big_over_small",
                           "scaling_1_to_2"}
    private = ratios.pop("private_worker_big_over_small")        # nan when a quick run is too short to poll
    assert private != private or private > 0                     # never 0: an unseen worker is no measurement
    assert all(v > 0 for v in ratios.values())
