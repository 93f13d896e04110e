"""Shard stage: join aligned + derived samples, split, shuffle with a seed, write shards.

Output per split: ``<out>/<split>/<split>-%06d.tar`` and ``<out>/<split>/_info.json``
(sample count per shard, sha256 per shard, class histogram, label map, params hash, whether every
face is grey, the
keys of each named test subset a reader tagged, e.g. RAF-DB's occlusion and pose lists, how
many samples each face backend made, and, when samples carry label distributions that
training uses, e.g. FERPlus's crossentropy mode, how many per mode).
Byte-reproducible: the order is a seeded hash permutation and tar metadata is fixed.
Samples are read by offset from the chunk tars, so memory holds an index, not pixels.
The output folder is built beside ``out_dir`` and swapped in whole, so shards and
``_info.json`` always come from one complete run.
"""
from __future__ import annotations

import hashlib
import json
import logging
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Collection, Iterable, Iterator

import numpy as np

from ferdata.atomic import atomic_write_text, require_dir, staged_dir
from ferdata.classes import CLASSES
from ferdata.dedup import face_identity
from ferdata.nearcopies import NearCopies, face_vector
from ferdata.layout import (ALIGNED, DERIVED, DROPPED_BEFORE, DROPPED_BEFORE_FOLDS, GREY, HELD_OUT_DROPS, INFO, REPORT,
                            output_digest, reasons_summed, report_inputs, report_notes, report_settings,
                            require_made_by)
from ferdata.params import at_least, check_values, one_of, within
from ferdata.progress import progress
from ferdata.records import HELD_OUT, SPLITS, FaceRecord, record_from_dict
from ferdata.report import StageReport
from ferdata.splits import SPLIT_BY, assign_splits, check_settings, unit_hash
from ferdata.summary import SplitSummary
from ferdata.tarindex import MemberIndex, MemberReader, index_chunks
from ferdata.tario import NAME_DIGITS, TarShardWriter

log = logging.getLogger(__name__)
# What the stage writes, down into the split folders: a file a user put in one is refused, not deleted with it
OWNED = (*(f"{split}/{name}" for split in SPLITS
           for name in (f"{split}-{'[0-9]' * NAME_DIGITS}.tar", INFO)), REPORT)


@dataclass(frozen=True)
class ShardParams:
    seed: int
    val_fraction: float
    test_fraction: float
    split_by: str
    folds: int
    fold: int
    maxcount: int

    def __post_init__(self) -> None:
        check_values("shard", self, {"val_fraction": within(0, 1), "test_fraction": within(0, 1),
                                     "split_by": one_of(SPLIT_BY), "folds": at_least(0),
                                     "fold": at_least(0), "maxcount": at_least(1)})
        check_settings(self.val_fraction, self.test_fraction, self.split_by, self.folds, self.fold, "shard.")


RECORD_FIELDS = ("dataset", "key", "path", "label", "native_label", "split", "subject", "extra")
KEPT_FIELDS = RECORD_FIELDS + ("backend",)      # + the face backend that made the sample (counted per split)


def _record_fields(meta: dict) -> dict:
    return {f: meta[f] for f in KEPT_FIELDS if f in meta}


WHERE_DROPS = "the detect and align stages' report.json count the reasons, dropped.jsonl lists each record"


def assign(metas: dict[str, dict], params: ShardParams,
           official: Collection[str] | None = None) -> dict[str, list[str]]:
    """Keys per split: official splits kept, the missing ones carved by :mod:`ferdata.splits`
    (seeded, subject-independent when subjects are known, or k-fold). Each of ``metas`` takes
    its assigned split and ``extra`` (k-fold adds the fold), which the sample's ``json`` carries.
    ``official``: the splits the dataset defines (the reader's); one with no sample left is an error,
    not a split to carve out of train. None: the splits the samples carry."""
    present = {m["split"] for m in metas.values() if m["split"]}
    by_split: dict[str, list[str]] = {s: [] for s in SPLITS}
    for r in _assigned(metas.values(), present, params, official):
        by_split[r.split].append(r.key)
        metas[r.key].update(split=r.split, extra=dict(r.extra))
    return by_split


def _assigned(metas: Iterable[dict], present: set[str], params: ShardParams,
              official: Collection[str] | None) -> Iterator[FaceRecord]:
    """:func:`assign`'s records with their splits, from ``metas`` streamed (read once, in order) and
    ``present``, the splits they carry."""
    lost = sorted(set(official or ()) - present)
    if lost:
        raise ValueError(f"no sample is left in the dataset's official {' and '.join(lost)} split ({WHERE_DROPS}); "
                         "carving it out of train would change the benchmark: restore or fix those images")
    official = present | set(official or ())
    yield from assign_splits((record_from_dict(m) for m in metas), seed=params.seed, val_fraction=params.val_fraction,
                             test_fraction=params.test_fraction, by=params.split_by, folds=params.folds,
                             fold=params.fold, official=official)


def fold_assignment(metas: dict[str, dict]) -> str | None:
    """A digest of which fold every sample was dealt to (k-fold; None otherwise), the same in every
    fold's splits: folds summarised together must come from one preparation of the data, as a face
    lost or gained before the shard stage changes the folds' contents and a person lost or gained
    deals the others anew (:mod:`fermodels.crossval` compares it)."""
    return _fold_digest({key: m["extra"]["fold"] for key, m in metas.items() if "fold" in (m.get("extra") or {})})


def _fold_digest(folds: dict[str, object]) -> str | None:
    """:func:`fold_assignment` of the fold each key was dealt to (``folds``; empty: not k-fold)."""
    dealt = sorted(folds.items())
    return hashlib.sha256(json.dumps(dealt).encode()).hexdigest()[:16] if dealt else None


def placed(meta_json: bytes, record: dict, meta: dict | None = None) -> bytes:
    """The aligned sample's ``json`` with the split (and extra) the shard stage placed it in: the
    reader's split is empty for a dataset without one, and "train" for a face carved into val.
    ``meta``: ``meta_json`` parsed already."""
    meta = json.loads(meta_json) if meta is None else meta
    if all(meta.get(f) == record[f] for f in ("split", "extra")):
        return meta_json
    return json.dumps({**meta, "split": record["split"], "extra": record["extra"]}, sort_keys=True).encode()


def params_hash(*sections: object) -> str:
    blob = json.dumps([asdict(s) for s in sections], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_shard(aligned_dir: str | Path, derived_dir: str | Path, params: ShardParams,
              out_dir: str | Path) -> StageReport:
    """Join, split and shuffle every sample into ``out_dir/<split>/`` (``out_dir`` replaced as a whole)."""
    report = StageReport("shard")
    inputs = _inputs_digest(aligned_dir, derived_dir)
    for folder, name, stage in ((aligned_dir, "aligned", "align"), (derived_dir, "derived", "derive")):
        require_made_by(require_dir(folder, name, f"run the {stage} stage first"), stage,
                        f"pass data/<name>/aligned, then data/<name>/derived (or run the {stage} stage first)")
    aligned = index_chunks(aligned_dir, ALIGNED)
    derived = index_chunks(derived_dir, DERIVED, aligned)       # aligned's key strings, shared
    made_from = report_inputs(derived_dir).get(ALIGNED)
    if made_from is not None and made_from != output_digest(aligned_dir, ALIGNED):
        raise ValueError(f"{derived_dir} was derived from another output of the align stage than {aligned_dir} "
                         "holds now (align ran again since, with other settings or data): run the derive stage "
                         "again before sharding")
    if set(aligned) != set(derived):
        missing = sorted(set(aligned) ^ set(derived))[:5]
        raise ValueError(f"aligned and derived samples differ (e.g. {missing}); re-run derive")
    if not aligned:                 # empty shards would only fail later, in train or evaluate
        raise ValueError(f"no samples to shard in {aligned_dir}: every record was dropped before this stage "
                         f"({WHERE_DROPS})")
    for key, members in aligned.items():       # the align stage writes both for every sample
        if lost := [e for e in ("jpg", "json") if e not in members]:
            where = next(iter(members.values()))[0]
            raise ValueError(f"{where}: sample {key!r} has no {' and no '.join(lost)}: the align stage's output is "
                             "damaged; run the align stage again (`dvc repro --force --single-item align@<name>`)")
    # The records are read where they are needed, never held: once for the splits they carry, once
    # streamed through the split assignment (keeping each key's split, and its fold under k-fold), and
    # as each sample is written. Held per sample: the compact member indexes and the key (~0.4 kB,
    # where the record fields held here took ~1.4 kB and dict indexes ~1.6 kB).
    with MemberReader() as read, _unchanged(inputs, aligned_dir, derived_dir):
        present = {m["split"] for m in _metas(aligned, read) if m["split"]}
    preprocess, detect, official, source = stage_settings(aligned_dir, derived_dir)
    by_split: dict[str, list[str]] = {s: [] for s in SPLITS}
    folds: dict[str, object] = {}                   # key -> the fold its extra carries (k-fold)
    with MemberReader() as read, _unchanged(inputs, aligned_dir, derived_dir, at_exit=False):   # the writes check
        for r in _assigned(_metas(aligned, read), present, params, official):
            key = aligned.key(r.key)                    # the index's string, not an equal one of the record's
            by_split[r.split].append(key)
            if "fold" in r.extra:
                folds[key] = r.extra["fold"]
    dealt = _fold_digest(folds)
    copies = report_notes(aligned_dir).get("cross_split_copies")  # recorded by align where not "keep"
    grey = report_notes(aligned_dir).get(GREY) is True          # recorded by align where every face is grey
    lost = report_notes(aligned_dir).get(HELD_OUT_DROPS, {})     # official val/test records detect or align dropped
    before = reasons_summed(lost) if dealt else {}      # k-fold: the dataset's lost pictures, in no fold
    if before:
        log.warning("shard: %d of this dataset's pictures were dropped in preparation (%s) and are in no fold: each "
                    "fold's figures, and those pooled over the folds, are over the faces kept, where a k-fold protocol "
                    "scores every picture once (recorded in the test split's _info.json, %s; %s)", sum(before.values()),
                    ", ".join(f"{r} {n}" for r, n in before.items()), DROPPED_BEFORE_FOLDS, WHERE_DROPS)
    with staged_dir(out_dir, OWNED) as out, MemberReader() as read, _unchanged(inputs, aligned_dir, derived_dir):
        near, apart, within = near_copies(by_split, aligned, read, dealt=dealt is not None)
        near = _near_copies_told(near, by_split, copies, report)
        if within:
            log.warning("shard: %d val/test face(s) are near copies of another face of their split (kept: "
                        "each copy is scored, so the figures count that face more than once), each listed in the "
                        "shards' report.json: %s%s", len(within),
                        "; ".join(f"{k} ~ {v}" for k, v in list(within.items())[:5]), " ..." if len(within) > 5 else "")
            report.notes[NEAR_WITHIN] = within
        if apart:
            log.warning("shard: %d val face(s) are near copies of test faces (kept, as published: the best checkpoint "
                        "is picked on faces the test scores again), each listed in the shards' report.json: %s%s",
                        len(apart), "; ".join(f"val/{k} ~ {v}" for k, v in list(apart.items())[:5]),
                        " ..." if len(apart) > 5 else "")
            report.notes[NEAR_VAL] = dict(sorted(apart.items()))
        for split, keys in by_split.items():
            keys.sort(key=lambda k: (unit_hash(params.seed + 1, k), k))
            info = _write_split(out / split, split, keys, aligned, derived, folds, params, read)
            if preprocess:
                info["preprocess"] = preprocess
            if detect:
                info["detect"] = detect
            if source:
                info["source"] = source
            if copies:                                  # align.cross_split_copies drop_train: others' info unchanged
                info["cross_split_copies"] = copies
            if grey:                                    # every face grey (R = G = B): others' info unchanged
                info[GREY] = True
            if lost.get(split) and not dealt and split in HELD_OUT:     # only then (k-fold deals every record)
                info[DROPPED_BEFORE] = lost[split]      # evaluate's figures leave these pictures out: it says so
            if dealt:                                                       # k-fold only: others' info unchanged
                info["fold_assignment"] = dealt
            if before and split == "test":        # the whole dataset's (a dropped record's fold is not known)
                info[DROPPED_BEFORE_FOLDS] = before
            if split == "train" and near and copies == "drop_train":       # only then: others' info unchanged
                info["near_copies_dropped"] = len(near)
            if split == "val" and not keys and params.val_fraction == 0:    # only then: others' info unchanged
                info["empty_by_setting"] = "shard.val_fraction 0"          # training keeps its last epoch
            atomic_write_text(out / split / INFO, json.dumps(info, indent=2, sort_keys=True) + "\n")
            report.notes[split] = len(keys)
        report.kept = len(aligned) - sum(report.dropped.values())
        report.write(out / REPORT)
    log.info("shard: %s", {k: v for k, v in report.notes.items() if k not in (NEAR, NEAR_VAL, NEAR_WITHIN)})  # pairs
    return report


NEAR = "near_copies_of_held_out"         # report.json: training key -> "<split>/<key>" of the held-out face
NEAR_VAL = "near_copies_val_test"        # report.json: val key -> "test/<key>" of the test face
NEAR_WITHIN = "near_copies_within_held_out"     # report.json: "<split>/<key>" -> "<split>/<key>" of an earlier face


def _near_copies_told(near: dict[str, str], by_split: dict[str, list[str]], copies: str | None,
                      report: StageReport) -> dict[str, str]:
    """``near`` (:func:`near_copies`) warned of and listed in the report; under ``drop_train`` its
    training faces are taken out of ``by_split`` (counted as dropped)."""
    if near:
        shown = "; ".join(f"train/{k} ~ {v}" for k, v in list(near.items())[:5])
        log.warning("shard: %d training face(s) are near copies of val/test faces (copies of one picture, "
                    "re-encoded, resized, mirrored or cropped a little otherwise, or the same face in the same pose "
                    "and framing; some such copies are missed), each listed in the shards' report.json: %s%s; %s",
                    len(near), shown, " ..." if len(near) > 5 else "",
                    "dropped (align.cross_split_copies drop_train)" if copies == "drop_train" else
                    "kept (align.cross_split_copies keep; drop_train drops them)")
        report.notes[NEAR] = dict(sorted(near.items()))        # every pair, to look at (`ferdata show`)
        if copies == "drop_train":
            by_split["train"] = [k for k in by_split["train"] if k not in near]
            report.dropped["near_copy_of_held_out"] += len(near)
    return near


# A sample's picture and face as align tells copies apart (:func:`_picture_face`), and its face vector
_Face = tuple[tuple[bytes, tuple[str, ...]], np.ndarray | None]


def near_copies(by_split: dict[str, list[str]], aligned: MemberIndex, read: MemberReader,
                dealt: bool = False) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Training faces that are near copies of a val or test face (:class:`ferdata.nearcopies.NearCopies`), and val
    faces that are near copies of a test face: each key -> "<split>/<key>" of the held-out face, the val and test
    faces read once for both; and the val and test faces that are near copies of another face of their own split
    (:func:`_within`: scored twice). The align stage compares files byte for byte; a copy re-encoded, resized,
    mirrored or cropped a little otherwise (its face found and aligned again), in one dataset's train and test (or in a
    carved split: one video's frames in a folder without subjects), was trained on and scored on, unnoticed; one
    in val picked the checkpoint on a face the test scores again (both kept, as published). Most such copies are
    found, not all (:func:`ferdata.nearcopies.face_vector`). A copy that is the same file (picture and face) is
    align's, counted there (``duplicates``) or dropped (``copy_of_held_out``): not named again, so both settings
    name the same faces. Under k-fold (``dealt``) the same file is named too: align saw the dataset's own splits
    (a train/val dataset's), which the folds deal anew, so its two copies can fall in a fold's train and test."""
    def face(key: str) -> tuple[_Face, dict]:           # and the sample's JSON, read and parsed once
        meta = json.loads(read(aligned[key]["json"]))
        return (_picture_face(meta), face_vector(read(aligned[key]["jpg"]))), meta

    held: dict[str, dict[str, _Face]] = {split: {} for split in HELD_OUT}
    people: dict[str, str] = {}                 # a held face's person (:func:`_person`), where the dataset says
    for split in HELD_OUT:
        for key in by_split[split]:
            held[split][key], meta = face(key)
            if who := _person(meta):
                people[key] = who
    training = ((key, face(key)[0]) for key in progress(by_split["train"], desc="near copies", unit="sample"))
    within = {pair: of for split in HELD_OUT for pair, of in _within(split, held[split], dealt, people).items()}
    return _near(training, held, dealt), _near(held["val"].items(), {"test": held["test"]}, dealt), within


def _within(split: str, faces: dict[str, _Face], same_files: bool = False,
            people: dict[str, str] | None = None) -> dict[str, str]:
    """The faces of one split that are near copies of another of its faces: "<split>/<key>" -> "<split>/<key>" of
    the first such face in key order (any order of the samples names the same pairs). The same file twice is
    align's (``duplicates``: ``within_<split>``): only its first face is compared, unless ``same_files`` (k-fold:
    align's splits are not these). Faces of one person (``people``: key -> :func:`_person`) are not paired with
    each other: a lab dataset's shots of one person are alike by nature and its protocol scores each (CK+'s last
    frames of a sequence, the neutral first frames of a person's sequences, JAFFE's repeated shots); a face near
    another person's is still named."""
    index, keys, files = NearCopies(), [], set()
    for key, (file, vector) in sorted(faces.items()):
        if (same_files or file not in files) and vector is not None:
            files.add(file)
            index.add(key, vector)
            keys.append(key)
    found = index.earlier([(people or {}).get(key) for key in keys])      # its own person's faces passed over
    return {f"{split}/{keys[i]}": f"{split}/{keys[j]}" for i, j in enumerate(found) if j >= 0}


def _person(meta: dict) -> str | None:
    """Whose face an aligned sample (its JSON) is, where the dataset says (its subject: CK+, JAFFE, a folder's
    ``subject`` option), else the recorded sequence its frame is of (``extra.sequence``), else None."""
    return meta.get("subject") or (meta.get("extra") or {}).get("sequence") or None


def _near(probes: Iterable[tuple[str, _Face]], held_splits: dict[str, dict[str, _Face]],
          same_files: bool = False) -> dict[str, str]:
    """Each of ``probes`` (key, face) that is a near copy of a face of ``held_splits`` (split -> key -> face), and
    which; ``probes`` are not read where ``held_splits`` hold no face. ``same_files``: a probe that is the same
    file as a held face is compared too (k-fold: align's splits are not these)."""
    if not any(held_splits.values()):
        return {}
    held = NearCopies()
    files: set[tuple[bytes, tuple[str, ...]]] = set()       # the held faces' pictures and boxes, as align knows them
    for split, faces in held_splits.items():
        for key, (file, vector) in faces.items():
            files.add(file)
            if vector is not None:
                held.add(f"{split}/{key}", vector)
    found: dict[str, str] = {}
    batch: list[tuple[str, np.ndarray]] = []

    def look_up() -> None:                  # a batch at a time: memory stays flat whatever the split's size
        found.update((key, other) for (key, _), other in zip(batch, held.find_many([h for _, h in batch])) if other)
        batch.clear()

    for key, (file, vector) in probes:
        if file in files and not same_files:
            continue        # the same file: align counted it (duplicates, across_splits_*) or dropped it (drop_train)
        if vector is not None:
            batch.append((key, vector))
            if len(batch) == 1024:
                look_up()
    look_up()
    return found


def _picture_face(meta: dict) -> tuple[bytes, tuple[str, ...]]:
    """An aligned sample's (its JSON's) picture and face as align's dedup tells copies apart
    (:func:`ferdata.dedup.face_identity` less the split)."""
    if not meta.get("sha256") or meta.get("box") is None:       # an older align output: no copy told apart
        return meta.get("key", "").encode(), ("?",)
    return face_identity({"sha256": meta["sha256"], "face": {"box": meta["box"]}, "record": meta})[:2]


def _inputs_digest(aligned_dir: str | Path, derived_dir: str | Path) -> tuple[str, str]:
    """The identity of the shard stage's two inputs (:func:`ferdata.layout.output_digest`)."""
    return output_digest(aligned_dir, ALIGNED), output_digest(derived_dir, DERIVED)


@contextmanager
def _unchanged(inputs: tuple[str, str], aligned_dir: str | Path, derived_dir: str | Path,
               at_exit: bool = True) -> Iterator[None]:
    """Fail the block (so no shards are swapped in) when its inputs are no longer those indexed: members
    are read by offset, and another run's output swapped in meanwhile gave other bytes (garbage), silently.
    ``at_exit`` False: checked where the block fails only (a later block, the writes', checks at its end)."""
    def check(cause: BaseException | None) -> None:
        if _inputs_digest(aligned_dir, derived_dir) != inputs:
            raise ValueError(f"{aligned_dir} or {derived_dir} was replaced while the shard stage read it (another "
                             "run of the align or derive stage of this dataset?): no shards were written; run the "
                             "shard stage again when that run has ended") from cause
    try:
        yield
    except Exception as err:          # what reading another output's bytes raises (a key it lacks: KeyError)
        check(err)
        raise
    if at_exit:
        check(None)


def stage_settings(aligned_dir: str | Path, derived_dir: str | Path) -> tuple[dict, dict, list[str] | None, dict]:
    """How these samples were made, from the stages' reports: the align and derive settings
    (``{"align": {...}, "derive": {...}}``, what training puts in its checkpoints so inference crops
    faces the same way), the detector's (``{"backend", "options"}``, so inference finds faces
    the same way), ``{}`` for outputs of a version that did not record them; the dataset's
    official splits (None where not recorded); and its source (reader and options: protocol, label
    mode, exclusions; ``{}`` where not recorded)."""
    align, derive = report_settings(aligned_dir), report_settings(derived_dir)
    detect, official = align.pop("detect", {}), align.pop("official_splits", None)
    source = align.pop("source", {})
    return ({"align": align, "derive": derive} if align and derive else {}), detect, official, source


def _metas(aligned: MemberIndex, read: MemberReader) -> Iterator[dict]:
    """Each sample's record fields, read from its ``json`` in the index's order; a ``json`` naming
    another key than its tar member's is refused (its sample would be lost, another written twice)."""
    for key, members in aligned.items():
        meta = _record_fields(json.loads(read(members["json"])))
        if meta.get("key") != key:
            raise ValueError(f"{members['json'][0]}: sample {key!r} has a json naming key {meta.get('key')!r}: the "
                             "align stage's output is damaged; run the align stage again (`dvc repro --force "
                             "--single-item align@<name>`)")
        yield meta


def _record(meta: dict, key: str, split: str, folds: dict) -> dict:
    """The record fields of sample ``key``'s ``json`` with the split (and extra) the assignment gave
    it, as :func:`assign` leaves them: ``extra`` as :func:`ferdata.records.record_from_dict` reads it,
    with its fold under k-fold."""
    record = _record_fields(meta)
    extra = dict(record.get("extra") or {})
    if key in folds:
        extra["fold"] = folds[key]
    record.update(split=split, extra=extra)
    return record


def _write_split(directory: Path, split: str, keys: list[str], aligned: MemberIndex, derived: MemberIndex,
                 folds: dict, params: ShardParams, read: MemberReader) -> dict:
    """Write one split's shards in ``keys`` order; returns its ``_info.json`` content."""
    summary, datasets = SplitSummary(), set()
    with TarShardWriter(directory, split, params.maxcount) as writer:
        for key in progress(keys, desc=f"shard {split}", unit="sample"):
            fields = {ext: read(m) for ext, m in {**aligned[key], **derived[key]}.items()}
            meta = json.loads(fields["json"])
            record = _record(meta, key, split, folds)
            fields["json"] = placed(fields["json"], record, meta)
            fields["cls"] = str(record["label"]).encode()
            writer.write(key, fields)
            summary.add(key, record["label"], record)
            datasets.add(record["dataset"])
    # the summaries: the class histogram (training's class counts), the test subsets (options.subsets
    # lists), the face backends (inference finds faces the same way) and the label modes training reads
    return {"split": split, "num_samples": len(keys),
            "shards": [{"name": f.path.name, "count": f.count, "sha256": f.sha256, "bytes": f.size}
                       for f in writer.files],
            "label_map": list(CLASSES), "datasets": sorted(datasets),
            "params_hash": params_hash(params), **summary.info()}
