"""The evaluator: metrics, confusion matrix (JSON for `dvc plots`, PNG), optional flip TTA,
and a batch-composition check that exposes cross-sample leaks (e.g. ``convcut_paper``)."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ferdata.io import atomic_write_text
from fermodels.data import make_loader, to_device
from fermodels.metrics import confusion_matrix, metrics_from_confusion
from fermodels.runstate import load_checkpoint, model_from_checkpoint
from fermodels.train import autocast, pick_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalParams:
    split: str
    batch_size: int
    workers: int
    device: str
    flip_tta: bool
    batch_check: bool


def _flip_batch(b: dict) -> dict:
    """Mirror a normalised batch: image flips, halves swap, landmarks permute (see hflip_sample)."""
    from ferdata.geometry import FLIP_68

    f = dict(b)
    f["image"] = b["image"].flip(-1)
    if "left" in b:
        f["left"], f["right"] = b["right"], b["left"]
    if "heatmap" in b:
        f["heatmap"] = b["heatmap"].flip(-1)
    if "lmk" in b:
        lmk = b["lmk"][:, torch.as_tensor(FLIP_68, device=b["lmk"].device)].clone()
        lmk[..., 0] = (b["image"].shape[-1] - 1) - lmk[..., 0]
        f["lmk"] = lmk
    return f


@torch.no_grad()
def predict_probs(model, shard_dir, split, card, device, *, batch_size: int, workers: int,
                  flip_tta: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    loader, _ = make_loader(shard_dir, split, card, batch_size=batch_size, workers=workers, train=False,
                            seed=0, epoch=0, shuffle_buffer=0)
    labels, probs, keys = [], [], []
    for batch in loader:
        b = to_device(batch, card, device)
        with autocast(device, False):
            p = model(b)["logits"].float().softmax(-1)
            if flip_tta:
                p = (p + model(_flip_batch(b))["logits"].float().softmax(-1)) / 2
        labels.append(batch["label"].numpy())
        probs.append(p.cpu().numpy())
        keys += batch["key"]
    return np.concatenate(labels), np.concatenate(probs), keys


def batch_composition_check(model, shard_dir, split, card, device, params: EvalParams,
                            probs: np.ndarray, keys: list[str]) -> dict:
    """Re-predict with batch size 1 (and reversed order); a per-sample model gives the same answers."""
    _, single, single_keys = predict_probs(model, shard_dir, split, card, device, batch_size=1,
                                           workers=params.workers, flip_tta=params.flip_tta)
    pos = {k: i for i, k in enumerate(single_keys)}
    single = single[[pos[k] for k in keys]]
    changed = int((single.argmax(1) != probs.argmax(1)).sum())
    return {"max_prob_diff": float(np.abs(single - probs).max()), "changed_predictions": changed,
            "independent_of_batch": bool(changed == 0 and np.abs(single - probs).max() < 1e-4)}


def evaluate(checkpoint: str | Path, shard_dir: str | Path, params: EvalParams, out_dir: str | Path) -> dict:
    out = Path(out_dir)
    state = load_checkpoint(checkpoint)
    device = pick_device(params.device)
    model = model_from_checkpoint(state).to(device)
    classes = tuple(state["classes"])
    labels, probs, keys = predict_probs(model, shard_dir, params.split, model.card, device,
                                        batch_size=params.batch_size, workers=params.workers,
                                        flip_tta=params.flip_tta)
    preds = probs.argmax(1)
    cm = confusion_matrix(labels, preds, len(classes))
    metrics = metrics_from_confusion(cm, classes)
    metrics.update({"model": state["model"], "split": params.split, "best_epoch": state["epoch"],
                    "flip_tta": params.flip_tta})
    if params.batch_check:
        metrics["batch_composition"] = batch_composition_check(model, shard_dir, params.split, model.card,
                                                               device, params, probs, keys)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    rows = [{"actual": classes[t], "predicted": classes[p]} for t, p in zip(labels, preds)]
    atomic_write_text(out / "confusion.json", json.dumps(rows, indent=1) + "\n")
    plot_confusion(cm, classes, out / "confusion.png", title=f"{state['model']} on {params.split}")
    log.info("evaluate: acc %.4f, mean class acc %.4f, macro-F1 %.4f on %d samples", metrics["accuracy"],
             metrics["mean_class_accuracy"], metrics["macro_f1"], metrics["num_samples"])
    return metrics


def plot_confusion(cm: np.ndarray, classes: tuple[str, ...], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keep = (cm.sum(0) + cm.sum(1)) > 0
    cm, names = cm[keep][:, keep], [c for c, k in zip(classes, keep) if k]
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 1.1 * len(names) + 1.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{cm[i, j]}", ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
