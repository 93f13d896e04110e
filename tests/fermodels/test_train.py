"""The trainer on tiny shards: learning, self-describing checkpoints, selection on val (never
test), exact resume after a kill, AMP/channels_last on CPU, class weights, bad-input policy."""
from __future__ import annotations

import inspect
import json
import logging
import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fermodels.train as trainer
import fermodels.trainlog as trainlog
import fermodels.trainparams as trainparams
from fermodels.data import SampleDecoder
from fermodels.distributed import DistEnv
from fermodels.epochplan import plan_epoch, stream_count
from fermodels.modelinput import normalise, to_device
from fermodels.optim import SAM, build_optimizer
from fermodels.registry import create_model, list_models
from fermodels.runstate import load_checkpoint, model_from_checkpoint
from fermodels.sampling import check_class_weight_used, class_weight_tensor
from fermodels.shardsplit import open_split
from fermodels.stream import stream_loader
from fermodels.train import train, train_step
from fermodels.trainlog import NonFiniteLossError

from tests.fermodels.helpers import (REPO, TINY_MODEL, bare_checkpoint, build_shards, make_params,
                                     soft_label_of)

CPU = torch.device("cpu")
FAST_MODELS = {"resnet18_112", "convcut"}
SMALL = {"convcut": TINY_MODEL["model_kwargs"], "convcut_paper": TINY_MODEL["model_kwargs"]}
LR = {"ir50": 1e-4, "pcda": 1e-4}        # IR-50 (PReLU, BN on 4 samples) diverges at 1e-3


def first_batch(shards, card, batch_size: int = 4) -> dict:
    split = open_split([shards], "train")
    plans = plan_epoch(split.shards, samples=split.num_samples, batch_size=batch_size, env=DistEnv(0, 1, 0),
                       workers=0, seed=0, shuffle=True)
    loader = stream_loader(plans, SampleDecoder(card.fields, card.input_size), workers=0, shuffle_buffer=0, seed=0,
                           repeat=None)
    return next(iter(loader))


def test_train_step_hands_the_global_batch_to_the_losses_not_the_forward_pass() -> None:
    """DDP's forward moves what it is given to the device; the GlobalBatch is for the losses."""
    from fermodels.losses import GLOBAL_BATCH

    seen = {}

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)

        def forward(self, batch):
            seen["forward"] = set(batch)
            return {"logits": self.lin(batch["x"])}

        def losses(self, out, batch):
            seen["losses"] = batch.get(GLOBAL_BATCH)
            return {"ce": out["logits"].square().mean()}

    net, whole = Net(), object()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    train_step(net, net, opt, torch.amp.GradScaler("cpu", enabled=False), {"x": torch.ones(2, 3)}, CPU, False, whole)
    assert seen == {"forward": {"x"}, "losses": whole}
    train_step(net, net, opt, torch.amp.GradScaler("cpu", enabled=False), {"x": torch.ones(2, 3)}, CPU, False)
    assert seen == {"forward": {"x"}, "losses": None}


def losses_over_steps(name: str, shards, steps: int, amp: bool = False, channels_last: bool = False) -> list[float]:
    """Total loss of ``steps`` optimiser steps on one real batch through the trainer's step."""
    torch.manual_seed(0)
    net = create_model(name, num_classes=7, **SMALL.get(name, {}))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    batch = normalise(to_device(first_batch(shards, net.card), CPU), net.card, channels_last)
    opt = build_optimizer("adam", [p for p in net.parameters() if p.requires_grad], lr=LR.get(name, 1e-3),
                          weight_decay=0.0, momentum=0.9, sam=False, sam_rho=0.05)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    net.train()
    return [float(sum(train_step(net, net, opt, scaler, batch, CPU, amp).values())) for _ in range(steps)]


@pytest.mark.parametrize("name", [n if n in FAST_MODELS else pytest.param(n, marks=pytest.mark.slow)
                                  for n in list_models()])
def test_a_few_steps_decrease_the_loss(name, tiny_shards, one_thread):
    totals = losses_over_steps(name, tiny_shards, steps=4)
    assert all(np.isfinite(totals)) and totals[-1] < totals[0], totals


def test_bf16_autocast_and_channels_last_on_cpu(tiny_shards, one_thread):
    totals = losses_over_steps("convcut", tiny_shards, steps=3, amp=True, channels_last=True)
    assert all(np.isfinite(totals)) and totals[-1] < totals[0]
    with trainer.autocast(CPU, True):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_sam_training_step_decreases_the_loss(tiny_shards, one_thread):
    net = create_model("convcut", **SMALL["convcut"])
    batch = normalise(to_device(first_batch(tiny_shards, net.card), CPU), net.card)
    opt = build_optimizer("adam", net.parameters(), lr=1e-3, weight_decay=0.0, momentum=0.9, sam=True, sam_rho=0.05)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    totals = [float(sum(train_step(net, net, opt, scaler, batch, CPU, False).values())) for _ in range(4)]
    assert totals[-1] < totals[0]


def test_checkpoints_describe_themselves_and_best_is_chosen_on_val(tiny_run):
    best, last = load_checkpoint(tiny_run["ckpt"] / "best.pt"), load_checkpoint(tiny_run["ckpt"] / "last.pt")
    params, shards = tiny_run["params"], tiny_run["shards"]
    info = {s: json.loads((shards / s / "_info.json").read_text()) for s in ("train", "val")}
    assert last["epoch"] == params.epochs - 1 and last["model"] == "convcut"
    assert last["world_size"] == 1 and last["batch"] == last["epoch_steps"] > 0      # the layout positions count in
    assert last["classes"] == ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger"]
    assert last["data"]["train"][str(shards)] == [s["sha256"] for s in info["train"]["shards"]]
    assert last["params"]["augment"]["hflip"] == params.augment.hflip and last["datasets"] == ["tiny"]
    assert last["preprocess"]["align"]["size"] == 112 and last["card"]["input_size"] == 224
    rows = (tiny_run["live"] / "plots" / "metrics" / "val" / "accuracy.tsv").read_text().splitlines()[1:]
    val_acc = [float(r.split("\t")[-1]) for r in rows]
    assert len(val_acc) == params.epochs
    assert best["epoch"] == int(np.argmax(val_acc)) == tiny_run["best"]["epoch"]
    assert best["best"]["accuracy"] == pytest.approx(max(val_acc))
    model = model_from_checkpoint(best)
    assert not model.training
    assert best["optimizer"] is None and last["optimizer"]["state"]        # only resuming (last.pt) needs it
    live = json.loads((tiny_run["live"] / "metrics.json").read_text())
    assert live["train"]["samples"] == info["train"]["num_samples"] and live["train"]["samples_per_s"] > 0
    hist, n = info["train"]["class_histogram"], info["train"]["num_samples"]     # an epoch: each sample once
    assert live["train"]["class_share"] == pytest.approx({c: hist.get(c, 0) / n for c in last["classes"]})


def test_the_test_split_is_never_read(tiny_shards, tmp_path, monkeypatch, one_thread):
    opened = []
    real_open, real_indexed = trainer.open_split, trainer.IndexedSplit
    monkeypatch.setattr(trainer, "open_split",
                        lambda dirs, split, **kw: opened.append(split) or real_open(dirs, split, **kw))
    monkeypatch.setattr(trainer, "IndexedSplit",
                        lambda d, split, *a: opened.append(split) or real_indexed(d, split, *a))
    train(tiny_shards, make_params(epochs=1), tmp_path / "ckpt", tmp_path / "live")
    assert "test" not in opened and {"train", "val"} <= set(opened)


def test_validation_scores_in_float32_even_when_training_in_mixed_precision(tiny_shards, tmp_path, monkeypatch,
                                                                            one_thread):
    """best.pt is chosen by the computation `evaluate` reports with (float32), not by bf16/fp16
    rounding between near-tied epochs; training itself still runs under autocast."""
    import fermodels.scoring as scoring

    calls, autocast_steps = [], []
    real_predict, real_step = scoring.predict_loader, trainer.train_step
    monkeypatch.setattr(scoring, "predict_loader", lambda *a, **k: calls.append(k.get("amp", False))
                        or real_predict(*a, **k))
    amp_of = lambda *a: inspect.signature(real_step).bind(*a).arguments["amp"]      # noqa: E731
    monkeypatch.setattr(trainer, "train_step", lambda *a: autocast_steps.append(amp_of(*a)) or real_step(*a))
    train(tiny_shards, make_params(epochs=1, amp=True), tmp_path / "ckpt", tmp_path / "live")
    assert calls == [False] and autocast_steps and all(autocast_steps)


class Killed(Exception):
    pass


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_resume_after_a_kill_continues_from_the_saved_step_with_the_same_result(tiny_shards, tmp_path,
                                                                                monkeypatch, one_thread, ema_decay):
    params = make_params(epochs=2, checkpoint_every=1, ema_decay=ema_decay)
    info = json.loads((tiny_shards / "train" / "_info.json").read_text())
    per_epoch = math.ceil(info["num_samples"] / params.batch_size)
    total = params.epochs * per_epoch
    train(tiny_shards, params, tmp_path / "a" / "ckpt", tmp_path / "a" / "live")
    real_step, calls = trainer.train_step, []

    def step_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == per_epoch + 2:           # epoch 1, second batch; last save after its first
            raise Killed
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", step_then_die)
    with pytest.raises(Killed):
        train(tiny_shards, params, tmp_path / "b" / "ckpt", tmp_path / "b" / "live")
    saved = load_checkpoint(tmp_path / "b" / "ckpt" / "last.pt")
    assert (saved["epoch"], saved["batch"], saved["step"]) == (1, 1, per_epoch + 1)
    calls.clear()
    monkeypatch.setattr(trainer, "train_step", lambda *a, **k: calls.append(1) or real_step(*a, **k))
    train(tiny_shards, params, tmp_path / "b" / "ckpt", tmp_path / "b" / "live")
    assert len(calls) == total - (per_epoch + 1)
    a, b = (load_checkpoint(tmp_path / r / "ckpt" / "last.pt") for r in ("a", "b"))
    assert a["step"] == b["step"] == total
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert ("ema" in a) == ("ema" in b) == bool(ema_decay)
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a.get("ema", {}))      # the average resumed too
    for name in ("last.pt", "best.pt"):     # byte for byte: DVC's lock and cache see one output, not two
        assert (tmp_path / "a" / "ckpt" / name).read_bytes() == (tmp_path / "b" / "ckpt" / name).read_bytes(), name
    live_a, live_b = (json.loads((tmp_path / r / "live" / "metrics.json").read_text()) for r in ("a", "b"))
    assert live_a["val"] == live_b["val"] and live_a["step"] == live_b["step"] == 1
    rows = (tmp_path / "b" / "live" / "plots" / "metrics" / "train" / "ce.tsv").read_text().splitlines()
    assert len(rows) == 1 + params.epochs


def test_a_cpu_run_resumed_under_another_thread_count_says_it_parts_from_the_run(tiny_shards, tmp_path,
                                                                                   monkeypatch, one_thread, caplog):
    """CPU kernels sum in an order the thread count sets: last.pt records it, and a resume under
    another (OMP_NUM_THREADS, a CPU quota) warns that the weights part from the uninterrupted run's."""
    params = make_params(epochs=1, checkpoint_every=1)
    real_step, calls = trainer.train_step, []

    def step_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", step_then_die)
    with pytest.raises(Killed):
        train(tiny_shards, params, tmp_path / "ckpt", tmp_path / "live")
    assert load_checkpoint(tmp_path / "ckpt" / "last.pt")["cpu_threads"] == 1
    monkeypatch.setattr(trainer, "train_step", real_step)
    torch.set_num_threads(2)
    train(tiny_shards, params, tmp_path / "ckpt", tmp_path / "live")
    assert "trained with 1 torch CPU thread(s), this run has 2" in caplog.text and "OMP_NUM_THREADS=1" in caplog.text


def test_changed_params_start_over(tiny_run, tmp_path, caplog, one_thread):
    import shutil

    shutil.copytree(tiny_run["ckpt"], tmp_path / "ckpt")
    best = train(tiny_run["shards"], make_params(epochs=1, lr=1e-3), tmp_path / "ckpt", tmp_path / "live")
    assert best["epoch"] == 0 and load_checkpoint(tmp_path / "ckpt" / "last.pt")["params"]["lr"] == 1e-3
    assert "differs in epochs, lr): starting over" in caplog.text      # says what, not only "params"


def test_the_code_fingerprint_covers_what_the_train_stage_depends_on(tmp_path, monkeypatch):
    """It hashed every file of the three packages: an edit of predict.py or the CLI (no train
    dependency in dvc.yaml) threw an interrupted run's progress away."""
    import shutil

    import ferdata.codeclosure as codeclosure
    import fermodels.runstate as runstate

    repo = Path(__file__).resolve().parents[2]
    for package in codeclosure.PACKAGES:
        shutil.copytree(repo / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(codeclosure, "ROOT", tmp_path)
    monkeypatch.setattr(runstate, "ROOT", tmp_path)
    before = runstate.code_fingerprint()
    for unrelated in ("fermodels/predict.py", "fermodels/predictor.py", "ferdata/verify.py", "ferdata/cli.py",
                      "ferdata/parallel.py"):
        (tmp_path / unrelated).write_text((tmp_path / unrelated).read_text() + "\n# edited\n")
    assert runstate.code_fingerprint() == before
    (tmp_path / "fermodels/losses.py").write_text((tmp_path / "fermodels/losses.py").read_text() + "\n# edited\n")
    assert runstate.code_fingerprint() != before


def test_a_setting_that_shapes_no_weight_still_resumes(tiny_run, tmp_path, caplog, one_thread):
    """Changing train.checkpoint_every after a kill threw the run's progress away."""
    import shutil

    shutil.copytree(tiny_run["ckpt"], tmp_path / "ckpt")
    shutil.copytree(tiny_run["live"], tmp_path / "live")
    before = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    params = make_params(epochs=3, checkpoint_every=2)
    assert params != tiny_run["params"]
    train(tiny_run["shards"], params, tmp_path / "ckpt", tmp_path / "live")
    assert "starting over" not in caplog.text
    assert load_checkpoint(tmp_path / "ckpt" / "last.pt")["step"] == before["step"]


def test_naming_the_same_device_otherwise_still_resumes(tiny_run, tmp_path, caplog, one_thread, monkeypatch):
    """train.device cpu -> auto on a machine without a GPU (or cuda -> cuda:1, another free GPU) is the
    same run on the same kind of device: it started over, throwing every finished epoch away."""
    import shutil

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)       # auto: the CPU, as the run's
    shutil.copytree(tiny_run["ckpt"], tmp_path / "ckpt")
    shutil.copytree(tiny_run["live"], tmp_path / "live")
    before = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    train(tiny_run["shards"], make_params(epochs=3, device="auto"), tmp_path / "ckpt", tmp_path / "live")
    assert "starting over" not in caplog.text
    assert load_checkpoint(tmp_path / "ckpt" / "last.pt")["step"] == before["step"]


def test_a_finished_run_trains_again_when_its_code_changed(tiny_run, tmp_path, caplog, one_thread, monkeypatch):
    """DVC re-runs train after an edit of its code; resuming the finished last.pt trained nothing."""
    import shutil

    import fermodels.train as trainer

    shutil.copytree(tiny_run["ckpt"], tmp_path / "ckpt")
    shutil.copytree(tiny_run["live"], tmp_path / "live")
    before = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    monkeypatch.setattr(trainer, "code_fingerprint", lambda: "edited")
    train(tiny_run["shards"], tiny_run["params"], tmp_path / "ckpt", tmp_path / "live")
    after = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert "differs in the training code (data.code)): starting over" in caplog.text
    assert before["data"]["code"] != after["data"]["code"] == "edited" and after["step"] == before["step"]


def test_an_empty_train_split_is_named(tiny_shards, tmp_path):
    """It stopped with 'the split has no samples', naming neither the split nor the shards."""
    import shutil

    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards)
    info_path = shards / "train" / "_info.json"
    info = json.loads(info_path.read_text())
    for tar in (shards / "train").glob("*.tar"):
        tar.unlink()
    info.update(num_samples=0, shards=[], class_histogram={c: 0 for c in info["class_histogram"]})
    info_path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match=f"the train split of {shards} holds no sample"):
        train(shards, make_params(epochs=1), tmp_path / "c", tmp_path / "l")


def test_non_finite_loss_before_any_checkpoint_says_so(tiny_shards, tmp_path, one_thread):
    with pytest.raises(NonFiniteLossError, match="no checkpoint was saved before it; lower train.lr"):
        train(tiny_shards, make_params(epochs=1, optimizer="sgd", lr=1e30, momentum=0.0), tmp_path / "c",
              tmp_path / "l")
    assert not (tmp_path / "c" / "last.pt").exists()
    from ferdata.errors import USER_ERRORS

    assert issubclass(NonFiniteLossError, USER_ERRORS)            # the stage prints one error line, no traceback


def _weights_overflow_at(step: int, monkeypatch) -> list[dict[str, float]]:
    """Training's ``step``-th update turns a weight NaN while its loss stays finite (a gradient that
    overflowed, with no scaler to skip the step); returns each step's losses, as they come."""
    real_step, steps = trainer.train_step, []

    def overflowing_step(fwd, net, *a):
        losses = real_step(fwd, net, *a)
        steps.append({k: float(v) for k, v in losses.items()})
        if len(steps) == step:
            with torch.no_grad():
                first = next(net.parameters())
                first[(0,) * first.dim()] = float("nan")
        return losses

    monkeypatch.setattr(trainer, "train_step", overflowing_step)
    return steps


def test_non_finite_weights_under_a_finite_loss_stop_before_a_checkpoint_holds_them(tiny_shards, tmp_path,
                                                                                    monkeypatch, one_thread):
    """Bug guarded: a gradient that overflows while the loss stays finite (bf16 / fp32: no scaler to
    skip the step) stepped the weights to NaN, and the epoch's end saved them as last.pt, the
    checkpoint a resume and the error's "last good checkpoint" point to."""
    params = make_params(epochs=2)
    info = json.loads((tiny_shards / "train" / "_info.json").read_text())
    per_epoch = math.ceil(info["num_samples"] / params.batch_size)
    steps = _weights_overflow_at(per_epoch, monkeypatch)          # the epoch's last step
    with pytest.raises(NonFiniteLossError, match=r"non-finite weights \(a gradient overflowed") as caught:
        train(tiny_shards, params, tmp_path / "c", tmp_path / "l")
    told = {k: float(v) for k, v in re.findall(r"(\w+)=([-\d.e+]+|nan|inf)", str(caught.value))}
    assert told.keys() == steps[-1].keys()                # the last step's losses (the epoch's sums were told)
    assert all(v == pytest.approx(steps[-1][k], rel=1e-3) for k, v in told.items()), (str(caught.value), steps[-1])
    for name in ("last.pt", "best.pt"):
        if (tmp_path / "c" / name).exists():
            state = load_checkpoint(tmp_path / "c" / name)["state_dict"]
            assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), name


NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (bench/gpu_check.sh runs it there)")


@NEEDS_CUDA
def test_training_on_cuda_with_amp_and_channels_last(tiny_shards, tmp_path):
    """The trainer's GPU path end to end: bf16/fp16 autocast, channels_last, persistent loader workers
    handing batches over through pinned memory, validation every epoch. The trained model then gives
    the same logits on the GPU (fp32) as on the CPU."""
    # a buffer of 4 cuts the tiny split into 4 shuffle streams, so both workers make batches
    params = make_params(epochs=2, device="cuda", amp=True, channels_last=True, workers=2, shuffle_buffer=4)
    best = train(tiny_shards, params, tmp_path / "ckpt", tmp_path / "live")
    state = load_checkpoint(tmp_path / "ckpt" / "best.pt")
    assert state["epoch"] == best["epoch"] and math.isfinite(best["accuracy"])
    assert load_checkpoint(tmp_path / "ckpt" / "last.pt")["streams"] == 4
    on_cpu = model_from_checkpoint(state)
    on_gpu = model_from_checkpoint(state).cuda()
    batch = first_batch(tiny_shards, on_cpu.card, batch_size=8)
    with torch.no_grad():
        want = on_cpu(normalise(to_device(batch, CPU), on_cpu.card))["logits"]
        got = on_gpu(normalise(to_device(batch, torch.device("cuda")), on_gpu.card))["logits"].cpu()
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)       # cuDNN may convolve in TF32


@NEEDS_CUDA
def test_training_on_cuda_compiled_saves_the_plain_model(tiny_shards, tmp_path):
    """``train.compile`` on CUDA: the loop calls the compiled module, the checkpoint holds the plain
    model's weights (no ``_orig_mod.`` prefix), which rebuild strictly and classify as in training."""
    best = train(tiny_shards, make_params(epochs=1, device="cuda", amp=True, compile=True), tmp_path / "c",
                 tmp_path / "l")
    state = load_checkpoint(tmp_path / "c" / "best.pt")
    assert math.isfinite(best["accuracy"])
    assert state["state_dict"] and not any("_orig_mod" in k for k in state["state_dict"])
    model = model_from_checkpoint(state).cuda()
    batch = first_batch(tiny_shards, model.card, batch_size=8)
    with torch.no_grad():
        logits = model(normalise(to_device(batch, torch.device("cuda")), model.card))["logits"]
    assert logits.shape == (8, 7) and torch.isfinite(logits).all()


@NEEDS_CUDA
def test_fp16_autocast_on_cuda_trains_through_the_gradient_scaler(tiny_shards, tmp_path, monkeypatch):
    """GPUs without bf16 train in fp16 with a gradient scaler (an H200 has bf16, so fp16 is forced
    here): the steps run through an enabled scaler and its state is saved with the checkpoint
    (that a resume restores it is tested on the CPU)."""
    import fermodels.scoring as scoring

    for module in (trainer, scoring):
        monkeypatch.setattr(module, "amp_dtype", lambda device: torch.float16)
    made, real_scaler = [], torch.amp.GradScaler

    def recording_scaler(*args, **kwargs):
        made.append(real_scaler(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(torch.amp, "GradScaler", recording_scaler)
    best = train(tiny_shards, make_params(epochs=1, device="cuda", amp=True), tmp_path / "c", tmp_path / "l")
    saved = load_checkpoint(tmp_path / "c" / "last.pt")["scaler"]
    assert math.isfinite(best["accuracy"]) and len(made) == 1 and made[0].is_enabled()
    assert 0 < saved["scale"] < math.inf and saved["scale"] == made[0].get_scale()


def test_classes_the_model_cannot_predict_are_refused(tiny8_shards, tmp_path):
    with pytest.raises(ValueError, match=r"num_classes 8 .*exclude_classes: \[Contempt\]"):
        train(tiny8_shards, make_params(epochs=1), tmp_path / "c", tmp_path / "l")


def test_class_weights_reach_the_loss(tiny_shards, tmp_path, monkeypatch, one_thread):
    from fermodels.models.convcut import ConvCut

    seen = []

    def weighted(self, out, batch):
        seen.append(batch["class_weight"])
        return {"ce": F.cross_entropy(out["logits"], batch["label"], weight=batch["class_weight"])}

    monkeypatch.setattr(ConvCut, "losses", weighted)
    train(tiny_shards, make_params(epochs=1, class_weights=True), tmp_path / "c", tmp_path / "l")
    counts = open_split([tiny_shards], "train").class_counts(7)
    assert torch.allclose(seen[-1], class_weight_tensor(counts, CPU))     # seen[:2] are the probe's
    monkeypatch.setattr(ConvCut, "losses",
                        lambda self, out, batch: {"ce": F.cross_entropy(out["logits"], batch["label"])})
    with pytest.raises(NotImplementedError, match="class_weight"):
        train(tiny_shards, make_params(epochs=1, class_weights=True, lr=1e-3), tmp_path / "c2", tmp_path / "l2")


def test_label_smoothing_reaches_the_loss_and_a_model_ignoring_it_is_refused(tiny_shards, tmp_path, monkeypatch,
                                                                             one_thread):
    from fermodels.models.convcut import ConvCut

    seen = []

    def smoothed(self, out, batch):
        seen.append(batch.get("label_smoothing"))
        return {"ce": F.cross_entropy(out["logits"], batch["label"], label_smoothing=batch["label_smoothing"])}

    monkeypatch.setattr(ConvCut, "losses", smoothed)
    train(tiny_shards, make_params(epochs=1, label_smoothing=0.1), tmp_path / "c", tmp_path / "l")
    assert seen[-1] == 0.1 and len(seen) > 2                              # seen[:2] are the probe's
    monkeypatch.setattr(ConvCut, "losses",
                        lambda self, out, batch: {"ce": F.cross_entropy(out["logits"], batch["label"])})
    with pytest.raises(NotImplementedError, match="train.label_smoothing is on but model"):
        train(tiny_shards, make_params(epochs=1, label_smoothing=0.1), tmp_path / "c2", tmp_path / "l2")


def test_a_dataset_listed_twice_is_refused():
    with pytest.raises(ValueError, match="train.datasets lists 'tiny' more than once"):
        make_params(datasets=["tiny", "b", "tiny"])


def test_balanced_sampling_and_class_weights_together_are_refused():
    """Each evens out the classes alone; together a rare class counts twice."""
    with pytest.raises(ValueError, match="train.sampler balanced and train.class_weights true"):
        make_params(sampler="balanced", class_weights=True)
    assert make_params(sampler="balanced").class_weights is False


def test_asam_is_a_setting_and_needs_sam(tiny_shards, tmp_path, monkeypatch, one_thread):
    """train.sam_adaptive reaches the optimiser the steps use; without train.sam it is refused."""
    with pytest.raises(ValueError, match="train.sam_adaptive true scales SAM's perturbation, but train.sam is false"):
        make_params(sam_adaptive=True)
    optimisers, real_step = [], trainer.train_step
    opt_of = lambda *a: inspect.signature(real_step).bind(*a).arguments["opt"]      # noqa: E731
    monkeypatch.setattr(trainer, "train_step", lambda *a: optimisers.append(opt_of(*a)) or real_step(*a))
    train(tiny_shards, make_params(epochs=1, sam=True, sam_adaptive=True), tmp_path / "ckpt", tmp_path / "live")
    assert optimisers and all(isinstance(o, SAM) and o.adaptive for o in optimisers)


def test_loader_workers_must_divide_the_streams():
    with pytest.raises(ValueError, match=r"train.workers 3 must divide train.streams 16: .* one of \[1, 2, 4, 8, 16\]"):
        make_params(workers=3, streams=16)
    assert make_params(workers=3, streams=12).workers == 3 and make_params(workers=0, streams=5).streams == 5
    with pytest.raises(ValueError, match="must divide train.streams"):      # its hint listed 1..10**23's divisors
        make_params(workers=2, streams=10**23 + 1)
    assert stream_count(10**23, 1000, 500) == 2                             # (hung, as that count did)


@pytest.mark.parametrize("value", [0, 1])
def test_a_shuffle_buffer_that_shuffles_nothing_is_refused(value):
    """0 and 1 passed the check and switched the per-epoch shuffle off: every epoch in one order."""
    with pytest.raises(ValueError, match="train.shuffle_buffer"):
        make_params(shuffle_buffer=value)


def test_training_gives_the_same_weights_under_any_number_of_loader_workers(tiny_shards, tmp_path, one_thread):
    """train.workers only says which process makes a batch: 0 and 2 workers (and the streams dealt
    to them otherwise) train byte-identical weights. Before, each worker shuffled its own part of the
    epoch, so changing the count trained another model."""
    from fermodels.epochplan import stream_count

    states, split = [], open_split([tiny_shards], "train")
    assert stream_count(2, split.num_samples, 4) == 2                 # two streams, dealt to the workers
    for workers in (0, 2):
        out = tmp_path / str(workers)
        train(tiny_shards, make_params(epochs=2, workers=workers, streams=2, shuffle_buffer=4, batch_size=4),
              out / "ckpt", out / "live")
        states.append(load_checkpoint(out / "ckpt" / "last.pt"))
    a, b = states
    assert a["step"] == b["step"] > 4 and a["streams"] == b["streams"] == 2
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_a_balanced_epoch_counts_its_streams_by_the_samples_it_reads(tiny_shards, tmp_path, one_thread):
    """A class-balanced epoch reads one pass over the split however many samples it makes: 400 made
    from the tiny split's 31 are one stream (8 would each read the same 4 faces every epoch)."""
    train(tiny_shards, make_params(epochs=1, sampler="balanced", epoch_samples=400), tmp_path / "ckpt",
          tmp_path / "live")
    assert load_checkpoint(tmp_path / "ckpt" / "last.pt")["streams"] == 1


def test_the_log_says_how_many_loader_workers_a_small_epoch_keeps_busy(tiny_shards, tmp_path, one_thread, caplog):
    """The tiny split (31 samples) fills no 500-sample buffer twice: one stream, made by one of the
    two workers; the other is never forked, and the log says so rather than leave the user guessing."""
    with caplog.at_level(logging.INFO, logger="fermodels.train"):
        train(tiny_shards, make_params(epochs=1, workers=2, streams=8, shuffle_buffer=500), tmp_path / "ckpt",
              tmp_path / "live")
    assert "cut into 1 shuffle stream(s), not train.streams 8" in caplog.text
    assert "1 of the 2 train.workers make its batches" in caplog.text


def test_an_8_class_model_on_data_without_contempt_is_warned(tiny_shards, tmp_path, one_thread, caplog):
    """An 8-class recipe (cmnet_affectnet8) on data prepared as AffectNet-7 trained an output no
    sample teaches, with no word; the run now says so and what to check."""
    assert not open_split([tiny_shards], "train").histogram.get("Contempt")
    with caplog.at_level(logging.INFO, logger="fermodels.trainparams"):
        train(tiny_shards, make_params(epochs=1, num_classes=8), tmp_path / "ckpt", tmp_path / "live")
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "no Contempt sample" in r.message]
    assert len(warned) == 1 and "protocol affectnet7" in warned[0].message


def test_without_a_val_split_training_keeps_its_last_epoch(tmp_path, one_thread, caplog):
    """shard.val_fraction 0 on a dataset without an official val split trains on every training face,
    as the papers do: no model selection, best.pt is the last epoch, no val metrics logged; a killed
    run resumes. (An empty val split was refused before.)"""
    from tests.fermodels.helpers import build_shards

    shards = build_shards(tmp_path / "noval", val_fraction=0.0)
    assert open_split([shards], "val").num_samples == 0
    caplog.set_level(logging.INFO, logger="fermodels.train")
    best = train(shards, make_params(epochs=2), tmp_path / "ckpt", tmp_path / "live")
    assert best == {"epoch": 1} and "best.pt is the last epoch" in caplog.text
    saved = load_checkpoint(tmp_path / "ckpt" / "best.pt")
    last = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert saved["epoch"] == last["epoch"] == 1
    assert all(torch.equal(saved["state_dict"][k], last["state_dict"][k]) for k in last["state_dict"])
    metrics = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert "val" not in metrics and metrics["train"]["samples"] == open_split([shards], "train").num_samples
    before = (tmp_path / "ckpt" / "best.pt").read_bytes()
    assert train(shards, make_params(epochs=2), tmp_path / "ckpt", tmp_path / "live") == {"epoch": 1}   # resumed
    assert (tmp_path / "ckpt" / "best.pt").read_bytes() == before and "resuming at epoch 2" in caplog.text


def test_an_empty_val_split_by_accident_is_refused_and_a_partial_one_named(tiny_shards, tmp_path, one_thread,
                                                                          caplog):
    """Only shard.val_fraction 0 (recorded in the split's _info.json) trains without selection: a
    fraction too small for the dataset is refused as before; with one dataset's val split only,
    selection says so."""
    from tests.fermodels.helpers import build_shards

    tiny_val = build_shards(tmp_path / "tinyval", val_fraction=0.001)
    assert open_split([tiny_val], "val").num_samples == 0
    with pytest.raises(ValueError, match="val split of .*tinyval.* is empty: model selection needs it"):
        train(tiny_val, make_params(epochs=1), tmp_path / "c1", tmp_path / "l1")
    noval = build_shards(tmp_path / "noval", val_fraction=0.0)
    caplog.set_level(logging.WARNING, logger="fermodels.trainparams")
    best = train([tiny_shards, noval], make_params(epochs=1, datasets=["tiny", "noval"]), tmp_path / "c2",
                 tmp_path / "l2")
    assert "accuracy" in best and f"chosen on the val split of {tiny_shards} only: {noval} has none" in caplog.text


def test_class_weight_values_and_probe():
    w = class_weight_tensor([10, 30, 0, 20], CPU)
    assert torch.allclose(w, torch.tensor([60 / 30, 60 / 90, 0.0, 60 / 60]))

    class Plain(torch.nn.Module):
        def losses(self, out, batch):
            return {"ce": F.cross_entropy(out["logits"], batch["label"])}

    class Weighted(Plain):
        def losses(self, out, batch):
            return {"ce": F.cross_entropy(out["logits"], batch["label"], weight=batch["class_weight"])}

    out = {"logits": torch.randn(4, 3)}
    batch = {"label": torch.tensor([0, 1, 2, 1]), "class_weight": torch.ones(3)}
    assert check_class_weight_used(Weighted(), out, batch) is True
    assert check_class_weight_used(Plain(), out, batch) is False
    assert check_class_weight_used(Weighted(), out, {**batch, "label": torch.zeros(4, dtype=torch.int64)}) is None
    # a first batch without class 0: a skew put on class 0 left every present class at one weight, the
    # weighted loss equal to the plain one, and training refused a model that reads the weights
    assert check_class_weight_used(Weighted(), out, {**batch, "label": torch.tensor([2, 1, 2, 1])}) is True


def test_compile_without_a_working_compiler_is_refused_in_words_before_training(tiny_shards, tmp_path):
    """train.compile where inductor cannot build kernels (no C++ compiler) died at the first training
    step, after the data was set up, on a ~100-line InductorError traceback."""
    script = (f"from tests.fermodels.helpers import make_params\nfrom fermodels.train import train\n"
              f"try:\n    train({str(tiny_shards)!r}, make_params(epochs=1, compile=True), {str(tmp_path / 'c')!r}, "
              f"{str(tmp_path / 'l')!r})\n    print('TRAINED')\n"
              f"except Exception as e:\n    print('RAISED', type(e).__name__, str(e).splitlines()[0])\n")
    env = {**os.environ, "CXX": "/nonexistent/g++", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
           "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    said = [line for line in run.stdout.splitlines() if line.startswith(("RAISED", "TRAINED"))]
    assert said and said[-1].startswith("RAISED ValueError train.compile: torch.compile cannot build kernels on cpu"), (
        run.stdout[-800:], run.stderr[-800:])
    assert not (tmp_path / "l").exists() or not any((tmp_path / "l").iterdir())        # before the run logged


@pytest.mark.slow
def test_torch_compile_on_cpu(tiny_shards, tmp_path):
    best = train(tiny_shards, make_params(epochs=1, compile=True), tmp_path / "c", tmp_path / "l")
    assert best["epoch"] == 0


# ---- device-side augmentation --------------------------------------------------------------

def _face_batch(n: int = 3, size: int = 32) -> dict:
    from fermodels.examples import synthetic_landmarks
    from ferdata.heatmap import landmark_heatmaps

    g = torch.Generator().manual_seed(0)
    image = torch.rand(n, 3, size, size, generator=g) * 255
    lmk = synthetic_landmarks(size)[None].repeat(n, 1, 1) + torch.randn(n, 68, 2, generator=g) * 0.5
    heat = landmark_heatmaps(lmk, size, size // 4, 1.0).amax(1, keepdim=True) * 255
    return {"image": image, "left": image[..., : size // 2], "right": image[..., size // 2:].flip(-1),
            "heatmap": heat, "lmk": lmk, "label": torch.zeros(n, dtype=torch.int64)}


def _aug(**kw):
    from fermodels.augment import AugmentParams

    base = dict(hflip=0.0, affine_p=0.0, degrees=0.0, translate=0.0, scale_min=1.0, scale_max=1.0, erase_p=0.0,
                erase_scale_min=0.02, erase_scale_max=0.2)
    return AugmentParams(**{**base, **kw})


def test_flip_swaps_halves_and_reindexes_landmarks():
    from fermodels.augment import augment_batch, hflip_batch

    b = _face_batch()
    f = augment_batch(b, _aug(hflip=1.0), torch.Generator().manual_seed(0), torch.zeros(3))
    s = b["image"].shape[-1]
    assert torch.equal(f["image"], b["image"].flip(-1))
    assert torch.equal(f["left"], f["image"][..., : s // 2])
    assert torch.equal(f["right"], f["image"][..., s // 2:].flip(-1))
    assert torch.equal(f["left"], b["right"]) and torch.equal(f["right"], b["left"])
    assert torch.allclose(hflip_batch(f)["lmk"], b["lmk"])
    assert torch.allclose(f["lmk"][:, 36], b["lmk"][:, 45] * torch.tensor([-1, 1]) + torch.tensor([s - 1, 0]))
    assert torch.equal(f["heatmap"], b["heatmap"].flip(-1))


def test_flip_mirrors_only_the_drawn_samples_and_keeps_uint8_pixels():
    """With hflip 0.5 each sample is either untouched or wholly mirrored (image, halves, heatmap,
    landmarks together); a uint8 batch (as decoded) stays uint8 and gets the float batch's flips."""
    from fermodels.augment import augment_batch, hflip_batch

    f = _face_batch(n=16)
    b = {**f, **{k: f[k].round().to(torch.uint8) for k in ("image", "left", "right", "heatmap")}}
    a = augment_batch(b, _aug(hflip=0.5), torch.Generator().manual_seed(2), torch.zeros(3))
    mirrored = hflip_batch(b)
    flipped = []
    for i in range(16):
        same = {k: torch.equal(a[k][i], b[k][i]) for k in ("image", "left", "right", "heatmap", "lmk")}
        mirror = {k: torch.equal(a[k][i], mirrored[k][i]) for k in same}
        assert all(same.values()) or all(mirror.values()), f"sample {i} half flipped: {same} {mirror}"
        flipped.append(not all(same.values()))
    assert 0 < sum(flipped) < 16
    assert all(a[k].dtype == torch.uint8 for k in ("image", "left", "right", "heatmap"))
    as_float = augment_batch({**b, **{k: b[k].float() for k in ("image", "left", "right", "heatmap")}},
                             _aug(hflip=0.5), torch.Generator().manual_seed(2), torch.zeros(3))
    for k in ("image", "left", "right", "heatmap", "lmk"):
        assert torch.equal(as_float[k], a[k].float()), k


@pytest.mark.parametrize("channels_last", [False, True])
def test_normalise_takes_uint8_or_float_pixels_alike_and_leaves_them_alone(channels_last):
    from fermodels.registry import create_model

    card = create_model("resnet18_112").card
    f = _face_batch(n=4)
    b = {**f, **{k: f[k].round().to(torch.uint8) for k in ("image", "left", "right", "heatmap")}}
    kept = {k: v.clone() for k, v in b.items()}
    from_uint8 = normalise(b, card, channels_last)
    from_float = normalise({k: v.float() if v.dtype == torch.uint8 else v for k, v in b.items()}, card, channels_last)
    mean, std = torch.tensor(card.mean).view(1, 3, 1, 1), torch.tensor(card.std).view(1, 3, 1, 1)
    for k in ("image", "left", "right"):
        torch.testing.assert_close(from_uint8[k], (b[k] / 255.0 - mean) / std)
        torch.testing.assert_close(from_uint8[k], from_float[k])
        assert from_uint8[k].dtype == torch.float32
        assert from_uint8[k].is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(from_uint8["heatmap"], b["heatmap"] / 255.0)
    assert all(torch.equal(b[k], kept[k]) for k in b), "normalise must not write into its input"
    as_loaded = {k: v.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2) if k in ("image", "left", "right") else v
                 for k, v in b.items()}                       # the loader's layout: NHWC memory seen as NCHW
    for x in (as_loaded, {k: v.float() if v.dtype == torch.uint8 else v for k, v in as_loaded.items()}):
        for k, y in normalise(x, card, channels_last).items():
            if k in ("image", "left", "right"):
                torch.testing.assert_close(y, from_uint8[k])
                assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_affine_moves_landmarks_with_the_pixels_and_keeps_halves_consistent():
    from fermodels.augment import augment_batch

    b = _face_batch(n=4, size=64)
    dots = torch.zeros_like(b["image"])
    for i in range(4):
        for x, y in b["lmk"][i, [36, 45, 30, 48]].round().long().tolist():
            dots[i, :, y - 1: y + 2, x - 1: x + 2] = 255.0
    b = {**b, "image": dots, "left": dots[..., :32], "right": dots[..., 32:].flip(-1)}
    a = augment_batch(b, _aug(affine_p=1.0, degrees=15.0, translate=0.08, scale_min=0.9, scale_max=1.1),
                      torch.Generator().manual_seed(3), torch.zeros(3))
    assert not torch.equal(a["image"], b["image"])
    for i in range(4):
        for x, y in a["lmk"][i, [36, 45, 30, 48]].round().long().tolist():
            assert a["image"][i, 0, y - 1: y + 2, x - 1: x + 2].max() > 100, "landmark left its pixels"
    assert torch.allclose(a["left"], a["image"][..., :32], atol=1e-4)
    assert torch.allclose(a["right"], a["image"][..., 32:].flip(-1), atol=1e-4)
    from ferdata.heatmap import landmark_heatmaps

    redrawn = landmark_heatmaps(a["lmk"], 64, 16, 1.0).amax(1).flatten(1)
    warped = a["heatmap"][:, 0].flatten(1)
    corr = torch.nn.functional.cosine_similarity(redrawn - redrawn.mean(1, keepdim=True),
                                                 warped - warped.mean(1, keepdim=True))
    assert corr.min() > 0.85, "the heatmap must move with the landmarks"


def test_erasing_covers_the_drawn_area_with_the_fill_colour():
    from fermodels.augment import augment_batch

    b = _face_batch(n=64, size=32)
    fill = torch.tensor([-1.0, -2.0, -3.0])
    a = augment_batch(b, _aug(erase_p=1.0, erase_scale_min=0.05, erase_scale_max=0.2),
                      torch.Generator().manual_seed(1), fill)
    frac = (a["image"][:, 0] == -1.0).float().mean((1, 2))
    assert frac.min() > 0.02 and frac.max() < 0.3 and torch.equal(a["lmk"], b["lmk"])
    assert torch.equal((a["left"][:, 0] == -1.0), (a["image"][:, 0, :, :16] == -1.0))
    again = augment_batch(b, _aug(erase_p=1.0, erase_scale_min=0.05, erase_scale_max=0.2),
                          torch.Generator().manual_seed(1), fill)
    assert torch.equal(a["image"], again["image"])


def test_an_erased_rectangle_fits_inside_the_image_with_the_drawn_area():
    """As torchvision's RandomErasing: a rectangle that does not fit is drawn again (up to 10 times),
    not clamped to the image side (that erased less than drawn, along a whole side)."""
    from fermodels.augment import _erase_masks

    p = _aug(erase_p=1.0, erase_scale_min=0.25, erase_scale_max=0.33)        # AffectNet recipes: up to 0.33
    masks = _erase_masks(512, 32, p, torch.Generator().manual_seed(0), torch.device("cpu"))[:, 0]
    area = masks.float().mean((1, 2))
    erased = area > 0
    assert erased.float().mean() > 0.9
    assert area[erased].min() >= 0.22 and area[erased].max() <= 0.37
    assert not masks.all(1).any() and not masks.all(2).any()                # never a whole column or row
    # torchvision's aspect ratios h / w, log-uniform over [0.3, 3.3]: tall and wide rectangles alike (a
    # fixed ratio passed every check above)
    rows, cols = masks.any(2).sum(1)[erased].double(), masks.any(1).sum(1)[erased].double()
    ratio = (rows / cols).log()
    assert ratio.min() < math.log(0.5) and ratio.max() > math.log(2) and abs(ratio.mean()) < 0.3


def test_an_identity_affine_leaves_landmarks_where_they_are():
    """Guards against dropping the half-pixel term of the pixel-centre <-> normalised map in the
    landmark warp: an affine of no rotation, shift or scale must leave every landmark in place."""
    from fermodels.augment import augment_batch

    b = _face_batch(n=4, size=64)
    a = augment_batch(b, _aug(affine_p=1.0), torch.Generator().manual_seed(0), torch.zeros(3))
    torch.testing.assert_close(a["lmk"], b["lmk"], atol=1e-4, rtol=0)
    torch.testing.assert_close(a["image"], b["image"], atol=1e-3, rtol=0)


def test_a_warped_landmark_lands_on_the_centroid_of_the_warped_blob():
    """Guards against a landmark warp off by half a pixel (pixel centres at x = j, as OpenCV and
    grid_sample(align_corners=False) place them): a smooth blob centred on the landmark is rotated,
    scaled and shifted; the landmark must follow the blob's intensity centroid to 0.3 px."""
    from fermodels.augment import augment_batch

    n, size, sigma = 8, 64, 2.0
    lmk = torch.tensor([30.3, 33.6]).repeat(n, 68, 1)                       # every point on the blob
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    blob = 255 * torch.exp(-((xs - 30.3) ** 2 + (ys - 33.6) ** 2) / (2 * sigma ** 2))
    image = blob.expand(n, 3, size, size).clone()
    b = {"image": image, "lmk": lmk, "label": torch.zeros(n, dtype=torch.int64)}
    a = augment_batch(b, _aug(affine_p=1.0, degrees=25.0, translate=0.05, scale_min=0.9, scale_max=1.1),
                      torch.Generator().manual_seed(4), torch.zeros(3))
    mass = a["image"][:, 0]
    centroid = torch.stack([(mass * xs).sum((1, 2)), (mass * ys).sum((1, 2))], 1) / mass.sum((1, 2))[:, None]
    assert (a["lmk"][:, 0] - torch.tensor([30.3, 33.6])).abs().max() > 1.0, "the draw should move the blob"
    assert (a["lmk"][:, 0] - centroid).abs().max() < 0.3


def test_drawn_affine_matrices_are_rotations_when_scale_is_one():
    """Guards against a sign slip in the rotation block (``sin`` for ``-sin`` makes a shear): with
    scale 1 and no shift, each drawn 2x2 part A must be orthonormal (A A^T = I) with det(A) = 1."""
    from fermodels.augment import _affine_matrices

    m = _affine_matrices(256, _aug(affine_p=1.0, degrees=30.0), torch.Generator().manual_seed(0))
    a = m[:, :2, :2].double()
    assert a[:, 1, 0].abs().max() > 0.3, "the draw should rotate"
    torch.testing.assert_close(a @ a.transpose(1, 2), torch.eye(2, dtype=torch.float64).expand(256, 2, 2),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(a), torch.ones(256, dtype=torch.float64), atol=1e-5, rtol=0)
    assert torch.equal(m[:, :2, 2], torch.zeros(256, 2))


def test_drawn_affine_parameters_span_torchvisions_ranges_in_both_directions():
    """Only the rotation block's shape and the identity were checked: angles drawn from [0, degrees] (never
    turning the other way), shifts from [0, translate] or at half the asked size passed. As torchvision's
    RandomAffine, by hand: angle uniform in [-degrees, degrees], shift uniform in [-translate, translate] x
    the side in pixels (normalised coordinates span 2 per side: pixels = normalised x side / 2), scale
    uniform in [scale_min, scale_max]."""
    from fermodels.augment import _affine_matrices

    n, side = 4000, 112
    m = _affine_matrices(n, _aug(affine_p=1.0, degrees=10.0, translate=0.1, scale_min=0.9, scale_max=1.1),
                         torch.Generator().manual_seed(0)).double()
    angle = torch.rad2deg(torch.atan2(m[:, 1, 0], m[:, 0, 0]))
    scale = torch.hypot(m[:, 0, 0], m[:, 1, 0])
    shift = m[:, :2, 2] * side / 2                                             # in pixels
    for x, lo, hi in ((angle, -10.0, 10.0), (scale, 0.9, 1.1), (shift[:, 0], -11.2, 11.2), (shift[:, 1], -11.2, 11.2)):
        width = hi - lo
        assert lo - 1e-4 <= x.min() < lo + 0.02 * width and hi - 0.02 * width < x.max() <= hi + 1e-4
        assert abs(x.mean().item() - (lo + hi) / 2) < 0.03 * width              # uniform: centred on the middle


def test_an_erased_rectangle_can_touch_every_edge_of_the_image():
    """Guards against an off-by-one in the rectangle's position (top/left drawn from
    [0, size - h) instead of [0, size - h]): rectangles must be able to reach the last row and
    column, as well as the first ones."""
    from fermodels.augment import _erase_masks

    p = _aug(erase_p=1.0, erase_scale_min=0.02, erase_scale_max=0.06)
    masks = _erase_masks(2000, 16, p, torch.Generator().manual_seed(0), torch.device("cpu"))[:, 0]
    assert masks[:, 0, :].any() and masks[:, :, 0].any()                    # first row, first column
    assert masks[:, -1, :].any() and masks[:, :, -1].any()                  # last row, last column


@pytest.mark.parametrize("change,words", [
    ({"augment": None}, "train.augment must be a mapping"),
    ({"augment": {"hflip": 0.5}}, "params section 'train.augment': missing keys"),
    ({"model_kwargs": [1]}, "train.model_kwargs must be a mapping"),
    ({"model_kwargs": {"foo": 1}}, "got an unexpected keyword argument 'foo' (`fermodels info"),
    ({"model": "resnet18_112", "model_kwargs": {"landmark_checkpoint": 5}},     # the keyword first, then its value
     "unexpected keyword argument 'landmark_checkpoint' (`fermodels info"),
    ({"model": "cmnet", "model_kwargs": {"pretrained": 5}}, "train.model_kwargs.pretrained must be a weight file's"),
    ({"warmup_epochs": 6, "epochs": 5}, "train.warmup_epochs 6 is more than train.epochs 5"),
])
def test_train_values_a_run_would_fail_on_late_are_refused_when_read(change, words):
    """augment null passed and crashed at the first step; model_kwargs null, a list or a typo gave
    TypeError tracebacks when the model was built; a warm-up as long as the run never reached lr."""
    with pytest.raises(ValueError, match=re.escape(words)):
        make_params(**change)


def test_augment_values_of_the_wrong_kind_are_named():
    for key, value in (("hflip", "0.5"), ("degrees", "abc"), ("translate", 5.0), ("hflip", None)):
        with pytest.raises(ValueError, match=f"train.augment.{key} must be"):
            _aug(**{key: value})


def test_augment_params_are_checked():
    with pytest.raises(ValueError, match="probability"):
        _aug(hflip=1.5)
    with pytest.raises(ValueError, match="scale_min"):
        _aug(scale_min=1.2, scale_max=1.0)


# ---- label distributions (FERPlus crossentropy / probability / multi_target) ----------------

@pytest.fixture(scope="module")
def soft_shards(tmp_path_factory):
    return build_shards(tmp_path_factory.mktemp("data") / "soft", soft_mode="probability")


@pytest.mark.parametrize("workers", [0, 2])                 # in-process, and through the workers' batch ring
def test_label_distributions_travel_from_records_to_the_loss(soft_shards, workers, tmp_path, monkeypatch, one_thread):
    """A reader's label distributions (FERPlus votes in a training label mode) are counted in the
    train split's _info.json, decoded into ``target`` and trained on; validation stays on labels."""
    import fermodels.models.convcut as convcut
    from ferdata.tario import iter_tar_samples
    from fermodels.losses import TARGET_KINDS

    split = open_split([soft_shards], "train")
    assert split.soft_labels == {"probability": split.num_samples}
    decoder = SampleDecoder(("image",), 112, targets=True)
    path = split.shards[0][0]
    for key, raw in iter_tar_samples(path):
        d = decoder({"__key__": key, **raw})
        assert d["target"].tolist() == pytest.approx(soft_label_of(d["label"]))
        assert d["target_kind"] == TARGET_KINDS["probability"]
    seen = []
    real = convcut.label_loss

    def spy(logits, batch):
        seen.append(("target" in batch, batch["target"].argmax(1).tolist() if "target" in batch else [],
                     batch["label"].tolist()))
        return real(logits, batch)

    monkeypatch.setattr(convcut, "label_loss", spy)
    train(soft_shards, make_params(epochs=1, workers=workers), tmp_path / "ckpt", tmp_path / "live")
    assert seen and all(has for has, _, _ in seen)              # every training step had targets
    drawn = [t for _, targets, _ in seen for t in targets]
    labels = [lab for _, _, batch_labels in seen for lab in batch_labels]
    assert all(t in (lab, (lab + 1) % 7) for t, lab in zip(drawn, labels))   # drawn from each distribution
    assert 0.3 < np.mean([t == lab for t, lab in zip(drawn, labels)]) < 0.9   # 0.6 expected, not always the label


def test_drawing_probability_targets_leaves_the_augmentation_draws_alone(soft_shards, tiny_shards, tmp_path,
                                                                         monkeypatch, one_thread):
    """How many rows of a batch draw a FERPlus target must not move every sample's flips and crops:
    the augmentation generator is in the same state at every step with or without targets to draw."""
    states: dict[str, list] = {"soft": [], "hard": []}
    real = trainer.augment_batch
    for name, shards in (("soft", soft_shards), ("hard", tiny_shards)):
        def spy(b, p, gen, fill, seen=states[name]):
            seen.append(gen.get_state())
            return real(b, p, gen, fill)
        monkeypatch.setattr(trainer, "augment_batch", spy)
        train(shards, make_params(epochs=1), tmp_path / name / "c", tmp_path / name / "l")
    assert len(states["soft"]) == len(states["hard"]) > 1
    assert all(torch.equal(a, b) for a, b in zip(states["soft"], states["hard"]))


@pytest.mark.parametrize("kind", ["probability", "multi_target"])
def test_the_weights_and_smoothing_probe_does_not_depend_on_the_label_mode(kind):
    """FERPlus targets: a class drawn for each row (probability) that avoids the probe's skewed class,
    or sets of labels (multi_target, never smoothed), made a model that reads both settings look as
    if it ignored them (a random NotImplementedError at the first step); one that does ignore the
    class weights is still refused."""
    from fermodels.examples import example_batch
    from fermodels.losses import TARGET_KINDS

    net = create_model("convcut", num_classes=7)
    batch = {**example_batch(net.card, 2, 7), "label": torch.tensor([0, 1]),
             "target": F.one_hot(torch.tensor([1, 1]), 8).float(),
             "target_kind": torch.full((2,), TARGET_KINDS[kind]),
             "class_weight": torch.tensor([0.5, 3, 1, 1, 1, 1, 1.0]), "label_smoothing": 0.1}
    assert trainparams.require_extras_read(net, batch, CPU, False) is True
    real = type(net).losses
    try:
        type(net).losses = lambda self, out, b: {"ce": F.cross_entropy(out["logits"], b["label"])}
        with pytest.raises(NotImplementedError, match="train.class_weights is on but model 'convcut'"):
            trainparams.require_extras_read(net, batch, CPU, False)
    finally:
        type(net).losses = real


def test_label_smoothing_on_multi_target_labels_alone_is_refused_and_on_some_warned(soft_shards, caplog):
    from dataclasses import replace

    split = open_split([soft_shards], "train")
    n = split.num_samples
    trainparams.check_smoothing_applies(0.1, split)                                  # probability rows: smoothed
    trainparams.check_smoothing_applies(0.0, replace(split, soft_labels={"multi_target": n}))
    with pytest.raises(ValueError, match="label_smoothing 0.1 does not apply to FERPlus's multi_target"):
        trainparams.check_smoothing_applies(0.1, replace(split, soft_labels={"multi_target": n}))
    trainparams.check_smoothing_applies(0.1, replace(split, soft_labels={"multi_target": n - 2}))
    assert f"the {n - 2} multi_target samples (a set of labels) are not smoothed, the other 2 are" in caplog.text


# ---- class-balanced resampling -------------------------------------------------------------

def test_class_repeat_rates_and_determinism():
    from fermodels.sampling import ClassRepeat, expected_share, repeat_stream

    r = ClassRepeat.balanced([100, 10, 0, 40], samples=150)
    assert r.rates == pytest.approx((0.5, 5.0, 0.0, 1.25))
    assert expected_share({"a": 100, "b": 10, "c": 0, "d": 40}, r, "abcd") == pytest.approx(
        {"a": 1 / 3, "b": 1 / 3, "c": 0.0, "d": 1 / 3})
    assert r.copies("k1", 1, 7, 0) == 5 and r.copies("k1", 2, 7, 0) == 0
    assert [r.copies(f"k{i}", 3, 7, 0) for i in range(50)] == [r.copies(f"k{i}", 3, 7, 0) for i in range(50)]
    assert sum(r.copies(f"k{i}", 3, 7, 0) for i in range(400)) == pytest.approx(500, rel=0.1)
    source = [{"__key__": f"s{i}", "cls": b"0"} for i in range(10)]
    out = list(repeat_stream(lambda: iter(source), r, quota=12, label_of=lambda s: int(s["cls"]), seed=7))
    assert len(out) == 12
    with pytest.raises(ValueError, match="histogram"):
        ClassRepeat.balanced([0, 0], 10)


def test_balanced_epochs_skip_a_different_part_of_a_frequent_class():
    """DAN's sampler draws afresh every epoch: a class sampled at half its size must show
    nearly all its samples over a few epochs (the same half every epoch left the rest unseen)."""
    from fermodels.sampling import ClassRepeat, repeat_stream
    from fermodels.stream import EpochPlanner

    source = [{"__key__": f"s{i:04d}", "cls": b"1" if i < 1000 else b"7"} for i in range(1030)]
    repeat = ClassRepeat.balanced([0, 1000, 0, 0, 0, 0, 0, 30], samples=1030)      # Happy 0.515x
    planner = EpochPlanner((), seed=3, rank=0)
    seen: set[str] = set()
    per_epoch = []
    for epoch in range(8):
        keys = [s["__key__"] for s in repeat_stream(lambda: iter(source), repeat, 1030, lambda s: int(s["cls"]),
                                                   planner.stream_seed(epoch)) if s["cls"] == b"1"]
        per_epoch.append(set(keys))
        seen |= set(keys)
    assert all(400 < len(k) < 620 for k in per_epoch), [len(k) for k in per_epoch]   # about half each epoch
    assert len(per_epoch[0] & per_epoch[1]) < 0.75 * len(per_epoch[0])               # not the same half
    assert len(seen) > 980, len(seen)                                                # 1 - 0.485^8: 99.7% expected
    again = [s["__key__"] for s in repeat_stream(lambda: iter(source), repeat, 1030, lambda s: int(s["cls"]),
                                                 planner.stream_seed(0)) if s["cls"] == b"1"]
    assert set(again) == per_epoch[0]                                                # a resumed epoch matches


def test_a_samples_copies_are_spread_out_not_back_to_back():
    """AffectNet-8's training counts over 10: Contempt and Disgust repeat about 10x. Copies emitted
    in a row put one image in a batch several times whatever a 500-sample shuffle buffer did (75%
    of batches of 32 held a repeat; with no buffer every batch). Drawing with replacement over the
    epoch, as ImbalancedDatasetSampler does, gives about 6%."""
    import random

    from fermodels.sampling import ClassRepeat, repeat_stream

    counts = [7487, 13441, 2546, 1409, 638, 380, 2488, 375]
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    random.Random(0).shuffle(labels)
    part = [{"__key__": f"k{i}", "cls": c} for i, c in enumerate(labels)]
    out = [s["__key__"] for s in repeat_stream(lambda: iter(part), ClassRepeat.balanced(counts, len(part)),
                                               len(part), lambda s: s["cls"], 3)]
    assert len(out) == len(part)
    batches = [out[i:i + 32] for i in range(0, len(out), 32)]
    assert sum(len(set(b)) < len(b) for b in batches) / len(batches) < 0.2
    assert max(Counter(out).values()) >= 10                             # the rare classes still repeat
    share = Counter(labels[int(k[1:])] for k in out)
    assert all(abs(share[c] / len(out) - 1 / 8) < 0.01 for c in range(8)), share


def test_a_part_whose_pass_skips_everything_by_chance_is_read_again():
    """Six samples of a class at rate 0.2: a pass emits none of them about a quarter of the time;
    that is chance, not an error (it stopped training in 14 of 50 epochs of a 95/5 split over 16
    parts). A part none of whose classes the split counts is an error."""
    from fermodels.sampling import ClassRepeat, repeat_stream

    repeat = ClassRepeat.balanced([30, 0, 150], samples=36)                # rates 0.6, 0, 0.12
    part = [{"__key__": f"k{i}", "cls": 2} for i in range(6)]
    for seed in range(200):
        assert len(list(repeat_stream(lambda: iter(part), repeat, 3, lambda s: s["cls"], seed))) == 3
    with pytest.raises(ValueError, match="no sample in it has a class the split's histogram counts"):
        list(repeat_stream(lambda: iter([{"__key__": "x", "cls": 1}]), repeat, 3, lambda s: s["cls"], 0))
    assert list(repeat_stream(lambda: iter(part), repeat, 0, lambda s: s["cls"], 0)) == []     # was endless


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_model_trains_end_to_end(name, tiny_shards, tmp_path, one_thread):
    """What `dvc exp run -S train.model=<name>` runs, on 8 samples per epoch."""
    best = train(tiny_shards, make_params(model=name, model_kwargs={}, epochs=1, epoch_samples=8, batch_size=4),
                 tmp_path / "ckpt", tmp_path / "live")
    assert best["epoch"] == 0 and load_checkpoint(tmp_path / "ckpt" / "best.pt")["model"] == name


def test_training_in_a_git_repository_without_commits_says_to_commit(tmp_path, monkeypatch):
    """DVCLive fails on a git repository's missing HEAD with a bare "Empty git repo"; the trainer
    turns it into a user error (exit 1 through the CLIs) that says what to do, and a commit fixes it."""
    import os
    import subprocess
    import sys

    from fermodels.runstate import Position

    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org", "DVC_NO_ANALYTICS": "1"}
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, env=env, capture_output=True)
    monkeypatch.chdir(tmp_path)
    main = DistEnv(rank=0, world_size=1, local_rank=0)
    with pytest.raises(ValueError, match=r"needs a commit before training \(`git add -A && git commit"):
        trainlog.open_live(tmp_path / "live", Position(0, 0, 0), main)
    for cmd in (["git", "add", "-A"], ["git", "commit", "-q", "-m", "project"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, env=env)
    live = trainlog.open_live(tmp_path / "live", Position(0, 0, 0), main)
    live.log_metric("x", 1.0)
    live.end()
    assert (tmp_path / "live" / "metrics.json").is_file()


def test_a_finished_run_whose_logs_were_removed_trains_again(tiny_shards, tmp_path, monkeypatch, one_thread):
    """A failed `dvc exp run` may remove runs/train/live; `dvc repro` then re-runs train beside a
    last.pt that finished every epoch. Resuming would train nothing and write no logs (DVC then fails
    on the missing outputs), so the run starts over."""
    import shutil

    params = make_params(epochs=1)
    train(tiny_shards, params, tmp_path / "ckpt", tmp_path / "live")
    shutil.rmtree(tmp_path / "live")
    calls, real_step = [], trainer.train_step
    monkeypatch.setattr(trainer, "train_step", lambda *a, **k: calls.append(1) or real_step(*a, **k))
    train(tiny_shards, params, tmp_path / "ckpt", tmp_path / "live")
    assert calls and (tmp_path / "live" / "metrics.json").is_file()
    assert (tmp_path / "live" / "plots" / "metrics" / "train" / "ce.tsv").is_file()
    calls.clear()
    train(tiny_shards, params, tmp_path / "ckpt", tmp_path / "live")             # logs whole: nothing to do
    assert not calls


def test_resume_position_counts_in_the_rank_layout_that_saved_it(caplog):
    """A mid-epoch batch index means nothing under another number of ranks (resuming it trained
    some samples twice and others never): refused, in words; from an epoch's end any count goes."""
    from fermodels.runstate import Position, next_position

    mid = {"epoch": 2, "batch": 3, "step": 13, "world_size": 1, "epoch_steps": 5, "streams": 4,
           "params": {"workers": 2, "streams": 8}}
    assert next_position(mid, 5, world_size=1) == Position(2, 3, 13)
    assert next_position(mid, 5, world_size=1, streams=4) == Position(2, 3, 13)
    with pytest.raises(ValueError, match=r"saved by 1 rank\(s\) x 4 shuffle stream\(s\) in the middle of epoch 2 "
                                         r".* resume it with the same numbers"):
        next_position(mid, 3, world_size=2)
    end = {**mid, "batch": 5, "step": 15}
    assert next_position(end, 3, world_size=2) == Position(3, 0, 15)
    assert "not the run 1 rank(s) x 4 shuffle stream(s) would have made" in caplog.text
    older = {k: v for k, v in mid.items() if k not in ("world_size", "epoch_steps", "streams")}   # before layouts
    assert next_position(older, 5, world_size=1) == Position(2, 3, 13)


def test_a_run_goes_on_under_other_loader_workers_even_mid_epoch(tmp_path, caplog):
    """`train.workers` only sets which process makes a batch: a run continues under another count
    from anywhere, and resume_state does not start it over. `train.streams` sets the sample order:
    another value is another run, started over (it went on from the finished epochs before, so a
    finished run trained nothing and its last.pt kept the old count). next_position, given another
    effective count (another number of ranks can give one), goes on from an epoch's end with a
    warning and refuses the middle of one."""
    from fermodels.runstate import Position, next_position, resume_state

    params, data = {"epochs": 3, "lr": 0.1, "workers": 2, "streams": 4}, {"datasets": ["x"]}
    state = bare_checkpoint(params, data, epoch=1, batch=3, step=8, world_size=1, epoch_steps=5, streams=4,
                            optimizer={})
    torch.save(state, tmp_path / "last.pt")
    for workers in (0, 1, 4):
        resumed = resume_state(tmp_path, {**params, "workers": workers}, data)
        assert resumed is not None and resumed["epoch"] == 1
        assert next_position(resumed, 5, world_size=1, streams=4) == Position(1, 3, 8)
    assert resume_state(tmp_path, {**params, "streams": 8}, data) is None
    with pytest.raises(ValueError, match=r"x 4 shuffle stream\(s\) in the middle of epoch 1 .*start over with "
                                         r"1 rank\(s\) x 8 shuffle stream\(s\)"):
        next_position(resumed, 5, world_size=1, streams=8)
    assert next_position({**resumed, "batch": 5}, 5, world_size=1, streams=8) == Position(2, 0, 8)
    assert next_position(resumed, 4, world_size=1, streams=8) == Position(1, 3, 8)    # 4 batches: 4 streams either way
    assert resume_state(tmp_path, {**params, "lr": 0.2}, data) is None                   # a real change still restarts


def test_checkpoints_keep_the_gradient_scaler(tmp_path):
    """fp16 training's loss scale survives a resume (it restarted at 65536, skipping steps an
    uninterrupted run would not)."""
    from fermodels.runstate import Position, save_checkpoint

    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    net = create_model("resnet18_112", num_classes=7)
    save_checkpoint(tmp_path / "last.pt", model=net, params=make_params(model="resnet18_112", model_kwargs={}),
                    optimizer=None, position=Position(0, 1, 1), best={}, data={}, preprocess={},
                    scaler=scaler.state_dict(), resume={"world_size": 1, "epoch_steps": 4})
    state = load_checkpoint(tmp_path / "last.pt")
    restored = torch.amp.GradScaler("cpu")
    restored.load_state_dict(state["scaler"])
    assert restored.get_scale() == 1024.0 and restored.get_growth_interval() == 7
    assert (state["world_size"], state["epoch_steps"]) == (1, 4)


def test_class_shares_are_logged_only_when_they_cover_the_epoch(caplog):
    """An epoch resumed from a checkpoint that kept no per-class counts has counts for part of it
    only: its shares would come out too low, so none are logged."""
    caplog.set_level("INFO", logger="fermodels.trainlog")
    trainlog.log_epoch(None, 0, [({"ce": 2.0}, 4, 0.0, [1, 3]), ({"ce": 2.0}, 4, 0.0, [2, 2])], 0.1, 1.0,
                       {"accuracy": 0.5})
    assert "epoch 0 trained on: Neutral 37.5% Happy 62.5%" in caplog.text
    caplog.clear()
    trainlog.log_epoch(None, 1, [({"ce": 2.0}, 4, 0.0, [0, 1])], 0.1, 1.0, {"accuracy": 0.5})
    assert "trained on" not in caplog.text and "epoch 1:" in caplog.text


def test_the_heatmap_baseline_trains_on_the_stored_heatmaps(tiny_shards, tmp_path, monkeypatch, one_thread):
    """The stored heatmap reaches a model through the loader, the flip and the affine warp: every
    training batch's heatmap is the shards' (non-zero on each face, in [0, 1], at a quarter of the
    side), and the run trains and scores like any other."""
    from fermodels.evaluate import EvalParams, evaluate
    from fermodels.models.baselines import ResNet18HeatmapAttention

    seen = []
    real_forward = ResNet18HeatmapAttention.forward

    def forward(self, batch):
        if self.training:
            seen.append(batch["heatmap"].detach().clone())
        return real_forward(self, batch)

    monkeypatch.setattr(ResNet18HeatmapAttention, "forward", forward)
    augment = {**make_params().augment.__dict__, "hflip": 0.5, "affine_p": 1.0, "degrees": 10.0}
    params = make_params(model="resnet18_heatmap_112", model_kwargs={}, epochs=1, augment=augment)
    train(tiny_shards, params, tmp_path / "ckpt", tmp_path / "live")
    assert seen and sum(len(h) for h in seen) == open_split([tiny_shards], "train").num_samples
    for heat in seen:
        assert heat.shape[1:] == (1, 28, 28) and 0 <= heat.min() and heat.max() <= 1
        assert heat.amax(dim=(1, 2, 3)).min() > 0.5                # every face's landmarks are there
    fast = EvalParams("test", 4, 0, "cpu", False, False, 0)
    assert evaluate(tmp_path / "ckpt" / "best.pt", tiny_shards, fast, tmp_path / "eval")["num_samples"] > 0


def test_each_step_and_rank_draws_its_own_augmentation_and_a_resume_the_same():
    """Dropout and augmentation are seeded per (seed, epoch, step, rank): one rank's flips are not its
    peers' (else every GPU mirrored the same faces), and the same step on the same rank draws alike."""
    from fermodels.train import seed_step

    def draws(seed: int, epoch: int, step: int, rank: int) -> tuple[list, list, list]:
        gen, targets = seed_step(seed, epoch, step, rank)
        return torch.rand(8).tolist(), torch.rand(8, generator=gen).tolist(), torch.rand(8, generator=targets).tolist()

    base = draws(0, 1, 5, 0)
    assert draws(0, 1, 5, 0) == base                                        # a resumed step: the same
    for other in (draws(0, 1, 5, 1), draws(0, 1, 6, 0), draws(0, 2, 5, 0), draws(1, 1, 5, 0)):
        assert all(a != b for a, b in zip(base, other))                     # torch, augmentation, targets
    assert base[1] != base[2]                                               # the two generators apart


def test_non_finite_weights_mid_epoch_are_not_saved_by_checkpoint_every(tiny_shards, tmp_path, monkeypatch,
                                                                       one_thread):
    params = make_params(epochs=1, checkpoint_every=1)
    info = json.loads((tiny_shards / "train" / "_info.json").read_text())
    assert math.ceil(info["num_samples"] / params.batch_size) >= 3       # step 2 is not the epoch's last
    _weights_overflow_at(2, monkeypatch)
    with pytest.raises(NonFiniteLossError, match=r"non-finite weights .*last good checkpoint kept at"):
        train(tiny_shards, params, tmp_path / "c", tmp_path / "l")
    state = load_checkpoint(tmp_path / "c" / "last.pt")["state_dict"]           # step 1's
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_a_failed_log_write_names_the_log_folder():
    """DVCLive's writes name no file: a full disk said only '[Errno 28] No space left on device'."""
    class FullDisk:
        dir = "runs/train/live"

        def log_metric(self, *args):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError) as err:
        trainlog.log_epoch(FullDisk(), 0, [({"ce": 1.0}, 2, 0.0, [1, 1])], 0.1, 1.0, {})
    assert err.value.errno == 28 and err.value.__notes__ == ["while writing the training logs in runs/train/live"]


def test_training_stopped_by_an_error_stops_its_validation_workers(tiny_shards, tmp_path, monkeypatch):
    """An error after the first validation (DVCLive's write on a full disk): the training loader's
    workers stopped, the validation loader's persistent ones ran on while the error was held (the
    command's excepthook, a caller), and at exit multiprocessing killed them: each left its pymp-*
    folder in $TMPDIR, every run."""
    import multiprocessing

    def full_disk(live, epoch, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trainer, "log_epoch", full_disk)
    with pytest.raises(OSError) as caught:
        train(tiny_shards, make_params(epochs=2, workers=2, shuffle_buffer=4), tmp_path / "ckpt", tmp_path / "live")
    assert caught.value.errno == 28 and multiprocessing.active_children() == []


def test_runs_from_a_git_project_without_dvc_init_nothing_and_keep_no_descriptors(tiny_shards, tmp_path,
                                                                                   monkeypatch):
    """Training from a git project of the user's own (no DVC): DVCLive ran `dvc init` there, staging
    .dvc/ and .dvcignore in the user's index; and it never closed the DVC repository it opened (4-8
    descriptors per run in one process: a sweep of ~125 runs reached a 1024 limit)."""
    import gc

    project = tmp_path / "project"
    project.mkdir()
    git = ["git", "-C", str(project), "-c", "user.email=t@t", "-c", "user.name=t"]
    (project / "README").write_text("x\n")
    for cmd in (["init", "-q"], ["add", "README"], ["commit", "-qm", "x"]):
        subprocess.run(git + cmd, check=True)
    monkeypatch.chdir(project)
    counts = []
    for run in range(3):
        train(tiny_shards, make_params(epochs=1), project / f"r{run}" / "ckpt", project / f"r{run}" / "live")
        gc.collect()
        counts.append(len(os.listdir("/proc/self/fd")))
    staged = subprocess.run(git + ["status", "--short", "--untracked-files=no"], capture_output=True, text=True,
                            check=True).stdout
    assert not (project / ".dvc").exists() and staged == "", staged
    assert counts[2] <= counts[0], f"descriptors after each run: {counts}"


@pytest.mark.parametrize("split, says", [
    ("train", r"training sample '{key}' is Contempt \(class id 7\), which a 7-class model cannot learn"),
    ("val", r"the val split of .* holds \{{'Contempt': 1\}}, which a 7-class model cannot predict, though its "
            r"_info.json counts none")])
def test_a_sample_of_a_class_the_model_lacks_is_one_line(tiny_shards, tmp_path, split, says):
    """The split's _info.json histogram counts no Contempt, but a sample of its shards is one (an
    edited or mixed shard: verify names it): training ended on cross-entropy's IndexError traceback
    ("Target 7 is out of bounds"); a val one was left out of model selection without a word."""
    import hashlib
    import io
    import shutil
    import tarfile

    shards = shutil.copytree(tiny_shards, tmp_path / "shards")
    tar = sorted((shards / split).glob("*.tar"))[0]
    with tarfile.open(tar) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    key = members[0][0].name.split(".")[0]
    tar.chmod(0o644)
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as t:
        for m, data in members:
            data = b"7" if m.name == f"{key}.cls" else data
            m.size = len(data)
            t.addfile(m, io.BytesIO(data))
    info_path = shards / split / "_info.json"
    info = json.loads(info_path.read_text())
    for entry in info["shards"]:                         # sha256 and bytes agree: only the histogram lies
        if entry["name"] == tar.name:
            entry["sha256"], entry["bytes"] = hashlib.sha256(tar.read_bytes()).hexdigest(), tar.stat().st_size
    info_path.chmod(0o644)
    info_path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match=says.format(key=key)):
        train(shards, make_params(epochs=1), tmp_path / "ckpt", tmp_path / "live")


def _val_split(histogram: dict[str, int]):
    from fermodels.shardsplit import Split

    n = sum(histogram.values())
    return Split(name="val", dirs=("d",), shards=(("d/val-000000.tar", n),), histogram=histogram, hashes={"d": ["h"]})


@pytest.mark.parametrize("rebalance", [{"sampler": "balanced"}, {"class_weights": True}])
def test_rebalanced_training_selected_on_plain_accuracy_of_an_uneven_val_split_is_warned(rebalance, caplog):
    uneven = _val_split({"Neutral": 40, "Happy": 94, "Sad": 20, "Contempt": 3})   # AffectNet's carved val, scaled
    even = _val_split({"Neutral": 10, "Happy": 12, "Sad": 8})
    trainparams.check_selection_metric(make_params(**rebalance), uneven)
    assert "evens out the classes, but best.pt is chosen on plain accuracy" in caplog.text
    assert "hold 20 to 94 samples" in caplog.text, "Contempt is beyond a 7-class model: not counted"
    caplog.clear()
    for params, split in [(make_params(**rebalance), even), (make_params(), uneven),
                          (make_params(**rebalance, select_metric="mean_class_accuracy"), uneven)]:
        trainparams.check_selection_metric(params, split)
    assert "plain accuracy" not in caplog.text


def test_train_checks_the_selection_metric_against_its_val_split(tiny_shards, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(trainer, "check_selection_metric", lambda params, split: seen.append(split.name))
    monkeypatch.setattr(trainer, "check_same_preparation", lambda *a: (_ for _ in ()).throw(SystemExit("stop")))
    with pytest.raises(SystemExit, match="stop"):
        train(tiny_shards, make_params(epochs=1, sampler="balanced"), tmp_path / "ckpt", tmp_path / "live")
    assert seen == ["val"]
