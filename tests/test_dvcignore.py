"""Editors leave files beside the code they edit: Emacs a lock symlink ``.#name.py`` that points
nowhere (while a buffer has unsaved changes), Vim ``.name.py.swp``, Jupyter ``.ipynb_checkpoints/``,
macOS ``.DS_Store``. dvc.yaml's stages depend on whole code folders (fermodels/models, ferdata/faces,
ferdata/datasets, ferdata/sample), so without .dvcignore patterns for them a dangling lock link
stopped every `dvc status`, `dvc repro` and `dvc exp run` with "[Errno 2] No such file or directory",
and a swap file re-ran the stages (and once more when the editor removed it)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DVC = [sys.executable, "-m", "dvc"]


def dvc(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*DVC, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_editor_files_in_a_code_folder_change_no_stage(tmp_path):
    shutil.copy2(REPO / ".dvcignore", tmp_path / ".dvcignore")
    assert dvc(["init", "--no-scm", "-q"], tmp_path).returncode == 0
    (tmp_path / "ferdata").mkdir()
    (tmp_path / "ferdata" / "model.py").write_text("X = 1\n")
    assert dvc(["stage", "add", "-q", "-n", "s", "-d", "ferdata", "true"], tmp_path).returncode == 0
    assert dvc(["repro", "-q"], tmp_path).returncode == 0
    os.symlink("user@host.1234:1700000000", tmp_path / "ferdata" / ".#model.py")     # Emacs: dangling
    (tmp_path / "ferdata" / ".model.py.swp").write_bytes(b"vim")
    (tmp_path / "ferdata" / "model.py~").write_text("X = 0\n")
    (tmp_path / "ferdata" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "ferdata" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "ferdata" / ".ipynb_checkpoints" / "model-checkpoint.py").write_text("X = 2\n")
    status = dvc(["status", "--json"], tmp_path)
    assert status.returncode == 0, status.stderr
    assert status.stdout.strip() == "{}", status.stdout
    (tmp_path / "ferdata" / "model.py").write_text("X = 3\n")                        # a real edit still counts
    assert "ferdata" in dvc(["status", "--json"], tmp_path).stdout


def test_a_datasets_files_named_like_editors_files_are_still_tracked(tmp_path):
    """The editors' patterns applied everywhere: a dataset's ``img.jpg~`` or ``.#img.jpg`` under data/, which
    its reader lists (a not_an_image / hidden_file drop in detect's report), was neither hashed by
    `dvc add` (adding or removing it re-ran nothing) nor pushed (review h53)."""
    shutil.copy2(REPO / ".dvcignore", tmp_path / ".dvcignore")
    assert dvc(["init", "--no-scm", "-q"], tmp_path).returncode == 0
    raw = tmp_path / "data" / "raw" / "x" / "happy"
    raw.mkdir(parents=True)
    for name in ("a.jpg", "b.jpg~", ".#c.jpg", ".DS_Store"):
        (raw / name).write_bytes(name.encode())
    assert dvc(["add", "-q", "data/raw/x"], tmp_path).returncode == 0
    assert "nfiles: 4" in (tmp_path / "data" / "raw" / "x.dvc").read_text()
