"""Stage `detect@<dataset>`.  Usage: python -m pipeline.detect DATASET OUT_DIR"""
from ferdata.datasets import dataset_spec, official_splits, read_dataset, source, warn_absolute_root
from ferdata.stages.detect import detect_section, run_detect
from pipeline._args import setup


def main() -> None:
    params, (name, out) = setup()
    spec = dataset_spec(params, name)
    warn_absolute_root(name, spec)
    run_detect(read_dataset(spec), detect_section(params, name, spec), out, official_splits(spec), source(spec))


if __name__ == "__main__":      # not when a spawn / forkserver worker imports this script as __mp_main__
    main()
