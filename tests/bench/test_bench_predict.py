"""The inference benchmark runs end to end (``--quick``, in-process) and prints its ratios last.

Timings are not asserted (other jobs share the machine): every input was scored, each stage was timed,
each ratio follows from the measured clocks, and the printed figures are the returned ones.
"""
from __future__ import annotations

import math
import re

from tests.bench.helpers import load_bench


def test_quick_benchmark_times_each_stage_and_prints_ratios_last(capsys):
    import logging

    levels = [logging.getLogger(n).level for n in ("ferdata", "fermodels")]
    results = load_bench("bench_predict").main(["--quick"])
    assert [logging.getLogger(n).level for n in ("ferdata", "fermodels")] == levels     # later tests log as before
    out = capsys.readouterr().out
    m, r = results["measured"], results["ratios"]
    assert m["photos"]["pictures"] == 4 and m["photos"]["faces"] >= 4
    assert m["video1"]["pictures"] == 20 and m["video10"]["pictures"] == 2
    for k in m:
        kernels = sum(m[k]["stages"][s] for s in ("detect: RetinaFace ONNX", "landmarks: dlib 68",
                                                   "model (collate included)"))
        assert all(v > 0 for v in (kernels, m[k]["stages"]["align: crop (+ reduced decode)"]))
        assert math.isclose(r[f"{k}_over_kernels"], m[k]["wall"] / kernels)
    assert m["photos"]["stages"]["decode"] > 0 and m["video1"]["stages"]["decode"] == 0     # frames have no file
    assert math.isclose(r["every10_frame_over_every1_frame"],
                        (m["video10"]["wall"] / 2) / (m["video1"]["wall"] / 20))
    tail = out[out.index("\nratios\n"):]
    printed = [float(v) for v in re.findall(r"\s(\d+\.\d+)x$", tail, flags=re.M)]
    assert printed == [round(r[k], 2) for k in ("photos_over_kernels", "video1_over_kernels", "video10_over_kernels",
                                                "every10_frame_over_every1_frame")]
