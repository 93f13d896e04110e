"""Shared helpers for the fermodels tests (importable, unlike conftest modules)."""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import shutil
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from ferdata.datasets import open_reader
from ferdata.params import load_params, section
from ferdata.records import LABEL_MODE, SOFT_LABEL, FaceRecord
from ferdata.stages.align import AlignParams, run_align
from ferdata.stages.derive import DeriveParams, run_derive
from ferdata.stages.detect import DetectParams, run_detect
from ferdata.stages.shard import ShardParams, run_shard
from fermodels.examples import synthetic_landmarks
from fermodels.recipes import apply_recipe
from fermodels.trainparams import TrainParams

REPO = Path(__file__).resolve().parents[2]
COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
           "expression", "valence", "arousal")
TINT = np.array([[200, 60, 60], [60, 200, 60], [60, 60, 200], [200, 200, 60], [200, 60, 200],
                 [60, 200, 200], [230, 230, 230], [30, 30, 30]], np.float32)
# Narrow Conv-cut with a trainable backbone: milliseconds per step, every trainer feature exercised.
TINY_MODEL = {"model": "convcut", "model_kwargs": {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64], "cut_stage": 2,
                                                   "width": 16, "freeze_backbone": False}}


def _face_image(label: int, rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A tinted noisy picture with a drawn face, and its 68 landmarks in image pixels."""
    lmk = synthetic_landmarks(84).numpy() + rng.uniform(18, 26, size=2)
    img = TINT[label] * rng.uniform(0.8, 1.0) + rng.normal(0, 12, (size, size, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    for x, y in lmk:
        cv2.circle(img, (int(x), int(y)), 1, (20, 20, 20), -1)
    return img, lmk.astype(np.float32)


def write_affectnet(root: Path, per_class: int, test_per_class: int, classes: range, seed: int = 0,
                    grey: bool = False) -> None:
    """AffectNet official layout: Manually_Annotated_Images/<dir>/<file>.jpg + training/validation.csv;
    ``grey``: the pictures as grey JPEGs (their BT.601 luma), as FER2013's or JAFFE's are grey."""
    rng = np.random.default_rng(seed)
    for csv_name, subdir, n in (("training.csv", "1", per_class), ("validation.csv", "2", test_per_class)):
        (root / "Manually_Annotated_Images" / subdir).mkdir(parents=True, exist_ok=True)
        with open(root / csv_name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for label in classes:
                for i in range(n):
                    img, lmk = _face_image(label, rng)
                    rel = f"{subdir}/c{label}_{i:03d}.jpg"
                    cv2.imwrite(str(root / "Manually_Annotated_Images" / rel),
                                cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if grey else img[..., ::-1])
                    x0, y0 = lmk.min(0)
                    x1, y1 = lmk.max(0)
                    w.writerow([rel, f"{x0:.1f}", f"{y0:.1f}", f"{x1 - x0:.1f}", f"{y1 - y0:.1f}",
                                ";".join(f"{v:.2f}" for v in lmk.reshape(-1)), label, "0.0", "0.0"])


@contextmanager
def ferdata_quiet():
    """The ferdata loggers at WARNING meanwhile (the stages' progress lines), their level restored
    after (left at WARNING, a later test of `-v` logging found DEBUG off)."""
    logger = logging.getLogger("ferdata")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def build_shards(base: Path, *, per_class: int = 6, test_per_class: int = 2, classes: range = range(7),
                 maxcount: int = 4, protocol: str = "affectnet7", seed: int = 0,
                 subsets: dict[str, set[str]] | None = None, soft_mode: str | None = None,
                 val_fraction: float = 0.25, grey: bool = False, edit=None) -> Path:
    """Raw fixture -> detect -> align -> derive -> shard under ``base``; returns the shards dir.
    ``edit``: a function of each record read (a FaceRecord or a reader's drop) to the record detect is given.
    ``subsets`` (name -> record keys) tags records ``extra["subsets"]`` as a reader with
    ``options.subsets`` does (AffectNet's reader takes no subset lists); ``soft_mode`` gives every
    training record a label distribution in that label mode, as the FERPlus reader does
    (:func:`soft_label_of`); ``grey``: grey pictures (:func:`write_affectnet`)."""
    params = load_params(REPO / "params.yaml")
    write_affectnet(base / "raw", per_class, test_per_class, classes, seed, grey)
    records = open_reader("affectnet", base / "raw", {"protocol": protocol}).read()
    if subsets:
        records = _with_extra(records, lambda r: {"subsets": tags} if (tags := tuple(
            n for n in sorted(subsets) if r.key in subsets[n])) else {})
    if soft_mode:
        records = _with_extra(records, lambda r: {SOFT_LABEL: soft_label_of(r.label), LABEL_MODE: soft_mode}
                              if r.split == "train" else {})
    if edit:
        records = map(edit, records)
    detect = stage_params(DetectParams, params["detect"], backend="annotations", workers=1,
                          cache_dir=str(base / "cache"))
    run_detect(records, detect, base / "detect")
    run_align(base / "detect", stage_params(AlignParams, params["align"], workers=1), base / "aligned")
    run_derive(base / "aligned", stage_params(DeriveParams, params["derive"], workers=1), base / "derived")
    shard = stage_params(ShardParams, params["shard"], val_fraction=val_fraction, maxcount=maxcount)
    run_shard(base / "aligned", base / "derived", shard, base / "shards")
    return base / "shards"


def _with_extra(records, extra_of):
    """Records with ``extra_of(record)`` merged into their ``extra``, as a reader that tags them does."""
    for r in records:
        more = extra_of(r) if isinstance(r, FaceRecord) else {}
        yield dataclasses.replace(r, extra={**r.extra, **more}) if more else r


def soft_label_of(label: int) -> list[float]:
    """A test distribution: 0.6 on ``label``, 0.4 on the next class (of 7)."""
    dist = [0.0] * 8
    dist[label], dist[(label + 1) % 7] = 0.6, 0.4
    return dist


def copy_shards(shards: Path, to: Path, edit) -> Path:
    """A copy of the shards folder ``shards`` at ``to`` whose split ``_info.json`` files ``edit`` (a
    function of the parsed dict) changed."""
    shutil.copytree(shards, to)
    for info in to.glob("*/_info.json"):
        d = json.loads(info.read_text())
        edit(d)
        info.write_text(json.dumps(d))
    return to


def unrecorded(info: dict) -> None:
    """An ``_info.json`` as an earlier version wrote it, without the align/derive settings."""
    info.pop("preprocess", None)


def stage_params(cls, values: dict, **overrides):
    """A stage's params from params.yaml (fields it lists) with test overrides."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in {**values, **overrides}.items() if k in names})


def make_params(**overrides) -> TrainParams:
    """params.yaml ``train`` + the tiny model + small, fast settings + ``overrides``."""
    values = dict(load_params(REPO / "params.yaml")["train"])
    values.update(TINY_MODEL)
    values.update(datasets=["tiny"], epochs=2, batch_size=8, workers=0, shuffle_buffer=16, device="cpu",
                  lr=3e-3, warmup_epochs=0)
    values.update(overrides)
    return section(TrainParams, apply_recipe(values), "train")


def bare_checkpoint(params: dict, data: dict, **fields) -> dict:
    """A last.pt's contents as resume_state reads them, without a model: no weights, a 7-class model's
    class names (load_checkpoint checks them), ``fields`` over a fresh run's position."""
    from ferdata.classes import class_names
    from fermodels.runstate import CHECKPOINT_KEYS, FORMAT

    return ({k: None for k in CHECKPOINT_KEYS} | {"num_classes": 7, "classes": list(class_names(7))}
            | {"format": FORMAT, "params": params, "data": data, "optimizer": {"state": {}, "param_groups": []},
               "best": {"epoch": -1}, "step": 0} | fields)


def save_last(ckpt, params: dict, data: dict, **position) -> None:
    """:func:`bare_checkpoint` saved as ``ckpt``'s last.pt."""
    import torch

    from fermodels.ckptdir import LAST

    torch.save(bare_checkpoint(params, data, **position), f"{ckpt}/{LAST}")
