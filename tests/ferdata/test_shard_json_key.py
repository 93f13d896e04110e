"""The shard stage against an aligned sample whose json names another key than its tar members
(review h53): one sample was silently lost and another written twice, a test face into train too."""
from __future__ import annotations

import json
import tarfile

import pytest

import ferdata.stages.shard as shard
from ferdata.layout import ALIGNED, CONTENT, REPORT, output_digest
from ferdata.stages.shard import ShardParams, run_shard
from ferdata.tario import TarShardWriter, content_digest, list_shards
from tests.ferdata.test_shard_memory import PARAMS, make_inputs


def _rewrite_aligned(root, edit, rename=lambda key: key) -> None:
    """root/aligned rewritten with ``edit(key, fields)`` applied to every sample, reports kept valid."""
    samples: dict[str, dict[str, bytes]] = {}
    for path in list_shards(root / "aligned", ALIGNED):
        with tarfile.open(path) as t:
            for m in t.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = t.extractfile(m).read()
    for path in list_shards(root / "aligned", ALIGNED):
        path.unlink()
    with TarShardWriter(root / "aligned", ALIGNED, 1000) as w:
        for i, (key, fields) in enumerate(samples.items()):
            w.write(rename(key), edit(i, key, fields))
    report = json.loads((root / "aligned" / REPORT).read_text())
    report["notes"][CONTENT] = content_digest(w.files)
    (root / "aligned" / REPORT).write_text(json.dumps(report))
    derived = json.loads((root / "derived" / REPORT).read_text())
    derived["inputs"][ALIGNED] = output_digest(root / "aligned", ALIGNED)
    (root / "derived" / REPORT).write_text(json.dumps(derived))


@pytest.mark.parametrize("other", ["another sample's", "no sample's"])
def test_a_json_naming_another_key_than_its_members_is_refused_in_words(tmp_path, other):
    make_inputs(tmp_path, 60)
    first: list[str] = []

    def edit(i, key, fields):
        if i == 0:
            first.append(key)
        if i == 5:
            meta = json.loads(fields["json"])
            meta["key"] = first[0] if other == "another sample's" else key + "_renamed"
            fields = {**fields, "json": json.dumps(meta, sort_keys=True).encode()}
        return fields

    _rewrite_aligned(tmp_path, edit)
    with pytest.raises(ValueError, match="has a json naming key .*the align stage's output is damaged"):
        run_shard(tmp_path / "aligned", tmp_path / "derived", ShardParams(**PARAMS), tmp_path / "shards")
    assert not (tmp_path / "shards").exists()


def test_inputs_replaced_with_other_keys_mid_run_are_told_as_replaced(tmp_path, monkeypatch):
    """Replaced (another align run) by an output whose members lie at the same offsets under other
    keys: the split assignment's key lookup raised a bare KeyError (a traceback, as a bug) where the
    stage said the inputs were replaced."""
    make_inputs(tmp_path, 60)
    real = shard.stage_settings

    def reversed_keys(i, key, fields):                    # same lengths: the same member offsets
        meta = json.loads(fields["json"])
        meta["key"] = key[::-1]
        return {**fields, "json": json.dumps(meta, sort_keys=True).encode()}

    def swapped(aligned_dir, derived_dir):                # after the first read, before the assignment
        _rewrite_aligned(tmp_path, reversed_keys, rename=lambda key: key[::-1])
        return real(aligned_dir, derived_dir)

    monkeypatch.setattr(shard, "stage_settings", swapped)
    with pytest.raises(ValueError, match="was replaced while the shard stage read it"):
        run_shard(tmp_path / "aligned", tmp_path / "derived", ShardParams(**PARAMS), tmp_path / "shards")
    assert not (tmp_path / "shards").exists()
