"""Tiny shards made by the real stages, and trainer params for fast tests.

``tiny_shards`` writes a small dataset in AffectNet's official layout (images + CSV with
68 landmarks), then runs run_detect (``annotations`` backend), run_align, run_derive and
run_shard on it - the same functions as ``dvc repro``. Classes are drawn as colour tints,
so a model learns them in a few steps. Built once per test session.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ferdata.params import load_params
from fermodels.runstate import preprocess_record

from tests.fermodels.helpers import REPO, build_shards, ferdata_quiet, make_params


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """~31 train / ~11 val / 14 test samples of 7 classes in shards of 4 (data/tiny/shards layout)."""
    with ferdata_quiet():
        return build_shards(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="session")
def preprocess() -> dict:
    return preprocess_record(load_params(REPO / "params.yaml"))


@pytest.fixture(scope="session")
def tiny8_shards(tmp_path_factory) -> Path:
    """A second dataset with all 8 classes (Contempt included): cross-dataset and class checks."""
    return build_shards(tmp_path_factory.mktemp("data") / "tiny8", per_class=3, test_per_class=2, classes=range(8),
                        maxcount=8, protocol="affectnet8", seed=1)


@pytest.fixture(scope="session")
def tiny_run(tiny_shards, preprocess, tmp_path_factory) -> dict:
    """The tiny model trained for 3 epochs on ``tiny_shards`` (checkpoints + DVCLive logs)."""
    from fermodels.train import train

    out = tmp_path_factory.mktemp("run")
    params = make_params(epochs=3)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = train(tiny_shards, params, out / "ckpt", out / "live", preprocess)
    finally:
        torch.set_num_threads(before)
    return {"ckpt": out / "ckpt", "live": out / "live", "params": params, "best": best, "shards": tiny_shards}

