"""Generators of every bad input the pipeline must survive, in AffectNet's official layout.

``Manually_Annotated_Images/<dir>/<file>`` + ``Manually_Annotated_file_lists/{training,
validation}.csv``. Each :class:`Case` writes its file (if any), its CSV row, and states
where it must end up: kept (possibly with a conversion counted in the align report) or
dropped by a named stage with a named reason. :func:`build_corpus` writes a set of
cases and returns the counts the reports must show.

Images are real encoded files (JPEG/PNG via PIL or OpenCV) with synthetic landmarks in
a face-like layout, for the ``annotations`` backend; :func:`real_photo` gives package
photos with real faces for the ``embedded`` backend. The helpers at the end run the
stage functions over a corpus and hash output trees.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
from PIL import Image

from ferdata.datasets import open_reader
from ferdata.geometry import ARCFACE_112
from ferdata.params import load_params
from ferdata.stages.align import AlignParams, run_align
from ferdata.stages.derive import DeriveParams, run_derive
from ferdata.stages.detect import DetectParams, run_detect
from ferdata.stages.shard import ShardParams, run_shard

REPO = Path(__file__).resolve().parents[2]

IMAGES = "Manually_Annotated_Images"
LISTS = "Manually_Annotated_file_lists"
HEADER = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
          "facial_landmarks", "expression", "valence", "arousal"]
CSV_NAME = {"train": "training.csv", "test": "validation.csv"}
SIZE = 160                                  # side of the synthetic pictures


def face_landmarks(size: int = SIZE) -> np.ndarray:
    """68 iBUG-ordered points whose eye centres, nose tip and mouth corners fall on the
    ArcFace template scaled to a ``size`` picture (so alignment is a plain rescale)."""
    t = ARCFACE_112 * (size / 112.0)
    pts = np.zeros((68, 2))
    jaw_x = np.linspace(t[0, 0] - 15, t[1, 0] + 15, 17)
    pts[0:17] = np.stack([jaw_x, t[3, 1] + 10 * np.sin(np.linspace(0, np.pi, 17))], 1)
    pts[17:22] = np.stack([np.linspace(t[0, 0] - 10, t[0, 0] + 10, 5), np.full(5, t[0, 1] - 12)], 1)
    pts[22:27] = np.stack([np.linspace(t[1, 0] - 10, t[1, 0] + 10, 5), np.full(5, t[1, 1] - 12)], 1)
    pts[27:31] = np.stack([np.full(4, t[2, 0]), np.linspace(t[0, 1], t[2, 1], 4)], 1)
    pts[31:36] = np.stack([np.linspace(t[2, 0] - 8, t[2, 0] + 8, 5), np.full(5, t[2, 1] + 4)], 1)
    ring = np.stack([np.cos(np.linspace(0, 2 * np.pi, 6, endpoint=False)),
                     np.sin(np.linspace(0, 2 * np.pi, 6, endpoint=False))], 1)
    pts[36:42] = t[0] + 5 * ring
    pts[42:48] = t[1] + 5 * ring
    mouth = np.stack([np.cos(np.linspace(np.pi, 3 * np.pi, 20, endpoint=False)),
                      np.sin(np.linspace(np.pi, 3 * np.pi, 20, endpoint=False))], 1)
    centre = (t[3] + t[4]) / 2
    half = (t[4, 0] - t[3, 0]) / 2
    pts[48:68] = centre + mouth * [half, 6]
    pts[48], pts[54] = t[3], t[4]
    return pts.astype(np.float32)


def picture(seed: int, size: int = SIZE) -> np.ndarray:
    """A seeded RGB picture with a face-like blob (texture, so JPEG sizes are realistic)."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (0, 0), 3)
    cv2.ellipse(img, (size // 2, size // 2), (size // 3, size * 2 // 5), 0, 0, 360,
                tuple(int(v) for v in rng.integers(60, 220, 3)), -1)
    return img


def encode(rgb: np.ndarray, fmt: str = "JPEG", mode: str | None = None, **kw) -> bytes:
    """Encode with PIL (RGB in); ``mode`` converts first (L, CMYK, RGBA, P ...)."""
    im = Image.fromarray(rgb)
    if mode:
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb's shape)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def exif_rotated(rgb: np.ndarray, orientation: int = 6) -> bytes:
    """A JPEG whose stored pixels are turned so that EXIF ``orientation`` shows ``rgb`` upright."""
    stored = {6: np.rot90(rgb, 1), 8: np.rot90(rgb, -1), 3: np.rot90(rgb, 2)}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(np.ascontiguousarray(stored), quality=95, exif=exif.tobytes())


def sixteen_bit_png(rgb: np.ndarray) -> bytes:
    """RGB48 PNG with the same picture (8-bit values scaled by 257)."""
    ok, buf = cv2.imencode(".png", rgb[..., ::-1].astype(np.uint16) * 257)
    if not ok:
        raise RuntimeError("16-bit PNG encoding failed")
    return buf.tobytes()


def alpha_png(rgb: np.ndarray) -> bytes:
    """RGBA: opaque face area, transparent border with garbage colour under it."""
    alpha = np.zeros(rgb.shape[:2], np.uint8)
    alpha[10:-10, 10:-10] = 255
    return encode(np.dstack([rgb, alpha]), "PNG")


def damaged_jpeg(rgb: np.ndarray) -> bytes:
    """A JPEG whose entropy-coded data has a zeroed run: decoders fill the rest of the picture with
    grey or shifted blocks and report nothing."""
    data = bytearray(encode(rgb, quality=92))
    middle = len(data) // 2
    data[middle:middle + 400] = bytes(400)
    return bytes(data)


def multi_page_tiff(first: np.ndarray, second: np.ndarray) -> bytes:
    """A two-page TIFF: the pipeline uses the first page and counts it ``first_frame_only``."""
    buf = io.BytesIO()
    Image.fromarray(first).save(buf, format="TIFF", save_all=True, append_images=[Image.fromarray(second)])
    return buf.getvalue()


def lmk_text(pts: np.ndarray) -> str:
    return ";".join(f"{v:.2f}" for v in np.asarray(pts, np.float64).reshape(-1))


@dataclass(frozen=True)
class Case:
    """One input: file bytes (None = no file), CSV fields, where it must end up."""

    name: str
    data: Callable[[], bytes] | None
    stage: str = "kept"                 # "kept", "detect" (reader and decode drops) or "align"
    reason: str = ""                    # drop reason; when kept, the note counted (conversion, duplicate)
    split: str = "train"
    label: str = "1"
    landmarks: str | None = None        # default: face_landmarks()
    rel: str = ""                       # default: 1/<name>.jpg
    columns: int = len(HEADER)
    box: tuple[str, str, str, str] = ("20", "20", "120", "120")   # face_x, face_y, face_width, face_height

    def path(self) -> str:
        return self.rel or f"1/{self.name}.jpg"

    def row(self) -> list[str]:
        lm = self.landmarks if self.landmarks is not None else lmk_text(face_landmarks())
        row = [self.path(), *self.box, lm, self.label, "0.1", "-0.2"]
        return row[: self.columns]


def jpeg_of(seed: int) -> Callable[[], bytes]:
    """A good JPEG; the same seed gives the same bytes (how duplicates are made)."""
    return lambda: encode(picture(seed), quality=90)


def standard_cases() -> list[Case]:
    """Every bad-input case for the annotations backend, plus good samples around them."""
    pic = picture
    far = face_landmarks() + 5000.0
    return [
        *[Case(f"good_{i}", jpeg_of(i), label=str(i % 7)) for i in range(6)],
        Case("good_test_0", jpeg_of(100), split="test", label="2"),
        Case("good_test_1", jpeg_of(101), split="test", label="3"),
        # decode: reasons recorded by the detect stage from the header (the annotations backend
        # needs no pixels there), by the align stage for a body that fails to decode
        Case("zero_byte", lambda: b"", "detect", "empty_file"),
        Case("truncated", lambda: encode(pic(20), quality=90)[:-400], "align", "truncated"),
        Case("not_an_image", lambda: b"<html>this is not a picture</html>\n" * 20, "detect", "not_an_image"),
        Case("tiny", lambda: encode(pic(21, 10)), "detect", "too_small"),
        Case("bomb", lambda: png_header_only(20000, 20000), "detect", "too_large", rel="1/bomb.png"),
        Case("huge_png", lambda: png_header_only(8000, 6000), "detect", "too_large", rel="1/huge png.png"),
        # decoded after a conversion: kept, counted in the align report's notes
        Case("alpha", lambda: alpha_png(pic(22)), reason="alpha_flattened", rel="1/alpha.png"),
        Case("sixteen_bit", lambda: sixteen_bit_png(pic(23)), reason="high_bit_depth", rel="1/sixteen.png"),
        Case("grayscale", lambda: encode(pic(24), mode="L"), reason="grayscale"),
        Case("cmyk", lambda: encode(pic(25), mode="CMYK", quality=95), reason="cmyk"),
        Case("palette", lambda: encode(pic(26), "PNG", mode="P"), reason="palette", rel="1/palette.png"),
        Case("two_pages", lambda: multi_page_tiff(pic(29), pic(38)), reason="first_frame_only", rel="1/two.tif"),
        Case("damaged_data", lambda: damaged_jpeg(pic(39)), reason="corrupt_jpeg_data"),
        # turned by its EXIF orientation; the annotations backend places its face: counted apart too
        Case("exif_rotated", lambda: exif_rotated(pic(27)), reason="exif_orientation+exif_orientation_annotations"),
        Case("exif_upright_twin", lambda: encode(pic(27), quality=95)),
        Case("unicode", jpeg_of(28), rel="1/ünï cödé dir/fïle with space.jpg"),
        # CSV problems: reasons recorded by the reader, counted in the detect report
        Case("label_missing", jpeg_of(30), "detect", "bad_label", label=""),
        Case("label_11", jpeg_of(31), "detect", "bad_label", label="11"),
        Case("label_negative", jpeg_of(32), "detect", "bad_label", label="-1"),
        Case("label_text", jpeg_of(33), "detect", "bad_label", label="happy"),
        Case("label_uncertain", jpeg_of(34), "detect", "label_uncertain", label="9"),
        # unreadable annotations: the reader keeps the face without them (noted); the annotations
        # backend then places no face in a record without landmarks (no_landmarks: it says what the
        # record lacks; no_face named only the file), and uses landmarks without a box
        Case("landmarks_135", jpeg_of(35), "detect", "no_landmarks",
             landmarks=";".join(lmk_text(face_landmarks()).split(";")[:135])),
        Case("landmarks_text", jpeg_of(36), "detect", "no_landmarks", landmarks="a;b;c"),
        Case("short_row", jpeg_of(37), "detect", "malformed_row", columns=5),
        Case("missing_file", None, "detect", "missing_image"),
        Case("landmarks_nan", jpeg_of(40), "detect", "no_landmarks", landmarks=";".join(["nan"] * 136)),
        Case("box_nan", jpeg_of(43), box=("nan", "20", "120", "120")),
        # geometry problems: reasons recorded by the align stage
        Case("landmarks_degenerate", jpeg_of(41), "align", "bad_landmarks", landmarks=";".join(["50"] * 136)),
        Case("landmarks_off_image", jpeg_of(42), "align", "face_outside_image", landmarks=lmk_text(far)),
        # duplicates: one copy (the smallest key) stays within a training split; an official test split and copies
        # across official splits keep every copy
        Case("dup_of_good_1", jpeg_of(1), "align", "duplicate_image"),
        Case("dup_of_good_2_in_test", jpeg_of(2), split="test", reason="across_splits_train_test"),
        Case("dup_of_good_2_in_test_again", jpeg_of(2), split="test", reason="within_test"),
        # copies whose labels disagree: every copy in that split goes; a copy in another split stays
        Case("conflict_a", jpeg_of(50), "align", "conflicting_labels", label="2"),
        Case("conflict_b", jpeg_of(50), "align", "conflicting_labels", label="4"),
        Case("conflict_a_again", jpeg_of(50), "align", "conflicting_labels", label="2"),
        Case("conflict_in_test", jpeg_of(50), split="test", label="6"),
        # one file listed twice with two labels: both listings go
        Case("relisted", jpeg_of(51), "align", "conflicting_labels", label="2"),
        Case("relisted", None, "align", "conflicting_labels", label="4"),
    ]


def repeated_row_case() -> Case:
    """The CSV lists ``good_0`` a second time (same path, same key, same label)."""
    return Case("good_0", None, "align", "duplicate_key", label="0")


@dataclass
class Expected:
    """What the stage reports must say about a corpus."""

    detect_dropped: Counter = field(default_factory=Counter)
    align_dropped: Counter = field(default_factory=Counter)
    converted: Counter = field(default_factory=Counter)
    duplicates: Counter = field(default_factory=Counter)
    kept: int = 0
    rows: int = 0


def build_corpus(root: Path, cases: list[Case] | None = None) -> Expected:
    """Write ``cases`` (default: all standard ones + a repeated row) under ``root``."""
    cases = cases if cases is not None else [*standard_cases(), repeated_row_case()]
    rows: dict[str, list[list[str]]] = {s: [] for s in CSV_NAME}
    exp = Expected()
    for case in cases:
        if case.data is not None:
            path = root / IMAGES / case.path()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(case.data())
        rows[case.split].append(case.row())
        exp.rows += 1
        if case.stage == "detect":
            exp.detect_dropped[case.reason] += 1
        elif case.stage == "align":
            exp.align_dropped[case.reason] += 1
        else:
            exp.kept += 1
            if case.reason.startswith(("across_splits", "within_")):
                exp.duplicates[case.reason] += 1
            elif case.reason:
                exp.converted.update(case.reason.split("+"))
    write_lists(root, rows)
    return exp


def write_lists(root: Path, rows: dict[str, list[list[str]]]) -> None:
    (root / LISTS).mkdir(parents=True, exist_ok=True)
    for split, name in CSV_NAME.items():
        with open(root / LISTS / name, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(HEADER)
            writer.writerows(rows.get(split, []))


def real_photo(name: str) -> np.ndarray:
    """RGB package photos with real faces (or none): astronaut, grace_hopper, t1 (6 faces), coffee."""
    if name == "astronaut":
        from skimage import data
        return data.astronaut()
    if name == "coffee":
        from skimage import data
        return data.coffee()
    if name == "grace_hopper":
        from matplotlib import cbook
        return np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))
    if name == "t1":
        import insightface
        return np.asarray(Image.open(Path(insightface.__file__).parent / "data" / "images" / "t1.jpg").convert("RGB"))
    raise KeyError(name)


def build(cls: type, section: str, **overrides: Any):
    """``cls`` from params.yaml's ``section`` with ``overrides`` (fields with defaults may be absent)."""
    values = {**load_params(REPO / "params.yaml")[section], **overrides}
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def stage_params(tmp: Path, backend: str = "annotations", workers: int = 1, chunk_size: int = 4,
                 maxcount: int = 4, seed: int = 0) -> dict[str, Any]:
    """Small, fast parameters for every preprocessing stage."""
    return {
        "detect": build(DetectParams, "detect", backend=backend, cache_dir=str(tmp / "cache"), workers=workers,
                        model_dir=None),
        "align": build(AlignParams, "align", workers=workers, chunk_size=chunk_size),
        "derive": build(DeriveParams, "derive", workers=workers, chunk_size=chunk_size),
        "shard": build(ShardParams, "shard", maxcount=maxcount, seed=seed),
    }


def run_all(root: Path, out: Path, params: dict[str, Any], reader: str = "affectnet",
            options: dict | None = None) -> dict[str, dict]:
    """read -> detect -> align -> derive -> shard into ``out/{detect,aligned,derived,shards}``."""
    opened = open_reader(reader, root, options or {"protocol": "affectnet8"})
    return {
        "detect": run_detect(opened.read(), params["detect"], out / "detect", opened.official_splits()).to_dict(),
        "align": run_align(out / "detect", params["align"], out / "aligned").to_dict(),
        "derive": run_derive(out / "aligned", params["derive"], out / "derived").to_dict(),
        "shard": run_shard(out / "aligned", out / "derived", params["shard"], out / "shards").to_dict(),
    }


def tree_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory``, by relative path (hidden files included)."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def child_env() -> dict[str, str]:
    """Environment for child processes: this checkout importable, no analytics, 1 BLAS thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(DVC_NO_ANALYTICS="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env
