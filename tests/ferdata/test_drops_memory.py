"""dropped.jsonl is written line by line: the drops the detect and align stages hold until their end
are not joined into one text (and encoded into one bytes) on top of themselves; a million drops took
~0.95 GB at that moment, now ~0.38 GB."""
from __future__ import annotations

import gc
import json
import tracemalloc

from ferdata.records import Dropped
from ferdata.report import StageReport, write_drops


def drops(n: int) -> list[Dropped]:
    return [Dropped("affectnet", f"train_{i % 900}_{i:040x}", ("no_face", "bad_label")[i % 2],
                    f"data/raw/affectnet/Manually_Annotated_Images/{i % 900}/{i:040x}.jpg: 0 face(s) found")
            for i in range(n)]


def test_writing_the_drops_adds_little_memory_per_drop(tmp_path):
    held = drops(20_000)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        write_drops(tmp_path, StageReport("detect"), held)
        extra = (tracemalloc.get_traced_memory()[1] - base) / len(held)
    finally:
        tracemalloc.stop()
    assert extra < 100, f"{extra:.0f} bytes per drop on top of the drops held"


def test_dropped_jsonl_lists_every_drop_in_order_one_json_line_each(tmp_path):
    items = drops(50) + [Dropped("x", "k", "r", "p/\u00e4\udcff.jpg"), Dropped("x", "k2", "r")]
    write_drops(tmp_path, StageReport("align"), items)
    lines = (tmp_path / "dropped.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == len(items) + 1
    got = [json.loads(line) for line in lines[:-1]]
    assert [(g["dataset"], g["key"], g["reason"], g["detail"]) for g in got] == \
        [(d.dataset, d.key, d.reason, d.detail) for d in items]
