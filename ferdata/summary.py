"""What a split's ``_info.json`` says of its samples, from their records: the class histogram, the
named test subsets, the face backends that made the crops and the label modes training reads.
One definition for the shard stage, which writes it, and ``ferdata verify``, which rebuilds it
from the samples' own ``cls`` and ``json`` to check it (:mod:`ferdata.verify`); and the kinds of
the file's fields (:func:`check_info`), which verify and every reader check alike."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping

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


def check_info(info: Mapping[str, Any]) -> None:
    """Raise ``TypeError`` naming the first field of a split's ``_info.json`` that is not of the kind
    the shard stage writes and the readers use (a hand edit, a damaged copy): a file verify passed
    gave training a TypeError traceback or "error: options"."""
    shards = info.get("shards")
    if not isinstance(shards, list) or not all(isinstance(s, dict) for s in shards):
        raise TypeError("shards is not a list of shard entries")
    for s in shards:
        if not isinstance(s.get("name"), str) or not isinstance(s.get("sha256"), str):
            raise TypeError("a shard's name or sha256 is not text")
        if not _whole(s.get("count")):
            raise TypeError("a shard's count is not a whole number")
        if "bytes" in s and not _whole(s["bytes"]):          # null too: training compares it with the file's size
            raise TypeError("a shard's bytes is not a whole number")
    if "num_samples" in info and not _whole(info["num_samples"]):   # verify compares it with the samples
        raise TypeError("num_samples is not a whole number")
    labels = info.get("label_map", [])
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise TypeError("label_map is not a list of class names")
    for name, of in (("class_histogram", "class names"), ("face_backends", "backend names"),
                     ("soft_labels", "label modes"), ("dropped_in_preparation", "drop reasons")):
        counts = info.get(name, {})
        if not isinstance(counts, dict) or not all(_whole(n) for n in counts.values()):
            raise TypeError(f"{name} is not {of} to counts")
    subsets = info.get("subsets", {})
    if not isinstance(subsets, dict) or not all(isinstance(m, list) and all(isinstance(k, str) for k in m)
                                                for m in subsets.values()):
        raise TypeError("subsets is not names to lists of sample keys")
    detect = info.get("detect")
    if detect and not (isinstance(detect, dict) and isinstance(detect.get("options"), dict)):
        raise TypeError("detect is not the face backend's settings (backend, options)")
    if not isinstance(info.get("grey_faces", False), bool):
        raise TypeError("grey_faces is not true or false")
    if not isinstance(info.get("cross_split_copies", ""), str):
        raise TypeError("cross_split_copies is not a setting's name (align.cross_split_copies)")
    pre = info.get("preprocess")
    if pre and not (isinstance(pre, dict) and isinstance(pre.get("align"), dict) and _whole(pre["align"].get("size"))):
        raise TypeError("preprocess is not the align/derive settings (align.size)")


def _whole(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0
