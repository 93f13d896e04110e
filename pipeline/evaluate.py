"""Stage `evaluate`.  Usage: python -m pipeline.evaluate CHECKPOINT SELECTION OUT_DIR

``evaluate.dataset`` null scores the checkpoint's training datasets; a prepared dataset's name
scores that one instead (cross-dataset, through the canonical labels). The shards are the ones
pinned in ``SELECTION`` (the `select` stage's ``evaluate.json``).
"""
from ferdata.selection import read_selection, tested_on
from fermodels.evaluate import evaluate, evaluate_section
from fermodels.runstate import load_checkpoint
from pipeline._args import setup

params, (ckpt, selection, out) = setup()
dataset, eval_params = evaluate_section(params)
names = tested_on(dataset, load_checkpoint(ckpt)["datasets"])
evaluate(ckpt, read_selection(selection, names, (eval_params.split,)), eval_params, out, names)
