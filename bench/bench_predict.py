"""Inference benchmark: ``ferdata predict``'s path on camera-size photos and a 1080p video, per stage,
in one process (as a deployer runs it: one process, torch's threads for the face model too).

Inputs, made here: N JPEGs (quality 90) alternately 4032x3024 and 1920x1080, each holding 1-3 faces
(skimage's astronaut, matplotlib's grace_hopper, scaled 0.5-3.5x, some mirrored) on a smooth noise
background; a 1080p MJPG video of the astronaut sliding across (``--frames`` frames). The model is
a freshly initialised ``--model`` (weights do not change its cost) saved as a checkpoint that records
params.yaml's align/derive settings; faces are found by the embedded backend (offline).

Measured (``run_predict`` on the photos, then the video at ``--every`` 1 and 10), each stage's time
by wrapping the functions that do it: decode (``Picture.from_file``), the align stage's reduced
decodes, detection (resize + blob, the RetinaFace ONNX kernel, anchor decode), dlib's 68 landmarks,
the crop (``crop_face``: warp, reduced decode included), the crop's JPEG encode (the training
faces' round trip), derive, the batch decode (``collate``) and the model (``probabilities``,
collate included). Repeated ``--repeats`` times, medians printed. Prints pictures/s, ms per picture
per stage, and the ratios last: the run's wall over its model kernels' (RetinaFace + dlib + the
forward), and what a video frame at --every 10 costs over one at --every 1. Nothing is asserted:
the machine is shared. Usage: ``python bench/bench_predict.py [--quick] [--n N] [--frames F]``.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import fermodels.predictor as predictor_module  # noqa: E402
from ferdata.classes import class_names  # noqa: E402
from ferdata.faces.embedded import EmbeddedBackend  # noqa: E402
from ferdata.params import load_params  # noqa: E402
from ferdata.stages.derive import DeriveWorker  # noqa: E402
from fermodels.data import SampleDecoder  # noqa: E402
from fermodels.predict import run_predict  # noqa: E402
from fermodels.predictor import Picture, Predictor  # noqa: E402
from fermodels.registry import create_model  # noqa: E402
from fermodels.runstate import CHECKPOINT_KEYS, FORMAT, preprocess_record  # noqa: E402

# (owner, attribute, label): the stages, in pipeline order; "reduced decode" counts decode_image calls
# beyond each file's first (its full decode, counted in "decode")
STAGES = (
    (Picture, "from_file", "decode"),
    (predictor_module, "decode_image", "decode_image (all)"),
    (EmbeddedBackend, "prepare", "detect: resize + blob"),
    (EmbeddedBackend, "infer", "detect: RetinaFace ONNX"),
    (EmbeddedBackend, "decode", "detect: anchors + NMS"),
    (EmbeddedBackend, "landmarks", "landmarks: dlib 68"),
    (predictor_module, "crop_face", "align: crop (+ reduced decode)"),
    (predictor_module, "encode_jpeg", "crop JPEG encode"),
    (DeriveWorker, "__call__", "derive"),
    (SampleDecoder, "collate", "batch decode (collate)"),
    (Predictor, "probabilities", "model (collate included)"),
)
KERNELS = ("detect: RetinaFace ONNX", "landmarks: dlib 68", "model (collate included)")


@contextlib.contextmanager
def timed_stages() -> Iterator[collections.Counter]:
    """Wrap each stage's function to add its wall time (seconds) under its label; restored after."""
    spent: collections.Counter = collections.Counter()
    saved = []
    for owner, name, label in STAGES:
        f = owner.__dict__[name]
        inner = f.__func__ if isinstance(f, classmethod) else f

        def timer(*a, _f=inner, _label=label, **k):
            t = time.perf_counter()
            try:
                return _f(*a, **k)
            finally:
                spent[_label] += time.perf_counter() - t
        wrapped = functools.wraps(inner)(timer)
        setattr(owner, name, classmethod(wrapped) if isinstance(f, classmethod) else wrapped)
        saved.append((owner, name, f))
    try:
        yield spent
    finally:
        for owner, name, f in saved:
            setattr(owner, name, f)


def make_photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    import matplotlib.cbook as cbook
    from skimage import data

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    faces = [data.astronaut(), hopper]
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        width, height = (4032, 3024) if i % 2 == 0 else (1920, 1080)
        canvas = cv2.resize(rng.integers(0, 255, (height // 64, width // 64, 3), dtype=np.uint8), (width, height),
                            interpolation=cv2.INTER_CUBIC)
        for k in range(1 + i % 3):
            face = faces[(i + k) % 2][:, ::-1] if (i // 5) % 2 else faces[(i + k) % 2]
            zoom = rng.uniform(0.75, 5.0) * height / 3024
            face = cv2.resize(face, None, fx=zoom, fy=zoom,
                              interpolation=cv2.INTER_AREA if zoom < 1 else cv2.INTER_CUBIC)
            h, w = face.shape[:2]
            if h < height and w < width:
                y, x = rng.integers(0, height - h), rng.integers(0, width - w)
                canvas[y:y + h, x:x + w] = face
        paths.append(folder / f"photo{i:04d}.jpg")
        cv2.imwrite(str(paths[-1]), np.ascontiguousarray(canvas[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return paths


def make_video(path: Path, frames: int) -> Path:
    from skimage import data

    face = cv2.resize(data.astronaut(), (700, 700))[..., ::-1]
    background = cv2.resize(np.random.default_rng(1).integers(0, 255, (17, 30, 3), dtype=np.uint8), (1920, 1080),
                            interpolation=cv2.INTER_CUBIC)
    video = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (1920, 1080))
    for i in range(frames):
        frame = background.copy()
        x = 100 + (1000 * i) // max(1, frames)
        frame[200:900, x:x + 700] = face
        video.write(frame)
    video.release()
    return path


def make_checkpoint(path: Path, model: str, kwargs: dict) -> Path:
    """A freshly initialised ``model`` as a training checkpoint recording params.yaml's preprocessing."""
    classes = list(class_names(7))
    net = create_model(model, num_classes=7, **kwargs)
    state = {**{k: None for k in CHECKPOINT_KEYS}, "format": FORMAT, "model": model, "model_kwargs": kwargs,
             "num_classes": 7, "classes": classes, "state_dict": net.state_dict(),
             "preprocess": preprocess_record(load_params(REPO / "params.yaml")),
             "data": {"face_backends": {"embedded": 1}}}
    torch.save(state, path)
    return path


def measure(predictor: Predictor, paths: list[Path], every: int, repeats: int) -> dict:
    """Median over ``repeats`` runs: wall, pictures, faces and each stage's seconds."""
    runs = []
    for _ in range(repeats):
        with timed_stages() as spent:
            t = time.perf_counter()
            rows, summary = run_predict(predictor, paths, batch_size=32, every=every)
            wall = time.perf_counter() - t
        stages = dict(spent)
        stages["decode_image (all)"] = max(0.0, stages.get("decode_image (all)", 0.0) - stages.get("decode", 0.0))
        runs.append({"wall": wall, "pictures": len(summary), "faces": len(rows), "stages": stages})
    labels = [label for *_, label in STAGES]
    return {"wall": statistics.median(r["wall"] for r in runs), "pictures": runs[0]["pictures"],
            "faces": runs[0]["faces"],
            "stages": {label: statistics.median(r["stages"].get(label, 0.0) for r in runs) for label in labels}}


def report(title: str, m: dict) -> None:
    n, wall = m["pictures"], m["wall"]
    print(f"\n{title}: {n} pictures, {m['faces']} faces, {wall:.2f} s, {n / wall:.2f} pictures/s")
    for label, s in m["stages"].items():
        shown = "reduced decodes (align)" if label == "decode_image (all)" else label
        print(f"  {shown:34s} {1000 * s / max(1, n):8.1f} ms/picture {100 * s / wall:6.1f}%")


@contextlib.contextmanager
def quiet(*names: str) -> Iterator[None]:
    """The packages' loggers at ERROR for the run (each picture's info lines would time the console), then as
    they were (the tests run this in-process)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few photos and frames, one repeat, a tiny model")
    ap.add_argument("--n", type=int, default=None, help="photos (default 200; quick 4)")
    ap.add_argument("--frames", type=int, default=None, help="video frames (default 300; quick 20)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="runs of each measurement, medians kept (default 3; quick 1)")
    ap.add_argument("--model", default=None, help="model to score with (default resnet18; quick a tiny convcut)")
    args = ap.parse_args(argv)
    n = args.n or (4 if args.quick else 200)
    frames = args.frames or (20 if args.quick else 300)
    repeats = args.repeats or (1 if args.quick else 3)
    model, kwargs = args.model or ("convcut" if args.quick else "resnet18"), {}
    if model == "convcut" and args.quick:
        kwargs = {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64], "cut_stage": 2, "width": 16,
                  "freeze_backbone": False}
    with quiet("ferdata", "fermodels"), tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        tmp = Path(tmp)
        photos = make_photos(tmp, n)
        video = make_video(tmp / "clip.avi", frames)
        t = time.perf_counter()
        predictor = Predictor(make_checkpoint(tmp / "best.pt", model, kwargs), backend="embedded", device="cpu",
                              keypoints="detector")
        predictor.backend.load()
        load = time.perf_counter() - t
        print(f"model {model} (fields {', '.join(predictor.card.fields)}), torch threads {torch.get_num_threads()}, "
              f"OpenCV threads {cv2.getNumThreads()}, face model threads {predictor.backend.options['threads']}; "
              f"load {load:.2f} s; {repeats} run(s) each, medians")
        run_predict(predictor, photos[:1], batch_size=32, every=1)           # first calls' one-time costs
        measured = {"photos": measure(predictor, photos, 1, repeats),
                    "video1": measure(predictor, [video], 1, repeats),
                    "video10": measure(predictor, [video], 10, repeats)}
    report("photos", measured["photos"])
    report("video --every 1", measured["video1"])
    report("video --every 10", measured["video10"])
    per_frame = {k: measured[k]["wall"] / max(1, measured[k]["pictures"]) for k in ("video1", "video10")}
    ratios = {f"{k}_over_kernels": measured[k]["wall"] / max(1e-9, sum(measured[k]["stages"][s] for s in KERNELS))
              for k in measured}
    ratios["every10_frame_over_every1_frame"] = per_frame["video10"] / per_frame["video1"]
    print("\nratios")
    for key, label in (("photos_over_kernels", "photos: wall / model kernels (ONNX + dlib + model)"),
                       ("video1_over_kernels", "video --every 1: wall / model kernels"),
                       ("video10_over_kernels", "video --every 10: wall / model kernels"),
                       ("every10_frame_over_every1_frame", "scored frame at --every 10 / at --every 1")):
        print(f"  {label:55s} {ratios[key]:6.2f}x")
    return {"measured": measured, "ratios": ratios}


if __name__ == "__main__":
    main()
