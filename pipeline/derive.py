"""Stage `derive@<dataset>`.  Usage: python -m pipeline.derive ALIGNED_DIR OUT_DIR"""
from ferdata.params import stage_section
from ferdata.stages.derive import DeriveParams, run_derive
from pipeline._args import setup


def main() -> None:
    params, (aligned_dir, out) = setup()
    run_derive(aligned_dir, stage_section(params, "derive", DeriveParams), out)


if __name__ == "__main__":      # not when a spawn / forkserver worker imports this script as __mp_main__
    main()
