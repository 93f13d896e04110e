"""The public entry point: write the sample in AffectNet's official on-disk layout.

``Manually_Annotated_Images/<split dir>/<name>.jpg`` plus ``training.csv`` and
``validation.csv`` with the 68 landmarks and the face box, named with the AffectNet
reader's own constants so the writer cannot drift from what ``AffectNetReader``
expects. The folder is built beside ``out_dir`` and swapped in whole (:class:`staged_dir`: locked,
a killed run's leftovers cleared by the next), and a marker file says it may be replaced next time.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ferdata.atomic import StageDirError, atomic_write_bytes, atomic_write_text, staged_dir
from ferdata.classes import CLASSES
from ferdata.datasets.affectnet import COLUMNS, IMAGES, LIST_DIRS, LISTS
from ferdata.params import above, at_least, check_values, repeated, within
from ferdata.sample.render import Sample, render_sample
from ferdata.sample.sources import load_identities, slot_identities, split_identities

log = logging.getLogger(__name__)

# The reader's own names, so the writer cannot drift from what AffectNetReader expects.
IMAGES_DIR = IMAGES
LISTS_DIR = LIST_DIRS[0]                                # Manually_Annotated_file_lists
CSV_NAMES = {"train": LISTS["train"], "validation": LISTS["test"]}
SPLIT_DIRS = {"train": "1", "validation": "2"}          # AffectNet's <subDirectory> is numeric
MARKER = "sample_summary.json"                          # marks a folder this module may replace


@dataclass(frozen=True)
class SampleParams:
    """The ``sample`` section of params.yaml (:func:`make_affectnet_sample`)."""

    per_class: int              # images per class, both splits together
    classes: tuple[int, ...]    # AffectNet ids, e.g. [0, 1, 2, 3, 6]
    val_fraction: float         # of each class's images, from held-out identities
    seed: int
    image_size: int
    jpeg_quality: int

    def __post_init__(self) -> None:
        check_values("sample", self, {"per_class": at_least(2), "val_fraction": above(0),
                                      "seed": at_least(0), "image_size": at_least(64),
                                      "jpeg_quality": within(1, 100)})
        if self.val_fraction >= 1:
            raise ValueError(f"sample.val_fraction must be in (0, 1), got {self.val_fraction!r}")
        classes = self.classes
        if (isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence) or not classes
                or any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < len(CLASSES) for c in classes)
                or repeated(classes)):
            raise ValueError(f"sample.classes must be a list of distinct AffectNet ids 0..{len(CLASSES) - 1} "
                             f"(e.g. [0, 1, 2, 3, 6]), got {classes!r}")
        object.__setattr__(self, "classes", tuple(classes))
        n_val = round(self.per_class * self.val_fraction)
        if n_val < 1 or n_val >= self.per_class:
            raise ValueError(f"sample: per_class={self.per_class} with val_fraction={self.val_fraction} "
                             "leaves an empty split; use per_class >= 2 and a fraction that gives both")


# What this module writes, down to each file: a folder holding anything else is refused, not replaced
OWNED = (*(f"{IMAGES_DIR}/{d}/{'[0-9a-f]' * 40}.jpg" for d in SPLIT_DIRS.values()),
         *(f"{LISTS_DIR}/{name}" for name in CSV_NAMES.values()), MARKER)


def _check_out_dir(staged: staged_dir) -> None:
    """Refuse, before any work, a file, a non-empty folder without the marker (a real AffectNet root
    holds the same two folder names: only a folder this module wrote may be replaced), or a sample
    folder holding anything this module does not write, at any depth (:data:`OWNED`)."""
    out_dir = staged.out
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MARKER).is_file():
        raise StageDirError(f"sample: {out_dir} is not empty and was not written by ferdata.sample; "
                            f"choose an empty or new folder")
    staged.check_owned()


def _csv_text(rows: list[list[str]]) -> str:
    """AffectNet's header and the rows, "\n" line ends (byte-stable across platforms)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    return buf.getvalue()


def _row(rel: str, s: Sample, cls: int) -> list[str]:
    """One CSV row; landmarks at 0.01 px, as ``x1;y1;...;x68;y68``."""
    return [rel, *(str(v) for v in s.box), ";".join(f"{v:.2f}" for v in s.lmk68.reshape(-1)),
            str(cls), f"{s.valence:.4f}", f"{s.arousal:.4f}"]


def make_affectnet_sample(out_dir: Path, params: SampleParams) -> dict:
    """Write the smoke-test sample to ``out_dir`` in AffectNet's official layout.

    ``per_class`` images per class in total; ``round(per_class * val_fraction)`` of them
    go to ``validation.csv`` and use only held-out identities. The same arguments give
    byte-identical files (every random draw comes from a Generator seeded by
    ``(seed, split, class, index)``). ``out_dir`` is replaced as a whole (a symlink to a folder:
    the folder it points to). Returns counts per split and class and the identities used per split.
    """
    per_class, classes, val_fraction = params.per_class, params.classes, params.val_fraction
    seed, image_size, jpeg_quality = params.seed, params.image_size, params.jpeg_quality
    out_dir = Path(out_dir).resolve()          # "." gets a name to build beside; a symlink, its folder
    staged = staged_dir(out_dir, owned=OWNED)
    _check_out_dir(staged)
    identities = load_identities()
    splits = split_identities(identities, val_fraction, np.random.default_rng([seed, 0]))
    n_val = round(per_class * val_fraction)
    sizes = {"train": per_class - n_val, "validation": n_val}
    summary: dict = {"image_size": image_size, "counts": {}, "identities": {}}
    total = len(classes) * per_class
    with staged as tmp:
        for split_no, split in enumerate(("train", "validation"), start=1):
            slots = slot_identities(splits[split], sizes[split], np.random.default_rng([seed, split_no]))
            rows: list[list[str]] = []
            for cls in sorted(classes):
                for i, ident in enumerate(slots):
                    rng = np.random.default_rng([seed, split_no, cls, i])
                    sample = render_sample(ident, cls, rng, image_size, jpeg_quality)
                    name = hashlib.sha1(f"{seed}/{split}/{cls}/{i}".encode()).hexdigest()
                    rel = f"{SPLIT_DIRS[split]}/{name}.jpg"
                    atomic_write_bytes(tmp / IMAGES_DIR / rel, sample.jpeg)
                    rows.append(_row(rel, sample, cls))
            atomic_write_text(tmp / LISTS_DIR / CSV_NAMES[split], _csv_text(rows))
            summary["counts"][split] = {CLASSES[c]: sizes[split] for c in sorted(classes)}
            summary["identities"][split] = sorted({i.name for i in slots})
        atomic_write_text(tmp / MARKER, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    log.info("sample: wrote %d images to %s", total, out_dir)
    return summary
