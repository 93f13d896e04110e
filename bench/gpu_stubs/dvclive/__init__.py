"""Stand-in for DVCLive on the lent GPU machine, whose image lacks it (and dvc, which it needs).

`bench/gpu_check.sh` puts this folder on PYTHONPATH only when ``import dvclive`` fails there, so the
trainer's CUDA path can run; it keeps the metrics in memory and writes nothing. Real runs use the
real package (a required dependency in pyproject.toml).
"""
from __future__ import annotations


class Live:
    def __init__(self, dir: str = "dvclive", **_: object) -> None:
        self.dir, self.step, self.metrics = dir, 0, {}

    def log_metric(self, name: str, value: float) -> None:
        self.metrics.setdefault(name, []).append((self.step, value))

    def next_step(self) -> None:
        self.step += 1

    def end(self) -> None:
        pass
