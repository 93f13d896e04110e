"""SplitSummary's face backends and label modes for samples whose json leaves them out or empty."""
from __future__ import annotations

from ferdata.records import LABEL_MODE, SOFT_LABEL
from ferdata.summary import SplitSummary


def test_a_sample_with_a_null_or_empty_backend_counts_as_unknown():
    """A json backend of null or "" counts as "unknown", like a missing one (a null key is no JSON name)."""
    s = SplitSummary()
    s.add("a", 0, {"backend": None})
    s.add("b", 0, {"backend": ""})
    s.add("c", 0, {"backend": "embedded"})
    assert s.info()["face_backends"] == {"embedded": 1, "unknown": 2}


def test_a_label_mode_without_a_distribution_is_no_soft_label():
    """Only samples that carry a distribution count in soft_labels (training switches targets on it)."""
    s = SplitSummary()
    s.add("a", 1, {"backend": "embedded", "extra": {LABEL_MODE: "probability"}})
    assert "soft_labels" not in s.info()
    s.add("b", 1, {"backend": "embedded", "extra": {LABEL_MODE: "probability", SOFT_LABEL: [0.0, 1.0] + [0.0] * 6}})
    assert s.info()["soft_labels"] == {"probability": 1}
