"""k-fold cross-validation through DVC experiments, end to end: one queued experiment per fold, the
queue run, `fermodels crossval` over the experiments' commits. Every kept sample is in exactly one
fold's test split, and each experiment's commit holds its evaluation (the project's .gitignore
leaves runs/ to git), so a clone that fetched the experiments with `dvc exp pull` gets the same
summary. Slow (~1.5 min): `pytest -m slow`."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

from tests.fermodels.helpers import TINY_MODEL
from tests.reliability.test_dvc_sharing import dvc, env, make_machine_a, sh

FOLDS = 3


def _without_official_test(root) -> None:
    """The AffectNet-layout corpus as a CK+-like dataset: every row in training.csv, an empty
    validation.csv (k-fold is for datasets without an official test split)."""
    (train_csv,) = root.rglob("training.csv")
    (val_csv,) = root.rglob("validation.csv")
    header, *rows = val_csv.read_text().splitlines(keepends=True)
    text = train_csv.read_text()
    train_csv.write_text(text + ("" if text.endswith("\n") else "\n") + "".join(rows))
    val_csv.write_text(header)


@pytest.mark.slow
def test_kfold_experiments_are_summarised(clean_root, tmp_path):
    a = tmp_path / "a"
    make_machine_a(a, clean_root, tmp_path / "remote")
    _without_official_test(a / "raw" / "tiny")
    params = yaml.safe_load((a / "params.yaml").read_text())
    params["shard"].update(folds=FOLDS, fold=0)
    params["train"].update(TINY_MODEL, datasets=["tiny"], epochs=1, batch_size=8, workers=0, device="cpu",
                           shuffle_buffer=8)
    params["evaluate"].update(workers=0, device="cpu", batch_check=False)
    (a / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(a, "git", "add", "-A")
    sh(a, "git", "commit", "-q", "-m", "tiny dataset, 3 folds")
    dvc(a, "exp", "run", "--queue", "-S", f"shard.fold={','.join(map(str, range(FOLDS)))}")
    dvc(a, "queue", "start", "-j", "1")
    deadline = time.monotonic() + 900
    while any(s in (status := dvc(a, "queue", "status")) for s in ("Queued", "Running")):
        assert time.monotonic() < deadline, status
        time.sleep(3)
    assert status.count("Success") == FOLDS, status

    sh(a, sys.executable, "-m", "fermodels.cli", "crossval", "--out", "cv.json")
    [series] = json.loads((a / "cv.json").read_text())
    assert series["folds"] == FOLDS and series["missing"] == [] and len(series["experiments"]) == FOLDS
    dvc(a, "repro", "shard@tiny")                                  # fold 0 in the workspace: every kept sample
    kept = sum(json.loads((a / "data/tiny/shards" / s / "_info.json").read_text())["num_samples"]
               for s in ("train", "val", "test"))
    tested = series["metrics"]["num_samples"]
    assert sum(tested["folds"]) == tested["pooled"] == kept
    assert all(n > 0 for n in tested["folds"])
    assert [sum(map(sum, series["confusion"][str(k)])) for k in range(FOLDS)] == tested["folds"]
    from fermodels.crossval import read_experiments

    pins = {run.tested for run in read_experiments(a)[0]}           # each fold's commit pins its own test split
    assert len(pins) == FOLDS and None not in pins

    hub = tmp_path / "hub.git"                                     # a shared git remote, as on GitHub
    sh(tmp_path, "git", "clone", "-q", "--bare", str(a), str(hub))
    dvc(a, "exp", "push", "--no-cache", str(hub))                  # the fold experiments' refs
    sh(tmp_path, "git", "clone", "-q", str(hub), str(tmp_path / "c"))
    c = tmp_path / "c"
    assert "error:" in _crossval_fails(c)                          # no experiments before the pull
    dvc(c, "exp", "pull", "--no-cache", "origin")
    sh(c, sys.executable, "-m", "fermodels.cli", "crossval", "--out", "cv.json")
    assert json.loads((c / "cv.json").read_text()) == json.loads((a / "cv.json").read_text())


def _crossval_fails(repo) -> str:
    proc = subprocess.run([sys.executable, "-m", "fermodels.cli", "crossval"], cwd=repo, capture_output=True,
                          text=True, env=env(), timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    return proc.stderr
