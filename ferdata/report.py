"""Stage reports: what was kept, what was dropped and why, what was converted, as JSON.

Every bad input ends up here: a drop is counted under its reason (with a few
examples), and an input that was kept but needed fixing (EXIF rotation, alpha,
16-bit, several faces ...) is counted under ``notes[<group>][<name>]``.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ferdata.atomic import atomic_open
from ferdata.layout import DROPS, REPORT
from ferdata.records import Dropped

MAX_EXAMPLES = 20  # examples kept per reason, so a report stays small for 10^5 drops


@dataclass
class StageReport:
    """Counts of kept samples and of dropped ones by reason, with a few examples each."""

    stage: str
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    notes: dict[str, object] = field(default_factory=dict)
    settings: dict[str, object] = field(default_factory=dict)   # the params that shaped the output
    inputs: dict[str, str] = field(default_factory=dict)         # earlier outputs it was made from -> digest

    def drop(self, item: Dropped) -> None:
        self.dropped[item.reason] += 1
        ex = self.examples.setdefault(item.reason, [])
        if len(ex) < MAX_EXAMPLES:
            ex.append({"key": item.key, "dataset": item.dataset, "detail": item.detail})

    def count(self, group: str, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``notes[group][name]`` (kept samples that needed handling)."""
        counts = self.notes.setdefault(group, {})
        counts[name] = counts.get(name, 0) + n

    def to_dict(self) -> dict:
        return {
            "stage": self.stage,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "dropped_total": sum(self.dropped.values()),
            "examples": {k: self.examples[k] for k in sorted(self.examples)},
            "notes": self.notes,
            **({"settings": self.settings} if self.settings else {}),
            **({"inputs": self.inputs} if self.inputs else {}),
        }

    def write(self, path: Path) -> None:
        from ferdata.atomic import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


def write_drops(out: Path, report: StageReport, drops: list[Dropped]) -> None:
    """Count drops in the report and list every one of them in ``out/dropped.jsonl``."""
    for d in drops:
        report.drop(d)
    with atomic_open(out / DROPS) as f:       # line by line: the whole list as one text took
        f.writelines((json.dumps(asdict(d), sort_keys=True) + "\n").encode() for d in drops)  # ~0.5 kB a drop more


def where_listed(out_dir: str | Path, report: StageReport) -> str:
    """Where a stage's summary line sends the reader for its drops (``dvc repro``'s log names no file
    otherwise; ``ferdata prepare``'s last line does): "" when it dropped nothing."""
    if not report.dropped:
        return ""
    return f" (each listed in {Path(out_dir) / DROPS}, counts and examples in {Path(out_dir) / REPORT})"


def warn_subset_losses(stage: str, lost: dict[str, list[str]], out_dir: str | Path, why: str) -> None:
    """Warn of each test subset (``options.subsets``) that ``stage`` drops listed images of (subset -> their
    keys; ``why``: the stage's reasons): the evaluator scores the subset without them, where the reader
    counted only those missing or excluded."""
    for name, keys in sorted(lost.items()):
        logging.getLogger(f"ferdata.stages.{stage}").warning(
            "%s: subset %r loses %d of its listed images here (%s), e.g. %s: the evaluator scores it without them; "
            "see %s", stage, name, len(keys), why, keys[0], Path(out_dir) / DROPS)
