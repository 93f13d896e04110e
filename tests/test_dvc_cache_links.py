"""DVC's cache holds every output once: the workspace links to it rather than keeping a second copy."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _reflinks(folder: Path) -> bool:
    """Whether ``folder``'s filesystem clones files (btrfs, XFS, APFS): DVC's default then shares blocks."""
    (folder / "a").write_bytes(b"x")
    done = subprocess.run(["cp", "--reflink=always", str(folder / "a"), str(folder / "b")], capture_output=True)
    return done.returncode == 0


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_an_output_is_not_stored_twice_on_a_filesystem_without_reflinks(tmp_path):
    """The project's DVC config left cache.type at DVC's default (reflink, copy): on ext4 and most
    Linux disks every output was copied into .dvc/cache, so the prepared data (detect, aligned,
    derived, shards: ~11 GB for AffectNet's 290k images), each checkpoint and every `dvc add`ed raw
    dataset took twice its size; docs/sharing.md told it as an optional local step."""
    if _reflinks(tmp_path):
        pytest.skip("this filesystem clones files: DVC's default stores them once already")
    project = tmp_path / "project"
    project.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=project, check=True)
    shutil.copy(REPO / ".dvc" / "config", project / ".dvc" / "config")   # the committed settings
    data = project / "raw" / "images.bin"
    data.parent.mkdir()
    data.write_bytes(os.urandom(1 << 20))
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "raw/images.bin"], cwd=project, check=True)
    cached = [p for p in (project / ".dvc" / "cache").rglob("*") if p.is_file()]
    assert len(cached) == 1
    assert data.is_symlink() or os.stat(data).st_ino == os.stat(cached[0]).st_ino, \
        "the workspace file is a second copy of the cached one"
