"""The shard stage's memory per sample.

The stage holds something per sample of a dataset while it writes (AffectNet: 290k faces): what it
holds is bounded here by tracemalloc, not by time or RSS, which other allocations move. The inputs
are synthetic: the stage reads no pixels, so members are a few fake bytes. (What it writes is the
other shard tests' concern; holding less changed no byte of it, checked old against new code.)
"""
from __future__ import annotations

import gc
import hashlib
import json
import tracemalloc
from pathlib import Path

import pytest

import ferdata.stages.shard as shard
from ferdata.layout import ALIGNED, CONTENT, DERIVED, REPORT, output_digest
from ferdata.report import StageReport
from ferdata.stages.shard import ShardParams, run_shard
from ferdata.tario import TarShardWriter, content_digest


def make_inputs(root: Path, n: int, kfold: bool = False, chunk: int = 500) -> None:
    """``root/aligned`` and ``root/derived`` of ``n`` AffectNet-like samples (k-fold: a JAFFE-like
    dataset with subjects and no split), each record field kind the stage reads: subsets, a soft
    label, a training-only record, an ``extra`` missing or null (the stage writes it as ``{}``)."""
    for name in ("aligned", "derived"):
        (root / name).mkdir(parents=True)
    with (TarShardWriter(root / "aligned", ALIGNED, chunk) as wa,
          TarShardWriter(root / "derived", DERIVED, chunk) as wd):
        for i in range(n):
            h = hashlib.sha256(str(i).encode()).hexdigest()
            split = "" if kfold else "test" if i % 9 == 0 else "train"
            key = f"{split or 'all'}_{i % 97}_{h[:40]}"
            extra: dict | None = {"valence": round((i % 13) / 13 - 0.5, 4), "arousal": round((i % 7) / 7, 4)}
            if i % 5 == 0:
                extra["subsets"] = ["occlusion"] + (["pose_30"] if i % 10 == 0 else [])
            if i % 17 == 0:
                extra.update(soft_label=[0.5, 0.5, 0, 0, 0, 0, 0, 0], label_mode="crossentropy")
            if i % 23 == 0:
                extra["train_only"] = True
            meta = {"dataset": "jaffe" if kfold else "affectnet", "key": key,
                    "path": f"data/raw/x/{i % 97}/{h[:40]}.jpg", "label": i % 7, "native_label": str(i % 7),
                    "split": split, "subject": f"s{i % 11}" if kfold else "", "extra": extra,
                    "backend": ("annotations", "embedded")[i % 2], "score": 0.99, "box": [1.5, 2.5, 90.0, 99.25],
                    "num_faces": 1, "matrix": [[0.68, -0.18, -15.2], [0.18, 0.68, -24.1]], "size": 112,
                    "sha256": h}
            if i % 29 == 0:
                meta["extra"] = None
            if i % 31 == 0:
                del meta["extra"], meta["backend"]
            fields = {"jpg": b"\xff\xd8" + h[:20].encode(), "json": json.dumps(meta, sort_keys=True).encode()}
            if i % 19:                                                  # a precropped face has no landmarks
                fields["lmk.npy"] = h.encode()
            wa.write(key, fields)
            derived = {"left.jpg": h[:8].encode(), "right.jpg": h[8:16].encode(), "regions.json": b"{}"}
            if i % 19:
                derived["heatmap.png"] = h[16:30].encode()
            wd.write(key, derived)
    align = StageReport("align", kept=n, settings={"size": 112, "padding": 0.0, "jpeg_quality": 95,
                                                   "detect": {"backend": "annotations", "options": {}},
                                                   **({} if kfold else {"official_splits": ["test", "train"]}),
                                                   "source": {"reader": "x", "options": {}}})
    align.notes[CONTENT] = content_digest(wa.files)
    align.write(root / "aligned" / REPORT)
    StageReport("derive", kept=n, settings={"heatmap_size": 28, "heatmap_sigma": 1.0, "jpeg_quality": 95},
                inputs={ALIGNED: output_digest(root / "aligned", ALIGNED)}).write(root / "derived" / REPORT)


PARAMS = dict(seed=3, val_fraction=0.2, test_fraction=0.1, split_by="subject", folds=0, fold=0, maxcount=40)


# Held per sample while the shards are written: the two member indexes, the keys and their splits.
# Measured (synthetic AffectNet-like records, 3 + 4 members): ~0.39 kB; before, ~2.9 kB (a dict per
# sample and member in each index, and each sample's record fields).
HELD_PER_SAMPLE = 700


@pytest.mark.parametrize("kfold", [False, True], ids=["carved", "kfold"])
def test_memory_held_per_sample_while_writing_is_bounded(tmp_path, monkeypatch, kfold):
    n = 4000
    make_inputs(tmp_path, n, kfold=kfold, chunk=1000)
    held: list[int] = []
    real = shard._write_split

    def measured(*args, **kwargs):
        if not held:                # the first split: everything kept for the writes is built by now
            gc.collect()
            held.append(tracemalloc.get_traced_memory()[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(shard, "_write_split", measured)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        params = ShardParams(**{**PARAMS, **({"folds": 5, "fold": 2} if kfold else {})})
        run_shard(tmp_path / "aligned", tmp_path / "derived", params, tmp_path / "shards")
    finally:
        tracemalloc.stop()
    per_sample = (held[0] - base) / n
    assert per_sample < HELD_PER_SAMPLE, f"{per_sample:.0f} bytes held per sample"
