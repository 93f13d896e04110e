"""Preprocessing benchmark: detect -> align -> derive on real photos, with its model kernels
and a plain-loop baseline timed side by side in the same process.

Inputs: the photos shipped inside pip packages (skimage's astronaut, matplotlib's
grace_hopper, insightface's 6-face t1), rescaled, mirrored and tiled 2x2 into N (almost all distinct)
JPEGs. Every process runs OpenCV on one thread, as the stage workers do. Measured:

* the pipeline stages (``run_detect``, ``run_align``, ``run_derive``), each config with a
  fresh detection cache, with 1 and 2 worker processes, alternated ``--repeats`` times
  (best run kept: other jobs on a shared machine only ever slow a run down);
* model kernels: inside the 1-process run, every RetinaFace ONNX call and dlib 68-point
  call is timed (wall and CPU), so kernels and pipeline share the same conditions;
  the one-time model load is timed separately;
* baseline: a plain loop calling the same backend one image at a time (decode, detect,
  align, heatmap, halves, encode), no stage machinery, no cache, no processes;
* a repeat of the pipeline on the warm cache;
* the machine's own 1 -> 2 process ceiling: the detector kernel alone in 1 and in 2
  concurrent processes (on shared vCPUs it is below 2 and moves with other jobs), so the
  pipeline's speed-up is judged against what the machine gives at the time.

Prints images/s per stage, then the ratios (last). Goals: pipeline (1 process) within
1.3x of its model kernels' time, near-linear 1 -> 2 process scaling (>= 0.9 of the
machine's ceiling), repeat detect >= 20x faster than the first. The default 1,000 inputs
(about 3.5 minutes on 2 cores) keep the one-time model load (dlib's predictor, ~0.6 s, serial
before the workers fork) from dominating both ratios, as it would at a few hundred images and
never does on a real dataset; the ratio without it is printed too. Usage:
``python bench/bench_preprocess.py [--quick] [--n N]``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ferdata.faces.base import FaceBackend, select_face  # noqa: E402
from ferdata.faces.embedded import EmbeddedBackend  # noqa: E402
from ferdata.geometry import align_face, split_halves  # noqa: E402
from ferdata.heatmap import max_heatmap_u8  # noqa: E402
from ferdata.io import decode_rgb, encode_jpeg, encode_png  # noqa: E402
from ferdata.params import load_params, section  # noqa: E402
from ferdata.records import FaceRecord  # noqa: E402
from ferdata.stages.align import AlignParams, run_align  # noqa: E402
from ferdata.stages.derive import DeriveParams, run_derive  # noqa: E402
from ferdata.stages.detect import DetectParams, run_detect  # noqa: E402


class Clock:
    """Wall and CPU seconds of a block; CPU counts this process and reaped worker processes,
    so it stays meaningful when other jobs compete for the cores."""

    def __enter__(self) -> "Clock":
        self.wall0, self.cpu0 = time.perf_counter(), _cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall0, _cpu() - self.cpu0


def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def package_photos() -> list[np.ndarray]:
    """RGB arrays of the pip-shipped photos (no download)."""
    import matplotlib.cbook
    import skimage

    paths = [Path(skimage.__file__).parent / "data" / "astronaut.png",
             Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)),
             Path(importlib.util.find_spec("insightface").submodule_search_locations[0]) / "data" / "images" / "t1.jpg"]
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]


def make_inputs(folder: Path, n: int, max_side: int) -> list[FaceRecord]:
    """``n`` JPEGs: each a photo (or a 2x2 tile of photos) rescaled to a random longest side in
    [max_side/2, max_side], sometimes mirrored; JPEG quality varies. Almost all distinct: a few
    draws coincide (7 of 1,000), and the detect stage detects those once."""
    rng = np.random.default_rng(0)
    photos = package_photos()
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        if i % 5 == 4:                                         # a tiled multi-face image
            picks = [photos[j] for j in rng.integers(0, len(photos), 4)]
            tiles = [cv2.resize(p, (320, 320), interpolation=cv2.INTER_AREA) for p in picks]
            img = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
        else:
            img = photos[i % len(photos)]
        if rng.random() < 0.5:
            img = img[:, ::-1]
        side = int(rng.integers(max_side // 2, max_side + 1))
        scale = side / max(img.shape[:2])
        img = cv2.resize(np.ascontiguousarray(img), None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        path = folder / f"img{i:05d}.jpg"
        quality = int(rng.integers(80, 96))
        cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        records.append(FaceRecord("bench", f"img{i:05d}", str(path), i % 7, "bench"))
    return records


@contextlib.contextmanager
def kernel_timer() -> Iterator[dict[str, float]]:
    """Time every model call the embedded backend makes in this process (wall and CPU):
    RetinaFace's ONNX run, dlib's 68-point predictor, and the one-time model load."""
    acc = {"wall": 0.0, "cpu": 0.0, "calls": 0, "load": 0.0, "load_cpu": 0.0}
    originals = {name: getattr(EmbeddedBackend, name) for name in ("infer", "landmarks", "load_predictor",
                                                                   "load_detector")}

    def wrap(name: str):
        fn = originals[name]

        def timed(self, *args):
            w0, c0, l0, lc0 = time.perf_counter(), time.process_time(), acc["load"], acc["load_cpu"]
            result = fn(self, *args)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            if name.startswith("load"):
                acc["load"] += wall
                acc["load_cpu"] += cpu
            else:                                   # a lazy first-call load is not kernel time
                acc["wall"] += wall - (acc["load"] - l0)
                acc["cpu"] += cpu - (acc["load_cpu"] - lc0)
                acc["calls"] += 1
            return result
        return timed

    for name in originals:
        setattr(EmbeddedBackend, name, wrap(name))
    try:
        yield acc
    finally:
        for name, fn in originals.items():
            setattr(EmbeddedBackend, name, fn)


def baseline(records: list[FaceRecord], size: int, hm_size: int, sigma: float,
             backend: FaceBackend | None = None) -> Clock:
    """A plain loop over the same backend (default: a fresh embedded one, its model load
    included), one image at a time, everything in memory."""
    with Clock() as clock:
        backend = backend or EmbeddedBackend()
        for rec in records:
            image = decode_rgb(Path(rec.path).read_bytes())
            faces = backend.detect(image, rec)
            if not faces:
                continue
            face = select_face(faces, image.shape, "largest")
            al = align_face(image, face.kps5, size, lmk68=face.lmk68)
            heat = max_heatmap_u8(al.lmk68, hm_size, sigma, size / hm_size)
            left, right = split_halves(al.image)
            encoded = [encode_jpeg(al.image, 95), encode_png(heat), encode_jpeg(left, 95), encode_jpeg(right, 95)]
            if not all(encoded):
                raise RuntimeError("encoding failed")
    return clock


def run_pipeline(records: list[FaceRecord], work: Path, cache: Path, workers: int) -> dict[str, Clock | int]:
    """Wall/CPU clocks per stage for detect -> align -> derive with ``workers`` processes."""
    params = load_params(REPO / "params.yaml")
    det = DetectParams(backend="embedded", select="largest", det_size=640, score_threshold=0.9, model_dir=None,
                       cache_dir=str(cache), workers=workers)
    align = dataclasses.replace(section(AlignParams, params["align"], "align"), workers=workers)
    derive = dataclasses.replace(section(DeriveParams, params["derive"], "derive"), workers=workers)
    out: dict[str, Clock | int] = {}
    with Clock() as total:
        with Clock() as out["detect"]:
            report = run_detect(records, det, work / "detect")
        with Clock() as out["align"]:
            run_align(work / "detect", align, work / "aligned")
        with Clock() as out["derive"]:
            run_derive(work / "aligned", derive, work / "derived")
    out["total"] = total
    out["detections_run"] = report.to_dict()["notes"]["detections_run"]
    return out


def _spin(seconds: float, start, out) -> None:
    """Run the RetinaFace kernel on a fixed 640x480 blob for ``seconds``; report calls/s."""
    backend = EmbeddedBackend()
    backend.load_detector()
    blob = np.random.default_rng(0).random((1, 3, 480, 640), dtype=np.float32)
    backend.infer(blob)
    start.wait()
    t0, calls = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        backend.infer(blob)
        calls += 1
    out.put(calls / (time.perf_counter() - t0))


def kernel_rates(seconds: float) -> tuple[float, float]:
    """The detector kernel alone (no Python overhead, no I/O): calls/s of 1 process and of 2
    concurrent processes. Their ratio is what 2 processes can give on this machine: shared
    or SMT vCPUs, or other jobs, hold it below 2, and no pipeline scales beyond it."""
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    rates = []
    for n in (1, 2):
        start, out = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_spin, args=(seconds, start, out)) for _ in range(n)]
        for proc in procs:
            proc.start()
        rates.append(sum(out.get() for _ in procs))
        for proc in procs:
            proc.join()
    return rates[0], rates[1]


def verdict(ok: bool, quick: bool) -> str:
    """A goal's verdict; a --quick run's smoke-test sizes judge no goal."""
    return "n/a (--quick)" if quick else "met" if ok else "MISSED"


@contextlib.contextmanager
def one_opencv_thread() -> Iterator[None]:
    """OpenCV sequential in this process, as in every stage worker (``one_thread_per_worker``): the
    1-process run, the baseline and the kernels then do a worker's work on one thread, so 1 vs 2
    processes and pipeline vs kernels compare like with like (OpenCV's default pool gave the
    1-process run a thread per core; a pipeline with ``workers: 1`` still has it)."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(0)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def measure(n: int, max_side: int, repeats: int) -> dict:
    """Run every configuration; the best of ``repeats`` alternated 1p/2p cold runs is kept."""
    params = load_params(REPO / "params.yaml")
    size, hm, sigma = params["align"]["size"], params["derive"]["heatmap_size"], params["derive"]["heatmap_sigma"]
    with tempfile.TemporaryDirectory(prefix="bench_preprocess_") as tmp, one_opencv_thread():
        root = Path(tmp)
        records = make_inputs(root / "inputs", n, max_side)
        runs: dict[int, list] = {1: [], 2: []}
        kernel, bases = [], []
        for rep in range(repeats):                 # the baseline too: best of as many, interleaved
            bases.append(baseline(records, size, hm, sigma))
            kernel.append(kernel_rates(1.0 if n < 100 else 4.0))
            for workers in (1, 2):
                with kernel_timer() as kernels:
                    run = run_pipeline(records, root / f"p{workers}_{rep}", root / f"cache{workers}_{rep}", workers)
                run["kernels"] = kernels
                runs[workers].append(run)
        base = min(bases, key=lambda c: c.wall)
        one = min(runs[1], key=lambda r: r["total"].wall)
        two = min(runs[2], key=lambda r: r["total"].wall)
        again = run_pipeline(records, root / "repeat", root / "cache2_0", workers=2)
    measured = max(k[1] for k in kernel) / max(k[0] for k in kernel)     # best of each, as for the runs
    if not 1 <= measured <= 2:          # 2 processes cannot give more than 2x, nor less than one: noise
        then = ("the ceiling is taken as 2" if measured > 2 else   # below 1: no ceiling (as bench_loader)
                "no ceiling: the 1 -> 2 process scaling is not judged")
        print(f"  (the detector kernel in 2 processes measured {measured:.2f}x one process, outside 1-2: slowed "
              f"by other jobs; {then})")
    ceiling = min(max(measured, 1.0), 2.0)
    return {"base": base, "one": one, "two": two, "again": again, "size": size, "hm": hm, "ceiling": ceiling,
            "ceiling_judged": measured >= 1}


def ratios(m: dict) -> dict[str, float]:
    """The printed ratios of a :func:`measure` result (wall seconds unless named CPU)."""
    one, two, again, base, kern = m["one"], m["two"], m["again"], m["base"], m["one"]["kernels"]
    return {
        "pipeline_over_kernels": one["total"].wall / kern["wall"],
        "pipeline_over_kernels_cpu": one["total"].cpu / kern["cpu"],
        "pipeline_minus_load_over_kernels": (one["total"].wall - kern["load"]) / kern["wall"],
        "detect_over_kernels": one["detect"].wall / kern["wall"],
        "scaling_1_to_2": one["total"].wall / two["total"].wall,
        "kernel_ceiling_1_to_2": m["ceiling"],
        "scaling_over_ceiling": one["total"].wall / two["total"].wall / m["ceiling"],
        "cpu_2p_over_1p": two["total"].cpu / one["total"].cpu,
        # the repeat runs with 2 processes, as the first run it is set against
        "repeat_detect_speedup": two["detect"].wall / again["detect"].wall,
        "repeat_pipeline_speedup": two["total"].wall / again["total"].wall,
        "pipeline_1p_over_baseline": one["total"].wall / base.wall,
        "pipeline_2p_over_baseline": two["total"].wall / base.wall,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few small images, one repeat (smoke test)")
    ap.add_argument("--n", type=int, default=None, help="number of input images (default 1000; quick 8)")
    ap.add_argument("--max-side", type=int, default=None, help="longest side of the inputs (default 640; quick 320)")
    ap.add_argument("--repeats", type=int, default=None, help="cold runs per config, best kept (default 2; quick 1)")
    args = ap.parse_args(argv)
    n = args.n or (8 if args.quick else 1000)
    max_side = args.max_side or (320 if args.quick else 640)
    repeats = args.repeats or (1 if args.quick else 2)
    load_before = os.getloadavg()[0]
    print(f"inputs: {n} JPEGs from package photos, longest side {max_side // 2}-{max_side} px; "
          f"{os.cpu_count()} CPUs, load average {load_before:.1f}; best of {repeats} cold runs per config")
    m = measure(n, max_side, repeats)
    one, two, again, base, kern = m["one"], m["two"], m["again"], m["base"], m["one"]["kernels"]
    load_after = os.getloadavg()[0]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def ips(seconds: float) -> str:
        return f"{n / seconds:9.1f}"

    print(f"\n{'images/s (wall)':<24}{'1 process':>11}{'2 processes':>13}{'repeat (2p)':>13}")
    for stage in ("detect", "align", "derive", "total"):
        print(f"{stage:<24}{ips(one[stage].wall):>11}{ips(two[stage].wall):>13}{ips(again[stage].wall):>13}")
    print(f"{'baseline plain loop':<24}{ips(base.wall):>11}")
    print(f"{'model kernels (in 1p)':<24}{ips(kern['wall']):>11}   {kern['calls']} ONNX + dlib calls, "
          f"{kern['cpu']:.2f} CPU s; model load {kern['load']:.2f} s (in the pipeline time, not the kernels)")
    print(f"crop {m['size']}, heatmap {m['hm']}; CPU seconds: pipeline 1p {one['total'].cpu:.1f}, 2p "
          f"{two['total'].cpu:.1f}, repeat {again['total'].cpu:.1f}, baseline {base.cpu:.1f}; detections run: "
          f"first {one['detections_run']}, repeat {again['detections_run']}; peak RSS {rss_mb:.0f} MB; "
          f"load average {load_before:.1f} -> {load_after:.1f}")

    r = ratios(m)
    print("\nratios")
    print(f"  pipeline (1 process) / its model kernels, wall  {r['pipeline_over_kernels']:6.2f}x   goal <= 1.3  "
          f"{verdict(r['pipeline_over_kernels'] <= 1.3, args.quick)}")
    print(f"  the same in CPU seconds                         {r['pipeline_over_kernels_cpu']:6.2f}x")
    print(f"  the same without the one-time model load        {r['pipeline_minus_load_over_kernels']:6.2f}x")
    print(f"  detect stage alone / the model kernels          {r['detect_over_kernels']:6.2f}x")
    print(f"  speed-up 1 -> 2 processes, whole pipeline       {r['scaling_1_to_2']:6.2f}x   (judged against "
          f"the machine's ceiling, below)")
    print(f"  the detector kernel alone, 2 processes / 1      {r['kernel_ceiling_1_to_2']:6.2f}x   (this machine's "
          f"ceiling now: shared vCPUs)")
    print(f"  pipeline speed-up / that ceiling                {r['scaling_over_ceiling']:6.2f}    goal >= 0.9  "
          f"{verdict(r['scaling_over_ceiling'] >= 0.9, args.quick) if m['ceiling_judged'] else 'not judged'}")
    print(f"  CPU work of 2 processes / 1 process             {r['cpu_2p_over_1p']:6.2f}x   (1.0: parallelism adds "
          f"no work; the wall speed-up also needs 2 idle cores)")
    print(f"  repeat run speed-up, detect stage               {r['repeat_detect_speedup']:6.1f}x   goal >= 20   "
          f"{verdict(r['repeat_detect_speedup'] >= 20, args.quick)}")
    print(f"  repeat run speed-up, detect+align+derive        {r['repeat_pipeline_speedup']:6.1f}x   (align/derive "
          f"have no cache: DVC skips them when their inputs are unchanged)")
    print(f"  pipeline / baseline plain loop, 1 process       {r['pipeline_1p_over_baseline']:6.2f}x")
    print(f"  pipeline / baseline plain loop, 2 processes     {r['pipeline_2p_over_baseline']:6.2f}x")
    return {"measured": m, "ratios": r}


if __name__ == "__main__":
    main()
