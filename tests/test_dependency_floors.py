"""pyproject.toml's lower bounds: every release they admit must work beside the rest (numpy 2 above
all). Each release listed here was installed beside this project's other dependencies and failed."""
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
BROKEN = {
    # click 8.2+ (dvc's celery needs 8.3.1+): 0.12 fails at start, 0.15 in --help, 0.17.0-0.17.3 in a command's --help
    "typer": ["0.12.0", "0.15.0", "0.17.0", "0.17.3"],
    "onnxruntime": ["1.17.0", "1.18.1"],                  # ImportError beside numpy 2 (built for numpy 1)
    "scikit-image": ["0.22.0"],                           # ValueError: numpy.dtype size changed
    "matplotlib": ["3.8.0", "3.8.3"],                     # ImportError: numpy.core.multiarray failed to import
    "dlib-bin": ["19.24.2", "19.24.2.post1"],             # RuntimeError: Unsupported image type (numpy 2 arrays)
}


def requirements() -> dict[str, Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {(r := Requirement(d)).name.lower(): r for d in deps}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_no_floor_admits_a_release_that_fails_beside_numpy_2(name):
    req = requirements()[name]
    admitted = [v for v in BROKEN[name] if req.specifier.contains(v, prereleases=True)]
    assert not admitted, f"{req} admits {admitted}, which fail beside the other dependencies"
