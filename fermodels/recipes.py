"""Named training presets that reproduce each seed model's public recipe per dataset.

``params.yaml`` ``train.recipe`` is null or one of these names; a recipe's values replace the
same keys of the ``train`` section (``dvc exp run -S train.recipe=cmnet_rafdb`` is the whole
command). Recipes set what the papers set - data, model, classes, optimiser, schedule, epochs,
batch size, augmentation, sampler, and for AffectNet, whose papers score a class-balanced set, the val
metric ``best.pt`` is chosen on (others leave ``select_metric`` to params.yaml); no SAM, class weights,
label smoothing or weight average (none of the seed papers uses them) - and leave machine settings
(device, workers, amp, ``model_kwargs`` such as pretrained-weight paths) to ``params.yaml``.

Dataset names are the ``params.yaml`` ``datasets`` keys a recipe expects: ``rafdb``, ``sfew``,
``ferplus``, ``affectnet7`` and ``affectnet8`` (the AffectNet reader with ``protocol:
affectnet7``/``affectnet8``). Each recipe cites its row in docs/reference/seed_models.md
(``source``); ``notes`` say what that row does not fix and what was chosen.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, Mapping

from ferdata.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """Values for the ``train`` section, and where they come from."""

    values: Mapping[str, Any] = field(hash=False)
    source: str
    notes: str = ""
    weights: str = ""         # what the paper starts from (train.model_kwargs.pretrained, a path, gives it)
    published: str = ""       # the test figure the paper reports for this setting, or why there is none


RECIPES: Registry[Recipe] = Registry("training recipe")
RECIPE_KEYS = ("datasets", "model", "num_classes", "epochs", "epoch_samples", "batch_size", "optimizer", "lr",
               "weight_decay", "momentum", "schedule", "warmup_epochs", "step_size", "gamma", "sam", "sam_rho",
               "sam_adaptive", "sampler", "class_weights", "label_smoothing", "ema_decay", "augment")
OPTIONAL_KEYS = ("select_metric",)      # set by the recipes whose paper's protocol fixes it; else params.yaml's


def _augment(hflip: float = 0.5, affine_p: float = 0.0, degrees: float = 0.0, translate: float = 0.0,
             scale: tuple[float, float] = (1.0, 1.0), erase_p: float = 0.0,
             erase_scale: tuple[float, float] = (0.02, 0.33)) -> dict:
    return {"hflip": hflip, "affine_p": affine_p, "degrees": degrees, "translate": translate,
            "scale_min": scale[0], "scale_max": scale[1], "erase_p": erase_p,
            "erase_scale_min": erase_scale[0], "erase_scale_max": erase_scale[1]}


def _recipe(name: str, source: str, notes: str = "", weights: str = "", *, published: str, **values: Any) -> None:
    missing = set(RECIPE_KEYS) - set(values)
    if unknown := set(values) - set(RECIPE_KEYS) - set(OPTIONAL_KEYS):
        raise ValueError(f"recipe {name!r} sets {sorted(unknown)}, which are no recipe keys")
    if missing or not published:
        raise ValueError(f"recipe {name!r} misses {sorted(missing) or 'its published figure'}")
    RECIPES.register(name)(Recipe(values, source, notes, weights, published))


def weights_of(name: str | None) -> str:
    """What recipe ``name``'s paper starts its model from ("" for none, or no recipe)."""
    return RECIPES.get(name).weights if name else ""


_MSCELEB_R18 = "an MS-Celeb-1M ResNet-18 (the papers' pretrained trunk)"
# Every figure below is test accuracy, as the papers report it: their best test epoch, where best.pt here
# is picked on a validation split carved from the training set (README, Models and training).
_CMNET_FIGURE = "none found: CMNet's results table was not reachable (seed_models.md §2.7)"


# What no seed paper uses: SAM (POSTER++'s code, not its paper: see _NIE_NOTE), class weights,
# label smoothing, a weight average; and epochs are passes over the training split (epoch_samples
# null), so that "epochs" means what the papers mean whatever params.yaml says.
_PLAIN = {"sam": False, "sam_rho": 0.05, "sam_adaptive": False, "class_weights": False, "label_smoothing": 0.0,
          "ema_decay": 0.0, "epoch_samples": None}
# AffectNet's published figures are accuracy on its official validation set, 500 faces a class (the papers keep
# its best epoch): on a class-balanced set accuracy is the mean of the class recalls, so best.pt is chosen on
# the val split's mean_class_accuracy; its plain accuracy, on a split carved from training.csv (47% Happy,
# 26% Neutral), picks the epoch that favours the frequent classes, which the balanced sampler trains against.
_BALANCED_TEST = {"select_metric": "mean_class_accuracy"}
# CMNet/PCNN RAF-DB augmentation: HFlip; p=0.2 {RandomRotation 20, RandomCrop 224 pad 32}
# (pad 32 of 224 = translate 0.143); RandomErasing(scale 0.02-0.25) with torchvision's p=0.5.
_CROP_ROTATE = _augment(affine_p=0.2, degrees=20.0, translate=32 / 224, erase_p=0.5, erase_scale=(0.02, 0.25))
_SGD = {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-4, "schedule": "step", "warmup_epochs": 0,
        **_PLAIN}
_CMNET_AFFECTNET = {
    "model": "cmnet", "epochs": 40, "batch_size": 256, "optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0,
    "momentum": 0.9, "schedule": "exponential", "warmup_epochs": 0, "step_size": 1, "gamma": 0.6,
    "sampler": "balanced", **_PLAIN, **_BALANCED_TEST,
    "augment": _augment(affine_p=0.7, degrees=20.0, translate=0.2, scale=(0.8, 1.0), erase_p=0.5)}

_recipe("cmnet_rafdb", "docs/reference/seed_models.md:89 (§2.5 CMNet train_rafdb.py)", weights=_MSCELEB_R18,
        published=_CMNET_FIGURE,
        datasets=["rafdb"], model="cmnet", num_classes=7, epochs=100, batch_size=32, lr=0.01, step_size=15,
        gamma=0.1, sampler="shuffle", augment=_CROP_ROTATE, **_SGD)
_recipe("cmnet_affectnet7", "docs/reference/seed_models.md:90 (§2.5 CMNet train_affectnet-7.py)",
        "ImbalancedDatasetSampler -> sampler balanced; RandomErasing() defaults (p 0.5, scale 0.02-0.33).",
        weights=_MSCELEB_R18, published=_CMNET_FIGURE, datasets=["affectnet7"], num_classes=7, **_CMNET_AFFECTNET)
_recipe("cmnet_affectnet8", "docs/reference/seed_models.md:91 (§2.5 CMNet train_affectnet-8.py, Model_0 bug fixed)",
        "as cmnet_affectnet7 with 8 classes.", weights=_MSCELEB_R18, published=_CMNET_FIGURE,
        datasets=["affectnet8"], num_classes=8, **_CMNET_AFFECTNET)
_recipe("cmnet_sfew", "docs/reference/seed_models.md:92 (§2.5 CMNet SFEW row)",
        "momentum 0.9 / weight decay 1e-4 not in the row: taken from the RAF-DB script (INFER).",
        weights=_MSCELEB_R18, published=_CMNET_FIGURE, datasets=["sfew"], model="cmnet", num_classes=7,
        epochs=100, batch_size=16, lr=0.1, step_size=15, gamma=0.1, sampler="shuffle", augment=_CROP_ROTATE, **_SGD)

_PCNN_FIGURES = {"rafdb": "89.31% (a third-party extraction of the paper's tables, seed_models.md §3.5)",
                 "ferplus": "85.59% (a third-party extraction, below the paper's own FERPlus pose subsets: "
                            "treat with caution, seed_models.md §3.5)"}
for _ds, _classes in (("rafdb", 7), ("ferplus", 8)):
    _recipe(f"pcnn_{_ds}", "docs/reference/seed_models.md:142 (§3.4 PCNN train.py)",
            "one public script for every dataset; FERPlus as 8 classes (seed_models.md:144). Start from "
            "random or MS-Celeb weights, never the released checkpoint (the script's pretrained=True pitfall).",
            weights=_MSCELEB_R18, published=_PCNN_FIGURES[_ds], datasets=[_ds], model="pcnn", num_classes=_classes, epochs=100, batch_size=128, lr=0.01, step_size=15,
            gamma=0.5, sampler="shuffle", augment=_CROP_ROTATE, **_SGD)

# Nie et al. §4.2 "Implementation Details" (the paper, listed in docs/models.md; the research note at
# seed_models.md:180 had not found it and inferred POSTER++'s recipe, which the paper's text replaces):
# Adam, 200 epochs, batch 144, lr 3.5e-5 (RAF-DB, FERPlus) / 1e-6 (AffectNet), random horizontal flips
# and random erasing; no SAM and no schedule are named. The
# erasing settings and AffectNet's sampler come from POSTER++ (seed_models.md:165), whose code this
# model builds on.
_NIE = {"model": "pcda", "epochs": 200, "batch_size": 144, "optimizer": "adam", "weight_decay": 0.0,
        "momentum": 0.9, "schedule": "constant", "warmup_epochs": 0, "step_size": 1, "gamma": 1.0,
        **_PLAIN}
_NIE_WEIGHTS = "an MS-Celeb-1M IR-50 (§4.2) and a frozen landmark net (landmark_checkpoint)"
_NIE_FIGURES = {"rafdb": "92.31% (Nie et al. Table 5)", "ferplus": "92.97% (Nie et al. Table 5)",
                "affectnet7": "67.14% (Nie et al. Table 5)",
                "affectnet8": "none: the paper reports AffectNet 7-class only (§4.1, Tables 5-6)"}
_NIE_SOURCE = ("docs/reference/seed_models.md:180 (the notes found no recipe and inferred POSTER++'s; the paper's "
               "§4.2 Implementation Details gives it)")
_NIE_NOTE = ("Nie et al. §4.2: Adam, 200 epochs, batch 144, flips + random erasing; the paper names no SAM and "
             "no schedule (POSTER++'s code wraps Adam in SAM rho 0.05 with ExponentialLR 0.98; a recipe's values "
             "replace the train section's, so for that reading set train.recipe null, the recipe's values in "
             "params.yaml and sam true, schedule exponential, gamma 0.98). Adam weight decay 0 is torch's default "
             "(INFER). The paper's landmark net is a frozen MobileFaceNet: set "
             "train.model_kwargs.landmark_checkpoint, else the model uses its heatmap substitute (model card); "
             "Eq. 1 weights the features by the raw heatmap: train.model_kwargs.h_norm raw (the model's default, "
             "sigmoid, bounds the weights and flattens their contrast). Under DDP, NeAA's anchors and neutral "
             "pairs come from the step's whole batch, all GPUs' rows (the paper's 144 on 2 GPUs); "
             "with FERPlus label distributions NeAA groups samples by their majority label.")
for _ds, _classes in (("rafdb", 7), ("ferplus", 8)):
    _recipe(f"pcda_{_ds}", f"{_NIE_SOURCE}; "
            "erasing as POSTER++ RAF-DB (:165)",
            _NIE_NOTE + " RandomErasing p 0.5 (torch default), scale 0.02-0.1 (POSTER++).", weights=_NIE_WEIGHTS,
            published=_NIE_FIGURES[_ds],
            datasets=[_ds], num_classes=_classes, lr=3.5e-5, sampler="shuffle",
            augment=_augment(erase_p=0.5, erase_scale=(0.02, 0.1)), **_NIE)
for _ds, _classes in (("affectnet7", 7), ("affectnet8", 8)):
    _recipe(f"pcda_{_ds}", f"{_NIE_SOURCE}; "
            "erasing, sampler as POSTER++ AffectNet (:165)",
            _NIE_NOTE + " AffectNet: RandomErasing(p=1, scale 0.05) and ImbalancedDatasetSampler as POSTER++ "
            "(whose AffectNet figures need that sampler, seed_models.md:246)."
            + (" The paper reports AffectNet 7-class only (§4.1, Tables 5-6): this 8-class recipe has no "
               "published figure to compare with." if _classes == 8 else ""),
            weights=_NIE_WEIGHTS, published=_NIE_FIGURES[_ds], datasets=[_ds], num_classes=_classes, lr=1e-6,
            sampler="balanced",
            augment=_augment(erase_p=1.0, erase_scale=(0.05, 0.05)), **{**_NIE, **_BALANCED_TEST})

_CONVCUT = {"num_classes": 7, "epochs": 50, "batch_size": 16, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0,
            "momentum": 0.9, "schedule": "constant", "warmup_epochs": 0, "step_size": 1, "gamma": 1.0,
            "sampler": "shuffle", **_PLAIN,
            "augment": _augment()}
_CONVCUT_FIGURES = {"rafdb": "97.33%", "ferplus": "95.69%"}     # the paper's Table 1 (seed_models.md §5.3)
for _model in ("convcut", "convcut_paper"):
    for _ds, _classes in (("rafdb", 7), ("ferplus", 8)):
        _figure = (f"{_CONVCUT_FIGURES[_ds]} (Table 1), with the batch attention whose cross-sample leak "
                   "seed_models.md §5.3 takes to inflate it (evaluate.batch_check measures the leak)"
                   if _model == "convcut_paper" else
                   f"none for per-sample attention: the paper's {_CONVCUT_FIGURES[_ds]} is convcut_paper's batch "
                   "attention" + ("; ResNet / ConvNeXt baselines reach about 86-90% (an estimate, seed_models.md "
                                  "§5.3)" if _ds == "rafdb" else ""))
        _recipe(f"{_model}_{_ds}", "docs/reference/seed_models.md:225 (§5.3 Conv-cut training row)",
                "Adam 1e-3, batch 16, 50 epochs, frozen backbone (the model's default); the paper gives only the "
                "initial learning rate (§4.1), so it stays constant (INFER); PAtt-Lite's "
                "RandomFlip -> hflip 0.5, its RandomContrast has no equivalent here. FERPlus as 8 classes (INFER).",
                weights="an ImageNet ConvNeXt-Base, truncated and frozen (§4.1)", published=_figure,
                datasets=[_ds], model=_model, **{**_CONVCUT, "num_classes": _classes})


def list_recipes() -> list[str]:
    return RECIPES.names()


def apply_recipe(section: Mapping[str, Any], announce: bool = True) -> dict[str, Any]:
    """The ``train`` section with its recipe's values in place (unchanged when ``recipe`` is null);
    ``announce``: log what the recipe sets."""
    name = section.get("recipe")
    values = dict(section)
    if name is None:
        return values
    recipe = RECIPES.get(name)
    changed = sorted(k for k, v in recipe.values.items() if values.get(k) != v)
    values.update({k: (dict(v) if isinstance(v, Mapping) else list(v) if isinstance(v, list) else v)
                   for k, v in recipe.values.items()})
    if announce:
        log.info("recipe %s (%s) sets %s; the paper's test accuracy: %s", name, recipe.source,
                 ", ".join(changed) or "nothing new", recipe.published)
    return values


def check_applied(values: Mapping[str, Any]) -> None:
    """Raise if a ``recipe`` is named but its values were not applied (see :func:`apply_recipe`)."""
    name = values.get("recipe")
    if name is None:
        return
    recipe = RECIPES.get(name)
    plain = {k: asdict(v) if is_dataclass(v) and not isinstance(v, type) else v for k, v in values.items()}
    differ = sorted(k for k, v in recipe.values.items() if plain.get(k) != v)     # augment: a section again
    if differ:
        raise ValueError(f"train.recipe={name!r} but {differ} differ from it; build the params with "
                         "fermodels.recipes.apply_recipe (a recipe's values override the section)")
