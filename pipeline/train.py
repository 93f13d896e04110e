"""Stage `train`.  Usage: python -m pipeline.train SHARD_DIR CKPT_DIR LIVE_DIR"""
from ferdata.params import section
from fermodels.train import TrainParams, train
from pipeline._args import setup

params, (shards, ckpt, live) = setup()
values = {k: v for k, v in params["train"].items() if k != "dataset"}  # `dataset` only picks SHARD_DIR
train(shards, section(TrainParams, values, "train"), ckpt, live)
