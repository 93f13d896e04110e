"""CHANGES.md's newest section says which files ``dvc status`` lists as modified that only became
dependencies of a stage (audit h103): fermodels/examples.py and scoring.py, new deps of train and evaluate
since 10f6273, were missing from that list, so a user upgrading read them as changed code."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _deps(text: str) -> dict[str, set[str]]:
    stages = yaml.safe_load(text)["stages"]
    return {name: {d for d in stage.get("do", stage).get("deps", []) if "$" not in d}
            for name, stage in stages.items()}


def test_changes_names_every_dependency_a_stage_gained_since_its_section_started():
    text = (ROOT / "CHANGES.md").read_text(encoding="utf-8")
    section = text.split("\n## ")[1]
    since = section.split()[1]                           # "Since 10f6273"
    old = subprocess.run(["git", "-C", str(ROOT), "show", f"{since}:dvc.yaml"], capture_output=True, text=True)
    if old.returncode:
        pytest.skip(f"no git history holding {since} here")
    before, now = _deps(old.stdout), _deps((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    gained = {path for name, deps in now.items() for path in deps - before.get(name, set())
              if (ROOT / path).is_file()}
    intro = " ".join(section.split("\n- **")[0].split())
    missing = sorted(p for p in gained if f"`{p}`" not in intro and f"`{Path(p).name}`" not in intro)
    assert not missing, f"dvc status lists these as modified, CHANGES.md does not say why: {missing}"
