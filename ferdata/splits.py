"""Deterministic train/val/test assignment for records whose dataset lacks some splits.

Official splits are kept. Whatever the dataset does not provide is carved out of its
train (or unsplit) records by a hash of ``(seed, group)``, where the group is the
subject when known (so one person never spans two splits: CK+ frames of a sequence
are near-duplicates), else the photo a reader says the face shares with other faces
(``extra[PHOTO]``: ExpW's faces of one picture) or the film a frame comes from (``extra[MOVIE]``:
SFEW), else the record key. A hash, not a shuffle, decides, so a
record's split does not depend on record order or on which other records exist
(records added to a dataset later leave every earlier record's split as it was; tested; this holds
for the carved fractions, not for k-fold, whose folds are dealt by each group's rank).
The result always has a validation split separate from test: RAF-DB and AffectNet
(train/test only) get val carved from train.

Records flagged ``extra[TRAIN_ONLY]`` (e.g. AffectNet's automatically annotated images) stay in
train: val and test never hold them, in every fold.

``folds > 0`` gives k-fold cross-validation over groups (CK+ 10-fold, JAFFE
leave-one-subject-out): groups are ordered by hash and dealt round-robin into
``folds`` folds; fold ``fold`` is test, fold ``fold + 1`` is val, the rest (``folds - 2``) train;
with ``val_fraction`` 0 no fold is val and ``folds - 1`` train (the papers' protocol).
"""
from __future__ import annotations

import hashlib
import logging
import unicodedata
from collections import Counter
from dataclasses import replace
from typing import Collection, Iterable, Iterator

from ferdata.layout import folded_train
from ferdata.records import GROUPS, LISTED_AS, SPLITS, TRAIN_ONLY, Dropped, FaceRecord

log = logging.getLogger(__name__)
SPLIT_BY = ("subject", "key")     # shard.split_by

Item = FaceRecord | Dropped


def unit_hash(seed: int, group: str) -> float:
    """A uniform number in [0, 1) fixed by ``seed`` and ``group`` (stable across runs and machines)."""
    group = unicodedata.normalize("NFC", group)     # a film or subject named in decomposed form (a Mac's copy) alike
    raw = f"{seed}:{group}".encode("utf-8", "surrogateescape")        # a file name's undecodable bytes as they are
    digest = hashlib.blake2b(raw, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def group_of(record: FaceRecord, by: str) -> str:
    """The unit that must stay within one split. ``by="subject"``: the subject when known, else
    the photo the face shares with others (``extra[PHOTO]``), else its film (``extra[MOVIE]``),
    else the key; ``by="key"``: the key. The key is the one listed (``extra[LISTED_AS]``): files named
    alike, one renamed by the reader, share a split whichever of them the list names first."""
    key = record.extra.get(LISTED_AS, record.key)
    if by != "subject":
        return key
    if record.subject:
        return record.subject
    name = _grouped_by(record)
    return f"{name}:{record.extra[name]}" if name else key


def _grouped_by(record: FaceRecord) -> str | None:
    """The first ``extra`` group key (:data:`ferdata.records.GROUPS`) the record has."""
    return next((name for name in GROUPS if record.extra.get(name)), None)


def assign_splits(
    records: Iterable[Item],
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    by: str = "subject",
    folds: int = 0,
    fold: int = 0,
    official: Collection[str] | None = None,
) -> Iterator[Item]:
    """Yield ``records`` (``Dropped`` items pass through) with every split filled.

    ``official`` names the splits the dataset provides (e.g. ``{"train", "test"}``
    for RAF-DB). When omitted it is inferred from the records, which needs them all
    in memory; pass it to stream, or when processing a part of a dataset.
    Fractions are of the groups that are carved from, i.e. train plus unsplit. ``folds`` (fold
    ``fold`` = test, the next = val unless ``val_fraction`` is 0) applies to a dataset without an
    official test split; one with a test split keeps it (``shard.folds`` is one setting for every
    prepared dataset).
    """
    check_settings(val_fraction, test_fraction, by, folds, fold)
    if official is None or folds:        # k-fold deals groups out over the whole dataset
        records = list(records)
    if official is None:
        official = {r.split for r in records if isinstance(r, FaceRecord) and r.split}
    if folds and folded_train(official):
        yield from _kfold(records, seed=seed, by=by, folds=folds, fold=fold, with_val=val_fraction > 0)
        return
    if folds:       # shard.folds is one setting for every dataset: k-fold is for those without a test split
        log.warning("shard.folds %d: this dataset keeps its official test split (k-fold applies to datasets "
                    "without one, such as CK+ and JAFFE)", folds)
    unknown = set(official) - set(SPLITS)
    if unknown:
        raise ValueError(f"official splits {sorted(unknown)} not in {SPLITS}")
    carve_test = "test" not in official
    carve_val = "val" not in official
    if carve_test and test_fraction <= 0:
        raise ValueError("the dataset has no test split: test_fraction must be > 0")
    if carve_val and val_fraction <= 0:     # the papers' setting: train on every official training face
        log.info("shard.val_fraction 0 and no official validation split: none is carved (training then keeps "
                 "its last epoch)")
    test_band = test_fraction if carve_test else 0.0
    val_band = val_fraction if carve_val else 0.0
    counts: Counter[str] = Counter()
    carving = bool(test_band or val_band)
    for item in records:
        if isinstance(item, FaceRecord) and item.split in ("", "train"):
            counts["carvable"] += 1
        if carving and isinstance(item, FaceRecord) and item.split in ("", "train") and not item.extra.get(TRAIN_ONLY):
            if lacking := _no_subject(item, by):      # only a record carved from is grouped
                counts[lacking] += 1
            u = unit_hash(seed, group_of(item, by))
            split = "test" if u < test_band else "val" if u < test_band + val_band else "train"
            item = replace(item, split=split) if split != item.split else item
        if isinstance(item, FaceRecord) and not item.split:     # not carved (training only, or nothing is): train
            item = replace(item, split="train")
        if isinstance(item, FaceRecord):
            counts[item.split] += 1
        yield item
    _report(counts, by if carving else "", carve_val and val_fraction > 0, carved_test=carve_test)
    if carve_test and counts and not counts["test"]:      # found here, not at evaluation after training
        raise ValueError(f"the carved test split of this dataset's {counts.total()} records is empty (no group of "
                         f"them by {by} fell in shard.test_fraction): raise it, or, for a dataset of few people "
                         "(JAFFE, CK+), use k-fold (shard.folds)")


def _kfold(records: list[Item], *, seed: int, by: str, folds: int, fold: int, with_val: bool) -> Iterator[Item]:
    """Round-robin folds over hash-ordered groups: balanced group counts, deterministic; the fold
    after the tested one is val ``with_val``, else trained on."""
    kept = [r for r in records if isinstance(r, FaceRecord) and not r.extra.get(TRAIN_ONLY)]
    if any(r.split for r in kept):
        log.info("k-fold assignment replaces the dataset's official train/val splits")
    groups = sorted({group_of(r, by) for r in kept}, key=lambda g: (unit_hash(seed, g), g))
    if len(groups) < folds:
        least = 3 if with_val else 2
        fix = (f"set shard.folds to {len(groups)} or fewer, down to {least} (as many as groups: leave one {by} out)"
               if len(groups) >= least else
               f"k-fold needs at least {least} ({'with' if with_val else 'without'} a val fold): use shard.folds 0 "
               "(a carved test split) or more data")
        raise ValueError(f"{folds} folds need at least {folds} groups ({by}); found {len(groups)}: {fix}")
    fold_of = {g: i % folds for i, g in enumerate(groups)}
    names = {fold: "test", **({(fold + 1) % folds: "val"} if with_val else {})}
    counts: Counter[str] = Counter()
    for item in records:
        if isinstance(item, FaceRecord) and (lacking := _no_subject(item, by)):
            counts[lacking] += 1
        if isinstance(item, FaceRecord):
            if item.extra.get(TRAIN_ONLY):
                item = replace(item, split="train")               # in every fold's training split
            else:
                k = fold_of[group_of(item, by)]
                item = replace(item, split=names.get(k, "train"), extra={**item.extra, "fold": k})
            counts[item.split] += 1
        yield item
    _report(counts, by, with_val, kfold=True)
    if not with_val:
        log.info("shard.val_fraction 0: no fold is val, %d of the %d folds train (training then keeps its last "
                 "epoch)", folds - 1, folds)


def check_settings(val_fraction: float, test_fraction: float, by: str, folds: int, fold: int,
                   prefix: str = "") -> None:
    """Refuse split settings that cannot work, naming them with ``prefix`` (``"shard."`` when they
    come from params.yaml, so a bad value fails when the section is read)."""
    if by not in SPLIT_BY:
        raise ValueError(f"{prefix}by must be one of {', '.join(SPLIT_BY)}, got {by!r}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"{prefix}val_fraction + {prefix}test_fraction must be below 1 (fractions in [0, 1) "
                         f"that sum below 1), got {val_fraction} + {test_fraction}")
    if folds and folds < (3 if val_fraction else 2):
        raise ValueError(f"{prefix}folds must be 0 (off) or >= 3 (one test, one val, the rest train; >= 2 with "
                         f"{prefix}val_fraction 0: no val fold), got {folds}")
    if folds and not 0 <= fold < folds:
        raise ValueError(f"{prefix}fold must be in 0..{folds - 1} ({prefix}folds is {folds}), got {fold}")
    if not folds and fold:          # a queue of -S shard.fold=0,...,9 without folds set: K identical runs
        raise ValueError(f"{prefix}fold {fold} needs {prefix}folds (k-fold cross-validation is off: folds 0)")


def _no_subject(item: FaceRecord, by: str) -> str:
    """The count a record grouped by subject but without one goes to, or one grouped by key though it
    has a subject ("" when it is grouped by its subject)."""
    if by != "subject":
        return "keyed_subject" if item.subject else ""
    if item.subject:
        return ""
    return f"by_{name}" if (name := _grouped_by(item)) else "no_subject"


def _report(counts: Counter[str], by: str, carved_val: bool = True, kfold: bool = False,
            carved_test: bool = False) -> None:
    """Log the split sizes (``by`` "": every split the dataset's own) and the records grouped by
    something other than a subject (a warning under k-fold, whose folds are then not
    subject-independent for them, and for records grouped by key where a test split is carved: one
    person's images, a video's frames, can then be in test and in train)."""
    no_subject = counts.pop("no_subject", 0)
    keyed = counts.pop("keyed_subject", 0)
    grouped = {name: counts.pop(f"by_{name}", 0) for name in GROUPS}
    carvable = counts.pop("carvable", 0)
    log.info("splits %s: %s", f"by {by}" if by else "as the dataset gives them", dict(sorted(counts.items())))
    say = log.warning if kfold else log.info
    why = ": the folds keep their photos or people apart only as far as those go" if kfold else ""
    for name, n in grouped.items():
        if n:
            say("%d records have no subject and were grouped by their %s%s", n, name, why)
    if keyed:       # shard.split_by key on people: CK+'s near-identical frames of one sequence in test and train
        log.warning("%d records have a subject but were grouped by key (shard.split_by: key): one person's faces "
                    "(CK+: the frames of one sequence, near copies) fall in %s and train alike; shard.split_by: "
                    "subject keeps each person in one split", keyed, "test" if kfold or carved_test else "val")
    if no_subject:
        per_image = kfold or (carved_test and by == "subject")
        (log.warning if per_image else log.info)(
            "%d records have no subject and were grouped by key%s", no_subject,
            ": their folds are per image, so one person can be in test and train" if kfold else
            ": the carved test split is per image, so one person (a video's frames) can be in test and train (the "
            "folder reader takes options.subject, a pattern naming the person in a file's path)" if per_image else "")
    if counts and not counts["val"] and carved_val:       # training refuses it when it starts
        log.warning("split 'val' is empty; raise shard.val_fraction or use more data")
    if carvable and not counts["train"]:                  # every group fell in test or val
        log.warning("split 'train' is empty (every group of the %d training records fell in test or val): lower "
                    "shard.val_fraction / shard.test_fraction, or use another shard.seed", carvable)
