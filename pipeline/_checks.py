"""Every params.yaml section checked before any stage of ``dvc repro`` runs.

DVC runs the stages one after another and each reads its own section, so a mistake in ``train`` or
``evaluate`` surfaced only after hours of preprocessing. :func:`check_params` builds every section
as its stage does (each dataset's ``detect`` values over the section, the recipe applied to
``train``), reading no data and opening no file. Checking shapes no output: a stage does not depend
on the code this module imports (``ferdata.codeclosure.CHECKS``), only on the code it runs.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from ferdata.datasets import dataset_spec
from ferdata.params import dataset_specs, stage_section
from ferdata.selection import check_run_datasets
from ferdata.sample import SampleParams
from ferdata.stages.align import AlignParams
from ferdata.stages.derive import DeriveParams
from ferdata.stages.detect import detect_section
from ferdata.stages.shard import ShardParams
from fermodels.checkpoints import WEIGHT_FILE_KWARGS
from fermodels.evaluate import evaluate_section
from fermodels.trainparams import train_section

log = logging.getLogger(__name__)
DATA_DIR = "data"        # where dvc.yaml's stages put each dataset (data/<name>/...)
NOTE = "params.yaml is checked whole before a stage runs: fix this value even where this stage does not read it"


def check_params(params: Mapping[str, Any], data_dir: str | Path = DATA_DIR) -> None:
    """Raise the error the stage reading a bad value would raise, with :data:`NOTE`; ``sample`` only
    where the section is given (it feeds only the bundled sample). The datasets train and evaluate
    name must be ones ``dvc repro`` prepares (``datasets``) or prepared already under ``data_dir``."""
    try:
        for name, cls in (("align", AlignParams), ("derive", DeriveParams), ("shard", ShardParams)):
            stage_section(params, name, cls)
        if params.get("sample") is not None:
            stage_section(params, "sample", SampleParams)
        for name in dataset_specs(params):
            detect_section(params, name, dataset_spec(params, name))
        train = train_section(params, announce=False)
        tested_on, evaluate = evaluate_section(params)
        check_run_datasets(train.datasets, tested_on, dataset_specs(params), data_dir, evaluate.split)
    except (ValueError, KeyError, TypeError) as err:
        err.add_note(NOTE)
        raise
    for key in WEIGHT_FILE_KWARGS:      # needed on the machine that trains only: said, not refused
        path = train.model_kwargs.get(key)
        if isinstance(path, str) and not Path(path).expanduser().exists():
            log.warning("train.model_kwargs.%s %s is not on this machine: the train stage stops at its start "
                        "without it (after the preprocessing stages)", key, path)
