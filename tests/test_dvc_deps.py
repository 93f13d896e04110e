"""dvc.yaml: every stage depends on the project code its command can run, and on no other, so
`dvc repro` re-runs a stage when code that shapes its output changes (infrastructure that does not
is listed in EXEMPT). The code a stage can run is the static import closure of its pipeline
script, imports inside functions included (:mod:`ferdata.codeclosure`, which training's code
fingerprint uses too)."""
from __future__ import annotations

import pytest
import yaml

from ferdata.codeclosure import EXEMPT, PACKAGES, ROOT, closure
from ferdata.params import SPEED_ONLY


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


@pytest.mark.parametrize("stage", sorted(stage_deps()))
def test_a_stage_declares_the_settings_that_shape_its_output_and_no_others(stage):
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    declared = {p if isinstance(p, str) else next(iter(p)) for p in spec.get("do", spec).get("params", [])}
    own = yaml.safe_load((ROOT / "params.yaml").read_text()).get(stage)
    if not isinstance(own, dict):
        return                                          # select: reads other stages' keys only
    covered_keys = {k for k in own if stage in declared or f"{stage}.{k}" in declared}
    skipped = set(SPEED_ONLY.get(stage, ()))
    assert covered_keys == set(own) - skipped, (
        f"stage {stage!r}: undeclared {sorted(set(own) - skipped - covered_keys)}, "
        f"declared but not shaping its output {sorted(covered_keys & skipped)}")


def test_installed_without_pipeline_the_code_hash_ignores_a_foreign_pipeline_package(tmp_path):
    """Installed, the closure's root is site-packages: another project's `pipeline/train.py` there
    was hashed as the training code (and its imports followed) in place of fermodels/train.py."""
    import shutil
    import subprocess
    import sys

    site = tmp_path / "site-packages"
    for package in ("ferdata", "fermodels"):
        shutil.copytree(ROOT / package, site / package, ignore=shutil.ignore_patterns("__pycache__"))
    (site / "pipeline").mkdir()
    (site / "pipeline" / "__init__.py").write_text("")
    (site / "pipeline" / "train.py").write_text("import ferdata.stages.detect\n")     # someone else's
    probe = ("from ferdata.codeclosure import PACKAGES, ROOT, fingerprint; "
             "from fermodels.runstate import code_fingerprint; print(PACKAGES); "
             "print(code_fingerprint() == fingerprint(ROOT / 'fermodels' / 'train.py'))")
    run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:2] == ["('ferdata', 'fermodels')", "True"]


def test_training_does_not_run_the_evaluate_stage():
    """Training validates with :mod:`fermodels.scoring`, not the evaluate stage's module: editing how the
    evaluate stage checks, reports or writes its metrics must not re-run training (dvc.yaml's train deps)
    nor change its checkpoints' code fingerprint (a run would start over instead of resuming)."""
    reached = closure(ROOT / "pipeline" / "train.py")
    assert "fermodels/scoring.py" in reached
    assert "fermodels/evaluate.py" not in reached


def test_training_does_not_run_the_model_size_report():
    """torch.compile's trial step takes its stand-in batch from :mod:`fermodels.examples`, not from
    ``fermodels info``'s module: editing how parameters and MACs are counted must not restart training."""
    for stage in ("train", "evaluate"):
        reached = closure(ROOT / "pipeline" / f"{stage}.py")
        assert "fermodels/examples.py" in reached and "fermodels/info.py" not in reached, stage
