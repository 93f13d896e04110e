"""`fermodels info NAME` lists the keywords train.model_kwargs takes: the error for a misspelt keyword sends the
user there (audit h116)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ferdata.params import load_params
from fermodels.cli import app
from fermodels.registry import model_kwargs
from fermodels.trainparams import train_section

ROOT = Path(__file__).resolve().parents[2]


def test_the_command_a_misspelt_model_keyword_names_lists_the_models_keywords():
    params = load_params(ROOT / "params.yaml")
    params["train"] = {**params["train"], "model": "resnet18_heatmap_112", "model_kwargs": {"heatmap_centre": "x"}}
    with pytest.raises(ValueError, match="lists its keywords") as err:
        train_section(params, announce=False)
    command = re.search(r"`fermodels (info [\w]+)`", str(err.value)).group(1).split()
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    line = next((x for x in result.output.splitlines() if x.startswith("keywords:")), None)
    assert line is not None, result.output
    for key, default in model_kwargs("resnet18_heatmap_112", {}).items():     # pretrained, heatmap_centres
        assert f"{key}={default!r}" in line
