"""JAFFE: 213 grayscale TIFFs of 10 subjects whose file names carry the label.

Names are ``<subject>.<EXPR><n>.<imageid>.tiff`` (e.g. ``KA.AN1.39.tiff``; a copy converted to
PNG or JPEG keeps the name: any image extension is read); the expression is the two-letter code
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
from ferdata.datasets.folder import unread
from ferdata.io import IMAGE_EXTS
from ferdata.records import Dropped, FaceRecord, make_key

NAME = re.compile(r"^(?P<subject>[A-Za-z]{2})\.(?P<code>[A-Za-z]{2})(?P<rep>\d+)\.(?P<id>\d+)\.[^.]+$", re.IGNORECASE)


@READERS.register("jaffe")
class JAFFEReader(DatasetReader):
    """One record per ``XX.YYn.id.tiff`` file (or another image extension), subject = the first field."""

    name = "jaffe"
    expects = ("<subject>.<AN|DI|FE|HA|NE|SA|SU><n>.<id>.tiff files (e.g. KA.AN1.39.tiff; .png or .jpg too) "
               "at the root or in jaffe/")

    def scan(self) -> Iterator[FaceRecord | Dropped]:
        for path in self._images():
            yield Dropped(self.name, make_key(path.stem), *why) if (why := unread(path)) else self._parse(path)

    def _images(self) -> list[Path]:
        """The files of the folder holding the dataset: its images, and, as counted drops
        (:func:`ferdata.datasets.folder.unread`), hidden ones (``._KA.AN1.39.tiff``) and the rest
        (``not_an_image``: a README, a GIF), as the folder reader counts them."""
        for folder in (self.root, self.root / "jaffe"):
            if folder.is_dir():
                files = sorted(p for p in folder.iterdir() if not p.is_dir())
                if any(NAME.match(p.name) and p.suffix.lower() in IMAGE_EXTS for p in files):
                    return files
        raise DatasetLayoutError(self.name, self.root, ["KA.AN1.39.tiff-style image files"])

    def _parse(self, path: Path) -> FaceRecord | Dropped:
        key = make_key(path.stem)
        m = NAME.match(path.name)
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
