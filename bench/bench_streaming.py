"""Streaming benchmark: the whole preprocessing chain with the ``annotations`` backend (no
detector), its speed per stage against a plain loop, and its peak memory at 1k and 10k inputs.

Inputs: the photos shipped inside pip packages (see ``bench_preprocess.package_photos``),
rescaled to a random longest side and half of them mirrored, each with 68 landmarks carried
through the same rescale/mirror from one embedded-backend detection of the original photo,
so the records look like a dataset that ships its own landmarks (AffectNet, RAF-DB).

Each configuration runs in a fresh child process (``--child``) so its peak RSS (main process
and the largest worker) is its own. Measured:

* detect (annotations) -> align -> derive -> shard, images/s per stage and end to end, with
  1 and 2 worker processes, first run and repeat run (the annotations backend has nothing
  to cache: a repeat costs what the first run costs; ``dvc repro`` skips unchanged stages);
* baseline: a plain loop doing the same per image (decode, annotations, align, heatmap,
  halves, encode) in memory, no stages, no processes;
* peak RSS with 1k and 10k inputs (2 workers): streaming stages keep it flat; for the workers
  also their peak private memory (USS), since a forked worker's RSS counts the parent's pages.

Prints the ratios last. Usage: ``python bench/bench_streaming.py [--quick] [--n N --big N]``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_preprocess import Clock, baseline, one_opencv_thread, package_photos, verdict  # noqa: E402
from ferdata.faces.base import select_face  # noqa: E402
from ferdata.faces.dataset import AnnotationsBackend  # noqa: E402
from ferdata.faces.embedded import EmbeddedBackend  # noqa: E402
from ferdata.geometry import flip_landmarks  # noqa: E402
from ferdata.params import load_params, section  # noqa: E402
from ferdata.records import FaceRecord  # noqa: E402
from ferdata.stages.align import AlignParams, run_align  # noqa: E402
from ferdata.stages.derive import DeriveParams, run_derive  # noqa: E402
from ferdata.stages.detect import DetectParams, run_detect  # noqa: E402
from ferdata.stages.shard import ShardParams, run_shard  # noqa: E402

STAGES = ("detect", "align", "derive", "shard")


def make_annotated_inputs(folder: Path, n: int, max_side: int) -> Path:
    """Write ``n`` JPEGs and a ``records.jsonl`` of their landmarks; returns the jsonl path."""
    rng = np.random.default_rng(1)
    photos = package_photos()
    embedded = EmbeddedBackend()
    lmks = [select_face(embedded.detect(p), p.shape, "largest").lmk68 for p in photos]
    folder.mkdir(parents=True, exist_ok=True)
    index = folder / "records.jsonl"
    with open(index, "w", encoding="utf-8") as out:
        for i in range(n):
            img, lmk = photos[i % len(photos)], lmks[i % len(photos)]
            if rng.random() < 0.5:
                img, lmk = img[:, ::-1], flip_landmarks(lmk, img.shape[1])
            scale = int(rng.integers(max_side // 2, max_side + 1)) / max(img.shape[:2])
            small = cv2.resize(np.ascontiguousarray(img), None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            small[:2, :8] = rng.integers(0, 256, (2, 8, 3))          # every file distinct (no duplicate drops)
            path = folder / f"img{i:06d}.jpg"
            cv2.imwrite(str(path), cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
            # pixel centres: x_small = (x + 0.5) * scale - 0.5
            points = (np.asarray(lmk, np.float64) + 0.5) * scale - 0.5
            out.write(json.dumps({"key": f"img{i:06d}", "path": str(path), "label": i % 7,
                                  "subject": f"s{i % 97}", "landmarks": points.round(2).tolist()}) + "\n")
    return index


def read_records(index: Path) -> Iterator[FaceRecord]:
    """Records streamed from the jsonl (never all in memory)."""
    with open(index, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            yield FaceRecord("bench", d["key"], d["path"], d["label"], str(d["label"]), subject=d["subject"],
                             landmarks=np.asarray(d["landmarks"], np.float32))


def stage_params(workers: int, work: Path) -> dict:
    params = load_params(REPO / "params.yaml")
    det = DetectParams(backend="annotations", select="largest", det_size=640, score_threshold=0.9, model_dir=None,
                       cache_dir=str(work / "cache"), workers=workers)
    return {"detect": det,
            "align": dataclasses.replace(section(AlignParams, params["align"], "align"), workers=workers),
            "derive": dataclasses.replace(section(DeriveParams, params["derive"], "derive"), workers=workers),
            "shard": section(ShardParams, params["shard"], "shard")}


def run_chain(index: Path, work: Path, workers: int) -> dict[str, float]:
    """Wall seconds per stage of detect -> align -> derive -> shard."""
    p = stage_params(workers, work)
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    with Clock() as c:
        run_detect(read_records(index), p["detect"], work / "detect")
    out["detect"] = c.wall
    with Clock() as c:
        run_align(work / "detect", p["align"], work / "aligned")
    out["align"] = c.wall
    with Clock() as c:
        run_derive(work / "aligned", p["derive"], work / "derived")
    out["derive"] = c.wall
    with Clock() as c:
        report = run_shard(work / "aligned", work / "derived", p["shard"], work / "shards")
    out["shard"] = c.wall
    out["total"] = time.perf_counter() - t0
    out["kept"] = report.kept
    return out


class WorkerMemory(threading.Thread):
    """Peak private memory (USS: private clean + dirty pages, /proc/<pid>/smaps_rollup) of any
    child process, polled every ``every`` seconds. A forked worker's RSS also counts the pages it
    still shares with the parent (a do-nothing child of a 200 MB parent reports 200 MB), so RSS
    says how big the parent was at the fork; USS is what the worker itself holds. Linux only
    (elsewhere the peak stays 0)."""

    def __init__(self, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.every, self.peak_kb, self._done = every, 0, threading.Event()

    def run(self) -> None:
        me = str(os.getpid())
        while not self._done.wait(self.every):
            for pid in _children(me):
                self.peak_kb = max(self.peak_kb, _private_kb(pid))

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak_kb / 1024


def _children(ppid: str) -> list[str]:
    out = []
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[1] == ppid:
                        out.append(entry.name)
            except (OSError, IndexError):
                pass
    return out


def _private_kb(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return sum(int(line.split()[1]) for line in f if line.startswith(("Private_Clean:", "Private_Dirty:")))
    except (OSError, ValueError, IndexError):
        return 0


def child(index: Path, work: Path, workers: int, repeat: bool) -> None:
    """Run the chain (twice with ``repeat``) and print one JSON line: timings, and the peak RSS (MB)
    and workers' peak private memory (MB) of the first run (taken before any repeat, so runs of
    different sizes are compared over the same work)."""
    monitor = WorkerMemory()
    monitor.start()
    with one_opencv_thread():                      # as every worker: 1 vs 2 processes alike
        first = run_chain(index, work, workers)
        private = monitor.stop()
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        again = run_chain(index, work, workers) if repeat else None
    print(json.dumps({"first": first, "repeat": again, "rss_main_mb": me.ru_maxrss / 1024,
                      "rss_worker_mb": kids.ru_maxrss / 1024, "private_worker_mb": private}))


def spawn(index: Path, work: Path, workers: int, repeat: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", str(index), str(work), str(workers)] + (["--repeat"] if repeat else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def annotation_baseline(index: Path) -> Clock:
    params = load_params(REPO / "params.yaml")
    with one_opencv_thread():
        return baseline(list(read_records(index)), params["align"]["size"], params["derive"]["heatmap_size"],
                        params["derive"]["heatmap_sigma"], AnnotationsBackend())


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small inputs (smoke test)")
    ap.add_argument("--n", type=int, default=None, help="inputs of the speed runs and the small RSS run (default 1000)")
    ap.add_argument("--big", type=int, default=None, help="inputs of the large RSS run (default 10000)")
    ap.add_argument("--max-side", type=int, default=None, help="longest side of the inputs (default 480)")
    ap.add_argument("--child", nargs=3, metavar=("INDEX", "WORK", "WORKERS"), help=argparse.SUPPRESS)
    ap.add_argument("--repeat", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), int(args.child[2]), args.repeat)
        return {}
    n, big = args.n or (40 if args.quick else 1000), args.big or (160 if args.quick else 10000)
    max_side = args.max_side or (160 if args.quick else 480)
    print(f"inputs: {n} and {big} JPEGs from package photos with their landmarks, longest side "
          f"{max_side // 2}-{max_side} px; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="bench_streaming_") as tmp:
        root = Path(tmp)
        small = make_annotated_inputs(root / "small", n, max_side)
        base = annotation_baseline(small)
        runs = {w: spawn(small, root / f"w{w}", w, repeat=True) for w in (1, 2)}
        large = make_annotated_inputs(root / "large", big, max_side)
        big_run = spawn(large, root / "big", 2, repeat=False)
    one, two = runs[1], runs[2]
    if not one["first"]["kept"] == two["first"]["kept"] == n or big_run["first"]["kept"] != big:
        raise RuntimeError(f"samples lost: kept {one['first']['kept']}, {two['first']['kept']} of {n}, "
                           f"{big_run['first']['kept']} of {big}")

    def ips(count: int, seconds: float) -> str:
        return f"{count / seconds:9.0f}"

    print(f"\n{'images/s (wall)':<20}{'1 process':>11}{'2 processes':>13}{'repeat (2p)':>13}{f'{big} inputs (2p)':>18}")
    for stage in (*STAGES, "total"):
        print(f"{stage:<20}{ips(n, one['first'][stage]):>11}{ips(n, two['first'][stage]):>13}"
              f"{ips(n, two['repeat'][stage]):>13}{ips(big, big_run['first'][stage]):>18}")
    print(f"{'baseline plain loop':<20}{ips(n, base.wall):>11}   (decode, annotations, align, heatmap, halves, "
          f"encode; no shards)")
    print(f"\npeak memory (MB)     {n:>6} inputs {big:>7} inputs")
    for who, key in (("main RSS", "rss_main_mb"), ("worker RSS", "rss_worker_mb"),
                     ("worker private", "private_worker_mb")):
        print(f"  {who:<18}{two[key]:>13.0f}{big_run[key]:>15.0f}")
    print("  (a forked worker's RSS includes the pages it shares with the parent at the fork; private = USS)")

    r = {
        "rss_main_big_over_small": big_run["rss_main_mb"] / two["rss_main_mb"],
        "rss_worker_big_over_small": big_run["rss_worker_mb"] / two["rss_worker_mb"],
        "private_worker_big_over_small": (big_run["private_worker_mb"] / two["private_worker_mb"]
                                          if two["private_worker_mb"] and big_run["private_worker_mb"]
                                          else float("nan")),     # nan: a run too short for the poller to see
        "pipeline_1p_over_baseline": one["first"]["total"] / base.wall,
        "chain_without_shard_1p_over_baseline": (one["first"]["total"] - one["first"]["shard"]) / base.wall,
        "scaling_1_to_2": one["first"]["total"] / two["first"]["total"],
        "repeat_over_first": two["repeat"]["total"] / two["first"]["total"],
        "per_image_big_over_small": (big_run["first"]["total"] / big) / (two["first"]["total"] / n),
    }
    print("\nratios")
    print(f"  peak RSS, main process, {big} / {n} inputs  {r['rss_main_big_over_small']:6.2f}x   goal ~1 (<= 1.2)  "
          f"{verdict(r['rss_main_big_over_small'] <= 1.2, args.quick)}")
    print(f"  peak private memory, largest worker, {big} / {n}  {r['private_worker_big_over_small']:6.2f}x   "
          f"goal ~1 (<= 1.2)  {verdict(r['private_worker_big_over_small'] <= 1.2, args.quick)}"
          + ("" if r["private_worker_big_over_small"] == r["private_worker_big_over_small"] else " (runs too short)"))
    print(f"  peak RSS, largest worker, {big} / {n}       {r['rss_worker_big_over_small']:6.2f}x   (includes "
          f"the parent's pages at the fork)")
    print(f"  time per image, {big} / {n} inputs          {r['per_image_big_over_small']:6.2f}x   (1.0: no "
          f"per-image cost grows with the dataset)")
    print(f"  detect..derive (1 process) / baseline loop   {r['chain_without_shard_1p_over_baseline']:6.2f}x")
    print(f"  detect..shard (1 process) / baseline loop    {r['pipeline_1p_over_baseline']:6.2f}x   (the loop "
          f"writes no shards)")
    print(f"  speed-up 1 -> 2 processes                    {r['scaling_1_to_2']:6.2f}x")
    print(f"  repeat run / first run (annotations: nothing to cache)  {r['repeat_over_first']:6.2f}x")
    return r


if __name__ == "__main__":
    main()
