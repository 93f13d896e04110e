"""Stage `evaluate`.  Usage: python -m pipeline.evaluate CHECKPOINT DATA_DIR OUT_DIR

``evaluate.dataset`` null scores the checkpoint's training datasets; a prepared dataset's name
scores that one instead (cross-dataset, through the canonical labels).
"""
from ferdata.params import section
from ferdata.prepare import stage_dirs
from fermodels.evaluate import EvalParams, evaluate
from fermodels.runstate import load_checkpoint
from pipeline._args import setup

params, (ckpt, data_dir, out) = setup()
values = dict(params["evaluate"])
dataset = values.pop("dataset")
names = [dataset] if dataset else load_checkpoint(ckpt)["datasets"]
evaluate(ckpt, [stage_dirs(data_dir, n)["shards"] for n in names], section(EvalParams, values, "evaluate"), out, names)
