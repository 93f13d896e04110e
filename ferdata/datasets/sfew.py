"""SFEW 2.0 (Static Facial Expressions in the Wild): ``Train/<Class>/`` and ``Val/<Class>/``.

Class folders are ``Angry Disgust Fear Happy Neutral Sad Surprise``, directly in ``Train/`` and ``Val/`` or
as SFEW 2.0's archives unpack (``Train_Aligned_Faces.zip``, ``Val_Aligned_Faces_new.zip``): in
``<Split>_Aligned_Faces/``, at the root or in ``Train/`` and ``Val/``. Test labels
were never released, so papers report on Val: by default Val becomes our test split
(like AffectNet's official validation set) and ``ferdata.splits`` carves a
validation split out of Train. The unlabelled ``Test/`` folder is ignored.
Faces are not aligned; no boxes or landmarks ship with the images.

Images are frames of films, named ``<film>_<clip>_<frame>`` (``Airheads_000519240_00000005.png``):
the film goes to ``extra[MOVIE]``, so the validation split carved out of Train holds films that
training never sees (frames of one clip are near-duplicates; a film's frames share its actors).
A name of another form keeps its frame ungrouped.
"""
from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Mapping

from ferdata.datasets.base import READERS, DatasetLayoutError, DatasetReader
from ferdata.datasets.folder import holds_a_file, read_class_tree, subdirs
from ferdata.errors import shown
from ferdata.records import MOVIE, Dropped, FaceRecord

log = logging.getLogger(__name__)

SFEW_CLASSES = ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")
ALIGNED = "_aligned_faces"      # SFEW 2.0's Train_Aligned_Faces/, Val_Aligned_Faces(_new)/
FRAME_NAME = re.compile(r"(?P<film>.+?)_\d+_\d+")       # <film>_<clip>_<frame>; a film's name may hold "_"


def film_of(path: str) -> str | None:
    """The film of an SFEW frame from its file name, or None for a name of another form."""
    match = FRAME_NAME.fullmatch(Path(path).stem)
    return match["film"] if match else None


@READERS.register("sfew")
class SFEWReader(DatasetReader):
    """SFEW 2.0 Train/Val class folders; Val is the test split unless ``val_as: val``."""

    name = "sfew"
    expects = ("Train/<Angry|Disgust|Fear|Happy|Neutral|Sad|Surprise>/<film>_<clip>_<frame>.png and "
               "Val/<same>/... (or Train_Aligned_Faces/, Val_Aligned_Faces_new/ as the archives unpack)")
    option_defaults: Mapping[str, object] = {"val_as": "test"}

    def official_splits(self) -> tuple[str, ...]:
        """Train, and Val as ``val_as`` when it holds an image: a Val/ of empty class folders defines no
        split (it is carved, as the folder reader's empty test/ is; one whose images were all dropped is
        an error at the shard stage)."""
        val = self._folders()["val"]
        return ("train",) + ((self.options["val_as"],) if holds_a_file(val, images_only=True) else ())

    def check_options(self) -> None:
        if self.options["val_as"] not in ("test", "val"):
            raise ValueError(f"{self.name}: val_as must be 'test' or 'val', got {self.options['val_as']!r}")

    def scan(self) -> Iterator[FaceRecord | Dropped]:
        val_as = self.options["val_as"]
        folders = self._folders()
        split_dirs = {"train": folders["train"], val_as: folders["val"]}
        for split, folder in split_dirs.items():
            bad = sorted(d.name for d in subdirs(folder) if d.name.lower() not in {c.lower() for c in SFEW_CLASSES})
            if bad:
                raise ValueError(
                    f"{self.name}: {folder} has folders {bad} that are not SFEW classes {list(SFEW_CLASSES)}; "
                    "for other class names use the 'folder' reader with a mapping"
                )
        frames, loose = 0, []
        for item in read_class_tree(self.name, split_dirs, None, self.root):
            if isinstance(item, FaceRecord):
                frames += 1
                if film := film_of(item.path):
                    item = replace(item, extra={**item.extra, MOVIE: film})
                else:
                    loose.append(item.path)
            yield item
        if loose:           # the split carved from Train then mixes a film's frames, near-duplicates
            log.warning("%s: %d of %d frames are not named <film>_<clip>_<frame> as SFEW's release names them "
                        "(e.g. %s): each goes to a split on its own, so a film's frames can be in train and val",
                        self.name, len(loose), frames, shown(Path(loose[0]).name))

    def _folders(self) -> dict[str, Path]:
        """``{"train": ..., "val": ...}``: the folders holding the class folders (``Train/``,
        ``Train/Train_Aligned_Faces/`` or ``Train_Aligned_Faces/``, and Val's alike), matched case-insensitively."""
        found = {split: self._split_folders(split) for split in ("train", "val")}
        if not all(found.values()):
            raise DatasetLayoutError(self.name, self.root,
                                     ["Train/", "Val/ (or Train_Aligned_Faces/, Val_Aligned_Faces/)"])
        if len(found["train"]) > 1 or len(found["val"]) > 1:
            two = "; ".join(", ".join(d.name for d in dirs) for dirs in found.values() if len(dirs) > 1)
            raise ValueError(f"{self.name}: {self.root} holds a split twice ({two}): move one of them out (SFEW's "
                             "aligned faces or its original frames, not both)")
        by_name = {d.name.lower(): d for d in subdirs(self.root)}
        if "test" in by_name:
            log.info("%s: ignoring %s (SFEW test labels are not public)", self.name, by_name["test"])
        return {split: _inside_aligned(dirs[0], split) for split, dirs in found.items()}

    def _split_folders(self, split: str) -> list[Path]:
        """The root's folders named ``split`` or ``<split>_Aligned_Faces...``."""
        if not self.root.is_dir():
            return []
        return [d for d in subdirs(self.root) if d.name.lower() == split or d.name.lower().startswith(split + ALIGNED)]


def _inside_aligned(folder: Path, split: str) -> Path:
    """``folder``, or the ``<Split>_Aligned_Faces`` folder in it when that is all it holds (``Train/`` with the
    archive unpacked into it)."""
    inner = subdirs(folder)
    aligned = [d for d in inner if d.name.lower().startswith(split + ALIGNED)]
    if aligned and len(inner) > 1:
        raise ValueError(f"sfew: {folder} holds a split twice ({', '.join(d.name for d in inner)}): move one of them "
                         "out (SFEW's aligned faces or its original frames, not both)")
    return aligned[0] if aligned else folder
