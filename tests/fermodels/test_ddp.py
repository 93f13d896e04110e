"""DDP logic: the epoch plan (exact coverage, equal batches per rank), the real loaders of
several ranks and workers, and training under a real 2-process gloo group on CPU."""
from __future__ import annotations

import io
import itertools
import math
import os
import socket
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ferdata.errors import is_user_error
from fermodels.data import SampleDecoder
from fermodels.shardsplit import open_split
from fermodels.distributed import (DistEnv, GlobalBatch, all_gather_objects, env_from_os, max_over_ranks, pick_device,
                                   sync_buffers)
from fermodels.epochplan import (batch_sizes, mix_seed, plan_epoch, round_robin_skips, shard_order, split_evenly,
                                 stream_count)
from fermodels.losses import neutral_aware_anchor
from fermodels.sampling import ClassRepeat
from fermodels.stream import stream_loader

from tests.fermodels.helpers import make_params


def _positions(plans, shards) -> list[tuple[str, int]]:
    return [(p.url, i) for plan in plans for p in plan.pieces for i in range(p.start, p.stop)]


@pytest.mark.parametrize("world,workers,batch,counts", [
    (1, 0, 8, [4, 4, 4, 2]), (2, 2, 4, [4, 4, 4, 4, 4, 4, 4, 4, 2]), (3, 2, 5, [7, 1, 9, 3]),
    (4, 3, 2, [5, 5, 5, 5, 5, 5, 1]), (2, 4, 16, [33]), (8, 2, 3, [40, 39, 2])])
def test_plan_covers_every_sample_once_with_equal_batches(world, workers, batch, counts):
    shards = [(f"s{i}.tar", n) for i, n in enumerate(counts)]
    total = sum(counts)
    seen, batches = Counter(), set()
    for rank in range(world):
        plans = plan_epoch(shards, samples=total, batch_size=batch, env=DistEnv(rank, world, 0), workers=workers,
                           seed=3, shuffle=True)
        for p in plans:
            assert sum(pc.stop - pc.start for pc in p.pieces) == p.num_samples
            assert all(1 <= b <= batch for b in p.batch_sizes)
        batches.add(sum(len(p.batch_sizes) for p in plans))
        seen.update(_positions(plans, shards))
    assert len(batches) == 1, "every rank must run the same number of batches"
    assert sum(seen.values()) == total and max(seen.values()) == 1
    assert set(seen) == {(u, i) for u, n in shards for i in range(n)}


def test_plan_is_seeded_and_epochs_differ():
    shards = [(f"s{i}.tar", 5) for i in range(6)]
    kw = dict(samples=30, batch_size=4, env=DistEnv(0, 1, 0), workers=1, shuffle=True)
    assert plan_epoch(shards, seed=1, **kw) == plan_epoch(shards, seed=1, **kw)
    assert plan_epoch(shards, seed=1, **kw) != plan_epoch(shards, seed=2, **kw)
    unshuffled = plan_epoch(shards, seed=1, **{**kw, "shuffle": False})
    assert [p.url for p in unshuffled[0].pieces] == [u for u, _ in shards]


@pytest.mark.parametrize("counts, samples, world", [
    ([10], 5, 1),                     # half the split an epoch: one shard (CK+, JAFFE)
    ([10, 30], 20, 2),                # CK+ beside a larger dataset, two ranks
    ([10], 15, 1),                    # one and a half passes an epoch
    ([7, 6, 9], 11, 3)])
def test_epochs_shorter_or_longer_than_the_split_read_it_evenly(counts, samples, world):
    """train.epoch_samples: epoch e is the window [e * samples, (e + 1) * samples) of one sequence of
    passes, so the epochs that make whole passes read every sample as often. Each epoch cut its own
    passes at ``samples``: a shard's first samples every epoch, the rest of a one-shard dataset never
    (10 shards' worth, 5 an epoch: 5 samples read 40 times in 40 epochs, 5 never), and 15 an epoch
    over 10 read 5 samples twice an epoch."""
    shards = [(f"/d/ds{i % 2}/train/s{i}.tar", n) for i, n in enumerate(counts)]
    total = sum(counts)
    epochs = 4 * total // math.gcd(total, samples)          # 4 whole passes' worth of epochs
    seen: Counter = Counter()
    for epoch in range(epochs):
        for rank in range(world):
            plans = plan_epoch(shards, samples=samples, batch_size=4, env=DistEnv(rank, world, 0), workers=1,
                               seed=3, shuffle=True, epoch=epoch)
            seen.update(_positions(plans, shards))
    assert sum(seen.values()) == epochs * samples
    assert set(seen.values()) == {epochs * samples // total}, sorted(Counter(seen.values()).items())


def test_an_epoch_of_the_split_is_one_pass_and_the_next_another_order():
    """Epoch e of the split's size reads pass e in the order each epoch read before epochs became
    windows (``mix_seed(seed, e) * 7919``): its plans did not change."""
    shards = [(f"s{i}.tar", n) for i, n in enumerate((5, 7, 3, 6, 9, 2))]
    kw = dict(samples=32, batch_size=4, env=DistEnv(0, 1, 0), workers=1, seed=3, shuffle=True)
    for epoch in (0, 1, 7):
        order = [(url, i) for url, n in shard_order(shards, mix_seed(3, epoch) * 7919, True) for i in range(n)]
        assert _positions(plan_epoch(shards, epoch=epoch, **kw), shards) == order
    assert _positions(plan_epoch(shards, epoch=0, **kw), shards) != _positions(plan_epoch(shards, epoch=1, **kw),
                                                                                shards)


def test_batch_sizes_and_splits():
    assert batch_sizes(9, 4, 3) == [4, 3, 2]            # the last two share 5: no batch under half
    assert batch_sizes(8, 4, 3) == [4, 2, 2]
    assert batch_sizes(65, 64, 2) == [33, 32]          # not [64, 1]: no step on a single sample
    assert batch_sizes(1000, 64, 16) == [64] * 15 + [40]   # the configured size, but for the last
    assert batch_sizes(64, 64, 1) == [64] and batch_sizes(3, 4, 3) == [1, 1, 1]
    assert sum(batch_sizes(1000, 32, 32)) == 1000
    with pytest.raises(ValueError, match="cannot cut"):
        batch_sizes(2, 4, 3)
    assert split_evenly(10, 3) == [4, 3, 3]
    assert round_robin_skips([3, 3, 2], 5) == [2, 2, 1]
    assert round_robin_skips([3, 3, 2], 7) == [3, 2, 2]
    assert round_robin_skips([2, 1], 3) == [2, 1]


def test_parts_in_proportion_give_leftovers_to_the_largest_remainders_and_datasets_interleave_mid_cell():
    """By hand. 10 samples in proportion to 1 : 2 : 4 are 1.43, 2.86, 5.71: floors 1, 2, 5 and the two
    leftovers to the largest remainders (0.86, 0.71), not to the first parts. Datasets of 3 and 1 samples
    interleave with each sample at the middle of its share of the pass, (k + 1/2) / n: 1/6, 1/2, 5/6 and
    1/2, the tie going to the dataset listed first."""
    from fermodels.epochplan import _mixed_order, split_in_proportion

    assert split_in_proportion(10, [1, 2, 4]) == [1, 3, 6]
    assert _mixed_order((3, 1)).tolist() == [0, 0, 1, 0]


def test_a_last_batch_of_exactly_half_is_kept():
    assert batch_sizes(6, 4, 2) == [4, 2] and batch_sizes(5, 4, 2) == [3, 2]      # 1 < 2: shared


def test_a_last_batch_under_half_an_odd_batch_size_is_shared_with_the_one_before():
    """Guards against the "under half a batch" rule being off by one (``2 * last < bs - 1``), which
    only shows at an odd batch size: the documented rule compares the last batch with bs / 2."""
    # 7 at 5: full batches first give [5, 2]; 2 < 5 / 2 = 2.5, so the last two share 7 as 4 + 3
    assert batch_sizes(7, 5, 2) == [4, 3]
    # 10 at 7: [7, 3]; 3 < 3.5, shared as 5 + 5
    assert batch_sizes(10, 7, 2) == [5, 5]
    # at or above half nothing moves: 8 at 5 -> [5, 3] (3 >= 2.5), 11 at 7 -> [7, 4] (4 >= 3.5)
    assert batch_sizes(8, 5, 2) == [5, 3] and batch_sizes(11, 7, 2) == [7, 4]


def test_epoch_samples_beyond_the_split_repeat_in_new_order():
    shards = [("a.tar", 3), ("b.tar", 3)]
    plans = plan_epoch(shards, samples=10, batch_size=5, env=DistEnv(0, 1, 0), workers=0, seed=0, shuffle=True)
    assert Counter(_positions(plans, shards)).most_common(1)[0][1] == 2
    assert sum(p.num_samples for p in plans) == 10


def _keys(loader) -> list[list[str]]:
    return [b["key"] for b in loader]


@pytest.mark.parametrize("world,workers", [(2, 2), (3, 0)])
def test_real_loaders_of_all_ranks_read_each_sample_once(tiny_shards, world, workers):
    split = open_split([tiny_shards], "train")
    decoder = SampleDecoder(("image",), 112)
    per_rank, keys = [], Counter()
    for rank in range(world):
        plans = plan_epoch(split.shards, samples=split.num_samples, batch_size=4, env=DistEnv(rank, world, 0),
                           workers=workers, seed=5, shuffle=True)
        batches = _keys(stream_loader(plans, decoder, workers=workers, shuffle_buffer=8, seed=rank, repeat=None))
        per_rank.append(len(batches))
        keys.update(k for b in batches for k in b)
    assert len(set(per_rank)) == 1
    assert sum(keys.values()) == split.num_samples == len(keys)


@pytest.mark.parametrize("balanced", [False, True])
@pytest.mark.parametrize("batch,streams,workers", [(2, 4, (1, 2, 4)), (2, 3, (1, 3)), (4, 16, (2, 16))])
def test_the_streams_set_the_batches_not_the_loader_workers(tiny_shards, balanced, batch, streams, workers):
    """README: an epoch's batches (which samples, in which order, their pixels) are the same under any
    number of loader workers that divides train.streams, 0 (in-process) included; before, each worker
    shuffled its own part, so another count trained on other batches. Cases: several rounds of
    streams, a number of streams no power of two, and more streams than batches (one round)."""
    split = open_split([tiny_shards], "train")
    decoder = SampleDecoder(("image",), 112)
    repeat = ClassRepeat.balanced(split.class_counts(7), split.num_samples) if balanced else None

    def epoch(n, lanes):
        plans = plan_epoch(split.shards, samples=split.num_samples, batch_size=batch, env=DistEnv(0, 1, 0),
                           workers=n, streams=lanes, seed=3, shuffle=True, one_pass=balanced)
        return [(b["key"], b["image"]) for b in stream_loader(plans, decoder, workers=n, shuffle_buffer=8,
                                                              seed=1, repeat=repeat)]

    alone = epoch(0, streams)
    assert len(alone) == math.ceil(split.num_samples / batch)
    for n in workers:
        made = epoch(n, streams)
        assert [k for k, _ in made] == [k for k, _ in alone], n
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(made, alone))
    other = epoch(2, 2)
    assert [k for k, _ in other] != [k for k, _ in alone]              # the streams do set the order
    if not balanced:
        assert sorted(k for keys, _ in other for k in keys) == sorted(k for keys, _ in alone for k in keys)


def test_workers_that_do_not_divide_the_streams_leave_some_idle_but_make_the_same_batches(tiny_shards):
    """A rank whose epoch is cut into fewer streams than asked (stream_count) may meet a worker count
    that does not divide them: the greatest common divisor of the two make its batches, unchanged."""
    split = open_split([tiny_shards], "train")
    decoder = SampleDecoder(("image",), 112)
    kw = dict(samples=split.num_samples, batch_size=2, env=DistEnv(0, 1, 0), streams=6, seed=4, shuffle=True)
    assert len(plan_epoch(split.shards, workers=4, **kw)) == 2 and len(plan_epoch(split.shards, workers=6, **kw)) == 6
    alone = _keys(stream_loader(plan_epoch(split.shards, workers=0, **kw), decoder, workers=0, shuffle_buffer=8,
                                seed=1, repeat=None))
    assert _keys(stream_loader(plan_epoch(split.shards, workers=4, **kw), decoder, workers=4, shuffle_buffer=8,
                               seed=1, repeat=None)) == alone
    one_round = dict(kw, samples=8, batch_size=2)                      # 4 batches, 4 streams: any count
    assert len(plan_epoch(split.shards, workers=3, **one_round)) == 3


def test_a_small_epoch_is_cut_into_fewer_streams_each_shuffling_a_buffer():
    """A one-shard dataset keeps its file order every epoch: cut into 8 contiguous parts, its batches
    would hold the same few dozen faces every epoch. Fewer streams (a divisor of train.streams), each
    at least a shuffle buffer, never depending on the workers."""
    from fermodels.epochplan import stream_count

    assert stream_count(8, 330, 500) == 1                   # the sample, CK+, JAFFE: one stream, shuffled whole
    assert stream_count(8, 2400, 500) == 4 and stream_count(8, 4000, 500) == 8
    assert stream_count(8, 287_651, 500) == 8              # AffectNet
    assert stream_count(24, 3500, 500) == 6                # the largest divisor with 500 each (8 would hold 437)
    assert stream_count(8, 100, 0) == 8 and stream_count(8, 100, 1) == 8       # no shuffle: nothing to keep


def test_resume_inside_an_epoch_replays_the_same_batches_under_any_workers(tiny_shards):
    split = open_split([tiny_shards], "train")
    decoder = SampleDecoder(("image",), 112)
    kw = dict(samples=split.num_samples, batch_size=3, env=DistEnv(0, 1, 0), streams=4, seed=9, shuffle=True)
    full = _keys(stream_loader(plan_epoch(split.shards, workers=2, **kw), decoder, workers=2, shuffle_buffer=8,
                               seed=1, repeat=None))
    for skip, workers in ((1, 2), (4, 4), (5, 0), (6, 4), (len(full) - 1, 2), (len(full) - 2, 1)):
        rest = _keys(stream_loader(plan_epoch(split.shards, skip_batches=skip, workers=workers, **kw), decoder,
                                   workers=workers, shuffle_buffer=8, seed=1, repeat=None))
        assert rest == full[skip:], (skip, workers)


def test_one_stream_per_worker_by_default_as_before(tiny_shards):
    """plan_epoch without ``streams`` (a library caller; the trainer always passes its count) gives
    each worker one stream."""
    split = open_split([tiny_shards], "train")
    kw = dict(samples=split.num_samples, batch_size=3, env=DistEnv(0, 1, 0), seed=9, shuffle=True)
    assert plan_epoch(split.shards, workers=2, **kw) == plan_epoch(split.shards, workers=2, streams=2, **kw)
    assert [len(p.streams) for p in plan_epoch(split.shards, workers=2, **kw)] == [1, 1]


def test_a_piece_past_its_shards_end_names_the_shards_real_count(tiny_shards):
    from fermodels.epochplan import Piece
    from fermodels.stream import read_pieces

    url, count = open_split([tiny_shards], "train").shards[0]
    with pytest.raises(ValueError, match=f"holds {count} samples, fewer than"):
        list(read_pieces([Piece(url, count + 2, count + 5)]))


def test_balanced_stream_evens_out_classes(tiny_shards):
    split = open_split([tiny_shards], "train")
    counts = split.class_counts(7)
    repeat = ClassRepeat.balanced([c * 10 if i == 1 else c for i, c in enumerate(counts)], 400)
    plans = plan_epoch(split.shards, samples=400, batch_size=20, env=DistEnv(0, 1, 0), workers=0, seed=0,
                       shuffle=True)
    labels = Counter(int(x) for b in stream_loader(plans, SampleDecoder(("image",), 112), workers=0,
                                                   shuffle_buffer=50, seed=0, repeat=repeat) for x in b["label"])
    assert sum(labels.values()) == 400
    assert labels[1] < 400 / 7 / 3, "the class pretending to be 10x larger must be sampled down"


@pytest.mark.parametrize("balanced", [False, True])
def test_a_shard_shorter_than_listed_is_an_error_not_a_shorter_epoch(tiny_shards, tmp_path, balanced):
    """A shard rewritten with fewer samples than its _info.json lists (a valid tar: nothing the tar
    reader can see) must stop the epoch, naming it; the class-balanced stream, which passes over its
    source until the epoch is full, silently trained on the rest before."""
    import shutil

    from ferdata.tario import TarShardWriter, iter_tar_samples

    data = shutil.copytree(tiny_shards, tmp_path / "shards")
    split = open_split([data], "train")
    shard, count = split.shards[0]
    with TarShardWriter(tmp_path / "short", "x", maxcount=count) as w:
        for key, fields in itertools.islice(iter_tar_samples(shard), count - 1):
            w.write(key, fields)
    shutil.move(tmp_path / "short" / "x-000000.tar", shard)          # after the split was opened
    repeat = ClassRepeat.balanced(split.class_counts(7), 64) if balanced else None
    plans = plan_epoch(split.shards, samples=64 if balanced else sum(n for _, n in split.shards), batch_size=8,
                       env=DistEnv(0, 1, 0), workers=0, seed=0, shuffle=False, one_pass=balanced)
    with pytest.raises(ValueError, match=f"{shard} holds {count - 1} samples, fewer than its split's _info.json"):
        list(stream_loader(plans, SampleDecoder(("image",), 112), workers=0, shuffle_buffer=8, seed=0,
                           repeat=repeat))


def test_balanced_epochs_read_one_pass_and_do_not_depend_on_workers_or_ranks():
    """Class-balanced epochs read the split once between all ranks and workers (each sample in
    exactly one part), so which samples an epoch shows does not depend on how many workers or
    ranks read it, also when the epoch is longer than the split (shards repeated in the plan gave
    a sample in two workers' parts the same keep-or-skip draw: 1,370 distinct of 2,000 with one
    worker, 1,027 with two)."""
    import random

    from fermodels.sampling import repeat_stream

    rng = random.Random(0)
    shards = [(f"s{i}", 40) for i in range(50)]
    label = {f"s{i}/{j}": 0 if rng.random() < 0.6 else rng.randint(1, 6) for i in range(50) for j in range(40)}
    counts = [sum(1 for v in label.values() if v == c) for c in range(7)]

    def epoch(samples: int, workers: int, world: int) -> Counter:
        repeat, out = ClassRepeat.balanced(counts, samples), Counter()
        for rank in range(world):
            plans = plan_epoch(shards, samples=samples, batch_size=32 // world, env=DistEnv(rank, world, 0),
                               workers=workers, seed=5, shuffle=True, one_pass=True)
            read = [f"{p.url}/{j}" for plan in plans for p in plan.pieces for j in range(p.start, p.stop)]
            assert len(read) == len(set(read))
            for plan in plans:
                keys = [{"__key__": f"{p.url}/{j}"} for p in plan.pieces for j in range(p.start, p.stop)]
                out.update(s["__key__"] for s in repeat_stream(lambda: iter(keys), repeat, plan.num_samples,
                                                               lambda s: label[s["__key__"]], mix_seed(5, rank)))
        return out

    for samples in (1000, 2000, 4000):
        distinct = {}
        for workers, world in ((1, 1), (2, 1), (4, 1), (4, 2)):
            got = epoch(samples, workers, world)
            assert sum(got.values()) == samples
            distinct[(workers, world)] = len(got)
        assert max(distinct.values()) - min(distinct.values()) < 0.06 * min(distinct.values()), (samples, distinct)
    whole = {f"{u}/{j}" for u, n in shards for j in range(n)}
    for world in (1, 3):
        parts = [f"{p.url}/{j}" for rank in range(world) for plan in plan_epoch(
                     shards, samples=4000, batch_size=8, env=DistEnv(rank, world, 0), workers=3, seed=1,
                     shuffle=True, one_pass=True) for p in plan.pieces for j in range(p.start, p.stop)]
        assert sorted(parts) == sorted(whole)                  # one pass: every sample in exactly one part
    with pytest.raises(ValueError, match="leave a part none to read; lower train.workers"):
        plan_epoch([("s0", 3)], samples=64, batch_size=4, env=DistEnv(0, 1, 0), workers=4, seed=0, shuffle=True,
                   one_pass=True)
    two = [("/d/a/t/a.tar", 3), ("/d/b/t/b.tar", 1)]         # 4 samples, 2 ranks x 2 workers: one each
    parts = [[(p.url, j) for p in plan.pieces for j in range(p.start, p.stop)] for rank in range(2)
             for plan in plan_epoch(two, samples=4, batch_size=1, env=DistEnv(rank, 2, 0), workers=2, seed=0,
                                    shuffle=True, one_pass=True)]
    assert sorted(len(part) for part in parts) == [1, 1, 1, 1]   # a part with none was refused before
    assert sorted(x for part in parts for x in part) == [(u, j) for u, n in two for j in range(n)]


# ---- a real process group -----------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, shards: str, out: str, mode: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if mode == "loader":
        torch.distributed.init_process_group("gloo")
        env = env_from_os()
        split = open_split([Path(shards)], "train")
        plans = plan_epoch(split.shards, samples=split.num_samples, batch_size=4, env=env, workers=0, seed=2,
                           shuffle=True)
        keys = _keys(stream_loader(plans, SampleDecoder(("image",), 112), workers=0, shuffle_buffer=8, seed=rank,
                                   repeat=None))
        everything = all_gather_objects(keys, env)
        if rank == 0:
            torch.save(everything, out)
        torch.distributed.destroy_process_group()
        return
    if mode == "timeout":                               # rank 1 alive but stuck: rank 0 must not wait for ever
        import time

        from fermodels.distributed import init_distributed

        os.environ["FER_DIST_TIMEOUT_S"] = "2"
        env = env_from_os()
        init_distributed(torch.device("cpu"), env)
        if rank == 1:
            time.sleep(12)
            os._exit(0)
        t0 = time.perf_counter()
        try:
            all_gather_objects("here", env)
            outcome = "no error"
        except RuntimeError as err:
            outcome = f"{type(err).__name__}: {err}"
        torch.save((outcome, time.perf_counter() - t0), out)
        os._exit(0)
    if mode == "global_batch":
        torch.distributed.init_process_group("gloo")
        env = env_from_os()
        x, labels = _probe_batch()
        share = slice(0, 5) if rank == 0 else slice(5, 8)           # uneven: the capacity is 5 rows
        net = _probe_net()
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        loss = GlobalBatch(world, rank, 5).loss(neutral_aware_anchor, *ddp(x[share]), labels[share])
        loss.backward()
        whole = [p.grad.clone() for p in net.parameters()]
        net.zero_grad()
        neutral_aware_anchor(*ddp(x[share]), labels[share]).backward()     # each rank's share alone
        gathered = all_gather_objects((loss.item(), whole, [p.grad.clone() for p in net.parameters()]), env)
        if rank == 0:
            torch.save(gathered, out)
        torch.distributed.destroy_process_group()
        return
    if mode == "weighted_ce":
        from fermodels.losses import GLOBAL_BATCH, label_loss

        torch.distributed.init_process_group("gloo")
        env = env_from_os()
        x, labels = _probe_batch()
        share = slice(0, 5) if rank == 0 else slice(5, 8)
        net = _probe_net()
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        batch = {"label": labels[share], "class_weight": CLASS_WEIGHT, GLOBAL_BATCH: GlobalBatch(world, rank, 5)}
        loss = label_loss(ddp(x[share])[1], batch)
        loss.backward()
        gathered = all_gather_objects((loss.item(), [p.grad.clone() for p in net.parameters()]), env)
        if rank == 0:
            torch.save(gathered, out)
        torch.distributed.destroy_process_group()
        return
    if mode == "buffers":
        torch.distributed.init_process_group("gloo")
        env = env_from_os()
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                  torch.nn.LazyLinear(2))
        net(torch.zeros(2, 3, 8, 8))
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        for step in range(3):                           # each rank its own data, as under DDP
            x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(10 * rank + step)) * (1 + rank)
            opt.zero_grad()
            ddp(x).sum().backward()
            opt.step()
        before = [b.clone() for b in net.buffers()]
        sync_buffers(net, env)
        worst = float(max_over_ranks(torch.tensor(float(rank)), env))     # rank 1 "saw a NaN"
        gathered = all_gather_objects(([b for b in before], [b.clone() for b in net.buffers()], worst), env)
        if rank == 0:
            torch.save(gathered, out)
        torch.distributed.destroy_process_group()
        return
    if mode == "own_params":                            # each rank in its own folder, as on its own machine
        import runpy
        import sys

        os.environ["FER_DIST_TIMEOUT_S"] = "20"
        os.chdir(Path(out) / f"machine{rank}")
        sys.argv = ["pipeline.train", "runs/select/train.json", "runs/train/ckpt", "runs/train/live"]
        try:
            runpy.run_module("pipeline.train", run_name="__main__", alter_sys=True)
            outcome = "trained"
        except BaseException as err:  # noqa: BLE001 - the test reads what each rank raised
            outcome = f"{type(err).__name__}: {err}"
        (Path(out) / f"rank{rank}-own.txt").write_text(outcome)
        return
    if mode.startswith("restart"):                      # torchrun's agent store, kept across restarts
        from fermodels.distributed import shutdown, start_ranks

        attempt = int(mode[len("restart"):])
        # a restart after rank 1's machine failed: its agent counts it, rank 0's agent (restarted for the
        # other machine's new membership, as c10d's agents are) does not
        os.environ.update(TORCHELASTIC_USE_AGENT_STORE="True", FER_DIST_TIMEOUT_S="10",
                          TORCHELASTIC_RESTART_COUNT=str(attempt if rank == 1 else 0))
        try:
            _, _, created = start_ranks(lambda: (None, torch.device("cpu")))
            total = torch.ones(1)
            torch.distributed.all_reduce(total)
            outcome = f"met {int(total)}"
            shutdown(created)
        except Exception as err:  # noqa: BLE001 - the test reads what each rank raised
            outcome = f"{type(err).__name__}: {err}"
        (Path(out) / f"rank{rank}-attempt{attempt}.txt").write_text(outcome)
        return
    if mode == "store_host_fails":                      # rank 1's machine hosts the store and stops on a mistake
        import time
        from datetime import timedelta

        from fermodels.distributed import _tell_start

        store = torch.distributed.TCPStore("127.0.0.1", port, world, is_master=rank == 1, wait_for_workers=False,
                                           timeout=timedelta(seconds=10))
        if rank == 0:                                   # a slower machine: it reads the others' words late
            get = torch.distributed.PrefixStore.get
            torch.distributed.PrefixStore.get = lambda self, key: (time.sleep(1.0), get(self, key))[1]
        failure = ValueError("train.epochs must be >= 1, got 0") if rank == 1 else None
        try:
            said, _, _ = _tell_start(store, DistEnv(rank, world, rank), failure, torch.device("cpu"),
                                     timedelta(seconds=10))
            outcome = repr(said)
        except Exception as err:  # noqa: BLE001 - the test reads what each rank raised
            outcome = f"{type(err).__name__}: {err}"
        (Path(out) / f"rank{rank}-host.txt").write_text(outcome)
        return                                          # rank 1's process ends: its store with it
    if mode == "kinds":                                 # rank 1 picked a GPU, rank 0 the CPU (device auto)
        from fermodels.distributed import start_ranks

        os.environ["FER_DIST_TIMEOUT_S"] = "20"
        try:
            start_ranks(lambda: (None, torch.device("cpu") if rank == 0 else torch.device("cuda", 0)))
            outcome = "joined"
        except Exception as err:  # noqa: BLE001 - the test reads what each rank raised
            outcome = f"{type(err).__name__}: {err}"
        (Path(out) / f"rank{rank}-kinds.txt").write_text(outcome)
        return
    import fermodels.train as trainer

    if mode in ("held", "no_weights"):                  # rank 0 refuses the checkpoint folder or its last.pt;
        if mode == "no_weights" and rank == 1:          # machine 1 lacks the weight file params.yaml names
            def missing(*args, **kwargs):
                raise FileNotFoundError("pretrained checkpoint '/models/w.pth' (msceleb_resnet18) does not exist")
            trainer.create_model = missing
        os.environ["FER_DIST_TIMEOUT_S"] = "20"
        try:
            trainer.train(shards, make_params(epochs=1), Path(out) / "ckpt", Path(out) / "live")
            outcome = "trained"
        except Exception as err:  # noqa: BLE001 - the test reads what each rank raised
            outcome = f"{type(err).__name__}{'' if is_user_error(err) else ' (a bug)'}: {err}"
        (Path(out) / f"rank{rank}-{mode}.txt").write_text(outcome)
        return
    if mode == "mismatch":                              # rank 1 reads another params.yaml (another seed)
        try:
            trainer.train(shards, make_params(epochs=1, seed=rank), Path(out) / "ckpt", Path(out) / "live")
            outcome = "trained"
        except Exception as err:  # noqa: BLE001 - the test reads what each rank raised
            outcome = f"{type(err).__name__}: {err}"
        (Path(out) / f"rank{rank}-mismatch.txt").write_text(outcome)
        return
    real_save = trainer._save

    def save_every_rank(env, path, run, *args):
        real_save(env, path, run, *args)
        torch.save(run.net.state_dict(), Path(out) / f"rank{env.rank}-{path.name}")
        whole = run.whole
        (Path(out) / f"rank{env.rank}-whole.txt").write_text(f"{whole.world_size} {whole.rank} {whole.capacity}")
        if run.ema is not None:
            torch.save(run.ema.state_dict(), Path(out) / f"rank{env.rank}-ema-{path.name}")

    trainer._save = save_every_rank
    if mode in ("killed", "whole"):                     # checkpoint_every 1; "killed" stops every rank at a save
        params = make_params(epochs=2, batch_size=8, workers=2, shuffle_buffer=4, checkpoint_every=1)
        saves = [0]

        def save_then_die(env, path, run, *args):
            save_every_rank(env, path, run, *args)
            saves[0] += path.name == "last.pt"
            if mode == "killed" and saves[0] == 3 and not (Path(out) / "ckpt" / "resumed").exists():
                os._exit(0)                             # every rank at the same step, rank 0's last.pt written
        trainer._save = save_then_die
        trainer.train(shards, params, Path(out) / "ckpt", Path(out) / "live")
        return
    import logging

    logging.getLogger("fermodels").setLevel(logging.INFO)
    logging.getLogger("fermodels").addHandler(logging.FileHandler(Path(out) / f"rank{rank}.log"))
    resuming = (Path(out) / "ckpt" / "last.pt").is_file()
    # persistent loader workers under DDP; the average on a model with BatchNorm statistics
    average = {"ema_decay": 0.9, "model": "resnet18_112", "model_kwargs": {}} if mode == "train_ema" else {}
    params = make_params(epochs=2, batch_size=8, workers=2, shuffle_buffer=4, **average)   # 2 streams a rank
    best = trainer.train(shards, params, Path(out) / "ckpt", Path(out) / "live")
    torch.save(best, Path(out) / f"rank{rank}-{'again' if resuming else 'first'}.pt")


def test_two_gloo_ranks_split_the_epoch_exactly(tiny_shards, tmp_path):
    out = tmp_path / "keys.pt"
    mp.start_processes(_worker, args=(2, _free_port(), str(tiny_shards), str(out), "loader"), nprocs=2,
                       start_method="fork")
    per_rank = torch.load(out)
    assert len(per_rank[0]) == len(per_rank[1])
    keys = list(itertools.chain.from_iterable(itertools.chain.from_iterable(per_rank)))
    assert len(keys) == len(set(keys)) == open_split([tiny_shards], "train").num_samples


def _outcomes(shards, out, mode: str) -> list[str]:
    """What each of two ranks of :func:`_worker` in ``mode`` raised (or "trained")."""
    mp.start_processes(_worker, args=(2, _free_port(), str(shards), str(out), mode), nprocs=2, start_method="fork")
    return [(out / f"rank{rank}-{mode}.txt").read_text() for rank in (0, 1)]


def test_a_checkpoint_folder_another_run_holds_stops_every_rank_with_the_reason(tiny_shards, tmp_path):
    """Rank 0 alone holds the checkpoint folder; when it is refused, the other ranks stop with
    its message at once (they went on and waited at their first collective for rank 0)."""
    from fermodels.ckptdir import checkpoints_held

    with checkpoints_held(tmp_path / "ckpt"):
        outcomes = _outcomes(tiny_shards, tmp_path, "held")
    assert outcomes[0].startswith("BlockingIOError: another run is training into"), outcomes
    assert outcomes[1].startswith("RankZeroRefusal: rank 0 stopped before training: BlockingIOError: another run is "
                                  "training into"), outcomes
    assert not (tmp_path / "live").exists()


@pytest.mark.parametrize("damage, said", [("cut", "cut-off or damaged checkpoint"),
                                          ("no optimizer", "holds no optimizer state")])
def test_a_last_pt_rank_0_refuses_stops_every_rank_with_its_reason(tiny_shards, tmp_path, damage, said):
    """Rank 0 alone reads last.pt: refusing it, it left, and rank 1, waiting for it in the resume
    broadcast, ended on gloo's "Connection closed by peer" traceback."""
    from ferdata.classes import class_names
    from fermodels.runstate import FORMAT

    (tmp_path / "ckpt").mkdir()
    last = tmp_path / "ckpt" / "last.pt"
    if damage == "cut":
        last.write_bytes(b"PK\x03\x04" + bytes(4000))
    else:
        torch.save({"format": FORMAT, "model": "convcut", "model_kwargs": {}, "num_classes": 7,
                    "classes": list(class_names(7)), "state_dict": {}, "optimizer": None}, last)
    outcomes = _outcomes(tiny_shards, tmp_path, "held")
    assert outcomes[0].startswith("ValueError: ") and said in outcomes[0], outcomes
    assert outcomes[1].startswith("RankZeroRefusal: rank 0 stopped before training: ValueError: "), outcomes
    assert said in outcomes[1], outcomes


def test_a_weight_file_one_machine_lacks_stops_every_rank_with_the_reason(tiny_shards, tmp_path):
    """The model was built on each rank before the ranks compared anything: the rank without the file
    stopped, the others ended on gloo's "Connection closed by peer" (NCCL: waited for the timeout)."""
    outcomes = _outcomes(tiny_shards, tmp_path, "no_weights")
    assert outcomes[1].startswith("FileNotFoundError: pretrained checkpoint '/models/w.pth'"), outcomes
    assert outcomes[0].startswith("RankRefusal: rank 1 stopped before training: FileNotFoundError: pretrained "
                                  "checkpoint '/models/w.pth'"), outcomes
    assert not (tmp_path / "ckpt" / "last.pt").exists()


def test_a_rank_started_with_other_params_stops_every_rank_before_training(tiny_shards, tmp_path):
    """A rank given another train.seed than rank 0 (a machine's stale params.yaml) planned its epochs
    from another shuffle: the run read some samples twice and others never, without a word."""
    mp.start_processes(_worker, args=(2, _free_port(), str(tiny_shards), str(tmp_path), "mismatch"), nprocs=2,
                       start_method="fork")
    outcomes = [(tmp_path / f"rank{rank}-mismatch.txt").read_text() for rank in (0, 1)]
    assert all(o.startswith("ValueError: rank 1 was started with other settings than rank 0 (train.seed differ)")
               for o in outcomes), outcomes
    assert not (tmp_path / "ckpt" / "last.pt").exists()


def test_a_params_mistake_on_one_machine_stops_every_rank_with_its_reason(tmp_path):
    """pipeline.train read and checked each machine's params.yaml before joining the process group:
    a mistake only machine 1 had stopped it there, while machine 0's ranks waited in
    init_process_group for the timeout (30 minutes) and ended on a store timeout naming nothing."""
    text = (Path(__file__).resolve().parents[2] / "params.yaml").read_text()
    assert "\n  epochs: 12" in text, "the project's train.epochs is no longer 12: edit the mistake below"
    for rank, epochs in ((0, "12"), (1, "0")):
        (tmp_path / f"machine{rank}").mkdir()
        mistake = text.replace("\n  epochs: 12", f"\n  epochs: {epochs}")
        (tmp_path / f"machine{rank}" / "params.yaml").write_text(mistake)
    mp.start_processes(_worker, args=(2, _free_port(), "", str(tmp_path), "own_params"), nprocs=2,
                       start_method="fork")
    said = [(tmp_path / f"rank{rank}-own.txt").read_text() for rank in (0, 1)]
    assert said[1].startswith("ValueError: train.epochs must be >= 1, got 0"), said
    assert said[0] == ("RankRefusal: rank 1 stopped before joining the others: ValueError: train.epochs must be "
                       ">= 1, got 0"), said


def test_ranks_on_cpus_and_gpus_at_once_are_refused_before_joining(tmp_path):
    mp.start_processes(_worker, args=(2, _free_port(), "", str(tmp_path), "kinds"), nprocs=2, start_method="fork")
    for rank in (0, 1):
        said = (tmp_path / f"rank{rank}-kinds.txt").read_text()
        assert said.startswith("ValueError: the ranks picked different kinds of device (cpu: rank(s) 0; cuda: "
                               "rank(s) 1)"), said


def test_a_restart_meets_again_though_the_agents_count_restarts_differently(tmp_path):
    """torchrun keeps its agent's store across restarts, and a c10d agent restarted for another machine's
    membership change does not count a restart: the meeting's keys, named by TORCHELASTIC_RESTART_COUNT,
    parted the two machines' ranks (one waited FER_DIST_TIMEOUT_S, 30 minutes by default, and named the
    other as never started; the other read the last attempt's words), and gloo's own keys, left from the
    last attempt, sent a rank to a dead address."""
    port = _free_port()
    agent = torch.distributed.TCPStore("127.0.0.1", port, None, is_master=True, wait_for_workers=False)
    for attempt in (0, 1):
        mp.start_processes(_worker, args=(2, port, "", str(tmp_path), f"restart{attempt}"), nprocs=2,
                           start_method="fork")
        said = [(tmp_path / f"rank{rank}-attempt{attempt}.txt").read_text() for rank in (0, 1)]
        assert said == ["met 2", "met 2"], (attempt, said)
    del agent


def test_a_refusal_waits_until_every_rank_has_read_it(tmp_path):
    """Under torchrun the agent of one machine hosts the store, and it ends as soon as one of its ranks
    stops: a rank that stopped on its own mistake right after reading the others' words took the store
    with it, and a slower machine's ranks ended on 'Connection was likely closed', its reason lost."""
    mp.start_processes(_worker, args=(2, _free_port(), "", str(tmp_path), "store_host_fails"), nprocs=2,
                       start_method="fork")
    said = [(tmp_path / f"rank{rank}-host.txt").read_text() for rank in (0, 1)]
    assert said[0] == "[None, ['ValueError: train.epochs must be >= 1, got 0', True]]", said


def test_ranks_compare_weight_files_by_content_not_by_their_paths():
    """Machines mount weights at other paths: a `pretrained` file spelled /a/w.pth on one and /b/w.pth on the
    other, the same bytes (data.weights), trains alike; other bytes do not."""
    from fermodels.train import _run_record

    def record(path: str, digest: str) -> dict:
        params = make_params()
        object.__setattr__(params, "model_kwargs", {**params.model_kwargs, "pretrained": path})
        return _run_record(params, {"train": {"/x/tiny": ["d0"]}, "weights": {"pretrained": digest}})

    assert record("/a/w.pth", "5e") == record("/b/w.pth", "5e")
    assert record("/a/w.pth", "5e") != record("/a/w.pth", "6f")


def test_ranks_validate_rank_0s_batchnorm_statistics_and_stop_together(tmp_path):
    """After DDP steps each rank's BatchNorm running statistics hold its own last batch; the
    trainer gives every rank rank 0's before validating (and saving). The non-finite-loss check
    takes the worst rank's count on every rank."""
    out = tmp_path / "buffers.pt"
    mp.start_processes(_worker, args=(2, _free_port(), "", str(out), "buffers"), nprocs=2, start_method="fork")
    (before0, after0, worst0), (before1, after1, worst1) = torch.load(out)
    assert worst0 == worst1 == 1.0           # a non-finite loss on one rank stops every rank at once
    assert not all(torch.equal(a, b) for a, b in zip(before0, before1) if a.is_floating_point())   # they drift
    assert all(torch.equal(a, b) for a, b in zip(after0, after1))
    assert all(torch.equal(a, b) for a, b in zip(after1, before0))                 # rank 0's, unchanged


def _probe_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """8 samples whose classes span both ranks' shares (5 + 3): neutral (0) and class 3 three
    times each, class 5 twice."""
    return torch.randn(8, 5, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 3, 0, 3, 5, 0, 3, 5])


class _Probe(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(5, 6)
        self.register_buffer("head", torch.randn(6, 7))    # NeAA takes no gradient through the logits

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return features, features @ self.head


def _probe_net() -> torch.nn.Module:
    torch.manual_seed(1)
    return _Probe()


def test_a_global_batch_gathers_a_rank_with_no_rows_as_padding_only(monkeypatch):
    """A world of one (the collective stubbed: shapes only): zero rows pad to the capacity; a rank
    that raised here would leave the others waiting in the gather."""
    import torch.distributed as dist

    calls = []
    monkeypatch.setattr(dist, "all_gather", lambda parts, local: calls.append(local) or [p.copy_(local) for p in parts])
    (f, y), valid = GlobalBatch(1, 0, 4).gather(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long))
    assert f.shape == (4, 6) and y.shape == (4,) and not valid.any() and calls[0].shape == (4, 8)


def test_a_loss_over_the_global_batch_has_the_single_process_value_and_gradient(tmp_path):
    """NeAA under DDP over the step's whole batch: two gloo ranks with uneven shares (5 + 3 rows,
    each padded to 5 for the gather) reach, after DDP's gradient average, the value and the
    gradient of one process computing it on all 8 rows; each rank's share alone does not."""
    out = tmp_path / "grads.pt"
    mp.start_processes(_worker, args=(2, _free_port(), "", str(out), "global_batch"), nprocs=2, start_method="fork")
    x, labels = _probe_batch()
    net = _probe_net()
    want = neutral_aware_anchor(*net(x), labels)
    want.backward()
    for value, grads, _ in torch.load(out):
        assert value == pytest.approx(want.item(), rel=1e-6)
        for got, ref in zip(grads, (p.grad for p in net.parameters())):
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)
    share_alone = torch.load(out)[0][2]
    assert not all(torch.allclose(a, p.grad, rtol=1e-3) for a, p in zip(share_alone, net.parameters()))


CLASS_WEIGHT = torch.tensor([0.5, 1.0, 1.0, 4.0, 1.0, 0.25, 1.0])


def test_a_class_weighted_loss_under_ddp_is_the_global_batchs_weighted_mean(tmp_path):
    """train.class_weights under DDP: each rank divided its weighted sum by its own weight total,
    so a rare class's weight shrank with the ranks' shares (AffectNet-8's Contempt at 0.104 of the
    loss on 1 rank of 32, 0.042 on 8 ranks of 4): DDP's average must be one process's gradient."""
    from fermodels.losses import cross_entropy

    out = tmp_path / "grads.pt"
    mp.start_processes(_worker, args=(2, _free_port(), "", str(out), "weighted_ce"), nprocs=2, start_method="fork")
    x, labels = _probe_batch()
    net = _probe_net()
    want = cross_entropy(net(x)[1], labels, CLASS_WEIGHT)
    want.backward()
    ranks = torch.load(out)
    assert sum(value for value, _ in ranks) / 2 == pytest.approx(want.item(), rel=1e-6)
    for got, ref in zip(ranks[0][1], (p.grad for p in net.parameters())):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", ["train", "train_ema"])
def test_training_under_two_gloo_ranks(tiny_shards, tmp_path, mode):
    """Train two epochs under 2 ranks (2 loader workers each, kept across the epochs), then launch
    again: rank 0 finds last.pt and both ranks follow (a fresh pair of processes each time, as
    torchrun starts them). With a weight average, every rank validates the same average (BatchNorm
    statistics included), so they agree on the best epoch."""
    for _ in range(2):
        mp.start_processes(_worker, args=(2, _free_port(), str(tiny_shards), str(tmp_path), mode), nprocs=2,
                           start_method="fork")
    import json

    metrics = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert metrics["train"]["samples"] == open_split([tiny_shards], "train").num_samples
    assert metrics["val"]["accuracy"] >= 0
    assert (tmp_path / "ckpt" / "best.pt").is_file()
    first = torch.load(tmp_path / "rank0-first.pt")
    assert first == torch.load(tmp_path / "rank1-first.pt") == torch.load(tmp_path / "rank1-again.pt")
    # NeAA-like losses see the step's global batch: both ranks' rows, each padded to batch 8 / 2 ranks
    assert [(tmp_path / f"rank{r}-whole.txt").read_text() for r in (0, 1)] == ["2 0 4", "2 1 4"]
    logs = [(tmp_path / f"rank{r}.log").read_text() for r in (0, 1)]
    assert "epoch 1: " in logs[0] and "epoch 1: " not in logs[1]        # the epoch is told once, by rank 0
    w0, w1 = torch.load(tmp_path / "rank0-last.pt"), torch.load(tmp_path / "rank1-last.pt")
    assert all(torch.equal(w0[k], w1[k]) for k in w0 if w0[k].is_floating_point()), "DDP ranks diverged"
    averages = [tmp_path / f"rank{r}-ema-last.pt" for r in (0, 1)]
    assert all(p.is_file() for p in averages) == (mode == "train_ema")
    if mode == "train_ema":
        e0, e1 = (torch.load(p) for p in averages)
        assert all(torch.equal(e0[k], e1[k]) for k in e0), "the ranks' weight averages differ"


def test_a_run_killed_mid_epoch_under_two_gloo_ranks_resumes_to_the_same_weights(tiny_shards, tmp_path):
    """README: 'the same N-rank run resumes and repeats exactly'. Only a finished run was relaunched
    under two ranks; here both ranks stop at a mid-epoch save and a fresh pair resumes from it."""
    from fermodels.runstate import load_checkpoint

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    mp.start_processes(_worker, args=(2, _free_port(), str(tiny_shards), str(whole), "whole"), nprocs=2,
                       start_method="fork")
    mp.start_processes(_worker, args=(2, _free_port(), str(tiny_shards), str(cut), "killed"), nprocs=2,
                       start_method="fork")
    killed = load_checkpoint(cut / "ckpt" / "last.pt")
    assert killed["epoch"] == 0 and 0 < killed["batch"] < killed["epoch_steps"]          # mid-epoch
    (cut / "ckpt" / "resumed").write_text("")
    mp.start_processes(_worker, args=(2, _free_port(), str(tiny_shards), str(cut), "killed"), nprocs=2,
                       start_method="fork")
    ref, got = (load_checkpoint(d / "ckpt" / "last.pt") for d in (whole, cut))
    assert got["step"] == ref["step"] and got["best"] == ref["best"]
    assert all(torch.equal(got["state_dict"][k], ref["state_dict"][k]) for k in ref["state_dict"])


@pytest.mark.parametrize("name, message", [("gpu", "expected auto, cpu, cuda or cuda:N"),
                                           ("cuda:x", "expected auto, cpu, cuda or cuda:N")])
def test_an_unknown_device_is_refused_in_words(name, message):
    with pytest.raises(ValueError, match=message):
        pick_device(name, DistEnv(0, 1, 0))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_asking_for_a_gpu_that_is_not_there_is_refused_before_any_work(tiny_run):
    from fermodels.predictor import Predictor

    for name in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match="no CUDA device is visible here"):
            pick_device(name, DistEnv(0, 1, 0))
    assert pick_device("auto", DistEnv(0, 1, 0)) == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA device is visible here"):     # was torch's own assertion
        Predictor(tiny_run["ckpt"] / "best.pt", backend="embedded", device="cuda")


def test_the_shard_order_shuffles_each_datasets_shards_and_keeps_them():
    """Each dataset's (folder's) shards are shuffled, seeded; one folder is a plain seeded shuffle
    (the order single-dataset runs have always had)."""
    import random

    shards = [(f"/d/a/train/a{i}.tar", 10) for i in range(12)] + [(f"/d/b/train/b{i}.tar", 10) for i in range(6)]
    for seed in range(5):
        order = shard_order(shards, seed, shuffle=True)
        assert sorted(order) == sorted(shards) and order == shard_order(shards, seed, shuffle=True)
        assert [url[:5] for url, _ in order] == ["/d/a/"] * 12 + ["/d/b/"] * 6
    assert shard_order(shards, 0, shuffle=True) != shard_order(shards, 1, shuffle=True)
    one = [(f"/d/a/train/a{i}.tar", 10) for i in range(12)]
    plain = list(one)
    random.Random(5).shuffle(plain)
    assert shard_order(one, 5, shuffle=True) == plain != one
    assert shard_order(shards, 3, shuffle=False) == shards


@pytest.mark.parametrize("world,workers", [(1, 2), (1, 3), (2, 3), (3, 4)])
def test_a_balanced_epoch_at_rate_one_shows_every_sample_once_whatever_the_workers(world, workers):
    """Each worker reads a part of the split in proportion to the quota it makes from it: with parts
    split evenly but quotas by whole batches, a worker with more quota than part showed some samples
    twice and one with less never reached the end of its part (950 distinct of 1,000 with 3 workers)."""
    from fermodels.sampling import ClassRepeat, repeat_stream

    shards = [(f"s{i}", 40) for i in range(25)]
    label = {f"s{i}/{j}": (i * 40 + j) % 5 for i in range(25) for j in range(40)}
    repeat = ClassRepeat.balanced([200] * 5, 1000)                   # every rate exactly 1
    shown = Counter()
    for rank in range(world):
        for plan in plan_epoch(shards, samples=1000, batch_size=64, env=DistEnv(rank, world, 0), workers=workers,
                               seed=0, shuffle=True, one_pass=True):
            part = [{"__key__": f"{p.url}/{j}"} for p in plan.pieces for j in range(p.start, p.stop)]
            shown.update(s["__key__"] for s in repeat_stream(lambda: iter(part), repeat, plan.num_samples,
                                                             lambda s: label[s["__key__"]], 1))
    assert len(shown) == 1000 and set(shown.values()) == {1}


def test_a_batch_of_one_per_rank_names_the_fix():
    """Every rank refuses, not only the one with the smaller share: rank 0 went on to its first
    collective and ended on gloo's "Connection closed by peer" traceback."""
    for rank in (0, 1):
        with pytest.raises(ValueError, match="with a batch of 1 per rank every rank needs as many samples"):
            plan_epoch([("a.tar", 13)], samples=13, batch_size=1, env=DistEnv(rank, 2, 0), workers=0, seed=0,
                       shuffle=True)
    with pytest.raises(ValueError, match=r"1 samples \(the train split's, or train.epoch_samples\) .* use fewer ranks"):
        plan_epoch([("a.tar", 13)], samples=1, batch_size=2, env=DistEnv(0, 2, 0), workers=0, seed=0, shuffle=True)


@pytest.mark.parametrize("world,workers", [(1, 2), (2, 2), (1, 8)])
def test_a_balanced_epoch_over_datasets_of_one_shard_each_is_balanced(world, workers):
    """sampling.py's example at params.yaml's shard.maxcount: dataset A, 1,000 samples of class 0,
    and B, 500 of class 0 and 500 of class 1, one shard each. Parts of whole shards gave one part
    A alone beside another holding B, and 0.62 of the epoch class 0."""
    from fermodels.sampling import ClassRepeat, repeat_stream

    shards = [("/d/a/train/a0.tar", 1000), ("/d/b/train/b0.tar", 1000)]
    repeat = ClassRepeat.balanced([1500, 500], samples=2000)
    for seed in range(4):
        counts = Counter()
        for rank in range(world):
            for plan in plan_epoch(shards, samples=2000, batch_size=32, env=DistEnv(rank, world, 0), workers=workers,
                                   seed=seed, shuffle=True, one_pass=True):
                source = [{"__key__": f"{p.url}:{i}", "cls": 0 if "/a/" in p.url else i % 2} for p in plan.pieces
                          for i in range(p.start, p.stop)]
                assert {os.path.dirname(p.url) for p in plan.pieces} == {"/d/a/train", "/d/b/train"}
                counts.update(s["cls"] for s in repeat_stream(lambda: iter(source), repeat, plan.num_samples,
                                                              lambda s: s["cls"], seed))
        assert sum(counts.values()) == 2000
        assert abs(counts[0] / 2000 - 0.5) < 0.04, (seed, counts)


def test_a_part_reads_its_datasets_interleaved_in_proportion(tmp_path):
    """Read one after the other, a part's datasets reached a shuffle buffer smaller than a shard one
    at a time: most batches held one dataset."""
    import tarfile

    from fermodels.epochplan import Piece
    from fermodels.stream import read_pieces

    def shard(path: Path, keys: list[str]) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key in keys:
                info = tarfile.TarInfo(f"{key}.cls")
                info.size = 1
                tar.addfile(info, io.BytesIO(b"0"))
        return str(path)

    a = [shard(tmp_path / "a" / f"a{i}.tar", [f"a{i}_{j:02d}" for j in range(30)]) for i in range(2)]
    b = shard(tmp_path / "b" / "b0.tar", [f"b_{j:02d}" for j in range(30)])
    pieces = [Piece(a[0], 5, 30), Piece(a[1], 0, 30), Piece(b, 10, 30)]      # 55 of A, 20 of B
    keys = [s["__key__"] for s in read_pieces(pieces)]
    assert [k for k in keys if k.startswith("a")] == [f"a0_{j:02d}" for j in range(5, 30)] + [
        f"a1_{j:02d}" for j in range(30)]
    assert [k for k in keys if k.startswith("b")] == [f"b_{j:02d}" for j in range(10, 30)]
    for m in range(1, len(keys) + 1):                                          # every prefix in the 55:20 mix
        assert abs(sum(k.startswith("b") for k in keys[:m]) - m * 20 / 75) <= 1, m


@pytest.mark.parametrize("world,workers", [(1, 4), (2, 2)])
def test_a_balanced_epoch_over_two_datasets_is_balanced(world, workers):
    """Dataset A: class 0 only; dataset B: classes 0 and 1 alike. Each rank x worker part fills its
    quota with the split's rates, so the epoch is balanced only if every part holds the split's
    mix; with A's and B's shards in contiguous runs a part of A alone filled its quota with class 0
    (epochs came out up to ~62 / 38)."""
    from fermodels.sampling import ClassRepeat, repeat_stream

    shards = [(f"/d/a/train/a{i}.tar", 100) for i in range(8)] + [(f"/d/b/train/b{i}.tar", 100) for i in range(8)]

    def label(url: str, i: int) -> int:
        return 0 if "/a/" in url else i % 2

    total = sum(n for _, n in shards)
    repeat = ClassRepeat.balanced([1200, 400], samples=total)
    for seed in range(6):
        counts = Counter()
        for rank in range(world):
            for plan in plan_epoch(shards, samples=total, batch_size=50, env=DistEnv(rank, world, 0), workers=workers,
                                   seed=seed, shuffle=True, one_pass=True):
                source = [{"__key__": f"{p.url}:{i}", "cls": label(p.url, i)} for p in plan.pieces
                          for i in range(p.start, p.stop)]
                counts.update(s["cls"] for s in repeat_stream(lambda: iter(source), repeat, plan.num_samples,
                                                              lambda s: s["cls"], seed))
        assert sum(counts.values()) == total
        assert abs(counts[1] / total - 0.5) < 0.04, (seed, counts)


def test_a_stuck_rank_ends_the_wait_after_the_set_timeout(tmp_path):
    """init_process_group had torch's default timeout only: a rank alive but stuck held the others
    for 30 minutes (gloo; 10 with NCCL), with no way to shorten it."""
    out = tmp_path / "outcome.pt"
    mp.start_processes(_worker, args=(2, _free_port(), "", str(out), "timeout"), nprocs=2, start_method="fork")
    outcome, waited = torch.load(out)
    assert outcome != "no error" and waited < 8, (outcome, waited)     # 12 s without the timeout


@pytest.mark.parametrize("raw", ["0", "-5", "soon", "inf", "nan"])
def test_a_bad_timeout_is_refused_in_words(raw, monkeypatch):
    from fermodels.distributed import collective_timeout

    monkeypatch.setenv("FER_DIST_TIMEOUT_S", raw)
    with pytest.raises(ValueError, match=f"FER_DIST_TIMEOUT_S='{raw}': expected a number of seconds above 0"):
        collective_timeout()


def test_ranks_whose_torchrun_is_gone_stop_at_the_next_check(tiny_shards, tmp_path, monkeypatch):
    """torchrun starts each rank in a session of its own: a SIGKILL to it (or its process group) left
    the ranks training unsupervised, holding the run against a relaunch. A rank now watches its
    parent at the loss checks, which every rank reaches at the same step (one collective)."""
    import os

    import fermodels.distributed as distributed
    import fermodels.train as trainer
    from tests.fermodels.helpers import make_params

    parent = os.getppid()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "audit")
    assert distributed.LauncherWatch.here().pid == parent and not distributed.LauncherWatch.here().gone()
    calls = iter([parent] + [1] * 1000)                         # torchrun exits after the set-up: adopted by init
    monkeypatch.setattr(distributed.os, "getppid", lambda: next(calls))
    monkeypatch.setattr(trainer, "FINITE_CHECK_EVERY", 2)
    with pytest.raises(distributed.LauncherGoneError, match=f"torchrun \\(pid {parent}\\), which started the ranks, "
                       "is gone") as stopped:
        trainer.train(tiny_shards, make_params(epochs=1, batch_size=4), tmp_path / "ckpt", tmp_path / "live")
    assert is_user_error(stopped.value)                  # one error line a rank, not 20 of traceback each
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    assert distributed.LauncherWatch.here().pid is None and not distributed.LauncherWatch.here().gone()


@pytest.mark.parametrize("raw", ["", "  "])
def test_an_empty_timeout_means_the_default(raw, monkeypatch):
    from fermodels.distributed import collective_timeout

    monkeypatch.setenv("FER_DIST_TIMEOUT_S", raw)
    assert collective_timeout() is None


def test_one_gpu_index_for_every_rank_is_refused_before_nccl(monkeypatch):
    """`device: cuda:0` under torchrun put every rank on GPU 0 (NCCL fails at the first step); a
    launcher that shows each rank only its own GPU still may name cuda:0."""
    from fermodels.distributed import init_distributed

    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: None)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    with pytest.raises(ValueError, match=r"device cuda:0 under torchrun: each rank takes the GPU of its LOCAL_RANK "
                                         r"\(this one cuda:1\)"):
        init_distributed(torch.device("cuda", 0), DistEnv(1, 4, 1))
    assert init_distributed(torch.device("cuda", 1), DistEnv(1, 4, 1)) is True
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)      # CUDA_VISIBLE_DEVICES per rank
    assert init_distributed(torch.device("cuda", 0), DistEnv(1, 4, 1)) is True


@pytest.mark.parametrize("samples", [40, 100])
def test_a_shuffled_epoch_gives_every_part_its_share_of_a_one_shard_dataset(samples):
    """Parts of whole shards gave a one-shard dataset (CK+, JAFFE beside a larger one) to one
    rank x worker part: every batch of that worker held all of it, the others' none. Now each part
    holds each dataset's share to within a sample, and the epoch still reads each sample once a pass."""
    shards = [("/d/ck/train/ck-000000.tar", 10), *((f"/d/raf/train/raf-{i:06d}.tar", 10) for i in range(3))]
    seen: Counter = Counter()
    for rank in range(2):
        plans = plan_epoch(shards, samples=samples, batch_size=4, env=DistEnv(rank, 2, 0), workers=2, seed=3,
                           shuffle=True)
        for plan in plans:
            read = [(p.url, j) for p in plan.pieces for j in range(p.start, p.stop)]
            assert len(read) == plan.num_samples
            ck = sum(url.startswith("/d/ck/") for url, _ in read)
            assert abs(ck - plan.num_samples / 4) <= 1, (ck, plan.num_samples)   # before: 0 or 10 per part
            seen.update(read)
    assert sum(seen.values()) == samples
    assert set(seen) == {(u, j) for u, n in shards for j in range(n)} and max(seen.values()) == math.ceil(samples / 40)


def test_the_shuffle_buffers_last_fill_is_shuffled_too():
    """Bug guarded: the samples left in the shuffle buffer at the end of a stream yielded in read
    order (the buffer was drained unshuffled): a part no larger than the buffer, e.g. a small
    dataset's worker share, came out in file order every epoch."""
    import random

    from fermodels.stream import shuffled

    samples = [{"__key__": f"k{i:02d}"} for i in range(20)]
    out = [s["__key__"] for s in shuffled(samples, 32, random.Random(0))]           # the buffer holds them all
    assert sorted(out) == [s["__key__"] for s in samples]
    assert out != [s["__key__"] for s in samples]
    tail = [s["__key__"] for s in shuffled(samples, 8, random.Random(0))][-8:]       # the drained last 8
    assert tail != sorted(tail)


def test_a_stream_reading_one_shard_shuffles_it_whole(tmp_path):
    """Bug guarded: a one-stream epoch of a one-shard dataset larger than train.shuffle_buffer (CK+
    at 800 faces, buffer 500) went through the buffer in the same file order every epoch: the file's
    last samples never reached the first batches. The stream's one piece is held whole anyway, and
    is now shuffled whole (so is each piece of a stream of several: two one-shard datasets, or an
    epoch_samples that reads a shard twice)."""
    import numpy as np

    from ferdata.io import encode_jpeg
    from ferdata.tario import TarShardWriter
    from fermodels.epochplan import Piece, StreamPlan
    from fermodels.stream import buffer_size

    with TarShardWriter(tmp_path, "one", 100) as writer:
        for i in range(40):
            writer.write(f"k{i:02d}", {"jpg": encode_jpeg(np.zeros((16, 16, 3), np.uint8), 90), "cls": b"0"})
    shards, decoder = [(str(writer.files[0].path), 40)], SampleDecoder(("image",), 16)
    kw = dict(samples=40, batch_size=4, env=DistEnv(0, 1, 0), workers=0, streams=1, shuffle=True)
    openers = set()
    for epoch in range(6):
        first = next(iter(stream_loader(plan_epoch(shards, seed=epoch, **kw), decoder, workers=0, shuffle_buffer=8,
                                        seed=epoch, repeat=None)))
        openers.update(int(k[1:]) for k in first["key"])
    assert max(openers) >= 8 + 4                 # a buffer of 8 gave the first 4 from the first 12 only
    two = StreamPlan(0, (Piece("a", 0, 30), Piece("b", 0, 12)), (21, 21), 0)      # two datasets, or a shard twice
    assert buffer_size(two, 8) == 30 and buffer_size(StreamPlan(0, (Piece("a", 5, 35),), (30,), 0), 8) == 30
    assert buffer_size(StreamPlan(0, (Piece("a", 0, 5),), (5,), 0), 8) == 8


def test_an_in_process_loader_refuses_plans_made_for_several_workers(tiny_shards):
    """Bug guarded: workers=0 over plans for 2 workers read plan 0 alone: half the epoch, no error."""
    split = open_split([tiny_shards], "train")
    kw = dict(samples=split.num_samples, batch_size=2, env=DistEnv(0, 1, 0), streams=2, seed=0, shuffle=True)
    decoder = SampleDecoder(("image",), 112)
    with pytest.raises(ValueError, match="2 worker plans for an in-process loader"):
        stream_loader(plan_epoch(split.shards, workers=2, **kw), decoder, workers=0, shuffle_buffer=8, seed=0,
                      repeat=None)
    alone = stream_loader(plan_epoch(split.shards, workers=0, **kw), decoder, workers=0, shuffle_buffer=8, seed=0,
                          repeat=None)
    assert sum(len(b["key"]) for b in alone) == split.num_samples


def test_sync_batchnorm_converts_only_distributed_gpu_runs_and_keeps_the_parameters():
    """``train.sync_batchnorm``: BatchNorm over the global batch under DDP (each rank's share of a
    small per-GPU batch gave noisy statistics). The conversion keeps the very parameter objects the
    optimiser holds; a single process is untouched; CPU ranks are refused (torch's SyncBatchNorm
    runs on GPUs only) before any step."""
    from torch import nn

    from fermodels.registry import create_model
    from fermodels.distributed import sync_batchnorm

    net = create_model("resnet18_112", num_classes=7)
    params = list(net.parameters())
    single = DistEnv(0, 1, 0)
    assert sync_batchnorm(net, single, torch.device("cuda", 0)) is net
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in net.modules())
    ranks = DistEnv(1, 2, 1)
    with pytest.raises(ValueError, match="train.sync_batchnorm needs CUDA ranks"):
        sync_batchnorm(net, ranks, torch.device("cpu"))
    converted = sync_batchnorm(net, ranks, torch.device("cuda", 1))     # conversion itself needs no GPU
    norms = [m for m in converted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    assert [id(p) for p in converted.parameters()] == [id(p) for p in params]
    assert converted.card.name == "resnet18_112"


def test_the_buffer_is_the_largest_piece_wherever_it_comes_in_the_stream():
    from fermodels.epochplan import Piece, StreamPlan
    from fermodels.stream import buffer_size

    assert buffer_size(StreamPlan(0, (Piece("b", 0, 12), Piece("a", 0, 30)), (21, 21), 0), 8) == 30


PLAN_SHARDS = [(f"s{i}.tar", n) for i, n in enumerate((5, 7, 3, 6, 9, 2))]       # 32 samples


@pytest.mark.parametrize("samples", [10, 32, 50])
def test_a_balanced_epoch_reads_pass_e_whatever_epoch_samples(samples):
    """one_pass: epoch e reads pass e whole (window [e * total, (e + 1) * total)), not a window cut at
    e * train.epoch_samples, which straddles two passes: some samples twice, others never."""
    from fermodels.epochplan import pass_seed

    for epoch in (0, 1, 3):
        plans = plan_epoch(PLAN_SHARDS, samples=samples, batch_size=4, env=DistEnv(0, 1, 0), workers=1, seed=3,
                           shuffle=True, epoch=epoch, one_pass=True)
        order = [(url, i) for url, n in shard_order(PLAN_SHARDS, pass_seed(3, epoch), True) for i in range(n)]
        assert _positions(plans, PLAN_SHARDS) == order


def test_mixed_seeds_are_63_bit():
    seeds = [mix_seed(s, e, r) for s in range(20) for e in range(5) for r in range(4)]
    assert all(0 <= s < 2 ** 63 for s in seeds) and max(seeds) >= 2 ** 61


def test_an_epoch_of_no_samples_is_refused_as_such():
    with pytest.raises(ValueError, match="the split has no samples"):
        plan_epoch(PLAN_SHARDS, samples=0, batch_size=4, env=DistEnv(0, 1, 0), workers=1, seed=3, shuffle=True)


@pytest.mark.parametrize("buffer", [0, 1])
def test_without_a_shuffle_buffer_an_epoch_has_the_streams_asked(buffer):
    """No buffer to fill (0 or 1): the streams are train.streams, even where a stream reads fewer
    samples than there are streams."""
    assert stream_count(8, 3, buffer) == 8 and stream_count(6, 0, buffer) == 6


class _Branchy(torch.nn.Module):
    """A model whose second layer is called; with ``dead`` its output reaches no loss."""

    def __init__(self, dead: bool) -> None:
        from fermodels.registry import ModelCard

        super().__init__()
        self.card = ModelCard(name="branchy", input_size=8, fields=("image",), losses=("ce",), paper="test")
        self.a, self.b, self.fc = torch.nn.Linear(3, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 7)
        self.dead = dead

    def forward(self, batch):
        f = self.a(batch["image"].mean((2, 3)))
        g = self.b(f)
        return {"logits": self.fc(f if self.dead else g)}

    def losses(self, out, batch):
        return {"ce": torch.nn.functional.cross_entropy(out["logits"], batch["label"])}


@pytest.mark.parametrize("dead", [True, False])
def test_ddp_is_told_of_parameters_no_loss_reaches_though_their_module_runs(monkeypatch, dead):
    """Judged by the modules called, a layer run whose output no loss reaches (pcda's landmark tokens at
    depth 0) counted as used: DDP, not told to look, failed at the second step ("Expected to have
    finished reduction")."""
    from fermodels.distributed import ddp_wrap

    told = {}

    def fake_ddp(module, device_ids=None, find_unused_parameters=False):
        told["unused"] = find_unused_parameters
        return module

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", fake_ddp)
    net = _Branchy(dead).train()
    ddp_wrap(net, DistEnv(0, 2, 0), torch.device("cpu"), 7, compile=False)
    assert told["unused"] is dead and net.training


def _stage_worker(rank: int, world: int, port: int, base: str) -> None:
    """pipeline/train.py's run() as torchrun starts it on two machines, each in its own folder."""
    import yaml

    from pipeline.train import run

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), FER_DIST_TIMEOUT_S="20")
    torch.set_num_threads(1)
    here = Path(base) / f"machine{rank}"
    os.chdir(here)
    params = yaml.safe_load((here / "params.yaml").read_text())
    try:
        run(params, "sel/train.json", "ckpt", "live")
        outcome = "trained"
    except Exception as err:  # noqa: BLE001 - the test reads what each rank raised
        outcome = f"{type(err).__name__}{'' if is_user_error(err) else ' (a bug)'}: {err}"
    (Path(base) / f"rank{rank}.txt").write_text(outcome)
    os._exit(0)                 # not an exception: torch.multiprocessing would end the other rank at once


def test_a_machine_whose_shards_differ_from_the_selection_stops_every_rank_with_its_reason(tiny_shards, tmp_path,
                                                                                          monkeypatch):
    """Two machines, one git checkout each (the same runs/select/train.json), machine 1's val shards
    not those pinned (a stale `dvc pull`): machine 1 refused them before joining the process group
    and exited, and machine 0's rank waited in the group's set-up for the collective timeout (30
    minutes with gloo) and ended on "DistStoreError: wait timeout ... keys: /default_pg/..."."""
    import shutil

    import yaml

    from ferdata.selection import SPLITS_READ, write_selection
    from tests.fermodels.helpers import REPO, TINY_MODEL, copy_shards

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(TINY_MODEL, datasets=["tiny"], epochs=1, batch_size=8, workers=0, device="cpu",
                           shuffle_buffer=8)
    for rank in (0, 1):
        here = tmp_path / f"machine{rank}"
        (here / "data" / "tiny").mkdir(parents=True)
        (here / "params.yaml").write_text(yaml.safe_dump(params))
        if rank == 0:
            (here / "data" / "tiny" / "shards").symlink_to(tiny_shards)
            monkeypatch.chdir(here)     # the selection names the shards relative to the checkout, as select does
            write_selection(here / "sel" / "train.json", "data", ["tiny"], SPLITS_READ)
        else:
            copy_shards(tiny_shards, here / "data" / "tiny" / "shards",
                        lambda info: info.update(stale=True) if info.get("split") == "val" else None)
            shutil.copytree(tmp_path / "machine0" / "sel", here / "sel")
    mp.start_processes(_stage_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="fork")
    said = {rank: (tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)}
    assert said[1].startswith("SelectionError: data/tiny/shards (val) changed since sel/train.json"), said
    assert said[0].startswith("RankRefusal: rank 1 stopped before training: SelectionError: data/tiny/shards "
                              "(val)"), said
