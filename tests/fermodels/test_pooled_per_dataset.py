"""A model scored on several datasets at once: ``per_dataset`` gave each dataset's figures but neither the classes
its averages ran over (they differ by dataset: RAF-DB's 7 beside AffectNet-8's 8) nor its confusion matrix, so the
pooled precision and macro-F1 could not be recomputed from it (a class one dataset predicts only wrongly has
precision 0 there, whatever its count)."""
from __future__ import annotations

import json

import numpy as np

from fermodels.evaluate import EvalParams, evaluate
from fermodels.metrics import metrics_from_confusion

PARAMS = EvalParams(split="test", batch_size=4, workers=0, device="cpu", flip_tta=False, batch_check=False, seed=0)


def test_per_dataset_figures_add_up_to_the_pooled_ones(tiny_run, tiny8_shards, tmp_path):
    m = evaluate(tiny_run["ckpt"] / "best.pt", [tiny_run["shards"], tiny8_shards], PARAMS, tmp_path, ["tiny", "tiny8"])
    saved = json.loads((tmp_path / "metrics.json").read_text())
    per = saved["per_dataset"]
    assert set(per) == {"tiny", "tiny8"}
    again = metrics_from_confusion(sum(np.array(d["confusion_matrix"]) for d in per.values()), saved["classes"])
    for k in ("accuracy", "mean_class_accuracy", "macro_f1", "num_samples", "per_class"):
        assert again[k] == m[k], k
    for d in per.values():
        cm = np.array(d["confusion_matrix"])
        assert d["averaged_over"] == [c for c, n in zip(saved["classes"], cm.sum(1)) if n]
        assert metrics_from_confusion(cm, saved["classes"])["macro_f1"] == d["macro_f1"]
