"""A run pooling two datasets whose test splits hold the same pictures (FER2013's PrivateTest and FERPlus's test
are one set of pictures): the pooled figures scored each such face twice, under each dataset's label, and neither
the select stage nor evaluate said so (it warned only of held-out faces another dataset trains on)."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.test_select_trained_twice import prepare_pictures


def _prepare(data, name, pictures: dict[str, list[str]]) -> None:
    """A prepared dataset whose splits hold the given pictures, class 0, keyed ``<split>_<i>``."""
    prepare_pictures(data, name, {split: dict.fromkeys(shas, 0) for split, shas in pictures.items()}, "{split}_{i}")


def test_test_faces_two_scored_datasets_hold_are_named(tmp_path):
    from ferdata.selection import scored_twice

    data = tmp_path / "data"
    _prepare(data, "fer2013", {"train": ["a"], "test": ["t0", "t1", "t2"]})
    _prepare(data, "ferplus", {"train": ["a"], "test": ["t1", "t2", "u"]})
    assert scored_twice(data, ["fer2013", "ferplus"], "test") == ["fer2013/test/test_1 is ferplus/test/test_0",
                                                                  "fer2013/test/test_2 is ferplus/test/test_1"]
    assert scored_twice(data, ["fer2013"], "test") == []
    assert scored_twice(data, ["fer2013", "ferplus"], "val") == []


def test_the_select_stage_warns_of_them(tmp_path):
    import yaml

    from tests.fermodels.helpers import REPO

    data = tmp_path / "data"
    _prepare(data, "fer2013", {"train": ["a"], "test": ["t0", "t1"]})
    _prepare(data, "ferplus", {"train": ["b"], "test": ["t1"]})
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"] = {n: {"reader": n, "root": "raw/FER", "options": {}} for n in ("fer2013", "ferplus")}
    params["train"]["datasets"] = ["fer2013", "ferplus"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run = subprocess.run([sys.executable, "-m", "pipeline.select", "data", "runs/select"], cwd=tmp_path,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr
    assert "1 scored face(s) are copies of a face in the test split of another dataset of this run" in run.stderr
    assert "fer2013/test/test_1 is ferplus/test/test_0" in run.stderr


def test_a_face_in_three_datasets_is_counted_once_per_extra_score(tmp_path):
    from ferdata.selection import scored_twice

    data = tmp_path / "data"
    for name, test in (("fer2013", ["t0", "t1"]), ("ferplus", ["t0"]), ("copy", ["t0", "t1"])):
        _prepare(data, name, {"train": [name], "test": test})
    assert scored_twice(data, ["fer2013", "ferplus", "copy"], "test") == [
        "fer2013/test/test_0 is ferplus/test/test_0", "fer2013/test/test_0 is copy/test/test_0",
        "fer2013/test/test_1 is copy/test/test_1"]          # t0 scored thrice: two extra scores, not three pairs


def test_the_stages_three_warnings_come_from_one_read_of_each_split(tmp_path, monkeypatch):
    """The select stage's warnings of shared faces (held out but trained on, trained on twice, scored twice)
    are :func:`ferdata.selection.copy_warnings`'s: one text each, every split's members read once."""
    import ferdata.selection as selection

    data = tmp_path / "data"
    _prepare(data, "fer2013", {"train": ["a", "s"], "test": ["t0", "t1"]})
    _prepare(data, "ferplus", {"train": ["a"], "test": ["t1", "s"]})
    reads = []
    real = selection._pictures

    def counted(shards, split):
        reads.append((shards, split))
        return real(shards, split)
    monkeypatch.setattr(selection, "_pictures", counted)
    told = selection.copy_warnings(data, ["fer2013", "ferplus"], ["fer2013", "ferplus"], "test")
    starts = [t.split(" face(s) are ")[1][:20] for t in told]
    assert starts == ["also in a training s", "in the train splits ", "copies of a face in "], told
    assert told[0].startswith("1 held-out") and "ferplus/test/test_1 is fer2013/train/train_1" in told[0]
    assert told[1].startswith("1 face(s)") and "fer2013/train/train_0 is ferplus/train/train_0" in told[1]
    assert told[2].startswith("1 scored") and "fer2013/test/test_1 is ferplus/test/test_0" in told[2]
    assert len(reads) == len(set(reads)) and reads
    assert selection.copy_warnings(data, ["fer2013"], ["fer2013"], "test") == []
