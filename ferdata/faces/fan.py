"""face-alignment: FAN 2D 68-point landmarks (iBUG order), boxes from a detector.

Default detector ``embedded``: our RetinaFace ONNX boxes and 5 keypoints are passed to
FAN as ``detected_faces`` (one detector for every backend, no extra weights), with
face-alignment's own RetinaFace reference scale (165), since those boxes come from the
same network family. ``sfd`` (S3FD, a weight file) and ``dlib`` (CPU HOG, no file) use
face-alignment's detectors, on the image shrunk to ``det_size`` with their own score filters
(``score_threshold`` is the embedded detector's); FAN then reads the 68 points from the full image,
and the 5 keypoints come from them.

Weights come from torch hub's folder, ``$TORCH_HOME/hub/checkpoints`` (FAN has no path
argument), or from ``detect.model_dir``. Every weight lookup goes through
:meth:`FanBackend.resolve`, so nothing is fetched unless ``allow_download`` is set (then into torch
hub's folder through :mod:`ferdata.faces.fetch`), and a failed fetch becomes a :class:`MissingModelError`.
Always ``device='cpu'`` and ``compile=False`` (face-alignment defaults to CUDA and a
``torch.compile`` warm-up).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import pickle
import struct
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

import numpy as np

from ferdata.faces.base import (BACKENDS, OPENCV, SIMPLEJPEG, DownloadFailedError, Face, FaceBackend, MissingModelError,
                                check_pixels, files_fingerprint, unusable)
from ferdata.faces.embedded import EmbeddedBackend, retinaface_digest
from ferdata.faces.fetch import fetch
from ferdata.geometry import five_from_68, resized_back, shrunk
from ferdata.records import FaceRecord

log = logging.getLogger(__name__)

FAN_URL = "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar"
SFD_URL = "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth"
FAN_FILE = Path(urlparse(FAN_URL).path).name
DETECTORS = {"embedded": None, "sfd": SFD_URL, "dlib": None}   # name -> weight URL (None: no file)
RETINAFACE_REFERENCE_SCALE = 165.0                              # face-alignment's value for RetinaFace boxes


def hub_checkpoints() -> Path:
    """torch.hub's checkpoint folder, computed as torch does but without importing torch."""
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(home).expanduser() / "hub" / "checkpoints"


def weight_dirs(model_dir: str | Path | None) -> list[Path]:
    """Where a weight file may be: the model dir (flat or torch-hub layout), then torch hub's folder."""
    dirs = []
    if model_dir:
        root = Path(model_dir).expanduser()
        dirs += [root, root / "checkpoints", root / "hub" / "checkpoints"]
    return dirs + [hub_checkpoints()]


def _fix(filename: str, url: str) -> str:
    return (f"download {url} to {hub_checkpoints() / filename} (or set TORCH_HOME, or put it in "
            f"detect.model_dir, predict: --model-dir); or set detect.allow_download: true (predict: "
            f"--allow-download) to fetch it once (needs network)")


def find_weight(url: str, model_dir: str | Path | None) -> Path:
    name = Path(urlparse(url).path).name
    dirs = weight_dirs(model_dir)
    for d in dirs:
        if (d / name).is_file():
            return d / name
    raise MissingModelError("face_alignment", name, [str(d) for d in dirs], _fix(name, url))


class _GivenBoxes:
    """Stands in for face-alignment's detector when boxes come from our detector."""

    def __init__(self, reference_scale: float) -> None:
        self.reference_scale = reference_scale

    def detect_from_image(self, image: Any) -> list:
        raise RuntimeError("face_alignment backend passes detected_faces; its detector is never called")


@BACKENDS.register("face_alignment")
class FanBackend(FaceBackend):
    """FAN-4 2D landmarks on boxes from ``detector`` (embedded | sfd | dlib)."""

    name = "face_alignment"
    version = "3"                  # 2: the embedded detector's exact per-axis map back; 3: sfd / dlib on det_size
    downloads = True
    defaults = {"detector": "embedded", "det_size": 640, "score_threshold": 0.9, "flip_input": False}

    @classmethod
    def check_values(cls, options: Mapping[str, Any]) -> None:
        """As every backend's, and ``detector`` one of :data:`DETECTORS` (told when params.yaml is checked)."""
        super().check_values(options)
        if options.get("detector", cls.defaults["detector"]) not in DETECTORS:
            raise ValueError(f"face_alignment detector must be one of {sorted(DETECTORS)}, "
                             f"got {options['detector']!r}")

    @classmethod
    def unsigned(cls, options: Mapping[str, Any]) -> frozenset[str]:
        """``score_threshold`` too with the sfd and dlib detectors, which keep their own score filters."""
        own = options.get("detector", cls.defaults["detector"]) != "embedded"
        return cls.UNSIGNED | ({"score_threshold"} if own else frozenset())

    def __init__(self, options: Mapping[str, Any] | None = None, model_dir: str | Path | None = None,
                 allow_download: bool = False) -> None:
        super().__init__(options, model_dir, allow_download)
        self._fa = None
        self._given: str | None = None     # the weight file resolve() last gave: the one loading when it fails
        boxes = {k: self.options[k] for k in ("det_size", "score_threshold", "threads") if k in self.options}
        self._boxes = EmbeddedBackend(boxes, model_dir) if self.options["detector"] == "embedded" else None
        detector_packages = {"embedded": EmbeddedBackend.packages, "dlib": (("dlib-bin", "dlib"),), "sfd": ()}
        self.packages = (("face-alignment",), ("torch",), OPENCV, SIMPLEJPEG,
                         *(p for p in detector_packages[self.options["detector"]] if p not in (OPENCV, SIMPLEJPEG)))

    @classmethod
    def check_available(cls, model_dir: str | Path | None = None, detector: str = "embedded") -> None:
        if importlib.util.find_spec("face_alignment") is None:
            raise ImportError("face_alignment backend needs the package: pip install face-alignment")
        find_weight(FAN_URL, model_dir)
        if DETECTORS.get(detector):
            find_weight(DETECTORS[detector], model_dir)

    def check_ready(self) -> None:
        type(self).check_available(self.model_dir, self.options["detector"])

    def fingerprint(self) -> str:
        """FAN's weights and the detector's (S3FD's file, or RetinaFace's for ``embedded``), by content."""
        detector = self.options["detector"]
        files = [self.resolve(FAN_URL), *([self.resolve(DETECTORS[detector])] if DETECTORS[detector] else [])]
        boxes = f",retinaface:{retinaface_digest()}" if self._boxes is not None else ""   # its boxes, not dlib
        return files_fingerprint(files) + boxes

    def resolve(self, url: str, *args: Any, **kwargs: Any) -> str:
        """The local file for ``url`` (face-alignment's ``load_file_from_url``, routed here), else a
        download into torch hub's folder where face-alignment would put it, only when allowed, through
        :mod:`ferdata.faces.fetch`; any failure is a :class:`MissingModelError`."""
        try:
            self._given = str(find_weight(url, self.model_dir))
            return self._given
        except MissingModelError as missing:
            if not self.allow_download:
                raise
            looked_in = missing.looked_in
        name = Path(urlparse(url).path).name
        try:
            self._given = str(fetch(url, hub_checkpoints() / name))
            return self._given
        except OSError as e:                    # URLError, socket errors, HTTP errors, a stall
            raise DownloadFailedError("face_alignment", name, looked_in,
                                      f"downloading {url} failed ({type(e).__name__}: {e}): check the network (a "
                                      f"proxy: HTTPS_PROXY), or download it yourself to {hub_checkpoints() / name} "
                                      "(or into detect.model_dir, predict: --model-dir)") from e

    def load(self) -> None:
        """Build ``FaceAlignment`` on CPU without compiling; weights through :meth:`resolve`."""
        import face_alignment
        import face_alignment.api as fa_api

        detector = self.options["detector"]
        kwargs: dict[str, Any] = {}
        self._given = None
        if DETECTORS[detector]:
            kwargs["face_detector_kwargs"] = {"path_to_detector": self.resolve(DETECTORS[detector])}
        original: Callable = fa_api.load_file_from_url
        fa_api.load_file_from_url = self.resolve       # FAN has no path argument: route its lookup
        try:
            fa = face_alignment.FaceAlignment(
                face_alignment.LandmarksType.TWO_D, device="cpu", flip_input=bool(self.options["flip_input"]),
                face_detector="folder" if detector == "embedded" else detector, compile=False,
                max_batch_size=8, **kwargs)                # the faces of one image go through FAN together
        except MissingModelError:
            raise
        except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, IndexError, ValueError, OSError,
                struct.error, TypeError) as e:     # a cut or wrong weight file: torch.load's errors differ by cut
            if isinstance(e, TypeError) and "state_dict" not in str(e):
                raise                              # not the file's (load_state_dict's: "Expected state_dict ...")
            # named by its path (S3FD's is given before FAN's), which may be in detect.model_dir: searched before
            # torch hub's folder, so a fresh copy there would not replace it
            bad = Path(self._given or FAN_FILE)
            urls = {Path(urlparse(u).path).name: u for u in (FAN_URL, DETECTORS[detector]) if u}
            raise unusable("face_alignment", bad, e, _fix(bad.name, urls.get(bad.name, FAN_URL))) from e
        finally:
            fa_api.load_file_from_url = original
        if detector == "embedded":
            fa.face_detector = _GivenBoxes(RETINAFACE_REFERENCE_SCALE)
        self._fa = fa

    def detect(self, image: np.ndarray, record: FaceRecord | None = None) -> list[Face]:
        """Faces with FAN's 68 points, on ``threads`` torch threads (default 1, as the ONNX backends:
        the detect stage's parallelism comes from its processes; torch's default, one thread per
        core in every worker, ran FAN 3x slower on 2 cores); the caller's thread count is restored.
        More than 1 in a detect worker forked from a process that had run torch on several threads
        (a notebook that trained first) hangs there: OpenMP's threads do not survive a fork."""
        import torch

        check_pixels(image, self.name)
        self.load_once("_fa", self.load)
        before = torch.get_num_threads()
        torch.set_num_threads(int(self.options.get("threads", 1)))
        try:
            return self._detect(image)
        finally:
            torch.set_num_threads(before)

    def _detect(self, image: np.ndarray) -> list[Face]:
        if self._boxes is not None:
            blob, scale = self._boxes.prepare(image)
            loc, conf, pts = self._boxes.infer(blob)
            boxes, scores, kps = self._boxes.decode(loc[0], conf[0], pts[0], blob.shape[3], blob.shape[2], scale)
            if len(boxes) == 0:
                return []
            # python floats: face-alignment assigns the box scale into torch tensors
            lmks = self._fa.get_landmarks_from_image(image, detected_faces=[[float(v) for v in b] for b in boxes])
            return [Face(tuple(float(v) for v in b), float(s), k, np.asarray(lm, np.float32)[:, :2], self.name)
                    for b, s, k, lm in zip(boxes, scores, kps, lmks)]
        # face-alignment's detectors see the image shrunk to det_size, as ours do (S3FD on a 6000 px
        # photo needs tens of GB); FAN then reads the landmarks from the full image
        small, scale = shrunk(image, int(self.options["det_size"]))
        found = self._fa.face_detector.detect_from_image(small.copy())
        if len(found) == 0:
            return []
        boxes, _ = resized_back(np.array([b[:4] for b in found], np.float64), None, scale)
        boxes = [tuple(float(v) for v in b) for b in boxes]
        lmks = self._fa.get_landmarks_from_image(image, detected_faces=[list(b) for b in boxes])
        faces = []
        for b, box, lm in zip(found, boxes, lmks):
            lm = np.asarray(lm, np.float32)[:, :2]
            faces.append(Face(box, float(b[4]) if len(b) > 4 else 1.0, five_from_68(lm), lm, self.name))
        return faces
