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
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from ferdata.classes import CLASSES
from ferdata.errors import warnings_told_here
from ferdata.layout import GREY, INFO
from ferdata.progress import progress
from ferdata.selection import SPLITS_READ
from fermodels.augment import augment_batch
from fermodels.data import SampleDecoder, split_decoder
from fermodels.modelinput import normalise, to_device
from fermodels.shardsplit import Split, open_split
from fermodels.distributed import (DistEnv, GlobalBatch, LauncherWatch, all_gather_objects,
                                   broadcast_object, check_compile_works, ddp_wrap, env_from_os, max_over_ranks,
                                   on_every_rank, pick_device, shutdown, start_ranks, sync_batchnorm, sync_buffers,
                                   told)
from fermodels.ema import WeightAverage
from fermodels.indexed import IndexedSplit, close_loader
from fermodels.losses import GLOBAL_BATCH, draw_targets
from fermodels.metrics import SUMMARY_METRICS
from fermodels.optim import SAM, build_optimizer, lr_at, set_lr
from fermodels.registry import create_model
from fermodels.scoring import amp_dtype, autocast, rank_loader, score_split
from fermodels.ckptdir import BEST, LAST, PENDING_BEST, checkpoints_held, promote_best
from fermodels.checkpoints import weight_file_digests
from fermodels.runstate import (DEVICE, LAYOUT, Position, code_fingerprint, next_position, other_threads, resume_state,
                                save_checkpoint)
from fermodels.sampling import ClassRepeat, class_weight_tensor
from fermodels.epochplan import mix_seed
from fermodels.stream import EpochPlanner, PersistentLoader
from fermodels.trainlog import FINITE_CHECK_EVERY, Tally, check_finite, end_live, log_epoch, open_live
from fermodels.trainparams import (TrainParams, check_classes, check_same_preparation, check_selection,
                                   check_selection_metric, check_smoothing_applies, random_start_warnings,
                                   require_extras_read, shards_preprocess)

log = logging.getLogger(__name__)


def seed_step(seed: int, epoch: int, step: int, rank: int) -> tuple[torch.Generator, torch.Generator]:
    """Seed torch (dropout etc.) for this step; return the augmentation generator and the one that
    draws FERPlus probability targets (apart: how many rows draw must not move the batch's flips)."""
    torch.manual_seed(mix_seed(seed, epoch, step, rank))
    return (torch.Generator().manual_seed(mix_seed(seed, epoch, step, rank, 1)),
            torch.Generator().manual_seed(mix_seed(seed, epoch, step, rank, 2)))


def train_step(fwd: nn.Module, net: nn.Module, opt, scaler: torch.amp.GradScaler, batch: dict,
               device: torch.device, amp: bool, whole: GlobalBatch | None = None) -> dict[str, torch.Tensor]:
    """One optimiser step (two forward/backward passes with SAM); returns the named losses. Under
    DDP, ``whole`` reaches the losses as ``batch[GLOBAL_BATCH]`` (not the forward pass)."""
    def losses_at_current_weights() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        with autocast(device, amp):
            losses = net.losses(fwd(batch), batch if whole is None else {**batch, GLOBAL_BATCH: whole})
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
    _, device, created = start_ranks(lambda: (None, pick_device(params.device, env)), env)
    # Training seeds torch's global generators (params.seed, then every step): the caller's (a notebook's)
    # are theirs again afterwards, as they were, not left at the last step's seed.
    own = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    try:
        with _held_by_rank_0(ckpt_dir, env), torch.random.fork_rng(devices=own):
            return _fit(dirs, params, Path(ckpt_dir), Path(live_dir), preprocess or {}, env, device)
    finally:
        shutdown(created)


class RankZeroRefusal(RuntimeError, ValueError):
    """Another rank's account of rank 0's refusal of bad input (a ``ValueError``: one ``error:`` line
    under the commands' error policy, as rank 0 tells its own)."""


def _on_rank_0(fn: Callable[[], Any], env: DistEnv, share: bool = False) -> Any:
    """``fn()`` on rank 0 alone (what only rank 0 reads or writes: the checkpoint folder, last.pt, the
    logs): its value, on every rank when ``share`` (else None on the others). When it raises, every
    rank stops: rank 0 with its error, the others with :class:`RankZeroRefusal` (``RuntimeError`` for
    a bug) naming it, where they went on to wait for rank 0 at their next collective and ended on a
    traceback (gloo's "Connection closed by peer", or their own ``RuntimeError``)."""
    value, refusal = None, None
    if env.is_main:
        try:
            value = fn()
        except Exception as err:       # noqa: BLE001 - any failure here must reach every rank
            refusal = err
    shared = broadcast_object((value if share else None, told(refusal)), env)
    if refusal is not None:
        raise refusal
    if shared[1] is not None:
        text, user = shared[1]
        raise (RankZeroRefusal if user else RuntimeError)(f"rank 0 stopped before training: {text}")
    return value if env.is_main else shared[0]


@contextmanager
def _held_by_rank_0(ckpt_dir: str | Path, env: DistEnv) -> Iterator[None]:
    """Rank 0, which alone writes the checkpoints, holds their folder for the run
    (:func:`checkpoints_held`); a refusal stops every rank with rank 0's error (:func:`_on_rank_0`)."""
    with ExitStack() as stack:
        _on_rank_0(lambda: stack.enter_context(checkpoints_held(ckpt_dir)), env)
        yield


@dataclass
class _Run:
    """What the loop needs, built once by :func:`_setup`; ``step``/``best`` advance as it runs."""

    net: nn.Module
    fwd: nn.Module
    opt: Any
    scaler: torch.amp.GradScaler
    decoder: SampleDecoder
    val_loader: DataLoader | None           # this rank's share of the val split (workers kept); None: no split
    data: dict
    preprocess: dict
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
    whole: GlobalBatch | None = None        # under DDP: losses over the step's global batch (NeAA)
    threads: int | None = None              # torch's CPU threads, when it trains on the CPU (in last.pt)
    streams: int = 1                        # shuffle streams an epoch is cut into (in last.pt: its layout)
    launcher: LauncherWatch = field(default_factory=LauncherWatch.here)   # torchrun's agent, watched at checks


def _setup(dirs: list[Path], params: TrainParams, ckpt_dir: Path, live_dir: Path, preprocess: dict, env: DistEnv,
           device: torch.device) -> _Run:
    """Model, data, optimiser and the resume point (``last.pt`` of this exact run whose epochs
    ``live_dir`` logged, if any)."""
    def build() -> nn.Module:
        if params.batch_size % env.world_size:
            raise ValueError(f"train.batch_size {params.batch_size} is not divisible by {env.world_size} ranks")
        if params.compile:          # before the data: an inductor that cannot build here fails at the first step
            check_compile_works(device)
        torch.manual_seed(params.seed)
        return create_model(params.model, num_classes=params.num_classes, **params.model_kwargs).to(device)

    # on every rank, told to all: a weight file or a compiler one machine lacks stopped that machine's ranks
    # alone, the others' ending at check_ranks_agree on gloo's "Connection closed by peer" (NCCL: the timeout)
    net = on_every_rank(build, env)
    for warning in random_start_warnings(net, params):
        log.warning(warning)
    train_split, val_split = (open_split(dirs, s, warn=s == SPLITS_READ[0]) for s in SPLITS_READ)   # told once
    if not train_split.num_samples:
        raise ValueError(f"the train split of {', '.join(train_split.dirs)} holds no sample (a dataset prepared "
                         "all into test, or every face dropped?): nothing to train on; see the shard stage's "
                         "report.json, or choose other train.datasets")
    check_classes(train_split, val_split, params.num_classes)
    selects = check_selection(val_split)
    if selects:
        check_selection_metric(params, val_split)
    check_same_preparation(train_split, val_split)
    preprocess = shards_preprocess(train_split, preprocess)
    decoder = split_decoder(net.card, train_split, device)
    if train_split.soft_labels:                   # e.g. FERPlus label_mode crossentropy: train on the votes
        log.info("training on label distributions: %s samples", train_split.soft_labels)
    check_smoothing_applies(params.label_smoothing, train_split)
    samples = params.epoch_samples or train_split.num_samples
    counts = train_split.class_counts(params.num_classes)
    opt = build_optimizer(params.optimizer, [p for p in net.parameters() if p.requires_grad], lr=params.lr,
                          weight_decay=params.weight_decay, momentum=params.momentum, sam=params.sam,
                          sam_rho=params.sam_rho, sam_adaptive=params.sam_adaptive)
    fp16 = params.amp and amp_dtype(device) == torch.float16
    if fp16 and params.sam:
        raise ValueError("SAM with fp16 autocast is not supported (no bf16 on this GPU): set train.amp false")
    plan_kw = dict(samples=samples, batch_size=params.batch_size // env.world_size, env=env,
                   workers=params.workers, streams=params.streams, shuffle_buffer=params.shuffle_buffer,
                   shuffle=True, one_pass=params.sampler == "balanced")
    planner = EpochPlanner(tuple(train_split.shards), params.seed, env.rank, plan_kw)
    plans = planner.plans(0)
    steps = sum(len(p.batch_sizes) for p in plans)                     # the same count every epoch
    streams = sum(len(p.streams) for p in plans)                       # and the same layout
    if streams < params.streams:
        idle = (f"; {len(plans)} of the {params.workers} train.workers make its batches (the others are not started)"
                if len(plans) < params.workers else "")
        log.info("each epoch is cut into %d shuffle stream(s), not train.streams %d: each stream shuffles at "
                 "least train.shuffle_buffer (%d) samples and makes a batch%s", streams, params.streams,
                 params.shuffle_buffer, idle)
    data = _data_record(params, train_split, val_split, device)
    check_ranks_agree(params, data, env)
    state = _on_rank_0(lambda: resume_state(ckpt_dir, asdict(params), data, live_dir), env, share=True)
    start, best = Position(0, 0, 0), {params.select_metric: -1.0, "epoch": -1}
    scaler, resumed = torch.amp.GradScaler(device.type, enabled=fp16), Tally()
    threads = torch.get_num_threads() if device.type == "cpu" else None
    if state is not None:
        net.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start, best = next_position(state, steps, env.world_size, streams), state["best"]
        log.info("resuming at epoch %d, batch %d (step %d)", start.epoch, start.batch, start.step)
        if warning := other_threads(state, threads):
            log.warning(warning)
        if start.batch and state.get("tallies"):
            resumed = Tally(**state["tallies"][env.rank])
    if params.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if params.sync_batchnorm:
        net = sync_batchnorm(net, env, device)
    ema = WeightAverage(net, params.ema_decay) if params.ema_decay else None
    if ema is not None and state is not None:
        ema.load_state_dict(state["ema"])
    repeat = ClassRepeat.balanced(counts, samples) if params.sampler == "balanced" else None
    loader = PersistentLoader(planner, replace(decoder, targets=bool(train_split.soft_labels)),
                              workers=params.workers, shuffle_buffer=params.shuffle_buffer, repeat=repeat)
    val_loader = rank_loader(_val_set(val_split, decoder, params.num_classes), env,
                             net.card.scoring_batch(max(1, params.batch_size // env.world_size)), params.workers,
                             persistent=True) if selects else None
    whole = GlobalBatch(env.world_size, env.rank, params.batch_size // env.world_size) if env.distributed else None
    return _Run(net=net, fwd=ddp_wrap(net, env, device, params.num_classes, params.compile), opt=opt, scaler=scaler,
                decoder=decoder, val_loader=val_loader, data=data, preprocess=preprocess,
                class_weight=class_weight_tensor(counts, device), loader=loader, steps_per_epoch=steps, start=start,
                best=best, step=start.step, extras_checked=not (params.class_weights or params.label_smoothing),
                ema=ema, resumed=resumed, whole=whole, threads=threads, streams=streams)


def _data_record(params: TrainParams, train_split: Split, val_split: Split, device: torch.device) -> dict:
    """What the run trains on, recorded in its checkpoints (``data``): a run resumes only on the same
    record (:func:`fermodels.runstate.resume_state`), and predict finds and turns faces as it says."""
    data = {"datasets": list(params.datasets), "train": train_split.hashes, "val": val_split.hashes,
            "face_backends": train_split.face_backends,     # predict finds faces as the training data's were
            "face_backend_options": train_split.face_backend_options, "code": code_fingerprint(),
            "device": device.type}          # cpu or cuda: train.device auto, cuda and cuda:1 train alike
    if weights := weight_file_digests(params.model_kwargs):      # other weights under the same path: another run
        data["weights"] = weights
    if train_split.grey:                # every training face grey: predict turns colour faces grey for the model
        data[GREY] = True               # (only then: a colour run's checkpoints as before)
    elif grey := [d for d, made in train_split.made_by.items() if made.get(GREY) is True]:
        log.warning("%s record(s) every face grey (grey_faces) and %s do(es) not: colour faces, or grey faces prepared "
                    "before the shard stage recorded grey_faces (prepare those again: `dvc repro shard@<name>`); the "
                    "checkpoint records no data.grey_faces, so `ferdata predict` scores colour pictures in colour for "
                    "it", ", ".join(grey), ", ".join(d for d in train_split.dirs if d not in grey))
    return data


def _run_record(params: TrainParams, data: dict) -> dict:
    """What every rank must train alike, keyed as told: the train params but the loader workers and the
    device's spelling, and the data record (each split's shard digests in order, and the weight files
    ``model_kwargs`` names by content, ``data.weights``: the folders' paths may differ between machines)."""
    record = {f"train.{k}": v for k, v in asdict(params).items() if k not in LAYOUT + DEVICE}
    files = data.get("weights", {})
    record["train.model_kwargs"] = {k: "<a file: data.weights>" if k in files else v
                                    for k, v in params.model_kwargs.items()}
    for k, v in data.items():
        name = "the training code (data.code)" if k == "code" else f"data.{k}"
        record[name] = list(v.values()) if k in SPLITS_READ else v      # digests in order, not by folder path
    return record


def check_ranks_agree(params: TrainParams, data: dict, env: DistEnv) -> None:
    """Refuse, on every rank, a rank started with other train params, shards or code than rank 0 (one
    machine's stale params.yaml or shards): its epoch plan read other samples (a train.seed apart gave
    duplicates and drops), its optimiser stepped otherwise (train.lr) or its collectives came at other
    steps (train.checkpoint_every: a hang), all without a word, since rank 0 alone checks last.pt."""
    records = all_gather_objects(_run_record(params, data), env)
    for rank, record in enumerate(records[1:], start=1):
        if differ := sorted(k for k in {*records[0], *record} if records[0].get(k) != record.get(k)):
            raise ValueError(f"rank {rank} was started with other settings than rank 0 ({', '.join(differ)} "
                             "differ): every rank, on every machine, must train with the same params.yaml, shards "
                             "and code")


def _fit(dirs: list[Path], params: TrainParams, ckpt_dir: Path, live_dir: Path, preprocess: dict,
         env: DistEnv, device: torch.device) -> dict:
    with warnings_told_here(env.is_main):           # every rank checks the same shards and params
        run = _setup(dirs, params, ckpt_dir, live_dir, preprocess, env, device)
    live = _on_rank_0(lambda: open_live(live_dir, run.start, env), env)
    failed = True
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
            val = {} if run.val_loader is None else score_split(scored, run.val_loader, params.num_classes, env,
                                                                 device, params.channels_last)
            end = Position(epoch, run.steps_per_epoch, run.step)
            improved = not val or improves(val, run.best, params.select_metric)     # no val: each epoch
            if improved:
                run.best = {**{k: val[k] for k in SUMMARY_METRICS if val}, "epoch": epoch}
                _save(env, ckpt_dir / PENDING_BEST, run, params, end, scored)     # best.pt once last.pt says so
            totals = all_gather_objects((tally.sums, tally.seen, tally.waited, tally.classes), env)
            if env.is_main:                        # every rank's counts, told once
                log_epoch(live, epoch, totals, lr, tally.elapsed, val)
            _save(env, ckpt_dir / LAST, run, params, end)
            if improved and env.is_main:
                promote_best(ckpt_dir)
        failed = False
        if env.is_main and run.best.get("epoch", -1) >= 0:      # where the run's outputs are, once
            chosen = (f"val {params.select_metric} {run.best[params.select_metric]:.4f}"
                      if params.select_metric in run.best else "the last epoch: no val split")
            log.info("training done: %s is epoch %d (%s), %s beside it; DVCLive logs in %s", ckpt_dir / BEST,
                     run.best["epoch"], chosen, LAST, live_dir)
    finally:
        run.loader.close()
        close_loader(run.val_loader)
        if live is not None:
            end_live(live, failed)
    return run.best


def _check_health(run: _Run, bad: torch.Tensor, env: DistEnv, epoch: int, losses: dict, ckpt_dir: Path) -> None:
    """Stop every rank together on a non-finite loss (``bad``: this rank's count) or non-finite
    weights, or when torchrun is gone: one collective carries the three. Weights: a gradient that
    overflowed while the loss stayed finite steps them to NaN (only the fp16 path's scaler skips
    such steps); checked here, before every save, so ``last.pt`` never holds them."""
    broken = ~torch.stack([p.isfinite().all() for p in run.net.parameters()]).all()
    flags = max_over_ranks(torch.stack([bad, bad.new_full((), float(run.launcher.gone())),
                                        broken.to(bad.device, bad.dtype)]), env)
    run.launcher.check(flags[1])
    check_finite(flags[0], epoch, run.step, losses, ckpt_dir, weights=flags[2])


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
    losses: dict = {}                      # the last step's, told by a failed health check
    run.net.train()
    t_wait = time.perf_counter()
    if env.is_main:             # an epoch of AffectNet takes long: a bar, or a line a minute off a terminal
        loader = progress(loader, f"epoch {epoch}", "batches", run.steps_per_epoch - skip)
    for i, batch in enumerate(loader, start=skip):
        waited += time.perf_counter() - t_wait
        lr = lr_at(epoch + i / run.steps_per_epoch, base_lr=params.lr, schedule=params.schedule,
                   epochs=params.epochs, warmup_epochs=params.warmup_epochs, step_size=params.step_size,
                   gamma=params.gamma)
        set_lr(run.opt, lr)
        check_batch_classes(batch, params.num_classes)
        gen, draws = seed_step(params.seed, epoch, run.step, env.rank)
        moved = to_device(draw_targets(batch, draws, params.num_classes), device, run.decoder.size)
        b = normalise(augment_batch(moved, params.augment, gen, fill), run.net.card, params.channels_last)
        if params.class_weights:
            b["class_weight"] = run.class_weight
        if params.label_smoothing:
            b["label_smoothing"] = params.label_smoothing
        run.extras_checked = run.extras_checked or require_extras_read(run.net, b, device, params.amp)
        losses = train_step(run.fwd, run.net, run.opt, run.scaler, b, device, params.amp, run.whole)
        if run.ema is not None:
            run.ema.update(run.net, run.step)
        bad = bad + (~torch.isfinite(sum(losses.values()))).float()
        run.step += 1
        seen += len(batch["label"])
        classes += torch.bincount(batch["label"], minlength=params.num_classes)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.float() * len(batch["label"])
        if run.step % FINITE_CHECK_EVERY == 0:
            _check_health(run, bad, env, epoch, losses, ckpt_dir)
        if params.checkpoint_every and run.step % params.checkpoint_every == 0 and i + 1 < run.steps_per_epoch:
            _check_health(run, bad, env, epoch, losses, ckpt_dir)
            now = Tally(sums, seen, waited, time.perf_counter() - t0, classes.tolist()).saved()
            run.tallies = all_gather_objects(now, env)
            _save(env, ckpt_dir / LAST, run, params, Position(epoch, i + 1, run.step))
        t_wait = time.perf_counter()
    _check_health(run, bad, env, epoch, losses, ckpt_dir)    # not sums: loss x samples, added up
    return Tally({k: float(v) for k, v in sums.items()}, seen, waited, time.perf_counter() - t0, classes.tolist()), lr


_UNDESCRIBED = ("that file does not describe its shards; `ferdata verify` the split, then re-run the shard stage "
                "(or `dvc pull` / `dvc checkout` it)")


SAME_SCORE = 1e-12      # val figures this close are a tie: a mean of recalls rounds by class order (0.2 +- 3e-17)


def improves(val: dict, best: dict, metric: str) -> bool:
    """Whether this epoch's ``val`` beats the ``best`` so far on ``metric``; a tie keeps the earlier epoch, also
    where float rounding split it (recalls 3/10, 2/10, 1/10 averaged to 0.19999999999999998, their mirror image to
    0.20000000000000004: the later epoch replaced best.pt)."""
    return val[metric] > best[metric] + SAME_SCORE


def _val_set(split: Split, decoder: SampleDecoder, num_classes: int) -> IndexedSplit:
    """The val samples, all of them: :func:`check_classes` passed the split on its ``_info.json``
    histogram, so a sample of a class beyond the model's is one that file does not count (an edited
    or mixed shard), left out of model selection without a word."""
    val = IndexedSplit(split, decoder, num_classes)
    if val.excluded:
        raise ValueError(f"the val split of {', '.join(split.dirs)} holds {dict(sorted(val.excluded.items()))}, "
                         f"which a {num_classes}-class model cannot predict, though its {INFO} counts none: "
                         f"{_UNDESCRIBED}")
    return val


def check_batch_classes(batch: dict, num_classes: int) -> None:
    """Refuse a training sample whose class the model has no output for: :func:`check_classes` judges
    the split by its ``_info.json`` histogram, so a shard whose samples it does not describe (edited,
    another preparation's) gave cross-entropy's IndexError traceback ("Target 7 is out of bounds")."""
    beyond = (batch["label"] >= num_classes).nonzero().flatten()
    if len(beyond):
        i = int(beyond[0])
        label = int(batch["label"][i])
        raise ValueError(f"training sample {batch['key'][i]!r} is {CLASSES[label]} (class id {label}), which a "
                         f"{num_classes}-class model cannot learn, though the train split's {INFO} counts none: "
                         f"{_UNDESCRIBED}")


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
                                "streams": run.streams, "tallies": run.tallies, **averaged,
                                **({"cpu_threads": run.threads} if run.threads else {})})
        if model is None and run.best.get("epoch", -1) < 0:
            # no epoch of this run is the best yet: a best.pt here is an earlier run's (one started over
            # with other params, data or code), which must not stay beside this run's last.pt
            (path.parent / BEST).unlink(missing_ok=True)
