"""Records that flow between readers and stages: one small frozen dataclass per face.

Pixels never travel in records (except for datasets whose images *are* CSV rows,
e.g. FER2013, where ``pixels`` carries the encoded PNG bytes).
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

SPLITS = ("train", "val", "test")
HELD_OUT = ("val", "test")      # the splits a model is scored on: kept apart from train, their losses counted
# A reader's drops of a listed picture it could not use (missing, unreadable, its row or label damaged):
# lost to its split as detect's and align's drops are. Its other drops are the protocol's or the user's
# choice (a class left out, no majority of votes, "not a face") and no loss to a split's count. The detect stage's
# own drops before a picture is decoded (unreadable, too_large: a file over MAX_IMAGE_BYTES) are counted alike.
READ_LOSSES = frozenset({"missing_image", "unreadable_file", "malformed_row", "bad_pixels", "bad_label",
                         "bad_votes", "heic_unsupported", "too_large"})
SOFT_LABEL = "soft_label"    # ``extra``: a label distribution (8 floats, canonical order), e.g. FERPlus votes
LABEL_MODE = "label_mode"    # ``extra``: how training uses it (crossentropy, probability, multi_target; majority: not)
TRAIN_ONLY = "train_only"   # ``extra`` flag: a training record never carved into val/test (e.g. noisy labels)
PHOTO = "photo"             # ``extra``: the photo a face shares with others (ExpW); its faces stay in one split
MOVIE = "movie"             # ``extra``: the film a frame comes from (SFEW); its frames stay in one split
LISTED_AS = "listed_as"     # ``extra``: the key a record was listed under before a name collision renamed it
GROUPS = (PHOTO, MOVIE)     # ``extra`` keys that group records without a subject, in this order
_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]+")
_KEY_LOSSY = re.compile(r"[^A-Za-z0-9_\-./ ]")


def make_key(*parts: str) -> str:
    """A WebDataset-safe sample key (no dots, no slashes) built from ``parts``.

    Separators (``/``, ``.``, spaces) become ``-`` and keys stay readable; a part with any
    other character (``ä``, ``#`` ...) also gets a short hash of its original text, so
    ``1/ä.jpg`` and ``1/ö.jpg`` stay two different keys; so does a part of separators only
    (``-``, `` ``, ``..``), which cleans to nothing: it is that hash alone. Empty parts are skipped.
    A name is read in its composed form (NFC): ``café`` written decomposed (``e`` + U+0301, as macOS
    writes names and its zip archives keep them) is the same key, so a copy of a dataset made on a Mac
    gets the keys, and so the splits, of the same dataset unpacked elsewhere.
    """
    out = []
    for p in parts:
        if not p:
            continue
        p = unicodedata.normalize("NFC", p)
        clean = _KEY_BAD.sub("-", p).strip("-")
        if _KEY_LOSSY.search(p) or not clean:
            clean = f"{clean}-{hashlib.sha1(p.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}".lstrip("-")
        out.append(clean)
    return "_".join(out)


@dataclass(frozen=True)
class FaceRecord:
    """One labelled face as a dataset describes it, before any detection.

    ``box`` is (x0, y0, x1, y1) in source-image pixels; ``landmarks`` is (K, 2)
    with K in {5, 68} in source-image pixels (68 in iBUG order, 5 in ArcFace order).
    ``split`` is "" when the dataset has no official split (the shard stage assigns one);
    ``extra[TRAIN_ONLY]`` keeps a training record out of the val/test splits carved from train;
    ``extra[PHOTO]`` names the photo of a face that shares it with others, so that the faces of one
    photo (one scene, often one person twice) are never split between train and test.
    ``extra[MOVIE]`` names the film of a movie frame, so that frames of one film (its actors, its
    scenes) are never split either.
    """

    dataset: str
    key: str
    path: str
    label: int
    native_label: str
    split: str = ""
    subject: str = ""
    box: tuple[float, float, float, float] | None = None
    landmarks: np.ndarray | None = field(default=None, compare=False, repr=False)
    pixels: bytes | None = field(default=None, compare=False, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError(f"record of {self.dataset!r} at {self.path!r} has an empty key; build keys with "
                             "ferdata.records.make_key from parts that name the image")
        if "." in self.key or "/" in self.key:
            raise ValueError(f"record key {self.key!r} must not contain '.' or '/'")
        if self.split not in ("",) + SPLITS:
            raise ValueError(f"record split {self.split!r} not in {SPLITS}")

    def dropped(self, reason: str, detail: str) -> Dropped:
        """The record's drop for ``reason`` (its split with it)."""
        return Dropped(self.dataset, self.key, reason, detail, self.split)

    @property
    def where(self) -> str:
        """The record's file, or its key where it has none (inline pixels: FER2013's CSV rows), for messages."""
        return self.path or self.key

    def annotated_box(self) -> tuple[float, float, float, float] | None:
        """Where the dataset says the face is: its box, else its landmarks' bounds grown by half
        their larger side each way (5 points span eyes to mouth only: a turned face's detector box
        is centred outside them), else None."""
        if self.box is not None:
            return self.box
        if self.landmarks is None:
            return None
        (x0, y0), (x1, y1) = np.min(self.landmarks, 0), np.max(self.landmarks, 0)
        pad = 0.5 * max(x1 - x0, y1 - y0)
        return float(x0 - pad), float(y0 - pad), float(x1 + pad), float(y1 + pad)


@dataclass(frozen=True, slots=True)      # slots: the stages hold every drop until the end (~0.1 kB each less)
class Dropped:
    """A sample that was not kept, and why. Counted by ``reason`` in stage reports. ``split`` is the
    record's official split where it is known ("" where the dataset has none, or where the reader
    could not tell it: a row without its Usage): an official val or test split's losses are counted."""

    dataset: str
    key: str
    reason: str
    detail: str = ""
    split: str = ""


def scaled_points(points: np.ndarray | None, factor: float | np.ndarray) -> np.ndarray | None:
    """Pixel coordinates in the image rescaled by ``factor`` (or by (x, y) factors), pixel centre to pixel centre:
    ``(p + 0.5) * factor - 0.5``, as libjpeg's reduced decode and a resize map them
    (:func:`ferdata.geometry.reduced_frame`)."""
    if points is None:
        return None
    return ((np.asarray(points, np.float64) + 0.5) * factor - 0.5).astype(np.float32)


def scale_record(r: FaceRecord, factor: float) -> FaceRecord:
    """The record with its box and landmarks expressed in an image rescaled by ``factor``
    (landmarks by :func:`scaled_points`; box edges scale by ``factor``)."""
    if factor == 1.0 or (r.box is None and r.landmarks is None):
        return r
    from dataclasses import replace

    return replace(r, box=None if r.box is None else tuple(float(v) * factor for v in r.box),
                   landmarks=scaled_points(r.landmarks, factor))


def record_to_dict(r: FaceRecord) -> dict[str, Any]:
    """JSON-safe dict of a record (pixels as base64), the form stored in stage tables."""
    import base64

    return {
        "dataset": r.dataset, "key": r.key, "path": r.path, "label": r.label,
        "native_label": r.native_label, "split": r.split, "subject": r.subject,
        "box": list(r.box) if r.box else None,
        "landmarks": np.asarray(r.landmarks).round(3).tolist() if r.landmarks is not None else None,
        "pixels": base64.b64encode(r.pixels).decode("ascii") if r.pixels is not None else None,
        "extra": dict(r.extra),
    }


def record_from_dict(d: Mapping[str, Any]) -> FaceRecord:
    import base64

    return FaceRecord(
        dataset=d["dataset"], key=d["key"], path=d["path"], label=int(d["label"]),
        native_label=d["native_label"], split=d["split"], subject=d.get("subject", ""),
        box=tuple(d["box"]) if d.get("box") else None,
        landmarks=np.asarray(d["landmarks"], np.float32) if d.get("landmarks") is not None else None,
        pixels=base64.b64decode(d["pixels"]) if d.get("pixels") else None,
        extra=d.get("extra") or {},
    )


# OS errors that are the machine's state, not the image's: out of descriptors or memory, a network
# mount gone. Dropped as ``unreadable_file`` they cost good images silently (a complete-looking output).
NOT_THE_FILES = frozenset(getattr(errno, n) for n in ("EMFILE", "ENFILE", "ENOMEM", "ENOBUFS", "ENOTCONN", "ESTALE",
                                                      "EINTR") if hasattr(errno, n))


def unreadable_drop(r: FaceRecord, err: OSError, stage: str) -> Dropped:
    """The ``unreadable_file`` drop of ``r`` for ``err``; ``err`` itself, with a note, when it is no
    fault of the file (:data:`NOT_THE_FILES`): the run stops and nothing is dropped."""
    if err.errno in NOT_THE_FILES:
        err.add_note(f"{stage}: the machine's error, not the image's: no image was dropped for it; fix it "
                     "(e.g. `ulimit -n`, free memory, the dataset's mount) and run again")
        raise err
    return r.dropped("unreadable_file", f"{r.where}: {err.strerror}")


# No picture the decoders here read is larger (ferdata.io refuses over 178 MP, and a non-JPEG over 40 MP: a 16-bit
# RGBA TIFF of 40 MP is 320 MB); a file over it is a video, archive or disk image under an image's name, and was read
# whole, then held about four times over on its way to a worker (two 600 MB ones: 5 GB; audit h141)
MAX_IMAGE_BYTES = 1 << 30


class TooLarge(OSError):
    """A file over :data:`MAX_IMAGE_BYTES` under an image's name, not read (the detect stage's ``too_large``)."""


def load_image_bytes(r: FaceRecord) -> bytes:
    """The record's encoded image: inline pixels or the file's bytes. A pipe, socket or device under an
    image's name (a reader that lists files by name, CK+'s frames, AffectNet's npy layout) is an
    ``OSError`` (a recorded drop), not read: a pipe waited for ever for a writer, a link to
    ``/dev/zero`` read until memory ran out. A file over :data:`MAX_IMAGE_BYTES` is :class:`TooLarge`, not read."""
    if r.pixels is not None:
        return r.pixels
    with open_regular(r.path) as f:
        if (size := os.fstat(f.fileno()).st_size) > MAX_IMAGE_BYTES:
            raise TooLarge(errno.EFBIG, f"a file of {size:,} bytes, over the {MAX_IMAGE_BYTES >> 20:,} MiB no picture "
                           "read here takes: a video, archive or disk image under an image's name? not read")
        return f.read()


class NotRegularFile(OSError):
    """A pipe, socket or device where a file was to be read."""


def open_regular(path: str | os.PathLike, mode: str = "rb", **kwargs: Any):
    """``open(path, mode, **kwargs)`` of a regular file; a pipe, socket or device there is a
    :class:`NotRegularFile` (EINVAL), not a wait (a pipe nobody writes to is opened without waiting, then refused)."""
    f = open(path, mode, opener=_without_waiting, **kwargs)
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise NotRegularFile(errno.EINVAL, "not a regular file (a pipe, socket or device)", str(path))
    if hasattr(os, "O_NONBLOCK"):          # a regular file: read as any other (a FUSE or network mount may
        os.set_blocking(f.fileno(), True)  # honour O_NONBLOCK and answer EAGAIN, a short read)
    return f


def _without_waiting(path: str, flags: int) -> int:
    """``open``'s descriptor, opened without waiting (a pipe nobody writes to opens at once)."""
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))
