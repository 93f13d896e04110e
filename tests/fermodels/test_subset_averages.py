"""A named test subset's mean class accuracy and macro-F1 say which classes they average over, as the whole
test set's and each dataset's do."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from fermodels.evaluate import EvalParams, evaluate

from tests.fermodels.helpers import build_shards, ferdata_quiet

PARAMS = EvalParams(split="test", batch_size=4, workers=0, device="cpu", flip_tta=False, batch_check=False, seed=0)


def test_a_subset_of_two_classes_says_its_averages_run_over_those_two(tiny_run, tmp_path, one_thread):
    pose = {"test_2_c3_001", "test_2_c6_000"}                         # Surprise and Anger faces only
    with ferdata_quiet():
        shards = build_shards(tmp_path / "tiny", subsets={"pose45": pose})
    m = evaluate(tiny_run["ckpt"] / "best.pt", shards, PARAMS, tmp_path / "eval")
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())["per_subset"]["pose45"]
    assert saved["num_samples"] == 2 and saved["averaged_over"] == ["Surprise", "Anger"]
    assert saved["mean_class_accuracy"] == pytest.approx(
        np.mean([saved["per_class"][c]["recall"] for c in saved["averaged_over"]]))
    assert m["averaged_over"] == list(m["classes"])                  # the whole test set holds all seven
    both = evaluate(tiny_run["ckpt"] / "best.pt", [shards, tiny_run["shards"]], replace(PARAMS), tmp_path / "both",
                    ["tagged", "plain"])
    assert both["per_subset"]["tagged/pose45"]["averaged_over"] == ["Surprise", "Anger"]
