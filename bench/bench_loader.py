"""Loader benchmark: samples/s of the shard loader against torchvision ``ImageFolder`` and the
raw JPEG decode bound, side by side in one run, for the model inputs at 112 and 224 px.

* **ours**: ``stream_loader`` (epoch plan, seeded shuffle buffer, decode into the batch in
  the workers) over N synthetic samples in the real shard format at the stored crop size (112;
  ``bench_train.make_shards``), with 0 (in-process), 1 and 2 workers and batch 64 (3,000 samples, or
  as many as keep each of ``--workers`` busy: an epoch too small for every shuffle stream to fill
  its buffer is cut into fewer streams, made by fewer workers, as in training). As the
  trainer runs it, batches travel at the stored side and a 224 px model's batch is scaled on
  its device (``to_device(batch, device, 224)``); the row "CPU resize" resizes to 224 in the
  workers instead (how it was before, and what the trainer still does for a CPU device, where
  the main process would resize alone). Measured twice: the loader alone, and followed in the
  main process by what the trainer does on a CPU device (workers resize; ``to_device`` ->
  ``augment_batch`` with params.yaml ``train.augment`` -> ``normalise`` into the memory format
  ``train.channels_last`` gives the model). *Persistent*: the
  trainer's :class:`PersistentLoader`, whose workers and buffers outlive an epoch: its second
  epoch, with the time its start takes (against a fresh loader's fork and buffers).
* **ImageFolder** (common practice): the *same JPEG bytes* as loose files ``root/<class>/<key>.jpg``,
  torchvision's ``ImageFolder`` with its PIL loader and the equivalent per-sample transforms in the
  workers (Resize for 224, RandomHorizontalFlip, RandomAffine / RandomErasing when switched on,
  ToTensor, Normalize), ``DataLoader(shuffle=True)`` with the same batch size and workers.
* **decode bound**: decoding the same bytes to RGB (``decode_jpeg_rgb``) from memory in a tight
  single-threaded loop, at the side the workers produce (PIL for reference): what one core can
  do with no loader at all.

Rates count the whole epoch from the moment ``iter()`` has forked the workers (the fork itself is
reported apart as the start); CPU seconds (main process + its reaped workers) cover the epoch and
``iter()``. Each configuration runs ``--repeats`` times, interleaved, and the best is kept (other
jobs on the machine can only slow a run down).
Ratios print last: ours + the trainer's augmentation on its device (the GPU when there is one, else
the CPU) / ImageFolder with the same augmentation (goal >= 3; the loader alone, whose batches the
device resizes, flips and normalises after the copy, is printed beside it without a goal), ours per
worker / decode bound (goal >= 0.8), scaling 1 -> N workers against what N processes give the decode
alone on this machine, for every N > 1 of ``--workers`` (goal: linear, i.e. >= 0.9 of that ceiling,
taken as at most N since 2026-12-05; as in ``bench_preprocess``);
and the trainer's persistent workers against fresh ones per epoch, each epoch with its start.
``--profile`` adds a cProfile of the in-process loader.
Usage: ``python bench/bench_loader.py [--quick] [--profile] [--samples N] [--augment params|all]``.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import multiprocessing as mp
import os
import pstats
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_train import (AUG, BUFFER, QUICK_BUFFER, TRAIN, epoch_plans, make_shards,  # noqa: E402
                               samples_for, streams_for, torch_threads)
from ferdata.classes import CLASSES  # noqa: E402
from ferdata.io import decode_jpeg_rgb  # noqa: E402
from ferdata.tario import iter_dir_samples  # noqa: E402
from fermodels.augment import AugmentParams, augment_batch  # noqa: E402
from fermodels.data import MEMBERS, SampleDecoder  # noqa: E402
from fermodels.distributed import DistEnv  # noqa: E402
from fermodels.epochplan import WorkerPlan  # noqa: E402
from fermodels.modelinput import normalise, to_device  # noqa: E402
from fermodels.registry import ModelCard  # noqa: E402
from fermodels.shardsplit import open_split  # noqa: E402
from fermodels.stream import EpochPlanner, PersistentLoader, read_pieces, stream_loader  # noqa: E402

STORED = 112                                     # align.size: the crop size the shards hold
INPUTS = {"image@112": (("image",), 112), "image@224": (("image",), 224),
          "image+halves@224": (("image", "left", "right"), 224)}
GOAL_VS_FOLDER, GOAL_VS_DECODE, GOAL_SCALING = 3.0, 0.8, 0.9
TRAIN_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")   # where the trainer augments
INSPECT = 8                                      # batches are checked on every 8th row and column (+ mirror)


@dataclass
class Epoch:
    """One measured epoch: its rate and CPU cost, and what its batches looked like."""

    samples: int                  # all samples of the epoch, counted batch by batch
    rate: float                   # samples/s over the epoch (workers started before the clock)
    cpu_us: float                 # CPU microseconds per sample, main process + its workers
    shape: tuple[int, ...]        # of the first batch's model-input image tensor
    dtype: str
    finite: bool                  # on the inspected grid of every batch
    mean: float                   # mean value over the epoch's model-input images (inspected grid)
    steady: float = 0.0           # samples/s after the first quarter of the epoch (start-up and buffer fill over)
    first_batch_ms: float = 0.0   # from the workers' fork to the first batch
    start_ms: float = 0.0         # in ``iter(loader)`` before the clock: forking workers, making buffers

    @property
    def with_start(self) -> float:
        """Samples/s over the epoch and its start: what each epoch of a training run costs."""
        return self.samples / (self.samples / self.rate + self.start_ms / 1e3)


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def inspected_columns(width: int) -> list[int]:
    """Every ``INSPECT``-th column and its mirror image: a horizontal flip (random in both pipelines)
    does not change what is looked at, so epoch means over the same photos agree."""
    cols = set(range(0, width, INSPECT))
    return sorted(cols | {width - 1 - c for c in cols})


def timed_epoch(loader: Iterable, image_of: Callable[[object, int], torch.Tensor]) -> Epoch:
    """Drive one epoch; ``image_of(batch, step)`` does the per-batch work and returns the image tensor.

    The clock starts once ``iter`` has forked the workers and counts every sample, so filling the
    shuffle buffer is in (excluding the first batch would leave out a sixth of the tar reading).
    Nothing is taken off the clock: workers keep decoding while the main process looks at a batch,
    so the look is kept cheap (every 8th row; every 8th column and its mirror) and the same for every
    loader."""
    cpu0, kids0 = time.process_time(), children_cpu()
    t_start = time.perf_counter()
    it = iter(loader)
    t0 = time.perf_counter()
    n, total, finite, shape, dtype = 0, 0.0, True, None, None
    marks = []                                            # (seconds, samples so far) at each batch
    for step, batch in enumerate(it):
        x = image_of(batch, step)
        grid = x[:, :, ::INSPECT, inspected_columns(x.shape[-1])]
        n += len(x)
        marks.append((time.perf_counter() - t0, n))
        total += grid.sum(dtype=torch.float64).item() / grid[0].numel()
        finite &= bool(torch.isfinite(grid).all()) if grid.is_floating_point() else True
        shape, dtype = shape or tuple(x.shape), dtype or str(x.dtype).replace("torch.", "")
    seconds = time.perf_counter() - t0
    del it                                               # joins the workers: their CPU time is now ours
    cpu = time.process_time() - cpu0 + children_cpu() - kids0
    return Epoch(n, n / seconds, cpu / n * 1e6, shape, dtype, finite, total / n, steady_rate(marks),
                 marks[0][0] * 1e3 if marks else 0.0, (t0 - t_start) * 1e3)


def steady_rate(marks: list[tuple[float, int]]) -> float:
    """Samples/s from the batch that completes the epoch's first quarter to the last batch: what a
    long epoch (AffectNet's 290k samples, not the benchmark's few thousand) runs at, once the
    workers have started and filled their shuffle buffers."""
    if not marks:
        return 0.0
    total = marks[-1][1]
    t_q, n_q = next((t, k) for t, k in marks if k >= total / 4)
    if marks[-1][0] <= t_q:
        return total / marks[-1][0] if marks[-1][0] > 0 else 0.0
    return (total - n_q) / (marks[-1][0] - t_q)


# ---- the three ways of getting pixels ------------------------------------------------------

def plan_kw(shards: Path, batch: int, workers: int, buffer: int) -> tuple[tuple[tuple[str, int], ...], dict]:
    """The train split's shards and ``plan_epoch``'s arguments for one shuffled epoch over all of
    it (one rank), cut into the shuffle streams the trainer would cut it into (for the persistent
    loader, whose workers plan each epoch; checked by planning the first here)."""
    split = open_split([shards], "train")
    epoch_plans(tuple(split.shards), split.num_samples, batch, workers, buffer)
    return tuple(split.shards), dict(samples=split.num_samples, batch_size=batch, env=DistEnv(0, 1, 0),
                                     workers=workers, streams=streams_for(workers), shuffle_buffer=buffer,
                                     shuffle=True)


def ours_plans(shards: Path, batch: int, workers: int, buffer: int) -> list[WorkerPlan]:
    """The epoch plan of one shuffled epoch over the whole split (one rank), every worker busy."""
    split = open_split([shards], "train")
    return epoch_plans(tuple(split.shards), split.num_samples, batch, workers, buffer)


def ours_loader(shards: Path, fields: tuple[str, ...], size: int, batch: int, workers: int, buffer: int,
                cpu_resize: bool = False):
    """The trainer's ``stream_loader`` for that epoch: batches at the stored side, as the trainer
    sends them to a GPU (``travel_side``), or resized to ``size`` in the workers (``cpu_resize``)."""
    decoder = SampleDecoder(fields, size, wire=None if cpu_resize else min(STORED, size))
    return stream_loader(ours_plans(shards, batch, workers, buffer), decoder, workers=workers,
                         shuffle_buffer=buffer, seed=0, repeat=None)


def ours(shards: Path, fields: tuple[str, ...], size: int, batch: int, workers: int, buffer: int,
         aug: AugmentParams | None, card: ModelCard, cpu_resize: bool = False,
         device: torch.device = torch.device("cpu")) -> Epoch:
    """``stream_loader`` alone (``aug`` None) or followed by the trainer's steps on ``device``
    (``to_device`` scales the batch to ``size`` there, then flip and normalise)."""
    fill = torch.tensor(card.mean) * 255.0

    def image_of(b: dict, step: int) -> torch.Tensor:
        if aug is None:
            return b["image"]
        moved = to_device(b, device, size)
        return normalise(augment_batch(moved, aug, torch.Generator().manual_seed(step), fill), card,
                         TRAIN["channels_last"])["image"]          # into the layout the trainer's model takes

    return timed_epoch(ours_loader(shards, fields, size, batch, workers, buffer, cpu_resize), image_of)


def ours_persistent(shards: Path, fields: tuple[str, ...], size: int, batch: int, workers: int,
                    buffer: int) -> Epoch:
    """The trainer's loader (:class:`PersistentLoader`): the second epoch from the workers and
    buffers the first one started (the first, untimed, pays the fork)."""
    split_shards, kw = plan_kw(shards, batch, workers, buffer)
    loader = PersistentLoader(EpochPlanner(split_shards, 0, 0, kw),
                              SampleDecoder(fields, size, wire=min(STORED, size)), workers=workers,
                              shuffle_buffer=buffer, repeat=None)
    try:
        for _ in loader.epoch(0):
            pass
        return timed_epoch(_EpochOf(loader, 1), lambda b, step: b["image"])
    finally:
        loader.close()


@dataclass
class _EpochOf:
    """``iter()`` starts epoch ``epoch`` of a persistent loader (what ``timed_epoch`` times)."""

    loader: PersistentLoader
    epoch: int

    def __iter__(self):
        return self.loader.epoch(self.epoch)


def folder_transform(size: int, aug: AugmentParams, card: ModelCard):
    """The common-practice per-sample PIL/tensor pipeline equivalent to :func:`augment_batch`."""
    from torchvision import transforms as T

    steps: list = [T.Resize((size, size))] if size != STORED else []
    if aug.hflip > 0:
        steps.append(T.RandomHorizontalFlip(aug.hflip))
    if aug.affine_p > 0:
        affine = T.RandomAffine(aug.degrees, (aug.translate, aug.translate), (aug.scale_min, aug.scale_max))
        steps.append(T.RandomApply([affine], aug.affine_p))
    steps += [T.ToTensor(), T.Normalize(card.mean, card.std)]
    if aug.erase_p > 0:           # value 0 after Normalize = the mean colour, as augment_batch fills
        steps.append(T.RandomErasing(aug.erase_p, (aug.erase_scale_min, aug.erase_scale_max), value=0))
    return T.Compose(steps)


def imagefolder(root: Path, size: int, batch: int, workers: int, aug: AugmentParams, card: ModelCard) -> Epoch:
    """torchvision ``ImageFolder`` + ``DataLoader(shuffle=True)``: augmentation inside the workers."""
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    data = ImageFolder(str(root), transform=folder_transform(size, aug, card))
    loader = DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers,
                        pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(0))
    return timed_epoch(loader, lambda b, step: b[0])


def decode_bound(samples: list[dict], fields: tuple[str, ...], size: int, lib: str) -> float:
    """Samples/s of decoding (and resizing) the members of ``fields`` in a tight loop, one thread."""
    jobs = [(MEMBERS[f], (size, size) if f == "image" else (size, size // 2)) for f in fields]
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    t0 = time.perf_counter()
    try:
        for s in samples:
            for ext, (h, w) in jobs:
                if lib == "cv2":
                    img = decode_jpeg_rgb(s[ext])
                    if img.shape[:2] != (h, w):
                        cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
                else:
                    img = Image.open(io.BytesIO(s[ext])).convert("RGB")
                    if img.size != (w, h):
                        img.resize((w, h), Image.BILINEAR)
    finally:
        cv2.setNumThreads(threads)
    return len(samples) / (time.perf_counter() - t0)


def _decode_in_process(samples: list[dict], fields: tuple[str, ...], side: int, start, out) -> None:
    start.wait()
    out.put(decode_bound(samples, fields, side, "cv2"))


def decode_rates(samples: list[dict], fields: tuple[str, ...], side: int, counts: list[int]) -> dict[int, float]:
    """Samples/s that N processes give on this machine for the decode alone, for 1 and each N of
    ``counts``: the decode bound run in N concurrent processes (released together). Best N over
    best 1 is the ceiling of scaling with N workers: fewer cores than N, shared or SMT vCPUs and
    other jobs hold it below N, and no loader scales beyond it."""
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    rates = {}
    for n in sorted({1, *counts}):
        start, out = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_decode_in_process, args=(samples, fields, side, start, out)) for _ in range(n)]
        for proc in procs:
            proc.start()
        rates[n] = sum(out.get() for _ in procs)
        for proc in procs:
            proc.join()
    return rates


# ---- data ----------------------------------------------------------------------------------

def make_data(folder: Path, n: int) -> tuple[Path, Path, list[dict]]:
    """Shards in the real format, the same image JPEGs as an ImageFolder tree, and the raw samples."""
    shards = make_shards(folder / "shards", n, 250)
    root = folder / "imagefolder"
    samples = []
    for key, fields in iter_dir_samples(shards / "train", "train"):
        cls_dir = root / CLASSES[int(fields["cls"])]
        cls_dir.mkdir(parents=True, exist_ok=True)
        (cls_dir / f"{key}.jpg").write_bytes(fields["jpg"])
        samples.append(fields)
    return shards, root, samples


# ---- profile -------------------------------------------------------------------------------

BUCKETS = {"decode (imdecode + RGB)": ("ferdata/io.py", "decode_jpeg_rgb"),
           "resize": ("fermodels/data.py", "_resize"),
           "tar reading": ("fermodels/stream.py", "read_pieces")}


def profile_loader(shards: Path, fields: tuple[str, ...], size: int, batch: int, buffer: int,
                   top: int) -> dict[str, float]:
    """cProfile one in-process epoch; print the top functions and return where the time went."""
    loader = ours_loader(shards, fields, size, batch, 0, buffer)
    prof = cProfile.Profile()
    prof.enable()
    for _ in loader:
        pass
    prof.disable()
    stats = pstats.Stats(prof)
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(prof, stream=out).strip_dirs().sort_stats(order).print_stats(top)
        lines = out.getvalue().splitlines()
        start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
        print(f"top {top} by {order}:\n" + "\n".join(line for line in lines[start:] if line.strip()))
    cum = {}
    for (path, _, name), (_, _, _, ct, _) in stats.stats.items():
        for bucket, (suffix, fn) in [*BUCKETS.items(), ("shuffle", ("fermodels/stream.py", "shuffled")),
                                     ("decoder", ("fermodels/data.py", "__call__")),
                                     ("batch", ("fermodels/data.py", "decode_batch"))]:
            if name == fn and path.replace(os.sep, "/").endswith(suffix):
                cum[bucket] = cum.get(bucket, 0.0) + ct
    total = stats.total_tt
    parts = {b: cum.get(b, 0.0) for b in BUCKETS}
    parts["shuffle buffer"] = cum.get("shuffle", 0.0) - parts["tar reading"]
    parts["decoder python (dicts, keys, labels)"] = (cum.get("decoder", 0.0) - parts["decode (imdecode + RGB)"]
                                                     - parts["resize"])
    parts["filling the batch (copies in)"] = cum.get("batch", 0.0) - cum.get("decoder", 0.0)
    parts["loader machinery + other python"] = total - sum(parts.values())
    return {k: v / total for k, v in parts.items()}


def tar_read_us(shards: Path, batch: int, buffer: int, members: frozenset[str], repeats: int = 3) -> float:
    """Microseconds per sample of reading the epoch's raw samples alone, just ``members`` of each
    as the loader does (no profiler, no decode); the best of ``repeats`` epochs, as the loader's
    own figure is (the first is ~1.6x slower)."""
    plans = ours_plans(shards, batch, 1, buffer)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = sum(1 for plan in plans for _ in read_pieces(plan.pieces, members))
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


# ---- main ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="192 samples, batch 32, one repeat (smoke test)")
    ap.add_argument("--samples", type=int, default=None, help="synthetic samples (default 3000; quick 192)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 64; quick 32")
    ap.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    ap.add_argument("--inputs", default=",".join(INPUTS), help=f"comma-separated, of {', '.join(INPUTS)}")
    ap.add_argument("--augment", choices=("params", "all"), default="params",
                    help="params.yaml train.augment, or every step on (affine 0.3, erasing 0.25)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats, best kept (default 2; quick 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the main process (0: torch default)")
    ap.add_argument("--profile", action="store_true", help="cProfile the in-process loader, one epoch per input")
    args = ap.parse_args(argv)
    with torch_threads(args.threads):
        return measure(args)


def measure(args: argparse.Namespace) -> dict:
    unknown = set(args.inputs.split(",")) - set(INPUTS)
    if unknown:
        raise SystemExit(f"unknown --inputs {sorted(unknown)}; known: {', '.join(INPUTS)}")
    inputs = {k: INPUTS[k] for k in args.inputs.split(",")}
    workers = [int(w) for w in args.workers.split(",")]
    # Every worker busy: the default epoch grows to keep them so; --quick's small one keeps them so with
    # a small buffer
    batch = args.batch_size or (32 if args.quick else 64)
    buffer = QUICK_BUFFER if args.quick else BUFFER
    n = args.samples or samples_for(workers, 192 if args.quick else 3000, batch, buffer)
    repeats = args.repeats or (1 if args.quick else 2)
    aug = AugmentParams(**TRAIN["augment"]) if args.augment == "params" else AUG
    res: dict = {"samples": n, "batch": batch, "buffer": buffer, "workers": workers, "augment": vars(aug),
                 "load": [os.getloadavg()[0]], "decode": {}, "ours": {}, "ours+aug": {}, "imagefolder": {},
                 "ours, cpu resize": {}, "ours, persistent": {}}
    with tempfile.TemporaryDirectory() as tmp:
        shards, root, samples = make_data(Path(tmp), n)
        for _ in range(repeats):
            for key, (fields, size) in inputs.items():
                card = ModelCard("bench", size, fields, (), "")
                for lib in ("cv2", "pil"):                  # what the workers decode: the stored side
                    _best(res["decode"], key, lib, decode_bound(samples, fields, min(STORED, size), lib))
                several = [w for w in workers if w > 1]
                if 1 in workers and several:          # the best rate of each N; their ratio after the repeats
                    for w, rate in decode_rates(samples, fields, min(STORED, size), several).items():
                        _best(res["decode"], key, f"procs{w}", rate)
                for w in workers:
                    _best(res["ours"], key, w, ours(shards, fields, size, batch, w, buffer, None, card))
                    if w > 0:
                        _best(res["ours, persistent"], key, w, ours_persistent(shards, fields, size, batch, w, buffer))
                    if size != STORED:
                        _best(res["ours, cpu resize"], key, w,
                              ours(shards, fields, size, batch, w, buffer, None, card, cpu_resize=True))
                    if fields == ("image",):       # ImageFolder has no halves: no baseline to compare
                        # what the trainer does: on a CPU the workers resize, on a GPU the device does
                        _best(res["ours+aug"], key, w, ours(shards, fields, size, batch, w, buffer, aug, card,
                                                            cpu_resize=TRAIN_DEVICE.type == "cpu",
                                                            device=TRAIN_DEVICE))
                        _best(res["imagefolder"], key, w, imagefolder(root, size, batch, w, aug, card))
                res["load"].append(os.getloadavg()[0])
        for key, by in res["decode"].items():       # scaling is judged as best N / best 1: so is its ceiling
            by.update(scaling_ceilings(by, workers, key))
        print_tables(res)
        if args.profile:
            res["profile"] = {}
            for key, (fields, size) in inputs.items():
                print(f"\nprofile, in-process loader, {key}, one epoch of {n} samples (cProfile)")
                res["profile"][key] = profile_loader(shards, fields, size, batch, buffer, 12)
            print_profile(res["profile"])
            members = {key: SampleDecoder(fields, size).members for key, (fields, size) in inputs.items()}
            res["stages_us"] = stages_us(res, {key: tar_read_us(shards, batch, buffer, m)
                                               for key, m in members.items()})
            print_stages(res["stages_us"])
    res["ratios"] = ratios(res)
    print_ratios(res["ratios"], workers, args.quick)
    return res


def _best(table: dict, key: str, col: int | str, value: Epoch | float) -> None:
    """Keep the faster of the repeats (an :class:`Epoch` by its rate, a decode bound as is)."""
    old = table.setdefault(key, {}).get(col)
    if old is None or _rate(value) > _rate(old):
        table[key][col] = value


def _rate(v: Epoch | float) -> float:
    return v.rate if isinstance(v, Epoch) else v


def ratios(res: dict) -> dict:
    """Name -> {workers -> (value, goal, met)}: the goals of the issue, per input and worker count."""
    out: dict = {}
    for key in res["ours"]:
        bound = res["decode"][key]["cv2"]
        for w, e in res["ours"][key].items():
            if key in res["imagefolder"]:
                base = res["imagefolder"][key][w].rate
                # not the goal's comparison: the loader alone leaves the resize, flip and normalisation
                # that ImageFolder's batches include to the training device (untimed without a GPU)
                _ratio(out, f"{key} ours, loader alone / ImageFolder", w, e.rate / base, None)
                _ratio(out, f"{key} ours+aug / ImageFolder", w, res["ours+aug"][key][w].rate / base,
                       GOAL_VS_FOLDER)
            _ratio(out, f"{key} ours per worker / decode", w, e.rate / max(w, 1) / bound, GOAL_VS_DECODE)
            _ratio(out, f"{key} ours per worker / decode, steady", w, e.steady / max(w, 1) / bound,
                   GOAL_VS_DECODE)
            if key in res["ours, cpu resize"]:
                _ratio(out, f"{key} ours / ours with CPU resize", w, e.rate / res["ours, cpu resize"][key][w].rate,
                       None)
            kept = res["ours, persistent"].get(key, {}).get(w)
            if kept is not None:
                _ratio(out, f"{key} persistent / fresh workers, with start", w, kept.with_start / e.with_start, None)
        one = res["ours"][key].get(1)
        for w, many in res["ours"][key].items():
            if one is None or w < 2:
                continue
            _ratio(out, f"{key} scaling 1 -> N workers", w, many.rate / one.rate, None)
            ceiling = res["decode"][key].get(f"ceiling{w}")
            if ceiling:
                _ratio(out, f"{key} decode alone, N / 1 processes", w, ceiling, None)
                _ratio(out, f"{key} scaling / that ceiling", w, many.rate / one.rate / ceiling, GOAL_SCALING)
                _ratio(out, f"{key} scaling / that ceiling, steady", w, many.steady / one.steady / ceiling,
                       GOAL_SCALING)
            _ratio(out, f"{key} CPU per sample, N / 1 workers", w, many.cpu_us / one.cpu_us, None)
    return out


def scaling_ceilings(rates: dict, workers: Sequence[int], key: str) -> dict[str, float]:
    """``ceiling<N>``: what N processes give the decode alone over what 1 gives (``procs<N>``), at
    most N: a measured ceiling above N is noise (a 1-process run slowed by other jobs), said so."""
    out = {}
    for w in workers:
        if w > 1 and f"procs{w}" in rates:
            measured = rates[f"procs{w}"] / rates["procs1"]
            if measured > w:
                print(f"  ({key}: the decode alone in {w} processes measured {measured:.2f}x one process, above "
                      f"{w}: the 1-process run was slowed, e.g. by other jobs; the ceiling is taken as {w})")
            elif measured < 1:          # N processes gave less than one: the N-process run was slowed
                print(f"  ({key}: the decode alone in {w} processes measured {measured:.2f}x one process, below 1: "
                      f"slowed by other jobs; no ceiling, scaling with {w} workers is not judged)")
                continue
            out[f"ceiling{w}"] = min(measured, float(w))
    return out


def _ratio(out: dict, name: str, w: int, value: float, goal: float | None) -> None:
    """``goal`` None: measured for the reader, not a goal of the issue."""
    out.setdefault(name, {})[w] = {"value": value, "goal": goal, "met": None if goal is None else value >= goal}


def print_tables(res: dict) -> None:
    load = "-".join(f"{x:.1f}" for x in res["load"])
    print(f"\n{res['samples']} samples, batch {res['batch']}, shuffle buffer {res['buffer']} per stream, "
          f"load average {load}; samples/s (CPU us/sample, main + workers, in brackets)")
    ws = res["workers"]
    print(f"{'input':<17} {'configuration':<26}" + "".join(f"{f'{w} workers':>20}" for w in ws))
    for key in res["ours"]:
        d = res["decode"][key]
        print(f"{key:<17} {'decode bound cv2 / PIL':<26}{d['cv2']:>12.0f} / {d['pil']:.0f}")
        if "procs1" in d:                              # the decode alone in N processes: the scaling ceiling
            cells = "".join(f"{d[f'procs{w}']:>20.0f}" if f"procs{w}" in d else f"{'':>20}" for w in ws)
            print(f"{key:<17} {'decode alone, N processes':<26}{cells}")
        for name, label in (("ours", "ours: loader"), ("ours, cpu resize", "ours: loader, CPU resize"),
                            ("ours+aug", f"ours: loader + {TRAIN_DEVICE.type} aug"),
                            ("imagefolder", "ImageFolder + transforms")):
            if key in res[name]:
                cells = "".join(f"{f'{e.rate:.0f} ({e.cpu_us:.0f})':>20}" for e in (res[name][key][w] for w in ws))
                print(f"{key:<17} {label:<26}{cells}")
                if name == "ours":
                    cells = "".join(f"{f'{e.steady:.0f} ({e.first_batch_ms:.0f} ms)':>20}"
                                    for e in (res[name][key][w] for w in ws))
                    print(f"{key:<17} {'  steady (first batch)':<26}{cells}")
                    for part, label in (("ours", "  with its start (start)"),
                                        ("ours, persistent", "  persistent: the same")):
                        got = res[part].get(key, {})
                        cells = "".join(f"{_with_start(got[w]) if w in got else '':>20}" for w in ws)
                        print(f"{key:<17} {label:<26}{cells}")


def _with_start(e: Epoch) -> str:
    return f"{e.with_start:.0f} ({e.start_ms:.0f} ms)"


def print_profile(profiles: dict) -> None:
    print("\nwhere the in-process loader's time goes (cumulative time, fraction of the profiled epoch)")
    names = list(next(iter(profiles.values())))
    print(f"{'':<38}" + "".join(f"{k:>18}" for k in profiles))
    for name in names:
        print(f"{name:<38}" + "".join(f"{p[name]:>18.1%}" for p in profiles.values()))


def stages_us(res: dict, tar_us: dict[str, float]) -> dict:
    """Unprofiled: the in-process loader's microseconds per sample = decode bound + tar reading
    (``tar_us`` per input) + rest."""
    out = {}
    for key, by_workers in res["ours"].items():
        if 0 in by_workers:
            loader, decode = 1e6 / by_workers[0].rate, 1e6 / res["decode"][key]["cv2"]
            out[key] = {"loader, in-process": loader, "decode (+ resize) bound": decode,
                        "tar reading alone": tar_us[key],
                        "rest (batch filling, shuffle, python)": loader - decode - tar_us[key]}
    return out


def print_stages(stages: dict) -> None:
    print("\nthe same without the profiler, us/sample (best in-process epoch; tar reading timed alone)")
    print(f"{'':<38}" + "".join(f"{k:>18}" for k in stages))
    for name in next(iter(stages.values()), {}):
        print(f"{name:<38}" + "".join(f"{p[name]:>18.0f}" for p in stages.values()))


def print_ratios(table: dict, ws: list[int], quick: bool) -> None:
    """The ratios against their goals; a --quick run's smoke-test sizes judge none (n/a)."""
    told = "goal; met/MISSED" + ("; n/a: --quick sizes" if quick else "")
    print(f"\nratios ({told}){'':<38}" + "".join(f"{f'{w} workers':>16}" for w in ws))
    for name, cells in table.items():
        goal = next(iter(cells.values()))["goal"]
        row = "".join(f"{_cell(cells.get(w), quick):>16}" for w in ws)
        print(f"  {name:<52} {'>= ' + str(goal) if goal else 'info':<7}{row}")


def _cell(c: dict | None, quick: bool) -> str:
    if c is None:
        return ""
    told = "" if c["met"] is None else " n/a" if quick else " met" if c["met"] else " MISSED"
    return f"{c['value']:.2f}{told}"


if __name__ == "__main__":
    main()
