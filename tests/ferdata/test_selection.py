"""The `select` stage's pinned selection: its bytes change exactly when the data its consumer reads
changes, and a consumer refuses shards that changed after it was written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ferdata.selection import SelectionError, read_selection, split_digest, write_selection

TRAIN = ("train", "val")


def _prepare(data: Path, name: str, count: int = 3) -> Path:
    """A prepared dataset as far as the selection sees it: one ``_info.json`` per split."""
    shards = data / name / "shards"
    for split in ("train", "val", "test"):
        (shards / split).mkdir(parents=True, exist_ok=True)
        info = {"split": split, "shards": [{"name": f"{split}-000000.tar", "count": count, "sha256": f"{name}{split}"}]}
        (shards / split / "_info.json").write_text(json.dumps(info))
    return shards


def test_round_trip_gives_the_shard_dirs_in_params_order(tmp_path):
    a, b = _prepare(tmp_path / "data", "a"), _prepare(tmp_path / "data", "b")
    write_selection(tmp_path / "train.json", tmp_path / "data", ["b", "a"], TRAIN)
    assert read_selection(tmp_path / "train.json", ["b", "a"], TRAIN) == [b, a]


def test_preparing_or_changing_another_dataset_leaves_the_file_unchanged(tmp_path):
    data = tmp_path / "data"
    _prepare(data, "a")
    write_selection(tmp_path / "train.json", data, ["a"], TRAIN)
    before = (tmp_path / "train.json").read_bytes()
    _prepare(data, "b")                                            # another dataset prepared
    _prepare(data, "a")                                            # the same shards written again
    info = data / "a" / "shards" / "test" / "_info.json"          # a split training does not read
    info.write_text(info.read_text().replace('"count": 3', '"count": 4'))
    write_selection(tmp_path / "train.json", data, ["a"], TRAIN)
    assert (tmp_path / "train.json").read_bytes() == before
    _prepare(data, "a", count=5)                                   # the data training reads changed
    write_selection(tmp_path / "train.json", data, ["a"], TRAIN)
    assert (tmp_path / "train.json").read_bytes() != before


def test_shards_changed_after_the_selection_are_refused(tmp_path):
    data = tmp_path / "data"
    _prepare(data, "a")
    write_selection(tmp_path / "train.json", data, ["a"], TRAIN)
    _prepare(data, "a", count=5)
    with pytest.raises(SelectionError, match=r"shards \(train, val\) changed since .*dvc repro"):
        read_selection(tmp_path / "train.json", ["a"], TRAIN)


def test_what_evaluate_scores():
    from ferdata.selection import tested_on

    assert tested_on("rafdb", ["ckplus"]) == ["rafdb"]               # cross-dataset
    assert tested_on(None, ["a", "b"]) == ["a", "b"]                 # the training datasets


def test_a_selection_pinning_another_dataset_too_is_refused(tmp_path):
    for name in ("a", "b"):
        _prepare(tmp_path / "data", name)
    write_selection(tmp_path / "train.json", tmp_path / "data", ["a", "b"], TRAIN)
    with pytest.raises(SelectionError, match=r"selects \['a', 'b'\] but the params ask for \['a'\]: run `dvc repro "
                                             r"select` \(where the shards were pulled, not made here: `dvc repro -s "
                                             r"select`\)"):
        read_selection(tmp_path / "train.json", ["a"], TRAIN)


@pytest.mark.parametrize("names,splits,match", [(["a", "b"], TRAIN, r"selects \['a'\] but the params ask for"),
                                                (["a"], ("test",), r"pins the \['train', 'val'\] splits of a")])
def test_a_selection_for_other_params_is_refused(tmp_path, names, splits, match):
    _prepare(tmp_path / "data", "a")
    write_selection(tmp_path / "train.json", tmp_path / "data", ["a"], TRAIN)
    with pytest.raises(SelectionError, match=match):
        read_selection(tmp_path / "train.json", names, splits)


def test_missing_inputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data/a/shards/train/_info.json not found: prepare"):
        write_selection(tmp_path / "train.json", tmp_path / "data", ["a"], TRAIN)
    with pytest.raises(SelectionError, match=r"train.json not found: run `dvc repro select`"):
        read_selection(tmp_path / "train.json", ["a"], TRAIN)
    with pytest.raises(SelectionError, match="no datasets"):
        write_selection(tmp_path / "train.json", tmp_path / "data", [], TRAIN)
    _prepare(tmp_path / "data", "a")
    with pytest.raises(SelectionError, match=r"split 'tset' is none of train, val, test \(evaluate.split"):
        write_selection(tmp_path / "evaluate.json", tmp_path / "data", ["a"], ("tset",))  # not "tset/_info.json"


def test_a_dataset_listed_twice_is_refused_where_it_is_listed(tmp_path):
    """Writing the selection kept one entry and reading it then asked for `dvc repro select`, which
    wrote the same file again: the duplicate itself must be named, on both sides."""
    _prepare(tmp_path / "data", "a")
    with pytest.raises(SelectionError, match="listed more than once: 'a'"):
        write_selection(tmp_path / "train.json", tmp_path / "data", ["a", "a"], TRAIN)
    write_selection(tmp_path / "train.json", tmp_path / "data", ["a"], TRAIN)
    with pytest.raises(SelectionError, match="listed more than once: 'a'"):
        read_selection(tmp_path / "train.json", ["a", "a"], TRAIN)


def test_a_selection_of_the_previous_version_says_to_run_select_again(tmp_path):
    """Version 1 pinned the whole _info.json (params_hash included): against unchanged shards it
    read as changed data; now its version names the fix."""
    _prepare(tmp_path / "data", "a")
    chosen = write_selection(tmp_path / "train.json", tmp_path / "data", ["a"], TRAIN)
    (tmp_path / "train.json").write_text(json.dumps({**chosen, "version": 1}))
    with pytest.raises(SelectionError, match="has version 1, expected 2"):
        read_selection(tmp_path / "train.json", ["a"], TRAIN)


def test_an_info_file_that_is_not_an_object_is_named(tmp_path):
    shards = _prepare(tmp_path / "data", "a")
    (shards / "train" / "_info.json").write_text("[1, 2]")
    with pytest.raises(SelectionError, match=r"_info.json holds a list, not a split's description"):
        write_selection(tmp_path / "train.json", tmp_path / "data", ["a"], TRAIN)


@pytest.mark.parametrize("names", ["a", [["a"]], [5], [""]])
def test_names_of_the_wrong_kind_are_refused(tmp_path, names):
    """train.datasets: sample (no list) looked for data/s/shards/...; evaluate.dataset: [sample] or 5
    gave TypeError tracebacks in the select stage."""
    _prepare(tmp_path / "data", "a")
    with pytest.raises(SelectionError, match="datasets must be named as a list of prepared datasets' names"):
        write_selection(tmp_path / "train.json", tmp_path / "data", names, TRAIN)


def test_a_selection_pinning_more_splits_than_are_read_is_refused(tmp_path):
    """Bug guarded: pinned splits compared as "covers what is read" instead of "exactly": a file
    pinning train, val and test (the evaluator's) passed for training, which reads train and val."""
    _prepare(tmp_path / "data", "a")
    write_selection(tmp_path / "all.json", tmp_path / "data", ["a"], ("train", "val", "test"))
    with pytest.raises(SelectionError, match=r"pins the \['test', 'train', 'val'\] splits of a"):
        read_selection(tmp_path / "all.json", ["a"], TRAIN)


@pytest.mark.parametrize("text, says", [
    ('<<<<<<< HEAD\n{"version": 2}\n=======\n', r"train.json is not JSON \(.*; a merge conflict\?\): run `dvc repro "
                                                r"select`"),
    ('["x"]', r"train.json holds a list, not a selection: run `dvc repro select`"),
    ("VERSION", r"train.json is damaged \(its datasets are not the select stage's\): run `dvc repro select`"),
    ("VERSION-datasets-list", r"train.json is damaged")])
def test_a_selection_file_that_is_not_one_is_named(tmp_path, text, says):
    """The selection files are git-tracked: a merge can leave conflict markers. They gave 'Expecting
    value: line 1 column 1', an AttributeError traceback or 'error: datasets'."""
    from ferdata.selection import VERSION

    text = {"VERSION": json.dumps({"version": VERSION}),
            "VERSION-datasets-list": json.dumps({"version": VERSION, "datasets": {"a": ["shards"]}})}.get(text, text)
    (tmp_path / "train.json").write_text(text)
    with pytest.raises(SelectionError, match=says):
        read_selection(tmp_path / "train.json", ["a"], TRAIN)


def test_a_training_split_whose_info_is_not_json_is_named(tmp_path):
    from fermodels.shardsplit import open_split

    shards = _prepare(tmp_path / "data", "a")
    (shards / "val" / "_info.json").write_text("{'split': 'val'")
    with pytest.raises(SelectionError, match=r"val/_info.json is not JSON .*: prepare the dataset again"):
        open_split([shards], "val")


CONTENT = {"split": "train", "num_samples": 3, "label_map": ["Neutral"], "class_histogram": {"Neutral": 3},
        "shards": [{"name": "train-000000.tar", "count": 3, "sha256": "ab" * 32, "bytes": 10240}]}


def _write_info(shards: Path, info: dict) -> Path:
    (shards / "train").mkdir(parents=True)
    (shards / "train" / "_info.json").write_text(json.dumps(info))
    return shards


def test_a_splits_pin_does_not_depend_on_the_key_order_of_its_info_file(tmp_path):
    """Two _info.json files that say the same (fields in another order) pin alike: the digest is of the content."""
    reordered = {k: CONTENT[k] for k in reversed(list(CONTENT))}
    reordered["shards"] = [dict(reversed(list(s.items()))) for s in CONTENT["shards"]]
    assert json.dumps(reordered) != json.dumps(CONTENT) and json.loads(json.dumps(reordered)) == CONTENT
    a, b = _write_info(tmp_path / "a", CONTENT), _write_info(tmp_path / "b", reordered)
    assert split_digest(a, "train") == split_digest(b, "train")
    changed = _write_info(tmp_path / "c", {**CONTENT, "num_samples": 4})
    assert split_digest(changed, "train") != split_digest(a, "train")


def _prepare_pictures(data: Path, name: str, pictures: dict[str, list[str]],
                      faces: dict[str, str] | None = None) -> Path:
    """A prepared dataset whose splits hold samples of the given source pictures (sha256 in each ``json``),
    each aligned face (``jpg``) its own unless ``faces`` gives it (picture -> face bytes)."""
    from ferdata.tario import TarShardWriter
    shards = data / name / "shards"
    for split in ("train", "val", "test"):
        (shards / split).mkdir(parents=True, exist_ok=True)
        with TarShardWriter(shards / split, split, 1000) as writer:
            for i, sha in enumerate(pictures.get(split, [])):
                member = json.dumps({"sha256": sha, "split": split}).encode()
                writer.write(f"{split}_{i}", {"jpg": (faces or {}).get(sha, f"face of {sha}").encode(), "json": member})
        info = {"split": split, "shards": [{"name": f.path.name, "count": f.count, "sha256": f.sha256,
                                            "bytes": f.size} for f in writer.files]}
        (shards / split / "_info.json").write_text(json.dumps(info))
    return shards


def test_a_held_out_face_that_another_dataset_of_the_run_trains_on_is_found(tmp_path):
    """Mixed datasets: RAF-DB's test face p1 is in a folder dataset's train split, its val face p4 in the
    folder's train. Each dataset's align stage sees only its own copies: nothing said so, and the run
    trained on faces it was scored on (and picked its epoch on a face it trained on)."""
    from ferdata.selection import copies_across_datasets
    data = tmp_path / "data"
    _prepare_pictures(data, "rafdb", {"train": ["p0"], "val": ["p4"], "test": ["p1", "p2"]})
    _prepare_pictures(data, "other", {"train": ["p1", "p4", "p5"], "val": ["p2"], "test": ["p6"]})
    assert copies_across_datasets(data, ["rafdb", "other"], ["rafdb", "other"], "test") == [
        "rafdb/val/val_0 is other/train/train_1", "rafdb/test/test_0 is other/train/train_0",
        "rafdb/test/test_1 is other/val/val_0"]
    assert copies_across_datasets(data, ["other"], ["rafdb"], "test") == [          # cross-dataset evaluation
        "rafdb/test/test_0 is other/train/train_0", "rafdb/test/test_1 is other/val/val_0"]
    assert copies_across_datasets(data, ["rafdb"], ["rafdb"], "test") == []         # one dataset: align's to judge
    _prepare_pictures(data, "clean", {"train": ["q0"], "val": ["q1"], "test": ["q2"]})
    assert copies_across_datasets(data, ["rafdb", "clean"], ["rafdb", "clean"], "test") == []


def test_a_picture_stored_in_other_bytes_by_another_dataset_is_found_by_its_face(tmp_path):
    """FER2013's CSV rows (PNG bytes made by the reader) and FERPlus's converted folders (PNGs written by
    Microsoft's generate_training_data.py) hold the same pixels in other files: their sha256 differ, their
    aligned faces do not. A FER2013 training picture that FERPlus tests on (FER2013's cross-split copies)
    was not found, so the run scored faces it trained on without a word."""
    from ferdata.selection import copies_across_datasets
    data = tmp_path / "data"
    _prepare_pictures(data, "fer2013", {"train": ["csv5"], "val": ["csv80"], "test": ["csv105"]},
                      faces={"csv5": "face5", "csv80": "face80", "csv105": "face5"})
    _prepare_pictures(data, "ferplus", {"train": ["png5"], "val": ["png80"], "test": ["png105"]},
                      faces={"png5": "face5", "png80": "face80", "png105": "face5"})
    assert copies_across_datasets(data, ["fer2013"], ["ferplus"], "test") == [
        "ferplus/test/test_0 is fer2013/train/train_0"]
    _prepare_pictures(data, "same", {"train": ["other"], "test": ["csv5"]},
                      faces={"csv5": "face5"})                  # the same picture and face: said once
    assert copies_across_datasets(data, ["fer2013"], ["same"], "test") == ["same/test/test_0 is fer2013/train/train_0"]


def test_a_held_out_face_matched_by_its_picture_and_by_its_face_is_one_copy(tmp_path):
    """A held-out sample whose picture is one training sample's and whose aligned face another's (two copies of
    one face in the other dataset) was two lines, and the select stage's count of held-out faces said 2."""
    from ferdata.selection import copies_across_datasets
    data = tmp_path / "data"
    _prepare_pictures(data, "a", {"train": ["p1", "p2"]}, faces={"p1": "other face", "p2": "face"})
    _prepare_pictures(data, "b", {"train": ["q"], "test": ["p1"]}, faces={"p1": "face"})
    assert copies_across_datasets(data, ["a", "b"], ["b"], "test") == ["b/test/test_0 is a/train/train_0"]


def test_a_cross_dataset_target_scored_whole_is_searched_for_copies_in_every_split(tmp_path):
    """``evaluate.split: all`` scores every split of the target: a copy of a training face in the target's
    train or val split is scored too, and must be found (searching per split missed the train split and
    said a training dataset's val copies three times)."""
    from ferdata.selection import check_run_datasets, copies_across_datasets
    data = tmp_path / "data"
    _prepare_pictures(data, "jaffe", {"train": ["p1"], "val": ["p2"], "test": ["p3"]})
    _prepare_pictures(data, "rafdb", {"train": ["p2", "x"], "val": ["p1"], "test": ["p3"]})
    _prepare_pictures(data, "other", {"train": ["p1"], "val": ["y"]})
    assert copies_across_datasets(data, ["rafdb", "other"], ["jaffe"], "all") == [
        "rafdb/val/val_0 is other/train/train_0",
        "jaffe/train/train_0 is rafdb/val/val_0", "jaffe/train/train_0 is other/train/train_0",
        "jaffe/val/val_0 is rafdb/train/train_0"]
    specs = {"jaffe": {}, "rafdb": {}}
    check_run_datasets(["rafdb"], "jaffe", specs, data, "all")
    with pytest.raises(ValueError, match="evaluate.split all scores every split of evaluate.dataset 'rafdb'"):
        check_run_datasets(["rafdb"], "rafdb", specs, data, "all")
