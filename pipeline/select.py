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
from ferdata.selection import (SPLITS_READ, check_run_datasets, copies_across_datasets, scored_splits, scored_twice,
                               tested_on, trained_twice, write_selection)
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
    read: dict = {}         # each split's pictures, read once for both checks
    if copies := copies_across_datasets(data_dir, trained_on, tested, split, read):
        logging.getLogger("pipeline.select").warning(
            "%d held-out face(s) are also in a training split of another dataset of this run (the same picture or "
            "aligned face), so the model trains on faces it is scored on: %s%s; remove those pictures from one of "
            "the datasets",
            len(copies), "; ".join(copies[:5]), " ..." if len(copies) > 5 else "")
    if twice := trained_twice(data_dir, trained_on, read):
        conflicting = sum(" (labelled " in line for line in twice)
        logging.getLogger("pipeline.select").warning(
            "%d face(s) are in the train splits of two datasets of this run (the same picture or aligned face), so "
            "each is trained on twice an epoch%s, where within one dataset a copy is kept once and copies whose "
            "labels disagree are dropped: %s%s; remove those pictures from one of the datasets",
            len(twice), f", {conflicting} of them under two labels" if conflicting else "", "; ".join(twice[:5]),
            " ..." if len(twice) > 5 else "")
    if pooled := scored_twice(data_dir, tested, split, read):
        logging.getLogger("pipeline.select").warning(
            "%d scored face(s) are copies of a face in the %s split of another dataset of this run (the same picture "
            "or aligned face), so the pooled figures count each again, under each dataset's label: %s%s; read "
            "metrics.json's per_dataset, or evaluate one dataset (evaluate.dataset)", len(pooled), split,
            "; ".join(pooled[:5]), " ..." if len(pooled) > 5 else "")


if __name__ == "__main__":      # not when a spawn / forkserver worker imports this script as __mp_main__
    main()
