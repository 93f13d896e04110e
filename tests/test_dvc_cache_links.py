"""DVC's cache holds every output once: the workspace links to it rather than keeping a second copy."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _cached(project: Path, data: Path) -> Path:
    digest = hashlib.md5(data.read_bytes()).hexdigest()
    return project / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_an_output_is_stored_once_whether_added_or_made_by_a_stage(tmp_path):
    """The project's DVC config left cache.type at DVC's default (reflink, copy): on ext4 and most
    Linux disks every output was copied into .dvc/cache, so the prepared data (detect, aligned,
    derived, shards: ~11 GB for AffectNet's 290k images), each checkpoint and every `dvc add`ed raw
    dataset took twice its size. A stage's outputs are linked only with hardlink first in the list
    (DVC commits them into the cache by hardlink only then: reflink first copied them on ext4)."""
    project = tmp_path / "project"
    project.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=project, check=True)
    shutil.copy(REPO / ".dvc" / "config", project / ".dvc" / "config")   # the committed settings
    raw = project / "raw" / "images.bin"
    raw.parent.mkdir()
    raw.write_bytes(os.urandom(1 << 20))
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "raw/images.bin"], cwd=project, check=True)
    make = f"{sys.executable} -c \"import os; os.makedirs('out'); open('out/a.bin', 'wb').write(os.urandom(1 << 20))\""
    subprocess.run([sys.executable, "-m", "dvc", "stage", "add", "-q", "-n", "make", "-o", "out", make], cwd=project,
                   check=True)
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=project, check=True)
    for data in (raw, project / "out" / "a.bin"):
        cached = _cached(project, data)
        assert cached.is_file(), data
        assert os.stat(data).st_ino == os.stat(cached).st_ino, f"{data} is a second copy of the cached one"
