"""The trainer: a short explicit loop over shards with named losses, a pure learning-rate
schedule, validation-based model selection (never test), DVCLive logging and exact resume.

Runs on CPU or CUDA, with autocast (bf16 where supported, else fp16 with a grad scaler),
channels_last and ``torch.compile`` as params, and under ``torchrun`` as DDP (one process per
GPU; ``batch_size`` is the global batch, split over ranks; rank 0 logs and writes).
Everything random is seeded from (seed, epoch, step, rank), so a run killed at any saved step
and resumed gives the same weights as an uninterrupted one.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ferdata.classes import CLASSES
from ferdata.params import (above, at_least, below_from, check_values, one_of, optional, repeated, section,
                            section_values, within)
from ferdata.selection import SPLITS_READ
from fermodels.augment import AugmentParams, augment_batch
from fermodels.checkpoints import WEIGHT_FILE_KWARGS
from fermodels.data import SampleDecoder, Split, normalise, open_split, split_decoder, to_device
from fermodels.distributed import (DistEnv, all_gather_objects, broadcast_object, env_from_os, init_distributed,
                                   max_over_ranks, pick_device, shutdown, sync_buffers)
from fermodels.ema import WeightAverage
from fermodels.evaluate import amp_dtype, autocast, rank_loader, score_split
from fermodels.indexed import IndexedSplit
from fermodels.losses import draw_targets
from fermodels.optim import OPTIMIZERS, SAM, SCHEDULES, build_optimizer, lr_at, set_lr
from fermodels.recipes import apply_recipe, check_applied, weights_of
from fermodels.registry import create_model, model_kwargs
from fermodels.runstate import (BEST, LAST, Position, code_fingerprint, next_position, resume_state, save_checkpoint,
                                truncate_live)
from fermodels.sampling import SAMPLERS, ClassRepeat, check_class_weight_used, class_weight_tensor, loss_reads
from fermodels.stream import EpochPlanner, PersistentLoader, mix_seed

log = logging.getLogger(__name__)
SELECT_METRICS = ("accuracy", "mean_class_accuracy", "macro_f1")
FINITE_CHECK_EVERY = 50     # steps between loss checks (each check syncs the GPU)


class NonFiniteLossError(ValueError):
    """Training produced NaN/inf; the last good checkpoint is kept untouched. A ``ValueError``: the
    settings (``train.lr``, ``train.amp``) are what to change, so commands report it in one line."""


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
    device: str
    amp: bool
    channels_last: bool
    compile: bool
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
        try:                                        # a keyword the model lacks: named now, not at model build
            model_kwargs(self.model, self.model_kwargs)
        except TypeError as err:
            raise ValueError(f"train.model_kwargs for train.model {self.model}: {err} (`fermodels info "
                             f"{self.model}` lists its keywords)") from None
        if isinstance(self.datasets, str) or not self.datasets:
            raise ValueError("train.datasets must be a non-empty list of prepared dataset names")
        if twice := repeated(self.datasets):
            raise ValueError(f"train.datasets lists {', '.join(map(repr, twice))} more than once (each dataset "
                             "is read once an epoch; the class-balanced sampler evens out their classes)")
        check_values("train", self, {
            "num_classes": one_of((7, 8)), "epochs": at_least(1), "batch_size": at_least(1),
            "epoch_samples": optional(at_least(1)), "optimizer": one_of(OPTIMIZERS.names()), "lr": above(0),
            "weight_decay": at_least(0), "momentum": within(0, 1), "sam_rho": above(0), "schedule": one_of(SCHEDULES),
            "warmup_epochs": at_least(0), "step_size": at_least(1), "gamma": above(0), "sampler": one_of(SAMPLERS),
            "select_metric": one_of(SELECT_METRICS), "workers": at_least(0), "shuffle_buffer": at_least(0),
            "checkpoint_every": at_least(0), "label_smoothing": below_from(0, 1),
            "ema_decay": below_from(0, 1)})
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"train.warmup_epochs {self.warmup_epochs} is more than train.epochs {self.epochs} "
                             "(the learning rate would never reach train.lr)")
        if self.sampler == "balanced" and self.class_weights:
            raise ValueError("train.sampler balanced and train.class_weights true each even out the classes; both "
                             "would count a rare class twice (Contempt about 36x Happy on AffectNet-8): set one")


def train_section(params: Mapping[str, Any], announce: bool = True) -> TrainParams:
    """params.yaml's ``train`` section with its recipe applied (:func:`apply_recipe`), as the train
    stage runs it; ``announce``: log what the recipe sets."""
    return section(TrainParams, apply_recipe(section_values(params, "train"), announce), "train")


def seed_step(seed: int, epoch: int, step: int, rank: int) -> tuple[torch.Generator, torch.Generator]:
    """Seed torch (dropout etc.) for this step; return the augmentation generator and the one that
    draws FERPlus probability targets (apart: how many rows draw must not move the batch's flips)."""
    torch.manual_seed(mix_seed(seed, epoch, step, rank))
    return (torch.Generator().manual_seed(mix_seed(seed, epoch, step, rank, 1)),
            torch.Generator().manual_seed(mix_seed(seed, epoch, step, rank, 2)))


def train_step(fwd: nn.Module, net: nn.Module, opt, scaler: torch.amp.GradScaler, batch: dict,
               device: torch.device, amp: bool) -> dict[str, torch.Tensor]:
    """One optimiser step (two forward/backward passes with SAM); returns the named losses."""
    def losses_at_current_weights() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        with autocast(device, amp):
            losses = net.losses(fwd(batch), batch)
        return losses, sum(losses.values())

    opt.zero_grad(set_to_none=True)
    losses, total = losses_at_current_weights()
    if isinstance(opt, SAM):
        total.backward()
        opt.first_step()
        losses_at_current_weights()[1].backward()
        opt.second_step()
    else:
        scaler.scale(total).backward()
        scaler.step(opt)
        scaler.update()
    return {k: v.detach() for k, v in losses.items()}


def train(shards: str | Path | Sequence[str | Path], params: TrainParams, ckpt_dir: str | Path,
          live_dir: str | Path, preprocess: dict | None = None) -> dict:
    """Train ``params.model`` on the train splits of ``shards`` (one dir per ``params.datasets``),
    select the best epoch on their val splits; returns the best val metrics.

    ``ckpt_dir`` gets ``last.pt`` (resume) and ``best.pt``; ``live_dir`` the DVCLive logs;
    ``preprocess`` (align/derive settings of the shards) goes into the checkpoints for inference.
    """
    dirs = [Path(shards)] if isinstance(shards, (str, Path)) else [Path(s) for s in shards]
    if len(dirs) != len(params.datasets):
        raise ValueError(f"{len(dirs)} shard dirs for datasets {params.datasets}")
    env = env_from_os()
    device = pick_device(params.device, env)
    created = init_distributed(device, env)
    try:
        return _fit(dirs, params, Path(ckpt_dir), Path(live_dir), preprocess or {}, env, device)
    finally:
        shutdown(created)


@dataclass
class Tally:
    """One rank's running totals of an epoch. Mid-epoch checkpoints keep every rank's, so a resumed
    epoch logs the samples, losses and times of the whole epoch, as an uninterrupted one does."""

    sums: dict = field(default_factory=dict)        # loss name -> loss x samples
    seen: int = 0
    waited: float = 0.0                             # seconds waiting for data
    elapsed: float = 0.0
    classes: list = field(default_factory=list)     # samples trained on per class id (what sampling made)

    def saved(self) -> dict:
        return {"sums": {k: float(v) for k, v in self.sums.items()}, "seen": self.seen, "waited": self.waited,
                "elapsed": self.elapsed, "classes": list(self.classes)}


@dataclass
class _Run:
    """What the loop needs, built once by :func:`_setup`; ``step``/``best`` advance as it runs."""

    net: nn.Module
    fwd: nn.Module
    opt: Any
    scaler: torch.amp.GradScaler
    decoder: SampleDecoder
    train_split: Split
    val_loader: DataLoader                  # this rank's share of the val split, workers kept across epochs
    data: dict
    preprocess: dict
    repeat: ClassRepeat | None
    class_weight: torch.Tensor
    loader: PersistentLoader
    steps_per_epoch: int
    start: Position
    best: dict
    step: int = 0
    extras_checked: bool = False            # the losses are known to read class_weight / label_smoothing
    ema: WeightAverage | None = None        # train.ema_decay > 0: the weights validated and saved as best.pt
    resumed: Tally = field(default_factory=Tally)    # the start epoch's totals before the resume
    tallies: list = field(default_factory=list)     # every rank's, saved with a mid-epoch checkpoint


def _setup(dirs: list[Path], params: TrainParams, ckpt_dir: Path, live_dir: Path, preprocess: dict, env: DistEnv,
           device: torch.device) -> _Run:
    """Model, data, optimiser and the resume point (``last.pt`` of this exact run whose epochs
    ``live_dir`` logged, if any)."""
    if params.batch_size % env.world_size:
        raise ValueError(f"train.batch_size {params.batch_size} is not divisible by {env.world_size} ranks")
    torch.manual_seed(params.seed)
    net = create_model(params.model, num_classes=params.num_classes, **params.model_kwargs).to(device)
    for warning in random_start_warnings(net, params):
        log.warning(warning)
    train_split, val_split = (open_split(dirs, s) for s in SPLITS_READ)
    _check_classes(train_split, val_split, params.num_classes)
    preprocess = _shards_preprocess(train_split, preprocess)
    decoder = split_decoder(net.card, train_split, device)
    if train_split.soft_labels:                   # e.g. FERPlus label_mode crossentropy: train on the votes
        log.info("training on label distributions: %s samples", train_split.soft_labels)
    _check_smoothing_applies(params.label_smoothing, train_split)
    samples = params.epoch_samples or train_split.num_samples
    counts = train_split.class_counts(params.num_classes)
    opt = build_optimizer(params.optimizer, [p for p in net.parameters() if p.requires_grad], lr=params.lr,
                          weight_decay=params.weight_decay, momentum=params.momentum, sam=params.sam,
                          sam_rho=params.sam_rho)
    fp16 = params.amp and amp_dtype(device) == torch.float16
    if fp16 and params.sam:
        raise ValueError("SAM with fp16 autocast is not supported (no bf16 on this GPU): set train.amp false")
    plan_kw = dict(samples=samples, batch_size=params.batch_size // env.world_size, env=env,
                   workers=params.workers, shuffle=True, one_pass=params.sampler == "balanced")
    planner = EpochPlanner(tuple(train_split.shards), params.seed, env.rank, plan_kw)
    steps = sum(len(p.batch_sizes) for p in planner.plans(0))          # the same count every epoch
    data = {"datasets": list(params.datasets), "train": train_split.hashes, "val": val_split.hashes,
            "face_backends": train_split.face_backends,     # predict finds faces as the training data's were
            "face_backend_options": train_split.face_backend_options, "code": code_fingerprint()}
    state = broadcast_object(resume_state(ckpt_dir, asdict(params), data, live_dir) if env.is_main else None, env)
    start, best = Position(0, 0, 0), {params.select_metric: -1.0, "epoch": -1}
    scaler, resumed = torch.amp.GradScaler(device.type, enabled=fp16), Tally()
    if state is not None:
        net.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start, best = next_position(state, steps, env.world_size, params.workers), state["best"]
        log.info("resuming at epoch %d, batch %d (step %d)", start.epoch, start.batch, start.step)
        if start.batch and state.get("tallies"):
            resumed = Tally(**state["tallies"][env.rank])
    if params.channels_last:
        net = net.to(memory_format=torch.channels_last)
    ema = WeightAverage(net, params.ema_decay) if params.ema_decay else None
    if ema is not None and state is not None:
        ema.load_state_dict(state["ema"])
    repeat = ClassRepeat.balanced(counts, samples) if params.sampler == "balanced" else None
    loader = PersistentLoader(planner, replace(decoder, targets=bool(train_split.soft_labels)),
                              workers=params.workers, shuffle_buffer=params.shuffle_buffer, repeat=repeat)
    val_loader = rank_loader(IndexedSplit(val_split, decoder, params.num_classes), env,
                             max(1, params.batch_size // env.world_size), params.workers, persistent=True)
    return _Run(net, _wrap(net, params, env, device), opt, scaler,
                decoder, train_split, val_loader, data, preprocess, repeat, class_weight_tensor(counts, device),
                loader, steps, start, best, start.step, not (params.class_weights or params.label_smoothing), ema,
                resumed)


def _fit(dirs: list[Path], params: TrainParams, ckpt_dir: Path, live_dir: Path, preprocess: dict,
         env: DistEnv, device: torch.device) -> dict:
    run = _setup(dirs, params, ckpt_dir, live_dir, preprocess, env, device)
    live = _open_live(live_dir, run.start, env)
    try:
        for epoch in range(run.start.epoch, params.epochs):
            first = epoch == run.start.epoch
            tally, lr = _train_epoch(run, params, env, device, epoch, run.start.batch if first else 0, ckpt_dir,
                                     run.resumed if first else Tally())
            run.tallies = []                      # the epoch is whole: nothing partial to keep
            sync_buffers(run.net, env)            # validate (and save) rank 0's model on every rank
            scored = run.net if run.ema is None else run.ema.module
            if run.ema is not None:               # each rank averaged its own BatchNorm statistics
                sync_buffers(scored, env)
            val = score_split(scored, run.val_loader, params.num_classes, env, device)
            end = Position(epoch, run.steps_per_epoch, run.step)
            if val[params.select_metric] > run.best[params.select_metric]:
                run.best = {**{k: val[k] for k in SELECT_METRICS}, "epoch": epoch}
                _save(env, ckpt_dir / BEST, run, params, end, scored)
            totals = all_gather_objects((tally.sums, tally.seen, tally.waited, tally.classes), env)
            if env.is_main:                        # every rank's counts, told once
                _log_epoch(live, epoch, totals, lr, tally.elapsed, val)
            _save(env, ckpt_dir / LAST, run, params, end)
    finally:
        run.loader.close()
        if live is not None:
            live.end()
    return run.best


def _train_epoch(run: _Run, params: TrainParams, env: DistEnv, device: torch.device, epoch: int, skip: int,
                 ckpt_dir: Path, tally: Tally) -> tuple[Tally, float]:
    """One epoch from batch ``skip``, adding to ``tally`` (the totals before a resume): the
    epoch's totals and the last learning rate."""
    t0 = time.perf_counter() - tally.elapsed
    loader = run.loader.epoch(epoch, skip)
    fill = torch.tensor(run.net.card.mean) * 255.0
    sums: dict = dict(tally.sums)
    classes = torch.tensor(tally.classes or [0] * params.num_classes, dtype=torch.int64)
    seen, waited, lr, bad = tally.seen, tally.waited, params.lr, torch.zeros((), device=device)
    run.net.train()
    t_wait = time.perf_counter()
    for i, batch in enumerate(loader, start=skip):
        waited += time.perf_counter() - t_wait
        lr = lr_at(epoch + i / run.steps_per_epoch, base_lr=params.lr, schedule=params.schedule,
                   epochs=params.epochs, warmup_epochs=params.warmup_epochs, step_size=params.step_size,
                   gamma=params.gamma)
        set_lr(run.opt, lr)
        gen, draws = seed_step(params.seed, epoch, run.step, env.rank)
        moved = to_device(draw_targets(batch, draws, params.num_classes), device, run.decoder.size)
        b = normalise(augment_batch(moved, params.augment, gen, fill), run.net.card, params.channels_last)
        if params.class_weights:
            b["class_weight"] = run.class_weight
        if params.label_smoothing:
            b["label_smoothing"] = params.label_smoothing
        run.extras_checked = run.extras_checked or _require_extras_read(run.net, b, device, params.amp)
        losses = train_step(run.fwd, run.net, run.opt, run.scaler, b, device, params.amp)
        if run.ema is not None:
            run.ema.update(run.net, run.step)
        bad = bad + (~torch.isfinite(sum(losses.values()))).float()
        run.step += 1
        seen += len(batch["label"])
        classes += torch.bincount(batch["label"], minlength=params.num_classes)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.float() * len(batch["label"])
        if run.step % FINITE_CHECK_EVERY == 0:
            _check_finite(max_over_ranks(bad, env), epoch, run.step, losses, ckpt_dir)
        if params.checkpoint_every and run.step % params.checkpoint_every == 0 and i + 1 < run.steps_per_epoch:
            _check_finite(max_over_ranks(bad, env), epoch, run.step, losses, ckpt_dir)
            now = Tally(sums, seen, waited, time.perf_counter() - t0, classes.tolist()).saved()
            run.tallies = all_gather_objects(now, env)
            _save(env, ckpt_dir / LAST, run, params, Position(epoch, i + 1, run.step))
        t_wait = time.perf_counter()
    _check_finite(max_over_ranks(bad, env), epoch, run.step, sums, ckpt_dir)
    return Tally({k: float(v) for k, v in sums.items()}, seen, waited, time.perf_counter() - t0, classes.tolist()), lr


def _shards_preprocess(split: Split, given: dict) -> dict:
    """The align/derive settings for the checkpoints: what the shards record (the stages that made
    them), else ``given`` (params.yaml's, for shards of a version that did not record them)."""
    if not split.preprocess:
        return given
    if given and given != split.preprocess:
        log.warning("params.yaml's align/derive settings %s are not the ones the shards were made with %s "
                    "(prepared with another params file?): the checkpoints record the shards'", given,
                    split.preprocess)
    return split.preprocess


def random_start_warnings(net: nn.Module, params: TrainParams) -> list[str]:
    """What a run starting from random weights should be told: a frozen part with random weights
    (only the rest learns: Conv-cut's head on a random trunk is near chance), and a recipe whose
    paper starts from pretrained weights run without them (its results are not the paper's)."""
    if any(params.model_kwargs.get(k) for k in WEIGHT_FILE_KWARGS):
        return []
    out = []
    frozen = sum(p.numel() for p in net.parameters() if not p.requires_grad)
    if frozen:
        out.append(f"train.model {params.model} keeps {frozen:,} parameters frozen at random weights (no "
                   "train.model_kwargs.pretrained): only the rest learns; give its weights (docs/models.md, "
                   "Pretrained weights), or unfreeze them")
    if weights := weights_of(params.recipe):
        out.append(f"train.recipe {params.recipe}: the paper starts from {weights}; without "
                   "train.model_kwargs.pretrained this run starts from random weights, and its figures are not "
                   "comparable with the paper's")
    return out


def _check_classes(train_split: Split, val_split: Split, num_classes: int) -> None:
    for split in (train_split, val_split):
        beyond = split.classes_beyond(num_classes)
        if beyond:
            raise ValueError(f"{split.name} split of {', '.join(split.dirs)} holds {beyond}, which a "
                             f"{num_classes}-class model cannot learn; set train.num_classes 8 or prepare "
                             "the dataset without them (params.yaml datasets.<name>.options: "
                             "{exclude_classes: [Contempt]}, or for AffectNet protocol: affectnet7)")
    if val_split.num_samples == 0:
        raise ValueError("the val split is empty: model selection needs it (shard.val_fraction > 0)")


def _wrap(net: nn.Module, params: TrainParams, env: DistEnv, device: torch.device) -> nn.Module:
    """The module the loop calls: DDP around the net under torchrun, compiled if asked."""
    fwd: nn.Module = net
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel
        from fermodels.info import example_batch, used_parameters

        was_training = net.training
        used = {id(p) for p in used_parameters(net.eval(), {k: v.to(device) for k, v in
                                                           example_batch(net.card, 2, params.num_classes).items()})}
        net.train(was_training)
        unused = any(p.requires_grad and id(p) not in used for p in net.parameters())
        fwd = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=unused)
    return torch.compile(fwd) if params.compile else fwd


def _open_live(live_dir: Path, pos: Position, env: DistEnv):
    if not env.is_main:
        return None
    from dvclive import Live

    resuming = pos.epoch > 0 or pos.batch > 0
    if resuming:
        truncate_live(live_dir, pos.epoch)
    try:
        live = Live(dir=str(live_dir), resume=resuming, save_dvc_exp=False, dvcyaml=None, report=None)
    except Exception as e:
        # DVCLive reads the project's git HEAD, which does not exist before the first commit. Its
        # scmrepo.SCMError is matched by module: scmrepo (DVC's git layer) need not be importable.
        if not type(e).__module__.startswith("scmrepo."):
            raise
        raise ValueError(f"DVCLive, which logs the metrics, cannot read this project's git repository ({e}): "
                         f"a repository needs a commit before training (`git add -A && git commit -m ...`)") from e
    live.step = pos.epoch
    return live


def _log_epoch(live, epoch: int, totals: list, lr: float, elapsed: float, val: dict) -> None:
    seen = sum(t[1] for t in totals)
    losses = {k: sum(t[0].get(k, 0.0) for t in totals) / max(seen, 1) for k in totals[0][0]}
    waited = max(t[2] for t in totals)
    counted = [sum(t[3][c] for t in totals) for c in range(len(totals[0][3]))]
    # per-class counts cover the epoch unless it resumed from a checkpoint that did not keep them
    shares = {CLASSES[c]: n / seen for c, n in enumerate(counted)} if seen and sum(counted) == seen else {}
    log.info("epoch %d: %s val acc %.4f (%.1f samples/s, %.0f%% waiting for data)", epoch,
             " ".join(f"{k}={v:.4f}" for k, v in losses.items()), val["accuracy"], seen / max(elapsed, 1e-9),
             100 * waited / max(elapsed, 1e-9))
    if shares:
        log.info("epoch %d trained on: %s", epoch, " ".join(f"{name} {share:.1%}" for name, share in shares.items()))
    if live is None:
        return
    for k, v in losses.items():
        live.log_metric(f"train/{k}", v)
    live.log_metric("train/lr", lr)
    live.log_metric("train/samples", seen)
    live.log_metric("train/samples_per_s", seen / max(elapsed, 1e-9))
    live.log_metric("train/loader_wait_fraction", waited / max(elapsed, 1e-9))
    for name, share in shares.items():
        live.log_metric(f"train/class_share/{name}", share)
    for k in SELECT_METRICS:
        live.log_metric(f"val/{k}", val[k])
    live.next_step()


def _check_finite(bad: torch.Tensor, epoch: int, step: int, losses: dict, ckpt_dir: Path) -> None:
    """Stop on a non-finite loss; ``bad`` is every rank's count at once (:func:`max_over_ranks`),
    so all ranks stop together instead of one leaving the others in a collective."""
    if float(bad) > 0:
        shown = " ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
        kept = (f"last good checkpoint kept at {ckpt_dir / LAST}" if (ckpt_dir / LAST).is_file() else
                "no checkpoint was saved before it")
        raise NonFiniteLossError(f"non-finite loss by epoch {epoch} step {step} ({shown}); {kept}; lower train.lr "
                                 "or disable train.amp")


def _check_smoothing_applies(smoothing: float, split: Split) -> None:
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


def _require_extras_read(net: nn.Module, batch: dict, device: torch.device, amp: bool) -> bool:
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


def _save(env: DistEnv, path: Path, run: _Run, params: TrainParams, position: Position,
          model: nn.Module | None = None) -> None:
    """``model``: the weights to save (best.pt: the ones validated, without the optimizer's state, which
    only resuming reads, from last.pt: two thirds of an AdamW checkpoint); else the raw weights, with
    the optimizer's state and the weight average (when on) beside them to resume from."""
    if env.is_main:
        averaged = {"ema": run.ema.state_dict()} if run.ema is not None and model is None else {}
        save_checkpoint(path, model=run.net if model is None else model, params=params,
                        optimizer=run.opt if model is None else None,
                        position=position, best=run.best, data=run.data, preprocess=run.preprocess,
                        scaler=run.scaler.state_dict(),
                        resume={"world_size": env.world_size, "epoch_steps": run.steps_per_epoch,
                                "tallies": run.tallies, **averaged})
