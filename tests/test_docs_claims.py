"""Concrete claims of docs/models.md and BENCHMARKS.md that the code can check: a number the docs give
for a model or for the benchmarks must be what the code builds or holds (audit h99)."""
from __future__ import annotations

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WORDS = {w: i for i, w in enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                                     "nine", "ten"))}


def _det_tokens(cut_stage: int | None) -> int:
    """How many spatial tokens convcut's attention sees (a narrow ConvNeXt: the geometry is the same)."""
    from fermodels import create_model
    kwargs = {} if cut_stage is None else {"cut_stage": cut_stage}
    model = create_model("convcut", depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), width=32, **kwargs).eval()
    with torch.no_grad():
        out = model.det(model.backbone(torch.zeros(1, 3, 224, 224)))
    return out.shape[-2] * out.shape[-1]


def test_models_md_names_convcuts_default_token_count_first():
    text = " ".join((ROOT / "docs" / "models.md").read_text(encoding="utf-8").split())
    found = re.search(r"over the (\d+) \(or (\d+)[^)]*\) DET tokens", text)
    assert found, "docs/models.md no longer says how many DET tokens convcut attends over"
    assert int(found.group(1)) == _det_tokens(None)          # the default cut (after stage 2): 3 x 3
    assert int(found.group(2)) == _det_tokens(3)             # cut_stage=3: 2 x 2


def test_benchmarks_md_counts_its_benchmarks_and_gpu_sections():
    text = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    scripts = sorted(p.name for p in (ROOT / "bench").glob("bench_*.py"))
    said = re.search(r"^(\w+) one-command benchmarks", text, re.M)
    assert said and WORDS[said.group(1).lower()] == len(scripts), (said and said.group(1), scripts)
    gpu_sections = re.findall(r"^## On a GPU", text, re.M)
    intro = " ".join(text[:text.index("\n|")].split())
    assert len(gpu_sections) < 2 or "last section" not in intro, \
        f"the intro speaks of one last GPU section; BENCHMARKS.md has {len(gpu_sections)}"
