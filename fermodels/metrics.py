"""Classification metrics from a confusion matrix (rows = true class, columns = predicted),
and the confusion-matrix outputs DVC shows: rows for ``dvc plots`` and a PNG.

Macro averages run over the classes present in the ground truth, so a 7-class test set scored
by an 8-class model (or a cross-dataset test set missing a class) is not penalised for the
absent class's undefined recall; wrong predictions *of* that class still count as errors.
This differs from scikit-learn's ``f1_score(average="macro")``, which averages over the classes
in the labels *or* the predictions (a predicted absent class adds an F1 of 0): the two agree
whenever every predicted class occurs in the test set. Mean class accuracy equals
``balanced_accuracy_score``.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from ferdata.atomic import atomic_write_bytes

SUMMARY_METRICS = ("accuracy", "mean_class_accuracy", "macro_f1")   # the figures a run is selected and compared on


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    y_true, y_pred = _class_indices(y_true, "labels"), _class_indices(y_pred, "predictions")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{y_true.shape[0]} labels but {y_pred.shape[0]} predictions")
    if y_true.size and (min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= num_classes):
        raise ValueError(f"labels/predictions outside 0..{num_classes - 1}")
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def _class_indices(values: Sequence[int], what: str) -> np.ndarray:
    """``values`` as int64 class indices; refused unless each is a whole number (a float cast would cut 2.7 to 2)."""
    array = np.asarray(values)
    if array.dtype.kind not in "iub" and not (array.size == 0 or np.array_equal(array, np.round(array))):
        raise ValueError(f"{what} must be class indices (whole numbers), got e.g. {array[array != np.round(array)][0]}")
    return array.astype(np.int64)


def metrics_from_confusion(cm: np.ndarray, class_names: Sequence[str]) -> dict:
    """Accuracy, mean class accuracy (balanced accuracy), macro-F1, and per-class P/R/F1/support for
    each class in the labels or the predictions (a class in neither has no figure to give: it is left
    out, so ``per_class``'s keys can differ between test sets)."""
    cm = np.asarray(cm, np.float64)
    if cm.ndim != 2 or cm.shape != (len(class_names), len(class_names)):
        raise ValueError(f"a {' x '.join(map(str, cm.shape))} confusion matrix for {len(class_names)} class names")
    support, predicted, tp = cm.sum(1), cm.sum(0), np.diag(cm)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    total = cm.sum()
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "mean_class_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "num_samples": int(total),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(class_names) if support[i] > 0 or predicted[i] > 0
        },
    }


def confusion_rows(y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str]) -> list[dict]:
    """One ``{"actual", "predicted"}`` row per sample: DVC's ``confusion`` plot template input."""
    return [{"actual": class_names[t], "predicted": class_names[p]} for t, p in zip(y_true, y_pred)]


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: str | Path, title: str) -> None:
    """Row-normalised confusion matrix with counts, classes absent from both axes left out. Drawn on a
    figure of its own, outside pyplot: the process's backend (a notebook's inline one) and its open
    figures stay as they were (``matplotlib.use("Agg")`` here switched a notebook to Agg for good)."""
    from matplotlib.figure import Figure

    keep = (cm.sum(0) + cm.sum(1)) > 0
    cm, names = cm[keep][:, keep], [c for c, k in zip(class_names, keep) if k]
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(1.1 * len(names) + 2, 1.1 * len(names) + 1.5))
    ax = fig.subplots()
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())
