"""CHANGES.md's newest section says which files ``dvc status`` lists as modified that only became
dependencies of a stage (audit h103): fermodels/examples.py and scoring.py, new deps of train and evaluate
since 10f6273, were missing from that list, so a user upgrading read them as changed code."""
from __future__ import annotations

import re
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


# where CHANGES.md's newest section says a workspace was made: `dvc status` lists new dependencies relative to it
START = re.compile(r"(?:[Ff]rom|made at|trained at) ([0-9a-f]{7})\b")


def _gained(since: str) -> set[str] | None:
    """The files a stage of today's dvc.yaml depends on that it did not at ``since`` (None: no such commit here)."""
    old = subprocess.run(["git", "-C", str(ROOT), "show", f"{since}:dvc.yaml"], capture_output=True, text=True)
    if old.returncode:
        return None
    before, now = _deps(old.stdout), _deps((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    return {p for name, deps in now.items() for p in deps - before.get(name, set()) if (ROOT / p).is_file()}


def test_changes_names_the_new_dependencies_from_each_commit_a_workspace_was_made_at():
    """From 334882c, whose dvc.yaml already named every dependency, ``dvc status`` lists only changed files;
    CHANGES.md listed six files as new dependencies, not changed, whatever the workspace's commit (audit h112)."""
    section = (ROOT / "CHANGES.md").read_text(encoding="utf-8").split("\n## ")[1]
    intro = " ".join(section.split("\n- **")[0].split())
    claim = next(s for s in re.split(r"(?<=\.) ", intro) if "new dependencies" in s)
    missing = sorted(s for s in set(START.findall(intro)) if s not in claim)
    assert not missing, f"the sentence on new dependencies does not say what they are from {missing}: {claim}"
    parts = re.split(r"\b([0-9a-f]{7})\b", claim)
    for since, told in zip(parts[1::2], parts[2::2]):
        if (gained := _gained(since)) is None:
            continue
        named = {Path(p).name for p in re.findall(r"`([^`]+\.py)`", told)}
        assert named == {Path(p).name for p in gained}, (f"from {since}: CHANGES.md names {sorted(named)} as new "
                                                         f"dependencies, dvc.yaml gained {sorted(gained)}")
