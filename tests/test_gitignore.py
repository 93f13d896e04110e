"""What the tools write into the checkout (DVC's data and plots, the venv, build output) is ignored."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs git and a checkout")
@pytest.mark.parametrize("path", ["dvc_plots/index.html", "data/sample/shards/train/_info.json", ".venv/bin/python",
                                  "bench/out/run.json", "predictions.csv", "annotated/a.jpg", "exported/model.onnx",
                                  "cv.json",                      # README's crossval example writes it
                                  "sheet.png"])                   # README's `ferdata show` example writes it
def test_tool_output_is_ignored(path):
    proc = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=REPO, timeout=60)
    assert proc.returncode == 0, f"{path} is not in .gitignore"

