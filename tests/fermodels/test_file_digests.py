"""Every place that identifies a file by content (shard checks, weight files in a checkpoint's record,
face-model files in the detection cache key, an export's metadata) uses the same SHA-256 of its bytes."""
from __future__ import annotations

import hashlib
import os

from ferdata.faces.base import files_fingerprint
from ferdata.tario import sha256_file
from fermodels.checkpoints import FROM_CHECKPOINT, weight_file_digests


def test_file_digests_are_the_sha256_of_the_bytes(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)               # over several read blocks, not a multiple of one
    path = tmp_path / "weights.pth"
    path.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert sha256_file(path) == sha256_file(str(path)) == want
    assert weight_file_digests({"pretrained": str(path), "landmark_checkpoint": None}) == {"pretrained": want}
    assert weight_file_digests({"pretrained": FROM_CHECKPOINT}) == {}
    assert files_fingerprint([path]) == f"weights.pth:{want[:16]}"
