"""What a split's ``_info.json`` says of its samples, from their records: the class histogram, the
named test subsets, the face backends that made the crops and the label modes training reads.
One definition for the shard stage, which writes it, and ``ferdata verify``, which rebuilds it
from the samples' own ``cls`` and ``json`` to check it (:mod:`ferdata.verify`)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ferdata.classes import CLASSES
from ferdata.records import LABEL_MODE, SOFT_LABEL


@dataclass
class SplitSummary:
    """The summaries of the samples added so far."""

    classes: Counter = field(default_factory=Counter)              # class id -> samples
    subsets: dict[str, set[str]] = field(default_factory=dict)     # test subset -> its sample keys
    backends: Counter = field(default_factory=Counter)             # face backend -> samples whose crop it made
    soft: Counter = field(default_factory=Counter)                 # label mode -> samples with a distribution

    def add(self, key: str, label: int | None, meta: dict) -> None:
        """Sample ``key`` of class ``label`` (None: not counted) with its record fields ``meta``
        (``backend``, ``extra``: a sample's ``json``)."""
        if label is not None:
            self.classes[label] += 1
        self.backends[meta.get("backend") or "unknown"] += 1
        extra = meta.get("extra") if isinstance(meta.get("extra"), dict) else {}
        if SOFT_LABEL in extra and extra.get(LABEL_MODE, "majority") != "majority":
            self.soft[extra[LABEL_MODE]] += 1                      # "majority": trained on the label alone
        for name in extra.get("subsets") or ():
            self.subsets.setdefault(name, set()).add(key)

    def info(self) -> dict:
        """The ``_info.json`` fields; ``soft_labels`` only when some sample has a distribution (other
        datasets' info files stay as they were)."""
        out = {"class_histogram": {c: self.classes.get(i, 0) for i, c in enumerate(CLASSES)},
               "subsets": {name: sorted(keys) for name, keys in sorted(self.subsets.items())},
               "face_backends": dict(sorted(self.backends.items()))}
        if self.soft:
            out["soft_labels"] = dict(sorted(self.soft.items()))
        return out
