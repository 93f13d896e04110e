"""Where ``ferdata predict``'s rows go: CSV and JSON text, written as the faces are scored.

A run gathers its rows and per-picture summary in :class:`Results`; :func:`written_as_scored` writes
the CSV lines as each batch is scored (stdout, or ``--out``'s :func:`partial_path`, renamed to ``--out``
when the run ends), so a run that is stopped keeps what it scored. Text cells that a spreadsheet would
run as formulas are made inert (:func:`inert`).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ferdata.atomic import atomic_write_bytes, fsync_dir, try_lock
from ferdata.errors import shown

log = logging.getLogger(__name__)
NAME_MAX = 255                                      # bytes in a file name (Linux, macOS, Windows file systems)
PARTIAL = ".partial"                                # --out's rows while the run goes on (partial_path)


class Results:
    """What a predict run has scored so far: ``rows`` (one per face) and ``summary`` (one per image or
    frame), and ``skipped``, what the input folders held that is not read (hidden files, other files, with
    why: :func:`fermodels.predict.expand_inputs`); each batch of rows is also handed to ``on_rows``
    (:func:`written_as_scored`) when set."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.summary: list[dict] = []
        self.skipped: list[dict] = []
        self.on_rows: Callable[[list[dict]], None] | None = None

    def add(self, rows: list[dict]) -> None:
        self.rows += rows
        if self.on_rows is not None and rows:
            self.on_rows(rows)


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")     # what spreadsheets read a cell as a formula by


def inert(value: object) -> object:
    """A CSV text cell a spreadsheet shows as text: a file name or class name (from a checkpoint made
    elsewhere) starting like a formula (``=HYPERLINK(...)``, ``@SUM(...)``) gets a leading ``'``, as
    OWASP advises; numbers and other text are kept as they are."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value


def _csv_rows(buf: io.StringIO):
    """``writerow`` for CSV lines ending in ``\\n`` whose cells holding a carriage return are quoted:
    Python before 3.11.9 / 3.12.3 (CPython gh-67044) quotes only the characters of ``lineterminator``, so
    a file named ``a\\rb.jpg`` was written bare and every CSV reader split its row in two there. Such a
    row is written with every text cell quoted (numbers stay bare: readers parse them alike)."""
    plain = csv.writer(buf, lineterminator="\n")
    quoted = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)

    def writerow(cells: list) -> None:
        (quoted if any(isinstance(c, str) and "\r" in c for c in cells) else plain).writerow(cells)
    return writerow


def csv_text(rows: list[dict], classes: tuple[str, ...], header: bool = False) -> str:
    """The CSV lines of ``rows`` (each ending in ``\\n``), after the header line when ``header``."""
    buf = io.StringIO()
    writerow = _csv_rows(buf)
    if header:
        writerow([inert(c) for c in ("source", "frame", "face", "x0", "y0", "x1", "y1", "score", "expression",
                                     *classes, "time")])
    for r in rows:              # time: a video frame's timestamp in seconds (variable frame rates too); images none
        writerow([inert(r["source"]), r["frame"], r["face"], *r["box"], r["score"], inert(r["expression"]),
                  *(r[c] for c in classes), r.get("time")])
    return buf.getvalue()


def json_text(rows: list[dict], summary: list[dict], scoring: dict | None = None, complete: bool = True,
              skipped: list[dict] | None = None) -> str:
    """The ``.json`` output: faces, per-image summary, what the input folders held that was not read
    (``skipped``, each with its reason), ``scoring`` (how the faces were scored, e.g. in grey or with flip
    TTA, which a CSV cannot say), and ``"complete": false`` for a run that was stopped."""
    return json.dumps({"faces": rows, "images": summary, "skipped": skipped or [],
                       **({"scoring": scoring} if scoring else {}),
                       **({} if complete else {"complete": False})}, indent=2) + "\n"


def scored_summary(rows: list[dict], summary: list[dict]) -> list[dict]:
    """The entries of ``summary`` whose faces all have their rows in ``rows``: a run stopped between batches
    has listed pictures whose faces were found but not yet scored (up to a batch of them), which a stopped
    ``.json`` must not list as done."""
    have = Counter((r["source"], r["frame"]) for r in rows)
    return [s for s in summary if have[s["source"], s["frame"]] >= s.get("faces", 0)]


def partial_path(out: Path) -> Path:
    """Where a run writing ``out`` keeps what it scored until it ends (then renamed to ``out``), and leaves
    it when stopped: ``<out>.partial``; a name too long for that keeps its start and gains a digest."""
    name = out.name + PARTIAL
    if len(os.fsencode(name)) > NAME_MAX:
        digest = "-" + hashlib.sha256(os.fsencode(out.name)).hexdigest()[:16]
        stem = out.name
        while len(os.fsencode(stem + digest + PARTIAL)) > NAME_MAX:
            stem = stem[:-1]
        name = stem + digest + PARTIAL
    return out.with_name(name)


def _held_partial(partial: Path, out: Path):
    """``partial`` opened for this run's CSV lines, emptied, and locked (:func:`ferdata.atomic.try_lock`) until
    it is renamed to ``out``: two runs writing one ``--out`` (a cron job overrunning the next) wrote into one
    file, the first renamed it with the second's lines over its own (NUL bytes, rows lost) and the second
    failed after scoring every picture."""
    while True:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT, 0o666)
        if not try_lock(fd, forked_children_drop=False):
            os.close(fd)
            raise BlockingIOError(f"--out {out}: another `ferdata predict` is writing {partial} now; wait for it "
                                  "to end, or choose another --out")
        if os.path.samestat(os.fstat(fd), os.stat(partial)):   # not the file another run has just renamed
            os.ftruncate(fd, 0)
            return open(fd, "w", encoding="utf-8", errors="surrogateescape", newline="")
        os.close(fd)


@contextmanager
def written_as_scored(results: Results, classes: tuple[str, ...], out: Path | None,
                      stream: Callable[[str], None] | None, scoring: dict) -> Iterator[None]:
    """Write a run's rows as the block scores them: CSV lines to ``stream`` (stdout) or to ``out``'s
    :func:`partial_path`, flushed with each batch, renamed to ``out`` when the block ends; a ``.json``
    whole at the end. A run stopped by an error or Ctrl-C leaves what it scored in the partial file
    (a ``.json`` one ``"complete": false``), and one killed, every batch written before (a CSV)."""
    partial = None if out is None else partial_path(out)
    csv_out = out is None or out.suffix.lower() == ".csv"
    f = _held_partial(partial, out) if partial and csv_out else None
    write = f.write if f is not None else stream if csv_out else None
    if write is not None:
        write(csv_text([], classes, header=True))

        def passed_on(rows: list[dict]) -> None:
            write(csv_text(rows, classes))
            if f is not None:
                f.flush()
        results.on_rows = passed_on
    try:
        yield
    except BaseException:
        if f is not None:
            f.close()
        if partial is not None and results.rows:
            if not csv_out:
                listed = scored_summary(results.rows, results.summary)     # not the pictures still pending
                atomic_write_bytes(partial, json_text(results.rows, listed, scoring, complete=False,
                                                      skipped=results.skipped)
                                   .encode("utf-8", errors="surrogateescape"))
            log.warning("predict stopped: the %d face row(s) scored so far are in %s", len(results.rows),
                        shown(partial))
        elif partial is not None:
            partial.unlink(missing_ok=True)
        raise
    if f is not None:
        with f:
            f.flush()
            os.fsync(f.fileno())
            os.replace(partial, out)            # still held: a run starting now writes a new partial file
        fsync_dir(out.parent)
    elif out is not None:
        atomic_write_bytes(out, json_text(results.rows, results.summary, scoring, skipped=results.skipped)
                           .encode("utf-8", errors="surrogateescape"))
        partial.unlink(missing_ok=True)         # an earlier stopped run's, which this one has replaced
