"""What a training run tells: each rank's running totals of an epoch (:class:`Tally`), the
epoch's log line and DVCLive metrics (every rank's totals, told once by rank 0), and the stop on
a non-finite loss (all ranks together)."""
from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from ferdata.atomic import writable_folder
from ferdata.classes import CLASSES
from fermodels.distributed import DistEnv
from fermodels.metrics import SUMMARY_METRICS
from fermodels.livelog import repair_summary, truncate_live
from fermodels.runstate import LAST, Position

log = logging.getLogger(__name__)
FINITE_CHECK_EVERY = 50     # steps between loss checks (each check syncs the GPU)


class NonFiniteLossError(ValueError):
    """Training produced NaN/inf; the last good checkpoint is kept untouched. A ``ValueError``: the
    settings (``train.lr``, ``train.amp``) are what to change, so commands report it in one line."""


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


def open_live(live_dir: Path, pos: Position, env: DistEnv):
    """Rank 0's DVCLive logger (None on the other ranks), its logs cut back to the epoch a resume
    starts from."""
    if not env.is_main:
        return None
    from dvclive import Live

    # a folder the logs cannot be written in is told now, not at the first epoch's end (the epoch lost)
    writable_folder(Path(live_dir), "training's DVCLive logs (live_dir)")

    resuming = pos.epoch > 0 or pos.batch > 0
    if resuming:
        truncate_live(live_dir, pos.epoch)
        repair_summary(live_dir, pos.epoch)
    try:
        with _no_dvc_init(sys.modules.get(Live.__module__)):
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


@contextmanager
def _no_dvc_init(module) -> Iterator[None]:
    """While DVCLive (``module``: the one that defines ``Live``) starts, it opens an existing DVC
    repository only: where there was none (training from a git project of the user's own) it ran
    `dvc init` there, staging .dvc/ and .dvcignore in the user's git index."""
    opener = getattr(module, "get_dvc_repo", None)
    if opener is None:                      # another DVCLive version (or a stand-in): left as it is
        yield
        return

    def existing():
        from dvc.exceptions import NotDvcRepoError
        from dvc.repo import Repo
        from dvc.scm import SCMError
        try:
            return Repo()
        except (NotDvcRepoError, SCMError):
            return None

    module.get_dvc_repo = existing
    try:
        yield
    finally:
        module.get_dvc_repo = opener


def _close_dvc_repo(live) -> None:
    """Close the DVC repository DVCLive opened (its sqlite indexes and git pack files): DVCLive never
    does, and its Studio thread keeps the logger alive, so each run left 4-8 descriptors open in the
    process (a sweep of runs in one process ran out of them)."""
    repo = getattr(live, "_dvc_repo", None)
    if repo is not None:
        repo.close()
        live._dvc_repo = None


def end_live(live, failed: bool) -> None:
    """DVCLive's ``end`` (it rewrites ``metrics.json`` in place). When the run is already stopping on
    an error, a failure here is logged, not raised: raised from the trainer's ``finally`` it replaced
    that error (a full disk told "[Errno 28] No space left on device" without the checkpoint or log
    it was writing); the next run rebuilds a ``metrics.json`` cut off here (:func:`repair_summary`)."""
    try:
        live.end()
    except OSError as err:
        if failed:
            log.warning("the training logs' summary in %s was not written either: %s", live.dir, err)
            return
        if err.filename is None:
            err.add_note(f"while writing the training logs in {live.dir}")
        raise
    finally:
        _close_dvc_repo(live)


def log_epoch(live, epoch: int, totals: list, lr: float, elapsed: float, val: dict) -> None:
    seen = sum(t[1] for t in totals)
    losses = {k: sum(t[0].get(k, 0.0) for t in totals) / max(seen, 1) for k in totals[0][0]}
    waited = max(t[2] for t in totals)
    counted = [sum(t[3][c] for t in totals) for c in range(len(totals[0][3]))]
    # per-class counts cover the epoch unless it resumed from a checkpoint that did not keep them
    shares = {CLASSES[c]: n / seen for c, n in enumerate(counted)} if seen and sum(counted) == seen else {}
    log.info("epoch %d: %s%s (%.1f samples/s, %.0f%% waiting for data)", epoch,
             " ".join(f"{k}={v:.4f}" for k, v in losses.items()), f" val acc {val['accuracy']:.4f}" if val else "",
             seen / max(elapsed, 1e-9), 100 * waited / max(elapsed, 1e-9))
    if shares:
        log.info("epoch %d trained on: %s", epoch, " ".join(f"{name} {share:.1%}" for name, share in shares.items()))
    if live is None:
        return
    try:
        for k, v in losses.items():
            live.log_metric(f"train/{k}", v)
        live.log_metric("train/learning_rate", lr)    # not train/lr: params.yaml has train.lr (DVC then prefixes both)
        live.log_metric("train/samples", seen)
        live.log_metric("train/samples_per_s", seen / max(elapsed, 1e-9))
        live.log_metric("train/loader_wait_fraction", waited / max(elapsed, 1e-9))
        for name, share in shares.items():
            live.log_metric(f"train/class_share/{name}", share)
        for k in SUMMARY_METRICS if val else ():       # no val split: nothing to log
            live.log_metric(f"val/{k}", val[k])
        live.next_step()
    except OSError as err:                  # DVCLive's writes name no file (a full disk: "[Errno 28] ...")
        if err.filename is None:
            err.add_note(f"while writing the training logs in {live.dir}")
        raise


def check_finite(bad: torch.Tensor, epoch: int, step: int, losses: dict, ckpt_dir: Path,
                 weights: torch.Tensor | None = None) -> None:
    """Stop on a non-finite loss, or non-finite model ``weights`` (above 0: some are); ``bad`` is
    every rank's count at once (:func:`max_over_ranks`), as ``weights``, so all ranks stop together
    instead of one leaving the others in a collective."""
    loss_bad, weights_bad = float(bad) > 0, weights is not None and float(weights) > 0
    if loss_bad or weights_bad:
        shown = " ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
        what = "loss" if loss_bad else "weights (a gradient overflowed while the loss stayed finite)"
        kept = (f"last good checkpoint kept at {ckpt_dir / LAST}" if (ckpt_dir / LAST).is_file() else
                "no checkpoint was saved before it")
        raise NonFiniteLossError(f"non-finite {what} by epoch {epoch} step {step} ({shown}); {kept}; lower "
                                 "train.lr or disable train.amp")
