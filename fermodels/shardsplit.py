"""A split of prepared datasets as their shards' ``_info.json`` files describe it (:class:`Split`):
the shards and their sample counts (each checked to be there at its listed size), the class
histogram, the shards' sha256, test subsets, label modes, and the face backends and align/derive
settings that made the faces, which checkpoints record so inference repeats them."""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ferdata.classes import CLASSES
from ferdata.io import read_header
from ferdata.layout import DROPPED_BEFORE, DROPPED_BEFORE_FOLDS, GREY, INFO, MADE_BY
from ferdata.selection import read_info
from ferdata.tario import iter_tar_samples, listed_shard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """One split of one or more prepared datasets, as their ``_info.json`` files describe it
    (``subsets``: the named test subsets of a reader's ``options.subsets``, listed by the shard stage)."""

    name: str
    dirs: tuple[str, ...]
    shards: tuple[tuple[str, int], ...]          # (tar path, sample count)
    histogram: dict[str, int]                   # canonical class name -> count
    hashes: dict[str, list[str]]                # shard dir -> sha256 of each shard
    subsets: dict[str, dict[str, frozenset[str]]] = field(default_factory=dict)  # shard dir -> test subset -> keys
    soft_labels: dict[str, int] = field(default_factory=dict)  # label mode -> samples with a distribution to train on
    face_backends: dict[str, int] = field(default_factory=dict)  # face backend -> samples whose crop it made
    preprocess: dict = field(default_factory=dict)   # align/derive settings that made the faces ({}: not recorded)
    face_backend_options: dict[str, dict] = field(default_factory=dict)   # face backend -> the options it ran with
    empty_by_setting: tuple[str, ...] = ()      # dirs whose split the settings left empty (shard.val_fraction 0)
    histograms: dict[str, dict[str, int]] = field(default_factory=dict)   # shard dir -> its class histogram
    made_by: dict[str, dict] = field(default_factory=dict)   # shard dir -> what made it (ferdata.layout.MADE_BY)
    grey: bool = False                          # every dataset's _info.json says all its faces are grey (R = G = B)
    # shard dir -> reason -> its official pictures of this split that detect or align dropped (none: no entry)
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    # k-fold's test split: shard dir -> reason -> the dataset's pictures detect or align dropped, in no fold
    dropped_before_folds: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return sum(n for _, n in self.shards)

    def shards_of(self, shard_dir: str) -> tuple[tuple[str, int], ...]:
        """The shards that ``shard_dir``'s ``_info.json`` lists (``shards`` holds every dir's, in
        ``dirs`` order; ``hashes`` one sha256 per shard)."""
        start = sum(len(self.hashes[d]) for d in self.dirs[:self.dirs.index(shard_dir)])
        return self.shards[start:start + len(self.hashes[shard_dir])]

    def class_counts(self, num_classes: int) -> list[int]:
        return [self.histogram.get(c, 0) for c in CLASSES[:num_classes]]

    def classes_beyond(self, num_classes: int, shard_dir: str | None = None) -> dict[str, int]:
        """Samples whose class a ``num_classes`` model cannot predict (e.g. Contempt for 7), in all
        dirs or in ``shard_dir``."""
        hist = self.histogram if shard_dir is None else self.histograms.get(shard_dir, {})
        return {c: n for c, n in hist.items() if n and CLASSES.index(c) >= num_classes}


def _listed_on_disk(info_path: Path, listed: Sequence[Mapping[str, Any]]) -> list[tuple[str, int]]:
    """(path, sample count) of each shard ``_info.json`` lists, after checking that each is there
    with its listed size (a stat each; ``ferdata verify`` compares the contents with their sha256)."""
    out = []
    for s in listed:
        path = listed_shard(info_path.parent, s["name"])
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}, listed in {info_path}, is missing: `dvc pull` / `dvc checkout` it, or "
                                    "re-run the shard stage") from None
        if "bytes" in s and size != s["bytes"]:
            raise ValueError(f"{path} is {size} bytes where {info_path} lists {s['bytes']}: cut short or replaced "
                             "since it was written; check the split with `ferdata verify`, then re-run the shard "
                             "stage (or `dvc pull` / `dvc checkout` it)")
        out.append((str(path), int(s["count"])))
    return out


def open_split(shard_dirs: Sequence[str | Path], split: str, warn: bool = True) -> Split:
    """Read ``<dir>/<split>/_info.json`` of every shard dir (one per training dataset); each shard
    it lists must be there with its listed size. ``warn`` false: what the datasets' other splits
    tell alike (one shard run writes them all) is left unsaid, as the caller told it for one."""
    if len({Path(d).resolve() for d in shard_dirs}) < len(shard_dirs):
        raise ValueError(f"shard dirs listed more than once: {[str(d) for d in shard_dirs]} (each would be read "
                         "twice an epoch)")
    shards, hist, hashes, subsets, soft, backends, hists, made = [], Counter(), {}, {}, Counter(), Counter(), {}, {}
    settings: dict[str, dict] = {}
    detectors: dict[str, dict] = {}                   # shard dir -> face backend -> options
    by_setting: list[str] = []
    dropped: dict[str, dict[str, int]] = {}
    before_folds: dict[str, dict[str, int]] = {}
    for d in shard_dirs:
        info_path = Path(d) / split / INFO
        if not info_path.is_file():
            inside = Path(d) / "shards"
            if (inside / split / INFO).is_file():
                raise FileNotFoundError(f"{info_path} not found: {d} is a dataset's folder; give its shards "
                                        f"folder, {inside}")
            raise FileNotFoundError(f"{info_path} not found: prepare the dataset first "
                                    f"(`dvc repro shard@<name>` or `ferdata prepare <name>`)")
        info = read_info(d, split)
        if info.get("split", split) != split:
            raise ValueError(f"{info_path} describes the {info['split']!r} split, not {split!r}: split folders "
                             "swapped or renamed in a copy? (`ferdata verify` checks a copy)")
        if info.get("label_map", list(CLASSES)) != list(CLASSES):    # cls ids are read as CLASSES' indices
            raise ValueError(f"{info_path}: its label_map {info['label_map']} is not the class order every stage "
                             f"reads {list(CLASSES)}: its samples' cls ids would be read as other classes (shards not "
                             "written by this project's shard stage?); prepare the dataset again")
        shards += _listed_on_disk(info_path, info["shards"])
        hist.update(info["class_histogram"])
        hists[str(d)] = dict(info["class_histogram"])
        made[str(d)] = {k: info.get(k) for k in MADE_BY}
        hashes[str(d)] = [s["sha256"] for s in info["shards"]]
        subsets[str(d)] = {name: frozenset(keys) for name, keys in info.get("subsets", {}).items()}
        soft.update(info.get("soft_labels", {}))
        backends.update(info.get("face_backends", {}))
        settings[str(d)] = info.get("preprocess") or {}
        if info.get("detect"):                        # auto's options went to each backend it used
            detectors[str(d)] = {name: _face_options(name, info["detect"]["options"])
                                 for name in info.get("face_backends", {})}
        if info.get("empty_by_setting") and not info["shards"]:
            by_setting.append(str(d))
        if info.get(DROPPED_BEFORE):
            dropped[str(d)] = dict(info[DROPPED_BEFORE])
        if info.get(DROPPED_BEFORE_FOLDS):
            before_folds[str(d)] = dict(info[DROPPED_BEFORE_FOLDS])
    return Split(split, tuple(str(d) for d in shard_dirs), tuple(shards), dict(hist), hashes, subsets, dict(soft),
                 dict(sorted(backends.items())), _one_preprocess(settings, split), _backend_options(detectors, warn),
                 tuple(by_setting), hists, made, bool(made) and all(m[GREY] is True for m in made.values()), dropped,
                 before_folds)


def joined(splits: Sequence[Split]) -> Split:
    """Several splits of the same shard dirs read as one (``evaluate.split: all``, a cross-dataset target
    scored whole): each dir's shards in the splits' order, its counts summed (a face is in one split of its
    dataset, so its keys stay unique), what made the faces as the first split records it (one shard run
    writes them all)."""
    if len(splits) == 1:
        return splits[0]
    first, dirs = splits[0], splits[0].dirs
    if any(s.dirs != dirs for s in splits):
        raise ValueError(f"joined splits must be of the same shard dirs, got {[s.dirs for s in splits]}")

    def summed(counts) -> dict[str, int]:
        return dict(sum((Counter(c) for c in counts), Counter()))

    return Split(
        name="+".join(s.name for s in splits), dirs=dirs,
        shards=tuple(shard for d in dirs for s in splits for shard in s.shards_of(d)),
        histogram=summed(s.histogram for s in splits),
        hashes={d: [h for s in splits for h in s.hashes[d]] for d in dirs},
        subsets={d: {name: frozenset().union(*(s.subsets.get(d, {}).get(name, frozenset()) for s in splits))
                     for name in sorted({n for s in splits for n in s.subsets.get(d, {})})} for d in dirs},
        soft_labels=summed(s.soft_labels for s in splits),
        face_backends=dict(sorted(summed(s.face_backends for s in splits).items())),
        preprocess=first.preprocess, face_backend_options=first.face_backend_options,
        empty_by_setting=tuple(d for d in dirs if all(d in s.empty_by_setting for s in splits)),
        histograms={d: summed(s.histograms.get(d, {}) for s in splits) for d in dirs},
        made_by=first.made_by, grey=all(s.grey for s in splits),
        dropped={d: dict(sorted(counts.items())) for d in dirs
                 if (counts := summed(s.dropped.get(d, {}) for s in splits))},
        dropped_before_folds={d: c for s in splits for d, c in s.dropped_before_folds.items()})   # the test split's


def _face_options(name: str, options: Mapping[str, Any]) -> dict:
    """``options`` less those that find no other faces (``FaceBackend.unsigned``: ``threads``; face_alignment's
    sfd/dlib ``score_threshold``): shards prepared before the detect stage left them out of its settings
    still record them, and a dataset prepared since must not seem to have run the backend another way.
    Spelled out here, as ``ferdata.faces`` is not among the code training depends on
    (tests/fermodels/test_shards_recorded_threads.py checks it against the backends)."""
    unsigned = {"threads"}
    if name == "face_alignment" and options.get("detector", "embedded") != "embedded":
        unsigned.add("score_threshold")
    return {k: v for k, v in options.items() if k not in unsigned}


def _backend_options(detectors: dict[str, dict[str, dict]], warn: bool = True) -> dict[str, dict]:
    """Each face backend's options over all datasets; a backend run with different options for
    two datasets is left out (inference then builds it with its own defaults), with a warning."""
    merged: dict[str, dict] = {}
    differing: set[str] = set()
    for per_backend in detectors.values():
        for name, options in per_backend.items():
            if merged.setdefault(name, options) != options:
                differing.add(name)
    if differing and warn:
        log.warning("face backend(s) %s ran with different options for different datasets: inference will "
                    "not repeat either (pass --backend-option)", ", ".join(sorted(differing)))
    return {name: options for name, options in sorted(merged.items()) if name not in differing}


def _one_preprocess(settings: dict[str, dict], split: str) -> dict:
    """The align/derive settings all datasets' faces share ({} when one did not record them); faces
    cropped or derived differently cannot feed one model, whose checkpoint records one way."""
    if not all(settings.values()):
        return {}
    distinct = {json.dumps(v, sort_keys=True) for v in settings.values()}
    if len(distinct) > 1:
        shown = "; ".join(f"{d}: {v}" for d, v in settings.items())
        raise ValueError(f"the {split} shards were prepared with different align/derive settings ({shown}); "
                         "prepare every dataset with the same align and derive sections")
    return next(iter(settings.values()))


def stored_side(split: Split) -> int:
    """The crop side of ``split``'s faces: the align size the shards record, else (shards of a
    version that did not record it) read from each dataset's first face, the smallest when
    datasets differ."""
    if split.preprocess:
        return int(split.preprocess["align"]["size"])
    sides = stored_sides(split)
    if not sides:
        raise ValueError(f"no face image in the {split.name} shards of {', '.join(split.dirs)}")
    return min(sides.values())


def stored_sides(split: Split) -> dict[str, int]:
    """Each shard folder's face side, read from its first face (folders without a face left out)."""
    sides: dict[str, int] = {}
    for path, _ in split.shards:
        folder = str(Path(path).parent)
        if folder not in sides:
            image = next((f["jpg"] for _, f in iter_tar_samples(path) if "jpg" in f), None)
            if image is not None:           # a shard without faces: the folder's next one
                head = read_header(image)
                sides[folder] = min(head.width, head.height)
    return sides
