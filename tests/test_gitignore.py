"""What the tools write into the checkout (DVC's data and plots, the venv, build output) is ignored."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs git and a checkout")
@pytest.mark.parametrize("path", ["dvc_plots/index.html", "data/sample/shards/train/_info.json", ".venv/bin/python",
                                  "bench/out/run.json"])
def test_tool_output_is_ignored(path):
    proc = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=REPO, timeout=60)
    assert proc.returncode == 0, f"{path} is not in .gitignore"


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs git and a checkout")
@pytest.mark.parametrize("path, ignored", [("raw/RAF-DB/Image/original/train_00001.jpg", True), ("raw/CK+", True),
                                           ("raw/RAF-DB.dvc", False), ("raw/.gitignore", False)])
def test_raw_datasets_are_ignored_but_their_dvc_files_are_not(path, ignored):
    """README puts dataset roots under raw/: `git add -A` before `dvc add raw/<name>` committed the
    images; the .dvc files `dvc add` writes must stay visible to git."""
    proc = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=REPO, timeout=60)
    assert (proc.returncode == 0) == ignored, f"{path}: ignored {proc.returncode == 0}, want {ignored}"
