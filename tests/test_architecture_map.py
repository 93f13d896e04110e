"""docs/architecture.md's module map names every module of the packages, and only modules that exist (audit h123):
README.md says the page maps every module to its one concept, so a module added or removed is told there."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAP = ROOT / "docs" / "architecture.md"
PACKAGES = ("ferdata", "fermodels", "pipeline")
TABLE = re.compile(r"^`(\w+)`[^\n]*:\n\n\|[^\n]*\n\|[-| ]+\n((?:\|[^\n]*\n)+)", re.M)


def _expanded(name: str) -> list[str]:
    """``stages/{detect,align}`` -> ``stages/detect``, ``stages/align``; other names as they are."""
    braces = re.fullmatch(r"(.*)\{([^}]*)\}(.*)", name)
    if not braces:
        return [name]
    head, alternatives, tail = braces.groups()
    return [f"{head}{a.strip()}{tail}" for a in alternatives.split(",")]


def named_in_map() -> dict[str, list[str]]:
    """package -> the module names of its table's first column (``faces/*``, ``sample/`` kept as written)."""
    text = MAP.read_text(encoding="utf-8")
    tables = {m.group(1): m.group(2) for m in TABLE.finditer(text)}
    return {package: [name for row in rows.splitlines()
                      for cell in [row.split("|")[1]] for raw in re.findall(r"`([^`]+)`", cell)
                      for name in _expanded(raw)]
            for package, rows in tables.items()}


def _modules(package: str) -> set[str]:
    """``faces/embedded``, ``cli`` ... of a package's .py files, package __init__ files left out."""
    root = ROOT / package
    return {p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.py")
            if p.name != "__init__.py" and "__pycache__" not in p.parts}


def _covers(name: str, module: str) -> bool:
    if name.endswith(("/*", "/")):
        return module.startswith(name.rstrip("*"))
    return module == name


def test_every_package_has_a_table():
    assert set(PACKAGES) <= set(named_in_map()), f"docs/architecture.md has no module table for " \
        f"{sorted(set(PACKAGES) - set(named_in_map()))}"


def test_every_module_is_in_the_map():
    named = named_in_map()
    missing = {package: sorted(m for m in _modules(package) if not any(_covers(n, m) for n in named.get(package, ())))
               for package in PACKAGES}
    assert not any(missing.values()), f"modules docs/architecture.md does not name: {missing}"


def test_every_module_the_map_names_exists():
    stale = [f"{package}/{name}" for package, names in named_in_map().items() for name in names
             if not any(_covers(name, m) for m in _modules(package))]
    assert not stale, f"docs/architecture.md names modules that do not exist: {stale}"
