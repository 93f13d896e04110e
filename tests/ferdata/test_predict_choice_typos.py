"""`ferdata predict --keypoints landmark` or `--device gpu` is a usage error told at once, as README says of a
malformed option (`--every 0`): it was told after the inputs were walked and the model loaded, exit status 1,
without naming the option (audit h116)."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ferdata.cli import app


@pytest.mark.parametrize("flag, value", [("--keypoints", "landmark"), ("--device", "gpu"), ("--device", "cuda:x")])
def test_a_misspelt_choice_of_predict_is_a_usage_error_before_the_model_loads(tmp_path, flag, value):
    image = tmp_path / "x.jpg"
    image.write_bytes(b"")
    res = CliRunner().invoke(app, ["predict", str(image), "-m", str(tmp_path / "missing.pt"), flag, value])
    assert res.exit_code == 2, res.output
    assert flag in res.output and repr(value) in res.output
