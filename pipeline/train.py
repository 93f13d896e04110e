"""Stage `train`.  Usage: python -m pipeline.train DATA_DIR CKPT_DIR LIVE_DIR

Applies ``train.recipe`` (if any), then trains on ``DATA_DIR/<name>/shards`` of every
``train.datasets`` entry; the align/derive settings go into the checkpoints for inference.
"""
from ferdata.params import section
from ferdata.prepare import stage_dirs
from fermodels.predict import preprocess_record
from fermodels.recipes import apply_recipe
from fermodels.train import TrainParams, train
from pipeline._args import setup

params, (data_dir, ckpt, live) = setup()
train_params = section(TrainParams, apply_recipe(params["train"]), "train")
shards = [stage_dirs(data_dir, name)["shards"] for name in train_params.datasets]
train(shards, train_params, ckpt, live, preprocess_record(params))
