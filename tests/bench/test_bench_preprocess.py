"""The preprocessing benchmark runs end to end (``--quick``, in-process) and prints its ratios last.

Timings are not asserted (other jobs share the machine); only that every stage ran and
the repeat run detected nothing.
"""
from __future__ import annotations

from tests.bench.helpers import load_bench


def test_quick_benchmark_prints_ratios_last(capsys):
    ratios = load_bench("bench_preprocess").main(["--quick"])
    out = capsys.readouterr().out
    assert "detections run: first 8, repeat 0" in out
    tail = out[out.index("\nratios\n"):]
    for line in ("model kernels, wall", "speed-up 1 -> 2 processes", "pipeline speed-up / that ceiling",
                 "repeat run speed-up, detect stage",
                 "baseline plain loop, 1 process"):
        assert line in tail
    assert all(v > 0 for v in ratios.values())
    assert ratios["repeat_detect_speedup"] > 1
