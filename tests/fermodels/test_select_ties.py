"""best.pt on a tie between epochs: the earlier one (README), also where float rounding splits the tie."""
from __future__ import annotations

import numpy as np
import torch

from ferdata.classes import class_names
from fermodels.metrics import metrics_from_confusion

from tests.fermodels.helpers import make_params


def _confusion(recalls: tuple[int, ...]) -> np.ndarray:
    """Classes 0..2 with 10 val faces each, ``recalls[c]`` of class c right, the rest called the next class."""
    cm = np.zeros((7, 7), np.int64)
    for c, right in enumerate(recalls):
        cm[c, c], cm[c, (c + 1) % 3] = right, 10 - right
    return cm


def test_epochs_tied_on_the_selection_metric_keep_the_earlier(tiny_shards, preprocess, tmp_path, one_thread,
                                                               monkeypatch):
    """Recalls 3/10, 2/10, 1/10 and their mirror image: the same mean class accuracy and accuracy, which numpy's
    mean of the recalls rounded to 0.19999999999999998 and 0.20000000000000004, so epoch 1 replaced epoch 0."""
    import fermodels.train as train_module

    scores = [metrics_from_confusion(_confusion(r), class_names(7)) for r in ((3, 2, 1), (1, 2, 3))]
    epochs = iter(scores)
    monkeypatch.setattr(train_module, "score_split", lambda *a, **k: next(epochs))
    best = train_module.train(tiny_shards, make_params(epochs=2, select_metric="mean_class_accuracy"),
                              tmp_path / "ckpt", tmp_path / "live", preprocess)
    assert best["epoch"] == 0
    assert torch.load(tmp_path / "ckpt" / "best.pt", weights_only=True)["epoch"] == 0
