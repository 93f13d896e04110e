"""Detect stage: records -> one face per record (box, 5 keypoints, 68 landmarks) in a table.

A record's face is the detected one centred in the box (or landmarks) the dataset gives for it
(ExpW labels several faces of a photo; AffectNet and RAF-DB photos hold bystanders), dropped as
``no_face_in_box`` when none is; without a box, ``detect.select`` picks one (largest or central).

Outputs in ``out_dir``: ``faces.jsonl.gz`` (one row per kept record, reader order),
``dropped.jsonl`` (every drop with its reason) and ``report.json`` (counts); the folder
is built beside ``out_dir`` and swapped in whole (``ferdata.atomic.staged_dir``).
Detections are cached by image content hash + backend signature, so a repeated run
detects nothing (and starts no worker, loads no model) and a grown dataset detects
only its new images. Work goes to the backend in small batches (``detect_work.BATCH``), so
backends that batch their model (the embedded one, for small same-size images) can.
:func:`fill_cache` detects into the cache only: one machine's part of a dataset, when
several machines share the detection (``ferdata detect --part K/N``, then ``ferdata cache merge``).
"""
from __future__ import annotations

import gzip
import json
import logging
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ferdata.atomic import atomic_open, staged_dir
from ferdata.cache import Detection, DetectionCache, face_to_dict
from ferdata.datasets import DatasetSpec
from ferdata.faces import create_backend
from ferdata.faces.base import BACKENDS, SELECTIONS, FaceBackend, face_in_box, select_face, signed_options
from ferdata.geometry import five_from_68, spread
from ferdata.layout import DROPS, FACES, HELD_OUT_DROPS, REPORT, UNSPLIT, counted_by_split, folded_train
from ferdata.parallel import parallel_map
from ferdata.params import at_least, check_values, one_of, optional, section, stage_section, within
from ferdata.progress import progress
from ferdata.records import HELD_OUT, READ_LOSSES, Dropped, FaceRecord, record_to_dict
from ferdata.report import StageReport, warn_subset_losses, where_listed, write_drops
from ferdata.stages.detect_work import (DETECTOR_FAILED, DetectWorker, Item, batch_name, batches_of, is_local, jobs,
                                        one_image_batches)

log = logging.getLogger(__name__)
OWNED = (FACES, DROPS, REPORT)


@dataclass(frozen=True)
class DetectParams:
    backend: str
    select: str
    det_size: int
    score_threshold: float | None    # None: the backend's own (embedded 0.9, insightface SCRFD 0.5)
    model_dir: str | None
    cache_dir: str
    workers: int
    allow_download: bool = False   # let insightface / face_alignment fetch missing weights
    options: Mapping[str, Any] = field(default_factory=dict)   # backend-specific, e.g. {pack: antelopev2}
    grey: bool = False             # the pictures turned grey (ferdata.io.decode_grey) for detection and alignment

    def __post_init__(self) -> None:
        folder = (lambda v: isinstance(v, str) and v.strip() != "", "a folder's path (not empty)")
        check_values("detect", self, {"select": one_of(SELECTIONS), "det_size": at_least(32),
                                      "score_threshold": optional(within(0, 1)), "workers": at_least(1),
                                      "cache_dir": folder, "model_dir": optional(folder)})
        if self.options is None:                                   # `options:` left empty in YAML
            object.__setattr__(self, "options", {})
        if not isinstance(self.options, Mapping):
            raise ValueError(f"detect.options must be a mapping (e.g. {{pack: antelopev2}}), got {self.options!r}")
        twice = sorted({"det_size", "score_threshold"} & set(self.options))
        if twice:
            raise ValueError(f"detect.options sets {', '.join(twice)}: set detect.{twice[0]} instead")

    def backend_options(self) -> dict[str, Any]:
        """What the backend is built with: det_size and score_threshold (unless null) where it
        reads them (``annotations`` does not), and ``options``, which it must read every one of."""
        reads = BACKENDS.get(self.backend).option_names()
        given = {"det_size": self.det_size, "score_threshold": self.score_threshold}
        return {**{k: v for k, v in given.items() if v is not None and k in reads}, **self.options}

    def settings(self) -> dict:
        """The backend and what it is built with, less the options that shape no face (``threads``;
        face_alignment's sfd/dlib ``score_threshold``: :meth:`FaceBackend.unsigned`, out of the cache key
        too): the shards record it, inference finds faces so, and a setting that finds the same faces
        must not give them other shards (and a new training)."""
        settings = {"backend": self.backend, "options": signed_options(self.backend, self.backend_options())}
        return {**settings, "grey": True} if self.grey else settings      # only then: colour datasets' as before

    def signature(self, backend: FaceBackend) -> str:
        """The detection cache's key for ``backend`` run on these pictures: a grey picture's faces are its own."""
        return backend.signature() + (";grey" if self.grey else "")

    def create_backend(self) -> FaceBackend:
        return create_backend(self.backend, self.backend_options(), self.model_dir, self.allow_download)


class _Table:
    """Turns worker results into table rows or drops, storing fresh detections in the cache."""

    def __init__(self, params: DetectParams, backend: FaceBackend, cache: DetectionCache | None, sig: str) -> None:
        self.params, self.backend, self.cache, self.sig = params, backend, cache, sig
        self.counts = {"detections_run": 0, "cache_hits": 0}
        self.marked = {"found": 0, "missed": 0}     # faces the dataset marks: found there or not
        self.ran, self.failures = 0, []               # images the backend ran on (faces or none) / raised on
        self.elsewhere: Counter[str] = Counter()      # other signatures of the images detected now
        self.stored = 0                               # detections put into the cache by this run
        self.subset_drops: dict[str, list[str]] = {}  # test subset (options.subsets) -> its records dropped here
        self.held_out: dict[str, Counter[str]] = {}  # val/test/train split or UNSPLIT -> reason -> dropped here
        self.framed_small: list[tuple[str, float]] = []  # (key, scale) of the first faces that look like frames
        self.frames = 0                               # ... and how many (MIN_CROP_SCALE)

    def warn_cached_elsewhere(self) -> None:
        """Say so when images were detected again that the cache holds under other signatures:
        ``auto`` chose another backend than where the cache was filled (that one's models are not
        here), or a setting, model file or backend version changed. The old entries stay unused."""
        if self.elsewhere:
            n = self.counts["detections_run"]
            log.warning("detect: images detected now were cached under other signatures, not used here: %s; this "
                        "run's is %s (%d detections). A different backend (auto picks the first whose models "
                        "are here), setting, model file or backend version makes a different signature",
                        ", ".join(f"{sig} ({k} images)" for sig, k in sorted(self.elsewhere.items())), self.sig, n)

    def check_backend(self, final: bool) -> None:
        """Stop when the backend fails on images as a rule, not as an exception: its first 10 all
        failed, or (at the end) 10 or more failed and more than it ran on."""
        failed = len(self.failures)
        if failed >= 10 and (failed > self.ran if final else self.ran == 0):
            raise RuntimeError(f"detect: the face backend ({self.sig}) failed on {failed} images and ran on "
                               f"{self.ran}: a broken install or model, not odd images; the first: "
                               f"{self.failures[0].detail}")

    def row(self, job: Item, det: Detection | None, reason: str, detail: str, reused: bool = False) -> dict | Dropped:
        """The table row of a kept record, or why it was dropped (``reused``: the detection of an
        earlier record of the same image, counted as a cache hit); a dropped record a test subset
        lists is noted in :attr:`subset_drops`, for the warning the reader's count cannot give, and one of an
        official val or test split (or of a dataset without splits: k-fold tests each) counted in :attr:`held_out`
        (evaluate's figures are over the faces kept; of a
        reader's drops, those of a picture it could not use, :data:`~ferdata.records.READ_LOSSES`)."""
        if isinstance(job, Dropped):            # a reader's drop, or a record whose picture was not read
            if job.reason in READ_LOSSES:
                self._note_held_out(job)
            return job
        out = self._row(job, det, reason, detail, reused)
        if isinstance(out, Dropped):
            for name in job.record.extra.get("subsets") or ():
                self.subset_drops.setdefault(name, []).append(job.record.key)
            self._note_held_out(out)
        return out

    def _note_held_out(self, drop: Dropped) -> None:
        # unsplit: in a fold under k-fold, counted for it; train: k-fold deals it too where there is no test split
        if drop.split in HELD_OUT or drop.split == "train" or not drop.split:   # (run_detect keeps train's then only)
            self.held_out.setdefault(drop.split or UNSPLIT, Counter())[drop.reason] += 1

    def _row(self, job: Item, det: Detection | None, reason: str, detail: str, reused: bool) -> dict | Dropped:
        rec = job.record
        if det is None:
            drop = rec.dropped(reason, f"{rec.where}: {detail}" if detail else rec.where)
            if reason == DETECTOR_FAILED:
                self.failures.append(drop)
                self.check_backend(final=False)
            return drop
        self.ran += 1
        if job.cached is None and not reused:
            self.counts["detections_run"] += 1
            if job.cacheable:
                self.elsewhere.update(self.cache.other_signatures(job.sha, self.sig))
                self.cache.put(job.sha, self.sig, det)
                self.stored += 1
        else:
            self.counts["cache_hits"] += 1
        if not det.faces:
            reason, why = self.backend.refuses(rec) or ("no_face", "")
            return rec.dropped(reason, f"{rec.where}: {why}" if why else rec.where)
        # A whole-image backend's one face is the picture: a face boxed small in it (at the centre or in a corner)
        # is no face crop, whether or not the box holds the picture's centre
        whole = not self.backend.finds_faces
        if whole and rec.box is not None and _share(rec.box, det.faces[0].box) < MIN_BOXED_SHARE:
            return rec.dropped("not_a_face_crop", f"{rec.where}: the dataset boxes its face at "
                               f"{tuple(round(v) for v in rec.box)}, under {MIN_BOXED_SHARE:.0%} of the {det.shape[1]}x"
                               f"{det.shape[0]} picture the {self.backend.name} backend takes as the face; use a "
                               "backend that finds faces (embedded, auto)")
        if whole and rec.box is None and (scale := _landmark_scale(rec, det.faces[0].kps5)) < MIN_CROP_SCALE:
            self.frames += 1                # kept: the scale is measured on CK+ only (a warning says so)
            if len(self.framed_small) < 5:
                self.framed_small.append((rec.key, scale))
        if (box := rec.annotated_box()) is None:
            face = select_face(list(det.faces), det.shape, self.params.select)
        elif (face := face_in_box(det.faces, box)) is None:      # another face, or none where it says
            self.marked["missed"] += 1
            return rec.dropped("no_face_in_box", f"{rec.where}: {len(det.faces)} face(s) found, none centred "
                               f"where the dataset marks the face {tuple(round(v) for v in box)}")
        else:
            self.marked["found"] += 1
        # The face holds the landmarks alignment uses; the dataset's own (if any) stay in the dataset.
        return {"record": record_to_dict(replace(rec, landmarks=None)), "face": face_to_dict(face),
                "backend": face.backend or self.backend.name, "num_faces": len(det.faces),
                "sha256": job.sha, "image_shape": list(det.shape)}


# A picture a whole-image backend (precropped) takes as the face is no face crop where the dataset's own box for
# the face covers less of it than this (ExpW's photos: a face boxed at the centre was kept whole, the photo trained
# on; one boxed elsewhere was a no_face_in_box drop, told as boxes that missed); a crop with a margin keeps its box
# well above it. Faces marked by landmarks alone (CK+'s frames) are not judged by it (points span less than a face
# does), but by MIN_CROP_SCALE, with a warning
MIN_BOXED_SHARE = 0.25


# Faces marked by 68 landmarks alone, taken whole by a whole-image backend: the spread of the landmarks' five
# points (eye centres, nose tip, mouth corners) over that of the template the backend scales to the picture. A
# template crop is 1 (one with half a face of margin, align.padding 0.5: 0.67); CK+'s 640x490 frames, their face
# half the frame's height: 0.55, squashed whole into the crop. Below this a warning names them (none is dropped:
# no real dataset of crops with 68 landmarks was measured against it).
MIN_CROP_SCALE = 0.6


def _landmark_scale(rec: FaceRecord, kps5: Any) -> float:
    """How large the face the record's 68 landmarks place is against ``kps5``, the template keypoints a whole-image
    backend puts on the picture (1: as a crop frames it); 1 where the record has no 68 finite landmarks."""
    lmk = None if rec.landmarks is None else np.asarray(rec.landmarks, np.float64)
    if lmk is None or lmk.shape != (68, 2) or not np.isfinite(lmk).all():
        return 1.0
    return spread(five_from_68(lmk)) / max(spread(np.asarray(kps5, np.float64)), 1e-9)


def _share(box: tuple[float, float, float, float], face: tuple[float, float, float, float]) -> float:
    """How much of ``face`` (x0, y0, x1, y1) the dataset's ``box`` covers, 0..1."""
    w = min(box[2], face[2]) - max(box[0], face[0])
    h = min(box[3], face[3]) - max(box[1], face[1])
    area = (face[2] - face[0]) * (face[3] - face[1])
    return max(0.0, w) * max(0.0, h) / area if area > 0 else 0.0


@contextmanager
def _detections(items: Iterable[FaceRecord | Dropped], params: DetectParams,
                need_cache: bool = False) -> Iterator[tuple[_Table, Iterator[dict | Dropped]]]:
    """The table rows and drops of ``items`` in reader order, detecting (in worker processes)
    only what the cache lacks; workers and cache are closed on leaving, even midway."""
    backend = params.create_backend()
    sig = params.signature(backend)                # a missing model fails here, before any image is read
    if need_cache and not backend.cacheable:
        raise ValueError(f"detect.backend {params.backend!r} runs no model and caches nothing (it reads the "
                         "dataset's annotations or image sizes): there is no detection to share between machines; "
                         "`ferdata prepare` or `dvc repro` on one machine is fast")
    cache = DetectionCache(params.cache_dir) if backend.cacheable else None
    table = _Table(params, backend, cache, sig)
    # A pixel-free backend only parses headers: shipping each file to a worker costs more than that.
    workers = params.workers if backend.needs_pixels else 1
    read = jobs(items, backend, cache, sig)
    batches = parallel_map(DetectWorker(params), batches_of(read), workers,
                           window=max(4, 4 * workers), chunksize=1, local=is_local, describe=batch_name,
                           split=one_image_batches)
    try:
        yield table, (table.row(*r) for r in progress((r for b in batches for r in b), desc="detect", unit="img"))
    except BaseException:
        batches.close()                            # stops the workers at once if we failed midway
        if cache is not None:                      # (not `if cache`: its len() counts, flushing first)
            try:
                cache.close()
            except OSError as e:                   # the first error (Ctrl-C: exit 130) is the one to tell
                log.warning("detect: the detection cache could not save this run's last detections: %s", e)
        raise
    batches.close()
    if cache is not None:
        cache.close()


def detect_section(params: Mapping[str, Any], name: str, spec: DatasetSpec) -> DetectParams:
    """The ``detect`` section with dataset ``name``'s own values over it (``datasets.<name>.detect``).
    A dataset that sets its own ``backend`` starts from no ``options`` (the section's belong to the
    section's backend); a bad value is named where it was set."""
    base = stage_section(params, "detect", DetectParams)         # a missing or wrong section is named as such
    own = dict(spec.detect)
    if not own:
        _check_backend(base, "detect")
        return base
    unknown = sorted(set(own) - set(vars(base)))
    if unknown:
        raise ValueError(f"datasets.{name}.detect: unknown keys {unknown}; it takes the detect section's: "
                         f"{', '.join(sorted(vars(base)))}")
    if "backend" in own and own["backend"] != base.backend:
        own.setdefault("options", {})
    try:
        merged = section(DetectParams, {**params["detect"], **own}, f"datasets.{name}.detect")
        _check_backend(merged, f"datasets.{name}.detect")
    except ValueError as e:
        raise ValueError(f"datasets.{name}.detect (over the detect section): {e}") from None
    return merged


def _check_backend(params: DetectParams, where: str) -> None:
    """The backend's name, and its options' names and kinds, as building it checks them (no model
    file read): a misspelt backend or option of the section, or a bad value, is told when params.yaml
    is checked (:mod:`pipeline._checks`), not only when this dataset's detect stage starts."""
    try:
        backend = BACKENDS.get(params.backend)
    except KeyError as e:                  # an unknown name: said with where it was set
        raise ValueError(f"{where}.backend: {e}") from None
    backend.check_options(params.options)
    backend.check_values(params.options)


def run_detect(items: Iterable[FaceRecord | Dropped], params: DetectParams, out_dir: str | Path,
               official_splits: Sequence[str] | None = None, source: Mapping[str, Any] | None = None) -> StageReport:
    """Detect faces for every record and write the stage outputs into ``out_dir`` (replaced whole).
    ``official_splits`` (the reader's) ride along in the report's settings to the shard stage,
    which must not carve a split the publisher defines when every sample of it was dropped;
    ``source`` (:func:`ferdata.datasets.source`: reader and options) to ``_info.json``."""
    splits = {} if official_splits is None else {"official_splits": sorted(official_splits)}
    report = StageReport("detect", settings={**params.settings(), **splits, **({"source": source} if source else {})})
    drops: list[Dropped] = []
    with _detections(items, params) as (table, rows), staged_dir(out_dir, OWNED) as out:
        # gzip level 1: 19% larger than level 6 at a sixth of its time (level 6: 0.09 ms per row)
        with atomic_open(out / FACES) as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0,
                                                            filename="") as gz:
            for row in rows:
                if isinstance(row, Dropped):
                    drops.append(row)
                else:
                    gz.write((json.dumps(row, sort_keys=True, separators=(",", ":")) + "\n").encode())
                    report.kept += 1
        write_drops(out, report, drops)
        table.check_backend(final=True)
        table.warn_cached_elsewhere()
        report.notes["backend"] = table.sig
        if held := {s: n for s, n in table.held_out.items() if s != "train" or folded_train(official_splits)}:
            report.notes[HELD_OUT_DROPS] = counted_by_split(held)   # only then: else the report as before
        # The file holds what the table holds: a run served from the cache (warm, merged, other
        # workers) writes the same bytes as a cold one, so DVC sees the same output and align
        # does not re-run. How many detections ran is logged and returned, not written.
        report.write(out / REPORT)
        report.notes.update(table.counts)
    log.info("detect: kept %d, dropped %s%s, ran %d detections (%d cached)", report.kept, dict(report.dropped),
             where_listed(out_dir, report), table.counts["detections_run"], table.counts["cache_hits"])
    if (faceless := report.dropped["no_face"]) > max(10, report.kept) and params.backend != "precropped":
        log.warning("detect: backend %s found no face in %d of %d images (see %s). If they are face crops already "
                    "(FER2013 / FERPlus 48 px, CK+48, RAF-DB aligned), too small or too tight for a detector, use "
                    "the precropped backend: `ferdata prepare <name> --backend precropped`, or "
                    "datasets.<name>.detect: {backend: precropped} in params.yaml", params.backend, faceless,
                    faceless + report.kept, Path(out_dir) / DROPS)
    if table.frames:
        log.warning("detect: %d face(s) marked by 68 landmarks alone fill under %.2f of the %s backend's crop (e.g. "
                    "%s): these pictures look like whole frames (CK+'s 640x490), not face crops, and each is taken "
                    "whole, its face squashed small into the crop; use a backend that finds faces (embedded, auto) "
                    "or annotations", table.frames, MIN_CROP_SCALE, params.backend,
                    ", ".join(f"{key} {scale:.3f}" for key, scale in table.framed_small))
    if (missed := table.marked["missed"]) > max(10, table.marked["found"]):
        log.warning("detect: %d of the %d faces the dataset marks were found nowhere near its boxes or landmarks "
                    "(dropped as no_face_in_box, see %s): are they in these images' pixels, or was the dataset "
                    "resized after annotation?", missed, missed + table.marked["found"],
                    Path(out_dir) / DROPS)
    warn_subset_losses("detect", table.subset_drops, out_dir, "no face, none where the dataset marks it, or the "
                       "backend failed")
    return report


def fill_cache(items: Iterable[FaceRecord | Dropped], params: DetectParams) -> StageReport:
    """Detect ``items`` into the detection cache only (no table): one machine's part of a
    dataset (``ferdata detect --part``). Once the parts' caches are merged into one
    (:meth:`DetectionCache.merge`), the detect stage there runs no model at all."""
    report = StageReport("detect")
    with _detections(items, params, need_cache=True) as (table, rows):
        for row in rows:
            if isinstance(row, Dropped):
                report.drop(row)
            else:
                report.kept += 1
        table.check_backend(final=True)
        table.warn_cached_elsewhere()
    if table.counts["detections_run"] > table.stored:   # auto on records with the dataset's own landmarks
        log.warning("detect: %d of the %d records were placed by the dataset's own landmarks (auto), which runs "
                    "no model and caches nothing: there is nothing of theirs to share between machines",
                    table.counts["detections_run"] - table.stored, report.kept + sum(report.dropped.values()))
    report.notes.update({**table.counts, "stored": table.stored, "backend": table.sig,
                         "cache": str(table.cache.path)})
    return report
