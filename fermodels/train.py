"""The trainer: a short explicit loop over shards, with named losses, a pure LR schedule,
validation-based model selection, DVCLive logging and exact resume.

Best epoch is chosen on the validation split, never on test.
"""
from __future__ import annotations

import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ferdata.classes import class_names
from fermodels.data import make_loader, to_device
from fermodels.metrics import confusion_matrix, metrics_from_confusion
from fermodels.optim import build_optimizer, lr_at
from fermodels.registry import create_model
from fermodels.runstate import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)
LAST, BEST = "last.pt", "best.pt"


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/inf; the last good checkpoint is kept untouched."""


@dataclass(frozen=True)
class TrainParams:
    model: str
    model_kwargs: dict = field(hash=False)
    num_classes: int
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float
    momentum: float
    schedule: str
    warmup_epochs: float
    step_size: int
    gamma: float
    seed: int
    workers: int
    device: str
    amp: bool
    channels_last: bool
    shuffle_buffer: int
    class_weights: bool


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast where supported (CUDA with bf16, or CPU), else fp16 on CUDA."""
    if not enabled:
        return nullcontext()
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", dtype=torch.bfloat16)


@torch.no_grad()
def predict(model, loader, card, device, amp: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(labels, logits, keys) over a loader, in loader order."""
    model.eval()
    labels, logits, keys = [], [], []
    for batch in loader:
        b = to_device(batch, card, device)
        with autocast(device, amp):
            out = model(b)
        labels.append(batch["label"].numpy())
        logits.append(out["logits"].float().cpu().numpy())
        keys += batch["key"]
    return np.concatenate(labels), np.concatenate(logits), keys


def train(shard_dir: str | Path, params: TrainParams, ckpt_dir: str | Path, live_dir: str | Path) -> dict:
    """Train ``params.model`` on ``shard_dir`` (train/val splits); returns the best val metrics.

    ``ckpt_dir`` holds ``last.pt``/``best.pt`` (kept between runs for resume);
    ``live_dir`` receives the DVCLive metrics and plots.
    """
    out = Path(ckpt_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(params.device)
    seed_everything(params.seed)
    model = create_model(params.model, num_classes=params.num_classes, **params.model_kwargs).to(device)
    if params.channels_last:
        model = model.to(memory_format=torch.channels_last)
    card = model.card
    opt = build_optimizer(params.optimizer, [p for p in model.parameters() if p.requires_grad],
                          params.lr, params.weight_decay, params.momentum)
    _, train_info = make_loader(shard_dir, "train", card, batch_size=params.batch_size, workers=0,
                                train=True, seed=params.seed, epoch=0, shuffle_buffer=0)
    _, val_info = make_loader(shard_dir, "val", card, batch_size=params.batch_size, workers=0,
                              train=False, seed=params.seed, epoch=0, shuffle_buffer=0)
    data = {s: [sh["sha256"] for sh in info["shards"]] for s, info in (("train", train_info), ("val", val_info))}
    class_weight = _class_weights(train_info, params.num_classes, device) if params.class_weights else None
    if class_weight is not None:
        model.class_weight = class_weight  # read by models' CE losses when present
    start_epoch, step, best = 0, 0, {"val_accuracy": -1.0, "epoch": -1}
    if (out / LAST).is_file():
        state = load_checkpoint(out / LAST)
        if state["params"] != _plain(params) or state["data"] != data:
            log.warning("checkpoint in %s is from other params or data: starting over", out)
        else:
            model.load_state_dict(state["state_dict"])
            opt.load_state_dict(state["optimizer"])
            start_epoch, step, best = state["epoch"] + 1, state["step"], state["best"]
            log.info("resuming at epoch %d (step %d)", start_epoch, step)
    from dvclive import Live

    steps_per_epoch = max(1, math.ceil(train_info["num_samples"] / params.batch_size))
    with Live(dir=str(live_dir), resume=start_epoch > 0, save_dvc_exp=False, dvcyaml=None) as live:
        for epoch in range(start_epoch, params.epochs):
            seed_everything(params.seed * 1000 + epoch)
            loader, _ = make_loader(shard_dir, "train", card, batch_size=params.batch_size,
                                    workers=params.workers, train=True, seed=params.seed, epoch=epoch,
                                    shuffle_buffer=params.shuffle_buffer)
            model.train()
            sums, seen, t0 = {}, 0, time.perf_counter()
            for i, batch in enumerate(loader):
                lr = lr_at(epoch + i / steps_per_epoch, base_lr=params.lr, schedule=params.schedule,
                           epochs=params.epochs, warmup_epochs=params.warmup_epochs,
                           step_size=params.step_size, gamma=params.gamma)
                for g in opt.param_groups:
                    g["lr"] = lr
                b = to_device(batch, card, device, params.channels_last)
                with autocast(device, params.amp):
                    losses = model.losses(model(b), b)
                total = sum(losses.values())
                if not torch.isfinite(total):
                    raise NonFiniteLossError(
                        f"non-finite loss {float(total)} at epoch {epoch} step {step} ({_fmt(losses)}); "
                        f"last good checkpoint kept at {out / LAST}; lower train.lr or disable train.amp")
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
                step += 1
                n = len(batch["label"])
                seen += n
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
            elapsed = time.perf_counter() - t0
            val = evaluate_split(model, shard_dir, "val", card, device, params)
            for k, v in sums.items():
                live.log_metric(f"train/{k}", v / max(seen, 1))
            live.log_metric("train/lr", lr)
            live.log_metric("train/samples_per_s", seen / max(elapsed, 1e-9))
            live.log_metric("val/accuracy", val["accuracy"])
            live.log_metric("val/mean_class_accuracy", val["mean_class_accuracy"])
            live.log_metric("val/macro_f1", val["macro_f1"])
            log.info("epoch %d: %s val acc %.4f (%.1f samples/s)", epoch,
                     _fmt({k: v / max(seen, 1) for k, v in sums.items()}), val["accuracy"], seen / elapsed)
            if val["accuracy"] > best["val_accuracy"]:
                best = {"val_accuracy": val["accuracy"], "val_mean_class_accuracy": val["mean_class_accuracy"],
                        "epoch": epoch}
                _save(out / BEST, model, params, opt, epoch, step, best, data)
            _save(out / LAST, model, params, opt, epoch, step, best, data)
            live.next_step()
    return best


def evaluate_split(model, shard_dir, split, card, device, params: TrainParams) -> dict:
    loader, _ = make_loader(shard_dir, split, card, batch_size=params.batch_size, workers=params.workers,
                            train=False, seed=params.seed, epoch=0, shuffle_buffer=0)
    labels, logits, _ = predict(model, loader, card, device, params.amp)
    cm = confusion_matrix(labels, logits.argmax(1), params.num_classes)
    return metrics_from_confusion(cm, class_names(params.num_classes))


def _class_weights(info: dict, num_classes: int, device) -> torch.Tensor:
    counts = np.array([info["class_histogram"].get(n, 0) for n in class_names(num_classes)], np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max(1, (counts > 0).sum()), 0.0)
    return torch.tensor(w, dtype=torch.float32, device=device)


def _plain(params: TrainParams) -> dict:
    from dataclasses import asdict

    return asdict(params)


def _save(path, model, params, opt, epoch, step, best, data) -> None:
    save_checkpoint(path, model=model, model_name=params.model, model_kwargs=params.model_kwargs,
                    num_classes=params.num_classes, optimizer=opt, epoch=epoch, step=step, best=best,
                    params=params, data=data)


def _fmt(losses: dict) -> str:
    return " ".join(f"{k}={float(v):.4f}" for k, v in losses.items())
