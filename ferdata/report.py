"""Stage reports: what was kept, what was dropped and why, written as JSON."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

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

    def drop(self, item: Dropped) -> None:
        self.dropped[item.reason] += 1
        ex = self.examples.setdefault(item.reason, [])
        if len(ex) < MAX_EXAMPLES:
            ex.append({"key": item.key, "dataset": item.dataset, "detail": item.detail})

    def to_dict(self) -> dict:
        return {
            "stage": self.stage,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "dropped_total": sum(self.dropped.values()),
            "examples": {k: self.examples[k] for k in sorted(self.examples)},
            "notes": self.notes,
        }

    def write(self, path: Path) -> None:
        from ferdata.io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
