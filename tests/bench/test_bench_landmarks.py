"""The landmark-start benchmark runs (``--quick``, in-process): its table and ratios are the
errors it measured, and on the group photo's turned faces the keypoint-placed box does better than
RetinaFace's box (a property of the method, not a time)."""
from __future__ import annotations

import contextlib
import io

from tests.bench.helpers import load_bench

def test_quick_run_prints_what_it_measured():
    bench, out = load_bench("bench_landmarks"), io.StringIO()
    with contextlib.redirect_stdout(out):
        result = bench.main(["--quick"])
    text = out.getvalue()
    stats, ratios = result["stats"], result["ratios"]
    assert result["faces"] == 6 and f"{result['faces']} faces" in text
    assert text.startswith("--quick: the group photo only, a smoke test: n/a")
    assert ratios["mean keypoint / retinaface"] == stats["keypoint box"]["mean"] / stats["retinaface box"]["mean"]
    assert ratios["max keypoint / retinaface"] == stats["keypoint box"]["max"] / stats["retinaface box"]["max"]
    last = f"ratio max keypoint / retinaface: {ratios['max keypoint / retinaface']:.2f}"
    assert text.strip().splitlines()[-1] == last
    for name, s in stats.items():
        assert f"{name:18s} {s['mean']:7.3f} {s['p90']:7.3f} {s['max']:7.3f}" in text
    assert stats["keypoint box"]["max"] < stats["retinaface box"]["max"]
    assert set(result["fit"]) == {"centre_fraction", "side_per_eyes_to_mouth", "side_per_interocular"}
