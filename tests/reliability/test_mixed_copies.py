"""A shards folder copied together from two preparations (val from a run with another crop size
and padding): every split matches its own _info.json, so each check per split passed. `ferdata
verify` and training compare what made the splits; `ferdata show` tells an unwritable sheet path
before reading; a class a model lacks is named with the dataset holding it. Shards are made by
hand here, as the shard stage writes them."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferdata.classes import CLASSES
from ferdata.verify import verify_shards

PRE = {"align": {"size": 112, "padding": 0.0, "jpeg_quality": 95},
       "derive": {"heatmap_size": 28, "heatmap_sigma": 1.0, "jpeg_quality": 95}}
OTHER = {"align": {"size": 128, "padding": 0.4, "jpeg_quality": 95}, "derive": PRE["derive"]}
DETECT = {"backend": "embedded", "options": {"det_size": 640}}


def _split(root: Path, split: str, keys: list[str], preprocess: dict, label: str = "Happy") -> None:
    """One shard of samples (jpg, cls, json and the derive stage's halves and regions) and its _info.json."""
    folder = root / split
    folder.mkdir(parents=True)
    side = preprocess["align"]["size"]                  # faces as the preparation made them
    face = cv2.imencode(".jpg", np.full((side, side, 3), 128, np.uint8))[1].tobytes()
    half = cv2.imencode(".jpg", np.full((side, side // 2, 3), 128, np.uint8))[1].tobytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key in keys:
            cls = CLASSES.index(label)
            meta = json.dumps({"key": key, "label": cls, "backend": "embedded", "split": split}).encode()
            for ext, data in (("cls", str(cls).encode()), ("jpg", face), ("json", meta), ("left.jpg", half),
                              ("right.jpg", half), ("regions.json", b'{"fixed": {}}')):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    name = f"{split}-000000.tar"
    (folder / name).write_bytes(data)
    info = {"split": split, "num_samples": len(keys), "label_map": list(CLASSES),
            "shards": [{"name": name, "count": len(keys), "sha256": hashlib.sha256(data).hexdigest(),
                        "bytes": len(data)}],
            "class_histogram": {c: (len(keys) if c == label else 0) for c in CLASSES},
            "subsets": {}, "face_backends": {"embedded": len(keys)}, "datasets": ["affectnet"],
            "params_hash": "c6703550bc8a778e", "preprocess": preprocess, "detect": DETECT}
    (folder / "_info.json").write_text(json.dumps(info, indent=2, sort_keys=True))


def _shards(root: Path, val_preprocess: dict = PRE, train_label: str = "Happy") -> Path:
    _split(root, "train", ["a1", "a2"], PRE, train_label)
    _split(root, "val", ["b1"], val_preprocess)
    _split(root, "test", ["c1"], PRE)
    return root


def test_verify_names_splits_from_two_preparations(tmp_path):
    assert verify_shards(_shards(tmp_path / "one")) == []
    problems = verify_shards(_shards(tmp_path / "mixed", val_preprocess=OTHER))
    assert len(problems) == 1 and "and val come from two preparations (preprocess" in problems[0], problems


def test_training_refuses_a_val_split_prepared_otherwise(tmp_path):
    """best.pt would have been chosen on faces cropped at another size and padding, silently."""
    from fermodels.shardsplit import open_split
    from fermodels.trainparams import check_same_preparation

    root = tmp_path
    for name, val in (("one", PRE), ("mixed", OTHER)):
        _shards(root / name, val_preprocess=val)
    check_same_preparation(open_split([root / "one"], "train"), open_split([root / "one"], "val"))
    with pytest.raises(ValueError, match=r"val split of .*mixed was made by another run than the train split "
                                         r"\(align.padding 0.0 \(train\) vs 0.4 \(val\); align.size 112"):
        check_same_preparation(open_split([root / "mixed"], "train"), open_split([root / "mixed"], "val"))


def test_show_tells_an_unwritable_sheet_path_before_reading(tmp_path, monkeypatch):
    """It read and drew every sample (minutes for -n 5000) before finding that --out could not be
    written (a file where its folder must be)."""
    import ferdata.show as show_mod

    shards = _shards(tmp_path / "shards")
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    read = []
    real = show_mod._samples
    monkeypatch.setattr(show_mod, "_samples", lambda *a, **k: read.append(1) or real(*a, **k))
    with pytest.raises(ValueError, match="the contact sheet cannot write in"):
        show_mod.show(shards, blocker / "sheet.png", 4)
    assert not read, "samples were read and drawn before --out was found unwritable"


def test_a_class_the_model_lacks_is_named_with_the_datasets_that_hold_it(tmp_path):
    """Training a 7-class model on several datasets, one with Contempt: the refusal named every
    training folder; it names the one holding Contempt."""
    from fermodels.shardsplit import open_split
    from fermodels.trainparams import check_classes

    raf, ck = _shards(tmp_path / "rafdb"), _shards(tmp_path / "ckplus", train_label="Contempt")
    train, val = open_split([raf, ck], "train"), open_split([raf, ck], "val")
    check_classes(train, val, 8)
    with pytest.raises(ValueError) as refused:
        check_classes(train, val, 7)
    assert f"train split of {ck} holds {{'Contempt': 2}}, which a 7-class model" in str(refused.value)


def test_training_refuses_a_val_split_from_another_shard_run_of_the_same_crops(tmp_path):
    """Only the align/derive settings were compared: a val split from a run with another shard.seed
    (same crops, other faces dealt to val, some of them trained on) passed."""
    from fermodels.shardsplit import open_split
    from fermodels.trainparams import check_same_preparation

    mixed = _shards(tmp_path / "mixed")
    info = mixed / "val" / "_info.json"
    info.write_text(json.dumps({**json.loads(info.read_text()), "params_hash": "80c511a9a94efa34"}))
    assert any("two preparations (params_hash" in p for p in verify_shards(mixed))
    with pytest.raises(ValueError, match=r"made by another run than the train split \(params_hash 'c6703550bc8a778e' "
                                         r"\(train\) vs '80c511a9a94efa34' \(val\)\)"):
        check_same_preparation(open_split([mixed], "train"), open_split([mixed], "val"))
