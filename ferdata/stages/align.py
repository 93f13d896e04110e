"""Align stage: detect table -> aligned NxN faces + crop-frame landmarks, in tar chunks.

Each sample: ``jpg`` (aligned RGB face), ``lmk.npy`` (68x2 float32, crop pixels; absent
when the backend has no 68 points) and ``json`` (record provenance, backend, score,
box and the source->crop matrix). Train and test go through the same function.

Bad rows are dropped by reason, never crash the run: a repeated key (``duplicate_key``; every
listing of a file listed again with another label, ``conflicting_labels``),
the same picture and face again in the same split (``duplicate_image``; every copy when
the copies' labels disagree, ``conflicting_labels``; in an official val or test split every copy is kept
and counted, so the published test set is scored whole; across official splits it is kept and
counted, so official test sets stay intact, or its training copies dropped with
``cross_split_copies: drop_train``, ``copy_of_held_out``), a source file that changed since detect
(``source_changed``), unusable geometry (``bad_landmarks``, ``implausible_landmarks``, ``bad_box``,
``face_outside_image``) and every decode failure of :func:`ferdata.io.decode_image`. Kept inputs that needed conversion
(EXIF rotation, alpha, 16-bit, CMYK, several faces, a JPEG with damaged data ...) are counted in
the report's notes. The output folder is built beside ``out_dir`` and swapped in whole.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator

from ferdata.atomic import staged_dir
from ferdata.crop import BadGeometry, crop_face, source_matrix
from ferdata.dedup import CROSS_SPLIT_COPIES, Deduplicator, conflicting_labels
from ferdata.errors import shown
from ferdata.io import (JPEG_DAMAGED, MAX_STORED_SIDE, BadImage, decode_grey, decode_image, encode_jpeg, is_blank,
                        is_grey)
from ferdata.layout import (ALIGNED, CONTENT, COPIES, DROPS, GREY, HELD_OUT_DROPS, REPORT, SAMPLE_SETTINGS, UNSPLIT,
                            counted_by_split, folded_train, read_faces, report_notes, report_settings)
from ferdata.parallel import parallel_map
from ferdata.params import at_least, check_values, one_of, within
from ferdata.progress import progress
from ferdata.records import HELD_OUT, Dropped, load_image_bytes, record_from_dict, unreadable_drop
from ferdata.report import StageReport, warn_subset_losses, where_listed, write_drops
from ferdata.tario import TarShardWriter, content_digest, npy_bytes

log = logging.getLogger(__name__)
PREFIX = ALIGNED
OWNED = (f"{PREFIX}-*.tar", REPORT, DROPS)


# A dataset this much grey, not all (CK+: a few colour sessions among grey ones), is told to make its faces grey
# (detect.grey): recorded as colour, its model is served colour photos (the sample 89% grey, 3 seeds: 76.1% accuracy
# on colour test faces, 77.8% on them in grey; all grey +2.1 points, all colour -4.2)
MOSTLY_GREY = 0.9

# The template shrinks by 1 / (1 + padding): at 4 the eyes-to-mouth span is a fifth of norm_crop's (8 px at
# 112); far larger values gave crops of one colour, and from about 1e8 a precropped face's warp (its tiny
# matrix inverted, BORDER_REPLICATE) crashed OpenCV in native code.
MAX_PADDING = 4.0


@dataclass(frozen=True)
class AlignParams:
    size: int
    padding: float
    jpeg_quality: int
    workers: int
    chunk_size: int
    cross_split_copies: str         # keep | drop_train: a training copy of a val/test face (ferdata.dedup)

    def __post_init__(self) -> None:
        crop_side = (lambda v: isinstance(v, int) and 0 < v <= MAX_STORED_SIDE and (v % 112 == 0 or v % 128 == 0),
                     f"a multiple of 112 or 128 (the ArcFace template's scales) up to {MAX_STORED_SIDE}")
        check_values("align", self, {"size": crop_side, "padding": within(0, MAX_PADDING),
                                     "jpeg_quality": within(1, 100), "workers": at_least(1), "chunk_size": at_least(1),
                                     "cross_split_copies": one_of(CROSS_SPLIT_COPIES)})

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
    grey: bool = False          # the crop is grey (R = G = B): a grey picture's face (:func:`is_grey`)
    blank: bool = False         # the crop is one flat colour (:func:`is_blank`): no face (FER2013's all-black rows)


# A face the dataset's annotations placed in a picture the decoder turned by its EXIF orientation
# (a conversion of its own: annotations drawn on the stored pixels would be in another frame)
ANNOTATED_TURNED = "exif_orientation_annotations"


def _row_name(row: dict | Dropped) -> str:
    if isinstance(row, Dropped):
        return f"dropped record {row.key!r}"
    return f"record {row['record'].get('key')!r} ({shown(row['record'].get('path'))})"


class AlignWorker:
    """Picklable callable: one detect row -> :class:`AlignedSample`, or a Dropped (passed through);
    ``grey``: each face warped from its picture turned grey (``detect.grey``: :func:`decode_grey`, as
    inference reads a picture for a model trained on grey faces)."""

    def __init__(self, params: AlignParams, grey: bool = False) -> None:
        self.params, self.grey = params, grey

    def __call__(self, row: dict | Dropped) -> AlignedSample | Dropped:
        if isinstance(row, Dropped):
            return row
        rec = record_from_dict(row["record"])
        face = row["face"]
        try:
            data = load_image_bytes(rec)
            if hashlib.sha256(data).hexdigest() != row["sha256"]:
                return rec.dropped("source_changed", f"{rec.where}: re-run detect")
            al, decoded = crop_face(face, row["backend"], self.params.size, self.params.padding,
                                    partial(decode_grey if self.grey else decode_image, data))
        except OSError as e:
            return unreadable_drop(rec, e, "align")
        except (BadImage, BadGeometry) as e:
            return rec.dropped(e.reason, f"{rec.where}: {e.detail}")
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
        return AlignedSample(rec.key, fields, conversions, int(row["num_faces"]), is_grey(al.image),
                             is_blank(al.image))


def _check_readable(drops: list[Dropped], rows: int) -> None:
    """Stop (the previous output kept) when half the images detect read or more cannot be read now:
    a run from another folder (the table's paths are relative to the one detect ran in) or a dataset
    moved or unmounted since, not faces to drop."""
    lost = [d for d in drops if d.reason == "unreadable_file"]
    if lost and 2 * len(lost) >= rows:
        raise FileNotFoundError(f"align: {len(lost)} of the {rows} images the detect stage read cannot be read now "
                                f"(e.g. {shown(lost[0].detail)}): run from the folder detect ran in (the project's), "
                                "or re-run detect if the dataset moved")


def _noting_members(rows: Iterable[dict], listed: dict[str, list[str]]) -> Iterator[dict]:
    """``rows`` as they are, noting the test subsets (``options.subsets``) each listed record is in
    (key -> names) as they pass, for the warning of those this stage drops (no second read of the table)."""
    for row in rows:
        if names := (row["record"].get("extra") or {}).get("subsets"):
            listed[row["record"]["key"]] = names
        yield row


def run_align(detect_dir: str | Path, params: AlignParams, out_dir: str | Path) -> StageReport:
    """Align every detected face of ``detect_dir`` into ``out_dir`` (replaced as a whole)."""
    # the detector's settings ride along (under "detect"): the shards record how their faces were found;
    # the dataset's official splits and source (reader, options) too, for the shard stage
    detected = report_settings(detect_dir)
    splits = {k: detected.pop(k) for k in ("official_splits", "source") if k in detected}
    report = StageReport("align", settings={**params.settings(), **({"detect": detected} if detected else {}),
                                            **splits})
    if params.cross_split_copies != "keep":           # said where it drops faces (keep: the report as before)
        report.notes["cross_split_copies"] = params.cross_split_copies
    drops: list[Dropped] = []
    grey, blank = 0, []
    # Two reads of the table: whether a first copy stays depends on copies later in it, and the
    # rows are streamed, never held (the first read keeps one small entry per picture and face).
    listed: dict[str, list[str]] = {}
    dedup = Deduplicator(report, conflicting_labels(read_faces(detect_dir)), params.cross_split_copies == "drop_train")
    rows = dedup(_noting_members(read_faces(detect_dir), listed))
    with staged_dir(out_dir, OWNED) as out:
        with (TarShardWriter(out, PREFIX, params.chunk_size) as writer,     # closing: a failure stops the workers
              closing(parallel_map(AlignWorker(params, detected.get("grey") is True), rows, params.workers,
                                   describe=_row_name)) as done):
            for res in progress(done, desc="align", unit="face"):
                if isinstance(res, Dropped):
                    drops.append(res)
                    continue
                writer.write(res.key, res.fields)
                report.kept += 1
                grey += res.grey
                if res.blank:
                    blank.append(res.key)
                    report.count("faces", "blank")
                for name in res.conversions:
                    report.count("converted", name)
                if res.num_faces > 1:
                    report.count("faces", "several_faces_one_kept")
        _check_readable(drops, report.kept + len(drops))
        lost: dict[str, list[str]] = {}
        for d in drops:
            for name in listed.get(d.key, ()):
                lost.setdefault(name, []).append(d.key)
        warn_subset_losses("align", lost, out_dir, "a face that fits no template, an unreadable picture, a copy")
        here: dict[str, Counter[str]] = {}
        dealt = {"train", ""} if folded_train(splits.get("official_splits")) else {""}   # k-fold deals them
        for d in drops:
            if d.split in HELD_OUT or (d.split in dealt and d.reason not in COPIES):    # a copy's picture is kept
                here.setdefault(d.split or UNSPLIT, Counter())[d.reason] += 1
        if dropped := counted_by_split(report_notes(detect_dir).get(HELD_OUT_DROPS, {}), here):
            report.notes[HELD_OUT_DROPS] = dropped     # detect's and these: the shard stage writes them to _info.json
        if report.kept and grey == report.kept:         # only then: a dataset with a colour face, its report as before
            report.notes[GREY] = True                   # the shards and a model trained on them alone say so
        report.notes[CONTENT] = content_digest(writer.files)
        write_drops(out, report, drops)
        report.write(out / REPORT)
    log.info("align: kept %d, dropped %s%s, notes %s", report.kept, dict(report.dropped), where_listed(out_dir, report),
             {k: v for k, v in report.notes.items() if k != CONTENT})      # the digest is report.json's
    if kept := {k: n for k, n in report.notes.get("duplicates", {}).items() if not k.startswith("across_")}:
        log.warning("align: copies of one picture and face in an official val/test split were kept, as the dataset "
                    "publishes them (scored once per copy): %s", kept)
    if trained := dedup.trained_held:     # the shard stage's near copies leave these out: named here
        log.warning("align: %d training face(s) are the same picture and face as a val/test face, kept "
                    "(align.cross_split_copies keep; drop_train drops them), so the model trains on faces its "
                    "checkpoint is picked or scored on: %s%s", len(trained),
                    "; ".join(f"{k} is {' and '.join(v)}" for k, v in list(trained.items())[:5]),
                    " ..." if len(trained) > 5 else "")
    if report.kept and MOSTLY_GREY * report.kept <= grey < report.kept:
        log.warning("align: %d of the %d faces are grey (R = G = B) and %d in colour: the dataset is recorded as "
                    "colour (no grey_faces), so a model trained on it scores new faces in colour; to train and serve "
                    "it on grey faces, set detect: {grey: true} in its params.yaml datasets entry (every picture "
                    "turned grey as `ferdata predict` turns one for a grey model)", grey, report.kept,
                    report.kept - grey)
    if blank:
        log.warning("align: %d face(s) are one flat colour (no face: FER2013's all-black rows), kept and so trained on "
                    "or scored: %s%s; counted under faces: blank in %s", len(blank), ", ".join(blank[:5]),
                    " ..." if len(blank) > 5 else "", Path(out_dir) / REPORT)
    if damaged := report.notes.get("converted", {}).get(JPEG_DAMAGED):
        log.warning("align: %d JPEG(s) with damaged compressed data kept as decoders read them (the damaged part grey "
                    "or shifted; each sample's json names libjpeg's complaint under jpeg_damage); look at them with "
                    "`ferdata show`", damaged)
    if turned := report.notes.get("converted", {}).get(ANNOTATED_TURNED):
        log.warning("align: %d face(s) placed by the dataset's annotations are in pictures with an EXIF "
                    "orientation; the annotations were read in the turned (displayed) frame: if the dataset drew "
                    "them on the stored pixels these crops are wrong; look at some with `ferdata show`", turned)
    return report
