"""Builders that write each dataset's exact published on-disk format into a folder.

Every builder writes a small, fixed content (documented in its docstring) that
includes the format's known traps; tests assert the expected results written out
by hand. Images are tiny real files written with ``cv2.imwrite``.
"""
from __future__ import annotations

from pathlib import Path

from collections import Counter
from typing import Any, Mapping

import cv2
import numpy as np

from ferdata.datasets import open_reader
from ferdata.records import Dropped, FaceRecord


def read_all(
    name: str, root: Path, options: Mapping[str, Any] | None = None
) -> tuple[dict[str, FaceRecord], Counter, list[Dropped]]:
    """Run reader ``name`` on ``root``: kept records by key, drop reasons counted, the drops."""
    records: dict[str, FaceRecord] = {}
    drops: list[Dropped] = []
    for item in open_reader(name, root, options).read():
        if isinstance(item, FaceRecord):
            if item.key in records:
                raise AssertionError(f"duplicate key {item.key}")
            records[item.key] = item
        else:
            drops.append(item)
    return records, Counter(d.reason for d in drops), drops


def write_image(path: Path, value: int = 128, size: tuple[int, int] = (24, 24), gray: bool = False) -> Path:
    """A small real image file (format from the suffix) filled with ``value`` plus a gradient."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    img = (np.full((h, w), value, np.int32) + np.arange(w)[None, :] % 7).clip(0, 255).astype(np.uint8)
    if not gray:
        img = np.dstack([img, img, img])
    if not cv2.imwrite(str(path), img):
        raise RuntimeError(f"cv2 could not write {path}")
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def landmarks68(offset: float = 0.0) -> np.ndarray:
    """68 distinct (x, y) points: x = i + offset, y = 2 * i + offset."""
    i = np.arange(68, dtype=np.float32)
    return np.stack([i + offset, 2 * i + offset], axis=1)


# ---- AffectNet -------------------------------------------------------------------------

AFFECTNET_HEADER = (
    "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"
)


def _affectnet_row(rel: str, expression: int, lmk: np.ndarray, valence: float = 0.25, arousal: float = -0.5) -> str:
    lmk_text = ";".join(f"{v:.2f}" for v in lmk.reshape(-1))
    return f"{rel},10,20,50,60,{lmk_text},{expression},{valence},{arousal}"


def make_affectnet_csv(root: Path) -> Path:
    """Official layout. training.csv (in Manually_Annotated_file_lists/):

    1/img0.jpg expr 0 | 1/img1.jpg expr 7 | 2/img2.jpg 8 | 2/img3.jpg 9 | 2/img4.jpg 10 |
    2/missing.jpg 3 (no file) | 2/img5.jpg 6 with only 100 landmark values.
    validation.csv: 3/v0.jpg expr 6 | 3/v1.jpg expr 1. Box is x=10 y=20 w=50 h=60.
    """
    images = root / "Manually_Annotated_Images"
    for rel in ("1/img0.jpg", "1/img1.jpg", "2/img2.jpg", "2/img3.jpg", "2/img4.jpg", "2/img5.jpg",
                "3/v0.jpg", "3/v1.jpg"):
        write_image(images / rel)
    lmk = landmarks68()
    train = [
        _affectnet_row("1/img0.jpg", 0, lmk), _affectnet_row("1/img1.jpg", 7, lmk),
        _affectnet_row("2/img2.jpg", 8, lmk), _affectnet_row("2/img3.jpg", 9, lmk),
        _affectnet_row("2/img4.jpg", 10, lmk), _affectnet_row("2/missing.jpg", 3, lmk),
        _affectnet_row("2/img5.jpg", 6, lmk.reshape(-1)[:100]),
    ]
    val = [_affectnet_row("3/v0.jpg", 6, lmk), _affectnet_row("3/v1.jpg", 1, lmk)]
    lists = root / "Manually_Annotated_file_lists"
    write_text(lists / "training.csv", "\n".join([AFFECTNET_HEADER, *train]) + "\n")
    write_text(lists / "validation.csv", "\n".join([AFFECTNET_HEADER, *val]) + "\n")
    return root


def make_affectnet_automatic(root: Path, nested: bool = False) -> Path:
    """The automatically annotated part beside an official layout: automatically_annotated.csv
    (root/Automatically_Annotated_file_lists/, or with ``nested`` all under Automatically_Annotated/):
    1/img0.jpg expr 2 (the same relative path as a manual image) | 4/a1.jpg expr 8 | 4/a2.jpg expr 1 (no file)."""
    base = root / "Automatically_Annotated" if nested else root
    write_image(base / "Automatically_Annotated_Images" / "1" / "img0.jpg", value=60)
    write_image(base / "Automatically_Annotated_Images" / "4" / "a1.jpg")
    lmk = landmarks68(3.0)
    rows = [_affectnet_row(rel, expression, lmk) for rel, expression in (("1/img0.jpg", 2), ("4/a1.jpg", 8), ("4/a2.jpg", 1))]
    lists = base if nested else root / "Automatically_Annotated_file_lists"
    write_text(lists / "automatically_annotated.csv", "\n".join([AFFECTNET_HEADER, *rows]) + "\n")
    return root


def make_affectnet_npy(root: Path) -> Path:
    """Re-packaged "March 2021" layout (train_set|val_set/images + annotations/*.npy).

    train_set: 0 exp '0' (string npy, like the release) with val/aro/lnd |
    1 exp '8' | 2 exp 7 (int npy) | 3 exp '3' but no image | 4 exp '5' with a 10-value lnd |
    5 exp '2' with no val/aro/lnd files.  val_set: 0 exp '6' with the -2 valence / arousal
    placeholders | 1 exp '10'.
    """
    def anno(split_dir: Path, i: int, exp: object, lnd: np.ndarray | None = None, va: bool = True,
             values: tuple[str, str] = ("0.785714", "-0.055556")) -> None:
        a = split_dir / "annotations"
        a.mkdir(parents=True, exist_ok=True)
        np.save(a / f"{i}_exp.npy", np.array(exp))
        if va:
            np.save(a / f"{i}_val.npy", np.array(values[0]))
            np.save(a / f"{i}_aro.npy", np.array(values[1]))
        if lnd is not None:
            np.save(a / f"{i}_lnd.npy", lnd)

    train, val = root / "train_set", root / "val_set"
    for i in (0, 1, 2, 4, 5):
        write_image(train / "images" / f"{i}.jpg")
    for i in (0, 1):
        write_image(val / "images" / f"{i}.jpg")
    lnd = landmarks68(1.0).reshape(-1).astype(np.float64)
    anno(train, 0, "0", lnd)
    anno(train, 1, "8", lnd)
    anno(train, 2, 7, lnd)
    anno(train, 3, "3", lnd)
    anno(train, 4, "5", np.arange(10, dtype=np.float64))
    anno(train, 5, "2", None, va=False)
    anno(val, 0, "6", lnd, values=("-2", "-2"))
    anno(val, 1, "10", lnd)
    return root


# ---- RAF-DB ----------------------------------------------------------------------------

RAFDB_LABELS = """train_00001.jpg 5
train_00002.jpg 1
train_00003.jpg 7
train_00004.jpg 0
train_00005.jpg 8
train_00006.jpg 4
test_0001.jpg 6
test_0002.jpg 2
test_0003.jpg 3
test_0004.jpg 4
train_00007.jpg

"""


def make_rafdb(root: Path) -> Path:
    """RAF-DB basic: EmoLabel/list_patition_label.txt (1-based labels) + Image/original + Image/aligned.

    Labels: train_00001 5, train_00002 1, train_00003 7, train_00004 0 (bad), train_00005 8 (bad),
    train_00006 4 (no image file), test_0001 6, test_0002 2, test_0003 3, test_0004 4,
    train_00007 with no label (malformed), then a blank line.
    Annotation/manual: train_00001 (5 points + gender 1, race 2, age 3), test_0003 malformed
    (4 lines). Annotation/boundingbox: train_00001 = 10.5 20 80 90.
    """
    write_text(root / "EmoLabel" / "list_patition_label.txt", RAFDB_LABELS)
    for stem in ("train_00001", "train_00002", "train_00003", "train_00004", "train_00005",
                 "test_0001", "test_0002", "test_0003", "test_0004", "train_00007"):
        write_image(root / "Image" / "original" / f"{stem}.jpg", size=(40, 32))
        write_image(root / "Image" / "aligned" / f"{stem}_aligned.jpg", size=(100, 100))
    manual = root / "Annotation" / "manual"
    write_text(manual / "train_00001_manu_attri.txt",
               "33.5\t40.25\n60.0\t41.0\n47.0\t55.5\n36.0\t70.0\n58.0\t70.5\n1\n2\n3\n")
    write_text(manual / "test_0003_manu_attri.txt", "1 2\n3 4\n5 6\n7 8\n")
    write_text(root / "Annotation" / "boundingbox" / "train_00001_boundingbox.txt", "10.5 20.0 80.0 90.0\n")
    return root


# ---- FER2013 / FERPlus -----------------------------------------------------------------

def pixel_text(value: int, n: int = 2304) -> str:
    """``n`` space-separated grey values, all ``value`` except a 0..6 ramp (a real-looking row)."""
    return " ".join(str(min(255, value + (i % 7))) for i in range(n))


FER_ROWS = [  # (emotion, pixel value or None for a malformed row, Usage)
    ("0", 10, "Training"), ("1", 20, "Training"), ("2", 30, "Training"), ("3", 40, "Training"),
    ("4", 50, "PublicTest"), ("5", 60, "PublicTest"), ("6", 70, "PrivateTest"),
    ("7", 80, "PrivateTest"), ("2", None, "PrivateTest"), ("5", 100, "Validation"),
]


def make_fer2013(root: Path, icml: bool = False) -> Path:
    """fer2013.csv (``emotion,pixels,Usage``) or icml_face_data.csv (``emotion, Usage, pixels``).

    Rows 0-6: emotions 0..6 with pixel value 10*(row+1); usages Training x4, PublicTest x2,
    PrivateTest x1. Row 7: emotion 7 (bad). Row 8: 100 pixel values (bad). Row 9: Usage
    'Validation' (bad).
    """
    lines = ["emotion, Usage, pixels" if icml else "emotion,pixels,Usage"]
    for emotion, value, usage in FER_ROWS:
        pix = pixel_text(0, 100) if value is None else pixel_text(value)
        lines.append(f"{emotion},{usage},{pix}" if icml else f"{emotion},{pix},{usage}")
    write_text(root / ("icml_face_data.csv" if icml else "fer2013.csv"), "\n".join(lines) + "\n")
    return root


FERPLUS_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
FERPLUS_ROWS = [  # FER2013 usage, FERPlus row (same row order)
    ("Training", "Training,fer0000000.png,4,0,0,1,3,2,0,0,0,0"),
    ("Training", "Training,fer0000001.png,6,0,1,1,0,0,0,0,2,0"),
    ("Training", "Training,,0,0,0,0,0,0,0,0,0,10"),
    ("Training", "Training,fer0000003.png,0,10,0,0,0,0,0,0,0,0"),
    ("PublicTest", "PublicTest,fer0000004.png,0,0,0,0,0,0,0,0,10,0"),
    ("PrivateTest", "PrivateTest,fer0000005.png,0,0,0,0,0,0,0,0,1,9"),
    ("PrivateTest", "PrivateTest,fer0000006.png,0,0,6,4,0,0,0,0,0,0"),
    ("Training", "Training,fer0000007.png,0,0,0,0,0,0,3,3,4,0"),
    ("Training", "Training,fer0000009.png,0,0,5,0,0,0,5,0,0,0"),
    ("Training", "PublicTest,fer0000010.png,0,10,0,0,0,0,0,0,0,0"),
]


def make_ferplus(root: Path, extra_plus_row: bool = False) -> Path:
    """fer2013.csv + fer2013new.csv, 10 rows each; FER2013 row i has pixel value 10*i.

    FERPlus row 2 has an empty Image name, so names stop matching row numbers after it
    (row 8 is fer0000009.png). Row 9's FERPlus Usage disagrees with FER2013's.
    ``extra_plus_row`` appends an 11th FERPlus row (row-count mismatch).
    """
    fer = ["emotion,pixels,Usage"] + [f"0,{pixel_text(10 * i)},{u}" for i, (u, _) in enumerate(FERPLUS_ROWS)]
    plus = [FERPLUS_HEADER] + [row for _, row in FERPLUS_ROWS]
    if extra_plus_row:
        plus.append("Training,fer0000011.png,10,0,0,0,0,0,0,0,0,0")
    write_text(root / "fer2013.csv", "\n".join(fer) + "\n")
    write_text(root / "fer2013new.csv", "\n".join(plus) + "\n")
    return root


def make_ferplus_folders(root: Path) -> Path:
    """Output of FERPlus generate_training_data.py: FER2013{Train,Valid,Test}/label.csv + PNGs.

    Train: fer0000000.png (votes 0,10,0,...: happiness), fer0000001.png listed but missing.
    Valid: fer0000002.png (7 neutral, 3 sadness). Test: fer0000003.png (10 NF).
    """
    rows = {
        "FER2013Train": [("fer0000000.png", "0,10,0,0,0,0,0,0,0,0", True),
                         ("fer0000001.png", "10,0,0,0,0,0,0,0,0,0", False)],
        "FER2013Valid": [("fer0000002.png", "7,0,0,3,0,0,0,0,0,0", True)],
        "FER2013Test": [("fer0000003.png", "0,0,0,0,0,0,0,0,0,10", True)],
    }
    for folder, items in rows.items():
        for name, _, exists in items:
            if exists:
                write_image(root / folder / name, size=(48, 48), gray=True)
        write_text(root / folder / "label.csv", "".join(f"{n},{v}\n" for n, v, _ in items))
    return root


# ---- CK+ -------------------------------------------------------------------------------

def make_ckplus(root: Path) -> Path:
    """CK+: cohn-kanade-images/ + Emotion/ + Landmarks/.

    S005/001: frames 1-5, emotion file at frame 5 = 3 (disgust); landmarks for frames 3, 4, 5.
    S005/002: frames 1-4, no emotion file.
    S010/001: frames 1-6, emotion file at frame 4 = 2 (contempt), so frames 5-6 come after the
    peak; frame 3 landmarks malformed (10 lines), frames 2, 4 without landmarks files.
    S010/002: frames 1-2, emotion file value 9 (out of range).
    """
    seqs = {("S005", "001"): 5, ("S005", "002"): 4, ("S010", "001"): 6, ("S010", "002"): 2}
    for (subj, seq), n in seqs.items():
        for f in range(1, n + 1):
            write_image(root / "cohn-kanade-images" / subj / seq / f"{subj}_{seq}_{f:08d}.png", value=f * 20)
    emo = root / "Emotion"
    write_text(emo / "S005" / "001" / "S005_001_00000005_emotion.txt", "   3.0000000e+00\n")
    write_text(emo / "S010" / "001" / "S010_001_00000004_emotion.txt", "   2.0000000e+00\n")
    write_text(emo / "S010" / "002" / "S010_002_00000002_emotion.txt", "   9.0000000e+00\n")
    (emo / "S005" / "002").mkdir(parents=True)
    lm = root / "Landmarks"
    for f in (3, 4, 5):
        pts = landmarks68(float(f))
        write_text(lm / "S005" / "001" / f"S005_001_{f:08d}_landmarks.txt",
                   "".join(f"   {x:.7e}   {y:.7e}\n" for x, y in pts))
    write_text(lm / "S010" / "001" / "S010_001_00000003_landmarks.txt", "   1.0e+00   2.0e+00\n" * 10)
    return root


# ---- JAFFE, ExpW, SFEW, folder ---------------------------------------------------------

JAFFE_FILES = ("KA.AN1.39.tiff", "KA.HA2.30.tiff", "KL.NE1.155.tiff", "YM.SU3.60.tiff", "UY.DI1.1.tiff",
               "MK.FE2.1.tiff", "NA.SA1.2.tiff", "XX.ZZ1.1.tiff", "random.tiff")


def make_jaffe(root: Path) -> Path:
    """JAFFE: the files in JAFFE_FILES (256-style grey TIFFs, shrunk) + a README that is not an image."""
    for name in JAFFE_FILES:
        write_image(root / name, gray=True)
    write_text(root / "README", "JAFFE\n")
    return root


EXPW_LABELS = """angry_actor_104.jpg 0 28 113 226 141 22.9 0
angry_actor_104.jpg 1 50 300 380 130 10.1 3
happy_x_1.jpg 0 10 10 5 40 1.0 3
happy_x_2.jpg 0 10 10 50 40 1.0 7
missing_3.jpg 0 10 10 50 40 1.0 4
sad_y_3.jpg 0 10 10 50 40 1.0
sad_y_4.jpg 2 10 12 50 40 1.0 6
"""


def make_expw(root: Path) -> Path:
    """ExpW: label/label.lst (EXPW_LABELS) + image/origin/*.jpg (missing_3.jpg absent)."""
    for name in ("angry_actor_104.jpg", "happy_x_1.jpg", "happy_x_2.jpg", "sad_y_3.jpg", "sad_y_4.jpg"):
        write_image(root / "image" / "origin" / name, size=(200, 400))
    write_text(root / "label" / "label.lst", EXPW_LABELS)
    return root


def make_sfew(root: Path) -> Path:
    """SFEW 2.0: Train/{Angry,Happy,Neutral}/ one PNG each, Val/{Sad,Surprise}/ one each, Test/ unlabelled."""
    for split, cls, name in (("Train", "Angry", "a_001.png"), ("Train", "Happy", "b_002.png"),
                             ("Train", "Neutral", "c_003.png"), ("Val", "Sad", "d_004.png"),
                             ("Val", "Surprise", "e_005.png"), ("Test", "", "f_006.png")):
        write_image(root / split / cls / name)
    return root


def make_folder_splits(root: Path) -> Path:
    """train/Happiness/x.jpg, train/ANGRY/y.png, train/ANGRY/sub/y2.jpg, val/sad/z.jpg,
    test/Contempt/w.jpg, test/calm/q.jpg, plus a .DS_Store and a notes.txt that are not images."""
    for rel in ("train/Happiness/x.jpg", "train/ANGRY/y.png", "train/ANGRY/sub/y2.jpg", "val/sad/z.jpg",
                "test/Contempt/w.jpg", "test/calm/q.jpg"):
        write_image(root / rel)
    write_text(root / "train" / "Happiness" / "notes.txt", "not an image\n")
    write_text(root / "train" / ".DS_Store", "")
    return root
