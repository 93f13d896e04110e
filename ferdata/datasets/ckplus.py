"""CK+ (Extended Cohn-Kanade): image sequences from neutral onset to peak expression.

Layout: ``cohn-kanade-images/S005/001/S005_001_00000011.png``, the label in
``Emotion/S005/001/S005_001_00000011_emotion.txt`` (one float such as
``3.0000000e+00``, next to the peak frame; only 327 of 593 sequences have one) and
optional ``Landmarks/.../<frame>_landmarks.txt`` (68 ``x y`` lines per frame).

The common static protocol keeps the last ``frames`` (3) frames up to the peak of
every labelled sequence (981 images) and can add the first ``neutral_frames`` frames
as Neutral. Sequences without a label are dropped (one ``no_emotion_label`` item
each). There is no official split; folds must be subject-independent
(``ferdata.splits.assign_splits(..., by="subject", folds=10)``).
"""
from __future__ import annotations

import logging
import re
from functools import partial
from pathlib import Path
from typing import Generator, Iterator, Mapping

import numpy as np

from ferdata.classes import CLASSES, NEUTRAL, to_canonical
from ferdata.datasets.base import (LANDMARKS_UNREADABLE, READERS, DatasetLayoutError, DatasetReader, read_text,
                                   whole)
from ferdata.datasets.folder import hidden, is_image, stray_images, subdirs, unread, visible_files
from ferdata.records import Dropped, FaceRecord, make_key

log = logging.getLogger(__name__)

IMAGE_DIRS = ("cohn-kanade-images", "extended-cohn-kanade-images/cohn-kanade-images", "CK+/cohn-kanade-images")
EMOTION_DIRS = ("Emotion", "Emotion_labels/Emotion", "Emotion_labels")
LANDMARK_DIRS = ("Landmarks", "Landmarks/Landmarks")
FRAME = re.compile(r"_(\d+)$")


def _first_dir(root: Path, candidates: tuple[str, ...]) -> Path | None:
    """The first candidate folder that holds subject folders (``S###``)."""
    for rel in candidates:
        d = root / rel
        if d.is_dir() and any(p.name[:1] in "Ss" for p in subdirs(d)):
            return d
    return None


def _frame_number(path: Path) -> int:
    m = FRAME.search(path.stem)
    if m is None:
        raise ValueError(f"{path.name}: no frame number")
    return int(m.group(1))


def _one_file_per_frame(files: list[Path]) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """One file per frame number, in frame order, and each other file of a frame with the one kept.

    A frame saved twice (``.png`` and a ``.jpg`` copy) is one frame: both taken, one of the last
    ``frames`` frames was a copy and a real frame fell out of the window unrecorded. The ``.png``
    (CK+'s own format) is kept, then the first name."""
    by_frame: dict[int, list[Path]] = {}
    for path in files:
        by_frame.setdefault(_frame_number(path), []).append(path)
    kept, copies = [], []
    for number in sorted(by_frame):
        first, *others = sorted(by_frame[number], key=lambda p: (p.suffix.lower() != ".png", p.name))
        kept.append(first)
        copies += [(p, first) for p in others]
    return kept, copies


def whole_number(reader: str, option: str, value: object, least: int) -> int:
    """An integer option's value, refused with its name and what it takes when it is not a whole
    number >= ``least`` (``int()`` would truncate 2.5 and quote only Python's own message for 'abc')."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{reader}: options.{option} must be a whole number >= {least}, got {value!r}")
    return value


def read_landmarks(path: Path) -> np.ndarray:
    """A CK+ ``*_landmarks.txt`` file as float32 (68, 2); ``ValueError`` if malformed."""
    values = np.array(read_text(path).split(), dtype=np.float32)
    if values.size != 136 or not np.all(np.isfinite(values)):
        raise ValueError(f"{path.name}: {values.size} values, expected 136")
    return values.reshape(68, 2)


@READERS.register("ckplus")
class CKPlusReader(DatasetReader):
    """Last ``frames`` frames of each labelled sequence, optionally ``neutral_frames`` onset frames."""

    name = "ckplus"
    expects = (
        "cohn-kanade-images/S###/###/*.png + Emotion/S###/###/*_emotion.txt "
        "(+ optional Landmarks/S###/###/*_landmarks.txt)"
    )
    option_defaults: Mapping[str, object] = {"frames": 3, "neutral_frames": 0}

    def check_options(self) -> None:
        self.options["frames"] = whole_number(self.name, "frames", self.options["frames"], 1)
        self.options["neutral_frames"] = whole_number(self.name, "neutral_frames", self.options["neutral_frames"], 0)

    def scan(self) -> Iterator[FaceRecord | Dropped]:
        frames, neutral = self.options["frames"], self.options["neutral_frames"]
        images = _first_dir(self.root, IMAGE_DIRS)
        emotions = _first_dir(self.root, EMOTION_DIRS)
        if images is None or emotions is None:
            raise DatasetLayoutError(self.name, self.root, ["cohn-kanade-images/S###/", "Emotion/S###/"])
        landmarks = _first_dir(self.root, LANDMARK_DIRS)
        if landmarks is None:
            log.info("%s: no Landmarks/ folder; records carry no landmarks", self.name)
        walked: set[tuple[str, str]] = set()
        strays = partial(stray_images, self.name, base=images, reason="outside_sequence_folder",
                         hint=f"CK+ keeps frames directly in {images.name}/<subject>/<sequence>/ (move it there, "
                              "or remove it)")
        yield from strays(visible_files(images, recursive=False))
        for subject_dir in subdirs(images):
            yield from strays(visible_files(subject_dir, recursive=False))
            for seq_dir in subdirs(subject_dir):
                walked.add((subject_dir.name, seq_dir.name))
                for nested in subdirs(seq_dir):
                    yield from strays(visible_files(nested, fence=self.root))
                yield from self._sequence(seq_dir, emotions, landmarks, frames, neutral)
        yield from self._unmatched_labels(emotions, images, walked)

    def _unmatched_labels(self, emotions: Path, images: Path, walked: set[tuple[str, str]]) -> Iterator[Dropped]:
        """Label files :meth:`_sequence` does not read, each a counted drop: a label without its frames
        (a partly extracted copy), and every hidden ``._<frame>_emotion.txt`` (macOS leaves one beside
        each file copied from its disks; read as a second label it made the sequence ambiguous)."""
        for label_file in sorted(emotions.glob("*/*/*_emotion.txt")):
            subject, seq = label_file.parent.parent.name, label_file.parent.name
            if hidden(subject) or hidden(seq):
                continue
            if hidden(label_file.name):
                yield Dropped(self.name, make_key(label_file.stem), *unread(label_file))
            elif (subject, seq) not in walked:
                yield Dropped(self.name, make_key(subject, seq), "missing_image",
                              f"{label_file}: no {images.name}/{subject}/{seq}/ folder")

    def _sequence(
        self, seq_dir: Path, emotions: Path, landmarks: Path | None, frames: int, neutral: int
    ) -> Iterator[FaceRecord | Dropped]:
        subject, seq = seq_dir.parent.name, seq_dir.name
        seq_key = make_key(subject, seq)
        label_files = sorted(p for p in (emotions / subject / seq).glob("*_emotion.txt")
                             if not hidden(p.name))                      # ._x_emotion.txt: _unmatched_labels
        if not label_files:
            yield Dropped(self.name, seq_key, "no_emotion_label", f"{subject}/{seq}")
            return
        if len(label_files) > 1:
            yield Dropped(self.name, seq_key, "ambiguous_label", ", ".join(p.name for p in label_files))
            return
        try:
            native = whole(read_text(label_files[0]))
            label = to_canonical("ckplus", native)
        except ValueError as err:
            yield Dropped(self.name, seq_key, "bad_label", f"{label_files[0].name}: {err}")
            return
        peak_stem = label_files[0].name[: -len("_emotion.txt")]
        try:
            peak = _frame_number(Path(peak_stem))
        except ValueError as err:
            yield Dropped(self.name, seq_key, "bad_filename", f"{label_files[0].name}: {err}")
            return
        images = yield from self._frames(seq_dir)
        upto = [p for p in images if _frame_number(p) <= peak]
        if not upto or _frame_number(upto[-1]) != peak:
            yield Dropped(self.name, seq_key, "missing_image", f"peak frame {peak_stem} not in {seq_dir}")
            return
        chosen = upto[-frames:]
        onset = [p for p in upto[:neutral] if p not in chosen]
        if onset and label in self.excluded:     # a sequence left out is left out whole: its onset too
            for p in onset:
                yield Dropped(self.name, make_key(p.stem), "excluded_class",
                              f"onset frame of a {CLASSES[label]} sequence (options.exclude_classes)")
            onset = []
        for path, cid, native_label, role in (
            [(p, NEUTRAL, "0", "onset") for p in onset] + [(p, label, str(native), "peak") for p in chosen]
        ):
            yield self._record(path, cid, native_label, role, subject, seq, landmarks)

    def _frames(self, seq_dir: Path) -> Generator[Dropped, None, list[Path]]:
        """The frames of a sequence folder, one file per frame number in frame order (returned); every
        other image file there is a counted drop (yielded): hidden ones, those named without a frame
        number, and a second file of one frame (its ``.jpg`` copy beside the ``.png``)."""
        files = [p for p in seq_dir.iterdir() if is_image(p)]
        for path in sorted(p for p in files if hidden(p.name)):               # ._S005_001_00000001.png
            yield Dropped(self.name, make_key(path.stem), *unread(path))
        files = [p for p in files if not hidden(p.name)]
        framed = [p for p in files if FRAME.search(p.stem)]
        for stray in sorted(set(files) - set(framed)):         # a copy or preview beside the frames: itself only
            yield Dropped(self.name, make_key(stray.stem), "bad_filename",
                          f"{stray}: not a frame (<subject>_<sequence>_<frame number>{stray.suffix})")
        images, copies = _one_file_per_frame(framed)
        for path, kept in copies:              # keyed by its whole name: the kept file's record has its stem
            yield Dropped(self.name, make_key(path.name), "duplicate_frame",
                          f"{path}: a second file of frame {_frame_number(path)}, not read: {kept.name} is "
                          "(keep one file per frame: remove the copy)")
        return images

    def _record(
        self, path: Path, label: int, native: str, role: str, subject: str, seq: str, landmarks: Path | None
    ) -> FaceRecord | Dropped:
        key = make_key(path.stem)
        lmk = None
        if landmarks is not None:
            lmk_path = landmarks / subject / seq / f"{path.stem}_landmarks.txt"
            if lmk_path.is_file():
                try:
                    lmk = read_landmarks(lmk_path)
                except ValueError as err:       # the frame and its label are good: keep them
                    self.note(LANDMARKS_UNREADABLE, key, str(err))
            else:
                log.debug("%s: no landmarks file %s", self.name, lmk_path)
        return FaceRecord(
            dataset=self.name, key=key, path=str(path), label=label, native_label=native,
            subject=subject, landmarks=lmk,
            extra={"sequence": f"{subject}_{seq}", "frame": _frame_number(path), "role": role},
        )
