"""Stage `evaluate`.  Usage: python -m pipeline.evaluate CHECKPOINT SELECTION OUT_DIR

``evaluate.dataset`` null scores the checkpoint's training datasets; a prepared dataset's name
scores that one instead (cross-dataset, through the canonical labels). The shards are the ones
pinned in ``SELECTION`` (the `select` stage's ``evaluate.json``).
"""
from ferdata.selection import PARAMS_ASK, read_selection, scored_splits, tested_on
from fermodels.distributed import env_from_os
from fermodels.evaluate import evaluate, evaluate_section
from fermodels.runstate import load_checkpoint
from pipeline._args import setup


def main() -> None:
    params, (ckpt, selection, out) = setup()
    if (env := env_from_os()).distributed:      # no process group: each rank scored every face, wrote the same files
        raise ValueError(f"the evaluate stage runs in one process, not under torchrun ({env.world_size} ranks would "
                         f"each score every face and write {out} in turn): run `python -m pipeline.evaluate`")
    dataset, eval_params = evaluate_section(params)
    names = tested_on(dataset, load_checkpoint(ckpt)["datasets"])
    # evaluate.dataset null: the checkpoint's datasets, which a train.datasets changed since (and selected) are not
    asking = PARAMS_ASK if dataset else (f"{ckpt} was trained on", "retrain on the selected ones (`dvc repro train`)")
    dirs = read_selection(selection, names, scored_splits(eval_params.split), asking=asking)
    evaluate(ckpt, dirs, eval_params, out, names)


if __name__ == "__main__":      # not when a spawn / forkserver worker imports this script as __mp_main__
    main()
