"""k-fold cross-validation (CK+ 10-fold, JAFFE leave-one-subject-out): one DVC experiment per fold,
summarised together.

With ``shard.folds: K`` in params.yaml, ``dvc exp run --queue -S shard.fold=0,1,...,K-1`` queues
one experiment per fold and ``dvc queue start`` runs them; each experiment's commit holds its
``params.yaml`` and its evaluation (``runs/eval/metrics.json``, ``runs/eval/confusion.json``).
:func:`read_experiments` reads those with git alone from every experiment of a baseline commit
(DVC keeps them under ``refs/exps/<baseline>/``), and :func:`summarise` groups them into series
(the same params but the fold) and gives, per metric, each fold's value, the mean and sample
standard deviation over folds, and the pooled value over every test sample of all folds (the sum
of the folds' confusion matrices: what "overall accuracy" over K folds means).
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np

from ferdata.classes import CLASSES
from ferdata.faces.base import BACKENDS, FaceBackend
from ferdata.layout import DROPPED_BEFORE_FOLDS
from ferdata.params import SPEED_ONLY, read_yaml
from ferdata.selection import VERSION as SELECTION_VERSION
from fermodels.metrics import SUMMARY_METRICS as METRICS, metrics_from_confusion
from fermodels.runstate import LAYOUT, RESUME_IGNORES

EVAL_DIR = "runs/eval"
TESTED = "runs/select/evaluate.json"                # the split each fold was tested on, pinned by its hash


@dataclass(frozen=True)
class FoldRun:
    """One experiment: its name, commit, commit time, params and evaluation."""

    name: str
    commit: str
    time: int
    params: dict = field(hash=False)
    metrics: dict = field(hash=False)
    confusion: np.ndarray = field(hash=False)       # rows actual, columns predicted, all canonical classes
    tested: str | None = None                       # the pinned test split(s), as JSON; None if not recorded
    code: str | None = None                         # digest of the code and inputs its stages ran (dvc.lock)


@dataclass
class Series:
    """The folds of one configuration (params equal but ``shard.fold``)."""

    params: dict                                    # the common params (``shard`` without ``fold``)
    folds: int
    runs: dict[int, FoldRun]                        # fold -> its newest run
    replaced: list[str]                             # older runs of a fold that ran again

    @property
    def missing(self) -> list[int]:
        return [k for k in range(self.folds) if k not in self.runs]

    @cached_property
    def problem(self) -> str | None:
        """Why the folds do not make a cross-validation, or None: folds that ran other code (their
        dvc.lock's deps differ: a fold queued after an edit), folds scored on another split than
        test (val chose their best.pt: optimistic figures), or tested on the same split
        (a dataset with an official test split, such as RAF-DB's or AffectNet's, keeps it whatever
        ``shard.fold`` says; so does a cross-dataset ``evaluate.dataset``): averaging them would count
        one test set several times."""
        scored = (self.params.get("evaluate") or {}).get("split") or "test"
        if scored != "test":
            return (f"the folds were scored on evaluate.split {scored!r}, not on their test fold: a cross-validation "
                    "reports each fold's test split (val chose the epoch kept)")
        by_split: dict[tuple[str, str], list[int]] = {}
        dealt: dict[str, dict[str, list[int]]] = {}
        for k, run in sorted(self.runs.items()):
            for pin in _pins(run.tested):
                by_split.setdefault(pin, []).append(k)
            for dataset, assignment in _assignments(run.tested).items():
                dealt.setdefault(dataset, {}).setdefault(assignment, []).append(k)
        ran: dict[str, list[int]] = {}
        for k, run in sorted(self.runs.items()):
            if run.code is not None:
                ran.setdefault(run.code, []).append(k)
        if len(ran) > 1:
            return ("the folds ran different code or inputs (their dvc.lock records other files for the stages: folds "
                    + " vs ".join(",".join(map(str, f)) for f in ran.values()) + "): a fold queued after an edit "
                    "of the code, or of a dataset, is another experiment; run every fold again from one commit")
        if redealt := {d: list(by.values()) for d, by in dealt.items() if len(by) > 1}:
            groups = "; ".join(f"{d}: folds " + " vs ".join(",".join(map(str, f)) for f in folds)
                               for d, folds in redealt.items())
            return (f"the folds were dealt from different preparations of the data ({groups}): a face lost or "
                    "gained before the shard stage (another detector, changed images) changes the folds' "
                    "contents, and a person lost or gained deals the others to other folds, so their test sets "
                    "overlap and miss faces; run every fold again from one preparation")
        same = {pin: folds for pin, folds in by_split.items() if len(folds) > 1}
        if not same:
            return None
        shared = ", ".join(f"{' and '.join(map(str, folds))} ({pin[0]})" for pin, folds in same.items())
        return (f"folds {shared} were tested on the same split: a "
                "dataset with an official test split (RAF-DB, AffectNet, FER2013, SFEW) keeps it whatever "
                "shard.fold says, and so does a cross-dataset evaluate.dataset; k-fold cross-validation is "
                "for datasets without one (CK+, JAFFE)")

    @property
    def unchecked(self) -> list[int]:
        """Folds whose run records no pinned test split (a version before ``runs/select``), or pins it
        by a digest that differs by fold (selection version 1): nothing shows that their test splits differ."""
        return [k for k, run in sorted(self.runs.items()) if run.tested is None]

    def table(self) -> dict:
        """Per metric: each fold's value, mean and sample std over the folds (None for one fold),
        and the pooled value."""
        ordered = [self.runs[k] for k in sorted(self.runs)]
        pooled = metrics_from_confusion(sum(r.confusion for r in ordered), CLASSES)
        out = {}
        for m in METRICS:
            values = np.array([r.metrics[m] for r in ordered], np.float64)
            out[m] = {"folds": values.tolist(), "mean": float(values.mean()),
                      "std": float(values.std(ddof=1)) if len(values) > 1 else None,   # undefined for one fold
                      "pooled": pooled[m]}
        out["num_samples"] = {"folds": [r.metrics["num_samples"] for r in ordered], "pooled": pooled["num_samples"]}
        out["per_class_pooled"] = pooled["per_class"]
        if lost := next((r.metrics[DROPPED_BEFORE_FOLDS] for r in ordered if DROPPED_BEFORE_FOLDS in r.metrics), None):
            out[DROPPED_BEFORE_FOLDS] = lost        # the dataset's pictures in no fold (each fold records them all)
        if datasets := self.per_dataset():
            out["per_dataset"] = datasets
        return out

    def per_dataset(self) -> dict[str, dict]:
        """Per dataset of folds that scored several together (their metrics.json ``per_dataset``): each
        fold's figures (None for a fold that did not score it: the list stays in fold order) and the
        pooled ones over its test samples of every fold (the sum of the folds' confusion matrices of that
        dataset); {} unless every fold records them (a version before per_dataset's confusion_matrix did not)."""
        ordered = [self.runs[k] for k in sorted(self.runs)]
        parts = [r.metrics.get("per_dataset") for r in ordered]
        if not all(p and "classes" in r.metrics and all("confusion_matrix" in m for m in p.values())
                   for p, r in zip(parts, ordered)):
            return {}
        out = {}
        for name in sorted(set().union(*parts)):
            folds = [(p.get(name), r.metrics["classes"]) for p, r in zip(parts, ordered)]    # None: not in the fold
            pooled = metrics_from_confusion(sum(_canonical(m["confusion_matrix"], c) for m, c in folds if m),
                                            CLASSES)
            out[name] = {**{m: {"folds": [f and f[m] for f, _ in folds], "pooled": pooled[m]} for m in METRICS},
                         "num_samples": pooled["num_samples"], "per_class_pooled": pooled["per_class"]}
        return out

    def record(self) -> dict:
        """The series as JSON-ready data: configuration, folds, experiments per fold, metrics."""
        out = {"params": self.params, "folds": self.folds, "missing": self.missing,
               "experiments": {k: r.name for k, r in sorted(self.runs.items())}, "replaced": self.replaced,
               "unchecked": self.unchecked}
        if self.problem:
            return {**out, "problem": self.problem}
        confusion = {k: r.confusion.tolist() for k, r in sorted(self.runs.items())}
        return {**out, "metrics": self.table(), "classes": list(CLASSES), "confusion": confusion}


def _canonical(cm: list[list[int]], classes: Sequence[str]) -> np.ndarray:
    """A confusion matrix over a model's ``classes`` as one over every canonical class (:data:`CLASSES`)."""
    at = [CLASSES.index(c) for c in classes]
    out = np.zeros((len(CLASSES), len(CLASSES)), np.int64)
    out[np.ix_(at, at)] = np.asarray(cm, np.int64)
    return out


def _pins(tested: str | None) -> list[tuple[str, ...]]:
    """The ("<dataset> <split>", content digest) of each split pinned in ``tested`` (the JSON of a
    run's ``runs/select/evaluate.json``) names: several datasets are compared one by one, so one that
    keeps its test split is found beside one that folds. None: nothing pinned."""
    if tested is None:
        return []
    chosen = json.loads(tested)
    datasets = chosen.get("datasets") if isinstance(chosen, dict) else None
    if not isinstance(datasets, dict):              # not a selection file: compared whole
        return [("its test split", tested)]
    return sorted((f"{name} {split}", str(digest)) for name, pinned in datasets.items()
                  for split, digest in (pinned.get("splits") or {}).items())


def _assignments(tested: str | None) -> dict[str, str]:
    """{dataset: digest of its fold assignment} pinned in ``tested`` (k-fold datasets of a version that
    records it: the shard stage's ``fold_assignment``)."""
    chosen = json.loads(tested) if tested else None
    datasets = chosen.get("datasets") if isinstance(chosen, dict) else None
    return {name: str(pinned["fold_assignment"]) for name, pinned in (datasets or {}).items()
            if isinstance(pinned, dict) and pinned.get("fold_assignment")}


LOCK_SKIP = ("data", "runs")         # outputs of other stages: the folds' own splits, selections and checkpoints


def _code(repo: Path, commit: str) -> str | None:
    """A digest of the deps every stage in ``commit``'s dvc.lock ran on, but the outputs of other stages
    (:data:`LOCK_SKIP`): the code files and folders dvc.yaml lists, the raw dataset roots. None: no lock."""
    try:
        lock = read_yaml(_git(repo, "show", f"{commit}:dvc.lock"))
    except ValueError:
        return None
    stages = lock.get("stages") if isinstance(lock, dict) else None
    if not isinstance(stages, dict):
        return None
    deps = sorted((str(name), str(dep.get("path")), str(dep.get("md5") or dep.get("hash")))
                  for name, stage in stages.items() if isinstance(stage, dict)
                  for dep in stage.get("deps") or () if isinstance(dep, dict)
                  and str(dep.get("path")).replace("\\", "/").split("/")[0] not in LOCK_SKIP)
    return hashlib.sha256(json.dumps(deps).encode()).hexdigest()[:16]


def _git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if proc.returncode:
        raise ValueError(f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip()}")
    return proc.stdout


def read_experiments(repo: str | Path = ".", baseline: str = "HEAD") -> tuple[list[FoldRun], dict[str, str]]:
    """Every DVC experiment of ``baseline`` with an evaluation, and {name: why skipped} for the rest."""
    repo = Path(repo)
    if not repo.is_dir():
        raise ValueError(f"--repo {repo} is no folder: give the project's git repository (default: here)")
    try:
        sha = _git(repo, "rev-parse", "--verify", f"{baseline}^{{commit}}").strip()
    except ValueError as err:
        raise ValueError(f"{repo.resolve()}: no commit {baseline!r} to read experiments of ({err}); run this in "
                         "the project's git repository (or pass --repo) after committing and running the folds "
                         "with `dvc exp run`") from None
    listing = _git(repo, "for-each-ref", "--format=%(refname) %(objectname) %(committerdate:unix)",
                   f"refs/exps/{sha[:2]}/{sha[2:]}/")
    runs, skipped = [], {}
    for line in listing.splitlines():
        ref, commit, time = line.split()
        name = ref.rsplit("/", 1)[1]
        try:
            params = read_yaml(_git(repo, "show", f"{commit}:params.yaml"))
            metrics = json.loads(_git(repo, "show", f"{commit}:{EVAL_DIR}/metrics.json"))
            rows = json.loads(_git(repo, "show", f"{commit}:{EVAL_DIR}/confusion.json"))
        except ValueError as err:
            skipped[name] = f"no evaluation in its commit ({err})"
            continue
        try:
            chosen = json.loads(_git(repo, "show", f"{commit}:{TESTED}"))
        except ValueError:                          # an experiment of a version that did not pin it
            chosen = None
        if isinstance(chosen, dict) and chosen.get("version") != SELECTION_VERSION:
            # selection version 1 hashed the whole _info.json, params_hash (which holds shard.fold) included:
            # one official test split pins a different digest under every fold, so nothing can be compared
            chosen = None
        tested = None if chosen is None else json.dumps(chosen, sort_keys=True)
        cm = np.zeros((len(CLASSES), len(CLASSES)), np.int64)
        for r in rows:
            cm[CLASSES.index(r["actual"]), CLASSES.index(r["predicted"])] += 1
        runs.append(FoldRun(name, commit, int(time), params, metrics, cm, tested, _code(repo, commit)))
    return runs, skipped


def _shaping(name: str, values: object) -> object:
    """Section ``name`` of a fold's params without the fold and the settings that shape no result
    (loader workers, cache folders; a dataset's own ``detect`` ones too): folds run on two machines
    are one cross-validation."""
    if not isinstance(values, dict):
        return values
    if name == "datasets":
        return {ds: {**spec, "detect": _shaping("detect", spec["detect"])}
                if isinstance(spec, dict) and isinstance(spec.get("detect"), dict) else spec
                for ds, spec in values.items()}
    skip = {"shard": ("fold",), "train": RESUME_IGNORES + LAYOUT}.get(name, SPEED_ONLY.get(name, ()))
    out = {k: v for k, v in values.items() if k not in skip}
    if name == "detect":                # what finds no other faces: threads; sfd/dlib's score_threshold
        options = out.get("options") if isinstance(out.get("options"), dict) else {}
        backend = out.get("backend")    # none in a dataset's own detect values: the section's backend
        unsigned = (BACKENDS.get(backend).unsigned(options) if isinstance(backend, str) and backend in BACKENDS
                    else FaceBackend.UNSIGNED)
        if isinstance(out.get("options"), dict):
            out["options"] = {k: v for k, v in options.items() if k not in unsigned}
        out = {k: v for k, v in out.items() if k not in unsigned}          # detect.score_threshold
    return out


def summarise(runs: Sequence[FoldRun]) -> list[Series]:
    """Runs with ``shard.folds > 0`` grouped into series by their params, less the fold and the
    settings that shape no result (:func:`_shaping`); within a series the newest run of each fold
    counts and older ones are listed as replaced. Series come newest first."""
    groups: dict[str, tuple[dict, list[FoldRun]]] = {}
    for run in runs:
        shard = run.params.get("shard") or {}
        if int(shard.get("folds") or 0) > 0:
            rest = {name: _shaping(name, values) for name, values in run.params.items()}
            groups.setdefault(json.dumps(rest, sort_keys=True, default=str), (rest, []))[1].append(run)
    series = []
    for rest, members in groups.values():
        by_fold: dict[int, FoldRun] = {}
        replaced = []
        for run in sorted(members, key=lambda r: r.time):
            fold = int(run.params["shard"]["fold"])
            if fold in by_fold:
                replaced.append(by_fold[fold].name)
            by_fold[fold] = run
        series.append(Series(rest, int(rest["shard"]["folds"]), by_fold, replaced))
    return sorted(series, key=lambda s: -max(r.time for r in s.runs.values()))


def _flat(values: object, prefix: str = "") -> dict[str, object]:
    """Nested params as {"train.seed": 1, ...}."""
    if not isinstance(values, dict) or not values:
        return {prefix: values} if prefix else {}
    out: dict[str, object] = {}
    for k, v in values.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def distinct(series: Sequence[Series]) -> list[str]:
    """For each of ``series``, the settings in which it differs from the others ("train.seed 1,
    train.lr 0.1"; "" for one series): two series of one model on one dataset had the same heading."""
    flat = [_flat(s.params) for s in series]
    keys = sorted({k for f in flat for k in f})
    differ = [k for k in keys if len({json.dumps(f.get(k, "(unset)"), sort_keys=True, default=str)
                                      for f in flat}) > 1]
    return [", ".join(f"{k} {json.dumps(f[k], default=str) if k in f else '(unset)'}" for k in differ)
            for f in flat]


def describe(series: Series, differs: str = "") -> str:
    """A readable table: the configuration, one row per fold, then mean, sample std and pooled.
    ``differs``: what sets this series apart from the others summarised with it (:func:`distinct`)."""
    from fermodels.recipes import RECIPES

    train = series.params.get("train", {})
    recipe = RECIPES.get(train["recipe"]).values if train.get("recipe") in RECIPES.names() else {}
    datasets = recipe.get("datasets") or train.get("datasets") or []          # a recipe names its own
    tested = (series.params.get("evaluate") or {}).get("dataset")       # cross-dataset: say what was scored
    head = (f"{train.get('recipe') or train.get('model')} on {'+'.join(datasets)}"
            + (f", tested on {tested}" if tested and [tested] != list(datasets) else "") + ": "
            f"{len(series.runs)} of {series.folds} folds" + (f", missing {series.missing}" if series.missing else "")
            + (f" ({differs})" if differs else ""))
    if series.problem:
        return f"{head}\nnot summarised: {series.problem}"
    table = series.table()
    rows = [f"{'':>7s}" + "".join(f"{m:>21s}" for m in METRICS) + f"{'test samples':>14s}"]
    for i, k in enumerate(sorted(series.runs)):
        rows.append(f"{'fold ' + str(k):>7s}" + "".join(f"{table[m]['folds'][i]:21.4f}" for m in METRICS)
                    + f"{table['num_samples']['folds'][i]:14d}")
    for what in ("mean", "std", "pooled"):
        rows.append(f"{what:>7s}" + "".join(f"{'n/a':>21s}" if table[m][what] is None else f"{table[m][what]:21.4f}"
                                            for m in METRICS)
                    + (f"{table['num_samples']['pooled']:14d}" if what == "pooled" else ""))
    rows += [f"pooled on {name}: " + ", ".join(f"{m} {figures[m]['pooled']:.4f}" for m in METRICS)
             + f" ({figures['num_samples']} test samples)" for name, figures in table.get("per_dataset", {}).items()]
    if lost := table.get(DROPPED_BEFORE_FOLDS):
        rows.append(f"in no fold: {sum(lost.values())} picture(s) dropped in preparation ("
                    + ", ".join(f"{reason} {n}" for reason, n in lost.items()) + "), not in the figures")
    if series.replaced:
        rows.append(f"older runs of a fold, not counted: {', '.join(series.replaced)}")
    if series.unchecked:
        rows.append(f"folds {', '.join(map(str, series.unchecked))} record no comparable test split (runs of an older "
                    "version): not checked to differ; a dataset with an official test split keeps it in every fold")
    return "\n".join([head, *rows])
