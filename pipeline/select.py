"""Stage `select`.  Usage: python -m pipeline.select DATA_DIR OUT_DIR

Pins the prepared data each later stage reads (:mod:`ferdata.selection`): ``OUT_DIR/train.json``
the train and val splits of ``train.datasets`` (after ``train.recipe``), ``OUT_DIR/evaluate.json``
the ``evaluate.split`` of ``evaluate.dataset`` (null: the training datasets; split ``all``: its every
split). Train and evaluate depend on these files instead of all of ``data/``, so preparing another
dataset re-runs neither.
"""
import logging
from pathlib import Path
from typing import Any, Mapping

from ferdata.errors import NamedKeyError
from ferdata.params import dataset_specs, section_values
from ferdata.selection import SPLITS_READ, check_run_datasets, copy_warnings, scored_splits, tested_on, write_selection
from fermodels.recipes import apply_recipe
from pipeline._args import setup


def required(values: Mapping[str, Any], section: str, key: str) -> Any:
    """``values[key]`` of params section ``section``; a missing one is named (the sections are checked
    whole in the stages after this one)."""
    if key not in values:
        raise NamedKeyError(f"params.yaml has no {section}.{key} (copy it from the project's params.yaml)")
    return values[key]


def main() -> None:
    params, (data_dir, out) = setup(check_all=False)
    train, evaluate = (section_values(params, name) for name in ("train", "evaluate"))
    trained_on = required(apply_recipe(train), "train", "datasets")
    dataset, split = required(evaluate, "evaluate", "dataset"), required(evaluate, "evaluate", "split")
    # a misspelt name is said as such (the whole check runs in the stages after); before any use of the names
    check_run_datasets(trained_on, dataset, dataset_specs(params), data_dir, split)
    tested = tested_on(dataset, trained_on)
    write_selection(Path(out) / "train.json", data_dir, trained_on, SPLITS_READ)
    write_selection(Path(out) / "evaluate.json", data_dir, tested, scored_splits(split))
    for told in copy_warnings(data_dir, trained_on, tested, split):
        logging.getLogger("pipeline.select").warning("%s", told)


if __name__ == "__main__":      # not when a spawn / forkserver worker imports this script as __mp_main__
    main()
