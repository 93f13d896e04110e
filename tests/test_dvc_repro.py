"""`dvc repro` end to end in a temporary clone: runs, is a no-op when repeated, preparing another
dataset re-runs neither training nor evaluation, and a param change re-runs only the stages that
read it. Slow (minutes): `pytest -m slow`."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.mark.slow
def test_dvc_repro_in_clone(tmp_path):
    clone = tmp_path / "clone"
    if not (REPO / ".git").is_dir():
        pytest.skip("not a git checkout")
    run(["git", "clone", "-q", str(REPO), str(clone)], tmp_path)
    # The clone holds committed files only; test the working tree as it is now.
    for rel in subprocess.run(["git", "ls-files", "-mo", "--exclude-standard"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.split():
        if (REPO / rel).is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, clone / rel)
    dvc = [sys.executable, "-m", "dvc"]

    first = run(dvc + ["repro"], clone)
    assert {"sample", "detect@sample", "align@sample", "derive@sample", "shard@sample", "select", "train",
            "evaluate"} <= stages_run(first)
    metrics = json.loads((clone / "runs/eval/metrics.json").read_text())
    chance = 1.0 / len([c for c in metrics["per_class"].values() if c["support"] > 0])
    assert metrics["accuracy"] > chance + 0.2, metrics

    second = run(dvc + ["repro"], clone)
    assert stages_run(second) == set(), second

    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["datasets"]["again"] = dict(params["datasets"]["sample"])     # another dataset, not trained on
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = stages_run(run(dvc + ["repro"], clone))
    assert {"detect@again", "shard@again", "select"} <= third
    assert not third & {"train", "evaluate"}, third

    params["derive"]["heatmap_sigma"] = params["derive"]["heatmap_sigma"] * 1.5
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dry = run(dvc + ["repro", "--dry"], clone)
    ran = stages_run(dry)
    assert "derive@sample" in ran
    assert not ran & {"sample", "detect@sample", "align@sample"}, ran


def test_dvc_analytics_are_off_in_the_project():
    """README promises no network beyond PyPI: DVC's analytics daemon tried analytics.dvc.org on every
    `dvc` command and left its report in $TMPDIR (one file per command, never removed)."""
    import configparser

    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    assert config.get("core", "analytics") == "false"
