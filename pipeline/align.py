"""Stage `align@<dataset>`.  Usage: python -m pipeline.align DETECT_DIR OUT_DIR"""
from ferdata.params import stage_section
from ferdata.stages.align import AlignParams, run_align
from pipeline._args import setup

params, (detect_dir, out) = setup()
run_align(detect_dir, stage_section(params, "align", AlignParams), out)
