"""Align stage: detect table -> aligned NxN faces + crop-frame landmarks, in tar chunks.

Each sample: ``jpg`` (aligned RGB face), ``lmk.npy`` (68x2 float32, crop pixels; absent
when the backend has no 68 points) and ``json`` (record provenance, backend, score,
box and the source->crop matrix). Train and test go through the same function.

Bad rows are dropped by reason, never crash the run: a repeated key (``duplicate_key``; every
listing of a file listed again with another label, ``conflicting_labels``),
the same picture and face again in the same split (``duplicate_image``; every copy when
the copies' labels disagree, ``conflicting_labels``; across official splits it is kept and
counted, so official test sets stay intact), a source file that changed since detect
(``source_changed``), unusable geometry (``bad_landmarks``, ``implausible_landmarks``, ``bad_box``,
``face_outside_image``) and every decode failure of :func:`ferdata.io.decode_image`. Kept inputs that needed conversion
(EXIF rotation, alpha, 16-bit, CMYK, several faces, a JPEG with damaged data ...) are counted in
the report's notes. The output folder is built beside ``out_dir`` and swapped in whole.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ferdata.atomic import staged_dir
from ferdata.classes import CLASSES
from ferdata.geometry import (Aligned, align_face, crop_reduction, five_from_68, reduced_frame, spread, template,
                              template_misfit, transform_points)
from ferdata.io import JPEG_DAMAGED, BadImage, Decoded, decode_image, encode_jpeg
from ferdata.layout import ALIGNED, CONTENT, REPORT, SAMPLE_SETTINGS, read_faces, report_settings
from ferdata.parallel import parallel_map
from ferdata.params import at_least, check_values, within
from ferdata.progress import progress
from ferdata.records import Dropped, load_image_bytes, record_from_dict, scaled_points
from ferdata.report import StageReport, write_drops
from ferdata.tario import TarShardWriter, content_digest

log = logging.getLogger(__name__)
PREFIX = ALIGNED
OWNED = (f"{PREFIX}-*.tar", REPORT, "dropped.jsonl")


@dataclass(frozen=True)
class AlignParams:
    size: int
    padding: float
    jpeg_quality: int
    workers: int
    chunk_size: int

    def __post_init__(self) -> None:
        crop_side = (lambda v: isinstance(v, int) and v > 0 and (v % 112 == 0 or v % 128 == 0),
                     "a multiple of 112 or 128 (the ArcFace template's scales)")
        check_values("align", self, {"size": crop_side, "padding": at_least(0), "jpeg_quality": within(1, 100),
                                     "workers": at_least(1), "chunk_size": at_least(1)})

    def settings(self) -> dict:
        """What shapes a crop (not how fast it is made): the shards record it, inference repeats it."""
        return {k: getattr(self, k) for k in SAMPLE_SETTINGS["align"]}


@dataclass(frozen=True)
class AlignedSample:
    """One worker result: key, tar fields, decode conversions applied, faces in the picture."""

    key: str
    fields: dict[str, bytes]
    conversions: tuple[str, ...]
    num_faces: int


class BadGeometry(ValueError):
    """Keypoints that cannot define an alignment; ``reason`` is the drop reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # rebuilt whole in the parent when a worker raises it (notes too)
        return (type(self), (self.reason, self.detail), self.__dict__)


WHOLE_IMAGE_BACKENDS = ("precropped",)      # the face is the whole image (ferdata.faces.dataset)


def crop_border(backend: str) -> str:
    """How a crop continues past its image's edge: a precropped image's own edge pixels (the
    image is the crop, its last pixel centres sit just inside the crop's edge), else black."""
    return "replicate" if backend in WHOLE_IMAGE_BACKENDS else "black"


# A face the dataset's annotations placed in a picture the decoder turned by its EXIF orientation
# (a conversion of its own: annotations drawn on the stored pixels would be in another frame)
ANNOTATED_TURNED = "exif_orientation_annotations"

# Keypoints no face has (ferdata.geometry.template_misfit): real detections stay under 0.43 (1,101
# faces of the benchmark photos); a 3-D face turned to full profile and pitched 30 degrees reaches
# 0.7-0.8 with detector noise; mirrored or shuffled order about 0.97.
MAX_MISFIT = 0.9
MIN_SPREAD_PX = 1.0      # RMS spread of the 5 keypoints in source pixels (the template's: 23 px at 112)
# The 68 landmarks' five points (eye centres, nose tip, mouth corners) away from the 5 keypoints, RMS, in
# keypoint spreads: the embedded backend's dlib fits reach 0.64 (median 0.16, the sample's 465 faces); a
# fit to another face or a misplaced box is several.
MAX_LANDMARK_GAP = 1.0


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def source_matrix(matrix: np.ndarray, scale: float) -> np.ndarray:
    """The source-image -> crop matrix, given the decoded-image (at ``scale``) -> crop one."""
    return np.asarray(matrix, np.float64) @ np.vstack([reduced_frame(scale), [0.0, 0.0, 1.0]])


def checked_points(face: dict, shape: tuple[int, ...], scale: float = 1.0) -> tuple[np.ndarray, np.ndarray | None]:
    """(kps5, lmk68) in the frame of the image decoded at ``scale`` as float32, or
    :class:`BadGeometry` when the box or points are non-finite, the points coincide or spread over
    less than :data:`MIN_SPREAD_PX` (a zoom of hundreds: a crop of one pixel), they fit no face
    (:data:`MAX_MISFIT`: listed in mirrored or shuffled order, or with most points missing), or their
    centre lies off the image."""
    if not np.isfinite(np.asarray(face["box"], np.float64)).all():
        raise BadGeometry("bad_box", f"face box {face['box']} is not finite")
    kps = np.asarray(face["kps5"], np.float64)
    lmk = np.asarray(face["lmk68"], np.float64) if face.get("lmk68") is not None else None
    if kps.shape != (5, 2) or not np.isfinite(kps).all():
        raise BadGeometry("bad_landmarks", f"5 keypoints non-finite or shaped {kps.shape}")
    if lmk is not None and (lmk.shape != (68, 2) or not np.isfinite(lmk).all()):
        raise BadGeometry("bad_landmarks", f"68 landmarks non-finite or shaped {lmk.shape}")
    frame = reduced_frame(scale)
    kps = transform_points(kps, frame).astype(np.float64)
    lmk = None if lmk is None else transform_points(lmk, frame)
    if np.ptp(kps, axis=0).max() < 1e-3:
        raise BadGeometry("bad_landmarks", "degenerate: the 5 keypoints coincide")
    if (size := spread(kps) / scale) < MIN_SPREAD_PX:
        raise BadGeometry("bad_landmarks", f"the 5 keypoints spread over {size:.2g} px (RMS about their centre): "
                                           "no face that small can be aligned")
    if (misfit := template_misfit(kps)) > MAX_MISFIT:
        raise BadGeometry("implausible_landmarks", f"the 5 keypoints fit no face (misfit {misfit:.2f} > "
                                                   f"{MAX_MISFIT}: a face in full profile is under 0.8): listed in "
                                                   "mirrored or shuffled order, or with most points missing?")
    if lmk is not None:
        _check_landmarks(lmk.astype(np.float64), kps)
    cx, cy = kps.mean(0)
    if not (0 <= cx < shape[1] and 0 <= cy < shape[0]):
        raise BadGeometry("face_outside_image", f"keypoint centre ({cx / scale:.0f}, {cy / scale:.0f}) outside "
                                                f"{round(shape[1] / scale)}x{round(shape[0] / scale)}")   # the file's
    return kps.astype(np.float32), lmk


def _check_landmarks(lmk: np.ndarray, kps: np.ndarray) -> None:
    """The 68 landmarks must be a face's, the face of the 5 keypoints (models of their own give the
    two: RetinaFace and dlib, SCRFD and 1k3d68): regions and heatmaps are drawn from them."""
    if np.ptp(lmk, axis=0).max() < 1e-3:
        raise BadGeometry("bad_landmarks", "degenerate: the 68 landmarks coincide")
    five = five_from_68(lmk).astype(np.float64)
    if (misfit := template_misfit(five)) > MAX_MISFIT:
        raise BadGeometry("implausible_landmarks", f"the 68 landmarks fit no face (misfit {misfit:.2f} > "
                                                   f"{MAX_MISFIT}): listed in mirrored or shuffled order?")
    if (gap := float(np.sqrt(((five - kps) ** 2).sum(1).mean())) / spread(kps)) > MAX_LANDMARK_GAP:
        raise BadGeometry("implausible_landmarks", f"the 68 landmarks lie {gap:.2f} keypoint spreads from the 5 "
                                                   f"keypoints (> {MAX_LANDMARK_GAP}): they are another face's")


def whole_image_points(width: float, height: float, size: int) -> np.ndarray:
    """The keypoints of an image that is the crop: this crop size's template scaled to the image,
    pixel centres matched, so the warp is a resize at any size (the 112 template the precropped
    backend stores shifted a 224 crop by half a pixel and shrank a 128 one to 112 inside a
    smeared border)."""
    return scaled_points(template(size), np.array([width / size, height / size]))


def warp_points(face: dict, backend: str, size: int) -> np.ndarray:
    """The source-pixel keypoints the crop is warped from, which set how far the picture may be
    reduced: a whole-image face's (its box is the image) are this size's template, not the
    stored 112 one (whose spread differs at multiples of 128: 240x240 at 128 decoded at 1/2,
    120x120, and was upscaled)."""
    if backend in WHOLE_IMAGE_BACKENDS:
        box = np.asarray(face["box"], np.float64).ravel()
        if box.shape == (4,) and np.isfinite(box).all():          # else checked_points says why
            return whole_image_points(box[2] - box[0], box[3] - box[1], size)
    return np.asarray(face["kps5"], np.float64)


def crop_face(face: dict, backend: str, size: int, padding: float,
              decoded_at: Callable[[int], Decoded]) -> tuple[Aligned, Decoded]:
    """A detect row's face cropped as the align stage crops it, and the picture it was warped
    from. A face much larger than the crop is warped from the picture at 1/2..1/8
    (``decoded_at(reduce)``: faster, and no aliasing); detections are in source pixels, mapped
    into that frame; the border follows the backend (:func:`crop_border`). Raises
    :class:`BadGeometry` (and ``decoded_at``'s :class:`BadImage`) for a face the stage drops."""
    decoded = decoded_at(crop_reduction(warp_points(face, backend, size), size, padding))
    kps5, lmk68 = checked_points(face, decoded.rgb.shape, decoded.scale)
    if backend in WHOLE_IMAGE_BACKENDS:
        h, w = decoded.rgb.shape[:2]
        kps5 = whole_image_points(w, h, size).astype(np.float32)
    return align_face(decoded.rgb, kps5, size, padding, lmk68, crop_border(backend)), decoded


def _row_name(row: dict | Dropped) -> str:
    if isinstance(row, Dropped):
        return f"dropped record {row.key!r}"
    return f"record {row['record'].get('key')!r} ({row['record'].get('path')})"


class AlignWorker:
    """Picklable callable: one detect row -> :class:`AlignedSample`, or a Dropped (passed through)."""

    def __init__(self, params: AlignParams) -> None:
        self.params = params

    def __call__(self, row: dict | Dropped) -> AlignedSample | Dropped:
        if isinstance(row, Dropped):
            return row
        rec = record_from_dict(row["record"])
        face = row["face"]
        try:
            data = load_image_bytes(rec)
            if hashlib.sha256(data).hexdigest() != row["sha256"]:
                return Dropped(rec.dataset, rec.key, "source_changed", f"{rec.path}: re-run detect")
            al, decoded = crop_face(face, row["backend"], self.params.size, self.params.padding,
                                    lambda reduce: decode_image(data, reduce))
        except OSError as e:
            return Dropped(rec.dataset, rec.key, "unreadable_file", f"{rec.path}: {e.strerror}")
        except (BadImage, BadGeometry) as e:
            return Dropped(rec.dataset, rec.key, e.reason, f"{rec.path}: {e.detail}")
        meta = {
            **{k: v for k, v in row["record"].items() if k not in ("pixels", "landmarks")},
            "backend": row["backend"], "score": face["score"], "box": face["box"],
            "num_faces": row["num_faces"], "matrix": source_matrix(al.matrix, decoded.scale).round(6).tolist(),
            "size": self.params.size, "sha256": row["sha256"],
        }
        if decoded.damage:                            # kept, as every decoder reads it, and said (not dropped:
            meta["jpeg_damage"] = decoded.damage        # an official test set stays whole)
        conversions = decoded.conversions
        fields = {"jpg": encode_jpeg(al.image, self.params.jpeg_quality),
                  "json": json.dumps(meta, sort_keys=True).encode()}
        if al.lmk68 is not None:
            fields["lmk.npy"] = npy_bytes(al.lmk68)
        if row["backend"] == "annotations" and "exif_orientation" in conversions:
            conversions += (ANNOTATED_TURNED,)           # told apart: which frame the annotations meant is a guess
        return AlignedSample(rec.key, fields, conversions, int(row["num_faces"]))


Identity = tuple[bytes, tuple[str, ...], str]


def face_identity(row: dict) -> Identity:
    """The picture (its sha256), the face (box rounded to pixels) and the split of a detect row."""
    return bytes.fromhex(row["sha256"])[:16], tuple(f"{v:.0f}" for v in row["face"]["box"]), row["record"]["split"]


@dataclass(frozen=True)
class Conflicts:
    """Labels that disagree, found by a first read of the detect table; every row they name is dropped."""

    faces: dict[Identity, list[str]] = field(default_factory=dict)   # copies of one face in one split
    keys: dict[str, list[str]] = field(default_factory=dict)         # one file listed again, otherwise labelled


def conflicting_labels(rows: Iterable[dict]) -> Conflicts:
    """Faces given different labels by copies of one picture in one split, and files listed more
    than once (same key, same path) with different labels, each with those labels. A key repeated
    for another file is not a conflict: :class:`Deduplicator` keeps its first file."""
    first: dict[Identity, int] = {}
    listed: dict[str, tuple[str, int]] = {}
    faces: dict[Identity, set[int]] = {}
    keys: dict[str, set[int]] = {}
    for row in rows:
        rec = row["record"]
        label = int(rec["label"])
        if rec["key"] in listed:
            path, was = listed[rec["key"]]
            if path == rec["path"] and was != label:
                keys.setdefault(rec["key"], {was}).add(label)
            continue
        listed[rec["key"]] = rec["path"], label
        ident = face_identity(row)
        if first.setdefault(ident, label) != label:
            faces.setdefault(ident, {first[ident]}).add(label)
    return Conflicts({i: _names(v) for i, v in faces.items()}, {k: _names(v) for k, v in keys.items()})


def _names(labels: set[int]) -> list[str]:
    return [CLASSES[c] for c in sorted(labels)]


class Deduplicator:
    """Keys must be unique: a file listed again is dropped (``duplicate_key``), and every listing
    of it when the labels disagree (``conflicting_labels``). Copies of one picture + face in one
    split: all are dropped when their labels disagree (``conflicting_labels``: neither label can be
    trusted), else the first is kept. ``conflicts`` is :func:`conflicting_labels` of the same rows.
    A face seen only in another official split is kept and counted, so official test sets stay whole."""

    def __init__(self, report: StageReport, conflicts: Conflicts | None = None) -> None:
        self.report = report
        self.conflicts = conflicts or Conflicts()
        self.keys: set[str] = set()
        self.faces: dict[tuple[bytes, tuple[str, ...]], dict[str, str]] = {}

    def __call__(self, rows: Iterable[dict]) -> Iterator[dict | Dropped]:
        for row in rows:
            rec = row["record"]
            if rec["key"] in self.conflicts.keys:
                labels = ", ".join(self.conflicts.keys[rec["key"]])
                yield Dropped(rec["dataset"], rec["key"], "conflicting_labels",
                              f"{rec['path']}: listed more than once, labelled {labels}")
                continue
            if rec["key"] in self.keys:
                yield Dropped(rec["dataset"], rec["key"], "duplicate_key", f"{rec['path']}: key used before")
                continue
            self.keys.add(rec["key"])
            picture, box, split = ident = face_identity(row)
            if ident in self.conflicts.faces:
                yield Dropped(rec["dataset"], rec["key"], "conflicting_labels",
                              f"{rec['path']}: copies of this picture and face "
                              f"{f'in split {split}' if split else 'in the dataset'} are labelled "
                              f"{', '.join(self.conflicts.faces[ident])}")
                continue
            seen = self.faces.setdefault((picture, box), {})          # split -> first key
            if split in seen:
                yield Dropped(rec["dataset"], rec["key"], "duplicate_image", f"{rec['path']}: same as {seen[split]}")
                continue
            if seen:
                first_split = next(iter(seen))
                self.report.count("duplicates", f"across_splits_{first_split or 'none'}_{split or 'none'}")
            seen[split] = rec["key"]
            yield row


def _check_readable(drops: list[Dropped], rows: int) -> None:
    """Stop (the previous output kept) when half the images detect read or more cannot be read now:
    a run from another folder (the table's paths are relative to the one detect ran in) or a dataset
    moved or unmounted since, not faces to drop."""
    lost = [d for d in drops if d.reason == "unreadable_file"]
    if lost and 2 * len(lost) >= rows:
        raise FileNotFoundError(f"align: {len(lost)} of the {rows} images the detect stage read cannot be read now "
                                f"(e.g. {lost[0].detail}): run from the folder detect ran in (the project's), or "
                                "re-run detect if the dataset moved")


def run_align(detect_dir: str | Path, params: AlignParams, out_dir: str | Path) -> StageReport:
    """Align every detected face of ``detect_dir`` into ``out_dir`` (replaced as a whole)."""
    # the detector's settings ride along (under "detect"): the shards record how their faces were found;
    # the dataset's official splits and source (reader, options) too, for the shard stage
    detected = report_settings(detect_dir)
    splits = {k: detected.pop(k) for k in ("official_splits", "source") if k in detected}
    report = StageReport("align", settings={**params.settings(), **({"detect": detected} if detected else {}),
                                            **splits})
    drops: list[Dropped] = []
    # Two reads of the table: whether a first copy stays depends on copies later in it, and the
    # rows are streamed, never held (the first read keeps one small entry per picture and face).
    rows = Deduplicator(report, conflicting_labels(read_faces(detect_dir)))(read_faces(detect_dir))
    with staged_dir(out_dir, OWNED) as out:
        with (TarShardWriter(out, PREFIX, params.chunk_size) as writer,     # closing: a failure stops the workers
              closing(parallel_map(AlignWorker(params), rows, params.workers, describe=_row_name)) as done):
            for res in progress(done, desc="align", unit="face"):
                if isinstance(res, Dropped):
                    drops.append(res)
                    continue
                writer.write(res.key, res.fields)
                report.kept += 1
                for name in res.conversions:
                    report.count("converted", name)
                if res.num_faces > 1:
                    report.count("faces", "several_faces_one_kept")
        _check_readable(drops, report.kept + len(drops))
        report.notes[CONTENT] = content_digest(writer.files)
        write_drops(out, report, drops)
        report.write(out / REPORT)
    log.info("align: kept %d, dropped %s, notes %s", report.kept, dict(report.dropped), report.notes)
    if damaged := report.notes.get("converted", {}).get(JPEG_DAMAGED):
        log.warning("align: %d JPEG(s) with damaged compressed data kept as decoders read them (the damaged part grey "
                    "or shifted; each sample's json names libjpeg's complaint under jpeg_damage); look at them with "
                    "`ferdata show`", damaged)
    if turned := report.notes.get("converted", {}).get(ANNOTATED_TURNED):
        log.warning("align: %d face(s) placed by the dataset's annotations are in pictures with an EXIF "
                    "orientation; the annotations were read in the turned (displayed) frame: if the dataset drew "
                    "them on the stored pixels these crops are wrong; look at some with `ferdata show`", turned)
    return report
