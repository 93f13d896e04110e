"""resume_state: last.pt resumes only its own run, and the warning says why it does not."""
from __future__ import annotations

import logging

import pytest
import torch

from fermodels.runstate import CHECKPOINT_KEYS, FORMAT, LAST, resume_state

PARAMS = {"epochs": 2, "lr": 0.1, "seed": 0}
DATA = {"datasets": ["sample"], "train": {"a.tar": "0" * 64}, "val": {}, "face_backends": ["retinaface"]}


def save_last(ckpt: str, params: dict, data: dict, **position) -> None:
    state = {k: None for k in CHECKPOINT_KEYS} | {"format": FORMAT, "params": params, "data": data, **position}
    torch.save(state, f"{ckpt}/{LAST}")


def test_the_same_run_resumes(tmp_path):
    save_last(str(tmp_path), PARAMS, DATA)
    assert resume_state(tmp_path, PARAMS, DATA)["params"] == PARAMS


def test_a_params_change_is_not_blamed_on_an_older_version(tmp_path, caplog):
    save_last(str(tmp_path), {**PARAMS, "epochs": 5}, DATA)
    with caplog.at_level(logging.WARNING, "fermodels.runstate"):
        assert resume_state(tmp_path, PARAMS, DATA) is None
    assert f"{tmp_path / LAST} is from another run (it differs in epochs): starting over" in caplog.text
    assert "earlier version" not in caplog.text


@pytest.mark.parametrize("old_params, old_data, lacks", [
    ({"epochs": 2, "lr": 0.1}, DATA, "seed"),
    (PARAMS, {k: v for k, v in DATA.items() if k != "face_backends"}, "data.face_backends"),
])
def test_a_checkpoint_lacking_what_training_records_names_it(tmp_path, caplog, old_params, old_data, lacks):
    save_last(str(tmp_path), old_params, old_data)
    with caplog.at_level(logging.WARNING, "fermodels.runstate"):
        assert resume_state(tmp_path, PARAMS, DATA) is None
    assert (f"(it differs in {lacks}; it is from an earlier version of this package, which did not record "
            f"{lacks}): starting over") in caplog.text


def _log(live, rows: dict[str, list[int]]) -> None:
    (live / "metrics.json").write_text("{}")
    for name, steps in rows.items():
        tsv = live / "plots" / "metrics" / f"{name}.tsv"
        tsv.parent.mkdir(parents=True, exist_ok=True)
        tsv.write_text("timestamp\tstep\tvalue\n" + "".join(f"0\t{s}\t0.5\n" for s in steps))


@pytest.mark.parametrize("position, logged, resumes", [
    ({"epoch": 1, "batch": 4, "epoch_steps": 4}, {"train/ce": [0, 1], "val/accuracy": [0, 1]}, True),
    ({"epoch": 1, "batch": 2, "epoch_steps": 4}, {"train/ce": [0], "val/accuracy": [0]}, True),   # mid-epoch 1
    ({"epoch": 1, "batch": 4, "epoch_steps": 4}, {"train/ce": [0, 1], "val/accuracy": [0]}, False),
    ({"epoch": 1, "batch": 4, "epoch_steps": 4}, {}, False),                     # the logs were removed
    ({"epoch": 0, "batch": 2, "epoch_steps": 4}, {}, True),                      # nothing finished yet
])
def test_a_run_resumes_only_while_its_logs_hold_every_finished_epoch(tmp_path, caplog, position, logged, resumes):
    ckpt, live = tmp_path / "ckpt", tmp_path / "live"
    ckpt.mkdir()
    live.mkdir()
    save_last(str(ckpt), PARAMS, DATA, **position)
    if logged:
        _log(live, logged)
    with caplog.at_level(logging.WARNING, "fermodels.runstate"):
        state = resume_state(ckpt, PARAMS, DATA, live)
    assert (state is not None) == resumes
    assert ("lacks the logs of epoch(s)" in caplog.text) != resumes
    if not logged and not resumes:
        assert "has finished 2 epoch(s), but" in caplog.text
        assert "lacks the logs of epoch(s) 0-1 (removed?)" in caplog.text


def test_missing_epochs_are_named_as_runs():
    from fermodels.runstate import _spans

    assert _spans([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8" and _spans([3]) == "3" and _spans([]) == ""
