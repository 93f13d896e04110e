"""A misspelt `--backend` of `ferdata prepare` / `detect` is named as the option, a usage error: it was told as a
bad `datasets.<name>.detect.backend` in params.yaml, a key the user had not set (audit h116)."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ferdata.cli import app

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


@pytest.mark.parametrize("command", [["prepare"], ["detect", "--part", "1/2"]])
def test_a_misspelt_backend_option_is_named_as_the_option(tmp_path, command):
    (tmp_path / "happy").mkdir()
    res = CliRunner().invoke(app, [*command, "folder", "--root", str(tmp_path), "--params", str(PARAMS),
                                   "--backend", "embeded"])
    assert res.exit_code == 2, (res.output, res.exception)
    assert "--backend" in res.output and "unknown face backend 'embeded'" in res.output
    assert "datasets.folder.detect" not in res.output
