"""Scoring a model over a loader of shard samples: the probabilities (:func:`predict_loader`), a split's
metrics under DDP (:func:`score_split`, training's validation) and the numeric settings both run under
(:func:`autocast`, :func:`full_float32`). Shared by the trainer, the evaluator and ``ferdata predict``;
kept apart from :mod:`fermodels.evaluate` (the evaluate stage: its checks, metrics files and batch
check) so that editing the evaluate stage does not change the code training runs (dvc.yaml's train
deps, the checkpoints' ``data.code``), and training does not start over for it.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from ferdata.classes import class_names
from fermodels.augment import hflip_batch
from fermodels.distributed import DistEnv, all_gather_objects
from fermodels.indexed import IndexedSplit, indexed_loader
from fermodels.metrics import confusion_matrix, metrics_from_confusion
from fermodels.modelinput import normalise, to_device
from fermodels.registry import ModelCard
from fermodels.runstate import model_from_checkpoint


def amp_dtype(device: torch.device) -> torch.dtype:
    """bf16 where supported (CPU, Ampere+ GPUs), fp16 on older GPUs."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=amp_dtype(device)) if enabled else nullcontext()


@contextmanager
def full_float32():
    """float32 convolutions and matmuls at full precision on a GPU: cuDNN's default TF32 (Ampere
    and later) rounds their inputs to 10 mantissa bits, and the kernels it picks change with the
    batch size, so a face's probabilities moved with its batch by more than the batch check's
    :data:`fermodels.evaluate.SAME_PROB`, and near-tied epochs swapped places in validation. Through torch's
    ``fp32_precision`` settings (the legacy ``allow_tf32`` flags cannot be read once a user set
    those), restored as found when the last thread inside leaves: they are the process's, and two
    threads (one Predictor in a thread-pool server) each saving and restoring them left one's forward
    under TF32 and the process at "ieee" for good."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    with _FULL_FLOAT32.lock:
        if _FULL_FLOAT32.inside == 0:
            _FULL_FLOAT32.saved = conv.fp32_precision, matmul.fp32_precision
            conv.fp32_precision = matmul.fp32_precision = "ieee"
        _FULL_FLOAT32.inside += 1
    try:
        yield
    finally:
        with _FULL_FLOAT32.lock:
            _FULL_FLOAT32.inside -= 1
            if _FULL_FLOAT32.inside == 0:
                conv.fp32_precision, matmul.fp32_precision = _FULL_FLOAT32.saved


@dataclass
class _Inside:
    """How many threads are inside :func:`full_float32`, and the settings the first one found."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    inside: int = 0
    saved: tuple[str, str] = ("", "")


_FULL_FLOAT32 = _Inside()


def scoring_model(state: dict, device: torch.device) -> torch.nn.Module:
    """A checkpoint's model as evaluation and prediction run it: on ``device``, in eval mode, weights
    channels_last (the faster layout on GPUs and on this project's CPUs; images to match)."""
    return model_from_checkpoint(state).to(device).to(memory_format=torch.channels_last)


@torch.no_grad()
def predict_loader(model: torch.nn.Module, loader, card: ModelCard, device: torch.device, *,
                   flip_tta: bool, amp: bool = False, channels_last: bool = True,
                   ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(labels, probabilities, keys) over a loader of collated uint8 batches, in loader order. The
    probabilities stay on the device until the end: a copy back per batch would make the host wait
    for each batch's forward instead of queuing the next one. ``channels_last``: the images' memory
    format, the model's (:func:`scoring_model` converts it; training's as ``train.channels_last``).
    In full float32 (:func:`full_float32`) where ``amp`` is off. Scored in eval mode; the model is left in
    the mode it came in (a training loop of one's own that validates with this went on in eval mode)."""
    was_training = model.training
    model.eval()
    labels, probs, keys = [], [], []
    try:
        for batch in loader:
            b = normalise(to_device(batch, device, card.input_size), card, channels_last)
            with autocast(device, amp), full_float32():
                p = model(b)["logits"].float().softmax(-1)
                if flip_tta:
                    p = (p + model(hflip_batch(b))["logits"].float().softmax(-1)) / 2
            labels.append(batch["label"].numpy())
            probs.append(p)
            keys += batch["key"]
    finally:
        model.train(was_training)
    if not labels:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32), []
    return np.concatenate(labels), torch.cat(probs).cpu().numpy(), keys


def nonfinite_rows(probs: np.ndarray) -> int:
    """How many faces' probabilities hold a NaN or inf (argmax scores such a row as class 0)."""
    return int((~np.isfinite(probs).all(1)).sum())


def rank_loader(dataset: IndexedSplit, env: DistEnv, batch_size: int, workers: int,
                persistent: bool = False) -> DataLoader:
    """This rank's share of ``dataset`` for :func:`score_split`: every world_size-th sample."""
    return indexed_loader(dataset, range(env.rank, len(dataset), env.world_size), batch_size, workers, persistent)


@torch.no_grad()
def score_split(model: torch.nn.Module, loader: DataLoader, num_classes: int, env: DistEnv,
                device: torch.device, channels_last: bool) -> dict:
    """Metrics on a whole split under DDP from each rank's :func:`rank_loader`; results are
    gathered (no per-batch collective, so unequal shares cannot hang). In float32 whatever
    ``train.amp`` is, as :func:`fermodels.evaluate.evaluate` scores: the epoch ``best.pt`` keeps is chosen by the
    computation that reports it, not by half-precision rounding between near-tied epochs."""
    labels, probs, _ = predict_loader(model, loader, model.card, device, flip_tta=False, channels_last=channels_last)
    parts = all_gather_objects((labels, probs.argmax(1) if probs.size else labels, nonfinite_rows(probs)), env)
    if bad := sum(p[2] for p in parts):         # every rank raises: argmax would score them as class 0
        raise ValueError(f"validation: the model's probabilities are not finite (NaN or inf) for {bad} of the "
                         f"{sum(len(p[0]) for p in parts)} samples: it overflows on them")
    y, pred = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    classes = class_names(num_classes)
    return metrics_from_confusion(confusion_matrix(y, pred, len(classes)), classes)
