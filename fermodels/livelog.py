"""The DVCLive logs of a training run as resuming reads them: which epochs every history file
holds (:func:`logged_epochs`), the rows of epochs being redone dropped (:func:`truncate_live`), and
``metrics.json`` rebuilt from the history when a write cut it off (:func:`repair_summary`). DVCLive
writes these in place, not through a temp file."""
from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import NamedTuple

from ferdata.atomic import atomic_write_text

log = logging.getLogger(__name__)


def logged_epochs(live_dir: str | Path) -> set[int]:
    """The epochs (DVCLive steps) that every history file of ``live_dir`` has a row for (its
    ``metrics.json``, the last row of each, is rebuilt when lost: :func:`repair_summary`). Where
    ``metrics.json`` is readable, only the files of the metrics it names count: a file it does not
    name is another run's (an experiment with another model, whose files `git restore` leaves behind,
    untracked), and its few rows made a finished run look unlogged, so it trained again from the start."""
    files = sorted(Path(live_dir).glob("plots/metrics/**/*.tsv"))
    named = _summary_metrics(Path(live_dir) / "metrics.json")
    if named is not None:
        base = Path(live_dir) / "plots" / "metrics"
        ours = [f for f in files if f.relative_to(base).with_suffix("").as_posix() in named]
        if others := [f.relative_to(base).as_posix() for f in files if f not in ours]:
            log.warning("%s holds history files its metrics.json does not name (another run's, left untracked by "
                        "`git restore`?): %s; not read (`git clean -n %s` lists what git does not track)",
                        base, ", ".join(others), base)
        files = ours
    if not files:
        return set()
    common: set[int] | None = None
    for tsv in files:
        _, rows, col, _ = _history(tsv)
        steps = {int(r[col]) for r in rows} if col is not None else set()
        common = steps if common is None else common & steps
    return common or set()


def _summary_metrics(metrics: Path) -> set[str] | None:
    """The metrics ``metrics.json`` holds, as history-file paths (``train/ce``); None when it is
    missing, unreadable or names none."""
    try:
        summary = json.loads(metrics.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict):
        return None
    names: set[str] = set()
    todo = [("", summary)]
    while todo:
        prefix, node = todo.pop()
        for key, value in node.items():
            if isinstance(value, dict):
                todo.append((f"{prefix}{key}/", value))
            else:
                names.add(f"{prefix}{key}")
    return names - {"step"} or None          # one naming no metric (no epoch logged yet) tells nothing


def repair_summary(live_dir: str | Path, epochs: int) -> None:
    """Rebuild DVCLive's ``metrics.json`` (each metric's last value and the step) from the history
    files when it is missing or unreadable, as a write cut off by a full disk leaves it (DVCLive
    writes it in place): resuming read it and failed, and a finished run ended with no metrics in it.
    Its keys come in the files' order, not the order they were logged in."""
    metrics = Path(live_dir) / "metrics.json"
    try:
        if isinstance(json.loads(metrics.read_text(encoding="utf-8")), dict):
            return
    except FileNotFoundError:
        pass
    except ValueError:
        log.warning("%s is unreadable (a write cut off?): rebuilt from the history files", metrics)
    if epochs < 1:                       # no epoch logged yet: DVCLive starts from none
        metrics.unlink(missing_ok=True)
        return
    summary: dict = {}
    for tsv in sorted(Path(live_dir).glob("plots/metrics/**/*.tsv")):
        header, rows, col, _ = _history(tsv)
        last = [r for r in rows if col is not None and int(r[col]) < epochs]
        if not last:
            continue
        *folders, name = tsv.relative_to(Path(live_dir) / "plots" / "metrics").with_suffix("").parts
        node = summary
        for folder in folders:
            node = node.setdefault(folder, {})
        text = last[-1][header.index(name)] if name in header else last[-1][-1]
        node[name] = int(text) if text.lstrip("-").isdigit() else float(text)
    atomic_write_text(metrics, json.dumps({**summary, "step": epochs - 1}, indent=4) + "\n")


class _History(NamedTuple):
    header: list[str]
    rows: list[list[str]]          # whole rows only
    step: int | None               # the index of the ``step`` column
    cut: int                       # rows left out


def _history(tsv: Path) -> _History:
    """A DVCLive history file's header, its whole rows and its ``step`` column. A row a cut-off
    write left short (DVCLive appends in place: a cell missing or empty, no step number) is left
    out: it stopped every later run with an IndexError or ``int('')``."""
    with open(tsv, newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f, delimiter="\t")) or [[]]
    col = header.index("step") if "step" in header else None
    whole = [r for r in rows if len(r) == len(header) and all(r) and (col is None or r[col].lstrip("-").isdigit())]
    return _History(header, whole, col, len(rows) - len(whole))


def truncate_live(live_dir: str | Path, from_step: int) -> None:
    """Drop DVCLive history rows logged at or after ``from_step`` (work redone after a kill)."""
    for tsv in Path(live_dir).glob("plots/metrics/**/*.tsv"):
        history = _history(tsv)
        if history.step is None:
            continue
        kept = [r for r in history.rows if int(r[history.step]) < from_step]
        if len(kept) != len(history.rows) or history.cut:    # replaced whole: a kill mid-write lost the rows
            text = io.StringIO(newline="")
            csv.writer(text, delimiter="\t", lineterminator="\n").writerows([history.header, *kept])
            atomic_write_text(tsv, text.getvalue())
