"""JAFFE: 213 grayscale TIFFs of 10 subjects whose file names carry the label.

Names are ``<subject>.<EXPR><n>.<imageid>.tiff`` (e.g. ``KA.AN1.39.tiff``; a copy converted to
PNG or JPEG keeps the name: any image extension is read, also after the ``.tiff`` a converting loop such as
``for f in *.tiff; do convert $f $f.png; done`` leaves, ``KA.AN1.39.tiff.png``: same key, label and subject);
the expression is the two-letter code
AN/DI/FE/HA/NE/SA/SU. There is no official split:
the usual protocols are leave-one-subject-out or 10-fold, which
``ferdata.splits.assign_splits(..., by="subject", folds=k)`` provides.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from ferdata.classes import JAFFE_CODES
from ferdata.datasets.base import READERS, DatasetLayoutError, DatasetReader
from ferdata.datasets.folder import is_image, stray_images, unread, visible_files
from ferdata.records import Dropped, FaceRecord, make_key

NAME = re.compile(r"^(?P<name>(?P<subject>[A-Za-z]{2})\.(?P<code>[A-Za-z]{2})(?P<rep>\d+)\.(?P<id>\d+))"
                  r"(?:\.tiff?)?\.[^.]+$", re.IGNORECASE)


def _jaffe_names(folder: Path) -> int:
    """How many image files directly in ``folder`` are named like JAFFE's (0 when it is no folder)."""
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if NAME.match(p.name) and is_image(p)
               and not p.is_dir())


@READERS.register("jaffe")
class JAFFEReader(DatasetReader):
    """One record per ``XX.YYn.id.tiff`` file (or another image extension), subject = the first field."""

    name = "jaffe"
    expects = ("<subject>.<AN|DI|FE|HA|NE|SA|SU><n>.<id>.tiff files (e.g. KA.AN1.39.tiff; .png or .jpg too) "
               "at the root or in jaffe/")

    def scan(self) -> Iterator[FaceRecord | Dropped]:
        folder = self._folder()
        for path in visible_files(folder, recursive=False):      # .DS_Store left out, as the folder reader leaves it
            yield Dropped(self.name, make_key(path.stem), *why) if (why := unread(path)) else self._parse(path)
        yield from self._elsewhere(folder)

    def _folder(self) -> Path:
        """The one folder holding the dataset (the root or ``jaffe/``): its files are read, hidden ones
        (``._KA.AN1.39.tiff``) and the rest (``not_an_image``: a README, a GIF) as counted drops, as the
        folder reader counts them. Both holding JAFFE names is an error: the first one found was read
        and the other's faces were lost without a trace (one stray image at the root hid ``jaffe/``)."""
        held = {d: n for d in (self.root, self.root / "jaffe") if (n := _jaffe_names(d))}
        if not held:
            raise DatasetLayoutError(self.name, self.root, ["KA.AN1.39.tiff-style image files"])
        if len(held) > 1:
            each = ", ".join(f"{d} ({n} JAFFE-named image(s))" for d, n in held.items())
            raise ValueError(f"{self.name}: two folders hold JAFFE images: {each}; only one is read. Move them "
                             "into one folder (or remove the strays) and point --root at it")
        return next(iter(held))

    def _elsewhere(self, folder: Path) -> Iterator[Dropped]:
        """The image files under the root outside ``folder`` (in its sub-folders, or at the root when
        ``folder`` is ``jaffe/``): not read, each a counted drop (a hidden one as ``hidden_file``)."""
        paths = (p for p in visible_files(self.root, fence=self.root) if p.parent != folder)
        return stray_images(self.name, paths, self.root, "outside_dataset_folder",
                            f"JAFFE is read from the files directly in {folder} (move it there, or remove it)")

    def _parse(self, path: Path) -> FaceRecord | Dropped:
        m = NAME.match(path.name)
        key = make_key(m["name"] if m else path.stem)        # KA.AN1.39.tiff.png keys as KA.AN1.39.tiff does
        if m is None:
            return Dropped(self.name, key, "bad_filename",
                           f"{path.name} is not <subject>.<EXPR><n>.<id>.<tiff|png|jpg...>")
        code = m["code"].upper()
        if code not in JAFFE_CODES:
            return Dropped(self.name, key, "bad_label", f"{path.name}: expression code {code!r}")
        return FaceRecord(
            dataset=self.name, key=key, path=str(path), label=JAFFE_CODES[code], native_label=code,
            subject=m["subject"].upper(),
        )
