"""The training benchmark runs end to end (``--quick``, in-process) and prints its ratios last.

Timings are not asserted (other jobs share the machine); only that every model and loader
configuration was measured.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_train.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_train", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_benchmark_prints_ratios_last(capsys):
    results = load_bench().main(["--quick", "--threads", "1"])
    out = capsys.readouterr().out
    assert "\nratios (loader samples/s / train samples/s" in out
    assert set(results["train"]) >= {"resnet18_112/cpu", "convcut/cpu"}
    assert set(results["loader"]) == {"image@112", "image@224"}
    assert all(v > 0 for part in results.values() for v in part.values())
