"""Whole preprocessing of one dataset: read -> detect -> align -> derive -> shard.

``ferdata prepare`` calls :func:`prepare`; the DVC stages call the same stage
functions one at a time (see pipeline/), so both always produce the same shards.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from ferdata.datasets import READERS, DatasetSpec, dataset_spec, read_dataset
from ferdata.layout import stage_dirs
from ferdata.params import section
from ferdata.stages.align import AlignParams, run_align
from ferdata.stages.derive import DeriveParams, run_derive
from ferdata.stages.detect import DetectParams, run_detect
from ferdata.stages.shard import ShardParams, run_shard

log = logging.getLogger(__name__)


def prepare(name: str, params: Mapping[str, Any], data_dir: str | Path = "data",
            root: str | Path | None = None, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run every preprocessing stage for dataset ``name``; returns the stage reports. ``root`` and
    ``options`` (merged over the params entry's reader options) override params.yaml."""
    if name in (params.get("datasets") or {}):
        spec = dataset_spec(params, name)
    elif root is not None:
        spec = DatasetSpec(name, str(root), {})     # a reader name + a root: no params entry needed
        READERS.get(name)                           # unknown names fail here, listing the readers
    else:
        raise KeyError(f"dataset {name!r} is not in params.yaml datasets; add it there or pass "
                       f"--root with a reader name ({', '.join(READERS.names())})")
    spec = DatasetSpec(spec.reader, str(root) if root is not None else spec.root,
                       {**(spec.options or {}), **(options or {})})
    dirs = stage_dirs(data_dir, name)
    reports = {
        "detect": run_detect(read_dataset(spec), section(DetectParams, params["detect"], "detect"), dirs["detect"]),
        "align": run_align(dirs["detect"], section(AlignParams, params["align"], "align"), dirs["aligned"]),
        "derive": run_derive(dirs["aligned"], section(DeriveParams, params["derive"], "derive"), dirs["derived"]),
        "shard": run_shard(dirs["aligned"], dirs["derived"], section(ShardParams, params["shard"], "shard"),
                           dirs["shards"]),
    }
    return {k: r.to_dict() for k, r in reports.items()}
