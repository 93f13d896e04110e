"""Stage `align@<dataset>`.  Usage: python -m pipeline.align DETECT_DIR OUT_DIR"""
from ferdata.params import stage_section
from ferdata.stages.align import AlignParams, run_align
from pipeline._args import setup


def main() -> None:
    params, (detect_dir, out) = setup()
    run_align(detect_dir, stage_section(params, "align", AlignParams), out)


if __name__ == "__main__":      # not when a spawn / forkserver worker imports this script as __mp_main__
    main()
