"""Model downloads that cannot hang and cannot leave a cut file where a model is looked for.

insightface's downloader (``requests.get`` without a timeout) and torch hub's, which face-alignment
uses (``urlopen`` without one), wait forever on a server that stops sending, and insightface writes
its zip and unpacks it in place. The backends fetch the same URLs into the same places through
:func:`fetch` and :func:`unpack_zip` instead.
"""
from __future__ import annotations

import glob
import http.client
import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from ferdata.atomic import atomic_open, remove_unlocked, try_lock, unlock_close

log = logging.getLogger(__name__)

STALL_S = 60.0        # seconds without a byte (connecting included) before a download fails
CHUNK = 1 << 20


def fetch(url: str, dest: Path, stall_s: float | None = None) -> Path:
    """``url`` saved as ``dest``, which appears only when the whole body arrived (an atomic rename).

    Raises :class:`OSError` for a connection error, an HTTP error status, a server silent for
    ``stall_s`` seconds (:data:`STALL_S` by default), or a body shorter than its Content-Length."""
    request = urllib.request.Request(url, headers={"User-Agent": "ferdata"})
    log.info("downloading %s to %s", url, dest)
    try:
        with urllib.request.urlopen(request, timeout=STALL_S if stall_s is None else stall_s) as response, \
                atomic_open(dest) as f:
            size, got = response.headers.get("Content-Length"), 0
            while chunk := response.read(CHUNK):
                f.write(chunk)
                got += len(chunk)
            if size is not None and got != int(size):
                raise OSError(f"the connection closed after {got} of {size} bytes")
    except http.client.HTTPException as e:          # IncompleteRead, a broken status line: not OSErrors
        raise OSError(f"{type(e).__name__}: {e}") from e
    log.info("downloaded %s (%d bytes)", dest.name, got)
    return dest


def unpack_zip(archive: Path, folder: Path) -> None:
    """Every file of ``archive`` moved into ``folder`` (made if needed) only after the whole archive
    unpacked and passed its CRC checks, so a bad archive adds nothing; the archive is then removed.
    Raises :class:`zipfile.BadZipFile` or :class:`OSError`."""
    _remove_stale_unpacks(archive)
    work = Path(tempfile.mkdtemp(dir=archive.parent, prefix=f".{archive.stem}.", suffix=".unpack"))
    lock = os.open(work, os.O_RDONLY)
    try_lock(lock)                                   # ours: a stale one's lock is free (its process died)
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(work)                      # names with '..' or a root are made safe by zipfile
        for path in sorted(p for p in work.rglob("*") if p.is_file()):
            target = folder / path.relative_to(work)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    except zipfile.BadZipFile:
        archive.unlink(missing_ok=True)              # the next try downloads it again
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
        unlock_close(lock)
    archive.unlink()


def _remove_stale_unpacks(archive: Path) -> None:
    """Remove the work folders an unpacking killed midway left beside ``archive`` (a pack's
    hundreds of MB); one another process is unpacking into now (its lock is held) stays."""
    remove_unlocked(archive.parent.glob(f".{glob.escape(archive.stem)}.*.unpack"))
