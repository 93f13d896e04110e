"""Shared argument handling for the stage scripts (logging set-up and params loading)."""
from __future__ import annotations

import logging
import sys

from ferdata.params import load_params


def setup() -> tuple[dict, list[str]]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return load_params(), sys.argv[1:]
