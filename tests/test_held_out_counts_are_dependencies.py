"""The code that decides which drops are counted as held out (``HELD_OUT``) and sums them (``counted_by_split``)
shapes the detect and align reports, each split's ``_info.json``, ``runs/select/evaluate.json`` and ``metrics.json``;
it lived in ferdata/report.py, which codeclosure.EXEMPT leaves out of every stage's dependencies as "the stage
report's format", so an edit to it re-ran no stage and left those files stale (audit h121)."""
from __future__ import annotations

import ast

import pytest

from ferdata.codeclosure import EXEMPT, ROOT, module_file

COUNTING = {"HELD_OUT", "counted_by_split"}


@pytest.mark.parametrize("stage", ["ferdata/stages/detect.py", "ferdata/stages/align.py"])
def test_the_held_out_counting_comes_from_a_module_the_stages_depend_on(stage):
    tree = ast.parse((ROOT / stage).read_text(encoding="utf-8"))
    sources = {node.module: {a.name for a in node.names} & COUNTING for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and node.module and {a.name for a in node.names} & COUNTING}
    assert set().union(*sources.values()) == COUNTING, f"{stage} imports {sources}"
    exempt = {m: names for m, names in sources.items()
              if str(module_file(m).relative_to(ROOT)) in EXEMPT}
    assert not exempt, f"{stage} counts held-out drops with code no stage depends on (codeclosure.EXEMPT): {exempt}"
