"""Inference for users: images, folders or videos in, per-face expression probabilities out.

This module handles the inputs: which files and video frames are read (:func:`expand_inputs`,
:func:`iter_frames`), the run over them (:func:`run_predict`) with its one-line summary, and annotated
copies; :mod:`fermodels.predictions` writes the rows.
Each face becomes model input through :class:`fermodels.predictor.Predictor`, which repeats the
steps that made the checkpoint's training faces.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import cv2
import numpy as np

from ferdata.atomic import atomic_write_bytes, writable_folder
from ferdata.datasets.folder import HEIF_EXTS, hidden, visible_files
from ferdata.errors import shown, utf8_name
from ferdata.imagefile import read_header
from ferdata.io import IMAGE_EXTS, VIDEO_EXTS, BadImage, encode_jpeg
from ferdata.progress import progress
from ferdata.stages.detect_work import DETECTOR_FAILED
from fermodels.predictions import NAME_MAX, Results, partial_path, written_as_scored
from fermodels.predictor import DetectorFailed, FaceSample, Picture, Predictor
from fermodels.runstate import checkpoint_file
from fermodels.videofile import missing_bytes, unindexed_mp4

log = logging.getLogger(__name__)
# a folder's GIFs are scored as a GIF named is (its first picture, with a warning); dataset readers leave GIFs out
PICTURE_EXTS = IMAGE_EXTS | {".gif"}
FRAME_COPY = re.compile(r"(.+)\.f\d{6,}\.jpg", re.DOTALL)   # annotation_path's name of a frame's copy
# containers whose header lists the frames shown: an MP4/MOV also lists those its edit list leaves out (a clip cut
# from a longer one without re-encoding keeps the frames back to a keyframe), so its count may exceed what decodes
COUNTED_EXTS = {".avi"}
MOST_FAILED = 10        # pictures the face backend may fail on before any success: beyond, it is broken
COPY_MARK = b"ferdata predict: annotated copy"          # a JPEG comment in every --annotate copy
FRAME_ROOM = len(".f0000000")                       # what annotation_path adds for a video frame (up to 10^7)


def marked_jpeg(data: bytes) -> bytes:
    """JPEG ``data`` with a comment (COM segment) saying it is an annotated copy, after its JFIF header."""
    at = 2 + (2 + int.from_bytes(data[4:6], "big") if data[2:4] == b"\xff\xe0" else 0)
    return data[:at] + b"\xff\xfe" + (len(COPY_MARK) + 2).to_bytes(2, "big") + COPY_MARK + data[at:]


def is_annotated_copy(path: Path) -> bool:
    """Whether ``path`` is a copy an earlier ``--annotate`` wrote (its comment, :func:`marked_jpeg`)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    at = 2
    while head[:2] == b"\xff\xd8" and at + 4 <= len(head) and head[at] == 0xFF and head[at + 1] in (0xE0, 0xFE):
        size = int.from_bytes(head[at + 2:at + 4], "big")
        if head[at + 1] == 0xFE and head[at + 4:at + 2 + size] == COPY_MARK:
            return True
        at += 2 + size
    return False


@contextmanager
def openable_name(path: Path) -> Iterator[str]:
    """A name OpenCV can open ``path`` by: the path itself, or, for a name that is not UTF-8 (its
    bytes kept as surrogates, which ``cv2.VideoCapture`` crashes the process on), a link to the
    file under a temporary UTF-8 name."""
    name = str(path)
    if utf8_name(name):
        yield name
        return
    with tempfile.TemporaryDirectory(prefix="fer-video-") as tmp:
        link = os.path.join(tmp, "video" + path.suffix.lower())
        os.symlink(os.path.abspath(path), link)
        yield link


def iter_frames(path: Path, every: int) -> Iterator[tuple[int, Picture | None, str]]:
    """(frame index, picture or None, problem) for an image (which keeps its file's bytes for
    the reduced decodes), or every ``every``-th video frame."""
    if path.suffix.lower() in VIDEO_EXTS:
        try:
            with openable_name(path) as name:
                cap = cv2.VideoCapture(name)
        except OSError:                 # no link could be made for a name OpenCV cannot take
            cap = None
        if cap is None or not cap.isOpened():
            missing = missing_bytes(path)
            unindexed = not missing and unindexed_mp4(path)     # the boxes walked again only where none is missing
            if missing:                             # a copy stopped before the index (moov) at the end
                log.warning("%s: its container lists %d bytes more than the file holds (a file cut short?) and no "
                            "frame of it could be read (an MP4/MOV is indexed at its end: a recording that was cut "
                            "off, or a copy stopped part way)", shown(path), missing)
            elif unindexed:                         # a recording stopped before it wrote its index
                log.warning("%s: its media has no index (moov), which an MP4/MOV writes at its end: a recording "
                            "that was cut off, no frame of it readable", shown(path))
            yield 0, None, "video_cut_short" if missing or unindexed else "unreadable_video"
            return
        index = 0
        aspect = pixel_aspect(cap)      # its pixels' width / height: 1, or a camcorder's or DVD's non-square ones
        # the container's count (0: not known); Matroska/WebM store none: OpenCV's is duration x fps, and the
        # duration is the longest track's (an audio track running on past the last frame)
        listed = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if path.suffix.lower() in COUNTED_EXTS else 0
        last = 0.0                      # the last frame's timestamp (s): where a file cut short ends
        try:
            while True:
                if index % every:       # a frame not scored: decoded, not converted to BGR (a 1080p frame: 1.2 ms)
                    if not cap.grab():
                        break
                    index += 1
                    last = float(cap.get(cv2.CAP_PROP_POS_MSEC)) / 1000
                    continue
                ok, bgr = cap.read()
                if not ok:
                    break
                if index % every == 0:
                    picture = Picture(square_pixels(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), aspect))
                    picture.time = round(float(cap.get(cv2.CAP_PROP_POS_MSEC)) / 1000, 6)   # the frame's timestamp
                    last = picture.time
                    yield index, picture, ""
                index += 1
        finally:
            cap.release()
        if index == 0:
            yield 0, None, "no_video_frames"
        elif index < listed - 1:       # one frame of slack: some containers estimate the count from the duration
            log.warning("%s: %d of the %d frames its header lists could be read (a file cut short?), the last at "
                        "%.3f s; the rest are not scored", shown(path), index, listed, last)
            yield index, None, "video_cut_short"
        elif missing := missing_bytes(path):
            log.warning("%s: its container lists %d bytes more than the file holds (a file cut short?): %d frames "
                        "could be read, the last at %.3f s; any after it are not scored", shown(path), missing,
                        index, last)
            yield index, None, "video_cut_short"
        return
    try:
        data = path.read_bytes()
        picture = Picture.from_file(data)
    except (OSError, BadImage) as e:
        yield 0, None, getattr(e, "reason", "unreadable_file")
        return
    if "first_frame_only" in picture.reduced(1).conversions:     # as the align stage decodes it: its first picture
        log.warning("%s holds %d pictures (an animated GIF/WebP/PNG or a multi-page TIFF): only the first is scored "
                    "(as a video, e.g. .mp4, every frame would be)", shown(path), read_header(data).frames)
    yield 0, picture, ""


def pixel_aspect(cap: Any) -> float:
    """The pixel aspect ratio, width / height, of the frames a capture gives (the video's sample aspect ratio; 1
    when not given): 4/3 for HDV or AVCHD's 1440x1080 shown as 1920x1080, 32/27 for a widescreen DVD's 720x480;
    its inverse for a video OpenCV turns upright by a quarter turn (a phone's)."""
    num, den = cap.get(cv2.CAP_PROP_SAR_NUM), cap.get(cv2.CAP_PROP_SAR_DEN)
    aspect = num / den if num > 0 and den > 0 else 1.0
    return 1 / aspect if cap.get(cv2.CAP_PROP_ORIENTATION_META) % 180 == 90 else aspect


def square_pixels(rgb: np.ndarray, aspect: float) -> np.ndarray:
    """A frame of pixels ``aspect`` times as wide as high widened (or narrowed) to square pixels, as a player shows
    it: OpenCV gives the stored pixels, on which a face is squeezed (3/4 as wide for 4/3) and aligned so."""
    if abs(aspect - 1.0) < 1e-3:
        return rgb
    height, width = rgb.shape[:2]
    wide = max(1, round(width * aspect))
    return cv2.resize(rgb, (wide, height), interpolation=cv2.INTER_AREA if wide < width else cv2.INTER_CUBIC)


def expand_inputs(inputs: Iterable[Path], skipped: list[dict] | None = None) -> list[Path]:
    """Files as given; folders expanded (recursively, linked folders too, sorted) to their images and
    videos, the other files, pipes and devices, and hidden images and folders (``._x.jpg``, ``.thumbs/``)
    counted in warnings and, given ``skipped``, added to it one by one (``source``, ``reason``: what a
    ``.json`` output lists); a file named twice (itself and inside a folder given too) is read once."""
    out: dict[str, Path] = {}
    for p in inputs:
        if p.is_dir():
            found, others, links, unseen = [], [], [], []   # links: folders not followed (up the tree or walked)
            special = []             # a pipe waits forever for a writer, a link to /dev/zero never ends
            for f in visible_files(p):
                (unseen if hidden(f.name) else links if f.is_dir() else special if _special(f)
                 else found if f.suffix.lower() in PICTURE_EXTS | VIDEO_EXTS else others).append(f)
            if skipped is not None:
                skipped += passed_over(unseen, links, special, others)
            if special:
                log.warning("%s: %d pipe(s), socket(s) or device(s) skipped (no regular file), e.g. %s", shown(p),
                            len(special), shown(special[0]))
            if unseen:
                log.warning("%s: %d hidden file(s) or folder(s) skipped, e.g. %s", shown(p), len(unseen),
                            shown(unseen[0]))
            if others:
                log.warning("%s: %d file(s) neither image (%s) nor video (%s) skipped, e.g. %s", shown(p),
                            len(others), " ".join(sorted(PICTURE_EXTS)), " ".join(sorted(VIDEO_EXTS)), shown(others[0]))
            if links:
                log.warning("%s: %d linked folder(s) not followed (up the tree or read already), e.g. %s", shown(p),
                            len(links), shown(links[0]))
            if not found:          # a folder given for its pictures holds none: a wrong folder, not a result
                raise FileNotFoundError(f"{shown(p)}: no images ({' '.join(sorted(PICTURE_EXTS))}) or videos "
                                        f"({' '.join(sorted(VIDEO_EXTS))}) in it or below it")
        elif p.is_file():
            found = [p]
        elif _special(p):
            raise ValueError(f"{shown(p)} is not a regular file (a pipe, socket or device); give image or video files")
        else:
            raise FileNotFoundError(f"{shown(p)} does not exist")
        for f in found:
            out.setdefault(os.path.abspath(f), f)
    return list(out.values())


def passed_over(unseen: list[Path], links: list[Path], special: list[Path], others: list[Path]) -> list[dict]:
    """A folder's files and folders :func:`expand_inputs` passes over, each with why."""
    reasons = (("hidden", unseen), ("linked_folder_not_followed", links), ("not_a_regular_file", special),
               ("not_image_or_video", others))
    return [{"source": str(f), "reason": "heic_unsupported" if f.suffix.lower() in HEIF_EXTS else reason}
            for reason, found in reasons for f in found]


def _special(path: Path) -> bool:
    """Something there (a link followed) that is neither a folder nor a regular file."""
    return path.exists() and not path.is_dir() and not path.is_file()


def annotation_names(inputs: Iterable[Path], paths: Iterable[Path]) -> dict[Path, Path]:
    """Where each file's annotated copies go, relative to the ``--annotate`` folder: its path below
    the folder that holds every input (so ``a/x.jpg`` and ``b/x.jpg`` stay apart), ``.jpg`` added
    to names that are not JPEG already (``x.png`` -> ``x.png.jpg``, apart from ``x.jpg``). A JPEG
    keeps its name; an added name that a JPEG input holds too (``x.png`` beside ``x.png.jpg``), or
    a video's whose frame copies would take a JPEG input's name (``clip.avi`` beside
    ``clip.avi.f000000.jpg``, :func:`annotation_path`), gets a number (``x.png-2.jpg``)."""
    paths = list(paths)
    if not paths:
        return {}
    homes = [os.path.abspath(p if p.is_dir() else p.parent) for p in inputs]     # links kept as named
    base = Path(os.path.commonpath(homes))
    rels = {p: Path(os.path.abspath(p)).relative_to(base) for p in paths}
    names = {p: rel for p, rel in rels.items() if rel.suffix.lower() in (".jpg", ".jpeg")}
    taken = set(names.values())
    framed = {t.with_name(m[1]) for t in taken if (m := FRAME_COPY.fullmatch(t.name))}   # JPEGs named as frames

    def free(name: Path, video: bool) -> bool:
        return name not in taken and not (video and name.with_suffix("") in framed)
    for p, rel in rels.items():
        if p not in names:
            n, video = 1, rel.suffix.lower() in VIDEO_EXTS
            name = rel.with_name(_fit(rel.name, ".jpg", video))
            while not free(name, video):
                n += 1
                name = rel.with_name(_fit(rel.name, f"-{n}.jpg", video))
            names[p] = name
            taken.add(name)
    return {p: names[p] for p in paths}


def _fit(stem: str, ending: str, video: bool) -> str:
    """``stem + ending``, or, where that (with a video frame's number) is longer than a file name may
    be, ``stem`` cut short with a digest of it: a 252-byte ``x.png`` took 256 bytes as ``x.png.jpg``
    and the run ended at its copy, its predictions lost."""
    room = NAME_MAX - len(os.fsencode(ending)) - (FRAME_ROOM if video else 0)
    raw = os.fsencode(stem)
    if len(raw) <= room:
        return stem + ending
    tag = "~" + hashlib.sha1(raw).hexdigest()[:8]
    cut = stem
    while len(os.fsencode(cut)) > room - len(tag):
        cut = cut[:-1]
    return cut + tag + ending


def check_annotations(annotate: Path, names: Mapping[Path, Path]) -> None:
    """Refuse an ``--annotate`` folder where a copy would replace an input: a JPEG keeps its name
    there, below the folder that holds every input, so pointed at that folder it would replace the
    originals; nor any other file of that name there but an earlier run's copy (:func:`is_annotated_copy`)."""
    inputs = {os.path.realpath(p): p for p in names}
    listed: dict[Path, dict[str, list[Path]]] = {}        # each folder listed once, not once per video
    replaced = {p: _replaced_by(annotate, p, name, listed) for p, name in names.items()}
    for p, name in names.items():
        for target in [annotate / name, *replaced[p]]:     # a video's frame copies too
            if (hit := inputs.get(os.path.realpath(target))) is not None:
                raise ValueError(f"--annotate {annotate}: its copy of {p} would replace the input {hit}; choose a "
                                 "folder outside the inputs")
    for p, name in names.items():        # a photo of the same name there that is no input (IMG_0001.jpg)
        for target in replaced[p]:
            if not is_annotated_copy(target):
                raise ValueError(f"--annotate {annotate}: its copy of {p} would replace {target}, a file that is "
                                 "not an annotated copy (nor one this version marked: copies made before 2026-12 "
                                 "carry no mark); choose another folder or move the file away")


def _replaced_by(annotate: Path, p: Path, name: Path, listed: dict[Path, dict[str, list[Path]]]) -> list[Path]:
    """The files in ``annotate`` that ``p``'s copies may replace: its copy, or a video's frames' copies
    (any frame's: which frames hold a face is known only once it is read). ``listed``: the frame copies
    of each folder listed so far, by video name."""
    if p.suffix.lower() not in VIDEO_EXTS:
        return [annotate / name] if os.path.lexists(annotate / name) else []
    folder = annotate / name.parent
    if folder not in listed:
        listed[folder] = {}
        for f in sorted(folder.iterdir()) if folder.is_dir() else ():
            if m := FRAME_COPY.fullmatch(f.name):
                listed[folder].setdefault(m[1], []).append(f)
    return listed[folder].get(name.with_suffix("").name, [])


def annotation_path(name: Path, frame: int, video: bool) -> Path:
    """A video frame's copy carries its frame number: ``clip.avi.jpg`` -> ``clip.avi.f000010.jpg``."""
    return name.with_name(f"{name.stem}.f{frame:06d}{name.suffix}") if video else name


def run_predict(predictor: Predictor, paths: Iterable[Path], *, batch_size: int, every: int,
                annotate: Path | None = None, names: Mapping[Path, Path] | None = None,
                results: Results | None = None) -> tuple[list[dict], list[dict]]:
    """(one row per face with its probabilities, one summary per image/frame with its face count,
    or the reason it could not be read), gathered in ``results`` when given. With ``annotate``, each
    image with a face is saved there boxed and labelled, under ``names[path]`` (default: the file's
    name, see :func:`annotation_names`)."""
    results = Results() if results is None else results
    rows, summary = results.rows, results.summary
    pending: list[FaceSample] = []
    failures: list[str] = []                            # pictures the face backend raised on
    ran = 0                                             # pictures it ran on (faces or none)

    if not predictor.card.per_sample:
        log.warning("%s's predictions depend on the other faces in a batch (its card: per_sample false): "
                    "scoring one face at a time", predictor.card.name)

    def flush() -> None:
        chunks = (predictor.probabilities(pending[i:i + batch_size]) for i in range(0, len(pending), batch_size))
        scored = []
        for face, p in zip(pending, (row for chunk in chunks for row in chunk)):
            finite = bool(np.isfinite(p).all())                     # argmax of NaNs would say class 0
            if not finite:
                log.warning("%s face %d: the model's probabilities are not finite; no expression given",
                            shown(face.source), face.index)
            row = {"source": face.source, "frame": face.frame, "face": face.index,
                   "box": [round(v, 1) for v in face.box], "score": round(face.score, 4),
                   "expression": predictor.classes[int(p.argmax())] if finite else None}
            row.update({c: round(float(v), 6) if finite else None for c, v in zip(predictor.classes, p)})
            row["time"] = face.time
            scored.append(row)
        pending.clear()
        results.add(scored)

    paths = list(paths)
    for path in progress(paths, desc="predict", unit="file", total=len(paths)):
        video = path.suffix.lower() in VIDEO_EXTS
        last = None                                     # a video's last frame scored: where a cut one's rows end
        for frame, picture, problem in iter_frames(path, every):
            if picture is None:
                if problem != "video_cut_short":    # its frames there were scored; iter_frames told the rest
                    log.warning("%s skipped: %s", shown(path), problem)
                summary.append({"source": str(path), "frame": frame, "faces": 0, "problem": problem,
                                **({"time": last} if problem == "video_cut_short" else {})})
                continue
            last = picture.time
            try:
                faces, dropped = predictor.faces(picture, str(path), frame)
            except DetectorFailed as e:     # one odd picture ended the run, every row scored so far lost
                failures.append(f"{shown(path)}: {e}")
                if len(failures) >= MOST_FAILED and ran == 0:        # as the detect stage: a broken backend
                    raise RuntimeError(f"predict: the face backend ({predictor.backend.name}) failed on the first "
                                       f"{len(failures)} pictures: a broken install, model or device, not odd "
                                       f"pictures; the first: {failures[0]}") from e
                log.warning("%s%s skipped: %s (%s)", shown(path), f" frame {frame}" if video else "",
                            DETECTOR_FAILED, e)
                summary.append({"source": str(path), "frame": frame, **({"time": picture.time} if video else {}),
                                "faces": 0, "problem": DETECTOR_FAILED})
                continue
            summary.append({"source": str(path), "frame": frame, **({"time": picture.time} if video else {}),
                            "faces": len(faces), "dropped": dropped})
            ran += 1
            log.debug("%s%s: %d face(s)", shown(path), f" frame {frame}" if video else "",
                      len(faces))                                       # -v; the end counts
            pending += faces
            if annotate is not None and faces:
                flush()
                name = (names or {}).get(path) or annotation_names([path], [path])[path]
                draw_faces(picture.rgb, rows[-len(faces):], annotate / annotation_path(name, frame, video),
                           picture.scale)
            elif len(pending) >= batch_size:
                flush()
    flush()
    return rows, summary


def describe(summary: list[dict], most: int = 5) -> str:
    """One line for the user: faces found, images or frames without one (named: a CSV has no row
    for them), inputs not read (named, with the reason), faces skipped for bad geometry."""
    unread = [s for s in summary if s.get("problem")]
    faceless = [s for s in summary if s["faces"] == 0 and not s.get("problem")]
    named = ", ".join(shown(s["source"]) + (f" frame {s['frame']}" if Path(s["source"]).suffix.lower() in VIDEO_EXTS
                                            else "") for s in faceless[:most])
    parts = [f"{sum(s['faces'] for s in summary)} face(s) in {len(summary) - len(unread)} image(s)/frame(s)",
             f"{len(faceless)} without a face" + (f": {named}{', ...' if len(faceless) > most else ''}"
                                                   if faceless else "")]
    if unread:
        told = ", ".join(map(_unread, unread[:most]))
        parts.append(f"{len(unread)} not read: {told}{', ...' if len(unread) > most else ''}")
    skipped = sum(s.get("dropped", 0) for s in summary)
    if skipped:
        parts.append(f"{skipped} face(s) skipped (bad geometry or no landmarks; see the warnings)")
    return "; ".join(parts)


def _unread(entry: dict) -> str:
    """An input not read, for the summary line: its name, why, and for a video cut short where its rows end."""
    end = f", scored to {entry['time']:g} s" if entry.get("time") is not None else ""
    return f"{shown(entry['source'])} ({entry['problem']}{end})"


def draw_faces(image: np.ndarray, rows: list[dict], path: Path, scale: float = 1.0) -> None:
    """Save ``image`` with each face's box (in file pixels; ``scale``: the image's size relative
    to the file's, below 1 for a huge JPEG decoded reduced) and top expression."""
    canvas = np.ascontiguousarray(image).copy()
    for r in rows:
        x0, y0, x1, y1 = (int(round(v * scale)) for v in r["box"])
        cv2.rectangle(canvas, (x0, y0), (x1, y1), (0, 200, 0), 2)
        label = f"{r['expression']} {r[r['expression']]:.2f}" if r["expression"] else "?"
        cv2.putText(canvas, label, (x0, max(12, y0 - 4)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 200, 0), 1, cv2.LINE_AA)
    atomic_write_bytes(path, marked_jpeg(encode_jpeg(canvas, 90)))     # any file name (cv2's imwrite needs UTF-8)


def predict_files(inputs: Iterable[Path], checkpoint: str | Path, *, out: Path | None = None,
                  annotate: Path | None = None, backend: str | None = None, model_dir: str | Path | None = None,
                  backend_options: Mapping[str, Any] | None = None, batch_size: int = 32, every: int = 10,
                  device: str = "auto", flip_tta: bool = False,
                  allow_download: bool = False, grey: bool | None = None,
                  keypoints: str | None = None, stream: Callable[[str], None] | None = None,
                  ) -> Results:
    """Score every face of ``inputs`` (images, videos, folders of them) with a checkpoint; write
    the rows to ``out`` (.csv or .json) when given, else as CSV to ``stream`` (stdout), as they are
    scored (:func:`written_as_scored`). Returns the rows (one per face) and the summary per image or
    frame (face counts; :func:`fermodels.predictions.csv_text` formats the rows). The library side
    of ``ferdata predict``."""
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"--out {out}: predictions are written as .csv or .json; end the name in one of them")
    if out is not None and out.is_dir():
        raise ValueError(f"--out {out} is a folder: give the file to write (a name ending in .csv or .json)")
    if out is not None and partial_path(out).is_dir():     # the run's rows go there first: found now, not at its end
        raise ValueError(f"--out {out}: {partial_path(out)} is a folder, where the run keeps its rows until it ends: "
                         "move it away, or choose another name")
    if out is not None:
        writable_folder(out.parent, f"--out {out}:")
    if annotate is not None:
        writable_folder(annotate, "--annotate")
    checkpoint_file(checkpoint)                   # before walking the inputs, which may take minutes and warn
    inputs, results = list(inputs), Results()
    paths = expand_inputs(inputs, results.skipped)
    names = annotation_names(inputs, paths)
    if annotate is not None:
        check_annotations(annotate, names)
    predictor = Predictor(checkpoint, backend=backend, device=device, model_dir=model_dir,
                          backend_options=backend_options, flip_tta=flip_tta, allow_download=allow_download,
                          grey=grey, keypoints=keypoints)
    for folder in (annotate, out.parent if out is not None else None):
        if folder is not None:          # made once the checkpoint loaded: a bad one leaves no empty folders
            folder.mkdir(parents=True, exist_ok=True)
    scoring = {"grey": predictor.grey, "flip_tta": predictor.flip_tta, "backend": predictor.backend.name,
               "keypoints": predictor.keypoints}
    with written_as_scored(results, predictor.classes, out, stream, scoring):
        run_predict(predictor, paths, batch_size=batch_size, every=every, annotate=annotate, names=names,
                    results=results)
    return results
