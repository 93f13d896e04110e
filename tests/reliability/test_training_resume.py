"""Training survives a kill (resumes to the same weights as an uninterrupted run) and stops
on NaN/inf losses with a clear message, keeping the last good checkpoint.

The default runs use a tiny conv net patched in for ``create_model`` (the trainer is what
is tested, and resnet18_112 costs ~8 s per run on 2 CPU cores); the slow variant uses
resnet18_112 itself.
"""
from __future__ import annotations

import errno
import json
import math
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fermodels.runstate as runstate
import fermodels.train as trainer
import fermodels.trainparams as trainparams
from fermodels.registry import ModelCard
from ferdata.errors import message
from fermodels.ckptdir import BEST, LAST, PENDING_BEST
from fermodels.runstate import load_checkpoint
from fermodels.train import train
from fermodels.trainlog import NonFiniteLossError
from fermodels.trainparams import TrainParams
from tests.reliability.corpus import build, child_env

TINY = "reliability_tiny"

CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from tests.reliability.test_training_resume import fake_val, train_params, use_model
    from fermodels.train import train
    shards, ckpt, live, kill_after = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    use_model(sys.argv[5], setattr)
    killed_by = sys.argv[6] if len(sys.argv) > 6 else "last.pt"     # a file's rename, or "log" (an epoch's log)
    fake_val(os.environ.get("FAKE_VAL", ""), setattr)
    real, saves = os.replace, [0]

    def count():
        saves[0] += 1
        if saves[0] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    def replace(src, dst):
        real(src, dst)
        if str(dst).endswith(killed_by):
            count()

    import fermodels.train as trainer
    real_log = trainer.log_epoch

    def log_epoch(*args):
        real_log(*args)
        if killed_by == "log":
            count()

    os.replace, trainer.log_epoch = replace, log_epoch
    train(shards, train_params(model=sys.argv[5]), ckpt, live)
""")


def fake_val(accuracies: str, setattr_) -> None:
    """Validation scores each epoch with the next of ``accuracies`` (comma-separated), so a test
    chooses which epochs improve."""
    if not accuracies:
        return
    from fermodels.metrics import SUMMARY_METRICS

    values = iter(float(a) for a in accuracies.split(","))
    setattr_(trainer, "score_split", lambda *args: dict.fromkeys(SUMMARY_METRICS, next(values)))


def kill_run(tiny_shards: Path, tmp_path: Path, kill_after: int, killed_by: str = "last.pt", fake: str = "",
             model: str = TINY) -> None:
    """Train in a child process that SIGKILLs itself at the ``kill_after``-th ``killed_by`` event."""
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tiny_shards), str(tmp_path / "run"),
                           str(tmp_path / "live"), str(kill_after), model, killed_by], capture_output=True, text=True,
                          env={**child_env(), "FAKE_VAL": fake}, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]


class TinyNet(nn.Module):
    """A registry-contract model small enough to train in a fraction of a second (with
    BatchNorm and dropout, so state and RNG both matter for exact resume)."""

    def __init__(self, num_classes: int = 7, **_: object) -> None:
        super().__init__()
        self.card = ModelCard(TINY, 112, ("image",), ("ce",), "test model")
        self.body = nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2))
        self.head = nn.Linear(8, num_classes)

    def forward(self, batch: dict) -> dict:
        return {"logits": self.head(self.body(batch["image"]))}

    def losses(self, out: dict, batch: dict) -> dict:
        return {"ce": F.cross_entropy(out["logits"], batch["label"])}


def use_model(name: str, setattr_) -> None:
    """Make the trainer build :class:`TinyNet` for ``TINY`` (other names: the registry)."""
    if name == TINY:
        real, real_kwargs = trainer.create_model, runstate.model_kwargs
        setattr_(trainer, "create_model", lambda n, **kw: TinyNet(**kw) if n == TINY else real(n, **kw))
        tiny_kwargs = lambda n, kw: dict(kw) if n == TINY else real_kwargs(n, kw)    # noqa: E731
        setattr_(runstate, "model_kwargs", tiny_kwargs)
        setattr_(trainparams, "model_kwargs", tiny_kwargs)              # train params check the keywords


def train_params(**overrides) -> TrainParams:
    """2 epochs on the tiny shards, a checkpoint after every step."""
    values = dict(datasets=["tiny"], model=TINY, epochs=2, batch_size=8, workers=0, shuffle_buffer=8,
                  device="cpu", amp=False, compile=False, checkpoint_every=1)
    return build(TrainParams, "train", **{**values, **overrides})


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


@pytest.mark.parametrize("model", [TINY, pytest.param("resnet18_112", marks=pytest.mark.slow)])
def test_killed_training_resumes_to_the_same_weights(model, tiny_shards, tmp_path, one_thread, monkeypatch):
    use_model(model, monkeypatch.setattr)
    params = train_params(model=model)
    best_ref = train(tiny_shards, params, tmp_path / "ref", tmp_path / "ref_live")
    ref = load_checkpoint(tmp_path / "ref" / LAST)
    steps = ref["step"]
    assert ref["epoch"] == 1 and steps >= 4
    kill_run(tiny_shards, tmp_path, steps // 2 + 1, model=model)     # mid-way through epoch 1
    killed_at = load_checkpoint(tmp_path / "run" / LAST)
    assert 0 < killed_at["step"] < steps
    best = train(tiny_shards, params, tmp_path / "run", tmp_path / "live")
    assert best == best_ref
    resumed = weights(tmp_path / "run" / LAST)
    assert resumed.keys() == ref["state_dict"].keys()
    assert all(torch.equal(resumed[k], ref["state_dict"][k]) for k in resumed)
    assert load_checkpoint(tmp_path / "run" / LAST)["step"] == steps
    # The resumed epoch logs the whole epoch's samples and losses (it logged only the batches after
    # the resume); times differ between runs, so only these are compared.
    for name in ("samples", "ce"):
        logged = [sorted((d / "plots" / "metrics" / "train" / f"{name}.tsv").read_text().splitlines())
                  for d in (tmp_path / "ref_live", tmp_path / "live")]
        assert logged[0] == logged[1], name


def test_a_kill_between_the_best_and_last_saves_leaves_best_pt_as_last_pt_records(tiny_shards, tmp_path,
                                                                                   one_thread, monkeypatch):
    """An epoch's best weights were saved, then last.pt: a kill between them left best.pt from an
    epoch that last.pt and the logs did not know, and a replay of it that scored otherwise (a GPU's,
    another thread count's) kept those weights. Here epoch 1 improves in the killed run and not in
    the replay."""
    kill_run(tiny_shards, tmp_path, 2, PENDING_BEST, fake="0.5,0.6")       # after epoch 1's best weights
    assert load_checkpoint(tmp_path / "run" / LAST)["epoch"] == 1 and (tmp_path / "run" / PENDING_BEST).is_file()
    use_model(TINY, monkeypatch.setattr)
    fake_val("0.4", monkeypatch.setattr)                                   # the replayed epoch 1: worse
    best = train(tiny_shards, train_params(), tmp_path / "run", tmp_path / "live")
    assert best["epoch"] == 0 == load_checkpoint(tmp_path / "run" / LAST)["best"]["epoch"]
    assert load_checkpoint(tmp_path / "run" / BEST)["epoch"] == 0
    assert not (tmp_path / "run" / PENDING_BEST).exists()


def test_a_kill_after_last_pt_finishes_the_best_pt_update(tiny_shards, tmp_path, one_thread, monkeypatch):
    """Killed after last.pt recorded epoch 1 as the best, before its weights became best.pt: the next
    run puts them in place (it has no epoch left to replay)."""
    use_model(TINY, monkeypatch.setattr)
    train(tiny_shards, train_params(), tmp_path / "ref", tmp_path / "ref_live")
    steps = load_checkpoint(tmp_path / "ref" / LAST)["step"]               # last.pt saves: every step but
    kill_run(tiny_shards, tmp_path, steps, fake="0.5,0.6")                 # each epoch's last, and each end
    assert load_checkpoint(tmp_path / "run" / LAST)["best"]["epoch"] == 1
    assert load_checkpoint(tmp_path / "run" / BEST)["epoch"] == 0 and (tmp_path / "run" / PENDING_BEST).is_file()
    best = train(tiny_shards, train_params(), tmp_path / "run", tmp_path / "live")
    assert best["epoch"] == 1 == load_checkpoint(tmp_path / "run" / BEST)["epoch"]


def test_a_kill_after_an_epochs_log_resumes_without_repeating_its_rows(tiny_shards, tmp_path, one_thread,
                                                                       monkeypatch):
    use_model(TINY, monkeypatch.setattr)
    train(tiny_shards, train_params(), tmp_path / "ref", tmp_path / "ref_live")
    kill_run(tiny_shards, tmp_path, 1, "log")                              # epoch 0 logged, its last.pt not saved
    train(tiny_shards, train_params(), tmp_path / "run", tmp_path / "live")
    assert all(torch.equal(a, b) for a, b in zip(weights(tmp_path / "ref" / LAST).values(),
                                                 weights(tmp_path / "run" / LAST).values()))
    for name in ("samples", "ce", "learning_rate"):
        logged = [(d / "plots" / "metrics" / "train" / f"{name}.tsv").read_text() for d in (tmp_path / "ref_live",
                                                                                             tmp_path / "live")]
        assert logged[0] == logged[1] and logged[0].count("\n") == 3, name       # header + epochs 0 and 1


@pytest.mark.parametrize("when", ["finished", "mid-run", "mid-epoch-0"])
def test_an_unreadable_metrics_json_is_rebuilt_from_the_history(tiny_shards, tmp_path, one_thread, monkeypatch,
                                                               when):
    """DVCLive writes metrics.json in place: a full disk left it empty, and every later run stopped
    with 'Expecting value: line 1 column 1'."""
    use_model(TINY, monkeypatch.setattr)
    train(tiny_shards, train_params(), tmp_path / "ref", tmp_path / "ref_live")
    if when == "finished":
        train(tiny_shards, train_params(), tmp_path / "run", tmp_path / "live")
    elif when == "mid-run":
        steps = load_checkpoint(tmp_path / "ref" / LAST)["step"]
        kill_run(tiny_shards, tmp_path, steps // 2 + 2)                    # in epoch 1, epoch 0 logged
    else:
        kill_run(tiny_shards, tmp_path, 1)                                 # in epoch 0: nothing logged yet,
    (tmp_path / "live").mkdir(exist_ok=True)                               # but DVCLive's end() writes the file
    (tmp_path / "live" / "metrics.json").write_text("")
    train(tiny_shards, train_params(), tmp_path / "run", tmp_path / "live")
    timing = ("samples_per_s", "loader_wait_fraction")
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "live", tmp_path / "ref_live"))
    for summary in (got, want):
        for key in timing:
            summary["train"].pop(key)
    assert got == want


def test_a_finished_run_without_its_best_pt_trains_again(tiny_shards, tmp_path, one_thread, monkeypatch, caplog):
    use_model(TINY, monkeypatch.setattr)
    train(tiny_shards, train_params(), tmp_path / "run", tmp_path / "live")
    (tmp_path / "run" / BEST).unlink()
    with caplog.at_level("WARNING", "fermodels.runstate"):
        train(tiny_shards, train_params(), tmp_path / "run", tmp_path / "live")
    assert "records epoch" in caplog.text and "but best.pt is missing: starting over" in caplog.text
    assert load_checkpoint(tmp_path / "run" / BEST)["epoch"] >= 0


def test_a_copy_of_best_pt_as_last_pt_is_refused_in_one_line(tiny_shards, tmp_path, one_thread, monkeypatch):
    use_model(TINY, monkeypatch.setattr)
    train(tiny_shards, train_params(), tmp_path / "run", tmp_path / "live")
    (tmp_path / "run" / LAST).write_bytes((tmp_path / "run" / BEST).read_bytes())
    with pytest.raises(ValueError, match=r"last.pt holds no optimizer state \(a copy of best.pt\?\), so training "
                                         "cannot resume from it: delete it"):
        train(tiny_shards, train_params(), tmp_path / "run", tmp_path / "live")


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(bad, tiny_shards, tmp_path, monkeypatch):
    calls = [0]

    def create_poisoned(name, **kwargs):
        net = TinyNet(**kwargs)
        clean_losses = net.losses

        def losses(out, batch):
            calls[0] += 1
            values = clean_losses(out, batch)
            return {k: v * bad for k, v in values.items()} if calls[0] > steps_per_epoch else values
        net.losses = losses
        return net

    train_samples = json.loads((tiny_shards / "train" / "_info.json").read_text())["num_samples"]
    steps_per_epoch = math.ceil(train_samples / 8)
    use_model(TINY, monkeypatch.setattr)                        # checkpoints describe TinyNet
    monkeypatch.setattr(trainer, "create_model", create_poisoned)
    params = train_params(epochs=3, checkpoint_every=0)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss .*last good checkpoint kept at"):
        train(tiny_shards, params, tmp_path / "ckpt", tmp_path / "live")
    last = load_checkpoint(tmp_path / "ckpt" / LAST)
    assert last["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_dvc_keeps_what_a_resume_reads_when_train_runs_again(tmp_path):
    """``dvc repro`` after a killed train stage: DVC deletes a stage's outputs before its command
    unless they persist, and resuming needs both last.pt and the DVCLive logs of the epochs it
    finished (without them the trainer starts over). A stage with the train stage's own outs,
    metrics and plots, as dvc.yaml declares them, finds all of them on its second run."""
    import yaml

    root = Path(__file__).resolve().parents[2]
    train = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["train"]
    kept = ["runs/train/ckpt/last.pt", "runs/train/live/metrics.json", "runs/train/live/plots/metrics/loss.tsv"]
    (tmp_path / "make.py").write_text(textwrap.dedent(f"""
        import os, pathlib
        kept = {kept!r}
        pathlib.Path("found.txt").write_text("\\n".join(p for p in kept if os.path.exists(p)))
        for p in kept:
            pathlib.Path(p).parent.mkdir(parents=True, exist_ok=True)
            pathlib.Path(p).write_text("step\\tloss\\n0\\t1\\n" if p.endswith(".tsv") else "{{}}")
    """))
    stage = {"cmd": f"{sys.executable} make.py", "deps": ["make.py"],
             **{k: train[k] for k in ("outs", "metrics", "plots")}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": stage}}))
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    for _ in range(2):
        run = subprocess.run([*dvc, "repro", "-f", "-q"], cwd=tmp_path, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    assert (tmp_path / "found.txt").read_text().split("\n") == kept


def test_a_full_disk_at_a_checkpoint_save_names_the_checkpoint(tiny_shards, tmp_path, one_thread, monkeypatch):
    """The disk fills up at the third save (the logs share it, as runs/train/ckpt and runs/train/live
    do): the error named no file ("[Errno 28] No space left on device"), DVCLive's own failure in the
    trainer's `finally` having replaced save_checkpoint's, which names the checkpoint."""
    import dvclive.live

    use_model(TINY, monkeypatch.setattr)
    real_save, saves = torch.save, [0]

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    def save(obj, f, *args, **kwargs):
        saves[0] += 1
        if saves[0] == 3:                              # from here on every write fails
            monkeypatch.setattr(dvclive.live, "dump_json", no_space)
            no_space()
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError) as caught:
        train(tiny_shards, train_params(), tmp_path / "ckpt", tmp_path / "live")
    told = message(caught.value)
    assert "No space left on device" in told and f"while writing {tmp_path / 'ckpt'}" in told, told
    assert load_checkpoint(tmp_path / "ckpt" / LAST)["step"] == 2          # the last good one kept


def test_an_unwritable_log_folder_is_named_before_training(tiny_shards, tmp_path, one_thread, monkeypatch):
    """A live_dir that cannot be written failed at the first epoch's log (after the epoch and its
    validation; with checkpoint_every 0 the epoch is lost), as the checkpoint folder did before its
    check (test_an_unwritable_checkpoint_folder_is_named_before_training)."""
    from dvclive.plots import metric

    use_model(TINY, monkeypatch.setattr)
    live = tmp_path / "live"
    live.mkdir()                                         # there, but read-only (a mount, or permissions)
    real_tf, steps = tempfile.TemporaryFile, [0]
    real_step = trainer.train_step

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    def temporary_file(*args, dir=None, **kwargs):       # the live folder refuses files, the others do not
        if dir is not None and str(dir).startswith(str(live)):
            refuse()
        return real_tf(*args, dir=dir, **kwargs)

    def counted(*args, **kwargs):
        steps[0] += 1
        return real_step(*args, **kwargs)
    monkeypatch.setattr(tempfile, "TemporaryFile", temporary_file)
    monkeypatch.setattr(metric.Metric, "dump", refuse)
    monkeypatch.setattr(trainer, "train_step", counted)
    with pytest.raises((ValueError, OSError)) as caught:
        train(tiny_shards, train_params(checkpoint_every=0), tmp_path / "ckpt", live)
    assert steps[0] == 0, f"failed after {steps[0]} training steps: {message(caught.value)}"
    assert str(live) in message(caught.value)


def test_a_restart_over_another_runs_folder_never_leaves_its_best_pt_beside_the_new_last_pt(
        tiny_shards, tmp_path, one_thread, monkeypatch):
    """The folder holds another run's finished checkpoints; this run (other params) starts over
    and is stopped in its first epoch after a mid-epoch save. best.pt must not be the other run's
    weights beside this run's last.pt (predict/export/evaluate of best.pt took them silently)."""
    use_model(TINY, monkeypatch.setattr)
    train(tiny_shards, train_params(), tmp_path / "ckpt", tmp_path / "live")         # run A, finished
    other = train_params(lr=train_params().lr * 2)
    real_step, steps = trainer.train_step, [0]

    def stop_at_3(*args, **kwargs):
        steps[0] += 1
        if steps[0] == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)
    monkeypatch.setattr(trainer, "train_step", stop_at_3)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_shards, other, tmp_path / "ckpt", tmp_path / "live")
    last = load_checkpoint(tmp_path / "ckpt" / LAST)
    assert last["params"]["lr"] == other.lr and last["best"]["epoch"] == -1
    best = tmp_path / "ckpt" / BEST
    assert not best.exists() or load_checkpoint(best)["params"]["lr"] == other.lr, \
        "best.pt is the other run's, beside this run's last.pt"
