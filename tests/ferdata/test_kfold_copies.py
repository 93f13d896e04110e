"""k-fold deals a train/val dataset's faces anew (a folder of train/ and val/, SFEW with val_as val): two copies of
one file, one in the official train split and one in val, are counted by align as a train/val copy and kept, then
dealt to two folds by key. Where one lands in a fold's test split and the other in its train split, a test face
was trained on, and the shard stage skipped the pair as align's (audit h136)."""
from __future__ import annotations

import json
import tarfile

from tests.ferdata.test_near_copies import _faces, _happy_folder, _jpeg, _prepared


def _pictures(split_dir) -> dict[str, str]:
    """key -> sha256 of the picture of each sample in a split's shards."""
    out = {}
    for shard in sorted(split_dir.glob("*.tar")):
        with tarfile.open(shard) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".json") and not m.name.endswith(".regions.json"):
                    meta = json.loads(tf.extractfile(m).read())
                    out[meta["key"]] = meta["sha256"]
    return out


def test_copies_of_one_file_dealt_to_a_folds_train_and_test_are_named(tmp_path):
    from ferdata.stages.shard import ShardParams
    from tests.reliability.corpus import build, stage_params
    faces, root = _faces(16), tmp_path / "raw"
    _happy_folder(root, faces, {"train": range(4, 16), "val": range(4)},
                  {f"train/copy{i}.jpg": _jpeg(faces[i]) for i in range(4)})      # each val face's bytes in train
    params = stage_params(tmp_path, backend="precropped")
    spanning = 0
    for fold in range(3):
        params["shard"] = build(ShardParams, "shard", maxcount=8, folds=3, fold=fold, val_fraction=0.0)
        out = tmp_path / f"out{fold}"
        report = _prepared(root, params, out)
        train, test = _pictures(out / "shards" / "train"), _pictures(out / "shards" / "test")
        leaked = sorted(k for k, sha in train.items() if sha in set(test.values()))
        spanning += bool(leaked)
        named = report["notes"].get("near_copies_of_held_out", {})
        assert [k for k in leaked if k not in named] == [], f"fold {fold}: test faces trained on, not named"
    assert spanning, "the fixture deals no copy to a fold's train and test: it tests nothing"
