"""The landmark-start benchmark runs (``--quick``, in-process): its table and ratios are the
errors it measured, and on the group photo's turned faces the keypoint-placed box does better than
RetinaFace's box (a property of the method, not a time)."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

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


def test_the_benchmark_imports_the_checkout_it_sits_in(tmp_path):
    """The other benchmarks put their repository first on sys.path; this one imported whatever ferdata
    was installed (a change under test went unmeasured) and, with none installed, died on the import."""
    repo = Path(__file__).resolve().parents[2]
    code = f"""
import runpy, sys
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]   # no installed ferdata
sys.path[0] = {str(repo / 'bench')!r}                  # what `python bench/bench_landmarks.py` puts first
runpy.run_path({str(repo / 'bench' / 'bench_landmarks.py')!r}, run_name="imported")   # its imports, no run
print(sys.modules["ferdata"].__file__)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-600:]
    assert Path(done.stdout.strip()).resolve().is_relative_to(repo), done.stdout
