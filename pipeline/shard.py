"""Stage `shard@<dataset>`.  Usage: python -m pipeline.shard ALIGNED_DIR DERIVED_DIR OUT_DIR"""
from ferdata.params import stage_section
from ferdata.stages.shard import ShardParams, run_shard
from pipeline._args import setup


def main() -> None:
    params, (aligned_dir, derived_dir, out) = setup()
    run_shard(aligned_dir, derived_dir, stage_section(params, "shard", ShardParams), out)


if __name__ == "__main__":      # not when a spawn / forkserver worker imports this script as __mp_main__
    main()
