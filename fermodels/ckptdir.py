"""A training run's checkpoint folder: held by one run at a time, checked writable before any work,
cleared of killed saves' temp files, and ``best.pt`` kept to the epoch ``last.pt`` records as the best
(the best weights are saved as :data:`PENDING_BEST`, then ``last.pt``, then renamed)."""
from __future__ import annotations

import os
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from ferdata.atomic import fsync_dir, held_folder, remove_unlocked
from ferdata.errors import no_memory_for, out_of_memory

LAST, BEST = "last.pt", "best.pt"
# An epoch's best weights are saved here, then last.pt (which records that epoch as the best), then
# renamed to best.pt: a kill between the saves left a best.pt of an epoch no log or last.pt knew,
# and a resume that did not replay that epoch exactly kept those weights (:func:`settle_best`).
PENDING_BEST = ".best.pending.pt"


@contextmanager
def checkpoints_held(ckpt_dir: str | Path) -> Iterator[Path]:
    """Hold ``ckpt_dir`` for one training run (a lock on the folder, which its process's death
    releases): a second run writing the same ``last.pt``/``best.pt`` is refused, where their saves
    interleaved and each resumed from the other's checkpoints."""
    folder = Path(ckpt_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with held_folder(folder, f"another run is training into {folder} now: wait for it to finish, or stop it, "
                             "then run again (or give this run another checkpoint folder)"):
        remove_unlocked(folder.glob(".*.tmp"))  # killed saves' temp files (else DVC caches them with the folder)
        _check_writable(folder)
        settle_best(folder)
        yield folder


def _check_writable(folder: Path) -> None:
    """Fail now, not after the first epoch, where the checkpoints cannot be written."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise OSError(err.errno, f"checkpoint folder {folder} is not writable ({err.strerror}): fix its "
                                 "permissions or give another folder") from None


def saved_at(path: Path) -> tuple[int, int] | None:
    """(step, best epoch recorded) of a checkpoint, its tensors not read; None when there is none or
    it is no checkpoint that says (a failed read of the disk is raised: it says nothing of the file)."""
    if not path.is_file():
        return None
    try:
        zipfile.ZipFile(path).close()        # a file cut short: torch says only "[Errno 22] Invalid argument"
    except zipfile.BadZipFile:
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state["step"]), int(state["best"]["epoch"])
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - torch's many kinds for a file that is no such checkpoint
        if out_of_memory(e):            # the machine's: "none" would start the run over, replacing it
            raise no_memory_for(path, e) from e
        return None


def settle_best(folder: Path) -> None:
    """Finish a best.pt update a kill interrupted, or undo it: the pending weights become best.pt
    when last.pt was saved at the same step and records their epoch as the best, else they are
    from an epoch that will be replayed and are removed."""
    pending = folder / PENDING_BEST
    last = saved_at(folder / LAST)
    if last is not None and last[1] < 0 and (folder / BEST).is_file():
        (folder / BEST).unlink()        # last.pt records no best epoch: best.pt is an earlier run's
    if not pending.exists():
        return
    saved = saved_at(pending)
    if saved is not None and saved == saved_at(folder / LAST):
        promote_best(folder)
    else:
        pending.unlink()


def promote_best(folder: Path) -> None:
    """The pending best weights become best.pt (once last.pt records them)."""
    os.replace(folder / PENDING_BEST, folder / BEST)
    fsync_dir(folder)
