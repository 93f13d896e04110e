"""DVC shows a metric and a param that share a name (``train.lr``: the logged learning rate and
params.yaml's) only as ``<file>:<name>`` columns: ``dvc exp show --keep 'train\\.lr'`` then matches
neither, and ``dvc metrics diff`` lists a ``train.lr`` that is not the setting. No logged metric
may be named as a params.yaml key."""
from __future__ import annotations

import yaml

from ferdata.codeclosure import ROOT
from fermodels import trainlog


class Recorder:
    def __init__(self) -> None:
        self.names: list[str] = []

    def log_metric(self, name: str, value: float) -> None:
        self.names.append(name)

    def next_step(self) -> None:
        pass


def params_keys(node, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in node.items():
        keys.add(f"{prefix}{key}")
        if isinstance(value, dict):
            keys |= params_keys(value, f"{prefix}{key}.")
    return keys


def test_no_training_metric_is_named_as_a_params_key():
    live = Recorder()
    trainlog.log_epoch(live, 0, [({"ce": 2.0}, 4, 0.0, [1, 3, 0, 0, 0, 0, 0])], 0.1, 1.0,
                       {"accuracy": 0.5, "mean_class_accuracy": 0.5, "macro_f1": 0.5})
    params = params_keys(yaml.safe_load((ROOT / "params.yaml").read_text()))
    clashes = sorted(n.replace("/", ".") for n in live.names if n.replace("/", ".") in params)
    assert live.names and not clashes, f"metrics named as params.yaml keys: {clashes}"
