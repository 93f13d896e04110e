"""The end of a run says where its outputs are (review h52)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from tests.fermodels.helpers import make_params


def test_a_finished_run_says_where_its_outputs_are(tiny_shards, preprocess, tmp_path, caplog, one_thread):
    """The last lines of a training run were the last epoch's; which epoch best.pt holds and where
    was never said."""
    from fermodels.train import train

    caplog.set_level(logging.INFO, logger="fermodels")
    train(tiny_shards, make_params(epochs=1), tmp_path / "ckpt", tmp_path / "live", preprocess)
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training done: ")]
    assert done == [f"training done: {tmp_path / 'ckpt' / 'best.pt'} is epoch 0 (val accuracy "
                    f"{json.loads((tmp_path / 'live' / 'metrics.json').read_text())['val']['accuracy']:.4f}), "
                    f"last.pt beside it; DVCLive logs in {tmp_path / 'live'}"]


def test_evaluate_says_where_it_wrote(tiny_run, tmp_path, caplog):
    from fermodels.evaluate import evaluate, evaluate_section
    from ferdata.params import load_params

    _, params = evaluate_section(load_params(Path(__file__).resolve().parents[2] / "params.yaml"))
    caplog.set_level(logging.INFO, logger="fermodels")
    import dataclasses

    quick = dataclasses.replace(params, batch_check=False, workers=0, device="cpu")
    evaluate(tiny_run["ckpt"] / "best.pt", tiny_run["shards"], quick, tmp_path / "eval", ["tiny"])
    assert f"written to {tmp_path / 'eval'} (metrics.json, confusion.json, confusion.png)" in caplog.text


def test_prepare_ends_saying_where_the_shards_and_the_drops_are(tmp_path, monkeypatch):
    """Its last lines counted the drops by reason, but named neither the shards nor the lists."""
    from typer.testing import CliRunner

    import ferdata.prepare
    from ferdata.cli import app

    (tmp_path / "params.yaml").write_text((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    report = {"kept": 3, "dropped_total": 1, "dropped": {"no_face": 1}}
    monkeypatch.setattr(ferdata.prepare, "prepare", lambda *a, **k: {"detect": report})
    out = tmp_path / "data"
    result = CliRunner().invoke(app, ["prepare", "affectnet", "--root", str(tmp_path), "--out", str(out),
                                      "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == (
        f"shards in {out}/affectnet/shards; each drop listed in {out}/affectnet/detect/dropped.jsonl and "
        f"{out}/affectnet/aligned/dropped.jsonl; check the faces with `ferdata show {out}/affectnet/shards`")


def test_an_epoch_says_how_far_it_is_off_a_terminal(tiny_shards, preprocess, tmp_path, caplog, monkeypatch,
                                                    one_thread):
    """Training told nothing until an epoch ended (an hour of AffectNet on one GPU) when its output
    went to a log file, as under `dvc repro`: now a plain line a minute (every batch here)."""
    import io
    import sys

    import ferdata.progress
    from fermodels.train import train

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr(ferdata.progress, "PLAIN_EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger="ferdata.progress")
    train(tiny_shards, make_params(epochs=1), tmp_path / "ckpt", tmp_path / "live", preprocess)
    lines = [r.getMessage() for r in caplog.records if r.name == "ferdata.progress"]
    steps = len(lines)
    assert steps >= 2 and lines[0].startswith(f"epoch 0: 1 of {steps} batches so far (")
    assert lines[-1].startswith(f"epoch 0: {steps} of {steps} batches so far (")
