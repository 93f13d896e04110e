"""Detection cache keyed by image content hash + backend signature (SQLite, main process only).

A repeated run with unchanged inputs performs zero detections; new images are the
only ones detected. The cache lives outside DVC outputs (DVC deletes outputs before
re-running a stage), under ``detect.cache_dir``. Puts are buffered and written in one short
transaction every ``COMMIT_EVERY`` puts or ``COMMIT_SECONDS``, so a killed run keeps (and a re-run
skips) most finished work, and another process using the same cache (a second dataset, another
``--part``) waits milliseconds for the write lock (a transaction held open across 256 puts kept it
for minutes, and the other run failed after 60 s).
Caches filled on several machines (each detecting a part of a dataset) merge into one with
:meth:`DetectionCache.merge`. An entry that does not parse (a damaged file) is a miss: the image
is detected again and the entry replaced; merging skips entries cut short or overwritten and
counts them. A cache file that cannot be used at all (not SQLite, damaged, its disk full or
read-only) is a :class:`CacheError` naming it and what to do.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np

from ferdata.faces.base import Face

log = logging.getLogger(__name__)
COMMIT_EVERY = 256
COMMIT_SECONDS = 2.0
FILE = "detections.sqlite"
BAD_ENTRY = (ValueError, KeyError, TypeError, IndexError)    # what parsing a damaged entry raises
R = TypeVar("R")


class CacheError(OSError):
    """The cache file cannot be read or written: named, with what to do (a user error, not a bug)."""

    def __init__(self, path: Path, err: sqlite3.DatabaseError) -> None:
        if isinstance(err, sqlite3.OperationalError) and "locked" in str(err):
            fix = ("another process held it for over a minute (a detect run on the same detect.cache_dir, or a "
                   "program holding it open?); run again when it is done")
        elif isinstance(err, sqlite3.OperationalError):    # disk full or read-only, I/O error
            fix = "is its disk full or read-only? detect.cache_dir sets where the cache lives"
        else:                                              # not a database, or malformed
            fix = "the file is damaged: delete it (it only saves time: its images are detected again)"
        super().__init__(f"detection cache {path}: {err}; {fix}")


def _named(method: Callable[..., R]) -> Callable[..., R]:
    """A :class:`DetectionCache` method whose SQLite errors become a :class:`CacheError` naming the file."""
    @functools.wraps(method)
    def wrapper(self: "DetectionCache", *args: Any, **kwargs: Any) -> R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as err:
            raise CacheError(self.path, err) from err
    return wrapper


EXP_WORKSPACE = (".dvc", "tmp", "exps")     # DVC's temporary experiment workspaces: <repo>/.dvc/tmp/exps/<tmp>/
STANDALONE = "standalone"                   # `dvc exp run --temp`'s: <repo>/.dvc/tmp/exps/standalone/<tmp>/


def experiment_home(cwd: str | Path) -> Path | None:
    """Where ``cwd`` lies in the repository a temporary DVC experiment workspace was made from
    (``dvc exp run --queue``, ``dvc queue start``: ``<repo>/.dvc/tmp/exps/<tmp>/...``; ``--temp``:
    ``<repo>/.dvc/tmp/exps/standalone/<tmp>/...``), or ``None`` outside one."""
    parts = Path(cwd).absolute().parts
    for i in range(len(parts) - len(EXP_WORKSPACE) - 1, 0, -1):
        if parts[i:i + len(EXP_WORKSPACE)] == EXP_WORKSPACE:
            tmp = i + len(EXP_WORKSPACE)
            if parts[tmp] == STANDALONE and len(parts) > tmp + 1:
                tmp += 1
            return Path(*parts[:i], *parts[tmp + 1:])
    return None


def cache_folder(directory: str | Path) -> Path:
    """The folder of the cache ``directory`` names: ``~`` expanded (it made a folder named ``~`` here),
    and the cache's file, named instead of its folder, taken as its folder. A relative one in a temporary
    DVC experiment workspace is taken in the repository it was made from: there it would start empty
    (the cache is no DVC output: the workspace holds none of it), detect every image again and be
    deleted with the workspace; queued experiments running side by side share it as two checkouts do."""
    path = Path(directory).expanduser()
    if not path.is_absolute() and (home := experiment_home(Path.cwd())) is not None:
        log.info("detect.cache_dir %s: in the repository this experiment was queued from, %s", directory, home / path)
        path = home / path
    return path.parent if path.name == FILE and not path.is_dir() else path


def cache_file(source: str | Path) -> Path:
    """The ``detections.sqlite`` of a cache given as its folder or as the file; ``FileNotFoundError``
    when there is none."""
    path = Path(source)
    if path.is_dir():
        path = path / FILE
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no detection cache there (expected a folder with {FILE}, or the file)")
    return path


def _misnamed_wal(path: Path) -> None:
    """Refuse a cache file copied under another name (``m2.sqlite``) beside a killed run's
    ``detections.sqlite-wal`` copied under its own: SQLite reads a database's WAL by the database's
    name (``m2.sqlite-wal``), so its entries would be left out, silently. A WAL of that name with no
    ``detections.sqlite`` beside it belongs to no database there: it is this copy's."""
    if path.name == FILE or path.with_name(path.name + "-wal").exists():
        return
    stray = path.with_name(FILE + "-wal")
    if stray.is_file() and stray.stat().st_size and not path.with_name(FILE).exists():
        raise ValueError(f"{path}: the {stray.name} beside it (a killed run's last entries?) is not read for a file "
                         f"named {path.name}: SQLite reads {path.name}-wal; rename it so, or copy the machine's "
                         "cache folder whole and merge the folder")


def _read_only(path: Path) -> sqlite3.Connection:
    """Another cache's file opened read-only (a merge never writes to its sources): ``mode=ro``, which
    reads a consistent snapshot while a run may write it (SQLite leaves its ``-shm``/``-wal`` files
    beside it, no entry changed). A WAL database cannot be opened so on read-only media (SQLite must
    make those files): there it is read ``immutable``, as no run can be writing it, unless a ``-wal``
    beside it holds entries (``immutable`` would leave them out: refused, with what to do)."""
    _misnamed_wal(path)
    uri = path.resolve().as_uri()
    db = None
    try:
        db = sqlite3.connect(uri + "?mode=ro", uri=True)
        db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.OperationalError:          # "unable to open database file", "attempt to write a readonly ..."
        if db is not None:
            db.close()
        wal = path.with_name(path.name + "-wal")
        if wal.is_file() and wal.stat().st_size:        # immutable reads the main file alone: not these entries
            raise ValueError(f"{path}: its {wal.name} (a killed run's last entries) can be read only where SQLite "
                             f"may write beside it: copy {path.name} and {wal.name} to a writable folder and merge "
                             "from there")
        return sqlite3.connect(uri + "?immutable=1", uri=True)
    except sqlite3.DatabaseError:             # no database: the caller's first query says so, naming it
        if db is None:
            raise
    return db


def readable_cache(source: str | Path) -> Path:
    """:func:`cache_file`, checked to open as a detection cache (read-only): a merge refuses a
    source that is none before it opens, or makes, the cache it merges into."""
    path = cache_file(source)
    src = _read_only(path)
    try:
        src.execute("SELECT sha, sig, value FROM det LIMIT 1").fetchall()
    except sqlite3.DatabaseError as e:
        raise _not_a_cache(source, path, e) from None
    finally:
        src.close()
    return path


def _not_a_cache(source: str | Path, path: Path, err: sqlite3.DatabaseError) -> ValueError:
    """The error for a source that holds no detection table: a cache whose run was killed before SQLite first
    copied its WAL into it (it does so every ~4 MB, and when the run ends) holds its detections in the
    ``-wal`` beside it alone; copied without it, that cache was called no ferdata cache at all."""
    try:
        with open(path, "rb") as f:
            header = f.read(20)
    except OSError:
        header = b""
    wal = path.with_name(path.name + "-wal")
    if (header.startswith(b"SQLite format 3\0") and header[18:19] == b"\x02" and "no such table" in str(err)
            and not (wal.is_file() and wal.stat().st_size) and _no_tables(path)):
        return ValueError(f"{source}: a detection cache whose entries are all in its {wal.name}, not copied with it "
                          f"(a run killed early keeps them there): copy {wal.name} beside {path.name} (the machine's "
                          "cache folder whole) and merge again")
    return ValueError(f"{source} is not a ferdata detection cache ({err})")


def _no_tables(path: Path) -> bool:
    """Whether the database file at ``path`` itself holds no table (a killed run's cache: its schema is in its WAL
    too); a WAL database of another program holds its own tables, and is no cache whose WAL was left behind."""
    try:
        db = sqlite3.connect(path.resolve().as_uri() + "?immutable=1", uri=True)
        try:
            return not db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return False


_BY_SIGNATURE = "SELECT sig, COUNT(*) FROM det GROUP BY sig ORDER BY sig"      # entries per backend signature
# The parts of datasets detected whole into a cache (`ferdata detect --part K/N` run to its end): merged with the
# entries, they tell the machine that merges which parts it lacks (a machine's cache not copied, a run killed,
# parts given other N), before `dvc repro` detects those images there, on one machine, without a word.
_PARTS_TABLE = "CREATE TABLE IF NOT EXISTS parts (dataset TEXT, sig TEXT, part TEXT, PRIMARY KEY (dataset, sig, part))"


def stored_signatures(source: str | Path) -> dict[str, int]:
    """Entries per backend signature of the cache at ``source`` (:func:`cache_file`), read as a merge reads its
    sources (read-only: ``cache prune --dry-run`` changes nothing, where opening a :class:`DetectionCache` makes the
    file WAL and its table, and is refused on read-only media or another user's cache)."""
    path = cache_file(source)
    db = _read_only(path)
    try:
        return dict(db.execute(_BY_SIGNATURE).fetchall())
    except sqlite3.DatabaseError as err:
        raise CacheError(path, err) from err
    finally:
        db.close()


def _source_rows(rows: Iterable[tuple], source: str | Path) -> Iterator[tuple]:
    """The rows of a cache being merged in; its damage is named as its own, not this cache's."""
    try:
        yield from rows
    except sqlite3.DatabaseError as err:
        raise ValueError(f"{source} is not a whole ferdata detection cache ({err}); nothing after this "
                         "point of it was merged") from None


@dataclass(frozen=True)
class Detection:
    """All faces found in one image, and the image's (h, w)."""

    shape: tuple[int, int]
    faces: tuple[Face, ...]

    @cached_property
    def json(self) -> str:
        """The cached form (computed once; travels with the object between processes)."""
        return json.dumps({"shape": list(self.shape), "faces": [face_to_dict(f) for f in self.faces]},
                          separators=(",", ":"))

    def to_json(self) -> str:
        return self.json

    @staticmethod
    def from_json(text: str) -> "Detection":
        """The detection of a cache entry; ``ValueError`` for one of the wrong form (a damaged or
        hand-edited entry parses as JSON yet would crop the wrong place)."""
        d = json.loads(text)
        shape = d["shape"]
        if not (isinstance(shape, list) and len(shape) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
            raise ValueError(f"shape {shape!r} is not an image's (height, width)")
        return Detection(tuple(shape), tuple(face_from_dict(f) for f in d["faces"]))

    def canonical(self) -> "Detection":
        """The detection as the cache stores it (coordinates rounded to 1/1000 px, scores to
        1e-5), so a fresh result and its cached copy select and serialise identically.
        Equal to ``from_json(to_json())``, without the JSON round trip."""
        return Detection(tuple(int(v) for v in self.shape), tuple(_rounded(f) for f in self.faces))


def _looks_whole(value: object) -> bool:
    """Whether a stored entry has the shape :meth:`Detection.to_json` writes, checked without
    parsing it (merging 100k entries: 2 s, 6 s parsing each); an entry damaged inside is still
    caught when read (:meth:`DetectionCache.get`: a miss)."""
    return isinstance(value, str) and value.startswith('{"shape":[') and value.endswith("]}")


def _parses(value: object) -> bool:
    """Whether a stored entry is one :meth:`DetectionCache.get` can use (not a damaged one, a miss)."""
    try:
        Detection.from_json(value)
    except BAD_ENTRY:
        return False
    return True


def _round_points(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.asarray(np.asarray(a, np.float64).round(3), np.float32)


def _rounded(f: Face) -> Face:
    return dataclasses.replace(f, box=tuple(round(float(v), 3) for v in f.box), score=round(float(f.score), 5),
                               kps5=_round_points(f.kps5), lmk68=_round_points(f.lmk68))


def face_to_dict(f: Face) -> dict[str, Any]:
    """JSON-safe dict of a face (coordinates rounded to 1/1000 px)."""
    return {"box": [round(float(v), 3) for v in f.box], "score": round(float(f.score), 5),
            "kps5": np.asarray(f.kps5, np.float64).round(3).tolist(),
            "lmk68": np.asarray(f.lmk68, np.float64).round(3).tolist() if f.lmk68 is not None else None,
            "backend": f.backend}


def face_from_dict(d: dict[str, Any]) -> Face:
    """The face of :func:`face_to_dict`; ``ValueError`` for one of another form (points not (5, 2) or
    (68, 2), a box not four numbers, anything not finite)."""
    box, kps5 = np.asarray(d["box"], np.float64), np.asarray(d["kps5"], np.float32)
    lmk68 = np.asarray(d["lmk68"], np.float32) if d.get("lmk68") is not None else None
    score = d["score"]
    if (box.shape != (4,) or kps5.shape != (5, 2) or (lmk68 is not None and lmk68.shape != (68, 2))
            or isinstance(score, bool) or not isinstance(score, (int, float))
            or not all(np.isfinite(a).all() for a in (box, kps5, lmk68, np.float64(score)) if a is not None)):
        raise ValueError(f"not a face: box {box.shape}, kps5 {kps5.shape}, "
                         f"lmk68 {None if lmk68 is None else lmk68.shape}, score {score!r}")
    return Face(tuple(d["box"]), d["score"], kps5, lmk68,
                d.get("backend", ""))


@dataclass
class MergeCounts:
    """What :meth:`DetectionCache.merge` did with the other cache's entries."""

    added: int = 0
    present: int = 0        # the same detection was here already
    differing: int = 0      # another detection of the same image and settings was here: kept that one
    corrupt: int = 0        # entries that do not parse: not added


def _to_wal(db: sqlite3.Connection, timeout: float = 60) -> None:
    """Switch ``db`` to WAL, waiting as long as its busy timeout for another process creating the same
    cache: a new file is in rollback mode, where SQLite answers the switch with "database is locked" at
    once (no busy wait: a deadlock guard) while the other connection holds its write lock."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


class DetectionCache:
    """``get``/``put`` detections by (sha256 of the encoded image, backend signature)."""

    @_named
    def __init__(self, directory: str | Path) -> None:
        path = cache_folder(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / FILE
        self.db = sqlite3.connect(self.path, timeout=60)
        _to_wal(self.db)
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS det (sha TEXT, sig TEXT, value TEXT, PRIMARY KEY (sha, sig))")
        self.db.execute(_PARTS_TABLE)
        self.db.commit()
        self._pending: dict[tuple[str, str], str] = {}         # (sha, sig) -> JSON, not yet written
        self._written = time.monotonic()

    @_named
    def get(self, sha: str, sig: str) -> Detection | None:
        """The cached detection, or ``None`` on a miss (a miss is not an error)."""
        value = self._pending.get((sha, sig))
        if value is None:
            row = self.db.execute("SELECT value FROM det WHERE sha=? AND sig=?", (sha, sig)).fetchone()
            if row is None:
                return None
            value = row[0]
        try:
            return Detection.from_json(value)
        except BAD_ENTRY as e:
            log.warning("%s: damaged entry for image %s (%s: %s); detecting it again", self.path, sha[:12],
                        type(e).__name__, e)
            return None

    @_named
    def other_signatures(self, sha: str, sig: str) -> list[str]:
        """The signatures other than ``sig`` that image ``sha`` is cached under."""
        stored = {s for (s,) in self.db.execute("SELECT sig FROM det WHERE sha=? AND sig!=?", (sha, sig))}
        return sorted(stored | {s for h, s in self._pending if h == sha and s != sig})

    @_named
    def put(self, sha: str, sig: str, det: Detection) -> None:
        self._pending[sha, sig] = det.to_json()
        if len(self._pending) >= COMMIT_EVERY or time.monotonic() - self._written >= COMMIT_SECONDS:
            self.flush()

    @_named
    def flush(self) -> None:
        """Write the buffered puts in one transaction (the write lock is held only meanwhile)."""
        if self._pending:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO det VALUES (?, ?, ?)",
                                    [(sha, sig, value) for (sha, sig), value in self._pending.items()])
            self._pending = {}
        self._written = time.monotonic()

    @_named
    def merge(self, source: str | Path) -> MergeCounts:
        """Add the entries of another cache (its folder or its ``detections.sqlite``, read-only).
        An entry already here stays as it is; one whose stored detection differs is counted
        (detection on another CPU can differ in the last rounded digit); one here that does not parse
        (damaged: a miss) is replaced by the source's, counted as added."""
        src_path = cache_file(source)
        if src_path.resolve() == self.path.resolve():
            raise ValueError(f"{source} is this cache itself; give the other machines' caches")
        self.flush()
        src = _read_only(src_path)
        try:
            try:
                rows = src.execute("SELECT sha, sig, value FROM det")
            except sqlite3.DatabaseError as e:
                raise _not_a_cache(source, src_path, e) from None
            counts = MergeCounts()
            has_parts = src.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='parts'").fetchone()
            # The look-ups and inserts under one write lock: a detect run storing the same image between
            # a look-up ("not here") and its INSERT failed the merge ("UNIQUE constraint failed").
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for sha, sig, value in _source_rows(rows, source):
                    if not _looks_whole(value):
                        counts.corrupt += 1
                        continue
                    have = self.db.execute("SELECT value FROM det WHERE sha=? AND sig=?", (sha, sig)).fetchone()
                    if have is None:
                        self.db.execute("INSERT INTO det VALUES (?, ?, ?)", (sha, sig, value))
                        counts.added += 1
                    elif have[0] == value:
                        counts.present += 1
                    elif not _parses(have[0]):          # damaged here (a miss for get): take the whole one
                        self.db.execute("UPDATE det SET value=? WHERE sha=? AND sig=?", (value, sha, sig))
                        counts.added += 1
                    else:
                        counts.differing += 1
                if has_parts:
                    for row in _source_rows(src.execute("SELECT dataset, sig, part FROM parts"), source):
                        self.db.execute("INSERT OR IGNORE INTO parts VALUES (?, ?, ?)", row)
            except ValueError as err:              # a source damaged part way: what it gave before is kept
                err.add_note(f"the {counts.added} entries added before it are kept")
                raise
            finally:
                self.db.commit()
        finally:
            src.close()
        return counts

    @_named
    def prune(self, keep: Iterable[str]) -> int:
        """Drop every entry whose signature is not in ``keep`` and compact the file; the number dropped.
        The file is compacted also when nothing is dropped: a prune whose compaction failed (a full
        disk, the usual reason to prune) has dropped its entries already (leaving pages part empty, no
        free page to tell), and the next one must still give their space back."""
        self.flush()
        keep = sorted(set(keep))
        marks = ",".join("?" * len(keep))
        dropped = self.db.execute(f"DELETE FROM det WHERE sig NOT IN ({marks})", keep).rowcount
        self.db.execute(f"DELETE FROM parts WHERE sig NOT IN ({marks})", keep)
        self.db.commit()
        try:
            self.db.execute("VACUUM")
        except sqlite3.DatabaseError as err:
            if not dropped and isinstance(err, sqlite3.OperationalError) and "full" in str(err):
                # nothing to drop: the answer is 0, as it was; compacting (an earlier prune's drops) waits
                log.warning("%s: nothing to drop; not compacted (%s): free some space and prune again to give "
                            "back an earlier prune's space", self.path, err)
                return 0
            named = CacheError(self.path, err)
            if dropped:
                named.add_note(f"{dropped} entries were dropped; the file was not compacted: free some space "
                               "and run `ferdata cache prune` again")
            raise named from err
        return dropped

    @_named
    def record_part(self, dataset: str, sig: str, part: str) -> None:
        """Note that part ``part`` (``"K/N"``) of ``dataset`` was detected whole into this cache under ``sig``."""
        self.flush()
        with self.db:
            self.db.execute("INSERT OR IGNORE INTO parts VALUES (?, ?, ?)", (dataset, sig, part))

    @_named
    def parts(self) -> dict[tuple[str, str], set[str]]:
        """The parts detected whole into this cache (merged ones included), per (dataset, signature)."""
        out: dict[tuple[str, str], set[str]] = {}
        for dataset, sig, part in self.db.execute("SELECT dataset, sig, part FROM parts"):
            out.setdefault((dataset, sig), set()).add(part)
        return out

    @_named
    def signatures(self) -> dict[str, int]:
        """Entries per backend signature (which backend and settings they were detected with)."""
        self.flush()
        return dict(self.db.execute(_BY_SIGNATURE).fetchall())

    @_named
    def __len__(self) -> int:
        self.flush()
        return self.db.execute("SELECT COUNT(*) FROM det").fetchone()[0]

    @_named
    def close(self) -> None:
        """Write the buffered puts and close the file (closed also when that write fails: a full disk)."""
        try:
            self.flush()
        finally:
            self.db.close()

    def __enter__(self) -> "DetectionCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
