"""What the test suite leaves behind outside its temporary folders."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_dvc_repositories_made_by_tests_keep_their_site_cache_in_the_test_tmp(tmp_path, monkeypatch):
    """Every DVC repository a test makes (a clone for `dvc repro`, push/pull between clones, `dvc init`
    in tmp_path) got its own folder in DVC's site cache, /var/tmp/dvc/repo/<md5 of its path, birth time
    and user>: outside $TMPDIR and pytest's temporary folders, never removed, a new one per repository
    and run (100+ on a CI machine after a few suite runs)."""
    from types import SimpleNamespace

    from dvc.fs import localfs
    from dvc.repo import Repo

    repo = tmp_path / "project"
    repo.mkdir()
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=repo, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "status", "-q"], cwd=repo, check=True)  # opens the state db

    used = os.environ.get("DVC_SITE_CACHE_DIR")
    monkeypatch.delenv("DVC_SITE_CACHE_DIR", raising=False)
    # where DVC puts this repository's state by default (its own code; opening the repository would make it)
    btime = os.path.getmtime(repo / ".dvc" / "tmp" / "btime")
    default = Path(Repo.site_cache_dir.fget(SimpleNamespace(config={"core": {}}, fs=localfs, root_dir=str(repo),
                                                            _btime=btime)))
    assert not default.exists(), f"the test's DVC repository left {default} outside the test's folders"
    assert used is not None and Path(used).is_relative_to(tmp_path.parents[1]), used


def test_torch_compiles_into_the_test_tmp(tmp_path):
    """The compile tests left torch's inductor cache, $TMPDIR/torchinductor_<user> (164 MB), after the run:
    torch (and every subprocess a test starts) compiles under pytest's temporary folder instead."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert Path(cache_dir()).is_relative_to(tmp_path.parents[1]), cache_dir()
