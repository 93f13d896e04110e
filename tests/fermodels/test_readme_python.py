"""README's "From Python" blocks run as written: each in a fresh interpreter, from a folder laid out
as a repository after `dvc repro` (the tiny run's shards and checkpoint where the sample's would be)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import cv2
import pytest

from tests.fermodels.helpers import REPO
from tests.reliability.corpus import child_env


def readme_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_section_has_its_blocks():
    assert len(readme_blocks()) == 3


@pytest.mark.parametrize("index", range(3))
def test_a_readme_python_block_runs_as_written(index, tiny_run, tmp_path):
    from skimage import data

    (tmp_path / "data" / "sample").mkdir(parents=True)
    os.symlink(tiny_run["shards"], tmp_path / "data" / "sample" / "shards")
    (tmp_path / "runs" / "train").mkdir(parents=True)
    os.symlink(tiny_run["ckpt"], tmp_path / "runs" / "train" / "ckpt")
    cv2.imwrite(str(tmp_path / "photo.jpg"), data.astronaut()[..., ::-1])       # a real face photo
    code = readme_blocks()[index] + "\nprint('block ran')\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env=child_env(), timeout=600)
    assert out.returncode == 0 and "block ran" in out.stdout, out.stderr[-3000:]
    if index == 2:                                            # the astronaut's face was found and scored
        assert "'Neutral'" in out.stdout, out.stdout
