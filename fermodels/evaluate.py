"""The evaluator: accuracy, mean class accuracy, macro-F1, per-class P/R/F1, confusion matrix
(DVC plot rows + PNG), optional flip TTA, cross-dataset evaluation through the canonical
labels, metrics per named test subset (occlusion, pose), and a batch-composition check.

Batch-composition check: a model must score each face on its own. The test split is predicted
again in shuffled order, in class-sorted order and one face at a time; any change of a
probability exposes a cross-sample leak such as ``convcut_paper``'s batch-wise attention (whose
published accuracy comes from class-sorted test batches). Accuracy per order is reported. A model
whose card says so (``per_sample`` false) is scored one face at a time, as ``ferdata predict``
scores it; its batched figures are the check's.

Scores are float32 without TF32 on a GPU (:func:`fermodels.scoring.full_float32`), in training's validation as here.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ferdata.atomic import atomic_write_text, writable_folder
from ferdata.layout import DROPPED_BEFORE, DROPPED_BEFORE_FOLDS, GREY, reasons_summed, setting_differences
from ferdata.params import at_least, check_values, one_of, section, section_values
from ferdata.records import SPLITS
from ferdata.selection import ALL, scored_splits
from fermodels.data import split_decoder
from fermodels.distributed import DEVICE_RULE, env_from_os, pick_device
from fermodels.indexed import IndexedSplit, Passes
from fermodels.metrics import confusion_matrix, confusion_rows, metrics_from_confusion, plot_confusion
from fermodels.registry import ModelCard
from fermodels.runstate import load_checkpoint
from fermodels.scoring import nonfinite_rows, predict_loader, scoring_model
from fermodels.shardsplit import Split, joined, open_split

log = logging.getLogger(__name__)
SAME_PROB = 1e-4          # float noise between batch sizes stays far below this


@dataclass(frozen=True)
class EvalParams:
    split: str
    batch_size: int
    workers: int
    device: str
    flip_tta: bool
    batch_check: bool
    seed: int
    grey: bool | None = None    # faces turned grey; None: for a model trained on grey faces only, as predict does

    def __post_init__(self) -> None:
        check_values("evaluate", self, {"split": one_of((*SPLITS, ALL)), "batch_size": at_least(1),
                                        "workers": at_least(0), "seed": at_least(0),
                                        "device": DEVICE_RULE})


def evaluate_section(params: Mapping[str, Any]) -> tuple[str | None, EvalParams]:
    """params.yaml's ``evaluate`` section as the evaluate stage reads it: ``dataset`` (null: the
    checkpoint's training datasets) and the rest as :class:`EvalParams`."""
    values = dict(section_values(params, "evaluate"))
    if "dataset" not in values:
        raise ValueError("params section 'evaluate': missing keys ['dataset'] (null scores the training datasets; "
                         "copy it from the project's params.yaml)")
    dataset = values.pop("dataset")
    if dataset is not None and (not isinstance(dataset, str) or not dataset):      # "" read as null, silently
        raise ValueError(f"evaluate.dataset must be null (the training datasets) or one prepared dataset's name, "
                         f"got {dataset!r}")
    if values.get("split") == ALL and dataset is None:
        raise ValueError("evaluate.split all scores every split of evaluate.dataset, a dataset the model was not "
                         "trained on; with evaluate.dataset null it would score the training faces: name the "
                         "dataset, or set evaluate.split test")
    return dataset, section(EvalParams, values, "evaluate")


def _colour_faces(dataset: IndexedSplit, most: int = 64) -> bool:
    """Whether any of up to ``most`` faces spread over ``dataset`` is in colour (not R = G = B): a split
    whose _info.json does not record grey_faces may be grey faces prepared before it was recorded."""
    from ferdata.io import decode_jpeg_rgb, is_grey

    for i in range(0, len(dataset), max(1, len(dataset) // most)):
        if (jpg := dataset[i].get("jpg")) is None or not is_grey(decode_jpeg_rgb(jpg)):
            return True
    return False


def _compare(reference: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> dict:
    diff = float(np.abs(reference - probs).max()) if probs.size else 0.0
    return {"accuracy": float((probs.argmax(1) == labels).mean()) if labels.size else 0.0,
            "max_prob_diff": diff, "changed_predictions": int((reference.argmax(1) != probs.argmax(1)).sum())}


def batch_composition_check(model, dataset: IndexedSplit, card: ModelCard, device: torch.device,
                            params: EvalParams, reference: np.ndarray, passes: Passes | None = None) -> dict:
    """Predict again in other orders / batch sizes; ``reference`` is the headline prediction (file
    order at ``card.scoring_batch(params.batch_size)``), which is not repeated. A face whose top two
    classes tie within :data:`SAME_PROB` may change its prediction with no leak: independence is
    judged on the probabilities (``changed_predictions`` counts them all). The batched orders run at
    ``params.batch_size``, at least 2: at 1 every order would be one face at a time and compare nothing.
    ``passes``: the loader to score with (its workers kept from the headline pass), else one of its own."""
    if passes is None:
        passes = Passes(dataset, params.workers)
        try:
            return batch_composition_check(model, dataset, card, device, params, reference, passes)
        finally:
            passes.close()
    n, bs = len(dataset), max(params.batch_size, 2)
    rng = np.random.default_rng(params.seed)
    in_file_order = list(range(n))
    orders = {"shuffled": (rng.permutation(n).tolist(), bs),
              "class_sorted": (np.argsort(dataset.labels, kind="stable").tolist(), bs),
              "batch1": (in_file_order, 1), "file_order": (in_file_order, bs)}
    headline = card.scoring_batch(params.batch_size)
    report: dict = {"orders": {}}
    for name, (order, size) in orders.items():
        if order is in_file_order and size == headline:
            continue
        _, probs, _ = predict_loader(model, passes.over(order, size), card, device, flip_tta=params.flip_tta)
        back = np.empty_like(probs)
        back[np.asarray(order, np.int64)] = probs
        report["orders"][name] = _compare(reference, back, dataset.labels)
    report["independent_of_batch"] = all(o["max_prob_diff"] < SAME_PROB for o in report["orders"].values())
    if not report["independent_of_batch"]:
        log.warning("predictions depend on batch composition (cross-sample leak): %s", report["orders"])
    return report


def evaluate(checkpoint: str | Path, shard_dirs: str | Path | Sequence[str | Path], params: EvalParams,
             out_dir: str | Path, datasets: Sequence[str] | None = None) -> dict:
    """Evaluate a checkpoint on ``params.split`` of one or more shard dirs; writes metrics.json,
    confusion.json (``dvc plots``) and confusion.png into ``out_dir``; returns the metrics.

    ``datasets`` names the shard dirs (default: the folder above ``shards``); a name the
    model was not trained on makes it a cross-dataset evaluation (labels are canonical, classes
    the model cannot predict - e.g. Contempt for a 7-class model - are excluded and counted).
    ``params.split`` ``all`` scores every split of such datasets (the whole target dataset).
    """
    dirs = [Path(shard_dirs)] if isinstance(shard_dirs, (str, Path)) else [Path(d) for d in shard_dirs]
    names = list(datasets) if datasets is not None else [d.resolve().parent.name for d in dirs]
    if len(names) != len(dirs) or len(set(names)) < len(names):
        raise ValueError(f"datasets {names} must name each of the {len(dirs)} shard folders once (folders of one "
                         "name: pass datasets=)")
    out = Path(out_dir)
    writable_folder(out, "evaluate")                # a file in the way is told now, not after the scoring
    state = load_checkpoint(checkpoint)
    device = pick_device(params.device, env_from_os())
    model = scoring_model(state, device)
    card, classes = model.card, tuple(state["classes"])
    if params.split == ALL and (trained := sorted(set(names) & set(state["datasets"]))):
        raise ValueError(f"evaluate.split all scores every split of {', '.join(trained)}, which "
                         f"{Path(checkpoint).name} was trained on: its train and val faces would be scored; "
                         "use split all for a dataset the model was not trained on (cross-dataset)")
    split = joined([open_split(dirs, s, warn=not i) for i, s in enumerate(scored_splits(params.split))])
    check_preprocess(state.get("preprocess") or {}, split.preprocess, card.fields, checkpoint, dirs)
    check_face_sources((state.get("data") or {}).get("face_backends", {}), split.face_backends, checkpoint, dirs)
    trained_grey = (state.get("data") or {}).get(GREY) is True
    grey = trained_grey if params.grey is None else params.grey
    dataset = IndexedSplit(split, split_decoder(card, split, device, grey=grey and not split.grey), len(classes))
    if len(dataset) == 0:
        raise ValueError(f"no {params.split} samples in {', '.join(map(str, dirs))} that a "
                         f"{len(classes)}-class model can be scored on"
                         + (" (prepared with shard.val_fraction 0?)" if params.split == "val" else ""))
    if (trained_grey or grey) and not split.grey:
        _tell_grey(dataset, grey, params, checkpoint, names)
    batch_size = card.scoring_batch(params.batch_size)
    if batch_size != params.batch_size:
        log.warning("evaluate: %s's predictions depend on the other faces in a batch (its card: per_sample false): "
                    "scored one face at a time; its batched figures are batch_composition's", card.name)
    passes = Passes(dataset, params.workers)     # one set of loader workers for the headline and the check
    try:
        labels, probs, _ = predict_loader(model, passes.over(range(len(dataset)), batch_size), card, device,
                                          flip_tta=params.flip_tta)
        composition = (batch_composition_check(model, dataset, card, device, params, probs, passes)
                       if params.batch_check and not nonfinite_rows(probs) else None)
    finally:
        passes.close()
    if bad := nonfinite_rows(probs):                           # argmax would score them all as class 0
        raise ValueError(f"{checkpoint}: the model's probabilities are not finite (NaN or inf) for {bad} of the "
                         f"{len(probs)} {params.split} samples: it overflows on them (trained with train.amp?)")
    if dataset.excluded:        # in metrics.json too; said here, as the accuracy is over the rest only
        log.warning("evaluate: %d %ssample(s) of classes a %d-class model cannot predict are left out: %s",
                    sum(dataset.excluded.values()), "" if params.split == ALL else params.split + " ", len(classes),
                    dict(sorted(dataset.excluded.items())))
    preds = probs.argmax(1)
    cm = confusion_matrix(labels, preds, len(classes))
    metrics = metrics_from_confusion(cm, classes)
    metrics.update({
        "model": state["model"], "split": params.split, "checkpoint": Path(checkpoint).name, "epoch": state["epoch"],
        "flip_tta": params.flip_tta, "grey": grey,
        "train_datasets": list(state["datasets"]), "test_datasets": names,
        "cross_dataset": not set(names) <= set(state["datasets"]),       # a dataset it was not trained on
        "excluded": dict(sorted(dataset.excluded.items())),
        # what the figures are over: the model's outputs, and the classes with test faces, which mean class
        # accuracy and macro-F1 average (a class only predicted is in per_class, not in the averages)
        "classes": list(classes), "averaged_over": averaged_over(cm, classes),
        # the split's official pictures that detect or align dropped: not in the figures (papers score every one)
        DROPPED_BEFORE: reasons_summed(split.dropped),
    })
    if split.dropped_before_folds:      # k-fold only: other runs' metrics.json unchanged
        metrics[DROPPED_BEFORE_FOLDS] = reasons_summed(split.dropped_before_folds)
    _tell_dropped(split, names)
    if len(dirs) > 1:
        metrics["per_dataset"] = per_dataset(dataset, names, labels, preds, classes, params.split,
                                             [split.dropped.get(d, {}) for d in split.dirs])
    subsets = per_subset(dataset, split, names, labels, preds, classes)
    if subsets:
        metrics["per_subset"] = subsets
    if composition is not None:
        metrics["batch_composition"] = composition
    _write_outputs(out, metrics, labels, preds, cm, classes,
                   title=f"{state['model']} on {'+'.join(names)} {params.split}")
    return metrics


def _tell_dropped(split: Split, names: Sequence[str]) -> None:
    """Warn of each dataset whose official pictures of the scored split the detect or align stage dropped
    (``_info.json``'s ``dropped_in_preparation``): the figures are over the faces kept, where a paper's
    protocol scores every picture of the split (a face not found counts as wrong there, or is not said); and,
    under k-fold, of the dataset's pictures they dropped, in no fold (``dropped_before_folds``)."""
    counted = " and ".join(s for s in split.name.split("+") if s != "train")    # split all: train's not counted
    for d, name in zip(split.dirs, names):
        if lost := split.dropped.get(d):
            stages = Path(d).parent                     # <data>/<name>/shards: detect's and align's folders beside
            lists = [stages / "detect", stages / "aligned"]
            where = (", ".join(map(str, lists)) if any(p.is_dir() for p in lists) else   # only the shards pulled
                     f"not on this machine: `dvc pull detect@{name} align@{name}` fetches them")
            log.warning("evaluate: %d of %s's official %s pictures were dropped in preparation (%s): the figures "
                        "are over the faces kept, not every picture the split lists; each is in the detect and "
                        "align stages' dropped.jsonl (%s)", sum(lost.values()), name, counted,
                        ", ".join(f"{reason} {n}" for reason, n in lost.items()), where)
        if lost := split.dropped_before_folds.get(d):
            log.warning("evaluate: %d of %s's pictures were dropped in preparation (%s) and are in no fold: this "
                        "fold's figures, and those pooled over the folds, leave them out, where a k-fold protocol "
                        "scores every picture once", sum(lost.values()), name,
                        ", ".join(f"{reason} {n}" for reason, n in lost.items()))


def _write_outputs(out: Path, metrics: dict, labels: np.ndarray, preds: np.ndarray, cm: np.ndarray,
                   classes: Sequence[str], title: str) -> None:
    """metrics.json, confusion.json (``dvc plots``) and confusion.png into ``out``, and the figures logged."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out / "confusion.json", json.dumps(confusion_rows(labels, preds, classes), indent=1) + "\n")
    plot_confusion(cm, classes, out / "confusion.png", title=title)
    log.info("evaluate: acc %.4f, mean class acc %.4f, macro-F1 %.4f on %d samples%s; written to %s "
             "(metrics.json, confusion.json, confusion.png)", metrics["accuracy"], metrics["mean_class_accuracy"],
             metrics["macro_f1"], metrics["num_samples"], " (cross-dataset)" if metrics["cross_dataset"] else "", out)
    for name, m in metrics.get("per_subset", {}).items():
        log.info("evaluate: subset %s: acc %.4f, mean class acc %.4f on %d samples", name, m["accuracy"],
                 m["mean_class_accuracy"], m["num_samples"])


def _tell_grey(dataset: IndexedSplit, grey: bool, params: EvalParams, checkpoint: str | Path,
               names: Sequence[str]) -> None:
    """Say how faces not recorded grey are scored for a model trained on grey faces or asked to score
    in grey (``grey``: whether they are turned grey): as they are, turned grey, or already grey though
    their ``_info.json`` does not say so."""
    told = (Path(checkpoint).name, params.split, ", ".join(names))
    if not _colour_faces(dataset):      # shards prepared before the shard stage recorded grey_faces: unmarked
        log.info("evaluate: the %s faces of %s look grey but their _info.json does not say so (prepared before "
                 "grey_faces was recorded? prepare them again)", *told[1:])
    elif not grey:
        log.warning("evaluate: %s was trained on grey faces only (R = G = B) and the %s faces of %s are not all "
                    "grey: scored as they are (evaluate.grey: false), colours the model never saw, where "
                    "`ferdata predict` turns a face grey for it first", *told)
    else:
        log.info("evaluate: the %s faces of %s are scored turned grey (BT.601 luma, R = G = B) for %s, as "
                 "`ferdata predict` scores a face%s; they were found and warped in the colour pictures, where "
                 "predict finds a face in the picture turned grey (keypoints up to a few px elsewhere, crops a "
                 "few levels off): %s prepares the crops predict makes", params.split, ", ".join(names),
                 Path(checkpoint).name,
                 " for a model trained on grey faces only (evaluate.grey: false keeps their colours)"
                 if params.grey is None else " with --grey (evaluate.grey: true)",
                 " and ".join(f"datasets.{name}.detect: {{grey: true}}" for name in names))


def check_preprocess(trained: dict, shards: dict, fields: Sequence[str], checkpoint: str | Path,
                     dirs: Sequence[Path]) -> None:
    """Compare the settings that made ``shards``' faces with the checkpoint's training faces, in
    what the model's ``fields`` read: another framing (``align.padding``: the face at another
    scale in the crop) or another heatmap (size, sigma) scores another task, and is refused; a
    crop stored at another size (the loader resizes it) or through another JPEG quality is warned
    about. Either side unrecorded (older versions): nothing to compare (said when only the shards' is)."""
    if trained and not shards:
        log.warning("evaluate: %s record no align/derive settings (prepared by an earlier version): their faces "
                    "cannot be checked to be framed as %s's training faces; prepare them again with this version "
                    "to have them checked", ", ".join(map(str, dirs)), checkpoint)
    if not trained or not shards:
        return
    halves = bool({"left", "right"} & set(fields))
    refuse = [("align", "padding"), *((("derive", k) for k in ("heatmap_size", "heatmap_sigma"))
                                      if "heatmap" in fields else ())]
    warn = [("align", "size"), ("align", "jpeg_quality"), *((("derive", "jpeg_quality"),) if halves else ())]

    def differing(keys: list[tuple[str, str]]) -> list[str]:
        return setting_differences(trained, shards, keys, a_is=" (training)")

    where = ", ".join(map(str, dirs))
    if differ := differing(refuse):
        raise ValueError(f"{where} hold faces made otherwise than {checkpoint}'s training faces: {'; '.join(differ)}. "
                         "Prepare the test data with the training's align/derive settings (the checkpoint's "
                         "`preprocess`), or score a checkpoint trained on these shards")
    if differ := differing(warn):
        log.warning("evaluate: %s hold faces stored otherwise than the training faces (%s): scored, but not quite "
                    "the faces the model learnt from", where, "; ".join(differ))


FACE_SOURCES = {"annotations": "the dataset's own landmarks", "precropped": "the dataset's own crops"}


def face_sources(backends: Mapping[str, int]) -> set[str]:
    """What placed faces found by ``backends`` (backend -> samples) in their crops: a dataset's landmarks, its
    crops, or a face detector's keypoints (each frames a face otherwise: RetinaFace's keypoints sit 3.6 px of
    112 from the 68 landmarks' eye centres, nose tip and mouth corners on average)."""
    return {FACE_SOURCES.get(name, "a face detector's keypoints") for name in backends}


def check_face_sources(trained: Mapping[str, int], tested: Mapping[str, int], checkpoint: str | Path,
                       dirs: Sequence[Path]) -> None:
    """Warn when the faces scored were placed in their crops by something the training faces were not (a model
    trained on a dataset's landmarks scored on detected faces: the sample's held-out pictures 83% -> 64%)."""
    other = face_sources(tested) - face_sources(trained) if trained and tested else set()
    if other:
        log.warning("evaluate: %s hold faces placed by %s, %s's training faces by %s: framed otherwise (eyes, nose "
                    "and mouth a few pixels elsewhere in the crop), so these figures are not those of faces framed as "
                    "the model learnt; prepare the test data with the training's face backend",
                    ", ".join(map(str, dirs)), " and ".join(sorted(other)), Path(checkpoint).name,
                    " and ".join(sorted(face_sources(trained))))


def per_dataset(dataset: IndexedSplit, names: Sequence[str], labels: np.ndarray, preds: np.ndarray,
                classes: Sequence[str], split: str, dropped: Sequence[Mapping[str, int]]) -> dict[str, dict]:
    """Metrics of each of several datasets evaluated together, with the classes its averages run over
    (they differ by dataset: RAF-DB's 7 beside AffectNet-8's 8), its confusion matrix (rows true, columns
    predicted: they add up to the pooled one, whose precision and macro-F1 the datasets' figures cannot
    give), the samples left out of it, and its official pictures of the split preparation dropped (``dropped``,
    one per name); a dataset with no sample the model can be scored on is left out (and said so).
    ``labels``/``preds`` are in ``dataset`` order."""
    which = np.asarray(dataset.dataset_index)
    if unscored := [name for i, name in enumerate(names) if not (which == i).any()]:
        log.warning("evaluate: %s hold(s) no %s sample a %d-class model can be scored on: left out of "
                    "per_dataset", ", ".join(unscored), split, len(classes))
    out = {}
    for i, name in enumerate(names):
        if name not in unscored:
            cm = confusion_matrix(labels[which == i], preds[which == i], len(classes))
            excluded = dict(sorted(dataset.excluded_per_dataset[i].items()))
            out[name] = {**metrics_from_confusion(cm, classes), "averaged_over": averaged_over(cm, classes),
                         "confusion_matrix": cm.tolist(), "excluded": excluded, DROPPED_BEFORE: dict(dropped[i])}
    return out


def averaged_over(cm: np.ndarray, classes: Sequence[str]) -> list[str]:
    """The classes with test faces (a row of ``cm`` that is not empty): those mean class accuracy and
    macro-F1 average over (a class only predicted is in ``per_class``, not in the averages)."""
    return [c for c, n in zip(classes, cm.sum(1)) if n]


def per_subset(dataset: IndexedSplit, split: Split, names: Sequence[str], labels: np.ndarray,
               preds: np.ndarray, classes: Sequence[str]) -> dict[str, dict]:
    """Metrics of each named test subset (a reader's ``options.subsets``: RAF-DB/FERPlus occlusion,
    pose > 30 / 45 degrees), over its members the model can be scored on, with the classes its averages run
    over (``averaged_over``); named ``<dataset>/<subset>`` when several datasets are evaluated together.
    ``labels``/``preds`` are in ``dataset`` order."""
    keys, which = np.asarray(dataset.keys), np.asarray(dataset.dataset_index)
    out = {}
    for i, (shard_dir, name) in enumerate(zip(split.dirs, names)):
        for subset, members in sorted(split.subsets[shard_dir].items()):
            mask = (which == i) & np.isin(keys, sorted(members))
            if mask.any():          # a subset (pose > 45) often lacks classes: say which its averages run over
                cm = confusion_matrix(labels[mask], preds[mask], len(classes))
                out[subset if len(split.dirs) == 1 else f"{name}/{subset}"] = {
                    **metrics_from_confusion(cm, classes), "averaged_over": averaged_over(cm, classes)}
    return out
