"""The prepared data one run reads, pinned by content in a small JSON file that DVC can depend on.

DVC cannot turn a list param (``train.datasets``) into a stage's deps, so without this the train and
evaluate stages would depend on all of ``data/`` and re-run whenever any dataset is prepared. The
``select`` stage depends on ``data/`` instead and writes, for each consumer, which shard dirs and
splits it reads and the sha256 of each of those splits' ``_info.json`` content (which lists every
shard's sha256, count and class histogram; :func:`split_digest`). The file changes exactly when the
data that consumer reads changes, and the consumer depends on that file alone; before reading, the
consumer checks that each split's ``_info.json`` still holds what was pinned (:func:`read_selection`) and that every
shard it lists is there with its listed size (:func:`fermodels.shardsplit.open_split`); the shards'
contents against their sha256 are ``ferdata verify``'s to check (DVC checks them on checkout).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from ferdata.atomic import atomic_write_text
from ferdata.classes import CLASSES, stored_class_id
from ferdata.errors import NamedKeyError
from ferdata.layout import INFO, stage_dirs
from ferdata.params import is_name_list, repeated
from ferdata.records import SPLITS
from ferdata.summary import check_info
from ferdata.tarindex import MemberReader, index_tars
from ferdata.tario import listed_shard

VERSION = 2     # 2: split digests of the content, without params_hash (1: of the whole _info.json)
SPLITS_READ = ("train", "val")     # what training reads of every dataset; the test split is the evaluator's
ALL = "all"     # evaluate.split: every split of a cross-dataset target, the whole dataset scored


def scored_splits(split: str) -> tuple[str, ...]:
    """The splits the evaluate stage reads for ``evaluate.split``: all three for :data:`ALL` (a dataset the
    model was not trained on, scored whole as cross-dataset protocols do), else that one."""
    return SPLITS if split == ALL else (split,)


def check_named(names: Sequence[str], key: str, datasets: Mapping[str, Any], data_dir: str | Path) -> None:
    """Raise unless every dataset of ``names`` (params key ``key``) is one ``dvc repro`` prepares
    (params.yaml's ``datasets``) or is prepared already under ``data_dir``."""
    _check_names(names)
    for name in names:
        if name not in datasets and not stage_dirs(data_dir, name)["shards"].is_dir():
            raise NamedKeyError(f"{key} names {name!r}, which is neither in params.yaml's datasets "
                                f"({', '.join(sorted(datasets))}) nor prepared under "
                                f"{Path(data_dir) / name / 'shards'}: add it to datasets ({name}: {{reader: ..., root: "
                                f"...}}), which `dvc repro` or `ferdata prepare {name}` prepares")


def check_run_datasets(trained_on: Sequence[str], evaluated: str | None, datasets: Mapping[str, Any],
                       data_dir: str | Path, split: str = "test") -> None:
    """:func:`check_named` for what a run reads: ``train.datasets`` (after the recipe) and
    ``evaluate.dataset`` (None: the training datasets); ``evaluate.split`` :data:`ALL` of a training
    dataset (its training faces scored) is refused here, before any stage runs."""
    check_named(trained_on, "train.datasets (or its recipe's)", datasets, data_dir)
    if evaluated:
        check_named([evaluated], "evaluate.dataset", datasets, data_dir)
    if split == ALL and evaluated in trained_on:
        raise ValueError(f"evaluate.split all scores every split of evaluate.dataset {evaluated!r}, which "
                         "train.datasets trains on: its train and val faces would be scored; use split all for a "
                         "dataset the model does not train on (cross-dataset), or evaluate.split test")


def tested_on(dataset: str | None, trained_on: Sequence[str]) -> list[str]:
    """The datasets the evaluate stage scores: ``evaluate.dataset`` when set (cross-dataset), else
    the training datasets (null)."""
    return [dataset] if dataset else list(trained_on)


class SelectionError(ValueError):
    """The pinned selection and the params or the shards on disk disagree."""


PROVENANCE = ("params_hash",)      # what made a split, not what it holds: not pinned


def split_digest(shards_dir: str | Path, split: str) -> str:
    """sha256 of ``<shards_dir>/<split>/_info.json`` without its :data:`PROVENANCE`: the split's content
    (its shards by their own sha256, counts, classes), so two splits that hold the same samples pin
    alike whatever params made them (a dataset's official test split under every ``shard.fold``:
    :mod:`fermodels.crossval` tells such folds from a cross-validation by this)."""
    return _digest(read_info(shards_dir, split))


def _digest(info: dict) -> str:
    content = {k: v for k, v in info.items() if k not in PROVENANCE}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def read_info(shards_dir: str | Path, split: str) -> dict:
    """``<shards_dir>/<split>/_info.json``, refused with what to do when missing or not a split's."""
    path = Path(shards_dir) / split / INFO
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: prepare the dataset first "
                                f"(`dvc repro shard@<name>` or `ferdata prepare <name>`)")
    try:
        info = json.loads(path.read_text())
    except ValueError as err:
        raise SelectionError(f"{path} is not JSON ({err}): prepare the dataset again (`dvc repro shard@<name>` or "
                             "`ferdata prepare <name>`)") from None
    if not isinstance(info, dict):
        raise SelectionError(f"{path} holds a {type(info).__name__}, not a split's description: prepare the "
                             "dataset again (`dvc repro shard@<name>` or `ferdata prepare <name>`)")
    try:
        check_info(info)
    except TypeError as err:
        raise SelectionError(f"{path} is damaged ({err}): `ferdata verify` checks the split; prepare the dataset "
                             "again (`dvc repro shard@<name>` or `ferdata prepare <name>`)") from None
    return info


def _check_names(names: Sequence[str]) -> None:
    if not is_name_list(names):                                                 # "sample", null
        raise SelectionError(f"datasets must be named as a list of prepared datasets' names (train.datasets: "
                             f"[sample]; evaluate.dataset: null or one name), got {names!r}")
    if twice := repeated(names):
        raise SelectionError(f"datasets listed more than once: {', '.join(map(repr, twice))} (train.datasets?)")


def selection(data_dir: str | Path, names: Sequence[str], splits: Sequence[str]) -> dict:
    """What a run reading ``splits`` of the prepared datasets ``names`` under ``data_dir`` reads."""
    if not names:
        raise SelectionError("no datasets selected")
    _check_names(names)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:                         # a typo in evaluate.split, before any file is looked for under it
        raise SelectionError(f"split {unknown[0]!r} is none of {', '.join(SPLITS)} (evaluate.split in params.yaml?)")
    datasets = {}
    for name in names:
        shards = stage_dirs(data_dir, name)["shards"]
        infos = {s: read_info(shards, s) for s in splits}
        datasets[name] = {"shards": shards.as_posix(), "splits": {s: _digest(i) for s, i in infos.items()}}
        if dealt := infos[splits[0]].get("fold_assignment"):         # k-fold: which data the folds came from
            datasets[name]["fold_assignment"] = dealt
    return {"version": VERSION, "datasets": datasets}


def write_selection(path: str | Path, data_dir: str | Path, names: Sequence[str], splits: Sequence[str]) -> dict:
    """Write :func:`selection` as JSON (stable bytes: the file's hash is what DVC compares)."""
    chosen = selection(data_dir, names, splits)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(chosen, indent=2, sort_keys=True) + "\n")
    return chosen


def _pictures(shards_dir: Path, split: str) -> dict[str, str]:
    """sha256 of each sample's source picture (its ``json``'s provenance) and, as ``face:<sha256>``, of
    its aligned face (its ``jpg``) -> the sample's key, over the shards ``split``'s ``_info.json`` lists.
    The face's hash finds one picture stored in other bytes: FER2013's CSV rows (PNG made here) and the
    PNGs FERPlus's converter wrote of them hash apart as files, but align to the same crop."""
    info = read_info(shards_dir, split)
    index = index_tars(listed_shard(shards_dir / split, s["name"]) for s in info.get("shards", []))
    found: dict[str, str] = {}
    with MemberReader() as read:
        for key in index:
            member = index[key].get("json")
            if member is not None:
                sha = json.loads(read(member)).get("sha256")
                if isinstance(sha, str):
                    found.setdefault(sha, key)
            face = index[key].get("jpg")
            if face is not None:
                found.setdefault("face:" + hashlib.sha256(read(face)).hexdigest(), key)
    return found


def copies_across_datasets(data_dir: str | Path, trained_on: Sequence[str], tested: Sequence[str],
                           split: str, read: dict[tuple[str, str], dict[str, str]] | None = None) -> list[str]:
    """Faces a run holds out that another of its datasets trains on: the same picture (sha256 of the
    source file, or of the aligned face: one picture stored in other bytes) in ``split`` of a ``tested``
    dataset and in the train or val split of another dataset of ``trained_on``, or in a training
    dataset's val split (which picks the epoch) and another's train split; ``split`` :data:`ALL`: every
    split of a ``tested`` dataset (scored whole, cross-dataset). Within one dataset the align
    stage judges copies (``align.cross_split_copies``); across datasets (RAF-DB and a folder copy of it,
    FER2013 and FERPlus, web-crawled sets) nothing did. One line per copy, ``<ds>/<split>/<key> is
    <ds>/<split>/<key>``; empty for a run of one dataset. ``read``: the pictures of each (dataset, split)
    read so far, shared with :func:`trained_twice` (each split's members are read once)."""
    if len(set(trained_on) | set(tested)) < 2:
        return []
    read = {} if read is None else read

    def pictures(name: str, s: str) -> dict[str, str]:
        return _read_pictures(data_dir, name, s, read)

    held = {(name, "val"): ("train",) for name in trained_on}
    if split == ALL:
        held.update({(name, s): SPLITS_READ for name in tested for s in SPLITS})
    elif split != "train":
        held.update({(name, split): SPLITS_READ if split != "val" else ("train",) for name in tested})
    found = []
    for (name, s), against in held.items():
        for other in trained_on:
            if other == name:
                continue
            for t in against:
                found += [f"{name}/{s}/{key} is {other}/{t}/{theirs}"
                          for key, theirs in _copied(pictures(name, s), pictures(other, t)).items()]
    return found


def scored_twice(data_dir: str | Path, tested: Sequence[str], split: str,
                 read: dict[tuple[str, str], dict[str, str]] | None = None) -> list[str]:
    """Faces the scored ``split`` of two ``tested`` datasets both hold (the same picture or aligned face, as
    :func:`copies_across_datasets` finds them: FER2013's PrivateTest and FERPlus's test are one set of
    pictures): the pooled figures count each of them again, under each dataset's label (``per_dataset``
    scores each dataset alone). One line per face scored again, ``<ds>/<split>/<key> is <ds>/<split>/<key>``
    naming the earliest dataset's copy (a face in three datasets' splits: two lines); empty for one dataset.
    ``read``: shared with the other checks (each split's members are read once)."""
    names = list(dict.fromkeys(tested))
    read = {} if read is None else read
    lines = []
    for s in scored_splits(split):
        for j, other in enumerate(names):
            theirs = _read_pictures(data_dir, other, s, read)
            again: dict[str, str] = {}          # their key -> the line naming its earliest copy
            for name in names[:j]:
                for key, their in _copied(_read_pictures(data_dir, name, s, read), theirs).items():
                    again.setdefault(their, f"{name}/{s}/{key} is {other}/{s}/{their}")
            lines += again.values()
    return lines


def _listed(lines: Sequence[str]) -> str:
    return "; ".join(lines[:5]) + (" ..." if len(lines) > 5 else "")


def copy_warnings(data_dir: str | Path, trained_on: Sequence[str], tested: Sequence[str], split: str) -> list[str]:
    """What the select stage warns of faces shared between the datasets of a run (each split read once):
    held-out faces another dataset trains on (:func:`copies_across_datasets`), faces trained on twice an epoch
    (:func:`trained_twice`), scored faces the pooled figures count again (:func:`scored_twice`)."""
    read: dict[tuple[str, str], dict[str, str]] = {}
    told = []
    if copies := copies_across_datasets(data_dir, trained_on, tested, split, read):
        told.append(f"{len(copies)} held-out face(s) are also in a training split of another dataset of this run "
                    "(the same picture or aligned face), so the model trains on faces it is scored on: "
                    f"{_listed(copies)}; remove those pictures from one of the datasets")
    if twice := trained_twice(data_dir, trained_on, read):
        conflicting = sum(" (labelled " in line for line in twice)
        told.append(f"{len(twice)} face(s) are in the train splits of two datasets of this run (the same picture "
                    "or aligned face), so each is trained on twice an epoch"
                    f"{f', {conflicting} of them under two labels' if conflicting else ''}, where within one "
                    "dataset a copy is kept once and copies whose labels disagree are dropped: "
                    f"{_listed(twice)}; remove those pictures from one of the datasets")
    if pooled := scored_twice(data_dir, tested, split, read):
        told.append(f"{len(pooled)} scored face(s) are copies of a face in the {split} split of another dataset "
                    "of this run (the same picture or aligned face), so the pooled figures count each again, "
                    f"under each dataset's label: {_listed(pooled)}; read metrics.json's per_dataset, or evaluate "
                    "one dataset (evaluate.dataset)")
    return told


def _read_pictures(data_dir: str | Path, name: str, split: str, read: dict[tuple[str, str], dict[str, str]],
                   ) -> dict[str, str]:
    """:func:`_pictures` of ``split`` of dataset ``name``, kept in ``read`` (a split of 100k samples: 20-30 s)."""
    if (name, split) not in read:
        read[name, split] = _pictures(stage_dirs(data_dir, name)["shards"], split)
    return read[name, split]


def _copied(ours: Mapping[str, str], theirs: Mapping[str, str]) -> dict[str, str]:
    """Our key -> their key of each of our samples whose picture or face (:func:`_pictures`) they hold; a
    sample found by its picture and by its face (maybe another sample's) once, in our keys' order."""
    copied: dict[str, str] = {}
    for sha, key in sorted(ours.items(), key=lambda i: i[1]):
        if sha in theirs:
            copied.setdefault(key, theirs[sha])
    return copied


def trained_twice(data_dir: str | Path, trained_on: Sequence[str],
                  read: dict[tuple[str, str], dict[str, str]] | None = None) -> list[str]:
    """Faces the train splits of two datasets of a run both hold (the same picture or aligned face, as
    :func:`copies_across_datasets` finds them: RAF-DB and a folder copy of it, FER2013 and FERPlus): within
    one dataset the align stage keeps such a copy once, or drops the copies whose labels disagree; across
    datasets each was trained on twice an epoch, under each dataset's label. One line per copy,
    ``<ds>/train/<key> is <ds>/train/<key>``, with both labels where they differ; empty for one dataset.
    ``read``: as :func:`copies_across_datasets`'s, which has read these train splits already."""
    names = list(dict.fromkeys(trained_on))
    if len(names) < 2:
        return []
    shards = {name: stage_dirs(data_dir, name)["shards"] for name in names}
    read = {} if read is None else read
    pictures = {name: _read_pictures(data_dir, name, "train", read) for name in names}
    pairs = [(name, key, other, theirs) for i, name in enumerate(names) for other in names[i + 1:]
             for key, theirs in _copied(pictures[name], pictures[other]).items()]
    wanted: dict[str, set[str]] = {name: set() for name in names}
    for name, key, other, theirs in pairs:
        wanted[name].add(key)
        wanted[other].add(theirs)
    labels = {name: _labels(shards[name], "train", keys) for name, keys in wanted.items()}
    lines = []
    for name, key, other, theirs in pairs:
        ours, their = labels[name].get(key), labels[other].get(theirs)
        differ = ours is not None and their is not None and ours != their
        told = f" (labelled {CLASSES[ours]} and {CLASSES[their]})" if differ else ""
        lines.append(f"{name}/train/{key} is {other}/train/{theirs}{told}")
    return lines


def _labels(shards_dir: Path, split: str, keys: set[str]) -> dict[str, int]:
    """The class id (``cls``) of each of ``keys`` in ``split`` of ``shards_dir`` (one without a readable
    one left out)."""
    if not keys:
        return {}
    index = index_tars(listed_shard(shards_dir / split, s["name"]) for s in read_info(shards_dir, split)
                       .get("shards", []))
    out: dict[str, int] = {}
    with MemberReader() as read:
        for key in sorted(keys):
            if (member := index.get(key, {}).get("cls")) is not None and \
                    (label := stored_class_id(read(member))) is not None:
                out[key] = label
    return out


# `dvc repro select` runs the stages before it too: on a machine that pulled the shards and holds no raw
# data (docs/sharing.md) that rebuilt the sample and failed on the missing dataset roots.
RESELECT = "run `dvc repro select` (where the shards were pulled, not made here: `dvc repro -s select`)"
PARAMS_ASK = ("the params ask for", RESELECT)      # who asks for a run's datasets, and the fix when others are pinned


def read_selection(path: str | Path, names: Sequence[str], splits: Sequence[str], *,
                   asking: tuple[str, str] = PARAMS_ASK) -> list[Path]:
    """The shard dirs of ``names`` pinned in the selection file ``path``, in ``names`` order, after
    checking that it pins exactly ``splits`` of exactly ``names`` and that every pinned split's
    ``_info.json`` is unchanged on disk; :class:`SelectionError` says what differs and what to run.
    ``asking``: who asks for ``names`` and the fix when the file pins others (the evaluator's are a
    checkpoint's training datasets: a selection made since for other ones needs the model retrained)."""
    _check_names(names)
    path = Path(path)
    if not path.is_file():
        raise SelectionError(f"{path} not found: {RESELECT}")
    try:
        chosen = json.loads(path.read_text())
    except ValueError as err:               # git-tracked: a merge can leave conflict markers in it
        raise SelectionError(f"{path} is not JSON ({err}; a merge conflict?): {RESELECT}") from None
    if not isinstance(chosen, dict):
        raise SelectionError(f"{path} holds a {type(chosen).__name__}, not a selection: {RESELECT}")
    if chosen.get("version") != VERSION:
        raise SelectionError(f"{path} has version {chosen.get('version')!r}, expected {VERSION}: "
                             f"{RESELECT}")
    pinned = chosen.get("datasets")
    if not isinstance(pinned, dict) or not all(isinstance(p, dict) and isinstance(p.get("shards"), str)
                                               and isinstance(p.get("splits"), dict) for p in pinned.values()):
        raise SelectionError(f"{path} is damaged (its datasets are not the select stage's): {RESELECT}")
    if sorted(pinned) != sorted(names):
        raise SelectionError(f"{path} selects {sorted(pinned)} but {asking[0]} {sorted(names)}: {asking[1]}")
    dirs = []
    for name in names:
        shards = Path(pinned[name]["shards"])
        if sorted(pinned[name]["splits"]) != sorted(splits):
            raise SelectionError(f"{path} pins the {sorted(pinned[name]['splits'])} splits of {name} but "
                                 f"{sorted(splits)} are read: {RESELECT}")
        stale = [s for s, digest in pinned[name]["splits"].items() if split_digest(shards, s) != digest]
        if stale:
            raise SelectionError(f"{shards} ({', '.join(stale)}) changed since {path} was written: "
                                 f"run `dvc repro` so that the stages reading it run again")
        dirs.append(shards)
    return dirs
