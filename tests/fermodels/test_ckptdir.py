"""The checkpoint folder's pending best.pt (fermodels.ckptdir), the DVCLive logs as resuming reads
and repairs them (fermodels.livelog), and resume_state's best.pt check."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from fermodels.ckptdir import BEST, LAST, PENDING_BEST, saved_at, settle_best
from fermodels.livelog import logged_epochs, repair_summary, truncate_live
from fermodels.runstate import resume_state
from tests.fermodels.helpers import save_last

PARAMS = {"epochs": 2, "lr": 0.1, "seed": 0}
DATA = {"datasets": ["sample"], "train": {"a.tar": "0" * 64}, "val": {}, "face_backends": ["retinaface"]}


def history(live, name: str, text: str):
    tsv = live / "plots" / "metrics" / f"{name}.tsv"
    tsv.parent.mkdir(parents=True, exist_ok=True)
    tsv.write_text(text)
    return tsv


# --- ckptdir -------------------------------------------------------------------------------------------

def test_unreadable_pending_weights_are_removed_when_there_is_no_last_pt(tmp_path):
    """Neither says a step: two Nones are no match, and the pending file is not promoted."""
    (tmp_path / PENDING_BEST).write_bytes(b"not a checkpoint")
    settle_best(tmp_path)
    assert not (tmp_path / PENDING_BEST).exists() and not (tmp_path / BEST).exists()


def test_pending_weights_of_the_same_step_but_another_best_epoch_are_removed(tmp_path):
    torch.save({"step": 5, "best": {"epoch": 0}}, tmp_path / LAST)
    torch.save({"step": 5, "best": {"epoch": 1}}, tmp_path / PENDING_BEST)
    torch.save({"step": 3, "best": {"epoch": 0}}, tmp_path / BEST)
    settle_best(tmp_path)
    assert not (tmp_path / PENDING_BEST).exists()
    assert torch.load(tmp_path / BEST)["step"] == 3


def test_a_best_pt_beside_a_last_pt_of_no_best_epoch_is_another_runs_and_removed(tmp_path):
    """A run started over another's folder saves a last.pt of best epoch -1 and then removes the
    other's best.pt; killed between the two, the next start removes it."""
    torch.save({"step": 3, "best": {"epoch": -1}}, tmp_path / LAST)
    torch.save({"step": 40, "best": {"epoch": 3}}, tmp_path / BEST)
    settle_best(tmp_path)
    assert not (tmp_path / BEST).exists()
    torch.save({"step": 9, "best": {"epoch": 0}}, tmp_path / LAST)
    torch.save({"step": 9, "best": {"epoch": 0}}, tmp_path / BEST)
    settle_best(tmp_path)
    assert (tmp_path / BEST).exists()


def test_saved_at_reads_step_and_best_epoch(tmp_path):
    torch.save({"step": 7, "best": {"epoch": 2}}, tmp_path / LAST)
    assert saved_at(tmp_path / LAST) == (7, 2)


def test_saved_at_out_of_memory_is_raised_not_read_as_no_checkpoint(tmp_path, monkeypatch):
    """None ("no checkpoint that says") made resume_state start over and replace a whole run's checkpoints
    when the machine could not load them (audit h68's left)."""
    import fermodels.ckptdir as ckptdir

    torch.save({"step": 7, "best": {"epoch": 2}}, tmp_path / LAST)

    def no_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9000 bytes")
    monkeypatch.setattr(ckptdir.torch, "load", no_memory)
    with pytest.raises(OSError, match="not enough memory to load"):
        saved_at(tmp_path / LAST)


# --- resume_state's best.pt check ---------------------------------------------------------------------

@pytest.mark.parametrize("best_step, best_epoch, resumes", [(4, 1, True), (2, 0, False)])
def test_a_run_resumes_when_best_pt_is_the_epoch_last_pt_records(tmp_path, caplog, best_step, best_epoch, resumes):
    save_last(tmp_path, PARAMS, DATA, epoch=1, batch=0, step=4, best={"epoch": 1})
    torch.save({"step": best_step, "best": {"epoch": best_epoch}}, tmp_path / BEST)
    with caplog.at_level(logging.WARNING, "fermodels.runstate"):
        assert (resume_state(tmp_path, PARAMS, DATA) is not None) == resumes
    assert ("records epoch 1 as the best" in caplog.text) != resumes


@pytest.mark.parametrize("best", [0, 1])
def test_a_run_whose_best_pt_is_missing_starts_over(tmp_path, caplog, best):
    save_last(tmp_path, PARAMS, DATA, epoch=2, batch=0, step=4, best={"epoch": best})
    with caplog.at_level(logging.WARNING, "fermodels.runstate"):
        assert resume_state(tmp_path, PARAMS, DATA) is None
    assert f"records epoch {best} as the best, but best.pt is missing" in caplog.text


def test_a_run_saved_without_epoch_steps_counts_its_epoch_unfinished(tmp_path):
    """An older last.pt without epoch_steps: its epoch is not counted finished, so epoch 1's logs are not asked for."""
    (tmp_path / "ckpt").mkdir()
    save_last(tmp_path / "ckpt", PARAMS, DATA, epoch=1, batch=4)
    history(tmp_path / "live", "train/ce", "timestamp\tstep\tce\n0\t0\t0.5\n")
    assert resume_state(tmp_path / "ckpt", PARAMS, DATA, tmp_path / "live") is not None


def test_a_run_at_the_end_of_its_epoch_needs_that_epochs_logs(tmp_path, caplog):
    (tmp_path / "ckpt").mkdir()
    save_last(tmp_path / "ckpt", PARAMS, DATA, epoch=1, batch=4, epoch_steps=4)
    history(tmp_path / "live", "train/ce", "timestamp\tstep\tce\n0\t0\t0.5\n")
    with caplog.at_level(logging.WARNING, "fermodels.runstate"):
        assert resume_state(tmp_path / "ckpt", PARAMS, DATA, tmp_path / "live") is None
    assert "lacks the logs of epoch(s) 1 (removed?)" in caplog.text


def test_a_data_change_alone_starts_over(tmp_path, caplog):
    save_last(tmp_path, PARAMS, {**DATA, "code": "old"})
    with caplog.at_level(logging.WARNING, "fermodels.runstate"):
        assert resume_state(tmp_path, PARAMS, {**DATA, "code": "new"}) is None
    assert "it differs in the training code (data.code)" in caplog.text


def test_another_worker_count_still_resumes(tmp_path):
    save_last(tmp_path, {**PARAMS, "workers": 2}, DATA)
    assert resume_state(tmp_path, {**PARAMS, "workers": 8}, DATA) is not None


# --- livelog -------------------------------------------------------------------------------------------

def test_a_history_row_cut_short_is_no_logged_epoch(tmp_path):
    history(tmp_path, "train/ce", "timestamp\tstep\tce\n0\t0\t0.5\n7")
    assert logged_epochs(tmp_path) == {0}


def test_a_whole_metrics_json_is_left_as_it_is(tmp_path):
    history(tmp_path, "train/ce", "timestamp\tstep\tce\n0\t0\t0.5\n")
    (tmp_path / "metrics.json").write_text('{"mine": 1}')
    repair_summary(tmp_path, 1)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"mine": 1}


def test_metrics_json_is_rebuilt_from_the_rows_before_the_resumed_epoch(tmp_path):
    history(tmp_path, "train/ce", "timestamp\tstep\tce\n0\t0\t0.5\n1\t1\t0.25\n2\t2\t0.125\n")
    history(tmp_path, "val/n", "timestamp\tstep\tn\n0\t0\t10\n1\t1\t-3\n2\t2\t9\n")
    (tmp_path / "metrics.json").write_text('{"train": {"ce"')          # cut off
    repair_summary(tmp_path, 2)
    rebuilt = json.loads((tmp_path / "metrics.json").read_text())
    assert rebuilt == {"train": {"ce": 0.25}, "val": {"n": -3}, "step": 1}
    assert type(rebuilt["val"]["n"]) is int                     # logged as an integer, read back as one


def test_metrics_json_is_rebuilt_after_one_epoch(tmp_path):
    history(tmp_path, "train/ce", "timestamp\tstep\tce\n0\t0\t0.5\n")
    repair_summary(tmp_path, 1)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"train": {"ce": 0.5}, "step": 0}


def test_an_unreadable_metrics_json_is_removed_before_any_epoch(tmp_path):
    (tmp_path / "metrics.json").write_text("{")
    repair_summary(tmp_path, 0)
    assert not (tmp_path / "metrics.json").exists()


def test_truncate_live_drops_the_rows_of_the_redone_epochs_and_keeps_the_header(tmp_path):
    tsv = history(tmp_path, "train/ce", "timestamp\tstep\tce\n0\t0\t0.5\n1\t1\t0.25\n2\t2\t0.125\n")
    truncate_live(tmp_path, 1)
    assert tsv.read_text() == "timestamp\tstep\tce\n0\t0\t0.5\n"
