"""The detect stage's work: each record's image read and hashed, its cached detection attached
(:func:`jobs`), jobs grouped into batches that need a model or none (:func:`batches_of`), and the
picklable :class:`DetectWorker` that decodes and detects a batch in a worker process."""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Iterable, Iterator

from ferdata.cache import Detection, DetectionCache
from ferdata.errors import shown
from ferdata.faces.base import Face, FaceBackend, MissingModelError, shape_only
from ferdata.io import BadImage, decode_grey, decode_image, probe_image
from ferdata.records import Dropped, FaceRecord, TooLarge, load_image_bytes, scale_record, unreadable_drop

if TYPE_CHECKING:
    from ferdata.stages.detect import DetectParams

log = logging.getLogger(__name__)
BATCH = 8            # images per task sent to a worker
DETECTOR_FAILED = "detector_failed"       # the backend raised on this image (the error is the detail)
LOCAL_BATCH = 64     # cache hits / drops handled per step in the main process
MAX_SAME = 8 * BATCH  # a batch grows past BATCH for the records of one image (a photo's faces) up to this


@dataclass(frozen=True)
class Job:
    record: FaceRecord
    sha: str
    data: bytes | None                 # None when ``cached`` is set
    cached: Detection | None
    cacheable: bool


Item = Job | Dropped
# item, detection, drop reason, drop detail, whether the detection is another record's of the same image
Result = tuple[Item, Detection | None, str, str, bool]


def is_local(batch: list[Item]) -> bool:
    """A batch that needs no model: only drops and cache hits."""
    return all(isinstance(j, Dropped) or j.cached is not None for j in batch)


class DetectWorker:
    """Picklable callable for worker processes: decode + detect a batch of images.

    The backend (and its models) is created on first use, once per process; cache
    hits and drops pass straight through.
    """

    def __init__(self, params: DetectParams) -> None:
        self.params = params
        self._backend: FaceBackend | None = None
        self._batch_failures = 0

    def before_fork(self) -> None:
        """Create the backend and load its shareable parts once, before the workers fork."""
        if self._backend is None:
            self._backend = self.params.create_backend()
        self._backend.preload_shared()

    def __call__(self, batch: list[Item]) -> list[Result]:
        out: list[Result] = [(j, getattr(j, "cached", None), "", "", False) for j in batch]
        todo, images, scales = [], [], []
        same: dict[int, int] = {}                  # a job -> the earlier one of its image (detected once)
        first: dict[str, int] = {}
        for i, job in enumerate(batch):
            if isinstance(job, Dropped) or job.cached is not None:
                continue
            if job.cacheable and job.sha in first:
                same[i] = first[job.sha]
                continue
            if job.cacheable:
                first[job.sha] = i
            if self._backend is None:                # models themselves load on first use
                self._backend = self.params.create_backend()
            try:
                if self._backend.needs_pixels:
                    decoded = decode_grey(job.data) if self.params.grey else decode_image(job.data)
                    image, scale = decoded.rgb, decoded.scale
                else:                              # header only: align decodes (and drops bad bodies)
                    probe = probe_image(job.data)
                    image, scale = shape_only(*probe.shape), probe.scale
            except BadImage as e:
                out[i] = (job, None, e.reason, e.detail, False)
                continue
            todo.append(i)
            images.append(image)
            scales.append(scale)
        if todo:
            # Huge images decode reduced: backends work in the decoded frame (record
            # annotations scaled into it); results go back to source-image pixels.
            records = [scale_record(batch[i].record, s) for i, s in zip(todo, scales)]
            found = self._detect(images, records)
            for i, image, s, faces in zip(todo, images, scales, found):
                if isinstance(faces, Exception):
                    out[i] = (batch[i], None, DETECTOR_FAILED, f"{type(faces).__name__}: {faces}", False)
                    continue
                shape = (round(image.shape[0] / s), round(image.shape[1] / s))
                det = Detection(shape, tuple(f.scaled(1.0 / s) for f in faces)).canonical()
                det.to_json()                      # serialise here, in parallel; cached on the object
                out[i] = (batch[i], det, "", "", False)
        for i, j in same.items():
            out[i] = (batch[i], *out[j][1:4], True)
        # The picture's bytes stay here: the parent reads the record, hash and detection only (the bytes went back
        # with every result, a second copy of each image through the pipe and in the parent's memory)
        return [(_without_bytes(r[0]), *r[1:]) for r in out]

    def _detect(self, images: list, records: list) -> list[list[Face] | Exception]:
        """The backend's faces per image; an image on which it fails is its exception, so one odd
        image is a recorded drop, not the end of an hours-long run. A missing or unusable model is
        no image's fault and ends the run."""
        try:
            return self._backend.detect_batch(images, records)
        except (MissingModelError, ImportError, MemoryError):
            raise
        except Exception as e:                     # noqa: BLE001  (found again one image at a time)
            # told once per process: an odd image fails its batch now and then, but a batch path that
            # always fails would otherwise show only as a slower run
            (log.debug if self._batch_failures else log.warning)(
                "%s: a batch of %d images failed (%s: %s); detecting them one at a time (an image failing "
                "alone is recorded as a drop)", self._backend.name, len(images), type(e).__name__, e)
            self._batch_failures += 1
        found: list[list[Face] | Exception] = []
        for image, record in zip(images, records):
            try:
                found.append(self._backend.detect(image, record))
            except (MissingModelError, ImportError, MemoryError):
                raise
            except Exception as e:                 # noqa: BLE001  (counted, named in dropped.jsonl)
                found.append(e)
        return found


def _without_bytes(item: Item) -> Item:
    """``item`` without its picture's bytes (a :class:`Job` that carries them), as a result goes back."""
    return replace(item, data=None) if isinstance(item, Job) and item.data is not None else item


def jobs(items: Iterable[FaceRecord | Dropped], backend: FaceBackend, cache: DetectionCache | None,
         sig: str) -> Iterator[Item]:
    """Read and hash each image; attach its cached detection when there is one. Consecutive records of
    one image share one bytes object (pickled once in a batch)."""
    last: tuple[str, bytes] = ("", b"")
    for item in items:
        if isinstance(item, Dropped):
            yield item
            continue
        try:
            data = load_image_bytes(item)
        except TooLarge as e:                      # a file too large to be a picture: not read
            yield item.dropped("too_large", f"{item.where}: {e.strerror}")
            continue
        except OSError as e:
            yield unreadable_drop(item, e, "detect")
            continue
        sha = hashlib.sha256(data).hexdigest()
        if sha == last[0]:
            data = last[1]
        last = (sha, data)
        cacheable = cache is not None and backend.cacheable_for(item)
        hit = cache.get(sha, sig) if cacheable else None
        yield Job(item, sha, None if hit else data, hit, cacheable)


def _same_image(a: Item, b: Item) -> bool:
    """Whether ``b`` needs the detection ``a`` gets: the same image, whose faces depend on its pixels only."""
    return isinstance(a, Job) and isinstance(b, Job) and a.sha == b.sha and a.cacheable and b.cacheable


def batch_name(batch: list[Item]) -> str:
    """The images of a batch, for errors."""
    first = shown(batch[0].record.where) if isinstance(batch[0], Job) else batch[0].key
    return f"{first}" if len(batch) == 1 else f"the {len(batch)} images from {first} on"


def one_image_batches(batch: list[Item]) -> list[list[Item]]:
    """A batch as batches of one job each: the search for the image that kills a worker
    (``parallel_map``'s ``split``)."""
    return [[job] for job in batch]


def batches_of(jobs: Iterable[Item]) -> Iterator[list[Item]]:
    """Consecutive jobs grouped into batches that either all need a model or none does; a record of
    the image the one before it is of (ExpW's faces of one photo) stays in its batch, so the worker
    detects that image once (:meth:`DetectWorker.__call__`), up to ``MAX_SAME`` jobs: a list naming one
    file 100k times in a row made one batch of them all, sent to one worker whole."""
    batch: list[Item] = []
    for job in jobs:
        local = isinstance(job, Dropped) or job.cached is not None
        full = len(batch) >= (LOCAL_BATCH if local else BATCH) and (
            len(batch) >= MAX_SAME or not _same_image(batch[-1], job))
        if batch and (local != is_local(batch[-1:]) or full):
            yield batch
            batch = []
        batch.append(job)
    if batch:
        yield batch
