"""Shards move between machines through a DVC remote: machine A prepares and pushes
(outputs and run-cache), machine B clones and pulls, gets byte-identical shards that
verify, and runs just the `select` and `train` stages on them (``dvc repro -s``), without
re-running preprocessing; machine C, without A's ``dvc.lock``,
restores every stage from the remote's run-cache (``dvc repro --pull``) instead of
recomputing it. When A ran every stage, B's plain ``dvc repro --allow-missing`` re-runs only
what B changed (slow test).

Each "machine" is a git repository in ``tmp_path`` holding this project's code,
``dvc.yaml`` and ``params.yaml`` (with one small annotated dataset); the remote is a
local folder. About 20 s (a dozen ``dvc`` and ``git`` subprocesses).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ferdata.selection import read_selection
from fermodels.runstate import LAST, load_checkpoint
from ferdata.selection import SPLITS_READ
from tests.fermodels.helpers import TINY_MODEL
from tests.reliability.corpus import REPO, tree_hashes

CODE = ("ferdata", "fermodels", "pipeline", "dvc.yaml", "params.yaml", "pyproject.toml")
SHARDS = Path("data/tiny/shards")
PREP_STAGES = {"detect@tiny", "align@tiny", "derive@tiny", "shard@tiny"}


def env() -> dict[str, str]:
    """Each machine imports its own copy of the code and, like a user's shell, writes
    ``__pycache__`` into the code folders that stages depend on."""
    e = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    e.update(DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org",
             GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.org", OMP_NUM_THREADS="1")
    e["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), e.get("PATH", "")])   # `python` in dvc.yaml
    return e


def sh(cwd: Path, *cmd: str) -> str:
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, env=env(), timeout=600)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def dvc(cwd: Path, *args: str) -> str:
    return sh(cwd, sys.executable, "-m", "dvc", *args)


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def make_machine_a(a: Path, raw: Path, remote: Path) -> None:
    """A git + DVC project with this checkout's code, ``.gitignore``, ``.dvcignore`` and a ``tiny``
    dataset in ``raw/tiny``."""
    a.mkdir()
    for name in CODE:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, a / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, a / name)
    shutil.copytree(raw, a / "raw" / "tiny")
    params = yaml.safe_load((a / "params.yaml").read_text())
    params["datasets"]["tiny"] = {"reader": "affectnet", "root": "raw/tiny", "options": {"protocol": "affectnet8"}}
    params["detect"].update(backend="annotations", workers=1)
    params["align"].update(workers=1)
    params["derive"].update(workers=1)
    params["shard"].update(maxcount=8)
    (a / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy2(REPO / ".gitignore", a / ".gitignore")          # the project's: run metrics are tracked
    sh(a, "git", "init", "-q")
    dvc(a, "init", "-q")
    shutil.copy2(REPO / ".dvcignore", a / ".dvcignore")
    dvc(a, "remote", "add", "-d", "shared", str(remote))


def test_shards_travel_through_a_dvc_remote(clean_root, tmp_path, monkeypatch):
    """docs/sharing.md's machines A, B and C, with its commands as written; the raw images stay out
    of git (and so off B and C unless copied there)."""
    a, b, c, remote = (tmp_path / n for n in ("machine_a", "machine_b", "machine_c", "remote"))
    make_machine_a(a, clean_root, remote)
    (a / ".git" / "info" / "exclude").write_text("/raw/\n")
    sh(a, "git", "add", "-A")
    sh(a, "git", "commit", "-q", "-m", "project")
    assert stages_run(dvc(a, "repro", "shard@tiny")) == PREP_STAGES
    sh(a, sys.executable, "-m", "ferdata.cli", "verify", str(SHARDS))
    dvc(a, "push", "--run-cache")
    doc = (REPO / "docs" / "sharing.md").read_text()
    add = next(line.split("   #")[0] for line in doc.splitlines() if line.startswith("git add dvc.lock"))
    sh(a, "bash", "-c", add)                                             # no runs/ yet: still adds dvc.lock
    sh(a, "git", "commit", "-q", "-m", "tiny dataset prepared")
    assert "dvc.lock" in sh(a, "git", "show", "--stat", "HEAD")

    sh(tmp_path, "git", "clone", "-q", str(a), str(b))
    dvc(b, "pull", "shard@tiny")                                         # the shards only
    assert tree_hashes(b / SHARDS) == tree_hashes(a / SHARDS)
    assert "all shards match" in sh(b, sys.executable, "-m", "ferdata.cli", "verify", str(SHARDS))
    assert stages_run(dvc(b, "repro", "--allow-missing", "shard@tiny")) == set()   # nothing recomputed
    params = yaml.safe_load((b / "params.yaml").read_text())
    params["train"].update(TINY_MODEL, datasets=["tiny"], epochs=1, batch_size=8, workers=0, device="cpu",
                           shuffle_buffer=8)
    (b / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_run(dvc(b, "repro", "-s", "select")) == {"select"}          # as docs/sharing.md says
    assert stages_run(dvc(b, "repro", "-s", "train")) == {"train"}
    monkeypatch.chdir(b)
    assert read_selection("runs/select/train.json", ["tiny"], SPLITS_READ) == [SHARDS]
    assert load_checkpoint(b / "runs" / "train" / "ckpt" / LAST)["epoch"] == 0
    assert set(yaml.safe_load((b / "dvc.lock").read_text())["stages"]) >= {"select", "train"}

    sh(tmp_path, "git", "clone", "-q", str(a), str(c))
    (c / "dvc.lock").unlink()                                            # A's results never committed
    lacking = subprocess.run([sys.executable, "-m", "dvc", "repro", "--pull", "shard@tiny"], cwd=c, env=env(),
                             capture_output=True, text=True, timeout=600)
    assert lacking.returncode != 0 and "does not exist as an output or a stage name" in lacking.stderr + \
        lacking.stdout                                                   # the signature needs the raw data
    shutil.copytree(clean_root, c / "raw" / "tiny")                      # the same raw data, the same path
    out = dvc(c, "repro", "--pull", "shard@tiny")                        # run-cache entries + their outputs
    assert stages_run(out) == set(), out
    assert len(re.findall(r"is cached - skipping run", out)) == len(PREP_STAGES), out
    assert tree_hashes(c / SHARDS) == tree_hashes(a / SHARDS)


@pytest.mark.slow
def test_with_every_stage_locked_allow_missing_reruns_only_what_changed(clean_root, tmp_path):
    """When A ran the whole pipeline (every stage in ``dvc.lock``), B with only one dataset's
    shards pulled can use a plain ``dvc repro --allow-missing``: stages whose only change is
    absent data are skipped, what B changed (a train param) and what reads it run; so does an
    experiment (``dvc exp run --allow-missing``). ~2 min."""
    a, b = tmp_path / "machine_a", tmp_path / "machine_b"
    make_machine_a(a, clean_root, tmp_path / "remote")
    params = yaml.safe_load((a / "params.yaml").read_text())
    params["train"].update(TINY_MODEL, datasets=["tiny"], epochs=1, batch_size=8, workers=0, device="cpu",
                           shuffle_buffer=8)
    params["evaluate"].update(workers=0, device="cpu", batch_check=False)
    (a / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(a, "git", "add", "-A")
    sh(a, "git", "commit", "-q", "-m", "project")                       # DVCLive needs a commit
    dvc(a, "repro")
    dvc(a, "push")
    sh(a, "git", "add", "-A")
    sh(a, "git", "commit", "-q", "-m", "every stage run")

    sh(tmp_path, "git", "clone", "-q", str(a), str(b))
    dvc(b, "pull", "shard@tiny")
    # select depends on all of data/, here only partly present: it runs, pins the same shards,
    # and nothing downstream runs
    assert stages_run(dvc(b, "repro", "--allow-missing")) == {"select"}
    params["train"]["epochs"] = 2
    (b / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_run(dvc(b, "repro", "--allow-missing")) == {"train", "evaluate"}
    assert not (b / "data" / "sample").exists() and not (b / "data" / "tiny" / "detect").exists()
    assert load_checkpoint(b / "runs" / "train" / "ckpt" / LAST)["epoch"] == 1
    # experiments too (docs/sharing.md): only what reads the changed param runs, never the preparation
    assert stages_run(dvc(b, "repro", "--dry", "--allow-missing")) == set()
    ran = stages_run(dvc(b, "exp", "run", "--allow-missing", "-S", "train.lr=0.0005"))
    assert {"train", "evaluate"} <= ran <= {"select", "train", "evaluate"}, ran


@pytest.mark.slow                   # a git + DVC project, a remote and a clone: about a minute
def test_dry_run_before_select_has_run_stops_as_docs_sharing_md_says(clean_root, tmp_path):
    """docs/sharing.md's Machine B with only the shards pulled (A ran ``dvc repro shard@<ds>``):
    ``dvc repro --dry --allow-missing`` does not list what would run there: the dry run hashes the
    dependencies of the stages after one it would run, and ``runs/select/train.json`` is not there yet.
    The page must say so, not promise the list (audit h99)."""
    a, b = tmp_path / "machine_a", tmp_path / "machine_b"
    make_machine_a(a, clean_root, tmp_path / "remote")
    params = yaml.safe_load((a / "params.yaml").read_text())
    params["datasets"] = {"tiny": params["datasets"]["tiny"]}          # the sample's raw data is never made here
    params["train"]["datasets"] = ["tiny"]
    (a / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (a / ".git" / "info" / "exclude").write_text("/raw/\n")
    sh(a, "git", "add", "-A")
    sh(a, "git", "commit", "-q", "-m", "project")
    dvc(a, "repro", "shard@tiny")
    dvc(a, "push", "shard@tiny")
    sh(a, "git", "add", "dvc.lock")
    sh(a, "git", "commit", "-q", "-m", "tiny dataset prepared")
    sh(tmp_path, "git", "clone", "-q", str(a), str(b))
    dvc(b, "pull", "shard@tiny")
    dry = subprocess.run([sys.executable, "-m", "dvc", "repro", "--dry", "--allow-missing"], cwd=b, env=env(),
                         capture_output=True, text=True, timeout=600)
    out = dry.stdout + dry.stderr
    assert dry.returncode != 0 and "runs/select/train.json" in out, out
    doc = " ".join((REPO / "docs" / "sharing.md").read_text(encoding="utf-8").split())
    assert "failed to reproduce 'train'" in doc, "docs/sharing.md says this dry run lists what would run"
