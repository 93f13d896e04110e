"""Stage `sample`: generate the bundled smoke-test dataset.  Usage: python -m pipeline.sample OUT_DIR"""
from pathlib import Path

from ferdata.params import stage_section
from ferdata.sample import SampleParams, make_affectnet_sample
from pipeline._args import setup


def main() -> None:
    params, (out,) = setup(check_all=False)
    make_affectnet_sample(Path(out), stage_section(params, "sample", SampleParams))


if __name__ == "__main__":      # not when a spawn / forkserver worker imports this script as __mp_main__
    main()
