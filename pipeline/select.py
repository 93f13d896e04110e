"""Stage `select`.  Usage: python -m pipeline.select DATA_DIR OUT_DIR

Pins the prepared data each later stage reads (:mod:`ferdata.selection`): ``OUT_DIR/train.json``
the train and val splits of ``train.datasets`` (after ``train.recipe``), ``OUT_DIR/evaluate.json``
the ``evaluate.split`` of ``evaluate.dataset`` (null: the training datasets). Train and evaluate
depend on these files instead of all of ``data/``, so preparing another dataset re-runs neither.
"""
from pathlib import Path

from ferdata.params import dataset_specs
from ferdata.selection import SPLITS_READ, check_run_datasets, tested_on, write_selection
from fermodels.recipes import apply_recipe
from pipeline._args import setup

params, (data_dir, out) = setup(check_all=False)
trained_on = apply_recipe(params["train"])["datasets"]
tested = tested_on(params["evaluate"]["dataset"], trained_on)
# a misspelt name is said as such (the whole check runs in the stages after)
check_run_datasets(trained_on, params["evaluate"]["dataset"], dataset_specs(params), data_dir)
write_selection(Path(out) / "train.json", data_dir, trained_on, SPLITS_READ)
write_selection(Path(out) / "evaluate.json", data_dir, tested, (params["evaluate"]["split"],))
