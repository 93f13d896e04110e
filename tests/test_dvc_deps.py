"""dvc.yaml: every stage depends on the project code its command can run, and on no other, so
`dvc repro` re-runs a stage when code that shapes its output changes (infrastructure that does not
is listed in EXEMPT). The code a stage can run is the static import closure of its pipeline
script, imports inside functions included."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ferdata", "fermodels", "pipeline")
# Modules that never shape a stage's data: what they do is checked by their own tests, and
# changing them must not re-run hours of preprocessing or training.
EXEMPT = {
    "ferdata/__init__.py": "the package's docstring and version string",
    "ferdata/stages/__init__.py": "empty",
    "pipeline/__init__.py": "the package's docstring",
    "ferdata/atomic.py": "writes files atomically",
    "ferdata/errors.py": "formats errors for the command line",
    "ferdata/parallel.py": "runs work in processes, results in input order",
    "ferdata/params.py": "reads params.yaml, whose values DVC tracks key by key",
    "ferdata/progress.py": "progress bars",
    "ferdata/registry.py": "name -> object tables",
    "ferdata/report.py": "the stage report's format; the stages count what goes in it",
    "pipeline/_args.py": "command-line arguments",
}


def module_file(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def imported(path: Path) -> set[str]:
    """Every module an import statement anywhere in ``path`` names (``from a import b``: a and a.b)."""
    package = list(path.relative_to(ROOT).with_suffix("").parts)[:-1]     # a/b/c.py and a/b/__init__.py: a.b
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
    return names


def closure(script: Path) -> set[str]:
    """Project files ``script`` can run: its imports, theirs, and so on."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        names = imported(path)
        names |= {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 1)}  # packages run first
        todo += [f for n in names if n.split(".")[0] in PACKAGES and (f := module_file(n))]
    return {str(p.relative_to(ROOT)) for p in seen}


def stage_deps() -> dict[str, list[str]]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, spec in stages.items():
        spec = spec.get("do", spec)
        out[name] = [d if isinstance(d, str) else next(iter(d)) for d in spec["deps"]]
    return out


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", sorted(stage_deps()))
def test_a_stage_depends_on_the_code_it_runs(stage):
    deps = stage_deps()[stage]
    script = f"pipeline/{stage}.py"
    assert script in deps
    missing = sorted(f for f in closure(ROOT / script) if f not in EXEMPT and not covered(f, deps))
    assert not missing, f"dvc.yaml stage {stage!r} runs code it does not depend on: {missing}"
    runs = closure(ROOT / script)
    unused = [d for d in deps if d.split("/")[0] in PACKAGES and not any(covered(f, [d]) for f in runs)]
    assert not unused, f"dvc.yaml stage {stage!r} depends on code it never runs (stale deps): {unused}"
    # a folder counts only if the stage can run all of it: an edit to predict.py must not re-run training
    idle = sorted(str(f.relative_to(ROOT)) for d in deps if d.split("/")[0] in PACKAGES and (ROOT / d).is_dir()
                  for f in (ROOT / d).rglob("*.py") if str(f.relative_to(ROOT)) not in runs | EXEMPT.keys())
    assert not idle, f"dvc.yaml stage {stage!r} depends on folders holding code it never runs: {idle}"


def test_the_closure_follows_imports_inside_functions(tmp_path):
    """The walker must see a lazy import, else a stage could run code it does not depend on."""
    reached = closure(ROOT / "pipeline" / "detect.py")
    assert "ferdata/faces/embedded.py" in reached          # registered by ferdata.faces' package import
    assert "ferdata/stages/shard.py" not in reached        # detect never runs the shard stage
    assert "ferdata/classes.py" in reached                 # labels: every reader maps through it


def test_the_pipeline_parses_with_the_sample_removed_from_datasets(tmp_path):
    """A user's params.yaml that lists only their own datasets (README: "add it to params.yaml")
    still gives a valid pipeline: no stage reads ``datasets.sample``."""
    import shutil
    import subprocess
    import sys

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"] = {"rafdb": {"reader": "rafdb", "root": "raw/rafdb", "options": {}}}
    params["train"]["datasets"] = ["rafdb"]
    params["evaluate"]["dataset"] = None
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    listed = subprocess.run([*dvc, "stage", "list", "--name-only"], cwd=tmp_path, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert {"sample", "detect@rafdb", "shard@rafdb", "train"} <= set(listed.stdout.split())
    assert "detect@sample" not in listed.stdout.split()


# Settings that change how fast a stage runs, never what it writes: changing them must not re-run
# the stage (an align re-run is a full re-alignment; a new detect cache_dir would detect every face
# again). Every other key of a stage's own params section must be declared, key by key or whole.
NOT_SHAPING = {"detect": {"workers", "cache_dir"}, "align": {"workers"}, "derive": {"workers"},
               "evaluate": {"workers"}}


@pytest.mark.parametrize("stage", sorted(stage_deps()))
def test_a_stage_declares_the_settings_that_shape_its_output_and_no_others(stage):
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    declared = {p if isinstance(p, str) else next(iter(p)) for p in spec.get("do", spec).get("params", [])}
    own = yaml.safe_load((ROOT / "params.yaml").read_text()).get(stage)
    if not isinstance(own, dict):
        return                                          # select: reads other stages' keys only
    covered_keys = {k for k in own if stage in declared or f"{stage}.{k}" in declared}
    skipped = NOT_SHAPING.get(stage, set())
    assert covered_keys == set(own) - skipped, (
        f"stage {stage!r}: undeclared {sorted(set(own) - skipped - covered_keys)}, "
        f"declared but not shaping its output {sorted(covered_keys & skipped)}")
