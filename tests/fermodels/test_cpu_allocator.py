"""Importing fermodels turns on torch's transparent-huge-page CPU allocations (unless the user
said otherwise), and torch really backs large tensors with huge pages then."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")

# Allocate and touch a 64 MB tensor after importing fermodels; print the setting and how much of
# the process's anonymous memory is in huge pages (kB, /proc/self/smaps_rollup).
PROBE = """
import os, fermodels, torch
x = torch.ones(16 * 1024 * 1024)
huge = next(int(line.split()[1]) for line in open("/proc/self/smaps_rollup") if line.startswith("AnonHugePages:"))
print(os.environ.get("THP_MEM_ALLOC_ENABLE"), huge, float(x.sum()))
"""


def probe(env_value: str | None) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if env_value is not None:
        env["THP_MEM_ALLOC_ENABLE"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    setting, huge, total = out.stdout.split()
    assert float(total) == 16 * 1024 * 1024
    return setting, int(huge)


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="Linux /proc only")
def test_import_enables_huge_pages_and_respects_an_opt_out():
    on, huge_on = probe(None)
    off, huge_off = probe("0")
    assert (on, off) == ("1", "0")
    mode = THP.read_text() if THP.exists() else "[never]"
    if "[never]" not in mode:
        assert huge_on >= 32 * 1024                     # most of the 64 MB tensor in 2 MB pages
    if "[madvise]" in mode:                             # huge pages only where asked for ("always": everywhere)
        assert huge_off < 32 * 1024
