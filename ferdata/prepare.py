"""Whole preprocessing of one dataset: read -> detect -> align -> derive -> shard; and one
machine's part of the detection, when several machines share it.

``ferdata prepare`` calls :func:`prepare`; the DVC stages call the same stage
functions one at a time (see pipeline/), so both always produce the same shards.
"""
from __future__ import annotations

import itertools

from pathlib import Path
from typing import Any, Mapping

from ferdata.cache import DetectionCache, cache_folder
from ferdata.datasets import (READERS, DatasetSpec, check_reader, dataset_spec, official_splits, read_dataset, source,
                              warn_absolute_root)
from ferdata.errors import NamedKeyError
from ferdata.layout import stage_dirs
from ferdata.params import dataset_specs, stage_section
from ferdata.parts import Part
from ferdata.records import FaceRecord
from ferdata.stages.align import AlignParams, run_align
from ferdata.stages.derive import DeriveParams, run_derive
from ferdata.stages.detect import DetectParams, detect_section, fill_cache, run_detect
from ferdata.stages.shard import ShardParams, run_shard


def resolve_spec(name: str, params: Mapping[str, Any], root: str | Path | None = None,
                 options: Mapping[str, Any] | None = None, backend: str | None = None) -> DatasetSpec:
    """Dataset ``name``'s params.yaml entry, or reader ``name`` at ``root`` when it has none;
    ``root``, ``options`` (merged over the entry's reader options) and ``backend`` (the face backend,
    over ``datasets.<name>.detect.backend`` and the detect section's) override params.yaml."""
    if name in dataset_specs(params):
        spec = dataset_spec(params, name, build=False)       # built below, with the options given over its own
    elif root is not None:
        spec = DatasetSpec(name, str(root), {})     # a reader name + a root: no params entry needed
        READERS.get(name)                           # unknown names fail here, listing the readers
    else:
        raise NamedKeyError(f"dataset {name!r} is not in params.yaml datasets; add it there or pass "
                            f"--root with a reader name ({', '.join(READERS.names())})")
    detect = dict(spec.detect or {})
    if backend is not None:
        section = params.get("detect")
        replaced = detect.get("backend", section.get("backend") if isinstance(section, Mapping) else None)
        if backend != replaced:             # the dataset's own options belong to the backend replaced
            detect.pop("options", None)
        detect["backend"] = backend
    resolved = DatasetSpec(spec.reader, str(root) if root is not None else spec.root,
                           {**(spec.options or {}), **(options or {})}, detect)
    if name in dataset_specs(params):
        check_reader(resolved, f"params.yaml datasets.{name}" + (" with the options given" if options else ""))
    return resolved


def prepare(name: str, params: Mapping[str, Any], data_dir: str | Path = "data",
            root: str | Path | None = None, options: Mapping[str, Any] | None = None,
            backend: str | None = None) -> dict[str, Any]:
    """Run every preprocessing stage for dataset ``name``; returns the stage reports (``root``,
    ``options``, ``backend``: as in :func:`resolve_spec`)."""
    spec = resolve_spec(name, params, root, options, backend)
    warn_absolute_root(name, spec)
    # Every stage's settings are checked before the first stage runs: a bad shard value must not
    # surface after hours of detection.
    align, derive, shard = (stage_section(params, n, cls) for n, cls in (
        ("align", AlignParams), ("derive", DeriveParams), ("shard", ShardParams)))
    detect = detect_section(params, name, spec)
    records = read_dataset(spec)
    first = next(records)        # a root laid out otherwise fails here, before any output folder exists
    dirs = stage_dirs(data_dir, name)
    reports = {
        "detect": run_detect(itertools.chain([first], records), detect, dirs["detect"], official_splits(spec),
                             source(spec)),
        "align": run_align(dirs["detect"], align, dirs["aligned"]),
        "derive": run_derive(dirs["aligned"], derive, dirs["derived"]),
        "shard": run_shard(dirs["aligned"], dirs["derived"], shard, dirs["shards"]),
    }
    return {k: r.to_dict() for k, r in reports.items()}


def detect_part(name: str, params: Mapping[str, Any], part: Part, root: str | Path | None = None,
                options: Mapping[str, Any] | None = None, backend: str | None = None) -> dict[str, Any]:
    """Detect the faces of one part of dataset ``name`` into the detection cache
    (``detect.cache_dir``), for merging with the other parts' caches; returns the report.
    Records the reader drops are left to the full detect run, which counts them."""
    spec = resolve_spec(name, params, root, options, backend)
    records = (r for r in read_dataset(spec) if isinstance(r, FaceRecord) and part.holds_record(r))
    detect = detect_section(params, name, spec)
    report = fill_cache(records, detect)
    with DetectionCache(detect.cache_dir) as cache:     # done whole: `cache merge` tells the parts it lacks
        cache.record_part(name, str(report.notes["backend"]), str(part))
    return report.to_dict()


def signatures_in_use(params: Mapping[str, Any]) -> dict[Path, set[str]]:
    """The detection-cache signatures the detect stage would use now, per cache folder (one absolute
    path, however params.yaml spells it: prune keeps every dataset's entries in a shared file), for
    every dataset of ``params`` (its backend built, so a missing model is named here)."""
    out: dict[Path, set[str]] = {}
    for name in dataset_specs(params):
        detect = detect_section(params, name, dataset_spec(params, name))
        out.setdefault(cache_folder(detect.cache_dir).resolve(), set()).add(detect.signature(detect.create_backend()))
    return out


def cache_dir_of(params: Mapping[str, Any], name: str | None = None) -> Path:
    """The detection cache folder that dataset ``name``'s detect runs use (its own
    ``datasets.<name>.detect.cache_dir`` when it sets one), or the detect section's."""
    if name is None:
        return Path(stage_section(params, "detect", DetectParams).cache_dir)
    return Path(detect_section(params, name, dataset_spec(params, name)).cache_dir)
