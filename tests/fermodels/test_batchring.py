"""The shared batch ring between loader workers and the main process: batches arrive intact and
stay the caller's, a worker never overwrites a buffer the main process has not released, a
stopped loader lets its workers go, and the buffers fit exactly what the decoder makes."""
from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time

import numpy as np
import pytest
import torch

from ferdata.tario import iter_tar_samples
from fermodels import batchring
from ferdata.parallel import alive as _alive
from fermodels.batchring import BatchRing
from fermodels.data import SampleDecoder, decode_batch
from fermodels.distributed import DistEnv
from fermodels.epochplan import plan_epoch
from fermodels.shardsplit import open_split
from fermodels.stream import RING_DEPTH, stream_loader

FIELD_SETS = [("image",), ("image", "left", "right"), ("image", "heatmap"), ("image", "lmk")]


def _stacked(samples: list[dict]) -> dict[str, torch.Tensor]:
    """The reference batch: each field of decoded ``samples`` stacked with numpy."""
    out = {"label": torch.tensor([s["label"] for s in samples], dtype=torch.int64)}
    return out | {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0] if k not in ("label", "key")}


def _raw_samples(split) -> dict[str, dict]:
    return {key: {"__key__": key, **fields} for url, _ in split.shards for key, fields in iter_tar_samples(url)}


@pytest.mark.parametrize("fields", FIELD_SETS)
def test_decoder_layout_is_what_it_makes(tiny_shards, fields):
    """The buffers are made from ``layout()`` before any sample is seen: it must match the
    decoder's real output for every field set (a mismatch would be refused by the ring)."""
    decoder = SampleDecoder(fields, 112)
    raw = next(iter(_raw_samples(open_split([tiny_shards], "train")).values()))
    stacked = _stacked([decoder(raw)] * 3)
    assert {k: (tuple(v.shape[1:]), v.dtype) for k, v in stacked.items()} == decoder.layout()


@pytest.mark.parametrize("fields", FIELD_SETS)
def test_decode_batch_equals_stacking_decoded_samples(tiny_shards, fields):
    """Decoding straight into the batch (new tensors or given buffers) gives what stacking the
    decoded samples gives, from just the members the decoder says it reads."""
    decoder = SampleDecoder(fields, 112, wire=56)
    raw = list(_raw_samples(open_split([tiny_shards], "train")).values())[:5]
    want = _stacked([decoder(s) for s in raw])
    only = [{e: v for e, v in s.items() if e in decoder.members or e == "__key__"} for s in raw]
    fields_new, keys = decode_batch(decoder, only)
    buffers = {name: torch.full((8, *shape), 7, dtype=dtype) for name, (shape, dtype) in decoder.layout().items()}
    fields_into, _ = decode_batch(decoder, only, lambda name, shape, dtype: buffers[name][: shape[0]])
    assert keys == [s["__key__"] for s in raw]
    for got in (fields_new, fields_into):
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want)
    assert all(torch.equal(buffers[k][:5], want[k]) for k in want)


@pytest.mark.parametrize("fields", FIELD_SETS)
def test_decoder_members_are_exactly_what_it_reads(tiny_shards, fields):
    """``members`` is what the loader reads of each sample: enough to decode, and none spare."""
    decoder = SampleDecoder(fields, 112)
    raw = next(iter(_raw_samples(open_split([tiny_shards], "train")).values()))
    assert decoder.members < set(raw)
    for missing in decoder.members:
        with pytest.raises((KeyError, ValueError)):
            decoder({e: v for e, v in raw.items() if e in decoder.members - {missing} or e == "__key__"})


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("fields", [("image",), ("image", "left", "right", "heatmap", "lmk")])
def test_worker_batches_are_exact_and_owned_by_the_caller(tiny_shards, fields, workers):
    """Two workers, batches of 2 (each worker writes more batches than its ring is deep), and
    in-process: every batch, kept until the epoch ends, still holds each key's own decoded
    pixels, label, landmarks."""
    split = open_split([tiny_shards], "train")
    decoder = SampleDecoder(fields, 112)
    plans = plan_epoch(split.shards, samples=split.num_samples, batch_size=2, env=DistEnv(0, 1, 0), workers=2,
                       seed=5, shuffle=True)
    assert all(len(p.batch_sizes) > RING_DEPTH for p in plans)
    if not workers:
        plans = plan_epoch(split.shards, samples=split.num_samples, batch_size=2, env=DistEnv(0, 1, 0), workers=1,
                           seed=5, shuffle=True)
    batches = list(stream_loader(plans, decoder, workers=workers, shuffle_buffer=8, seed=1, repeat=None))
    raw = _raw_samples(split)
    seen = []
    for batch in batches:
        for i, key in enumerate(batch["key"]):
            want = decoder(raw[key])
            assert int(batch["label"][i]) == want["label"]
            assert torch.equal(batch["image"][i], torch.from_numpy(want["image"]).permute(2, 0, 1))
            for name in set(fields) & {"left", "right"}:
                assert torch.equal(batch[name][i], torch.from_numpy(want[name]).permute(2, 0, 1))
            if "heatmap" in fields:
                assert torch.equal(batch["heatmap"][i, 0], torch.from_numpy(want["heatmap"]))
            if "lmk" in fields:
                assert torch.equal(batch["lmk"][i], torch.from_numpy(want["lmk"]))
            seen.append(key)
    assert sorted(seen) == sorted(raw)


def _ring(depth: int = 2) -> BatchRing:
    return BatchRing({"label": ((), torch.int64), "image": ((4, 4, 3), torch.uint8)}, workers=1, depth=depth,
                     capacity=5)


def _acquire_in_thread(ring: BatchRing, serial: int) -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()
    t = threading.Thread(target=lambda: (ring.acquire(0, serial), done.set()), daemon=True)
    t.start()
    return t, done


def test_worker_waits_for_the_release_of_the_buffer_it_reuses():
    ring = _ring(depth=2)
    ring.acquire(0, 0), ring.acquire(0, 1)                     # two free buffers: no wait
    t, done = _acquire_in_thread(ring, 2)                      # reuses batch 0's buffer
    assert not done.wait(0.3)
    ring.released[0] = 1                                       # the main process copied batch 0 out
    assert done.wait(10)
    t.join(10)


def test_release_all_lets_a_waiting_worker_go():
    ring = _ring(depth=1)
    t, done = _acquire_in_thread(ring, 5)
    assert not done.wait(0.3)
    ring.release_all()
    assert done.wait(10)
    t.join(10)


def test_receive_copies_out_and_releases():
    ring = _ring(depth=2)
    empty = ring.acquire(0, 1)
    fields = {"label": empty("label", (2,), torch.int64), "image": empty("image", (2, 4, 4, 3), torch.uint8)}
    for i, k in enumerate((3, 7)):
        fields["label"][i], fields["image"][i] = k, k
    own = ring.receive(BatchRing.message(0, 1, 2, {"key": ["3", "7"]}), pin=False)
    assert int(ring.released[0]) == 2
    fields["image"].fill_(0)                                   # the worker reuses the buffer
    assert own["label"].tolist() == [3, 7] and own["image"][1].unique().tolist() == [7]


@pytest.mark.parametrize("pin", [False, pytest.param(True, marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="pinned memory needs CUDA"))])
def test_the_main_process_copies_batches_out_without_torchs_thread_pool(monkeypatch, pin):
    """torch's copy of a batch runs in its OpenMP pool, whose threads then spin on the cores the
    workers decode on (the loader ran 1.7x slower with torch's default threads in the main
    process): the copy out of the ring must be one thread's, and exact for every layout dtype."""
    ring = BatchRing({"label": ((), torch.int64), "image": ((4, 4, 3), torch.uint8), "lmk": ((68, 2), torch.float32)},
                     workers=1, depth=1, capacity=3)
    empty = ring.acquire(0, 0)
    written = {name: empty(name, (3, *shape), dtype) for name, (shape, dtype) in ring.layout.items()}
    for t in written.values():
        t.copy_(torch.arange(t.numel()).reshape(t.shape))
    want = {name: t.clone() for name, t in written.items()}

    def threaded(*args, **kwargs):
        raise AssertionError("the ring's copy went through torch's thread pool")

    monkeypatch.setattr(torch.Tensor, "copy_", threaded)
    monkeypatch.setattr(torch.Tensor, "clone", threaded)
    own = ring.receive(BatchRing.message(0, 0, 3, {"key": ["a", "b", "c"]}), pin=pin)
    monkeypatch.undo()
    assert all(torch.equal(own[k], want[k]) and own[k].dtype == want[k].dtype for k in want)
    assert all(own[k].is_pinned() == pin and own[k].data_ptr() != written[k].data_ptr() for k in want)


FLOAT8 = ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu")


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.float32, torch.float16, torch.bool,
                                   torch.complex64, torch.bfloat16, torch.complex32,   # the last: NumPy lacks them
                                   *(getattr(torch, n) for n in FLOAT8 if hasattr(torch, n))])
@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_copy_out_is_exact_for_every_dtype_and_layout(dtype):
    """``copy_out`` (also ``host_to``'s pinned copy) must take any tensor bound for a GPU, bfloat16
    among them (NumPy has no such dtype), expanded or strided, and give a dense, bit-exact copy."""
    from fermodels.batchring import copy_out
    width = torch.empty(0, dtype=dtype).element_size()
    bits = (torch.arange(24 * width) * 37 % (2 if dtype == torch.bool else 256)).to(torch.uint8)
    base = bits.view(dtype).reshape(2, 3, 4)                         # any bit pattern, reinterpreted
    for src in (base, base[:, ::2, 1:], base[:1].expand(5, 3, 4), base.transpose(0, 2)):
        own = copy_out(src, pin=False)
        assert own.dtype == dtype and own.shape == src.shape and own.data_ptr() != src.data_ptr()
        assert own.untyped_storage().nbytes() == own.numel() * own.element_size()      # dense
        assert torch.equal(own.contiguous().view(-1).view(torch.uint8), src.contiguous().view(-1).view(torch.uint8))


@pytest.mark.parametrize("name,shape,dtype", [("image", (2, 5, 4, 3), torch.uint8),     # wrong size
                                              ("image", (6, 4, 4, 3), torch.uint8),     # over capacity
                                              ("image", (2, 4, 4, 3), torch.float32),   # wrong dtype
                                              ("lmk", (2, 68, 2), torch.float32)])     # not in the layout
def test_a_field_that_does_not_fit_is_refused(name, shape, dtype):
    with pytest.raises(ValueError, match="does not fit"):
        _ring().acquire(0, 0)(name, shape, dtype)


def test_a_ring_larger_than_free_shared_memory_is_refused_with_what_to_do(monkeypatch):
    """Docker's 64 MB /dev/shm: the ring is refused before any byte is written (a full tmpfs
    would end the loader with a bus error instead)."""
    class Tiny:
        f_bavail, f_frsize = 1024, 4096                            # 4 MB free
    monkeypatch.setattr("fermodels.batchring.os.statvfs", lambda path: Tiny)
    with pytest.raises(RuntimeError, match=r"need 14 MB .* 4 MB free: .*--shm-size"):
        BatchRing({"image": ((112, 112, 3), torch.uint8)}, workers=2, depth=6, capacity=32)    # 2*6*32*37,632 B
    BatchRing({"image": ((112, 112, 3), torch.uint8)}, workers=1, depth=1, capacity=32)    # 1.2 MB fits


def _waiting_worker(ring: BatchRing, q, first_wait_after: float = 0.0) -> None:
    q.put("started")
    time.sleep(first_wait_after)
    try:
        ring.acquire(0, 1)            # depth 1: waits until the main process releases batch 0
        q.put("ok")
    except Exception as e:  # noqa: BLE001 - reported to the test
        q.put(repr(e))


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_waiting_worker_is_not_taken_for_an_orphan_whatever_starts_it(method):
    """A worker started by a fork server (Python 3.14's default on Linux) has the fork server for its
    parent: it stopped with "the loader's main process is gone" the first time it waited."""
    ctx = mp.get_context(method)
    ring = BatchRing({"label": ((), torch.int64)}, workers=1, depth=1, capacity=2)
    q = ctx.Queue()
    p = ctx.Process(target=_waiting_worker, args=(ring, q))
    p.start()
    assert q.get(timeout=60) == "started"
    time.sleep(0.3)                   # it waits now
    ring.released[0] = 1
    assert q.get(timeout=30) == "ok"
    p.join(10)


def _main_then_gone(q, first_wait_after: float, sibling: bool) -> None:
    ring = BatchRing({"label": ((), torch.int64)}, workers=1, depth=1, capacity=2)
    fork = mp.get_context("fork")
    fork.Process(target=_waiting_worker, args=(ring, q, first_wait_after)).start()
    if sibling:                       # forked later: it inherits the pipe end that tells the first of its parent
        fork.Process(target=time.sleep, args=(5,)).start()      # ends on its own, after the check
    time.sleep(0.3)
    os._exit(0)


@pytest.mark.parametrize("first_wait_after, sibling", [(0.0, False), (1.0, False), (0.0, True)],
                         ids=["waiting", "first-wait-after-it-died", "a-later-sibling-alive"])
def test_a_worker_whose_main_process_is_gone_stops(first_wait_after, sibling):
    """Also when the worker first waits after the main process died and before it is reaped (a
    zombie: its pid still answers): that worker polled on until the reaping. And while a worker forked
    after it lives, which holds multiprocessing's pipe to the main process open."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    main = ctx.Process(target=_main_then_gone, args=(q, first_wait_after, sibling))
    main.start()
    assert q.get(timeout=60) == "started"
    if not first_wait_after and not sibling:
        main.join(30)                 # gone, and reaped
    assert q.get(timeout=4) == "RuntimeError(\"the loader's main process is gone\")"   # before the sibling ends
    main.join(30)


def _zombie(comm: str) -> int:
    """A child that named itself ``comm`` and exited, not yet reaped."""
    pid = os.fork()
    if pid == 0:                                                     # pragma: no cover - the child
        try:
            with open("/proc/self/comm", "w") as f:
                f.write(comm)
        finally:
            os._exit(0)
    for _ in range(500):
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rpartition(b")")[2].split()[0] == b"Z":
                return pid
        time.sleep(0.01)
    raise AssertionError("the child did not exit")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_a_zombie_or_reaped_pid_is_not_alive_whatever_its_name():
    """A zombie's pid still answers kill(0); its state is read past the last ')' of its name, which
    may hold ') R' itself."""
    assert _alive(os.getpid())
    pid = _zombie("w) R (x")
    try:
        assert not _alive(pid)
    finally:
        os.waitpid(pid, 0)
    assert not _alive(pid)                                           # reaped: no such process


def test_a_pid_not_ours_to_signal_is_alive(monkeypatch):
    def refused(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", refused)
    assert _alive(12345)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_without_multiprocessings_handle_the_main_process_is_watched_by_its_pid(monkeypatch):
    """Where multiprocessing has no parent (or another one than the ring's maker), the ring's maker's
    pid is watched: alive, not orphaned, whatever that other parent does; a zombie, orphaned."""
    monkeypatch.setattr(batchring, "ORPHAN_CHECK_S", 0.0)            # every call looks
    ring = BatchRing({"label": ((), torch.int64)}, workers=1, depth=1, capacity=2)
    assert not ring._orphaned()                                      # no parent process here: the pid
    pid = _zombie("gone")
    try:
        ring._parent = pid
        assert ring._orphaned()
    finally:
        os.waitpid(pid, 0)
    ring._parent = os.getpid()

    class OtherParent:                                               # e.g. a worker started by another process
        pid = os.getpid() + 1

        @staticmethod
        def is_alive() -> bool:
            return False

    monkeypatch.setattr(batchring.multiprocessing, "parent_process", lambda: OtherParent)
    assert not ring._orphaned()
