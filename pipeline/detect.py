"""Stage `detect@<dataset>`.  Usage: python -m pipeline.detect DATASET OUT_DIR"""
from ferdata.params import stage_section
from ferdata.datasets import dataset_spec, read_dataset
from ferdata.stages.detect import DetectParams, run_detect
from pipeline._args import setup

params, (name, out) = setup()
run_detect(read_dataset(dataset_spec(params, name)), stage_section(params, "detect", DetectParams), out)
