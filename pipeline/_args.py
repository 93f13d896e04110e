"""Shared argument handling for the stage scripts (usage, logging set-up and params loading).

A script's arguments are named once, in its docstring's ``Usage: python -m pipeline.<stage> NAME ...``
line (the stage scripts are DVC dependencies: naming them here leaves every stage's hash alone).
"""
from __future__ import annotations

import logging
import os
import re
import sys
from typing import Mapping, Sequence

from ferdata.errors import console_logging, install_excepthook, warnings_told_here
from ferdata.params import PARAMS_FILE, load_params

HELP = ("-h", "--help")
# dvc.yaml's per-dataset stages name their dataset by DVC's DVC_STAGE variable (``detect@<name>``,
# ``--dvc-stage "$DVC_STAGE"``), never by ``${key}`` in ``cmd``: DVC hands ``cmd`` to a shell, so a
# dataset name from params.yaml interpolated there (``x$(touch${IFS}/tmp/pwned)``) ran as shell code
# before any check of this package could refuse the name. The arguments each stage then gets:
DVC_STAGE = "--dvc-stage"
DVC_STAGE_ARGS = {"detect": "{name} data/{name}/detect", "align": "data/{name}/detect data/{name}/aligned",
                  "derive": "data/{name}/aligned data/{name}/derived",
                  "shard": "data/{name}/aligned data/{name}/derived data/{name}/shards"}
USAGE = re.compile(r"Usage: (python -m [\w.]+)((?: [A-Z][A-Z_]*)*)")


def setup(check_all: bool = True) -> tuple[dict, list[str]]:
    """The script's arguments from argv, then logging, the command lines' error policy (bad input: one
    ``error:`` line) and params.yaml, every section of it checked (:mod:`pipeline._checks`) unless
    ``check_all`` is false: the quick stages on either side of preprocessing (sample, select) leave
    it to the next, so that the check's imports (torch, every model) cost only the stages it guards.

    ``-h``/``--help`` prints the usage line and the script's docstring and exits 0; a wrong number of
    arguments prints the usage line on stderr and exits 2, as argparse does."""
    install_excepthook()                               # first: --help into a closed pipe is no traceback either
    doc = getattr(sys.modules.get("__main__"), "__doc__", None) or ""
    args = arguments(doc, sys.argv[1:])
    console_logging(log_level(), "%(asctime)s %(name)s: %(message)s")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)   # its INFO "generated new fontManager" is not ours
    if not os.path.isfile(PARAMS_FILE):                # load_params' hint names --params, which a stage has not
        raise FileNotFoundError(f"{PARAMS_FILE} not found in {os.getcwd()}: a stage script runs in the project "
                                "folder (the one with params.yaml and dvc.yaml), as `dvc repro` runs it")
    params = load_params()
    if check_all:
        from pipeline._checks import check_params     # after the arguments: --help needs no torch

        with warnings_told_here(os.environ.get("LOCAL_RANK", "0") == "0"):    # torchrun: once per machine
            check_params(params)
    return params, args


def log_level(env: Mapping[str, str] = os.environ) -> int:
    """INFO, but WARNING on the ranks after the first under torchrun: every rank would tell the same
    progress (stream counts, the resume point, the recipe), once per GPU."""
    return logging.INFO if env.get("RANK", "0") == "0" else logging.WARNING


def arguments(doc: str, argv: Sequence[str]) -> list[str]:
    """``argv`` when it holds one value per argument ``doc``'s usage names; else the usage, and exit
    (0 for help, 2 for a mistake)."""
    m = USAGE.search(doc)
    if m is None:
        raise RuntimeError(f"{sys.argv[0]}: its docstring has no 'Usage: python -m pipeline.<stage> ARG ...' line")
    names = m.group(2).split()
    script = m.group(1).rpartition(".")[2]
    line = f"usage: {m.group(1)}{m.group(2)}" + (f"\n   or: {m.group(1)} {DVC_STAGE} {script}@DATASET  (as dvc.yaml "
                                                  "runs it; the paths data/DATASET/...)"
                                                  if script in DVC_STAGE_ARGS else "")
    if any(a in HELP for a in argv):
        # flushed here: a closed pipe raises now, where the excepthook quiets it; left to the exit's
        # flush (stdout to a pipe is block-buffered) it printed "Exception ignored ... BrokenPipeError", status 120
        print(f"{line}\n\n{doc.strip()}", flush=True)
        raise SystemExit(0)
    if len(argv) == 2 and argv[0] == DVC_STAGE:
        argv = dvc_stage_args(script, argv[1])
    if len(argv) != len(names):
        print(f"{line}\nerror: expected {len(names)} argument(s) ({' '.join(names)}), got {len(argv)}",
              file=sys.stderr)
        raise SystemExit(2)
    return list(argv)


def dvc_stage_args(script: str, address: str) -> list[str]:
    """The arguments of stage script ``script`` (``detect``) for DVC's stage address ``address``
    (``detect@<name>``, or ``path/dvc.yaml:detect@<name>``), its dataset name checked first."""
    from ferdata.params import DATASET_NAME

    stage, _, name = address.rpartition(":")[2].partition("@")
    if stage != script or script not in DVC_STAGE_ARGS:
        raise ValueError(f"{DVC_STAGE} {address!r}: not a stage of pipeline.{script} (expected {script}@<dataset>)")
    if not DATASET_NAME.fullmatch(name):
        raise ValueError(f"params.yaml datasets: name {name!r} is not letters, digits, _ and - only, not starting "
                         "with - (it names folders and DVC stages)")
    return DVC_STAGE_ARGS[script].format(name=name).split()
