"""Shared argument handling for the stage scripts (logging set-up and params loading)."""
from __future__ import annotations

import logging
import sys

from ferdata.errors import install_excepthook
from ferdata.params import load_params


def setup() -> tuple[dict, list[str]]:
    """Logging, the command lines' error policy (bad input: one ``error:`` line), params.yaml and argv."""
    install_excepthook()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return load_params(), sys.argv[1:]
