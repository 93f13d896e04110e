"""Stage `align@<dataset>`.  Usage: python -m pipeline.align DETECT_DIR OUT_DIR"""
from ferdata.params import section
from ferdata.stages.align import AlignParams, run_align
from pipeline._args import setup

params, (detect_dir, out) = setup()
run_align(detect_dir, section(AlignParams, params["align"], "align"), out)
