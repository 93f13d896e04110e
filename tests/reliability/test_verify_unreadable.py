"""`ferdata verify` on a split folder this user may not read (audit h134): said as such, not as a copy
that lost the split's _info.json. Root reads every folder: there the check runs in a child process whose
bounding set lacks the capabilities that override permissions (``setpriv``)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _problems(shards: Path) -> list[str]:
    code = "import json, sys; from ferdata.verify import verify_shards; print(json.dumps(verify_shards(sys.argv[1])))"
    command = [sys.executable, "-c", code, str(shards)]
    if os.access(shards / "val", os.R_OK):           # root: drop what lets it read any folder
        if not shutil.which("setpriv"):
            pytest.skip("this user reads folders without permission and setpriv is not installed")
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *command]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_split_folder_that_cannot_be_read_is_named_unreadable(tiny_shards, tmp_path):
    """A split folder without read permission was "no _info.json (the shard stage writes one for every
    split; the copy is incomplete)": the user copied again what was all there."""
    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards)
    (shards / "val").chmod(0)
    try:
        problems = _problems(shards)
    finally:
        (shards / "val").chmod(0o755)
    assert [p for p in problems if p.startswith(f"{shards / 'val'}: unreadable (Permission denied)")], problems
    assert not [p for p in problems if "copy is incomplete" in p], problems
