"""A DVCLive history row cut short (a write cut off, as a full disk leaves it: DVCLive appends rows
in place) stopped every later run with a bare IndexError or ValueError: truncate_live indexed a row
without its step column, a row cut right after a tab has an empty step, and repair_summary indexed
the value column of a row that lacks it. A cut row is no logged epoch, and truncating drops it."""
from __future__ import annotations

import json

from fermodels.livelog import logged_epochs, repair_summary, truncate_live

HEAD = "timestamp\tstep\tce\n1\t0\t0.5\n2\t1\t0.25\n"


def _live(tmp_path, tail: str):
    tsv = tmp_path / "plots" / "metrics" / "train" / "ce.tsv"
    tsv.parent.mkdir(parents=True)
    tsv.write_text(HEAD + tail)
    return tsv


def test_truncate_live_drops_a_row_cut_before_its_step(tmp_path):
    tsv = _live(tmp_path, "3")
    assert logged_epochs(tmp_path) == {0, 1}                     # this one skips the cut row
    truncate_live(tmp_path, 2)
    assert tsv.read_text() == HEAD


def test_a_row_cut_after_a_tab_is_no_logged_epoch(tmp_path):
    _live(tmp_path, "3\t")
    assert logged_epochs(tmp_path) == {0, 1}


def test_repair_summary_skips_a_row_cut_before_its_value(tmp_path):
    _live(tmp_path, "3\t2")
    repair_summary(tmp_path, 3)


def test_a_row_cut_after_its_last_tab_is_left_out_of_the_rebuilt_summary(tmp_path):
    _live(tmp_path, "3\t2\t")
    assert logged_epochs(tmp_path) == {0, 1}
    repair_summary(tmp_path, 3)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"train": {"ce": 0.25}, "step": 2}


def test_a_cut_row_the_next_run_appended_onto_is_left_out(tmp_path):
    tsv = _live(tmp_path, "3\t2\t0.1" + "4\t3\t0.5\n")               # "0.1" cut, the next row on its line
    assert logged_epochs(tmp_path) == {0, 1}
    repair_summary(tmp_path, 3)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"train": {"ce": 0.25}, "step": 2}
    truncate_live(tmp_path, 5)
    assert tsv.read_text() == HEAD


def test_an_empty_history_file_is_no_logged_epoch(tmp_path):
    tsv = tmp_path / "plots" / "metrics" / "train" / "ce.tsv"
    tsv.parent.mkdir(parents=True)
    tsv.write_text("")
    assert logged_epochs(tmp_path) == set()
    truncate_live(tmp_path, 0)
    repair_summary(tmp_path, 1)


def _tsv(path, name, steps):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("step\t" + name + "\n" + "".join(f"{s}\t0.5\n" for s in steps))


def _finished_run(live, epochs=12):
    _tsv(live / "plots/metrics/train/ce.tsv", "ce", range(epochs))
    _tsv(live / "plots/metrics/val/accuracy.tsv", "accuracy", range(epochs))
    (live / "metrics.json").write_text(json.dumps({"train": {"ce": 0.1}, "val": {"accuracy": 0.6},
                                                   "step": epochs - 1}))


def test_a_foreign_history_file_does_not_unlog_a_finished_run(tmp_path, caplog):
    """Another run's history file (PCNN's ce_main.tsv after `dvc exp run -S train.model=pcnn`, then `git restore .
    && dvc checkout`: left untracked) made a finished run look unlogged: it trained again from epoch 0."""
    _finished_run(tmp_path)
    _tsv(tmp_path / "plots/metrics/train/ce_main.tsv", "ce_main", [0])      # a 1-epoch PCNN experiment's
    assert logged_epochs(tmp_path) == set(range(12))
    assert "train/ce_main.tsv; not read" in caplog.text


def test_a_named_history_file_cut_short_still_counts(tmp_path):
    _finished_run(tmp_path)
    _tsv(tmp_path / "plots/metrics/val/accuracy.tsv", "accuracy", range(5))   # the run's own file lost rows
    assert logged_epochs(tmp_path) == set(range(5))


def test_without_metrics_json_every_file_counts(tmp_path):
    _finished_run(tmp_path)
    (tmp_path / "metrics.json").unlink()
    _tsv(tmp_path / "plots/metrics/train/ce_main.tsv", "ce_main", [0])
    assert logged_epochs(tmp_path) == {0}
