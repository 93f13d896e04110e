"""Training benchmark: samples/s of one trainer step per model (CPU, and GPU when present) beside
the shard loader's samples/s alone, so it is clear whether the loader could feed the device.

* **train step**: the trainer's own path on a fixed uint8 batch of the model's fields -
  ``to_device`` -> ``augment_batch`` (flip, affine, erasing) -> ``normalise`` -> ``train_step``
  (forward, named losses, backward, optimiser) - timed after warm-up steps.
* **loader**: ``stream_loader`` over synthetic shards in the real format (JPEG q95 faces from
  scikit-image's astronaut with jitter, halves, heatmap, landmarks), decoding exactly the fields of
  each input configuration, with ``--workers`` processes, batches at the side they travel at to the
  row's device (a 224 px model's resized in the workers for the CPU): one epoch, first batch excluded.

* **fed**: the same step fed by the real loader (``--workers`` processes) for ``--fed-steps``
  steps, timing how long the loop waits in ``next(loader)`` (the trainer logs the same as
  ``train/loader_wait_fraction``): on the CPU the time the step waits for data; on a GPU an upper
  bound of the device's idle time (work queued before the wait may still run during it).
* On CUDA every model runs as fp32, bf16 autocast, bf16 + channels_last and bf16 +
  channels_last + ``torch.compile``; on the CPU as fp32 + channels_last, the trainer's default
  (``--cpu-compile`` adds compile).

Ratios printed last: loader samples/s / train samples/s per model, device and setting (>= 1:
the loader keeps up with these workers; otherwise add workers - the per-worker rate is
printed) and the measured waiting fraction.
``--profile model/setting[,...]`` (e.g. ``resnet18_112/bf16+cl``) instead runs torch.profiler over a
few train steps of each and prints where a step's time goes: the busiest ops on the host and on the
device, and the device's busy share of the step (low: the step waits on the host, not the GPU).
Usage: ``python bench/bench_train.py [--quick] [--models a,b] [--batch-size N] [--steps N]``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ferdata.geometry import split_halves  # noqa: E402
from ferdata.heatmap import max_heatmap_u8  # noqa: E402
from ferdata.io import encode_jpeg, encode_png  # noqa: E402
from ferdata.params import load_params  # noqa: E402
from ferdata.tario import npy_bytes  # noqa: E402
from ferdata.tario import TarShardWriter  # noqa: E402
from fermodels.augment import AugmentParams, augment_batch  # noqa: E402
from fermodels.data import SampleDecoder, split_decoder, travel_side  # noqa: E402
from fermodels.distributed import DistEnv  # noqa: E402
from fermodels.epochplan import WorkerPlan, plan_epoch  # noqa: E402
from fermodels.examples import synthetic_landmarks  # noqa: E402
from fermodels.modelinput import normalise, to_device  # noqa: E402
from fermodels.optim import build_optimizer  # noqa: E402
from fermodels.registry import create_model, list_models  # noqa: E402
from fermodels.shardsplit import open_split, stored_side  # noqa: E402
from fermodels.stream import RING_DEPTH, stream_loader  # noqa: E402
from fermodels.train import train_step  # noqa: E402

AUG = AugmentParams(hflip=0.5, affine_p=0.3, degrees=10.0, translate=0.05, scale_min=0.95, scale_max=1.05,
                    erase_p=0.25, erase_scale_min=0.02, erase_scale_max=0.15)
TRAIN = load_params(REPO / "params.yaml")["train"]   # the trainer's settings, read once for both benches
STREAMS = int(TRAIN["streams"])                      # shuffle streams per rank
BUFFER = int(TRAIN["shuffle_buffer"])                # samples each stream shuffles among


def streams_for(workers: int) -> int:
    """The ``train.streams`` a run with ``workers`` loader workers has: params.yaml's, or the least
    multiple of it that they divide (what a user must set: TrainParams refuses the others)."""
    return math.lcm(STREAMS, max(1, workers))


def _plans(shards: Sequence[tuple[str, int]], samples: int, batch: int, workers: int,
           buffer: int) -> list[WorkerPlan]:
    return plan_epoch(shards, samples=samples, batch_size=batch, env=DistEnv(0, 1, 0), workers=workers,
                      streams=streams_for(workers), shuffle_buffer=buffer, seed=0, shuffle=True)


def samples_for(workers: Iterable[int], at_least: int, batch: int, buffer: int = BUFFER) -> int:
    """``at_least`` samples, or as many as keep each of ``workers`` busy at ``batch``: an epoch too
    small for every stream to shuffle ``buffer`` samples, or to give it a batch, is cut into fewer
    streams (as the trainer cuts it), and a count the workers do not divide leaves some idle;
    ``w x max(buffer, batch)`` samples make ``w`` streams of ``w`` workers."""
    idle = [w for w in workers if len(_plans([("-", at_least)], at_least, batch, w, buffer)) < max(1, w)]
    return max(at_least, *(w * max(buffer, batch) for w in idle), 0)


def epoch_plans(shards: Sequence[tuple[str, int]], samples: int, batch: int, workers: int,
                buffer: int = BUFFER) -> list[WorkerPlan]:
    """One shuffled epoch of one rank as the trainer plans it with ``workers`` loader workers and
    :func:`streams_for` streams; an epoch too small to keep every worker busy is refused (a row
    labelled N workers must be N workers' figure)."""
    plans = _plans(shards, samples, batch, workers, buffer)
    if len(plans) < max(1, workers):
        raise ValueError(f"{samples} samples keep {len(plans)} of {workers} loader workers busy at batch {batch}: an "
                         "epoch too small for every shuffle stream to shuffle train.shuffle_buffer "
                         f"({buffer}) samples, or to make a batch, is cut into fewer streams; "
                         f"{samples_for([workers], samples, batch, buffer)} samples (--samples) keep every worker busy")
    return plans


STORED = 112                                         # the side make_shards stores faces at
QUICK_BUFFER = 16                                    # --quick's shuffle buffer: a few hundred samples, all workers busy
QUICK_KWARGS = {"convcut": {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64], "width": 16}}


def make_shards(folder: Path, n: int, per_shard: int) -> Path:
    """``n`` samples in the shard format (train split + _info.json), from one real face with jitter."""
    from skimage import data

    face = cv2.resize(data.astronaut()[40:220, 150:330], (STORED, STORED), interpolation=cv2.INTER_AREA)
    lmk = synthetic_landmarks(STORED).numpy()
    rng = np.random.default_rng(0)
    with TarShardWriter(folder / "train", "train", per_shard) as writer:
        for i in range(n):
            m = np.float32([[1, 0, rng.uniform(-4, 4)], [0, 1, rng.uniform(-4, 4)]])
            img = np.clip(cv2.warpAffine(face, m, (STORED, STORED)) * rng.uniform(0.8, 1.2), 0, 255).astype(np.uint8)
            left, right = split_halves(img)
            writer.write(f"s{i:06d}", {"jpg": encode_jpeg(img, 95), "left.jpg": encode_jpeg(left, 95),
                                       "right.jpg": encode_jpeg(right, 95), "lmk.npy": npy_bytes(lmk),
                                       "heatmap.png": encode_png(max_heatmap_u8(lmk, 28, 1.0, 4.0)),
                                       "cls": str(i % 7).encode()})
    info = {"split": "train", "num_samples": n, "class_histogram": {},
            "shards": [{"name": f.path.name, "count": f.count, "sha256": f.sha256} for f in writer.files]}
    (folder / "train" / "_info.json").write_text(json.dumps(info))
    return folder


def loader_rate(shards: Path, fields: tuple[str, ...], size: int, batch: int, workers: int,
                buffer: int = BUFFER, device: torch.device = torch.device("cuda")) -> float:
    """Samples/s of one epoch of the training loader (first batch, i.e. worker start-up, excluded),
    its batches at the side they travel at to ``device`` (on the CPU the workers resize to ``size``)."""
    split = open_split([shards], "train")
    plans = epoch_plans(split.shards, split.num_samples, batch, workers, buffer)
    decoder = SampleDecoder(fields, size, wire=travel_side(size, stored_side(split), device))
    loader = stream_loader(plans, decoder, workers=workers, shuffle_buffer=buffer, seed=0, repeat=None)
    it = iter(loader)
    next(it)
    t0, n = time.perf_counter(), 0
    for b in it:
        n += len(b["label"])
    return n / (time.perf_counter() - t0) if n else float("nan")      # one batch: nothing after the first


def example_uint8(card, batch: int, device: torch.device) -> dict:
    """A uint8 batch of the card's fields as the loader hands it to the trainer on ``device``: at the
    side batches travel at there (``travel_side``: the stored side on an accelerator, which
    ``to_device`` scales there; the model's side on the CPU, resized in the workers), pixels NHWC in
    memory seen as NCHW, as ``decode_batch`` fills them."""
    g = torch.Generator().manual_seed(0)
    s = travel_side(card.input_size, STORED, device) or card.input_size
    shapes = {"image": (s, s, 3), "left": (s, s // 2, 3), "right": (s, s // 2, 3), "heatmap": (s // 4, s // 4, 1)}
    out = {"label": torch.arange(batch) % 7}
    for f in card.fields:
        if f == "lmk":
            out[f] = synthetic_landmarks(s)[None].repeat(batch, 1, 1)
        else:
            out[f] = torch.randint(0, 256, (batch, *shapes[f]), generator=g, dtype=torch.uint8).permute(0, 3, 1, 2)
    return out


@dataclass(frozen=True)
class Config:
    """How a train step runs on its device: the settings a GPU run chooses between."""

    name: str
    amp: bool = False              # bf16 autocast
    channels_last: bool = False
    compile: bool = False          # torch.compile of the forward


CPU_CONFIGS = (Config("fp32+cl", channels_last=True),)       # the trainer's default on a CPU
CUDA_CONFIGS = (Config("fp32"), Config("bf16", amp=True), Config("bf16+cl", amp=True, channels_last=True),
                Config("bf16+cl+compile", amp=True, channels_last=True, compile=True))


def trainer(name: str, kwargs: dict, device: torch.device, cfg: Config):
    """(step(batch_uint8, i), card): the trainer's own path for ``name`` under ``cfg``."""
    torch.manual_seed(0)
    net = create_model(name, **kwargs).to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    fwd = torch.compile(net) if cfg.compile else net
    opt = build_optimizer("adamw", [p for p in net.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0,
                          momentum=0.9, sam=False, sam_rho=0.05)
    scaler = torch.amp.GradScaler(device.type, enabled=False)          # bf16 needs no loss scaling
    fill = torch.tensor(net.card.mean) * 255
    net.train()

    def step(host: dict, i: int) -> None:
        b = normalise(augment_batch(to_device(host, device, net.card.input_size), AUG,
                                    torch.Generator().manual_seed(i), fill),
                      net.card, cfg.channels_last)
        train_step(fwd, net, opt, scaler, b, device, cfg.amp)

    return step, net.card


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_rate(name: str, kwargs: dict, device: torch.device, cfg: Config, batch: int, steps: int,
               warmup: int) -> float:
    """Samples/s of the trainer's step for ``name`` on ``device`` on a fixed batch (no loader)."""
    step, card = trainer(name, kwargs, device, cfg)
    host = example_uint8(card, batch, device)
    for i in range(warmup):
        step(host, i)
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(host, warmup + i)
    sync(device)
    return steps * batch / (time.perf_counter() - t0)


def fed_rate(name: str, kwargs: dict, device: torch.device, cfg: Config, shards: Path, batch: int, steps: int,
             workers: int, buffer: int = BUFFER) -> tuple[float, float]:
    """(samples/s, fraction of wall time spent waiting for the next batch) of the trainer's step fed
    by the real shard loader, as in training: the device idles while the loop waits. The batches
    the workers decoded ahead while the first (compiling) step ran are stepped through before the
    clock starts (timed, they would hide the loader's pace), and the clock stops before a short
    last batch (a new batch shape: ``torch.compile`` would recompile inside the timing); the epoch
    is the whole split, whose short batches ``plan_epoch`` puts in its last rounds."""
    step, card = trainer(name, kwargs, device, cfg)
    split = open_split([shards], "train")
    plans = epoch_plans(split.shards, split.num_samples, batch, workers, buffer)
    it = iter(stream_loader(plans, split_decoder(card, split, device), workers=workers,
                            shuffle_buffer=buffer, seed=0, repeat=None))
    # The first step, then (on a GPU, whose steps are as fast as the loader) what was decoded
    # meanwhile; a CPU step is ~100x slower than the loader, which never falls behind there.
    ahead = 1 + (RING_DEPTH * max(1, workers) if device.type == "cuda" else 0)
    for i in range(ahead):
        host = next(it, None)
        if host is None or len(host["label"]) != batch:
            raise ValueError(f"--samples too small: {ahead} batches of {batch} go before the timed steps")
        step(host, i)
    sync(device)
    waited, seen, t0 = 0.0, 0, time.perf_counter()
    for i in range(steps):
        t_wait = time.perf_counter()
        host = next(it, None)
        waited += time.perf_counter() - t_wait
        if host is None or len(host["label"]) != batch:
            break
        step(host, ahead + i)
        seen += len(host["label"])
    sync(device)
    wall = time.perf_counter() - t0
    if seen < steps * batch:
        print(f"  ({name}: the epoch ended after {seen // batch} of {steps} timed steps; raise --samples)")
    return (seen / wall, waited / wall) if seen else (float("nan"), float("nan"))


def _self_device_us(event) -> float:
    """An op's own device time (us); the attribute's name changed across torch releases."""
    return float(getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0) or 0)


def device_events(events: list) -> list:
    """The profiler events that are device work, each counted once: kineto gives an aten op that
    launched a kernel that kernel's time as its own too, beside the kernel's own (device-type)
    event; torch's table sums the device-type events (and the legacy profiler's CPU events, which
    alone hold kernel time there). Summing every event counted the device's time twice."""
    from torch.autograd import DeviceType

    kinds = {getattr(DeviceType, n) for n in ("CUDA", "PrivateUse1", "XPU", "MTIA") if hasattr(DeviceType, n)}
    return [e for e in events if (e.device_type in kinds and not getattr(e, "is_user_annotation", False))
            or (e.device_type == DeviceType.CPU and getattr(e, "is_legacy", False))]


def profile_step(name: str, kwargs: dict, device: torch.device, cfg: Config, batch: int, steps: int,
                 top: int = 12) -> dict:
    """Where one train step's time goes: ``steps`` steps (after 3 warm-up steps) under torch.profiler;
    prints the ops with the most host time and the most device time per step. ``busy``: device
    time / wall time of the profiled steps (the profiler adds host time per op, so it is a lower
    bound); an unprofiled step of the same setting is timed first for comparison."""
    from torch.profiler import ProfilerActivity, profile

    plain = train_rate(name, kwargs, device, cfg, batch, steps, 3)
    step, card = trainer(name, kwargs, device, cfg)
    host = example_uint8(card, batch, device)
    for i in range(3):
        step(host, i)
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for i in range(steps):
            step(host, 3 + i)
        sync(device)
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    work = device_events(events)
    device_us = sum(_self_device_us(e) for e in work)
    out = {"step_ms": 1e3 * batch / plain, "profiled_step_ms": 1e3 * wall / steps,
           "device_ms": device_us / 1e3 / steps, "busy": device_us / 1e6 / wall}
    print(f"\n{name}/{device.type}/{cfg.name}, batch {batch}: step {out['step_ms']:.2f} ms unprofiled, "
          f"{out['profiled_step_ms']:.2f} ms profiled, device busy {out['device_ms']:.2f} ms of it", flush=True)
    for title, key, among in (("host", lambda e: e.self_cpu_time_total, events), ("device", _self_device_us, work)):
        if title == "device" and not device_us:
            continue
        print(f"  most {title} time per step: ms, calls")
        for e in sorted(among, key=key, reverse=True)[:top]:
            print(f"    {key(e) / 1e3 / steps:8.3f}  {e.count / steps:6.1f}  {e.key[:90]}")
    return out


def run_profiles(spec: str, args: argparse.Namespace, device: torch.device) -> dict:
    """``--profile model/setting[,...]`` on ``device`` (the settings of that device's matrix)."""
    configs = {c.name: c for c in (CUDA_CONFIGS if device.type == "cuda" else CPU_CONFIGS + (
        Config("fp32+cl+compile", channels_last=True, compile=True),))}
    results = {}
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        name, _, setting = item.partition("/")
        if name not in list_models() or setting not in configs:
            raise SystemExit(f"--profile {item!r}: expected model/setting, models {', '.join(list_models())}, "
                             f"settings on {device.type} {', '.join(configs)}")
        kwargs = QUICK_KWARGS.get(name, {}) if args.quick else {}
        batch = args.gpu_batch_size if device.type == "cuda" else (args.batch_size or (2 if args.quick else 8))
        results[item] = profile_step(name, kwargs, device, configs[setting], batch,
                                     args.steps or (1 if args.quick else 10))
    print("\nratios (device busy / step: near 1, the device is the limit; low, the host is)")
    for item, r in results.items():
        print(f"  {item:<34} {r['busy']:5.2f}   step {r['step_ms']:.2f} ms")
    return {"profile": results}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two small models, tiny batches (smoke test)")
    ap.add_argument("--models", default=None, help="comma-separated names (default: all registered)")
    ap.add_argument("--batch-size", type=int, default=None, help="CPU batch (default 8; quick 2)")
    ap.add_argument("--gpu-batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 3 on the CPU, quick 1; 20 on CUDA)")
    ap.add_argument("--workers", type=int, default=2, help="loader processes")
    ap.add_argument("--samples", type=int, default=None,
                    help="loader samples (default 3000, or what keeps --workers busy; quick 64)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default; 1, as "
                    "bench_loader: more made small CPU steps up to 30x slower here, and the fed loop unlike the step)")
    ap.add_argument("--fed-steps", type=int, default=None, help="steps fed by the real loader (default 4 CPU / "
                    "50 GPU; quick 2)")
    ap.add_argument("--cpu-compile", action="store_true", help="also time torch.compile on the CPU (slow to compile)")
    ap.add_argument("--devices", default="auto", help="cpu, cuda or cpu,cuda (default auto: the CPU, and CUDA "
                    "when present)")
    ap.add_argument("--profile", default="", help="model/setting[,...], e.g. resnet18_112/bf16+cl: profile these "
                    "train steps on the last of --devices instead of timing the matrix")
    args = ap.parse_args(argv)
    with torch_threads(args.threads):
        return measure(args)


def bench_devices(spec: str) -> list[torch.device]:
    """The devices ``--devices`` names; ``auto``: the CPU, and CUDA when present. Naming CUDA
    without a GPU is an error, not a silently CPU-only run."""
    if spec == "auto":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    names = [d.strip() for d in spec.split(",") if d.strip()]
    unknown = sorted(set(names) - {"cpu", "cuda"})
    if unknown or not names:
        raise SystemExit(f"--devices: {spec!r}: use cpu, cuda, cpu,cuda or auto")
    if "cuda" in names and not torch.cuda.is_available():
        raise SystemExit("--devices cuda: no CUDA device here (torch.cuda.is_available() is False)")
    return [torch.device(d) for d in names]


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's CPU threads set to ``n`` (0: unchanged) for the block, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure(args: argparse.Namespace) -> dict:
    names = (args.models.split(",") if args.models else
             ["resnet18_112", "convcut"] if args.quick else list_models())
    batch = args.batch_size or (2 if args.quick else 8)
    steps, warmup = args.steps or (1 if args.quick else 3), 1
    devices = bench_devices(args.devices)
    if args.profile:
        return run_profiles(args.profile, args, devices[-1])
    cpu_configs = CPU_CONFIGS + ((Config("fp32+cl+compile", channels_last=True, compile=True),) if args.cpu_compile
                                 else ())
    results: dict = {"train": {}, "fed": {}, "wait": {}, "loader": {}, "ratio": {}}
    # Every worker busy at every batch size used (the loader's 32, the steps'): the default epoch grows
    # to keep them so; --quick's small one keeps them so with a small buffer
    buffer = QUICK_BUFFER if args.quick else BUFFER
    widest = max([32, batch] + ([args.gpu_batch_size] if any(d.type == "cuda" for d in devices) else []))
    n = args.samples or samples_for([args.workers], 64 if args.quick else 3000, widest, buffer)
    with tempfile.TemporaryDirectory() as tmp:
        shards = make_shards(Path(tmp), n, 250)
        # Compiled configurations last, over all models: they take the longest and fail in the
        # most ways (a missing compiler), and each configuration's failure is printed and skipped.
        for compiled in (False, True):
            for name in names:
                kwargs = QUICK_KWARGS.get(name, {}) if args.quick else {}
                card = create_model(name, **kwargs).card
                for dev in devices:
                    cuda = dev.type == "cuda"
                    # the loader as the trainer runs it for this device: on the CPU a 224 px model's
                    # batches are resized in the workers, on a GPU they travel at the stored side
                    side = travel_side(card.input_size, STORED, dev) or card.input_size
                    key = f"{'+'.join(card.fields)}@{card.input_size}" + (
                        "" if side == STORED else f", resized to {side} in the workers")
                    if key not in results["loader"]:
                        results["loader"][key] = loader_rate(shards, card.fields, card.input_size, 32, args.workers,
                                                             buffer, dev)
                    bs = args.gpu_batch_size if cuda else batch
                    fed_steps = args.fed_steps or (2 if args.quick else 50 if cuda else 4)
                    for cfg in (c for c in (CUDA_CONFIGS if cuda else cpu_configs) if c.compile == compiled):
                        tag = f"{name}/{dev.type}/{cfg.name}"
                        try:
                            rate = train_rate(name, kwargs, dev, cfg, bs, (args.steps or 20) if cuda else steps,
                                              3 if cfg.compile else warmup)
                            fed = fed_rate(name, kwargs, dev, cfg, shards, bs, fed_steps, args.workers, buffer)
                        except Exception as e:                  # noqa: BLE001 - report, go on to the next
                            print(f"{tag:<34} FAILED: {type(e).__name__}: {e}", flush=True)
                            continue
                        results["train"][tag] = rate
                        results["ratio"][tag] = results["loader"][key] / rate
                        results["fed"][tag], results["wait"][tag] = fed
                        print(f"{tag:<34} {key:<20} step {rate:8.1f}  fed by the loader {fed[0]:8.1f} "
                              f"samples/s, waiting {fed[1]:5.1%}   loader alone {results['loader'][key]:8.1f}",
                              flush=True)
    print(f"\nloader alone, samples/s with {args.workers} workers (per worker ~ total / {max(1, args.workers)}):")
    for key, rate in results["loader"].items():
        print(f"  {key:<22} {rate:9.1f}")
    print("\nratios (loader alone / train step: >= 1 means the loader keeps up; waiting: the share of the fed "
          "loop's time spent in next(loader): on a GPU at most the device's idle time)")
    for tag, ratio in results["ratio"].items():
        print(f"  {tag:<34} {ratio:8.2f}x   waiting {results['wait'][tag]:5.1%}")
    return results


if __name__ == "__main__":
    main()
