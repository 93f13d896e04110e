"""A dataset name in params.yaml never reaches the shell that runs a stage's command: DVC hands
``cmd`` to ``$SHELL -c``, so ``${key}`` interpolated there ran a name such as
``x$(touch${IFS}/tmp/pwned)`` as shell code before this package's name check could refuse it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import yaml

from ferdata.codeclosure import ROOT

EVIL = "x$(touch${IFS}%s)"


def test_no_stage_command_interpolates_a_param():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    cmds = {name: spec.get("do", spec)["cmd"] for name, spec in stages.items()}
    assert not {n: c for n, c in cmds.items() if "${" in str(c)}


def test_a_dataset_name_with_shell_code_runs_no_code_under_dvc_repro(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(".git", ".venv", ".dvc", "data", "runs", "tests",
                                                               "__pycache__", "*.egg-info", "build"))
    marker = tmp_path / "PWNED"
    name = EVIL % marker
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["datasets"] = {name: {"reader": "folder", "root": "ferdata", "options": {}}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    dvc = [sys.executable, "-m", "dvc"]
    env = {**os.environ, "PYTHONPATH": str(repo), "SHELL": "/bin/sh"}
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=repo, check=True, env=env)
    subprocess.run([*dvc, "config", "core.analytics", "false"], cwd=repo, check=True, env=env)
    run = subprocess.run([*dvc, "repro", "--single-item", f"detect@{name}"], cwd=repo, capture_output=True,
                         text=True, env=env, timeout=600)
    assert not marker.exists(), run.stdout + run.stderr
    assert run.returncode != 0 and "is not letters, digits, _ and -" in run.stdout + run.stderr
