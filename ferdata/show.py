"""``ferdata show``: a contact sheet to check alignment by eye.

One tile per sample: the aligned face with its 68 landmarks (dots) and the ArcFace
template's 5 points (crosses: eyes, nose and mouth corners should sit on them), the
heatmap overlaid on the face, and the left half beside the mirrored right half,
labelled with class, backend and key. Reads shards (``<split>/*.tar``), a single tar,
or an ``aligned`` chunk folder (heatmap and halves are then rendered on the fly with
the pipeline's own functions).

The crosses are the template for the ``align.padding`` the crops were made with, which the
split's ``_info.json`` records (``preprocess.align.padding``) and an aligned chunk folder's
``report.json`` (``settings.padding``). Where the tar's folder records none (outputs of a version
that did not record it, a tar copied out alone) they are drawn for padding 0, and the face panel
says ``pad ?``: they then fit only crops made with the default padding 0.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ferdata.atomic import atomic_write_bytes, writable_folder
from ferdata.classes import CLASSES
from ferdata.errors import shown
from ferdata.geometry import split_halves, template
from ferdata.heatmap import max_heatmap_u8
from ferdata.io import decode_jpeg_rgb
from ferdata.layout import INFO, REPORT
from ferdata.tario import iter_tar_samples, load_npy

PANEL = 160                      # display side of the face panel, pixels
HEATMAP_SIZE, HEATMAP_SIGMA = 28, 1.0
COLUMNS = 2                      # tiles per sheet row
LABEL_H = 18
_GROUP_COLOURS = ((0, 17, (255, 210, 0)), (17, 27, (255, 120, 0)), (27, 36, (0, 200, 255)),
                  (36, 48, (0, 255, 0)), (48, 68, (255, 0, 200)))


@dataclass(frozen=True)
class SheetSample:
    """What one tile shows."""

    key: str
    face: np.ndarray              # RGB uint8, N x N
    lmk: np.ndarray | None        # (68, 2) crop pixels
    heatmap: np.ndarray | None    # uint8 single channel; None: no 68 landmarks (5 points: RAF-DB's), no heatmap
    left: np.ndarray
    right: np.ndarray
    label: str
    crosses: np.ndarray           # (5, 2) crop pixels: the template the crop was aligned to
    padding: float | None         # the align padding of that template; None: not recorded, 0 assumed


_NO_FACE = "derived chunks (derived-*.tar) hold no face image: give the shards or the aligned folder"


def _tars(path: Path) -> list[Path]:
    if path.is_file():
        if path.suffix.lower() != ".tar":      # read as a tar, it was blamed on the stage that wrote it
            raise ValueError(f"{path} is no .tar: give a shards folder, one .tar of it, or an aligned folder")
        if path.name.startswith("derived-"):
            raise ValueError(f"{path}: {_NO_FACE}")
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    # a folder so named (a shard unpacked beside it) is no tar; a dangling link, a pipe or a device is told,
    # not opened (a pipe blocked for ever; a folder was blamed on the sheet: "a file must be written there"),
    # where it is one of the tars to show (an aligned chunk whose cache is gone leaves the shards' sheet alone)
    tars = [p for p in sorted(path.rglob("*.tar")) if not p.is_dir()]
    shards = [p for p in tars if not p.name.startswith(("aligned-", "derived-"))]
    chosen = shards or [p for p in tars if p.name.startswith("aligned-")]
    odd = next((p for p in chosen if not p.is_file()), None)
    if odd is not None:
        raise ValueError(f"{odd}: not a regular file (a dangling link, a pipe or a device), so no tar to show: "
                         "`dvc checkout` the shards, or move it away")
    if not chosen and tars:
        raise ValueError(f"{path}: {_NO_FACE}")
    if not chosen:
        raise FileNotFoundError(f"{path}: no shards (*.tar) or aligned chunks (aligned-*.tar) found")
    return chosen


def _samples(path: Path, limit: int) -> Iterator[tuple[Path, str, dict[str, bytes]]]:
    """The first ``limit`` (tar, key, fields) taken round-robin over the tar files, so a sheet mixes
    splits and shards. One tar is read at a time (each is read whole, up to 256 MB), and no more tars
    read nor samples of each kept than those ``limit`` need: opening every tar at once held a whole
    dataset in memory for a sheet of 32."""
    tars = _tars(path)
    rounds = -(-limit // len(tars))         # rounds of one sample a tar that fill the sheet if no tar runs short
    while True:
        taken: list[list[tuple[Path, str, dict[str, bytes]]]] = []
        for tar in tars:
            taken.append(list(itertools.islice(_tar_samples(tar), rounds)))     # the tar closed after
            if rounds == 1 and sum(map(len, taken)) >= limit:                    # round one fills the sheet
                break
        order = [s for group in itertools.zip_longest(*taken) for s in group if s is not None]
        # the first ``rounds`` rounds are exact: enough of them, or every tar read to its end, and done
        if len(order) >= limit or all(len(t) < rounds for t in taken):
            yield from order[:limit]
            return
        rounds *= 2


def _tar_samples(tar: Path) -> Iterator[tuple[Path, str, dict[str, bytes]]]:
    """(tar, key, fields) of one tar: each sample named with its own tar."""
    for key, fields in iter_tar_samples(tar):
        yield tar, key, fields


def recorded_padding(folder: Path) -> float | None:
    """The ``align.padding`` the crops of the tars in ``folder`` were made with: a split folder's
    ``_info.json`` records it (``preprocess.align.padding``), an aligned chunk folder's
    ``report.json`` too (``settings.padding``); None where neither does."""
    for name, where in ((INFO, ("preprocess", "align", "padding")), (REPORT, ("settings", "padding"))):
        path = folder / name
        if not path.is_file():
            continue
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as e:        # RecursionError: JSON nested too deep
            raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e}); `ferdata verify` the shards, or "
                             "re-run the stage that wrote it") from e
        for field in where:
            value = value.get(field) if isinstance(value, dict) else None
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise ValueError(f"{path}: {'.'.join(where)} is {value!r}, not a number >= 0; `ferdata verify` the "
                             "shards, or re-run the stage that wrote it")
        return float(value)
    return None


def _sheet_sample(tar: Path, key: str, fields: dict[str, bytes], padding: float | None = None) -> SheetSample:
    """:func:`to_sheet_sample`, a sample it cannot draw named with its tar (a missing or undecodable
    member, malformed landmarks, a face of a size no template has, a label or json of another shape)."""
    try:
        return to_sheet_sample(key, fields, padding)
    except (KeyError, ValueError, TypeError, AttributeError, RecursionError, cv2.error) as e:
        raise ValueError(f"{tar}: sample {key!r} cannot be shown ({type(e).__name__}: {e}); "
                         f"`ferdata verify` the shards, or re-run the stage that wrote them") from e


def to_sheet_sample(key: str, fields: dict[str, bytes], padding: float | None = None) -> SheetSample:
    """Decode a shard sample; fields the sample lacks are rendered from ``jpg`` + ``lmk.npy``.
    ``padding``: the align padding the crop was made with (None: not recorded; the crosses then
    assume 0). ``ValueError`` for a face that is not a square crop of a size the template has,
    or landmarks that are not 68 finite points near the crop."""
    face = decode_jpeg_rgb(fields["jpg"])
    size = face.shape[0]
    if face.shape != (size, size, 3):
        raise ValueError(f"the face image is {'x'.join(map(str, face.shape))}, not a square RGB crop")
    crosses = template(size, padding or 0.0)         # a size no template has: ValueError naming it
    lmk = _landmarks(load_npy(fields["lmk.npy"], f"{key}.lmk.npy"), size) if "lmk.npy" in fields else None
    if "heatmap.png" in fields:
        heat = decode_jpeg_rgb(fields["heatmap.png"])
        if heat.dtype != np.uint8:
            raise ValueError(f"heatmap.png holds {heat.dtype} pixels, not the stage's 8-bit ones")
    elif lmk is not None:
        heat = max_heatmap_u8(lmk, HEATMAP_SIZE, HEATMAP_SIGMA, size / HEATMAP_SIZE)
    else:
        heat = None
    if "left.jpg" in fields and "right.jpg" in fields:
        left, right = decode_jpeg_rgb(fields["left.jpg"]), decode_jpeg_rgb(fields["right.jpg"])
    else:
        left, right = split_halves(face)
    meta = json.loads(fields["json"]) if "json" in fields else {}
    cls = int(fields["cls"]) if "cls" in fields else meta.get("label")
    name = CLASSES[cls] if isinstance(cls, int) and 0 <= cls < len(CLASSES) else "?"
    label = f"{name} | {meta.get('backend', '?')} | {key}"
    return SheetSample(key, face, lmk, heat, left, right, label, crosses, padding)


def _landmarks(lmk: np.ndarray, size: int) -> np.ndarray:
    """``lmk`` if it holds 68 (x, y) points of a ``size`` px crop, finite and within a crop's width
    of the crop (anything further is no face in it); else ``ValueError``."""
    if lmk.shape != (68, 2) or lmk.dtype.kind not in "iuf":
        raise ValueError(f"lmk.npy holds a {lmk.dtype} array of shape {lmk.shape}, not 68 (x, y) points")
    xy = lmk.astype(np.float64)
    if not np.isfinite(xy).all():
        raise ValueError("lmk.npy holds NaN or infinite coordinates")
    if xy.min() < -size or xy.max() > 2 * size:
        raise ValueError(f"lmk.npy holds coordinates from {xy.min():.4g} to {xy.max():.4g}: more than a crop's "
                         f"width outside the {size} px crop")
    return lmk


def _face_panel(s: SheetSample) -> np.ndarray:
    size = s.face.shape[0]
    k = PANEL / size
    panel = cv2.resize(s.face, (PANEL, PANEL), interpolation=cv2.INTER_LINEAR)
    if s.lmk is not None:
        for lo, hi, colour in _GROUP_COLOURS:
            for x, y in s.lmk[lo:hi]:
                cv2.circle(panel, (int(round((x + 0.5) * k - 0.5)), int(round((y + 0.5) * k - 0.5))), 2, colour, -1,
                           cv2.LINE_AA)
    for x, y in s.crosses:
        cv2.drawMarker(panel, (int(round((x + 0.5) * k - 0.5)), int(round((y + 0.5) * k - 0.5))),
                       (255, 255, 255), cv2.MARKER_CROSS, 9, 1, cv2.LINE_AA)
    if s.padding is None:                    # crosses for padding 0: the crop's own padding is not recorded
        for colour, width in (((0, 0, 0), 3), ((255, 255, 255), 1)):
            cv2.putText(panel, "pad ?", (3, PANEL - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.42, colour, width, cv2.LINE_AA)
    return panel


def _heat_panel(s: SheetSample) -> np.ndarray:
    face = cv2.resize(s.face, (PANEL, PANEL), interpolation=cv2.INTER_LINEAR)
    if s.heatmap is None:                    # a blank heatmap would read as 68 landmarks found nowhere
        panel = (face // 2 + 64).astype(np.uint8)
        for line, y in (("no 68", PANEL // 2 - 4), ("landmarks", PANEL // 2 + 12)):
            for colour, width in (((255, 255, 255), 3), ((0, 0, 0), 1)):
                cv2.putText(panel, line, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.42, colour, width, cv2.LINE_AA)
        return panel
    heat = cv2.resize(s.heatmap if s.heatmap.ndim == 2 else s.heatmap[..., 0], (PANEL, PANEL),
                      interpolation=cv2.INTER_LINEAR)
    colour = cv2.cvtColor(cv2.applyColorMap(heat, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(face, 0.55, colour, 0.45, 0.0)


def drawable(text: str) -> str:
    """``text`` as ``cv2.putText`` can draw it: ASCII, every other character as its escape (``\\x1b``,
    ``\\xe9``, ``\\udcff``). Its Hershey fonts draw ASCII alone, and a lone surrogate (a key or a json
    backend holding a name's undecodable bytes, in a shard made elsewhere) ended the process with a
    segmentation fault, no message."""
    return shown(text).encode("ascii", "backslashreplace").decode("ascii")


def _tile(s: SheetSample) -> np.ndarray:
    half_w = PANEL // 2
    halves = [cv2.resize(h, (half_w, PANEL), interpolation=cv2.INTER_LINEAR) for h in (s.left, s.right)]
    gap = np.full((PANEL, 4, 3), 255, np.uint8)
    body = np.concatenate([_face_panel(s), gap, _heat_panel(s), gap, halves[0], gap[:, :2], halves[1]], axis=1)
    strip = np.full((LABEL_H, body.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, drawable(s.label)[:70], (3, LABEL_H - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1,
                cv2.LINE_AA)
    return np.concatenate([strip, body], axis=0)


def contact_sheet(samples: list[SheetSample], columns: int = COLUMNS) -> np.ndarray:
    """Tiles in a grid (RGB uint8) with white gutters."""
    if not samples:
        raise ValueError("contact sheet needs at least one sample")
    tiles = [_tile(s) for s in samples]
    th, tw = tiles[0].shape[:2]
    sheet = np.full((sheet_height(len(tiles), columns), columns * (tw + 8) + 8, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        sheet[8 + r * (th + 8):8 + r * (th + 8) + th, 8 + c * (tw + 8):8 + c * (tw + 8) + tw] = t
    return sheet


# The tallest image each format's encoder writes (OpenCV: JPEG 65,500, WebP 16,383 px); PNG and BMP
# take the sheet of MAX_SAMPLES (about 1.4 GB in memory), the most one sheet shows.
SHEET_FORMATS = {".png": None, ".jpg": 65_500, ".jpeg": 65_500, ".webp": 16_383, ".bmp": None}
MAX_SAMPLES = 5000


def sheet_height(n: int, columns: int = COLUMNS) -> int:
    """Pixel height of :func:`contact_sheet` for ``n`` tiles (a tile is the label strip over a panel)."""
    return -(-n // columns) * (LABEL_H + PANEL + 8) + 8


def most_samples(out: Path) -> int:
    """The most samples a sheet in ``out``'s format holds."""
    limit = SHEET_FORMATS[out.suffix.lower()]
    return MAX_SAMPLES if limit is None else min(MAX_SAMPLES, (limit - 8) // (LABEL_H + PANEL + 8) * COLUMNS)


def capacity(out: Path) -> str:
    """What a sheet in ``out``'s format holds at most, and the ``-n`` to give instead."""
    most, limit = most_samples(out), SHEET_FORMATS[out.suffix.lower()]
    if limit is not None and most < MAX_SAMPLES:
        return (f"a {out.suffix} sheet holds at most {most} ({limit:,} px tall): use -n {most} or fewer, "
                "or a .png")
    return f"a sheet shows at most {MAX_SAMPLES} (about 1.4 GB in memory): use -n {MAX_SAMPLES} or fewer"


def show(path: Path, out: Path, n: int = 32) -> Path:
    """Write a contact sheet of the first ``n`` samples under ``path`` to ``out`` (the format follows
    its suffix)."""
    out = Path(out)
    if out.suffix.lower() not in SHEET_FORMATS:
        raise ValueError(f"--out {out}: a contact sheet is an image; end the name in "
                         f"{' or '.join(sorted(SHEET_FORMATS))}")
    if n < 1:
        raise ValueError(f"-n {n}: a sheet shows at least 1 sample")
    writable_folder(out.parent, "the contact sheet")     # told now, not after reading and drawing n samples
    most = most_samples(out)
    paddings: dict[Path, float | None] = {}         # tar folder -> its recorded align padding
    samples = []
    for tar, key, fields in _samples(Path(path), min(n, most + 1)):   # one more: refused
        if tar.parent not in paddings:
            paddings[tar.parent] = recorded_padding(tar.parent)
        samples.append(_sheet_sample(tar, key, fields, paddings[tar.parent]))
    if not samples:
        raise ValueError(f"{path}: the tar files hold no samples")
    if len(samples) > most:
        raise ValueError(f"-n {n}: {path} holds more than {most} samples; {capacity(out)}")
    ok, data = cv2.imencode(out.suffix.lower(), cv2.cvtColor(contact_sheet(samples), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode the sheet as {out.suffix}")
    atomic_write_bytes(out, data.tobytes())
    return out
