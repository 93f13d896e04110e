"""Crash-safe file output: a reader, or a re-run after a kill, sees the old complete output
or the new one, never a mix.

* Files are written to ``.<name>.<random>.tmp`` beside the target, fsynced, renamed into
  place, and the folder is fsynced so the rename survives a power cut
  (:class:`atomic_open`, :func:`atomic_write_bytes`, :func:`atomic_write_text`).
* Temp files left by a killed writer are removed when the next write to the same path starts;
  a writer holds a lock on its temp file, so one still being written by another process stays.
* A stage's whole output folder is built beside it and swapped in (:class:`staged_dir`);
  a folder holding files the stage did not write is refused (:class:`StageDirError`), and so is a
  second run into the same folder while one is at work (it deleted the first's staging folder
  under it: both reported success, the output lacked most of its chunks).
* A failed write names its file (an ``OSError`` such as a full disk gets the note
  ``while writing <path>``, shown by the one-line error).

The locks are POSIX ``flock``s, released by the OS when their process dies; where ``fcntl`` is
missing (Windows) nothing is locked.
"""
from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Iterable, Iterator

try:
    import fcntl
except ImportError:                                  # Windows: no locks
    fcntl = None

log = logging.getLogger(__name__)


def _file_mode() -> int:
    """The mode ``open()`` would give a new file here (0o666 less the umask): mkstemp makes 0o600,
    and a fixed 0o644 made outputs world-readable under ``umask 077`` and not group-writable under
    ``umask 002``. Read from /proc where it can be (``os.umask`` sets the mask to read it: racy in threads)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _temp_prefix(path: Path) -> str:
    """``.<name>.``; for a name within 30 bytes of the 255-byte limit, its first 50 characters and a
    digest of the whole (the random part and ``.tmp`` would make the temp name too long to create)."""
    raw = os.fsencode(path.name)
    if len(raw) <= 200:
        return f".{path.name}."
    return f".{path.name[:50]}.{hashlib.sha256(raw).hexdigest()[:16]}."


_HELD: set[int] = set()         # lock descriptors this process holds; a forked child closes its copies


def _forget_inherited_locks() -> None:
    """In a forked child (a stage's worker): close the inherited copies of the parent's lock
    descriptors. A flock lives while any copy is open: workers orphaned by a killed parent kept a
    stage folder locked, and every later run was refused."""
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_locks)


def try_lock(fd: int, forked_children_drop: bool = True) -> bool:
    """An exclusive lock on the open file or folder ``fd``, without waiting: False if another
    process holds one. A forked child closes its copy (:func:`_forget_inherited_locks`), so the lock
    ends with this process; release it with :func:`unlock_close`. ``forked_children_drop=False``
    for a descriptor a Python file object owns (a child closing it under the object could close
    another file later)."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    if forked_children_drop:
        _HELD.add(fd)
    return True


@contextmanager
def held_folder(folder: str | Path, busy: str) -> Iterator[int]:
    """Hold an existing ``folder`` (its lock, released when the block ends or the process dies) for
    the block; another process holding it raises ``BlockingIOError(busy)``."""
    fd = os.open(folder, os.O_RDONLY)
    if not try_lock(fd):
        os.close(fd)
        raise BlockingIOError(busy)
    try:
        yield fd
    finally:
        unlock_close(fd)


def unlock_close(fd: int) -> None:
    """Close a descriptor :func:`try_lock` locked (its lock goes with it)."""
    _HELD.discard(fd)
    os.close(fd)


def remove_unlocked(paths: Iterable[Path]) -> None:
    """Remove the files or folders of ``paths`` that no live process holds locked (:func:`try_lock`):
    what a killed process left; one still at work keeps its own."""
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
        except FileNotFoundError:                   # its process has just removed it
            continue
        try:
            if try_lock(fd):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        finally:
            unlock_close(fd)


def _remove_stale_temps(path: Path) -> None:
    """Delete temp files a killed writer of ``path`` left behind (they would pollute DVC outputs);
    one whose writer is still at work (it holds its lock) stays."""
    remove_unlocked(path.parent.glob(f"{glob.escape(_temp_prefix(path))}*.tmp"))


def _name(err: BaseException, path: Path) -> None:
    """Note on an OS error that names no file which file was being written (a full disk)."""
    if isinstance(err, OSError) and err.filename is None:
        err.add_note(f"while writing {path}")


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where folders cannot be opened)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class atomic_open:
    """Context manager yielding a binary file that appears at ``path`` only on success.

    The data goes to ``.<name>.<random>.tmp`` beside ``path``, is fsynced, then renamed;
    on an exception the temp file is removed, and temp files of earlier killed writers
    of the same path are removed when a new write starts.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __enter__(self) -> BinaryIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(self.path)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=_temp_prefix(self.path), suffix=".tmp")
        try_lock(fd, forked_children_drop=False)    # ours alone: nobody else's to lock yet
        self.tmp = Path(tmp)
        self.f = os.fdopen(fd, "wb")
        return self.f

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None:
            _name(exc, self.path)
        try:
            try:
                if exc_type is None:           # renamed while open and locked: no writer takes it for stale
                    self.f.flush()
                    os.fsync(self.f.fileno())
                    os.fchmod(self.f.fileno(), _file_mode())
                    os.replace(self.tmp, self.path)
            finally:
                self.f.close()
            if exc_type is None:
                fsync_dir(self.path.parent)
        except OSError as err:
            _name(err, self.path)
            raise
        finally:
            self.tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temp file in the same folder, then rename: readers never see a partial file."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def writable_folder(folder: Path, what: str) -> None:
    """Write a file in ``folder``, or in the nearest folder above it that exists (where it would be
    made), before the work whose results go there: a results path that cannot be written fails now,
    not after the whole run, and nothing is made yet."""
    there = next(p for p in (folder, *folder.parents) if p.exists() or p == p.parent)
    try:
        if not there.is_dir():
            raise NotADirectoryError(20, f"{there} is a file")
        with tempfile.TemporaryFile(dir=there):
            pass
    except OSError as err:
        raise ValueError(f"{what} cannot write in {folder} ({err.strerror or err}); choose another folder") from None


def require_dir(path: str | Path, what: str, fix: str) -> Path:
    """``path`` as a Path, or a clear error naming the fix when the folder is missing."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder {path} does not exist: {fix}")
    return path


def _removed(path: Path) -> bool:
    """Remove a folder a stage no longer needs; False when it cannot be (read-only files), so the
    caller says so instead of leaving it silently inside the DVC-tracked data."""
    shutil.rmtree(path, ignore_errors=True)
    return not path.exists()


def _foreign(folder: Path, owned: tuple[str, ...], where: str = "") -> list[str]:
    """The names under ``folder`` that no pattern of ``owned`` covers (temp files aside). A pattern
    without ``/`` owns a name whole; ``dir/pat`` owns a folder ``dir`` only as far as ``pat`` covers
    what it holds (a split folder of shards: files a user put in it are named, not deleted)."""
    found = []
    for p in folder.iterdir():
        if fnmatch(p.name, ".*.tmp") or any(fnmatch(p.name, pat) for pat in owned if "/" not in pat):
            continue
        inner = tuple(pat.split("/", 1)[1] for pat in owned if "/" in pat and fnmatch(p.name, pat.split("/", 1)[0]))
        if inner and p.is_dir() and not p.is_symlink():
            found += _foreign(p, inner, f"{where}{p.name}/")
        else:
            found.append(f"{where}{p.name}")
    return found


def _is_mount(path: Path) -> bool:
    """Whether ``path`` (resolved) is a mount point: :func:`os.path.ismount` compares it
    with its parent (another device, or the same inode), which misses a bind mount of a folder of the same
    file system (``mount --bind``, a Docker volume from the disk the project is on); Linux lists
    every mount point in /proc/self/mountinfo (its 5th field, spaces and the like as octal escapes)."""
    if os.path.ismount(path):
        return True
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            points = {re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4]) for line in f}
    except (OSError, IndexError):
        return False
    return str(path) in points


class StageDirError(FileExistsError):
    """A stage was pointed at a folder holding files it did not write."""


class staged_dir:
    """Build a stage's whole output folder beside it, then swap it in.

    ``with staged_dir(out, owned) as tmp:`` yields an empty ``.<out>.partial`` folder, locked
    while the run holds it;
    on success the old ``out`` is replaced by it, on an exception it is deleted. So
    ``out`` is always absent, the previous complete output, or the new complete one:
    never a mix, never stale chunks from a larger earlier run, never a partial shard.
    A kill leaves at most ``.<out>.partial`` (cleared by the next run) and ``.<out>.old`` (moved
    back to ``out`` when the kill came between the two renames, else removed).

    ``owned`` are glob patterns of the names the stage writes (``dir/pattern`` for the files of a
    folder it writes); an existing ``out`` holding anything else, at any depth so given, is refused
    rather than deleted.
    """

    def __init__(self, out: str | Path, owned: tuple[str, ...]) -> None:
        self.out = Path(out).resolve()          # "." and symlinked folders get a real name and parent
        self.owned = owned
        self.partial = self.out.with_name(f".{self.out.name}.partial")
        self.old = self.out.with_name(f".{self.out.name}.old")

    def check_owned(self) -> None:
        """Refuse an ``out`` that is a file or holds names the stage does not own (also before any work)."""
        if not self.out.exists():
            return
        if not self.out.is_dir():
            raise StageDirError(f"{self.out} is a file, but a folder is needed there: move it away or choose "
                                "another path")
        if _is_mount(self.out):                     # renaming it away fails (EBUSY), after all the work
            raise StageDirError(f"{self.out} is a mount point: a stage builds its output beside it and swaps it "
                                "in whole, which a mount point cannot be; give a folder inside it")
        foreign = sorted(_foreign(self.out, self.owned))
        if foreign:
            raise StageDirError(
                f"{self.out} holds files this stage did not write ({', '.join(foreign[:5])}); "
                f"it replaces the whole folder: move them away or choose an empty output folder")

    def __enter__(self) -> Path:
        self.check_owned()
        self._claim()                                    # no other run is at work on ``out`` from here
        try:
            if not self.out.exists() and self.old.is_dir():  # a run killed between its two renames:
                os.replace(self.old, self.out)               # the previous output stays until this one succeeds
            if not _removed(self.old):                   # the swap at the end would fail after all the work
                raise StageDirError(f"{self.old} (an earlier output) cannot be removed (read-only?): remove it by "
                                    "hand, then run again")
        except BaseException:
            unlock_close(self.lock)
            raise
        return self.partial

    def _claim(self) -> None:
        """Hold ``.<out>.partial``, empty: made, or taken over from a killed run (its lock is free);
        held by a run at work, it is that run's and this one stops."""
        for _ in range(3):          # the folder locked must still be the one named (a run may swap it in)
            self.partial.mkdir(parents=True, exist_ok=True)
            try:
                self.lock = os.open(self.partial, os.O_RDONLY)
            except FileNotFoundError:
                continue
            if not try_lock(self.lock):
                os.close(self.lock)
                raise StageDirError(f"another run is writing {self.out} now (it holds {self.partial.name}): wait "
                                    "for it to finish, or stop it, then run again")
            try:
                if os.stat(self.partial).st_ino == os.fstat(self.lock).st_ino:
                    break
            except FileNotFoundError:
                pass
            unlock_close(self.lock)
        else:
            raise StageDirError(f"{self.partial} keeps changing under this run: another run is writing {self.out}")
        for leftover in self.partial.iterdir():
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc_type is not None:
                shutil.rmtree(self.partial, ignore_errors=True)
                return
            try:
                if self.out.exists():
                    os.replace(self.out, self.old)
                os.replace(self.partial, self.out)
            except OSError:                         # the previous output stays, the new one goes
                if not self.out.exists() and self.old.is_dir():
                    os.replace(self.old, self.out)
                shutil.rmtree(self.partial, ignore_errors=True)
                raise
            fsync_dir(self.out.parent)
            if not _removed(self.old):
                log.warning("could not remove %s (read-only?): remove it by hand, it holds an earlier output",
                            self.old)
        finally:
            unlock_close(self.lock)                  # held until the old output is gone
