"""insightface: SCRFD boxes + 5 keypoints and 68-point (1k3d68) or 106-point (2d106det) landmarks.

Models come from an insightface model pack on disk: ``<root>/models/<pack>/*.onnx``
(``root`` = ``detect.model_dir``, then ``~/.insightface``), or ``model_dir`` may be
the pack folder itself (:func:`pack_dirs`). Each ONNX file is loaded with ``insightface.model_zoo.get_model``
on its local path (routing by the graph's shapes), never through ``FaceAnalysis``' implicit
download. A missing pack downloads only with ``allow_download``, from insightface's release URL into
its layout (:mod:`ferdata.faces.fetch`); a failed download and insightface's empty-folder
``AssertionError`` become :class:`MissingModelError`.
106-point output is mapped to iBUG-68 (``mapping.py``); 1k3d68 drops its z. The detector's input
is letterboxed here (:func:`letterbox`), so its boxes and keypoints map back exactly, each axis on its
own (insightface's own resize maps both back by the height's truncated scale, as pixel edges).
Note: insightface's pretrained packs are licensed for non-commercial research only.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from ferdata.faces.base import (BACKENDS, ONNXRUNTIME, OPENCV, SIMPLEJPEG, DownloadFailedError, Face, FaceBackend,
                                MissingModelError, check_pixels, files_fingerprint, no_spinning, unusable)
from ferdata.faces.fetch import fetch, unpack_zip
from ferdata.faces.mapping import to_ibug68
from ferdata.geometry import five_from_68, resized_back
from ferdata.records import FaceRecord

DEFAULT_ROOT = Path("~/.insightface")
LANDMARK_TASKS = {"68": "landmark_3d_68", "106": "landmark_2d_106"}
# File names inside the published packs, so a missing file can be named before loading.
PACK_FILES: dict[str, dict[str, str]] = {
    "buffalo_l": {"detection": "det_10g.onnx", "landmark_3d_68": "1k3d68.onnx", "landmark_2d_106": "2d106det.onnx"},
    "buffalo_m": {"detection": "det_2.5g.onnx", "landmark_3d_68": "1k3d68.onnx", "landmark_2d_106": "2d106det.onnx"},
    "buffalo_s": {"detection": "det_500m.onnx", "landmark_3d_68": "1k3d68.onnx", "landmark_2d_106": "2d106det.onnx"},
    "antelopev2": {"detection": "scrfd_10g_bnkps.onnx", "landmark_3d_68": "1k3d68.onnx",
                   "landmark_2d_106": "2d106det.onnx"},
    "buffalo_sc": {"detection": "det_500m.onnx"},          # a detector and a recognition model: no landmarks
}
WITH_LANDMARKS = [p for p, files in PACK_FILES.items() if set(LANDMARK_TASKS.values()) <= set(files)]
RELEASE_URL = "https://github.com/deepinsight/insightface/releases/download/model-zoo/{pack}.zip"


def pack_dirs(pack: str, model_dir: str | Path | None) -> list[Path]:
    """Where a pack may live, searched in order: ``<model_dir>/models/<pack>``, ``<model_dir>/<pack>``,
    ``model_dir`` itself, then insightface's own ``~/.insightface/models/<pack>`` (so setting
    ``detect.model_dir`` for other backends' files does not hide a pack installed there); each also
    one level deeper, ``.../<pack>/<pack>``, as some packs' zips (antelopev2) unpack."""
    roots = []
    if model_dir is not None:
        root = Path(model_dir).expanduser()
        roots += [root / "models" / pack, root / pack, root]
    roots.append(DEFAULT_ROOT.expanduser() / "models" / pack)
    return list(dict.fromkeys(d for r in roots for d in (r, r / pack)))


def _fix(pack: str, model_dir: str | Path | None) -> str:
    root = Path(model_dir).expanduser() if model_dir else DEFAULT_ROOT.expanduser()
    where = "" if model_dir else " (insightface's own folder, read without detect.model_dir)"
    return (f"put insightface pack {pack!r} in {root / 'models' / pack}/{where}, or point detect.model_dir "
            f"(predict: --model-dir) at another folder holding it; or set detect.allow_download: true "
            f"(predict: --allow-download) to fetch {RELEASE_URL.format(pack=pack)} once (needs network; models "
            f"are non-commercial research only)")


def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, tuple[float, float]]:
    """``image`` resized (bilinear, as insightface does) to fit ``size`` = (width, height), aspect kept,
    at the top left of a black canvas of that size; returns it and the (x, y) scales of the resize."""
    h, w = image.shape[:2]
    s = min(size[0] / w, size[1] / h)
    nw, nh = min(size[0], max(1, round(w * s))), min(size[1], max(1, round(h * s)))
    canvas = np.zeros((size[1], size[0], *image.shape[2:]), image.dtype)
    canvas[:nh, :nw] = image if (nw, nh) == (w, h) else cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return canvas, (nw / w, nh / h)


def find_pack(pack: str, model_dir: str | Path | None, tasks: Sequence[str]) -> dict[str, Path]:
    """The ONNX files for ``tasks`` of a known pack, or every ``*.onnx`` of an unknown one
    (keyed by file name, routed at load time). Raises :class:`MissingModelError`."""
    dirs = pack_dirs(pack, model_dir)
    names = PACK_FILES.get(pack)
    for d in dirs:
        if names is not None and all((d / names[t]).is_file() for t in tasks):
            return {t: d / names[t] for t in tasks}
        if names is None and d.is_dir() and len(found := sorted(d.glob("*.onnx"))) >= len(tasks):
            return {p.name: p for p in found}            # one file cannot hold a detector and landmarks
    fix = _fix(pack, model_dir)
    if names is not None:
        where = {t: [d for d in dirs if (d / names[t]).is_file()] for t in tasks}
        first = next((t for t in tasks if not where[t]), None)
        if first is None:       # each file is somewhere, but no one folder holds them all
            missing = " + ".join(names[t] for t in tasks) + " (in one folder)"
            fix = ("the pack's files are split between folders (" + "; ".join(
                f"{names[t]} in {', '.join(map(str, where[t]))}" for t in tasks) + "): " + fix)
        else:
            missing = names[first]
    else:
        missing = f"{pack}/*.onnx (a pack with {' + '.join(tasks)} models)"
    raise MissingModelError("insightface", missing, [str(d) for d in dirs], fix)


@BACKENDS.register("insightface")
class InsightFaceBackend(FaceBackend):
    """SCRFD detection + insightface landmarks (``landmarks``: "68" = 1k3d68, "106" = 2d106det)."""

    name = "insightface"
    version = "2"                          # 2: own letterbox, exact per-axis map back
    downloads = True
    defaults = {"pack": "buffalo_l", "landmarks": "68", "det_size": 640, "score_threshold": 0.5}
    packages = (("insightface",), ONNXRUNTIME, OPENCV, SIMPLEJPEG)

    @classmethod
    def check_values(cls, options: Mapping[str, Any]) -> None:
        """As every backend's, and ``det_size`` a multiple of 32: SCRFD's strides are 8, 16 and 32, and
        on another size its anchor grid (rounded down) misses its output grid (rounded up)."""
        super().check_values(options)
        size = options.get("det_size")
        if size is not None and (size < 32 or size % 32):
            raise ValueError(f"face backend {cls.name!r}: option det_size must be a multiple of 32 (SCRFD's "
                             f"largest stride), got {size}")
        landmarks = str(options.get("landmarks", cls.defaults["landmarks"]))
        if landmarks not in LANDMARK_TASKS:          # the landmark model and the pack: no file read to know them
            raise ValueError(f"insightface landmarks must be one of {sorted(LANDMARK_TASKS)}, "
                             f"got {options.get('landmarks')!r}")
        pack = str(options.get("pack", cls.defaults["pack"]))
        if pack in PACK_FILES and LANDMARK_TASKS[landmarks] not in PACK_FILES[pack]:
            raise ValueError(f"insightface pack {pack!r} has no {landmarks}-point landmark model: "
                             f"use one that has ({', '.join(WITH_LANDMARKS)})")

    def __init__(self, options: Mapping[str, Any] | None = None, model_dir: str | Path | None = None,
                 allow_download: bool = False) -> None:
        super().__init__(options, model_dir, allow_download)
        if str(self.options["landmarks"]) not in LANDMARK_TASKS:
            raise ValueError(f"insightface landmarks must be one of {sorted(LANDMARK_TASKS)}, "
                             f"got {self.options['landmarks']!r}")
        self.tasks = ("detection", LANDMARK_TASKS[str(self.options["landmarks"])])
        pack = str(self.options["pack"])
        if pack in PACK_FILES and self.tasks[1] not in PACK_FILES[pack]:
            raise ValueError(f"insightface pack {pack!r} has no {self.options['landmarks']}-point landmark model: "
                             f"use one that has ({', '.join(WITH_LANDMARKS)})")
        self._files: dict[str, Path] | None = None
        self._models: dict[str, Any] | None = None

    @classmethod
    def check_available(cls, model_dir: str | Path | None = None, pack: str = "buffalo_l",
                        landmarks: str = "68") -> None:
        import importlib.util

        if importlib.util.find_spec("insightface") is None:
            raise ImportError("insightface backend needs the package: pip install insightface")
        find_pack(pack, model_dir, ("detection", LANDMARK_TASKS[str(landmarks)]))

    def check_ready(self) -> None:
        type(self).check_available(self.model_dir, str(self.options["pack"]), str(self.options["landmarks"]))

    def files(self) -> dict[str, Path]:
        """The model files, downloading the pack first when allowed and missing."""
        if self._files is None:
            pack = str(self.options["pack"])
            try:
                self._files = find_pack(pack, self.model_dir, self.tasks)
            except MissingModelError as missing:
                if not self.allow_download:
                    raise
                self._download(pack, missing.looked_in)
                self._files = find_pack(pack, self.model_dir, self.tasks)
        return self._files

    def _download(self, pack: str, looked_in: list[str]) -> None:
        """insightface's release zip of ``pack`` unpacked into ``<root>/models/<pack>``, as insightface's
        own ``download`` does, but through :mod:`ferdata.faces.fetch` (a stall fails, nothing half-made)."""
        models = Path(self.model_dir or DEFAULT_ROOT).expanduser() / "models"
        url = RELEASE_URL.format(pack=pack)
        try:
            unpack_zip(fetch(url, models / f"{pack}.zip"), models / pack)
        except (OSError, zipfile.BadZipFile) as e:
            raise DownloadFailedError("insightface", f"{pack}.zip", looked_in,
                                      f"downloading {url} failed ({type(e).__name__}: {e}): check the network (a "
                                      f"proxy: HTTPS_PROXY), or download it yourself and unzip it into "
                                      f"{models / pack}/ (models are non-commercial research only)") from e

    def fingerprint(self) -> str:
        return files_fingerprint(sorted(set(self.files().values())))

    def load(self) -> None:
        """Load the pack's ONNX models, keep the detector and the wanted landmark model."""
        import onnxruntime as ort
        from insightface.model_zoo import get_model

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(self.options.get("threads", 1))   # parallelism comes from processes
        so.inter_op_num_threads = 1
        no_spinning(so)
        models: dict[str, Any] = {}
        for path in self.files().values():
            try:
                model = get_model(str(path), providers=["CPUExecutionProvider"], sess_options=so)
            except AssertionError as e:                       # insightface's "file should exist" checks
                raise MissingModelError("insightface", str(path), [str(path.parent)],
                                        _fix(str(self.options["pack"]), self.model_dir)) from e
            except Exception as e:                            # onnxruntime: InvalidProtobuf, InvalidGraph ...
                raise unusable("insightface", path, e, _fix(str(self.options["pack"]), self.model_dir)) from e
            task = getattr(model, "taskname", None)
            if task in self.tasks and task not in models:
                models[task] = model
        for task in self.tasks:
            if task not in models:                          # a pack of other files (a recognition model ...)
                raise MissingModelError("insightface", f"a {task} model", [str(p) for p in self.files().values()],
                                        f"pack {self.options['pack']!r} has none among these files (each routed by "
                                        f"its graph's shapes): add one, or use a pack that has one "
                                        f"({', '.join(WITH_LANDMARKS)})")
        models["detection"].prepare(-1, input_size=(int(self.options["det_size"]),) * 2,
                                    det_thresh=float(self.options["score_threshold"]))
        models[self.tasks[1]].prepare(-1)
        self._models = models

    def detect(self, image: np.ndarray, record: FaceRecord | None = None) -> list[Face]:
        from insightface.app.common import Face as InsightFace

        check_pixels(image, self.name)
        self.load_once("_models", self.load)
        bgr = np.ascontiguousarray(image[..., ::-1])           # insightface models take BGR
        detector = self._models["detection"]
        size = tuple(int(v) for v in detector.input_size)       # det_size, or the model's fixed input
        boxed, scale = letterbox(bgr, size)
        found, kpss = detector.detect(boxed, input_size=size, max_num=0)   # its own resize: the identity
        scores = found[:, 4]
        boxes, kpss = resized_back(found[:, :4], kpss, scale)
        faces = []
        for i in range(boxes.shape[0]):
            box = boxes[i].astype(np.float64)
            pred = self._models[self.tasks[1]].get(bgr, InsightFace(bbox=box))
            lmk68 = to_ibug68(pred)
            kps5 = np.asarray(kpss[i], np.float32) if kpss is not None else five_from_68(lmk68)
            faces.append(Face(tuple(float(v) for v in box), float(scores[i]), kps5, lmk68, self.name))
        return faces
