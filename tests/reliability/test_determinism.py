"""Determinism: the same inputs and params give byte-identical stage outputs, shards and
``_info.json`` whatever the worker count or the state of the detection cache."""
from __future__ import annotations

import json
import subprocess
import tarfile

from ferdata.records import SPLITS
from ferdata.stages.shard import run_shard
from ferdata.tario import iter_dir_samples, list_shards, sha256_file
from ferdata.verify import verify_shards
from tests.reliability.corpus import (Case, build_corpus, encode, picture, real_photo, run_all, stage_params,
                                      tree_hashes)

STAGE_DIRS = ("detect", "aligned", "derived", "shards")


def test_two_runs_are_byte_identical(bad_corpus, bad_corpus_run, tmp_path):
    """Run 1 inline, run 2 with two worker processes: every output file hashes the same."""
    root, _ = bad_corpus
    first, _ = bad_corpus_run
    run_all(root, tmp_path, stage_params(tmp_path, workers=2))
    for stage in STAGE_DIRS:
        assert tree_hashes(tmp_path / stage) == tree_hashes(first / stage), stage
    assert "train/_info.json" in tree_hashes(first / "shards")


def test_info_json_carries_the_shard_hashes(bad_corpus_run):
    out, _ = bad_corpus_run
    for split in ("train", "val", "test"):
        info = json.loads((out / "shards" / split / "_info.json").read_text())
        files = list_shards(out / "shards" / split, split)
        assert [s["name"] for s in info["shards"]] == [p.name for p in files]
        assert [s["sha256"] for s in info["shards"]] == [sha256_file(p) for p in files]
        assert sum(s["count"] for s in info["shards"]) == info["num_samples"]
    assert verify_shards(out / "shards") == []


def test_tar_metadata_is_fixed_and_plain_tar_reads_it(bad_corpus_run):
    out, _ = bad_corpus_run
    shard = list_shards(out / "shards" / "train", "train")[0]
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    assert all((m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o444) for m in members)
    names = [m.name for m in members]
    keys = [n.split(".", 1)[0] for n in names]
    assert keys == sorted(keys, key=keys.index) and len(set(names)) == len(names)   # samples contiguous
    listed = subprocess.run(["tar", "-tf", str(shard)], capture_output=True, text=True, check=True).stdout.split()
    assert listed == names


def test_seed_changes_the_order_not_the_samples(bad_corpus_run, tmp_path):
    out, _ = bad_corpus_run
    run_shard(out / "aligned", out / "derived", stage_params(tmp_path, seed=1)["shard"], tmp_path / "shards")
    a, b = shard_keys(out / "shards"), shard_keys(tmp_path / "shards")
    assert sorted(a) == sorted(b) and a != b


def test_each_samples_json_names_the_split_it_is_in(bad_corpus_run):
    """The corpus is AffectNet-like: the val split is carved from the reader's train split, whose
    records say "train" until the shard stage places them."""
    out, _ = bad_corpus_run
    for split in SPLITS:
        metas = [json.loads(s["json"]) for _, s in iter_dir_samples(out / "shards" / split, split)]
        assert metas and {m["split"] for m in metas} == {split}, split


def test_k_fold_assignment_gives_each_record_its_split_and_fold(tmp_path):
    from dataclasses import replace

    from ferdata.records import FaceRecord, record_to_dict
    from ferdata.stages.shard import assign

    metas = {f"k{i}": record_to_dict(FaceRecord("jaffe", f"k{i}", "x.png", i % 7, "x", subject=f"s{i % 6}"))
             for i in range(24)}
    by_split = assign(metas, replace(stage_params(tmp_path)["shard"], folds=3, fold=1))
    for split, keys in by_split.items():
        assert {metas[k]["split"] for k in keys} <= {split}
        assert {metas[k]["extra"]["fold"] for k in keys} == {"test": {1}, "val": {2}, "train": {0}}[split]


def shard_keys(shards) -> list[str]:
    return [key for split in SPLITS for key, _ in iter_dir_samples(shards / split, split)]


def test_embedded_backend_cold_and_warm_cache_agree(tmp_path):
    """Real detector: a second run served from the detection cache writes the same bytes."""
    faces = {"astronaut": ("178", "57", "95", "120"), "grace_hopper": ("178", "107", "176", "221"),
             "t1": ("52", "262", "117", "139")}                    # face_x, face_y, width, height (t1: one of 6)
    cases = [Case(name, lambda name=name: encode(real_photo(name), quality=95), box=box, split="test" if name == "t1"
                  else "train") for name, box in faces.items()]
    build_corpus(tmp_path / "raw", cases)
    cold = run_all(tmp_path / "raw", tmp_path / "cold", stage_params(tmp_path, backend="embedded"))
    warm = run_all(tmp_path / "raw", tmp_path / "warm", stage_params(tmp_path, backend="embedded"))
    assert cold["detect"]["notes"]["detections_run"] == 3 and warm["detect"]["notes"]["detections_run"] == 0
    assert cold["shard"]["kept"] == warm["shard"]["kept"] == 3             # the same bytes of every face
    for stage in ("aligned", "derived", "shards"):
        assert tree_hashes(tmp_path / "cold" / stage) == tree_hashes(tmp_path / "warm" / stage), stage


def test_each_split_is_written_shuffled_not_in_key_order(bad_corpus_run):
    """Bug guarded: the seeded permutation of a split's samples left out (keys written sorted): a
    shuffle buffer smaller than a shard then trains on runs of one class or one source folder."""
    out, _ = bad_corpus_run
    keys = [key for key, _ in iter_dir_samples(out / "shards" / "train", "train")]
    assert len(keys) >= 5 and keys != sorted(keys)


def _folder_with_train_and_val(root) -> None:
    """A ``folder`` dataset with official train/ and val/ folders but no test/: k-fold applies to it, and
    a face k-fold leaves in the split its folder names keeps its reader's split, its ``extra`` gains a fold."""
    for i in range(12):
        split = "val" if i % 4 == 3 else "train"
        path = root / split / ("happy", "sad", "angry")[i % 3] / f"f{i:02d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(picture(300 + i, 64), quality=90))


def test_k_fold_samples_json_names_the_fold_also_where_the_split_is_unchanged(tmp_path):
    """Bug guarded: the shard stage kept an aligned sample's stored json when only its split matched the
    placed one: under k-fold (shard.folds > 0) a face whose split did not change but whose fold (``extra``)
    did kept the reader's json, without the fold it is in. Fold ``f`` is test, ``f + 1`` val, the rest train;
    a face's fold is the same whichever fold is tested."""
    from dataclasses import replace

    root = tmp_path / "raw"
    _folder_with_train_and_val(root)
    params = stage_params(tmp_path, backend="precropped")
    params["shard"] = replace(params["shard"], folds=3, fold=0)
    run_all(root, tmp_path / "out", params, reader="folder", options={"dataset": "folder"})
    folds_of: list[dict[str, int]] = []
    for fold in (0, 1):
        out = tmp_path / f"shards_fold{fold}"
        run_shard(tmp_path / "out" / "aligned", tmp_path / "out" / "derived", replace(params["shard"], fold=fold), out)
        want = {"test": {fold}, "val": {(fold + 1) % 3}, "train": {0, 1, 2} - {fold, (fold + 1) % 3}}
        folds, unchanged = {}, 0
        for split in SPLITS:
            for key, sample in iter_dir_samples(out / split, split):
                meta = json.loads(sample["json"])
                assert meta["split"] == split, key
                assert meta["extra"].get("fold") in want[split], (fold, split, key, meta["extra"])
                folds[key] = meta["extra"]["fold"]
                unchanged += key.startswith(f"{split}_")          # keys start with the reader's split folder
        assert len(folds) == 12 and unchanged, (fold, unchanged)  # some faces stay where their folder puts them
        folds_of.append(folds)
    assert folds_of[0] == folds_of[1]


def _fold_assignments(shards) -> set[str]:
    return {json.loads((shards / split / "_info.json").read_text())["fold_assignment"] for split in SPLITS}


def test_folds_record_which_preparation_they_were_dealt_from(tmp_path):
    """Every fold's splits carry one digest of the whole fold assignment; a face lost before the
    shard stage (another detector, a changed image) deals the faces anew and changes it, so that
    ``fermodels crossval`` can refuse to pool folds of two preparations (their test sets overlap)."""
    from dataclasses import replace

    from ferdata.selection import selection

    root = tmp_path / "raw"
    _folder_with_train_and_val(root)
    params = stage_params(tmp_path, backend="precropped")
    params["shard"] = replace(params["shard"], folds=3, fold=0)
    run_all(root, tmp_path / "out", params, reader="folder", options={"dataset": "folder"})
    dealt = _fold_assignments(tmp_path / "out" / "shards")
    run_shard(tmp_path / "out" / "aligned", tmp_path / "out" / "derived", replace(params["shard"], fold=1),
              tmp_path / "data" / "folder" / "shards")
    assert len(dealt) == 1 and _fold_assignments(tmp_path / "data" / "folder" / "shards") == dealt
    assert selection(tmp_path / "data", ["folder"], ["test"])["datasets"]["folder"]["fold_assignment"] == min(dealt)
    (root / "train" / "happy" / "f00.jpg").unlink()
    run_all(root, tmp_path / "less", params, reader="folder", options={"dataset": "folder"})
    assert len(_fold_assignments(tmp_path / "less" / "shards") | dealt) == 2


RAFDB_PUBLISHED = {1: "Surprise", 2: "Fear", 3: "Disgust", 4: "Happiness", 5: "Sadness", 6: "Anger", 7: "Neutral"}
CANONICAL_ORDER = ("Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger", "Contempt")


def test_cls_is_the_canonical_class_id_not_the_datasets_own_label(tmp_path):
    """Bug guarded: the shard stage wrote the dataset's native label as ``cls``, not the canonical id.
    AffectNet's order is the canonical one, so only another dataset shows it: RAF-DB's 1-based labels
    (1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral) in AffectNet's order
    (0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger, 7 Contempt)."""
    root = tmp_path / "raw"
    native = {}
    for i in range(14):
        stem = f"train_{i + 1:05d}" if i < 10 else f"test_{i - 9:04d}"
        path = root / "Image" / "aligned" / f"{stem}_aligned.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(picture(400 + i, 100), quality=90))
        native[stem] = i % 7 + 1
    (root / "EmoLabel").mkdir()
    (root / "EmoLabel" / "list_patition_label.txt").write_text("".join(f"{s}.jpg {v}\n" for s, v in native.items()))
    run_all(root, tmp_path / "out", stage_params(tmp_path, backend="precropped"), reader="rafdb",
            options={"images": "aligned"})
    cls = {key: int(sample["cls"]) for split in SPLITS
           for key, sample in iter_dir_samples(tmp_path / "out" / "shards" / split, split)}
    assert cls == {stem: CANONICAL_ORDER.index(RAFDB_PUBLISHED[v]) for stem, v in native.items()}


def test_k_fold_without_val_trains_on_the_other_folds_and_says_val_is_empty_by_setting(tmp_path):
    from dataclasses import replace

    root = tmp_path / "raw"
    _folder_with_train_and_val(root)
    params = stage_params(tmp_path, backend="precropped")
    params["shard"] = replace(params["shard"], folds=3, fold=2, val_fraction=0)
    run_all(root, tmp_path / "out", params, reader="folder", options={"dataset": "folder"})
    info = {s: json.loads((tmp_path / "out" / "shards" / s / "_info.json").read_text()) for s in SPLITS}
    assert info["val"]["num_samples"] == 0 and info["val"]["empty_by_setting"] == "shard.val_fraction 0"
    assert info["train"]["num_samples"] + info["test"]["num_samples"] == 12 and info["test"]["num_samples"] == 4


def test_the_fold_assignment_digest_names_each_face_and_its_fold():
    from ferdata.stages.shard import fold_assignment

    metas = {f"k{i}": {"extra": {"fold": i % 3}} for i in range(6)}
    swapped = {**metas, "k0": {"extra": {"fold": 1}}, "k1": {"extra": {"fold": 0}}}   # same fold sizes
    renamed = {("x0" if k == "k0" else k): m for k, m in metas.items()}
    digests = {fold_assignment(m) for m in (metas, swapped, renamed)}
    assert len(digests) == 3 and None not in digests
    assert fold_assignment({"k0": {"extra": {}}, "k1": {}}) is None           # not k-fold: no key written
