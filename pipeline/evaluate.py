"""Stage `evaluate`.  Usage: python -m pipeline.evaluate CHECKPOINT SHARD_DIR OUT_DIR"""
from ferdata.params import section
from fermodels.evaluate import EvalParams, evaluate
from pipeline._args import setup

params, (ckpt, shards, out) = setup()
values = {k: v for k, v in params["evaluate"].items() if k != "dataset"}  # `dataset` only picks SHARD_DIR
evaluate(ckpt, shards, section(EvalParams, values, "evaluate"), out)
