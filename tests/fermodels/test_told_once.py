"""Under torchrun, and over the train and val splits: a warning told once per run (review h52)."""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.fermodels.helpers import copy_shards, make_params, unrecorded


UNRECORDED = "shards of an earlier version"
BACKENDS = "ran with different options for different datasets"


def _other_options(d: dict) -> None:
    d["detect"] = {"backend": "annotations", "options": {"det_size": 320}}
    d["face_backends"] = {"annotations": d["num_samples"]}


def _same_options(d: dict) -> None:
    d["detect"] = {"backend": "annotations", "options": {}}
    d["face_backends"] = {"annotations": d["num_samples"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, shards: str, out: str, preprocess: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import fermodels.train as trainer

    logger = logging.getLogger("fermodels")
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)     # as pipeline._args.log_level
    logger.addHandler(logging.FileHandler(Path(out) / f"rank{rank}.log"))
    trainer.train(shards, make_params(epochs=1), Path(out) / "ckpt", Path(out) / "live", preprocess)


def test_a_warning_about_the_shards_is_told_by_rank_0_only(tiny_shards, preprocess, tmp_path):
    """Every rank read the same shards and warned alike: 2 ranks, 2 copies of each warning."""
    old = copy_shards(tiny_shards, tmp_path / "data" / "tiny" / "shards", unrecorded)
    mp.start_processes(_rank, args=(_free_port(), str(old), str(tmp_path), preprocess), nprocs=2,
                       start_method="fork")
    logs = [(tmp_path / f"rank{r}.log").read_text() for r in (0, 1)]
    assert logs[0].count(UNRECORDED) == 1
    assert UNRECORDED not in logs[1]


def test_a_warning_every_split_would_give_is_told_once(tiny_shards, preprocess, tmp_path, caplog, one_thread):
    """The train and val splits of the same datasets told the same backend-options warning twice."""
    from fermodels.train import train

    a = copy_shards(tiny_shards, tmp_path / "a" / "shards", _same_options)
    b = copy_shards(tiny_shards, tmp_path / "b" / "shards", _other_options)
    caplog.set_level(logging.WARNING, logger="fermodels")
    train([a, b], make_params(epochs=1, datasets=["a", "b"], epoch_samples=8), tmp_path / "ckpt",
          tmp_path / "live", preprocess)
    assert caplog.text.count(BACKENDS) == 1


@pytest.mark.parametrize("rank, told", [("0", True), ("1", False)])
def test_the_whole_params_check_warns_once_per_machine_under_torchrun(tmp_path, rank, told):
    """Every stage script checks params.yaml whole; under torchrun each rank repeated its warnings."""
    import subprocess
    import sys

    import yaml

    repo = Path(__file__).resolve().parents[2]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["model_kwargs"] = {"pretrained": str(tmp_path / "absent.pth")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run = subprocess.run([sys.executable, "-m", "pipeline.align", "detect", "aligned"], cwd=tmp_path,
                         capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(repo), "RANK": rank, "LOCAL_RANK": rank})
    assert ("is not on this machine" in run.stderr) == told, run.stderr
