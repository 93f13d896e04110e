"""``ferdata predict --help`` states the --keypoints default as predict applies it: landmarks when a dataset's
own landmarks placed most of the training faces placed by points (README), not only when they placed all."""
from __future__ import annotations

import re

from typer.testing import CliRunner

from ferdata.cli import app


def test_keypoints_help_states_the_majority_rule_the_code_applies():
    from fermodels.predictor import training_keypoints

    assert training_keypoints({"annotations": 9, "embedded": 1}) == "landmarks"     # a mixed model: landmarks
    out = CliRunner().invoke(app, ["predict", "--help"], terminal_width=200).output
    text = " ".join(out.split())
    said = re.search(r"--keypoints.*?else detector\.", text).group(0)
    assert "landmarks only" not in said, said
    assert "most" in said, said
