"""The package as a user installs it: a wheel and an sdist built from this checkout, not the checkout."""
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The tracked sources a build reads, copied: the checkout's build/ may hold an earlier build's files,
    and its data/, runs/ and .dvc/cache are no business of a build."""
    src = tmp_path_factory.mktemp("src")
    for name in ("ferdata", "fermodels", "pipeline", "tests"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "params.yaml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    return src


def build(source: Path, out: Path, kind: str) -> Path:
    subprocess.run([sys.executable, "-c", f"import sys, setuptools.build_meta as b; b.build_{kind}(sys.argv[1])",
                    str(out)], cwd=source, check=True, capture_output=True)
    (found,) = out.glob("ferdata-*.whl" if kind == "wheel" else "ferdata-*.tar.gz")
    return found


def test_the_wheel_carries_the_default_params_and_ferdata_params_prints_them(source, tmp_path):
    """Installed from a wheel, `ferdata prepare/detect/sample/cache` need a params.yaml that only a
    checkout had: the wheel carries it and `ferdata params` writes it out, outside any checkout."""
    wheel = build(source, tmp_path / "dist", "wheel")
    with zipfile.ZipFile(wheel) as z:
        assert "ferdata/params.yaml" in z.namelist(), z.namelist()
        assert z.read("ferdata/params.yaml") == (ROOT / "params.yaml").read_bytes()
        assert not [n for n in z.namelist() if n.startswith(("tests/", "pipeline/")) or "__pycache__" in n]
        z.extractall(tmp_path / "site")
    run = subprocess.run([sys.executable, "-c", "from ferdata.cli import main; main()", "params"],
                         cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path / "site")})
    assert run.returncode == 0, run.stderr
    assert run.stdout.encode() == (ROOT / "params.yaml").read_bytes()


def test_the_sdist_carries_the_params_and_no_partial_test_suite(source, tmp_path):
    """setuptools adds tests/test*.py to an sdist by default: 7 top-level test files without conftest.py,
    tests/ferdata, pipeline/ or dvc.yaml, none of which can run from it. A wheel built from the sdist
    needs params.yaml in it too."""
    sdist = build(source, tmp_path, "sdist")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    assert not [n for n in names if "/tests/" in n], names
    assert any(n.endswith("/params.yaml") and n.count("/") == 1 for n in names), names
