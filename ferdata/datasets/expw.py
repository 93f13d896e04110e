"""ExpW (Expression in-the-Wild): ``image/origin/<name>.jpg`` + ``label/label.lst``.

One face per line: ``image_name face_id top left right bottom confidence label``
(space-separated; note the **top, left, right, bottom** order). Labels use the
FER2013 order (0 angry .. 6 neutral). Many images hold several faces, so the key is
``<image stem>_<face id>``, and ``extra[PHOTO]`` names the image: the faces of one photo
are carved into the same split. There is no official split.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

from ferdata.classes import to_canonical
from ferdata.datasets.base import READERS, DatasetLayoutError, DatasetReader, leads_out, open_text, whole
from ferdata.datasets.folder import is_image
from ferdata.records import PHOTO, Dropped, FaceRecord, make_key

LABEL_FILES = ("label/label.lst", "label.lst")
IMAGE_DIRS = ("image/origin", "origin", "image")


@READERS.register("expw")
class ExpWReader(DatasetReader):
    """One record per labelled face; the box is converted to (x0, y0, x1, y1)."""

    name = "expw"
    expects = "label/label.lst (name face_id top left right bottom confidence label) + image/origin/<name>.jpg"
    lists_twice = True               # its label list may name a face again

    def scan(self) -> Iterator[FaceRecord | Dropped]:
        label_file, image_dir = self._layout()
        exists: dict[str, bool] = {}   # consecutive lines share images; remember the last few lookups
        with open_text(label_file) as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    yield self._parse(line.split(), f"{label_file.name}:{lineno}", image_dir, exists)

    def _layout(self) -> tuple[Path, Path]:
        label_file = next((self.root / p for p in LABEL_FILES if (self.root / p).is_file()), None)
        image_dir = next((self.root / p for p in IMAGE_DIRS if (self.root / p).is_dir()), None)
        if (image_dir is None or not _holds_images(image_dir)) and (packed := self._packed()):
            raise DatasetLayoutError(self.name, self.root, [LABEL_FILES[0], f"{IMAGE_DIRS[0]}/"],
                                     fix=f"unpack the images first: 7z x {packed} -o{packed.parent} (it makes "
                                         f"{packed.parent / 'origin'}/)")
        if label_file is None or image_dir is None:
            raise DatasetLayoutError(self.name, self.root, [LABEL_FILES[0], f"{IMAGE_DIRS[0]}/"])
        return label_file, image_dir

    def _packed(self) -> Path | None:
        """The first volume of ExpW's image archive (``image/origin.7z.001``, as released) where no
        ``origin/`` folder was unpacked: every face was a ``missing_image`` drop naming no archive."""
        return next((p for d in (self.root / "image", self.root) for p in sorted(d.glob("origin.7z*"))
                     if p.is_file()), None)

    def _parse(self, fields: list[str], where: str, image_dir: Path, exists: dict[str, bool]) -> FaceRecord | Dropped:
        key = make_key(Path(fields[0]).stem, *fields[1:2])
        if len(fields) != 8:
            return Dropped(self.name, key, "malformed_row", f"{where}: {len(fields)} fields, expected 8")
        name, face_id = fields[0], fields[1]
        try:
            top, left, right, bottom, confidence = (float(v) for v in fields[2:7])
        except ValueError:
            return Dropped(self.name, key, "bad_box", f"{where}: {' '.join(fields[2:7])}")
        if not (all(map(math.isfinite, (top, left, right, bottom))) and right > left and bottom > top):
            return Dropped(self.name, key, "bad_box", f"{where}: top={top} left={left} right={right} bottom={bottom}")
        try:
            native = whole(fields[7])                   # "3" or a re-saved "3.0"; never 3.7 truncated
            label = to_canonical("expw", native)
        except ValueError:
            return Dropped(self.name, key, "bad_label", f"{where}: label {fields[7]!r} not in 0..6")
        if leads_out(name):
            return Dropped(self.name, key, "malformed_row", f"{where}: {name!r} leads out of {image_dir.name}/")
        path = image_dir / name
        if name not in exists:
            if len(exists) > 64:
                exists.clear()
            exists[name] = path.is_file()
        if not exists[name]:
            return Dropped(self.name, key, "missing_image", str(path))
        return FaceRecord(
            dataset=self.name, key=key, path=str(path), label=label, native_label=str(native),
            box=(left, top, right, bottom), extra={"face_id": int(face_id) if face_id.isdigit() else face_id,
                                                   "confidence": confidence, PHOTO: make_key(Path(name).stem)},
        )


def _holds_images(folder: Path) -> bool:
    """Whether ``folder`` holds an image file: ``origin/``, or ``image/`` with the pictures unpacked flat beside the
    volumes (an empty ``origin/``, an unpacking cut short, holds none)."""
    return any(is_image(p) for p in folder.iterdir() if p.is_file())
