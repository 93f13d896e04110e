"""The project code a module can run: the static import closure of its file, imports inside
functions included. DVC's stages depend on exactly that code (checked by ``tests/test_dvc_deps.py``)
and a training run resumes only under the same code (:func:`fingerprint`, recorded in checkpoints),
so what re-runs a stage and what restarts its training are one set of files."""
from __future__ import annotations

import ast
import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# pipeline/ is ours only in a checkout (beside dvc.yaml); installed, ROOT is site-packages, where a
# folder of that name would be another project's
PACKAGES = ("ferdata", "fermodels", *(("pipeline",) if (ROOT / "dvc.yaml").is_file() else ()))
# Modules that never shape a stage's data: what they do is checked by their own tests, and
# changing them must not re-run hours of preprocessing or training.
EXEMPT = {
    "ferdata/__init__.py": "the package's docstring and version string",
    "ferdata/stages/__init__.py": "empty",
    "pipeline/__init__.py": "the package's docstring",
    "ferdata/atomic.py": "writes files atomically",
    "ferdata/codeclosure.py": "finds the code a stage runs",
    "ferdata/errors.py": "formats errors for the command line",
    "ferdata/parallel.py": "runs work in processes, results in input order",
    "ferdata/params.py": "reads params.yaml, whose values DVC tracks key by key",
    "ferdata/progress.py": "progress bars",
    "ferdata/registry.py": "name -> object tables",
    "ferdata/report.py": "the stage report's format; the stages count what goes in it",
    "pipeline/_args.py": "command-line arguments",
    "pipeline/_checks.py": "checks every params.yaml section before a stage runs",
}
# Modules whose imports are not followed: they only check values with the code they import, so
# that code shapes no output of the stages that run them (each stage imports what it runs itself).
CHECKS = {"pipeline/_checks.py"}


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
    """Project files ``script`` can run (paths relative to the project root): its imports, theirs,
    and so on."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        if path.relative_to(ROOT).as_posix() in CHECKS:
            continue
        names = imported(path)
        names |= {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 1)}  # packages run first
        todo += [f for n in names if n.split(".")[0] in PACKAGES and (f := module_file(n))]
    return {p.relative_to(ROOT).as_posix() for p in seen}


def fingerprint(script: Path) -> str:
    """sha256 (16 hex digits) of the files of ``script``'s closure that shape results (all but
    :data:`EXEMPT`): the code its DVC stage depends on."""
    digest = hashlib.sha256()
    for name in sorted(closure(script) - EXEMPT.keys()):
        digest.update(f"{name}\0".encode())
        digest.update((ROOT / name).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]
