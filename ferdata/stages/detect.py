"""Detect stage: records -> one face per record (box, 5 keypoints, 68 landmarks) in a table.

Outputs in ``out_dir``: ``faces.jsonl.gz`` (one row per kept record, reader order),
``dropped.jsonl`` (every drop with its reason) and ``report.json`` (counts).
Detections are cached by image content hash + backend signature, so a repeated run
detects nothing and a grown dataset detects only its new images.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ferdata.cache import Detection, DetectionCache, face_to_dict
from ferdata.faces.base import FaceBackend, create_backend, select_face
from ferdata.io import BadImage, atomic_open, decode_rgb
from ferdata.parallel import parallel_map
from ferdata.progress import progress
from ferdata.records import Dropped, FaceRecord, load_image_bytes, record_to_dict
from ferdata.report import StageReport

log = logging.getLogger(__name__)
FACES = "faces.jsonl.gz"


@dataclass(frozen=True)
class DetectParams:
    backend: str
    select: str
    det_size: int
    score_threshold: float
    model_dir: str | None
    cache_dir: str
    workers: int

    def create_backend(self) -> FaceBackend:
        return create_backend(self.backend, {"det_size": self.det_size, "score_threshold": self.score_threshold},
                              self.model_dir)


@dataclass(frozen=True)
class _Job:
    record: FaceRecord
    sha: str
    data: bytes | None                 # None when ``cached`` is set
    cached: Detection | None


class DetectWorker:
    """Picklable callable for worker processes: decode + detect one image (or pass through)."""

    def __init__(self, params: DetectParams) -> None:
        self.params = params
        self._backend: FaceBackend | None = None

    def __call__(self, job: _Job | Dropped) -> tuple[_Job | Dropped, Detection | None, str]:
        if isinstance(job, Dropped) or job.cached is not None:
            return job, getattr(job, "cached", None), ""
        if self._backend is None:
            self._backend = self.params.create_backend()
        try:
            image = decode_rgb(job.data)
        except BadImage as e:
            return job, None, e.reason
        faces = self._backend.detect(image, job.record)
        return job, Detection(image.shape[:2], tuple(faces)), ""


def _jobs(items: Iterable[FaceRecord | Dropped], cache: DetectionCache | None, sig: str) -> Iterator[_Job | Dropped]:
    for item in items:
        if isinstance(item, Dropped):
            yield item
            continue
        try:
            data = load_image_bytes(item)
        except OSError as e:
            yield Dropped(item.dataset, item.key, "unreadable_file", f"{item.path}: {e.strerror}")
            continue
        sha = hashlib.sha256(data).hexdigest()
        hit = cache.get(sha, sig) if cache else None
        yield _Job(item, sha, None if hit else data, hit)


def run_detect(items: Iterable[FaceRecord | Dropped], params: DetectParams, out_dir: str | Path) -> StageReport:
    """Detect faces for every record and write the stage outputs into ``out_dir``."""
    out = Path(out_dir)
    report = StageReport("detect")
    backend = params.create_backend()
    sig = backend.signature()
    cache = DetectionCache(params.cache_dir) if backend.cacheable else None
    detected = 0
    drops: list[Dropped] = []
    results = parallel_map(DetectWorker(params), _jobs(items, cache, sig), params.workers)
    with atomic_open(out / FACES) as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        for job, det, reason in progress(results, desc="detect", unit="img"):
            if isinstance(job, Dropped):
                drops.append(job)
                continue
            rec = job.record
            if det is None:
                drops.append(Dropped(rec.dataset, rec.key, reason, rec.path))
                continue
            if job.cached is None:
                detected += 1
                if cache:
                    cache.put(job.sha, sig, det)
            if not det.faces:
                drops.append(Dropped(rec.dataset, rec.key, "no_face", rec.path))
                continue
            face = select_face(list(det.faces), det.shape, params.select)
            row = {"record": record_to_dict(rec), "face": face_to_dict(face), "backend": backend.name,
                   "num_faces": len(det.faces), "sha256": job.sha, "image_shape": list(det.shape)}
            gz.write((json.dumps(row, sort_keys=True, separators=(",", ":")) + "\n").encode())
            report.kept += 1
    if cache:
        cache.close()
    write_drops(out, report, drops)
    report.notes.update({"detections_run": detected, "backend": sig})
    report.write(out / "report.json")
    log.info("detect: kept %d, dropped %s, ran %d detections", report.kept, dict(report.dropped), detected)
    return report


def write_drops(out: Path, report: StageReport, drops: list[Dropped]) -> None:
    """Count drops in the report and list every one of them in ``dropped.jsonl``."""
    for d in drops:
        report.drop(d)
    with atomic_open(out / "dropped.jsonl") as f:
        f.write("".join(json.dumps(asdict(d), sort_keys=True) + "\n" for d in drops).encode())


def read_faces(path: str | Path) -> Iterator[dict]:
    """Rows of a detect table."""
    with gzip.open(Path(path) / FACES, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)
