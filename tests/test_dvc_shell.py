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


def test_the_arguments_a_stage_gets_are_the_paths_dvc_yaml_declares():
    """The per-dataset scripts' paths come from pipeline/_args.py's DVC_STAGE_ARGS, not dvc.yaml's cmd:
    each must still be one of the stage's declared deps (inputs) or outs (the last: where it writes),
    else a stage would write where DVC does not look, or read what it does not track."""
    from pipeline._args import DVC_STAGE_ARGS, dvc_stage_args

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    per_dataset = {name for name, spec in stages.items() if "foreach" in spec}
    assert per_dataset == set(DVC_STAGE_ARGS)

    def declared(entries) -> list[str]:
        return [str(next(iter(e)) if isinstance(e, dict) else e).replace("${key}", "ds") for e in entries]

    for name in per_dataset:
        do = stages[name]["do"]
        args = dvc_stage_args(name, f"{name}@ds")
        paths = [a for a in args if "/" in a]
        assert paths and paths[-1] in declared(do["outs"]), (name, args, do["outs"])
        assert set(paths[:-1]) <= set(declared(do["deps"])), (name, args, do["deps"])
