"""`ferdata verify` after a copy, a pull or a bad disk: every way a shards folder can disagree with
its `_info.json` is named, with the file, and the command exits 1; an intact folder exits 0."""
from __future__ import annotations

import errno
import io
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ferdata.classes import CLASSES
from ferdata.cli import app
from ferdata.errors import run_cli
from ferdata.tario import TarShardWriter, iter_tar_samples, sha256_file
from ferdata.layout import INFO
from ferdata import verify
from ferdata.verify import verify_shards
from ferdata.records import LABEL_MODE, SOFT_LABEL
from ferdata.summary import SplitSummary


@pytest.fixture
def shards(tiny_shards, tmp_path) -> Path:
    copy = tmp_path / "shards"
    shutil.copytree(tiny_shards, copy)
    return copy


def _info(shards: Path, split: str = "train") -> tuple[Path, dict]:
    path = shards / split / INFO
    return path, json.loads(path.read_text())


def _first_shard(shards: Path) -> Path:
    _, info = _info(shards)
    return shards / "train" / info["shards"][0]["name"]


def _with_info(shards: Path, edit) -> None:
    path, info = _info(shards)
    edit(info)
    path.write_text(json.dumps(info))


def test_an_intact_folder_passes(shards):
    assert verify_shards(shards) == []
    result = CliRunner().invoke(app, ["verify", str(shards)])
    assert result.exit_code == 0 and "all shards match" in result.output


def _flip_a_byte(shards):
    shard = _first_shard(shards)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    return f"{shard}: sha256 mismatch"


def _delete(shards):
    shard = _first_shard(shards)
    shard.unlink()
    return f"{shard}: missing"


def _stray(shards):
    stray = shards / "train" / "train-999999.tar"
    shutil.copy2(_first_shard(shards), stray)
    return f"{stray}: shard not listed in {INFO}"


def _unreadable(shards):
    path, _ = _info(shards)
    path.write_text(path.read_text()[:-40])                     # cut short: not JSON any more
    return f"{path}: unreadable"


def _wrong_count(shards):
    """The listed count of one shard is off by one (its sha256 still matches)."""
    shard = _first_shard(shards)
    _, info = _info(shards)
    real = info["shards"][0]["count"]
    _with_info(shards, lambda i: i["shards"][0].update(count=real + 1))
    return f"{shard}: {real} samples, {INFO} says {real + 1}"


def _wrong_total(shards):
    _, info = _info(shards)
    real = info["num_samples"]
    _with_info(shards, lambda i: i.update(num_samples=real + 3))
    return f"{shards / 'train'}: {real} samples, {INFO} says {real + 3}"


def _wrong_histogram(shards):
    _, info = _info(shards)
    name, n = next((k, v) for k, v in info["class_histogram"].items() if v)
    _with_info(shards, lambda i: i["class_histogram"].update({name: n + 1}))
    return f"{shards / 'train'}: class counts"


def _label_map_permuted_with_its_histogram(shards):
    """The counts still add up under the permuted names, but training reads them in class order."""
    def permute(info):
        first, second = info["label_map"][:2]
        info["label_map"][:2] = [second, first]
        hist = info["class_histogram"]
        hist[first], hist[second] = hist[second], hist[first]
    _with_info(shards, permute)
    return f"{shards / 'train'}: {INFO}'s label_map"


def _subset_edited(shards):
    some_key = next(iter_tar_samples(_first_shard(shards)))[0]
    _with_info(shards, lambda i: i.update(subsets={"occlusion": [some_key]}))     # its json names no subset
    return f"{shards / 'train'}: subset 'occlusion' in {INFO} lists 0 keys not in the shards and 1 whose json"


def _face_backends_edited(shards):
    _with_info(shards, lambda i: i.update(face_backends={"insightface": i["num_samples"]}))
    return f"{shards / 'train'}: {INFO}'s face_backends {{'insightface'"


def _soft_labels_added(shards):
    _with_info(shards, lambda i: i.update(soft_labels={"probability": 2}))
    return f"{shards / 'train'}: {INFO}'s soft_labels {{'probability': 2}} differ from the samples' {{}}"


def _truncated_tar_with_its_hash(shards):
    """A shard cut short inside a member, its sha256 updated (a buggy writer, or someone 'fixing'
    the hash): the tar reader refuses it."""
    shard = _first_shard(shards)
    shard.write_bytes(shard.read_bytes()[:1500])
    _with_info(shards, lambda i: i["shards"][0].update(sha256=sha256_file(shard)))
    return f"{shard}: refused: "


def _compressed_with_its_hash(shards):
    """A shard gzipped and listed with its new sha256 and size: the stream reads it, evaluation's
    indexed reader cannot (offsets into the decompressed bytes); verify passed it."""
    import gzip

    shard = _first_shard(shards)
    shard.write_bytes(gzip.compress(shard.read_bytes()))
    _with_info(shards, lambda i: i["shards"][0].update(sha256=sha256_file(shard), bytes=shard.stat().st_size))
    return f"{shard}: refused: a compressed archive (gzip, bzip2, xz or zstd): its members cannot be read by offset"


def _info_lost(shards):
    """The split's _info.json did not travel: its shards were never checked, not "all match"."""
    (shards / "train" / INFO).unlink()
    return f"{shards / 'train'}: no {INFO}"


def _split_lost(shards):
    shutil.rmtree(shards / "train")
    return f"{shards / 'train'}: no {INFO}"


def _listed_twice(shards):
    """One shard listed twice, the counts doubled to match: every sample would be read twice."""
    shard = _first_shard(shards)
    _, info = _info(shards)
    first = info["shards"][0]
    _with_info(shards, lambda i: i.update(shards=[first, *i["shards"]], num_samples=i["num_samples"] + first["count"]))
    return f"{shard}: listed 2 times in {INFO}"


def _histogram_not_a_mapping(shards):
    _with_info(shards, lambda i: i.update(class_histogram=None))
    return f"{shards / 'train' / INFO}: unreadable (TypeError: class_histogram is not class names to counts"


def _relisted(shards, edit) -> tuple[Path, str]:
    """The first train shard rewritten with ``edit`` applied to its first sample's members (a dict it
    may change) and listed again with its new sha256 and size, as someone "fixing" a copy would:
    only a look inside the samples finds the damage. Returns the shard and that sample's key."""
    shard = _first_shard(shards)
    samples = list(iter_tar_samples(shard))
    edit(samples[0][1])
    shard.unlink()
    with TarShardWriter(shard.parent, "rewritten", maxcount=len(samples)) as w:
        for key, fields in samples:
            w.write(key, fields)
    (shard.parent / "rewritten-000000.tar").rename(shard)
    _with_info(shards, lambda i: i["shards"][0].update(sha256=sha256_file(shard), bytes=shard.stat().st_size))
    return shard, samples[0][0]


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _bytes_wrong(shards):
    """The listed size is off (the shard itself intact): training refuses the shard, so verify must too."""
    shard = _first_shard(shards)
    size = shard.stat().st_size
    _with_info(shards, lambda i: i["shards"][0].update(bytes=size + 512))
    return f"{shard}: {size} bytes, {INFO} says {size + 512} (its sha256 matches"


def _no_histogram(shards):
    """Training reads class_histogram (a KeyError there): verify passed such a file."""
    _with_info(shards, lambda i: i.pop("class_histogram"))
    return f"{shards / 'train' / INFO}: no class_histogram (the shard stage always writes"


def _no_label_map(shards):
    _with_info(shards, lambda i: i.pop("label_map"))
    return f"{shards / 'train' / INFO}: no label_map"


def _member_lost(ext):
    def damage(shards):
        shard, key = _relisted(shards, lambda fields: fields.pop(ext))
        return (f"{shard}: sample {key!r} has no {ext} (the shard stage writes cls, jpg, json, left.jpg, right.jpg, "
                "regions.json for every sample, heatmap.png with lmk.npy)")
    damage.__name__ = f"_no_{ext}_relisted"
    return damage


def _landmarks(value, says):
    def damage(shards):
        shard, key = _relisted(shards, lambda fields: fields.update({"lmk.npy": _npy(value)}))
        return f"{shard}: sample {key!r} has a lmk.npy of {says}, not 68 finite (x, y) points"
    damage.__name__ = f"_lmk_{'x'.join(map(str, value.shape))}_{'nan' if np.isnan(value).any() else 'shape'}"
    return damage


def _face_of_another_side(shards):
    """A 100 px jpg in a split recorded as 112 (its landmarks are in 112 px pixels): training read it
    resized, its landmarks 12% off, and verify passed it."""
    from ferdata.io import encode_jpeg

    small = encode_jpeg(np.full((100, 100, 3), 77, np.uint8), 90)
    shard, key = _relisted(shards, lambda fields: fields.update(jpg=small))
    return f"{shard}: sample {key!r} has a jpg of 100x100, but {INFO} records faces of align.size 112"


def _cls_disagrees_with_json(shards):
    """Training learns the cls; the json label (what the reader found) says otherwise."""
    cls = int(next(iter_tar_samples(_first_shard(shards)))[1]["cls"])
    shard, key = _relisted(shards, lambda fields: fields.update(
        json=json.dumps({**json.loads(fields["json"]), "label": (cls + 1) % 7}).encode()))
    return f"{shard}: sample {key!r} has cls {cls} but its json says label {(cls + 1) % 7}"


def _cls_not_a_class(shards):
    shard, key = _relisted(shards, lambda fields: fields.update(cls=b"9"))
    return f"{shard}: sample {key!r} has cls b'9', not a class id 0-7"


def _members_split_apart(shards):
    """One sample's cls moved to the end of its shard (a valid tar, listed again): it was reported as
    "in this split twice (a shard copied or listed twice?)", which sends the user looking elsewhere."""
    shard = _first_shard(shards)
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    key = members[0][0].name.partition(".")[0]
    moved = next(i for i, (m, _) in enumerate(members) if m.name == f"{key}.cls")
    members.append(members.pop(moved))
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        for m, data in members:
            tar.addfile(m, io.BytesIO(data))
    _with_info(shards, lambda i: i["shards"][0].update(sha256=sha256_file(shard), bytes=shard.stat().st_size))
    return f"{shard}: the members of sample {key!r} are split apart in the shard"


def _member_emptied(ext):
    def damage(shards):
        """A member cut to 0 bytes, the shard listed again: verify read no image (a jpg declaring no size
        passed the align.size check) and said "all shards match"; training stopped on it mid-epoch."""
        shard, key = _relisted(shards, lambda fields: fields.update({ext: b""}))
        return f"{shard}: sample {key!r} has an empty {ext} (0 bytes; the shard stage writes none)"
    damage.__name__ = f"_empty_{ext}_relisted"
    return damage


def _info_is_a_folder(shards):
    """It raised IsADirectoryError instead of naming the file."""
    path, _ = _info(shards)
    path.unlink()
    path.mkdir()
    return f"{path}: unreadable (Is a directory)"


@pytest.mark.parametrize("damage", [_flip_a_byte, _delete, _stray, _unreadable, _wrong_count, _wrong_total,
                                    _wrong_histogram, _truncated_tar_with_its_hash, _compressed_with_its_hash,
                                    _info_lost, _split_lost,
                                    _histogram_not_a_mapping, _listed_twice, _bytes_wrong, _no_histogram,
                                    _no_label_map, _member_lost("jpg"), _member_lost("cls"), _member_lost("json"),
                                    _member_lost("left.jpg"), _member_lost("regions.json"),
                                    _member_lost("heatmap.png"),
                                    _landmarks(np.zeros(5, np.float32), "float32 (5,)"),
                                    _landmarks(np.zeros((68, 3), np.float32), "float32 (68, 3)"),
                                    _landmarks(np.full((68, 2), np.nan, np.float32), "float32 (68, 2)"),
                                    _cls_disagrees_with_json, _cls_not_a_class, _members_split_apart,
                                    _info_is_a_folder, _label_map_permuted_with_its_histogram, _subset_edited,
                                    _face_backends_edited, _soft_labels_added, _face_of_another_side,
                                    _member_emptied("jpg"), _member_emptied("left.jpg"),
                                    _member_emptied("heatmap.png")],
                         ids=lambda f: f.__name__[1:])
def test_each_disagreement_is_named_and_exits_1(shards, damage):
    expected = damage(shards)
    problems = verify_shards(shards)
    assert any(p.startswith(expected) for p in problems), problems
    assert all(str(shards / "train") in p for p in problems), problems        # val and test are intact
    result = CliRunner().invoke(app, ["verify", str(shards)])
    assert result.exit_code == 1 and expected in result.output


def test_a_sample_without_landmarks_passes(shards):
    """A face backend without 68 points (a precropped dataset) writes no lmk.npy: that is no damage."""
    _relisted(shards, lambda fields: fields.pop("lmk.npy"))
    assert verify_shards(shards) == []


def test_one_split_folder_is_checked_alone(shards):
    assert verify_shards(shards / "val") == []
    _flip_a_byte(shards)
    assert verify_shards(shards / "val") == [] and verify_shards(shards / "train")


def test_a_folder_without_info_files_says_what_to_pass(tmp_path, capsys):
    """Another folder (aligned/, an empty one) is the caller's mistake: an `error:` line, like a typo
    (it was printed as a bare problem line)."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"no {INFO} under .*empty: pass the shards folder"):
        verify_shards(tmp_path / "empty")
    with pytest.raises(SystemExit) as done:
        run_cli(lambda: app(["verify", str(tmp_path / "empty")], standalone_mode=False), argv=[])
    assert done.value.code == 1 and capsys.readouterr().err.startswith(f"error: no {INFO} under")


@pytest.mark.parametrize("make, says", [(lambda p: None, "does not exist"),
                                         (lambda p: p.write_text("x"), "is a file, not a folder")],
                         ids=["missing", "a-file"])
def test_a_path_that_is_no_folder_is_an_error_line(tmp_path, capsys, make, says):
    """`ferdata verify` on a typo or a file: the policy's `error:` line naming what is wrong, status 1."""
    path = tmp_path / "shards"
    make(path)
    with pytest.raises(SystemExit) as done:
        run_cli(lambda: app(["verify", str(path)], standalone_mode=False), argv=[])
    assert done.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path} {says}: pass the shards folder (with <split>/{INFO})"), err
    assert "Traceback" not in err


@pytest.mark.parametrize("field, value", [("label_map", [[1]] * 8), ("subsets", {"occlusion": 5}),
                                          ("class_histogram", {"Happy": "3"}), ("shards.name", ["x"]),
                                          ("shards.bytes", "122880"), ("shards.bytes", 1.5e5)])
def test_a_field_of_the_wrong_kind_is_a_problem_line_not_a_crash(shards, field, value):
    def edit(info):
        if field.startswith("shards."):
            info["shards"][0][field.partition(".")[2]] = value
        else:
            info[field] = value
    _with_info(shards, edit)
    assert verify_shards(shards) == [f"{shards / 'train' / INFO}: unreadable (TypeError: " + {
        "label_map": "label_map is not a list of class names)", "subsets": "subsets is not names to lists of "
        "sample keys)", "class_histogram": "class_histogram is not class names to counts)",
        "shards.name": "a shard's name or sha256 is not text)",
        "shards.bytes": "a shard's bytes is not a whole number)"}[field]]


def test_split_folders_swapped_in_a_copy_are_named_and_refused_by_training(shards):
    """val/ holding the test split would pick the best epoch on the test set."""
    from fermodels.shardsplit import open_split

    (shards / "val").rename(shards / "was-val")
    (shards / "test").rename(shards / "val")
    (shards / "was-val").rename(shards / "test")
    problems = verify_shards(shards)
    assert sorted(p.partition(" split")[0] for p in problems) == [
        f"{shards / 'test'}: {INFO} describes the 'val'", f"{shards / 'val'}: {INFO} describes the 'test'"]
    with pytest.raises(ValueError, match=r"val/_info.json describes the 'test' split, not 'val'"):
        open_split([shards], "val")


def test_a_split_folder_renamed_in_a_copy_is_named_where_it_went(shards):
    """val/ renamed val2/: verify said only that val/ had no _info.json, not where the split went."""
    (shards / "val").rename(shards / "val2")
    problems = verify_shards(shards)
    assert any(p.startswith(f"{shards / 'val'}: no {INFO}") for p in problems), problems
    assert any(p.startswith(f"{shards / 'val2'}: a split folder of another name ({INFO} describes the 'val' split")
               for p in problems), problems


def test_a_sample_in_two_splits_is_named(shards):
    """A train shard copied into val and listed there (hash and count right): a leak across splits."""
    train = _first_shard(shards)
    _, info = _info(shards)
    shutil.copy2(train, shards / "val" / "val-900000.tar")
    path, val = _info(shards, "val")
    val["shards"].append({**info["shards"][0], "name": "val-900000.tar"})
    path.write_text(json.dumps(val))
    problems = verify_shards(shards)
    assert any(p.startswith(f"{shards}: {info['shards'][0]['count']} sample(s) in both train and val (e.g. ")
               for p in problems), problems


@pytest.mark.parametrize("damage", ["missing", "cut short", "grown"])
def test_training_refuses_a_listed_shard_missing_or_of_another_size(shards, damage):
    """A shard cut short at a sample boundary, or grown, reads as a valid tar; without a look at
    its size the epoch ran shorter (or the class-balanced stream read on past it). A stat per shard
    catches it before any worker starts; ``ferdata verify`` compares contents too."""
    from fermodels.shardsplit import open_split

    from ferdata.tarscan import _scan_blocks

    path = sorted((shards / "train").glob("*.tar"))[0]
    data = path.read_bytes()
    table = _scan_blocks(data)
    last = table.names[-1].partition(".")[0]                   # the last sample's key
    cut = min(o for n, o in zip(table.names, table.offsets) if n.partition(".")[0] == last) - 512
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(data[:cut] if damage == "cut short" else data + bytes(512))
    size = cut if damage == "cut short" else len(data) + 512
    want = "is missing: `dvc pull`" if damage == "missing" else f"is {size} bytes where .*_info.json lists {len(data)}"
    with pytest.raises((FileNotFoundError, ValueError), match=want):
        open_split([shards], "train")
    assert any(path.name in p for p in verify_shards(shards))


def test_a_shard_dir_given_twice_is_refused(shards):
    from fermodels.shardsplit import open_split

    with pytest.raises(ValueError, match="listed more than once"):
        open_split([shards, shards / ".." / shards.name], "train")


@pytest.mark.parametrize("ext, replacement, says", [
    ("jpg", None, "has no 'jpg' .* shard is damaged"), ("cls", None, "has no 'cls' .* shard is damaged"),
    ("jpg", b"\xff\xd8" + bytes(200), "its jpg does not decode .* shard is damaged"),
    ("cls", b"x", "has cls b'x', not a class id 0-7: its shard is damaged"),
    ("cls", b"9", "has cls b'9', not a class id 0-7: its shard is damaged")],
    ids=["no-jpg", "no-cls", "jpg-undecodable", "cls-text", "cls-9"])
def test_a_damaged_image_or_label_is_named_by_every_loader(shards, tmp_path, ext, replacement, says):
    """A shard listed with its own size and count whose sample lacks the image or the label, or holds
    one that does not decode or is no class id (written so, or re-listed after damage): a bare
    KeyError, ``BadImage: undecodable`` or ``invalid literal for int()`` before, and cls 9 went through
    unnoticed; now the sample and its shard, from every loader (the training stream, plain and
    class-balanced, and the evaluator's indexed reader)."""
    from ferdata.tario import TarShardWriter, iter_tar_samples
    from fermodels.data import SampleDecoder
    from fermodels.distributed import DistEnv
    from fermodels.epochplan import plan_epoch
    from fermodels.indexed import IndexedSplit
    from fermodels.sampling import ClassRepeat
    from fermodels.shardsplit import open_split
    from fermodels.stream import stream_loader

    shard = _first_shard(shards)
    samples = list(iter_tar_samples(shard))
    bad_key = samples[0][0]
    with TarShardWriter(tmp_path / "w", "x", maxcount=len(samples)) as w:
        for key, fields in samples:
            if key == bad_key:
                fields = {e: (replacement if e == ext else b) for e, b in fields.items()}
            w.write(key, {e: b for e, b in fields.items() if b is not None})
    shutil.move(tmp_path / "w" / "x-000000.tar", shard)

    def relist(info):
        info["shards"][0].update(bytes=shard.stat().st_size, sha256=sha256_file(shard))
    _with_info(shards, relist)
    decoder = SampleDecoder(("image",), 112)
    split = open_split([shards], "train")
    for balanced in (False, True):
        repeat = ClassRepeat.balanced(split.class_counts(7), 32) if balanced else None
        plans = plan_epoch(split.shards, samples=32, batch_size=4, env=DistEnv(0, 1, 0), workers=0, seed=0,
                           shuffle=False, one_pass=balanced)
        with pytest.raises(ValueError, match=f"sample '{bad_key}' of {shard}:? {says}"):
            list(stream_loader(plans, decoder, workers=0, shuffle_buffer=0, seed=0, repeat=repeat))
    if ext == "cls" and replacement is None:
        with pytest.raises(ValueError, match=f"{shard}: sample '{bad_key}' has no label"):
            IndexedSplit(split, decoder, 7)
    else:
        with pytest.raises(ValueError, match=f"sample '{bad_key}' of {shard}:? {says}"):
            [decoder(s) for s in IndexedSplit(split, decoder, 7)]


def test_a_damaged_sample_read_in_a_loader_worker_is_told_in_one_line(tmp_path):
    """train.workers 2 (the default): torch re-raises a worker's error with the message "Caught
    ValueError in DataLoader worker process 0." and the worker's whole traceback, which reached
    ``error:`` as 20 lines; now the worker's own message, and which worker."""
    from ferdata.errors import is_user_error, message
    from ferdata.io import encode_jpeg
    from fermodels.data import SampleDecoder
    from fermodels.distributed import DistEnv
    from fermodels.epochplan import plan_epoch
    from fermodels.shardsplit import open_split
    from fermodels.stream import stream_loader

    folder = tmp_path / "ds" / "train"
    good = encode_jpeg(np.full((8, 8, 3), 128, np.uint8), 90)
    with TarShardWriter(folder, "x", 100) as w:
        for i in range(16):
            w.write(f"k{i:03d}", {"jpg": b"\xff\xd8" + bytes(len(good) - 2) if i == 5 else good, "cls": b"1"})
    written = w.files[0]
    (folder / INFO).write_text(json.dumps({"split": "train", "class_histogram": {"Happy": 16}, "shards": [
        {"name": written.path.name, "count": 16, "sha256": written.sha256, "bytes": written.path.stat().st_size}]}))
    split = open_split([folder.parent], "train")
    plans = plan_epoch(split.shards, samples=16, batch_size=4, env=DistEnv(0, 1, 0), workers=2, seed=0,
                       shuffle=False)
    with pytest.raises(ValueError) as caught:
        list(stream_loader(plans, SampleDecoder(("image",), 8), workers=2, shuffle_buffer=0, seed=0, repeat=None))
    said = message(caught.value)
    assert is_user_error(caught.value)
    assert said.startswith(f"sample 'k005' of {written.path}: its jpg does not decode"), said
    assert said.endswith(" (in loader worker 0)") or said.endswith(" (in loader worker 1)"), said
    assert "\n" not in said and "Traceback" not in said, said


def test_cls_one_past_the_last_class_is_no_class_id(shards):
    """Bug guarded: the class-id bound off by one: cls 8 (one past Contempt, 0-7) passed verify,
    and training's one-hot/histogram indexing would fail or mislabel on it."""
    shard, key = _relisted(shards, lambda fields: fields.update(cls=b"8"))
    problems = verify_shards(shards)
    assert any(p.startswith(f"{shard}: sample {key!r} has cls b'8', not a class id 0-7") for p in problems), problems


def test_a_listed_size_smaller_than_the_shard_is_named(shards):
    """Bug guarded: only a shard smaller than its listed ``bytes`` named; one larger (the listed size
    too small) passed verify, though training refuses it (it checks the size both ways)."""
    shard = _first_shard(shards)
    size = shard.stat().st_size
    _with_info(shards, lambda i: i["shards"][0].update(bytes=size - 512))
    problems = verify_shards(shards)
    assert any(p.startswith(f"{shard}: {size} bytes, {INFO} says {size - 512}") for p in problems), problems


def test_boolean_landmarks_are_named(shards):
    """Bug guarded: a boolean ``lmk.npy`` of shape (68, 2) passed verify: True/False are no (x, y)
    points, though the shape and finiteness checks hold (landmarks must be 68x2 numbers)."""
    shard, key = _relisted(shards, lambda fields: fields.update({"lmk.npy": _npy(np.ones((68, 2), bool))}))
    problems = verify_shards(shards)
    expected = f"{shard}: sample {key!r} has a lmk.npy of bool (68, 2), not 68 finite (x, y) points"
    assert any(p.startswith(expected) for p in problems), problems


def test_shards_with_soft_labels_pass(tmp_path):
    """The label modes and face backends verify rebuilds from the samples are the ones the shard stage
    writes (test subsets: tests/fermodels/test_evaluate.py's per-subset test verifies its shards)."""
    from tests.fermodels.helpers import build_shards

    shards = build_shards(tmp_path / "soft", per_class=2, test_per_class=1, classes=range(3), soft_mode="probability")
    info = json.loads((shards / "train" / INFO).read_text())
    assert info["soft_labels"] == {"probability": info["num_samples"]} and info["face_backends"]
    assert verify_shards(shards) == []
    for split in ("train", "val", "test"):      # as shards of versions before face_backends: no false alarm
        path = shards / split / INFO
        older = {k: v for k, v in json.loads(path.read_text()).items() if k not in ("face_backends", "soft_labels")}
        path.write_text(json.dumps(older))
    assert verify_shards(shards) == []


def test_only_distributions_trained_on_count_as_soft_labels():
    """FER+ val/test rows carry a distribution in label_mode majority: training must not switch to
    distribution targets for them (train.py reads soft_labels to decide)."""
    s = SplitSummary()
    dist = [0.0, 1.0] + [0.0] * 6
    s.add("a", 1, {"backend": "embedded", "extra": {SOFT_LABEL: dist, LABEL_MODE: "majority"}})
    s.add("b", 1, {"backend": "embedded", "extra": {SOFT_LABEL: dist}})          # no mode: majority
    s.add("c", 1, {"backend": "embedded", "extra": {SOFT_LABEL: dist, LABEL_MODE: "crossentropy"}})
    assert s.info()["soft_labels"] == {"crossentropy": 1}


def test_a_split_without_distributions_has_no_soft_labels_and_a_backendless_sample_is_unknown():
    s = SplitSummary()
    s.add("a", 0, {"extra": {}})
    s.add("b", 7, {"backend": "embedded"})
    info = s.info()
    assert "soft_labels" not in info                      # other datasets' _info.json stay byte-identical
    assert info["face_backends"] == {"embedded": 1, "unknown": 1}
    assert (info["class_histogram"]["Neutral"], info["class_histogram"]["Contempt"]) == (1, 1)


def test_a_sample_whose_json_names_a_subset_the_info_file_misses_is_named(shards):
    def tag(fields):
        meta = json.loads(fields["json"])
        meta["extra"] = {**(meta.get("extra") or {}), "subsets": ["occlusion"]}
        fields["json"] = json.dumps(meta).encode()
    _, key = _relisted(shards, tag)
    problems = verify_shards(shards)
    assert any(p.startswith(f"{shards / 'train'}: subset 'occlusion' in {INFO} lists 0 keys not in the shards and 0 "
                            f"whose json does not name it, and misses 1 whose json does (e.g. {key!r})")
               for p in problems), problems


def test_an_older_info_file_listing_subset_keys_not_in_the_shards_is_named(shards):
    """Shards of versions before face_backends: only stray listed keys are checked, and they must be."""
    def older(info):
        info.pop("face_backends")
        info.pop("soft_labels", None)
        info["subsets"] = {"occlusion": ["train-nowhere"]}
    _with_info(shards, older)
    problems = verify_shards(shards)
    assert any(p.startswith(f"{shards / 'train'}: subset 'occlusion' in {INFO} lists 1 keys not in the shards")
               for p in problems), problems


def _raw_sample(**over) -> dict:
    """A raw sample as the loaders read it from a shard, members replaced by ``over``."""
    from ferdata.io import encode_jpeg, encode_png
    from ferdata.tario import npy_bytes

    img = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    sample = {"__key__": "ds/k1", "__url__": "shards/train/s-000003.tar", "cls": b"3", "jpg": encode_jpeg(img, 90),
              "left.jpg": encode_jpeg(img[:, :56], 90), "right.jpg": encode_jpeg(img[:, 56:], 90),
              "heatmap.png": encode_png(np.full((28, 28), 77, np.uint8)),
              "lmk.npy": npy_bytes(np.full((68, 2), 50, np.float32)), "json": b'{"extra": {}}'}
    return {**sample, **over}


def _png16(value: int) -> bytes:
    import cv2

    return cv2.imencode(".png", np.full((28, 28), value, np.uint16))[1].tobytes()


@pytest.mark.parametrize("member, data, says", [
    ("jpg", b"", "its jpg does not decode \\(empty_file\\)"),
    ("heatmap.png", b"", "its heatmap.png does not decode \\(empty_file\\)"),
    ("jpg", "grey", r"its jpg gives uint8 \(112, 112\) where the batch takes uint8 \(112, 112, 3\)"),
    ("heatmap.png", "rgb", r"its heatmap.png gives uint8 \(28, 28, 3\) where the batch takes uint8 \(28, 28\)"),
    ("heatmap.png", "16-bit", r"its heatmap.png gives uint16 \(28, 28\) where the batch takes uint8 \(28, 28\)"),
    ("lmk.npy", (5, 2), r"its lmk.npy gives float32 \(5, 2\) where the batch takes float32 \(68, 2\)"),
    ("lmk.npy", (1, 2), r"its lmk.npy gives float32 \(1, 2\) where the batch takes float32 \(68, 2\)"),
    ("lmk.npy", b"xx", "its lmk.npy: not a .npy array"),
    ("json", b"{", "its json member is not JSON"),
    ("json", b"[1]", "its json member holds no record with an 'extra' mapping"),
    ("jpg", "oblong", "its jpg is 96x112, not a square crop"),
    ("json", b'{"extra": "\xff"}', "its json member is not JSON"),            # not UTF-8: UnicodeDecodeError
    ("json", b'{"extra": [1]}', "its json member holds no record with an 'extra' mapping")],
    ids=["empty-jpg", "empty-heatmap", "grey-jpg", "rgb-heatmap", "16-bit-heatmap", "lmk-5", "lmk-1", "lmk-not-npy",
         "json-cut", "json-list", "oblong-jpg", "json-not-utf8", "json-extra-list"])
def test_a_member_the_batch_cannot_hold_is_named_with_its_sample_and_shard(member, data, says):
    """An empty member raised OpenCV's ``!buf.empty()`` assertion; a 16-bit heatmap of 40000 entered
    the batch as 64 (cast modulo 256; its 8 bits are 156); a grey picture, an RGB heatmap or 5
    landmarks gave numpy's "could not broadcast", and 1 landmark became 68 copies of itself; a cut
    ``json`` gave a bare JSONDecodeError; an oblong crop was stretched square with its landmarks
    scaled by its height. Each names the sample and its shard now."""
    from ferdata.io import encode_jpeg, encode_png
    from ferdata.tario import npy_bytes
    from fermodels.data import SampleDecoder, decode_batch

    made = {"grey": lambda: encode_png(np.full((112, 112), 9, np.uint8)),
            "rgb": lambda: encode_png(np.full((28, 28, 3), 77, np.uint8)), "16-bit": lambda: _png16(40000),
            "oblong": lambda: encode_jpeg(np.full((112, 96, 3), 77, np.uint8), 90)}
    if isinstance(data, tuple):
        data = npy_bytes(np.zeros(data, np.float32))
    elif isinstance(data, str):
        data = made[data]()
    decoder = SampleDecoder(("image", "left", "right", "heatmap", "lmk"), 112, targets=True)
    decode_batch(decoder, [_raw_sample()])                    # the intact sample decodes
    with pytest.raises(ValueError, match=r"sample 'ds/k1' of shards/train/s-000003\.tar:? " + says):
        decode_batch(decoder, [_raw_sample(**{member: data})])


def test_a_face_stored_at_another_side_than_its_split_records_is_named(shards):
    """A 100 px jpg in a split recorded as 112 trained and scored, resized silently, with its
    landmarks (in 112 px pixels) scaled by 112/100: 12% off, and verify passed it."""
    import torch

    from ferdata.io import encode_jpeg
    from fermodels.data import decode_batch, split_decoder
    from fermodels.registry import ModelCard
    from fermodels.shardsplit import open_split

    split = open_split([shards], "train")
    card = ModelCard(name="every_field", input_size=224, fields=("image", "left", "right", "heatmap", "lmk"),
                     losses=("ce_main",), paper="")
    decoder = split_decoder(card, split, torch.device("cpu"))
    assert decoder.stored == split.preprocess["align"]["size"] == 112
    decode_batch(decoder, [_raw_sample()])
    small = encode_jpeg(np.full((100, 100, 3), 77, np.uint8), 90)
    says = (r"sample 'ds/k1' of shards/train/s-000003\.tar: its jpg is 100x100, but its split's _info.json records "
            r"faces of align.size 112: its shard is damaged")
    with pytest.raises(ValueError, match=says):
        decode_batch(decoder, [_raw_sample(jpg=small)])


def test_an_unreadable_shard_is_a_problem_line_and_the_rest_is_still_checked(shards):
    """A bad disk: reading a listed shard fails with EIO (a link to /proc/self/mem reads so). verify
    stopped at it with "error: [Errno 5] Input/output error", no file named, the rest unchecked."""
    _, info = _info(shards)
    bad = shards / "train" / info["shards"][0]["name"]
    bad.unlink()
    bad.symlink_to("/proc/self/mem")
    (shards / "val" / "val-000000.tar").unlink()
    problems = verify_shards(shards)
    assert f"{bad}: unreadable (Input/output error); copy the shards again" in problems
    assert f"{shards / 'val' / 'val-000000.tar'}: missing" in problems


@pytest.mark.parametrize("edit, says", [
    (lambda i: i.update(detect={"backend": "annotations"}), "detect is not the face backend's settings"),
    (lambda i: i.update(detect="annotations"), "detect is not the face backend's settings"),
    (lambda i: i.update(preprocess="x"), r"preprocess is not the align/derive settings \(align.size\)"),
    (lambda i: i.update(preprocess={"align": {"size": "112"}}), r"preprocess is not the align/derive settings"),
    (lambda i: i["shards"][0].update(bytes=None), "a shard's bytes is not a whole number"),
    (lambda i: i["shards"][0].update(count=8.9), "a shard's count is not a whole number"),
    (lambda i: i.update(face_backends={"embedded": "all"}), "face_backends is not backend names to counts"),
    (lambda i: i.update(shards=[i["shards"][0]["name"]]), "shards is not a list of shard entries"),
    (lambda i: i["shards"][0].update(sha256=5), "a shard's name or sha256 is not text"),
    (lambda i: i["shards"][0].update(count=True), "a shard's count is not a whole number"),
    (lambda i: i["shards"][0].update(count=-1), "a shard's count is not a whole number"),
    (lambda i: i.update(soft_labels={"soft": "all"}), "soft_labels is not label modes to counts"),
    (lambda i: i.update(subsets={"occlusion": [5]}), "subsets is not names to lists of sample keys"),
    (lambda i: i.update(cross_split_copies=True), r"cross_split_copies is not a setting's name")],
    ids=["detect-no-options", "detect-text", "preprocess-text", "size-text", "bytes-null", "count-fraction",
         "backends-text", "shards-names", "sha256-number", "count-bool", "count-negative", "soft-labels-text",
         "subset-key-number", "copies-bool"])
def test_verify_and_training_refuse_the_same_info_edits(shards, edit, says):
    """Each edit passed `ferdata verify`, and training then failed with a TypeError traceback, "error:
    options", or a size mismatch whose message said to run `ferdata verify` (which passed)."""
    from ferdata.selection import SelectionError
    from fermodels.shardsplit import open_split

    import re

    _with_info(shards, edit)
    problems = verify_shards(shards)
    assert len(problems) == 1 and re.match(re.escape(f"{shards / 'train' / INFO}: unreadable (TypeError: ") + says,
                                           problems[0]), problems
    with pytest.raises(SelectionError, match=f"train/_info.json is damaged \\({says}.*`ferdata verify` checks"):
        open_split([shards], "train")


def test_a_shard_unreadable_while_it_is_scanned_is_a_problem_line(shards, monkeypatch):
    """Its sha256 read, then the disk failed under the scan: one line, the other splits still checked."""
    def failing(path, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(verify, "iter_tar_samples", failing)
    problems = verify_shards(shards)
    assert problems and all(p.endswith(": unreadable (Input/output error); copy the shards again") for p in problems)
    assert {Path(p.partition(": ")[0]).parent.name for p in problems} == {"train", "val", "test"}, problems


def test_a_missing_shard_is_said_once(shards):
    expected = _delete(shards)
    assert [p for p in verify_shards(shards) if p.startswith(expected.removesuffix(": missing"))] == [expected]


def test_a_shard_copied_under_another_name_and_listed_with_matching_counts_is_named(shards):
    """Every sample of a second copy would be trained on twice: the counts all add up, the keys do not."""
    first = _first_shard(shards)
    copy = first.parent / "train-900000.tar"
    shutil.copy2(first, copy)
    samples = list(iter_tar_samples(first))
    classes = Counter(CLASSES[int(fields["cls"])] for _, fields in samples)
    backends = Counter(json.loads(fields["json"]).get("backend") or "unknown" for _, fields in samples)

    def relist(info):
        info["shards"].append({**info["shards"][0], "name": copy.name})
        info["num_samples"] += len(samples)
        info["class_histogram"] = dict(Counter(info["class_histogram"]) + classes)
        info["face_backends"] = dict(Counter(info["face_backends"]) + backends)
    _with_info(shards, relist)
    problems = verify_shards(shards)
    assert any(p.startswith(f"{copy}: sample {samples[0][0]!r} is in this split twice") for p in problems), problems


def test_a_sample_json_that_is_no_object_is_a_problem_line_not_a_crash(shards):
    """A json member holding a list is one problem line naming its sample, not an AttributeError out of verify."""
    shard, key = _relisted(shards, lambda fields: fields.update(json=b"[1, 2]"))
    problems = verify_shards(shards)
    assert any(p.startswith(f"{shard}: sample {key!r} has a json that is a list, not an object")
               for p in problems), problems


def test_an_older_info_file_without_the_subsets_its_samples_name_passes(shards):
    """Info files from before face_backends may lack subsets their samples' json name: no false alarm there."""
    def tag(fields):
        meta = json.loads(fields["json"])
        meta["extra"] = {**(meta.get("extra") or {}), "subsets": ["occlusion"]}
        fields["json"] = json.dumps(meta).encode()
    _relisted(shards, tag)
    _with_info(shards, lambda info: [info.pop(k, None) for k in ("face_backends", "soft_labels", "subsets")])
    assert verify_shards(shards) == []


def test_problem_lines_name_hostile_shards_inertly(shards):
    """A stray tar or an _info.json entry named with ESC sequences or a carriage return (a shards folder
    pulled from elsewhere, the case verify is for) cleared the screen, set the terminal's title or
    overwrote the line; click also dropped CSI sequences when stderr was no terminal, naming a file
    that is not there (audit h72)."""
    stray = shards / "train" / "stray\x1b[2J\x1b]0;pwned\x07.tar"
    shutil.copy2(_first_shard(shards), stray)
    _with_info(shards, lambda info: info["shards"].append({**info["shards"][0], "name": "listed\rOVERWRITE.tar"}))
    result = CliRunner().invoke(app, ["verify", str(shards)])
    assert result.exit_code == 1
    assert "stray\\x1b[2J\\x1b]0;pwned\\x07.tar: shard not listed" in result.output, result.output
    assert "listed\\rOVERWRITE.tar: missing" in result.output, result.output
    assert not any(c in result.output for c in "\x1b\x07\r"), repr(result.output)


@pytest.mark.parametrize("value", [69.9, "279", None])
def test_a_split_total_of_the_wrong_kind_is_refused_not_rounded(shards, value):
    """`num_samples` 69.9 or "279" passed verify ("all shards match"): int() made it agree with the
    samples (docs/sharing.md: a split total that disagrees, or a field of the wrong kind, is a problem)."""
    _with_info(shards, lambda info: info.update(num_samples=value))
    assert verify_shards(shards) == [f"{shards / 'train' / INFO}: unreadable (TypeError: num_samples is not a "
                                     "whole number)"]
