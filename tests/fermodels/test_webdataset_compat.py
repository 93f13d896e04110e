"""The shards are WebDataset shards: the `webdataset` library reads them as our own reader does
(same samples, keys, members and bytes, in shard order), so users can feed them to their own
WebDataset pipelines."""
from __future__ import annotations

import io
import json

import numpy as np

from ferdata.io import decode_jpeg_rgb
from ferdata.tario import iter_tar_samples
from fermodels.shardsplit import open_split


def test_the_webdataset_library_reads_every_split_as_we_do(tiny_shards):
    import webdataset as wds

    for split_name in ("train", "val", "test"):
        split = open_split([tiny_shards], split_name)
        urls = [path for path, _ in split.shards]
        theirs = list(wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, empty_check=False))
        ours = [(key, fields) for url in urls for key, fields in iter_tar_samples(url)]
        assert len(theirs) == len(ours) == split.num_samples
        for sample, (key, fields) in zip(theirs, ours):
            assert sample["__key__"] == key
            assert {k: v for k, v in sample.items() if not k.startswith("__")} == fields
            assert int(sample["cls"]) == json.loads(sample["json"])["label"]
            assert decode_jpeg_rgb(sample["jpg"]).shape == (112, 112, 3)
            assert np.isfinite(np.load(io.BytesIO(sample["lmk.npy"]))).all()
