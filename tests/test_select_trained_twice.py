"""A run of several datasets whose training splits hold the same picture (RAF-DB and a folder copy of it,
FER2013 and FERPlus): within one dataset the align stage keeps such a copy once, or drops the copies whose labels
disagree; across datasets each copy was trained on, under each dataset's label, and the select stage said nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from ferdata.tario import TarShardWriter


def prepare_pictures(data, name, splits: dict[str, dict[str, int]], key: str = "{name}_{i}") -> None:
    """A prepared dataset whose splits hold pictures (sha256 in each ``json``) of the given class ids, each
    sample keyed by ``key`` (``name``, ``split`` and its position ``i``); a split not given is empty."""
    shards = data / name / "shards"
    for split in ("train", "val", "test"):
        (shards / split).mkdir(parents=True, exist_ok=True)
        with TarShardWriter(shards / split, split, 1000) as writer:
            for i, (sha, label) in enumerate(splits.get(split, {}).items()):
                writer.write(key.format(name=name, split=split, i=i), {
                    "jpg": f"face of {sha}".encode(), "cls": str(label).encode(),
                    "json": json.dumps({"sha256": sha, "split": split}).encode()})
        info = {"split": split, "shards": [{"name": f.path.name, "count": f.count, "sha256": f.sha256,
                                            "bytes": f.size} for f in writer.files]}
        (shards / split / "_info.json").write_text(json.dumps(info))


def _prepare(data, name, train: dict[str, int]) -> None:
    """A prepared dataset whose train split holds pictures of the given class ids."""
    prepare_pictures(data, name, {"train": train})


def test_a_face_two_datasets_of_the_run_train_on_is_named_with_its_two_labels(tmp_path):
    from ferdata.selection import trained_twice

    data = tmp_path / "data"
    _prepare(data, "rafdb", {"p0": 1, "p1": 2, "p2": 3})
    _prepare(data, "folder", {"p1": 2, "p2": 6, "q": 0})
    assert trained_twice(data, ["rafdb", "folder"]) == ["rafdb/train/rafdb_1 is folder/train/folder_0",
                                                        "rafdb/train/rafdb_2 is folder/train/folder_1 "
                                                        "(labelled Surprise and Anger)"]
    assert trained_twice(data, ["rafdb"]) == []


def _pooled_project(tmp_path) -> None:
    """A project folder whose run trains on two prepared datasets sharing one picture, under two labels."""
    import yaml

    from tests.fermodels.helpers import REPO

    data = tmp_path / "data"
    _prepare(data, "rafdb", {"p0": 1, "p1": 2})
    _prepare(data, "folder", {"p1": 5})
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"] = {n: {"reader": "folder", "root": f"raw/{n}", "options": {}} for n in ("rafdb", "folder")}
    params["train"]["datasets"] = ["rafdb", "folder"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))


def test_the_select_stage_warns_of_them(tmp_path):
    from tests.fermodels.helpers import REPO

    _pooled_project(tmp_path)
    run = subprocess.run([sys.executable, "-m", "pipeline.select", "data", "runs/select"], cwd=tmp_path,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr
    assert "1 face(s) are in the train splits of two datasets of this run" in run.stderr
    assert "1 of them under two labels" in run.stderr and "(labelled Sad and Disgust)" in run.stderr


def test_the_select_stage_reads_each_train_split_once(tmp_path, monkeypatch):
    """Both checks of a pooled run read the train splits (every sample's json and jpg: 20-30 s per 100k
    samples): trained_twice read them again after copies_across_datasets, doubling the select stage's time."""
    import ferdata.selection
    import pipeline.select

    _pooled_project(tmp_path)
    read, pictures = [], ferdata.selection._pictures
    monkeypatch.setattr(ferdata.selection, "_pictures",
                        lambda shards, split: read.append((shards.parent.name, split)) or pictures(shards, split))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["select.py", "data", "runs/select"])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setitem(sys.modules, "__main__", pipeline.select)      # setup() reads its usage line
    pipeline.select.main()
    assert ("rafdb", "train") in read and len(read) == len(set(read)), read
