"""params.yaml's comments say what a value means; a claim the code can check is checked here (audit h99)."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_params_yaml_says_what_a_relative_cache_dir_is_relative_to(tmp_path, monkeypatch):
    """A relative detect.cache_dir is taken in the folder a command runs in (README says so), not at the
    repository root: `ferdata prepare` run from a sub-folder, or outside a checkout with `ferdata params`'
    copy, starts a cache of its own there."""
    from ferdata.cache import cache_folder
    monkeypatch.chdir(tmp_path)
    assert cache_folder(".cache/ferdata").resolve() == (tmp_path / ".cache" / "ferdata").resolve()
    line = next(x for x in (ROOT / "params.yaml").read_text(encoding="utf-8").splitlines()
                if x.strip().startswith("cache_dir:"))
    assert "folder the command runs in" in line, line
