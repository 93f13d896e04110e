"""The trainer's settings: params.yaml's ``train`` section (:class:`TrainParams`, checked when read)
and the checks a run makes of them against its model and data before the first step, so a setting
that cannot apply stops the run with what to change instead of training on without it."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ferdata.classes import CLASSES, CONTEMPT
from ferdata.layout import MADE_BY, setting_differences
from ferdata.registry import UnknownNameError
from ferdata.params import (above, at_least, below_from, check_values, is_name_list, one_of, optional, repeated,
                            section, section_values, within)
from fermodels.augment import AugmentParams
from fermodels.checkpoints import WEIGHT_FILE_KWARGS
from fermodels.distributed import DEVICE_RULE
from fermodels.epochplan import divisors
from fermodels.metrics import SUMMARY_METRICS
from fermodels.optim import OPTIMIZERS, SCHEDULES
from fermodels.recipes import apply_recipe, check_applied, weights_of
from fermodels.registry import check_model_kwargs, model_kwargs
from fermodels.scoring import autocast
from fermodels.sampling import SAMPLERS, check_class_weight_used, loss_reads
from fermodels.shardsplit import Split, stored_sides

log = logging.getLogger(__name__)

UNEVEN_VAL = 2     # a val split whose largest class holds this many times its smallest's samples is uneven


@dataclass(frozen=True)
class TrainParams:
    """params.yaml ``train`` (after :func:`fermodels.recipes.apply_recipe`)."""

    recipe: str | None
    datasets: list = field(hash=False)
    model: str
    model_kwargs: dict = field(hash=False)
    num_classes: int
    epochs: int
    batch_size: int
    epoch_samples: int | None
    optimizer: str
    lr: float
    weight_decay: float
    momentum: float
    sam: bool
    sam_rho: float
    sam_adaptive: bool
    schedule: str
    warmup_epochs: float
    step_size: int
    gamma: float
    sampler: str
    class_weights: bool
    label_smoothing: float
    ema_decay: float
    augment: AugmentParams
    select_metric: str
    seed: int
    workers: int
    streams: int
    device: str
    amp: bool
    channels_last: bool
    compile: bool
    sync_batchnorm: bool
    shuffle_buffer: int
    checkpoint_every: int

    def __post_init__(self) -> None:
        check_applied({f.name: getattr(self, f.name) for f in fields(self)})
        if isinstance(self.augment, Mapping):       # unknown or missing keys named, as for every section
            object.__setattr__(self, "augment", section(AugmentParams, self.augment, "train.augment"))
        if not isinstance(self.augment, AugmentParams):
            raise ValueError(f"train.augment must be a mapping of the augmentation settings, got {self.augment!r}")
        if self.model_kwargs is None:               # `model_kwargs:` left empty in YAML
            object.__setattr__(self, "model_kwargs", {})
        if not isinstance(self.model_kwargs, Mapping):
            raise ValueError(f"train.model_kwargs must be a mapping of the model's keywords (e.g. {{pretrained: "
                             f"/path/weights.pth}}), got {self.model_kwargs!r}")
        if "num_classes" in self.model_kwargs:      # create_model's own keyword: a TypeError at model build
            raise ValueError(f"train.model_kwargs sets num_classes ({self.model_kwargs['num_classes']!r}): set "
                             "train.num_classes instead")
        try:                                        # a keyword the model lacks: named now, not at model build
            model_kwargs(self.model, self.model_kwargs)
        except TypeError as err:
            raise ValueError(f"train.model_kwargs for train.model {self.model}: {err} (`fermodels info "
                             f"{self.model}` lists its keywords)") from None
        except UnknownNameError as err:
            err.add_note("train.model")
            raise
        if bad := [k for k in WEIGHT_FILE_KWARGS if not isinstance(self.model_kwargs.get(k), (str, type(None)))]:
            raise ValueError(f"train.model_kwargs.{bad[0]} must be a weight file's path or null, got "
                             f"{self.model_kwargs[bad[0]]!r}")
        if empty := [k for k in WEIGHT_FILE_KWARGS if isinstance(self.model_kwargs.get(k), str)
                     and not self.model_kwargs[k].strip()]:      # '' was read as null: random weights, silently
            raise ValueError(f"train.model_kwargs.{empty[0]} is empty ({self.model_kwargs[empty[0]]!r}): give the "
                             "weight file's path, or null (or leave it out) to start from random weights")
        if not self.datasets or not is_name_list(self.datasets):
            raise ValueError(f"train.datasets must be a non-empty list of prepared dataset names, got "
                             f"{self.datasets!r}")
        if twice := repeated(self.datasets):
            raise ValueError(f"train.datasets lists {', '.join(map(repr, twice))} more than once (each dataset "
                             "is read once an epoch; the class-balanced sampler evens out their classes)")
        check_values("train", self, {
            "num_classes": one_of((7, 8)), "epochs": at_least(1), "batch_size": at_least(1),
            "epoch_samples": optional(at_least(1)), "optimizer": one_of(OPTIMIZERS.names()), "lr": above(0),
            "weight_decay": at_least(0), "momentum": below_from(0, 1), "sam_rho": above(0),
            "schedule": one_of(SCHEDULES.names()), "warmup_epochs": at_least(0), "step_size": at_least(1),
            "gamma": (lambda v: above(0)[0](v) and v <= 1, "in (0, 1] (step and exponential multiply the learning "
                      "rate by it: above 1 it grows)"),
            "sampler": one_of(SAMPLERS), "select_metric": one_of(SUMMARY_METRICS), "workers": at_least(0),
            "streams": at_least(1), "checkpoint_every": at_least(0),
            "shuffle_buffer": (at_least(2)[0], ">= 2 (0 and 1 shuffle nothing: every epoch in the same order)"),
            "label_smoothing": below_from(0, 1), "ema_decay": below_from(0, 1), "device": DEVICE_RULE,
            "seed": within(0, 2**64 - 1)})                 # torch.manual_seed's range (it failed at train time)
        if self.model_kwargs:                       # a bad value: told now, not after the preprocessing
            try:
                check_model_kwargs(self.model, self.model_kwargs, self.num_classes)
            except ValueError as err:
                raise ValueError(f"train.model_kwargs: {err}") from err.__cause__
        if self.workers and self.streams % self.workers:
            raise ValueError(f"train.workers {self.workers} must divide train.streams {self.streams}: each loader "
                             "worker makes the batches of as many shuffle streams (the streams set the sample order, "
                             f"the workers do not); use one of {divisors(self.streams, most=1024)} workers, or more "
                             "streams (another number of streams is another order)")
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"train.warmup_epochs {self.warmup_epochs} is more than train.epochs {self.epochs} "
                             "(the learning rate would never reach train.lr)")
        if self.sampler == "balanced" and self.class_weights:
            raise ValueError("train.sampler balanced and train.class_weights true each even out the classes; both "
                             "would count a rare class twice (Contempt about 36x Happy on AffectNet-8): set one")
        if self.sam_adaptive and not self.sam:
            raise ValueError("train.sam_adaptive true scales SAM's perturbation, but train.sam is false (no SAM "
                             "step to scale): set train.sam true for ASAM, or sam_adaptive false")


def train_section(params: Mapping[str, Any], announce: bool = True) -> TrainParams:
    """params.yaml's ``train`` section with its recipe applied (:func:`apply_recipe`), as the train
    stage runs it; ``announce``: log what the recipe sets."""
    return section(TrainParams, apply_recipe(section_values(params, "train"), announce), "train")


def shards_preprocess(split: Split, given: dict) -> dict:
    """The align/derive settings for the checkpoints: what the shards record (the stages that made
    them), else ``given`` (params.yaml's, for shards of a version that did not record them: a guess
    the checkpoints pass on to inference, refused when the faces' stored side contradicts it)."""
    if not split.preprocess:
        if not given:
            return given
        size = int(given["align"]["size"])
        other = {d: s for d, s in stored_sides(split).items() if s != size}
        if other:                           # each folder's side: the smallest over the datasets hid a larger one
            sides = "/".join(map(str, sorted(set(other.values()))))
            raise ValueError(f"{', '.join(other)}: {sides} px faces where params.yaml's align.size is {size}, in a "
                             "split that does not record how its faces were made (shards of an earlier version, or "
                             "trained beside some): the checkpoints would tell inference to crop faces another way; "
                             "prepare the earlier version's shards again with this version (`dvc repro --force "
                             "align@<name>` then `dvc repro`, or `ferdata prepare <name>`)")
        recorded = {d: split.made_by.get(d, {}).get("preprocess") for d in split.dirs}
        if differ := {d: r for d, r in recorded.items() if r and r != given}:     # the datasets that do record
            shown = "; ".join(f"{d}: {r}" for d, r in differ.items())
            raise ValueError(f"{shown}: shards made with other align/derive settings than params.yaml's {given}, "
                             "trained beside shards of an earlier version that record none: the checkpoints "
                             "would tell inference to crop faces as params.yaml does; prepare every dataset with "
                             "this version and the same align and derive sections")
        log.warning("%s: shards of an earlier version, which did not record how their faces were made: the "
                    "checkpoints record params.yaml's align/derive settings %s, unchecked (inference crops faces "
                    "so); prepare them again with this version to have them recorded",
                    ", ".join(d for d, r in recorded.items() if not r) or ", ".join(split.dirs), given)
        return given
    if given and given != split.preprocess:
        log.warning("params.yaml's align/derive settings %s are not the ones the shards were made with %s "
                    "(prepared with another params file?): the checkpoints record the shards'", given,
                    split.preprocess)
    return split.preprocess


def random_start_warnings(net: nn.Module, params: TrainParams) -> list[str]:
    """What a run starting from random weights should be told: a frozen part with random weights
    (only the rest learns: Conv-cut's head on a random trunk is near chance), and a recipe whose
    paper starts from pretrained weights run without them (its results are not the paper's): without
    ``pretrained``, whatever else is given (pcda's ``landmark_checkpoint`` leaves its IR-50 random)."""
    given = {k for k in WEIGHT_FILE_KWARGS if params.model_kwargs.get(k)}
    out = []
    frozen = sum(p.numel() for p in net.parameters() if not p.requires_grad)
    if frozen and not given:
        out.append(f"train.model {params.model} keeps {frozen:,} parameters frozen at random weights (no "
                   "train.model_kwargs.pretrained): only the rest learns; give its weights (docs/models.md, "
                   "Pretrained weights), or unfreeze them")
    if (weights := weights_of(params.recipe)) and "pretrained" not in given:
        out.append(f"train.recipe {params.recipe}: the paper starts from {weights}; without "
                   "train.model_kwargs.pretrained this run starts from random weights, and its figures are not "
                   "comparable with the paper's")
    return out


def check_classes(train_split: Split, val_split: Split, num_classes: int) -> None:
    for split in (train_split, val_split):
        beyond = split.classes_beyond(num_classes)
        if beyond:
            holders = [d for d in split.dirs if split.classes_beyond(num_classes, d)] or split.dirs
            raise ValueError(f"{split.name} split of {', '.join(holders)} holds {beyond}, which a "
                             f"{num_classes}-class model cannot learn; set train.num_classes 8 or prepare "
                             "the dataset without them (params.yaml datasets.<name>.options: "
                             "{exclude_classes: [Contempt]}, or for AffectNet protocol: affectnet7; for CK+ that "
                             "leaves 6 classes unless neutral_frames: 1 adds Neutral)")
    absent = [c for c, n in zip(CLASSES, train_split.class_counts(num_classes)) if not n]
    if CLASSES[CONTEMPT] in absent:         # an 8-class recipe on data prepared as AffectNet-7 / without it
        log.warning("the train split of %s has no Contempt sample for the 8-class model to learn: prepared with "
                    "protocol affectnet7 or exclude_classes [Contempt]? (an 8-class recipe needs them, else "
                    "train.num_classes 7)", ", ".join(train_split.dirs))
    elif absent:
        log.info("the train split has no sample of %s: the model cannot learn to predict %s", " or ".join(absent),
                 "it" if len(absent) == 1 else "them")


def check_selection(val_split: Split) -> bool:
    """Whether ``best.pt`` is chosen on ``val_split``. Without any val split it keeps the last epoch
    when ``shard.val_fraction 0`` made it so (every training face trained on, as the papers do),
    and refuses a split empty by accident (too small a fraction, or shards of a version that did
    not record why); with some datasets' val splits only, the log says whose it is chosen on."""
    empty = [d for d in val_split.dirs if not val_split.shards_of(d)]
    if not val_split.num_samples:
        if accidental := [d for d in empty if d not in val_split.empty_by_setting]:
            raise ValueError(f"the val split of {', '.join(accidental)} is empty: model selection needs it (raise "
                             "shard.val_fraction), or prepare it with shard.val_fraction 0 to train on every "
                             "training face and keep the last epoch")
        log.warning("no validation split (shard.val_fraction 0): no model selection, best.pt is the last epoch "
                    "(train.select_metric is not used)")
        return False
    if empty:
        log.warning("best.pt is chosen on the val split of %s only: %s has none (shard.val_fraction 0 or too "
                    "small)", ", ".join(d for d in val_split.dirs if d not in empty), ", ".join(empty))
    return True


def check_selection_metric(params: TrainParams, val_split: Split) -> None:
    """Warn when training evens out the classes (``sampler: balanced`` or ``class_weights``) while
    ``best.pt`` is chosen on plain accuracy of an uneven val split: that metric picks the epoch
    that favours the frequent classes, which the rebalancing trains against (AffectNet's val
    split, carved from training.csv, is 47% Happy; its papers score the class-balanced test set)."""
    if params.select_metric != "accuracy" or not (params.sampler == "balanced" or params.class_weights):
        return
    present = [n for n in val_split.class_counts(params.num_classes) if n]
    if len(present) > 1 and max(present) >= UNEVEN_VAL * min(present):
        log.warning("train.%s evens out the classes, but best.pt is chosen on plain accuracy of a val split "
                    "whose classes hold %d to %d samples: it favours the epoch that leans to the frequent "
                    "classes; set train.select_metric mean_class_accuracy (as the AffectNet recipes do) or "
                    "macro_f1", "sampler balanced" if params.sampler == "balanced" else "class_weights",
                    min(present), max(present))


def check_same_preparation(train_split: Split, val_split: Split) -> None:
    """``best.pt`` is chosen on faces made as the training ones, by the same run: one shard run
    writes every split of a folder with the same record of what made it (``layout.MADE_BY``), so
    a difference means a copy that mixes two preparations (another crop size or padding: model
    selection on other faces; another ``shard.seed``: val faces that were trained on), silently."""
    for d in val_split.dirs:
        train, val = train_split.made_by.get(d, {}), val_split.made_by.get(d, {})
        differ = [k for k in MADE_BY if train.get(k) != val.get(k)]
        if not differ:
            continue
        told = (setting_differences(train.get("preprocess") or {}, val.get("preprocess") or {},
                                    a_is=" (train)", b_is=" (val)") if "preprocess" in differ else
                [f"{differ[0]} {train.get(differ[0])!r} (train) vs {val.get(differ[0])!r} (val)"])
        raise ValueError(f"the val split of {d} was made by another run than the train split ({'; '.join(told)}): "
                         "shards copied from two preparations (other crops, or another shard.seed dealing trained "
                         "faces to val)? `ferdata verify` names them; copy or prepare the shards again")


def check_smoothing_applies(smoothing: float, split: Split) -> None:
    """Label smoothing needs a distribution to smooth: FERPlus's multi_target rows (a set of labels,
    trained as -log of the likeliest) are not smoothed, so on them alone it would be ignored."""
    multi = split.soft_labels.get("multi_target", 0)
    if not smoothing or not multi:
        return
    if multi >= split.num_samples:
        raise ValueError(f"train.label_smoothing {smoothing:g} does not apply to FERPlus's multi_target label mode "
                         "(every training sample uses it: a set of labels, not a distribution): set it to 0 or "
                         "choose label_mode majority, probability or crossentropy")
    log.warning("train.label_smoothing %g: the %d multi_target samples (a set of labels) are not smoothed, the "
                "other %d are", smoothing, multi, split.num_samples - multi)


def require_extras_read(net: nn.Module, batch: dict, device: torch.device, amp: bool) -> bool:
    """Fail loudly if class-weighted loss or label smoothing was asked for (``batch`` holds
    ``class_weight`` / ``label_smoothing``) but the model's losses ignore it; True once checked.
    Runs the plain module in eval mode: no BN update, no RNG use, no DDP collective."""
    net.eval()
    if "target" in batch:           # probe with the labels as targets: a drawn or multi_target target may
        batch = {**batch, "target": F.one_hot(batch["label"], batch["target"].shape[1]).to(batch["target"].dtype),
                 "target_kind": torch.zeros_like(batch["target_kind"])}      # leave out the skewed class
    with torch.no_grad(), autocast(device, amp):
        out = net(batch)
        weights = check_class_weight_used(net, out, batch) if "class_weight" in batch else True
        smoothing = loss_reads(net, out, batch, "label_smoothing", 0.0, 0.5) if "label_smoothing" in batch else True
    net.train()
    ignored = [setting for setting, used in (("class_weights", weights), ("label_smoothing", smoothing))
               if used is False]
    if ignored:
        raise NotImplementedError(f"train.{ignored[0]} is on but model {net.card.name!r}'s losses ignore it "
                                  "(they must take batch['class_weight'] and batch['label_smoothing'] through "
                                  "fermodels.losses.label_loss)")
    return weights is True
