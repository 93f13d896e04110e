"""A checkpoint and the steps that made its training faces: a picture in, per-face model input and
expression probabilities out (:class:`Predictor`).

Each face goes through the same steps as the training data: the face backend (detect), the
align stage's reduced decode + ``align_face`` + JPEG encoding at the recorded quality, the
derive stage's worker (halves via ``split_halves``, landmark heatmap), then the loader's
decoder and normalisation - so the model sees exactly the kind of sample it was trained on.
The align and derive settings come from the checkpoint (``preprocess``, recorded by the train
stage), and so, unless asked for another, does the face backend: the detector that made the
training crops (``data.face_backends``), when it can run here, with the options it ran with
(``data.face_backend_options``; :func:`choose_backend`).

A face much larger than the crop is warped, as in the align stage, from the picture decoded at
1/2, 1/4 or 1/8 (``crop_reduction``; libjpeg's reduced decode for a JPEG file, block means of
the decoded pixels for other formats, :func:`ferdata.io.block_mean`), not from the full-size
pixels, which one bilinear warp would shrink 4-10x with aliasing. An image file's crops equal
the align stage's byte for byte; a video frame has no file bytes, so its reduced copy is the
block mean, as for a PNG.

A model whose training faces were all grey (R = G = B: FER2013, JAFFE; the checkpoint's
``data.grey_faces``) sees a colour face it never saw: each face is warped from the picture in grey
(:func:`ferdata.io.decode_grey`: BT.601 luma replicated to R = G = B, as the align stage decodes a grey
picture), so its crop is the one the align stage makes of that grey picture; ``grey`` chooses otherwise.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ferdata.cache import face_to_dict
from ferdata.faces import create_backend
from ferdata.faces.auto import AutoBackend, first_ready
from ferdata.faces.base import BACKENDS, Face, FaceBackend, MissingModelError, rgb_pixels
from ferdata.faces.dataset import AnnotationsBackend
from ferdata.geometry import Aligned, five_from_68
from ferdata.imagefile import read_header
from ferdata.io import (BadImage, Decoded, block_mean, decode_grey, decode_image, encode_jpeg, grey_copy,
                        libjpeg_scales)
from ferdata.layout import GREY
from ferdata.records import FaceRecord, make_key
from ferdata.crop import WHOLE_IMAGE_BACKENDS, BadGeometry, check_landmarks, crop_face
from ferdata.errors import shown
from ferdata.tario import npy_bytes
from ferdata.stages.derive import DeriveParams, DeriveWorker
from fermodels.augment import hflip_batch
from fermodels.data import SampleDecoder, travel_side
from fermodels.distributed import env_from_os, pick_device
from fermodels.modelinput import normalise, to_device
from fermodels.runstate import load_checkpoint, recorded_preprocess
from fermodels.scoring import full_float32, scoring_model

log = logging.getLogger(__name__)


DERIVED = frozenset({"left", "right", "heatmap"})     # the card fields made by the derive stage (DeriveWorker)
KEYPOINTS = ("detector", "landmarks")               # what aligns a new face (Predictor's keypoints, --keypoints)


class DetectorFailed(RuntimeError):
    """The face backend raised on one picture: the detect stage records it as ``detector_failed`` and goes on."""


@dataclass(frozen=True)
class FaceSample:
    """One face ready for the model: where it came from and its shard-format fields (the derive stage's only
    for a model that reads them: :data:`DERIVED`)."""

    source: str
    frame: int
    index: int
    box: tuple[float, float, float, float]        # x0, y0, x1, y1 in the file's pixels
    score: float
    fields: dict
    time: float | None = None                      # a video frame's timestamp in seconds (Picture.time)


class Picture:
    """One image or video frame: the RGB pixels detection runs on (``scale``: their size relative
    to the file's, below 1 only for a huge JPEG) and, made once per reduction on first use, the
    copies the align stage would warp a face from (:meth:`reduced`). ``time``: a video frame's presentation
    time in seconds (its timestamp, not index / fps: a phone's video has a variable frame rate), else None."""

    def __init__(self, rgb: np.ndarray, data: bytes | None = None, scale: float = 1.0) -> None:
        rgb = np.asarray(rgb)
        if not rgb_pixels(rgb):     # what the face backends read (their own check_pixels says it for them)
            raise ValueError(f"a picture is RGB uint8 (H, W, 3) pixels, got {rgb.dtype} {rgb.shape}: read files with "
                             "Picture.from_file (any format, EXIF turn, alpha, 16-bit), or convert the array first")
        self.rgb, self.data, self.scale = rgb, data, scale
        self.time: float | None = None
        self._reduced: dict[int, Decoded] = {} if data is not None else {1: Decoded(rgb, 1.0, ())}
        self._grey: dict[int, Decoded] = {}

    @classmethod
    def from_file(cls, data: bytes) -> "Picture":
        """A still image from its file's bytes, decoded as the detect stage decodes it."""
        if isinstance(data, memoryview):
            data = data.tobytes()
        if not isinstance(data, (bytes, bytearray)):
            hint = " (a path: Picture.from_file(Path(p).read_bytes()))" if isinstance(data, (str, Path)) else ""
            raise TypeError(f"Picture.from_file takes the file's bytes, got {type(data).__name__}{hint}")
        decoded = decode_image(data)
        picture = cls(decoded.rgb, data, decoded.scale)
        picture._reduced[1] = decoded                  # decode_image(data, 1) is this very decode
        return picture

    def detected(self, grey: bool = False) -> np.ndarray:
        """The pixels detection runs on (``rgb``); ``grey``: those in grey (:func:`grey_copy`), as the
        detect stage saw a grey dataset's pictures (landmarks found on the colours move the crop)."""
        if not grey:
            return self.rgb
        if (whole := self._reduced.get(1)) is not None and whole.rgb is self.rgb:    # the grey copy a crop at 1 warps
            return self.reduced(1, grey=True).rgb                                  # from: made once, not twice
        return grey_copy(Decoded(self.rgb, self.scale, ())).rgb

    def reduced(self, reduce: int, grey: bool = False) -> Decoded:
        """The picture as the align stage decodes it for a face at ``reduce`` (1, 2, 4, 8): a
        file's bytes through ``decode_image(data, reduce)``, a frame's pixels through
        :func:`block_mean` (its nearest equivalent: frames have no bytes to decode reduced);
        ``grey``: that in grey (:func:`grey_copy`)."""
        if grey:
            if reduce not in self._grey:
                self._grey[reduce] = self._grey_at(reduce)
            return self._grey[reduce]
        if reduce not in self._reduced:
            whole = self._reduced.get(1)
            if self.data is None:
                self._reduced[reduce] = Decoded(block_mean(self.rgb, reduce), 1.0 / reduce, ())
            elif whole is not None and whole.scale == 1.0 and not libjpeg_scales(read_header(self.data)):
                # decode_image(data, reduce) of a PNG, TIFF, WebP ... decodes it whole again and takes these very
                # block means (only a JPEG decodes reduced): the same pixels from the decode made already
                self._reduced[reduce] = Decoded(block_mean(whole.rgb, reduce), 1.0 / reduce, whole.conversions,
                                                whole.damage)
            else:
                self._reduced[reduce] = decode_image(self.data, reduce)
        return self._reduced[reduce]

    def _grey_at(self, reduce: int) -> Decoded:
        """The picture turned grey as the align stage decodes that grey picture at ``reduce``: a file's
        by :func:`decode_grey` (as the align stage reads a ``detect.grey`` dataset's), a frame shrunk by
        block means after it is turned grey, as the grey picture's pixels would be."""
        if self.data is not None:
            return decode_grey(self.data, reduce, self.reduced)
        decoded = self.reduced(reduce)
        if reduce == 1:
            return grey_copy(decoded)
        whole = self.reduced(1, grey=True)
        return Decoded(block_mean(whole.rgb, reduce), decoded.scale, decoded.conversions, decoded.damage)


def choose_backend(asked: str | None, trained: Mapping[str, int], options: Mapping[str, Any] | None = None,
                   model_dir: str | Path | None = None,
                   trained_options: Mapping[str, Mapping[str, Any]] | None = None,
                   allow_download: bool = False) -> FaceBackend:
    """The face backend for inference: ``asked`` when given; else the detector that made most of
    the model's training crops (``trained``: backend -> samples, from the checkpoint) that runs
    here, so new faces are found and landmarked as the training faces were; else ``auto`` (with a
    warning when the training detectors are missing here: crops and landmarks then differ from
    training's). A model trained on the dataset's own crops or landmarks (``precropped``,
    ``annotations``: they find no faces in a new photo) gets ``auto``. ``options`` (e.g. the
    insightface ``pack``) go to the backend, each backend keeping those it reads, over the options
    each backend ran with for the training data (``trained_options``, from the checkpoint: its
    det_size, score_threshold, pack ...); an option no backend that may be chosen reads is
    refused (a typo), one the chosen backend does not read is named in a warning.
    ``allow_download``: a detector whose package is installed but whose weights are missing here
    (insightface, face_alignment) fetches them on first use instead of being passed over."""
    trained_options = trained_options or {}
    if asked and issubclass(BACKENDS.get(asked), AnnotationsBackend):
        raise ValueError(f"--backend {asked} places a face by a dataset's own landmarks, which a new image does not "
                         "have (no face would ever be found): leave --backend out, or give one that finds faces "
                         f"({', '.join(n for n in BACKENDS.names() if BACKENDS.get(n).finds_faces)}), or "
                         "precropped for inputs that already are face crops")
    if asked:
        reads = BACKENDS.get(asked).option_names()
        recorded = {k: v for k, v in trained_options.get(asked, {}).items() if k in reads}
        return create_backend(asked, {**recorded, **(options or {})}, model_dir, allow_download)
    ranked = sorted(trained, key=lambda name: (-trained[name], name))
    detectors = [n for n in ranked if n in BACKENDS and BACKENDS.get(n).finds_faces]
    check_candidate_options(detectors + ["auto"], options or {})
    backend, why = first_ready(detectors, options, model_dir, trained_options, allow_download)
    missing = [w.splitlines()[0] for w in why]
    if backend is not None:
        if missing:
            log.warning("the model's training faces came mostly from %s, which cannot run here; using %s, "
                        "which found some of them", "; ".join(missing), backend.name)
        log.info("face backend %s, as for the model's training faces (its options: %s)", backend.name,
                 backend.options)
    else:
        if missing:
            log.warning("the model's training faces were found by %s, which cannot run here; using auto, whose "
                        "crops may differ (give --model-dir, or --backend to choose)", "; ".join(missing))
        elif whole := dataset_crops(trained):
            # the dataset's own crops: framed as its publisher cut them, not by the 5-point template auto warps new
            # faces to (FERPlus's face-box crops grown 20%: the eyes 7-13 px of 112 higher, 44 grey levels apart on
            # average; RAF-DB's aligned 100 px pictures by its own eyes-and-mouth template: not measured here)
            log.warning("the model's training faces are the dataset's own crops (%s), framed as the dataset cut "
                        "them; the faces of new pictures are found by auto and aligned to the ArcFace template, "
                        "framed otherwise, so the model scores faces unlike its training faces: give inputs "
                        "cropped as the training images were with --backend precropped", ", ".join(whole))
        elif ranked:
            log.info("the model's training faces came from %s, which find no faces in new pictures; using auto",
                     ", ".join(ranked))
        backend = create_backend("auto", options, model_dir, allow_download)
    warn_unread_options(backend, options or {})
    return backend


def training_keypoints(trained: Mapping[str, int] | None) -> str:
    """Which 5 points align a new face for a model whose training faces came from ``trained`` (backend ->
    samples): ``landmarks`` when a dataset's own landmarks (``annotations``) placed most of the faces placed by
    points: the eye centres, nose tip and mouth corners of its 68 points (:func:`~ferdata.geometry.five_from_68`),
    or its own 5 (RAF-DB's, drawn by hand at the eye centres, nose tip and mouth corners; the 68's five sit within
    about 1 px of 112 of the pupils), so a new face is aligned by the same five points of its 68 landmarks; else
    ``detector``, the face backend's own 5 keypoints (RetinaFace's sit 3.6 px of 112 from the 68's five on average,
    6.9 px at p90). A few faces a detector placed (records without landmarks, read by ``auto``: one of RAF-DB's
    12,271 turned a whole model to the detector's keypoints) do not decide. A dataset's own crops (``precropped``,
    FERPlus's or RAF-DB's aligned pictures) were framed by no points at all: a pooled model of AffectNet by its
    landmarks and FERPlus aligns new faces by their 68 landmarks' five points, as its landmark-placed faces were."""
    placed = {name: n for name, n in (trained or {}).items() if name not in WHOLE_IMAGE_BACKENDS}
    return "landmarks" if 2 * placed.get("annotations", 0) > sum(placed.values()) else "detector"


def dataset_crops(trained: Mapping[str, int] | None) -> list[str]:
    """The whole-image backends (``precropped``: FERPlus's, RAF-DB's own crops, resized whole) that made
    most of a model's training faces (``trained``: samples per face backend), most first; [] when they
    made half or fewer. Such faces are framed as the dataset cut them, not by the template new faces are
    warped to."""
    counts = trained or {}
    whole = sorted((n for n in counts if n in WHOLE_IMAGE_BACKENDS), key=lambda n: (-counts[n], n))
    return whole if 2 * sum(counts[n] for n in whole) > sum(counts.values()) else []


def check_candidate_options(candidates: list[str], options: Mapping[str, Any]) -> None:
    """Refuse options that none of the backends choose_backend may pick reads (a typo would
    otherwise be ignored), worded as a backend's own refusal (``FaceBackend.check_options``), and a
    value a candidate that reads it refuses (``det_size=100.5``: passed over as "cannot run here",
    the fallback then ended with "model file 'any face model' not found")."""
    reads = frozenset().union(*(BACKENDS.get(n).option_names() for n in candidates))
    unknown = sorted(set(options) - reads)
    if unknown:
        raise ValueError(f"face backends {', '.join(map(repr, candidates))} take no option "
                         f"{', '.join(map(repr, unknown))}; their options: {', '.join(sorted(reads))} "
                         f"(or choose one with --backend)")
    for name in candidates:                 # a value one refuses is the user's to mend, not a reason to fall back
        cls = BACKENDS.get(name)
        cls.check_values({k: v for k, v in options.items() if k in cls.option_names()})


def warn_unread_options(backend: FaceBackend, options: Mapping[str, Any]) -> None:
    """Name the options the chosen backend (``auto``: the model backend it delegates to) ignores."""
    used = backend.delegate if isinstance(backend, AutoBackend) else backend
    unread = sorted(set(options) - type(used).option_names())
    if unread:
        log.warning("face backend %s does not read option %s (ignored); its options: %s", used.name,
                    ", ".join(map(repr, unread)), ", ".join(sorted(type(used).option_names())))


class Predictor:
    """A checkpoint plus the detect -> align -> derive steps that built its training shards."""

    def __init__(self, checkpoint: str | Path, backend: str | None = None, device: str = "auto",
                 model_dir: str | Path | None = None, backend_options: Mapping[str, Any] | None = None,
                 flip_tta: bool = False, allow_download: bool = False, grey: bool | None = None,
                 keypoints: str | None = None) -> None:
        """``grey``: score each face in grey (True) or in the picture's colours (False); None: in grey for a
        model whose training faces were all grey (its checkpoint's ``data.grey_faces``), else in colour.
        ``keypoints``: align each face by the backend's 5 keypoints (``detector``) or by the five points of its
        68 landmarks (``landmarks``); None: as the training faces were aligned (:func:`training_keypoints`)."""
        state = load_checkpoint(checkpoint)
        pre = recorded_preprocess(state, checkpoint)
        self.device = pick_device(device, env_from_os())
        self.model = scoring_model(state, self.device)
        self.card, self.classes, self.flip_tta = self.model.card, tuple(state["classes"]), flip_tta
        self.align = pre["align"]
        d = pre["derive"]
        self.derive = DeriveWorker(DeriveParams(d["heatmap_size"], d["heatmap_sigma"], d["jpeg_quality"], 1, 1))
        # the derive stage's fields the model reads: halves, heatmap (an image-only model, most of them, reads none;
        # regions.json no model reads): derived only for a model that reads them (its inputs are the same)
        self.derived = bool(DERIVED & set(self.card.fields))
        self.decoder = SampleDecoder(self.card.fields, self.card.input_size,
                                     wire=travel_side(self.card.input_size, self.align["size"], self.device))
        data = state.get("data") or {}
        trained_grey = data.get(GREY) is True
        self.grey = trained_grey if grey is None else bool(grey)
        if self.grey and trained_grey:
            log.info("the model was trained on grey faces only (R = G = B): faces are scored in grey, their colour "
                     "turned to grey as the training pictures were (--colour keeps it)")
        elif self.grey:
            log.info("faces are scored in grey (R = G = B), as asked; the checkpoint does not record that its training "
                     "faces were all grey (colour ones, or a checkpoint trained before grey_faces was recorded)")
        elif trained_grey:
            log.warning("the model was trained on grey faces only (R = G = B): scoring faces in colour, as asked, "
                        "which the model never saw (leave --colour out to score them in grey)")
        self.keypoints = keypoints or training_keypoints(data.get("face_backends", {}))
        self._no_landmarks_told = False
        if self.keypoints not in KEYPOINTS:                           # before the face models load (seconds)
            raise ValueError(f"keypoints must be {' or '.join(KEYPOINTS)}, got {self.keypoints!r}")
        # One process: the face model may take the threads torch has here (a detect worker runs on one)
        options = {"threads": torch.get_num_threads(), **(backend_options or {})}
        self.backend = choose_backend(backend, data.get("face_backends", {}), options, model_dir,
                                      data.get("face_backend_options", {}), allow_download=allow_download)
        if self.keypoints == "landmarks" and keypoints:
            log.info("new faces are aligned by the eye centres, nose tip and mouth corners of their 68 landmarks, as "
                     "asked, not by the detector's keypoints")
        elif self.keypoints == "landmarks":
            log.info("the model's training faces were aligned by their dataset's landmarks: new faces are aligned by "
                     "the eye centres, nose tip and mouth corners of their 68 landmarks, not the detector's keypoints")
        if self.backend.name in WHOLE_IMAGE_BACKENDS and (needs := {"lmk", "heatmap"} & set(self.card.fields)):
            raise ValueError(f"model {self.card.name!r} reads {' and '.join(sorted(needs))} from 68 landmarks, which "
                             f"--backend {self.backend.name} cannot give a new image (every face would be skipped): "
                             "leave --backend out, or give one that finds faces and their landmarks")

    def faces(self, picture: Picture | np.ndarray, source: str, frame: int = 0) -> tuple[list[FaceSample], int]:
        """Every usable face of a picture (an RGB array is taken as a video frame) as a sample,
        and how many were dropped (bad geometry, no landmarks the model needs)."""
        if isinstance(picture, np.ndarray):
            picture = Picture(picture)
        elif not isinstance(picture, Picture):
            raise TypeError(f"a picture is a Picture (Picture.from_file(its file's bytes)) or an RGB uint8 (H, W, 3) "
                            f"array, got {type(picture).__module__}.{type(picture).__name__} (a PIL image: "
                            "np.asarray(image.convert('RGB')))")
        record = FaceRecord(dataset="predict", key=make_key("predict", str(frame)), path=source, label=0,
                            native_label="")
        samples, dropped = [], 0
        detected = picture.detected(self.grey)                 # a failure here is no backend's
        try:
            found = self.backend.detect(detected, record)
        except (MissingModelError, ImportError, MemoryError):       # no picture's fault: as the detect stage
            raise
        except Exception as e:  # noqa: BLE001 - one odd picture, named by the caller (run_predict goes on)
            raise DetectorFailed(f"{type(e).__name__}: {e}") from e
        for i, face in enumerate(found):
            if self.keypoints == "landmarks" and face.lmk68 is None and not self._no_landmarks_told:
                self._no_landmarks_told = True
                log.warning("backend %s gives no 68 landmarks: faces are aligned by its 5 keypoints, not by the "
                            "landmarks' five points that aligned the model's training faces (a few pixels "
                            "elsewhere; a backend with 68 landmarks, e.g. embedded, aligns them alike)",
                            self.backend.name)
            try:
                if self.keypoints == "landmarks" and face.lmk68 is not None:     # the training faces' five points
                    # checked against the detector's keypoints first: once replaced, the 68 match them by definition
                    check_landmarks(np.asarray(face.lmk68, np.float64), np.asarray(face.kps5, np.float64))
                    face = replace(face, kps5=five_from_68(face.lmk68))
                row, al = self.aligned(picture, face)
            except (BadGeometry, BadImage) as e:
                log.warning("%s frame %d face %d skipped: %s", shown(source), frame, i, e)
                dropped += 1
                continue
            fields = {"jpg": encode_jpeg(al.image, self.align["jpeg_quality"]), "cls": b"0"}
            if al.lmk68 is not None:
                fields["lmk.npy"] = npy_bytes(al.lmk68)
            elif {"lmk", "heatmap"} & set(self.card.fields):
                log.warning("%s frame %d face %d skipped: backend %s gives no 68 landmarks, model %s needs them",
                            shown(source), frame, i, self.backend.name, self.card.name)
                dropped += 1
                continue
            if self.derived:
                fields.update(self.derive((f"face{i}", fields))[1])
            samples.append(FaceSample(source, frame, i, tuple(row["box"]), float(row["score"]), fields, picture.time))
        return samples, dropped

    def aligned(self, picture: Picture, face: Face) -> tuple[dict, Aligned]:
        """(the detect table's row for ``face``, in file pixels as the detect stage stores it, and
        its crop, by the align stage's :func:`crop_face`). Raises :class:`BadGeometry` (or
        :class:`BadImage`) as the align stage would drop the face."""
        row = face_to_dict(face.scaled(1.0 / picture.scale))
        al, _ = crop_face(row, row["backend"] or self.backend.name, self.align["size"], self.align["padding"],
                          lambda reduce: picture.reduced(reduce, self.grey))
        return row, al

    @torch.no_grad()
    def probabilities(self, faces: list[FaceSample]) -> np.ndarray:
        """(len(faces), num_classes) class probabilities, computed as the evaluator scores: in full
        float32, and one face at a time for a model whose card says its faces are not scored on their
        own (``per_sample`` false)."""
        if not faces:
            return np.zeros((0, len(self.classes)), np.float32)
        step = self.card.scoring_batch(len(faces))
        if step < len(faces):
            return np.concatenate([self.probabilities(faces[i:i + step]) for i in range(0, len(faces), step)])
        batch = self.decoder.collate([{"__key__": f"face{i}", **f.fields} for i, f in enumerate(faces)])
        b = normalise(to_device(batch, self.device, self.card.input_size), self.card, channels_last=True)
        with full_float32():
            p = self.model(b)["logits"].float().softmax(-1)
            if self.flip_tta:
                p = (p + self.model(hflip_batch(b))["logits"].float().softmax(-1)) / 2
        return p.cpu().numpy()
