"""Shards prepared before e680564/1c39559 record ``threads`` (and face_alignment sfd/dlib's
``score_threshold``) in their detect options; shards prepared since do not. Training on both must
keep the backend's face-shaping options in the checkpoint, not drop them as 'different'."""
from __future__ import annotations

import json
import shutil

import pytest

from ferdata.faces import BACKENDS
from fermodels.shardsplit import open_split


def _set_options(shards, backends: dict, options: dict) -> None:
    for split in ("train", "val", "test"):
        path = shards / split / "_info.json"
        if path.is_file():
            info = json.loads(path.read_text())
            info["face_backends"] = backends
            info["detect"]["options"] = options
            path.write_text(json.dumps(info))


def test_pre_upgrade_threads_do_not_drop_the_backend_options(tiny_shards, tmp_path, caplog):
    old, new = (shutil.copytree(tiny_shards, tmp_path / name) for name in ("old", "new"))
    backends = json.loads((old / "train" / "_info.json").read_text())["face_backends"]
    name = next(iter(backends))
    _set_options(old, backends, {"det_size": 320, "threads": 4})       # as e4e43ad recorded a thread count
    _set_options(new, backends, {"det_size": 320})                     # as HEAD records the same faces
    assert open_split([old, new], "train").face_backend_options == {name: {"det_size": 320}}
    assert open_split([old], "train").face_backend_options == {name: {"det_size": 320}}
    assert "ran with different options" not in caplog.text


@pytest.mark.parametrize("backend,options", [("embedded", {"det_size": 320, "threads": 2}),
                                             ("face_alignment", {"detector": "sfd", "score_threshold": 0.5}),
                                             ("face_alignment", {"score_threshold": 0.5, "threads": 1}),
                                             ("insightface", {"pack": "antelopev2", "threads": 3})])
def test_face_options_agree_with_the_backends_unsigned(backend, options):
    from fermodels.shardsplit import _face_options

    unsigned = BACKENDS.get(backend).unsigned(options)
    assert _face_options(backend, options) == {k: v for k, v in options.items() if k not in unsigned}
