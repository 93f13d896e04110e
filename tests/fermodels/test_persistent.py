"""Persistent loader workers: every epoch gives exactly the batches of a fresh loader for that
epoch (plans, shuffle, pixels), from the same worker processes; an epoch stopped early, a resume
inside an epoch and in-process loading stay exact, and the trainer forks its training and
validation workers once."""
from __future__ import annotations

import pytest
import torch

import fermodels.indexed as indexed
import fermodels.stream as stream
from fermodels.data import SampleDecoder
from fermodels.distributed import DistEnv
from fermodels.shardsplit import open_split
from fermodels.stream import EpochPlanner, PersistentLoader, stream_loader
from fermodels.train import train

from tests.fermodels.helpers import make_params

FIELDS = ("image", "lmk")


def _planner(shards, workers: int = 2, batch: int = 2) -> EpochPlanner:
    split = open_split([shards], "train")
    kw = dict(samples=split.num_samples, batch_size=batch, env=DistEnv(0, 1, 0), workers=workers, shuffle=True)
    return EpochPlanner(tuple(split.shards), seed=11, rank=0, plan_kw=kw)


def _fresh(planner: EpochPlanner, decoder: SampleDecoder, epoch: int, skip: int = 0, workers: int = 2) -> list[dict]:
    return list(stream_loader(planner.plans(epoch, skip), decoder, workers=workers, shuffle_buffer=8,
                              seed=planner.stream_seed(epoch), repeat=None))


def _same(got: list[dict], want: list[dict]) -> None:
    assert [b["key"] for b in got] == [b["key"] for b in want]
    for g, w in zip(got, want):
        assert all(torch.equal(g[k], w[k]) for k in ("label", "image", "lmk"))


def _pids(loader: PersistentLoader) -> list[int]:
    return [w.pid for w in loader._loader._iterator._workers]


def test_epochs_from_the_same_workers_equal_fresh_loaders(tiny_shards):
    planner, decoder = _planner(tiny_shards), SampleDecoder(FIELDS, 112)
    loader = PersistentLoader(planner, decoder, workers=2, shuffle_buffer=8, repeat=None)
    try:
        pids = None
        for epoch in range(3):
            batches = list(loader.epoch(epoch))               # kept: the batches stay the caller's
            _same(batches, _fresh(planner, decoder, epoch))
            pids = pids or _pids(loader)
            assert _pids(loader) == pids                         # the same processes every epoch
        assert [b["key"] for b in _fresh(planner, decoder, 0)] != [b["key"] for b in _fresh(planner, decoder, 1)]
        _same(list(loader.epoch(4, skip=3)), _fresh(planner, decoder, 4, skip=3))       # a resume inside an epoch
    finally:
        loader.close()


def test_an_epoch_stopped_early_restarts_the_workers(tiny_shards):
    planner, decoder = _planner(tiny_shards), SampleDecoder(FIELDS, 112)
    loader = PersistentLoader(planner, decoder, workers=2, shuffle_buffer=8, repeat=None)
    try:
        it = loader.epoch(0)
        next(it)
        before = _pids(loader)
        it.close()                                              # stopped after one batch
        _same(list(loader.epoch(1)), _fresh(planner, decoder, 1))
        assert set(_pids(loader)).isdisjoint(before)
    finally:
        loader.close()


def test_in_process_epochs(tiny_shards):
    planner, decoder = _planner(tiny_shards, workers=1), SampleDecoder(FIELDS, 112)
    loader = PersistentLoader(planner, decoder, workers=0, shuffle_buffer=8, repeat=None)
    _same(list(loader.epoch(2)), _fresh(planner, decoder, 2, workers=0))


def test_the_trainer_forks_its_loader_workers_once(tiny_shards, tmp_path, monkeypatch):
    """Three epochs, each validated: one training loader and one validation loader, both keeping
    their workers (before, each epoch made both anew)."""
    made = []

    class CountingLoader(torch.utils.data.DataLoader):
        def __init__(self, *args, **kwargs):
            made.append((kwargs.get("num_workers"), kwargs.get("persistent_workers")))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(stream, "DataLoader", CountingLoader)
    monkeypatch.setattr(indexed, "DataLoader", CountingLoader)
    # a buffer of 4 leaves the tiny split 4 shuffle streams (stream_count), so both workers make batches
    train(tiny_shards, make_params(epochs=3, workers=2, shuffle_buffer=4), tmp_path / "ckpt", tmp_path / "live")
    assert sorted(made) == [(2, True), (2, True)]


def test_every_loader_worker_runs_opencv_on_one_thread(tiny_shards, monkeypatch):
    """Loader workers resize with OpenCV, whose pool defaults to a thread per core in each worker:
    N workers put N x N threads on N cores. Each image here is filled with its worker's thread count."""
    import multiprocessing as mp

    if mp.get_start_method() != "fork":                # the patched resize below reaches forked workers only
        pytest.skip("needs fork: spawn / forkserver workers re-import fermodels.data, without the patch")
    import cv2
    import numpy as np

    import fermodels.data as data

    monkeypatch.setattr(data, "_resize", lambda img, h, w: np.full((h, w, 3), cv2.getNumThreads(), np.uint8))
    before = cv2.getNumThreads()
    cv2.setNumThreads(4)                               # what a parent on a 4-core machine has
    try:
        planner, decoder = _planner(tiny_shards), SampleDecoder(FIELDS, 112)
        fresh = _fresh(planner, decoder, 0)
        persistent = PersistentLoader(planner, decoder, workers=2, shuffle_buffer=8, repeat=None)
        try:
            kept = list(persistent.epoch(0))
        finally:
            persistent.close()
        split = indexed.IndexedSplit(open_split([tiny_shards], "val"), decoder, 7)
        validation = list(indexed.indexed_loader(split, range(len(split)), 4, workers=2))
        for batches in (fresh, kept, validation):
            assert batches and {int(v) for b in batches for v in b["image"].unique()} == {1}
        assert cv2.getNumThreads() == 4
    finally:
        cv2.setNumThreads(before)
