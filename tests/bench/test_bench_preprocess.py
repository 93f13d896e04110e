"""The preprocessing benchmark runs end to end (``--quick``, in-process) and prints its ratios last.

Timings are not asserted (other jobs share the machine); only that every stage ran and
the repeat run detected nothing.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_preprocess.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_preprocess", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_benchmark_prints_ratios_last(capsys):
    ratios = load_bench().main(["--quick"])
    out = capsys.readouterr().out
    assert "detections run: first 8, repeat 0" in out
    tail = out[out.index("\nratios\n"):]
    for line in ("model kernels, wall", "speed-up 1 -> 2 processes", "pipeline speed-up / that ceiling",
                 "repeat run speed-up, detect stage",
                 "baseline plain loop, 1 process"):
        assert line in tail
    assert all(v > 0 for v in ratios.values())
    assert ratios["repeat_detect_speedup"] > 1
