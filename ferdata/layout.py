"""Where things live on disk: a dataset's stage folders and the files in them.

The one definition of the per-dataset layout (``dvc.yaml`` mirrors it), of the file names one
stage writes and the next reads; stages import their inputs' names from here, not from the
stage that wrote them. (Which shard names an ``_info.json`` may list is :func:`ferdata.tario.listed_shard`.)
"""
from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections import Counter
from pathlib import Path
from typing import Collection, Iterator, Mapping

STAGES = ("detect", "aligned", "derived", "shards")
FACES = "faces.jsonl.gz"        # the detect table: one JSON row per kept record
ALIGNED = "aligned"             # chunk tar prefixes: aligned-000000.tar, derived-000000.tar
DERIVED = "derived"
INFO = "_info.json"
# What made a split: one shard run writes the same in every split's info file (a copy mixing two runs differs)
MADE_BY = ("params_hash", "preprocess", "detect", "source", "cross_split_copies", "fold_assignment", "grey_faces")
# Every face of a dataset is grey (R = G = B: FER2013's, JAFFE's, most of CK+'s pictures): the align report's note and
# each split's _info.json say so (true; absent otherwise), a model trained on such faces alone records it in its
# checkpoint's data, and inference turns a colour face grey for it (fermodels.predictor)
GREY = "grey_faces"
REPORT = "report.json"          # every stage's counts and the settings that shaped its output
DROPS = "dropped.jsonl"         # detect's and align's: every record not kept, one JSON line each
# detect's and align's report notes: records of an official val or test split dropped there, split -> reason ->
# count; the shard stage writes the sum into that split's _info.json (under DROPPED_BEFORE), evaluate reports it
HELD_OUT_DROPS = "held_out_dropped"
DROPPED_BEFORE = "dropped_in_preparation"
# ... and, under UNSPLIT, the lost records of a dataset without official splits (CK+, JAFFE): k-fold deals every
# record into a fold, so under k-fold the shard stage writes the sum of them all into the test split's _info.json
# (DROPPED_BEFORE_FOLDS: the whole dataset's, in no fold, as a dropped record's person is not recorded)
UNSPLIT = "unsplit"
DROPPED_BEFORE_FOLDS = "dropped_before_folds"
# align's drops of a copy: its picture is kept once (copy_of_held_out: in val or test, the train copy dropped)
COPIES = frozenset({"duplicate_image", "duplicate_key", "copy_of_held_out"})
# The align and derive params that shape a sample (not how fast it is made): their stages' reports
# record them, the shards and checkpoints carry them, inference repeats them.
SAMPLE_SETTINGS = {
    "align": ("size", "padding", "jpeg_quality"),
    "derive": ("heatmap_size", "heatmap_sigma", "jpeg_quality"),
}


def setting_differences(a: dict, b: dict, keys: list[tuple[str, str]] | None = None,
                        a_is: str = "", b_is: str = "") -> list[str]:
    """``section.key a-value (a_is) vs b-value (b_is)`` for each of ``keys`` (default: every key of
    either) whose value differs between two records of :data:`SAMPLE_SETTINGS`' shape."""
    if keys is None:
        keys = [(sec, k) for sec in sorted({*a, *b}) for k in sorted({*a.get(sec, {}), *b.get(sec, {})})]
    return [f"{sec}.{k} {a.get(sec, {}).get(k)!r}{a_is} vs {b.get(sec, {}).get(k)!r}{b_is}"
            for sec, k in keys if a.get(sec, {}).get(k) != b.get(sec, {}).get(k)]


def read_faces(detect_dir: str | Path) -> Iterator[dict]:
    """Rows of a detect table; a missing or damaged one is named with what to run."""
    path = Path(detect_dir) / FACES
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the detect stage first (`dvc repro detect@<name>` or "
                                "`ferdata prepare <name>`)")
    n = 0
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                yield json.loads(line)
    except (EOFError, gzip.BadGzipFile, ValueError, zlib.error) as err:
        raise ValueError(f"{path}: damaged after {n} rows ({type(err).__name__}: {err}); re-run the detect "
                         "stage") from None


def stage_dirs(data_dir: str | Path, name: str) -> dict[str, Path]:
    """``<data_dir>/<name>/{detect,aligned,derived,shards}``."""
    base = Path(data_dir) / name
    return {s: base / s for s in STAGES}


def _report_part(stage_dir: str | Path, part: str) -> dict:
    path = Path(stage_dir) / REPORT
    if not path.is_file():
        return {}
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:                 # UnicodeDecodeError too: zero-filled, cut short, edited
        report = err
    if not isinstance(report, dict):           # said with the file: "Expecting value: line 1 column 1 (char 0)"
        raise ValueError(f"{path} is damaged ({report if isinstance(report, ValueError) else 'no JSON object'}): "
                         f"re-run the stage that wrote {Path(stage_dir).name} (`dvc repro --force` it, or "
                         "`ferdata prepare`)")
    return report.get(part) or {}


def report_settings(stage_dir: str | Path) -> dict:
    """The ``settings`` a stage's report records (``{}``: no report, or one from a version that did
    not record them)."""
    return _report_part(stage_dir, "settings")


def require_made_by(stage_dir: str | Path, stage: str, fix: str) -> None:
    """``stage_dir`` must be ``stage``'s output, as its report says: another stage's folder (two
    inputs given the wrong way round) gave an empty output, or an error about something else."""
    try:
        made_by = json.loads((Path(stage_dir) / REPORT).read_text(encoding="utf-8")).get("stage")
    except (OSError, ValueError, AttributeError):
        made_by = None
    if made_by != stage:
        found = f"says {made_by!r}" if made_by else "is missing or unreadable"
        raise ValueError(f"{stage_dir} is no {stage} stage's output (its {REPORT} {found}): {fix}")


def report_inputs(stage_dir: str | Path) -> dict:
    """What a stage's report says its output was made from (``{}``: no report, or an older one)."""
    return _report_part(stage_dir, "inputs")


def report_notes(stage_dir: str | Path) -> dict:
    """The ``notes`` of a stage's report (``{}``: no report)."""
    return _report_part(stage_dir, "notes")


# The report note in which a chunked stage records :func:`ferdata.tario.content_digest` of its chunks.
CONTENT = "chunks_sha256"


def output_digest(stage_dir: str | Path, prefix: str) -> str:
    """The identity of a chunked stage output, without reading its chunks: its report (counts, drops,
    settings, and :data:`CONTENT`, the chunks' own digest, where the stage records it: align does) and
    the names and sizes of its ``<prefix>-*.tar`` chunks (not mtimes: a ``dvc checkout`` keeps it).
    Another run with other settings, data or code changes it, and the same run again (deterministic
    output) does not."""
    folder = Path(stage_dir)
    h = hashlib.sha256((folder / REPORT).read_bytes() if (folder / REPORT).is_file() else b"")
    for chunk in sorted(folder.glob(f"{prefix}-*.tar")):
        h.update(f"\0{chunk.name}\0{chunk.stat().st_size}".encode())
    return h.hexdigest()


def folded_train(official_splits: Collection[str] | None) -> bool:
    """Whether k-fold deals a dataset's official train split into folds: it has no official test split (a folder
    of train/ and val/, CK+; :func:`ferdata.splits.assign_splits`). Then detect and align count the train records
    they drop too (under "train"), each in no fold. None: not known (the splits not recorded), counted as before."""
    return official_splits is not None and "test" not in official_splits


def reasons_summed(counts: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """``anything -> reason -> count`` (splits, datasets) summed over its first level, reasons sorted."""
    total: Counter[str] = Counter()
    for reasons in counts.values():
        total.update(reasons)
    return dict(sorted(total.items()))


def counted_by_split(*parts: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """``split -> reason -> count`` mappings summed, as plain sorted dicts (a report's :data:`HELD_OUT_DROPS`
    note: detect's, then detect's and align's together)."""
    total: dict[str, Counter[str]] = {}
    for part in parts:
        for split, reasons in part.items():
            total.setdefault(split, Counter()).update(reasons)
    return {split: dict(sorted(total[split].items())) for split in sorted(total)}
