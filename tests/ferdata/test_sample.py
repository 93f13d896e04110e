"""The offline smoke-test sample (ferdata.sample): AffectNet layout, reader contract,
determinism, landmark/box consistency, detectability and (slow) class separability."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferdata.datasets.affectnet import COLUMNS, AffectNetReader
from ferdata.geometry import align_face, five_from_68
from ferdata.io import decode_rgb
from ferdata.records import Dropped, FaceRecord
from ferdata.sample import MARKER, SampleParams, make_affectnet_sample, writer
from ferdata.sample.sources import load_identities, split_identities

CLASSES = (0, 1, 2, 3, 6)
HEADER = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"
TINY = {"per_class": 4, "classes": CLASSES, "val_fraction": 0.25, "seed": 7, "image_size": 192, "jpeg_quality": 90}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(root: Path, name: str) -> list[list[str]]:
    with open(root / "Manually_Annotated_file_lists" / name, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("sample") / "affectnet"
    return root, make_affectnet_sample(root, SampleParams(**TINY))


def test_layout_and_header(tiny):
    root, _ = tiny
    assert (root / "Manually_Annotated_Images").is_dir()
    for name in ("training.csv", "validation.csv"):
        text = (root / "Manually_Annotated_file_lists" / name).read_text(encoding="utf-8")
        assert text.splitlines()[0] == HEADER
        for row in _rows(root, name)[1:]:
            assert len(row) == len(COLUMNS)
            path = root / "Manually_Annotated_Images" / row[0]
            assert path.suffix == ".jpg" and path.is_file()
            assert len(row[5].split(";")) == 136
            img = decode_rgb(path.read_bytes())
            assert img.shape == (TINY["image_size"], TINY["image_size"], 3)
    leftovers = [p.name for p in root.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []                                  # no temp folder left behind


def test_reader_counts_per_split_and_class(tiny):
    root, summary = tiny
    items = list(AffectNetReader(root).read())
    assert not [i for i in items if isinstance(i, Dropped)]
    counts = Counter((r.split, r.label) for r in items if isinstance(r, FaceRecord))
    assert counts == {**{("train", c): 3 for c in CLASSES}, **{("test", c): 1 for c in CLASSES}}
    assert summary["counts"]["train"] == {"Neutral": 3, "Happy": 3, "Sad": 3, "Surprise": 3, "Anger": 3}
    assert summary["counts"]["validation"] == {"Neutral": 1, "Happy": 1, "Sad": 1, "Surprise": 1, "Anger": 1}


def test_validation_identities_are_held_out(tiny):
    _, summary = tiny
    train, val = set(summary["identities"]["train"]), set(summary["identities"]["validation"])
    assert train and val and not train & val


def test_byte_identical_rerun(tiny, tmp_path):
    root, _ = tiny
    again = tmp_path / "again"
    make_affectnet_sample(again, SampleParams(**TINY))
    assert _files(again) == _files(root)


def test_byte_identical_in_fresh_processes_with_other_hash_seeds(tmp_path):
    """The in-process rerun above reuses the cached detections; fresh processes detect again and
    hash strings with another seed."""
    code = ("import sys; from pathlib import Path; from ferdata.sample import SampleParams, make_affectnet_sample; "
            f"make_affectnet_sample(Path(sys.argv[1]), SampleParams(**{{**{TINY!r}, 'per_class': 2, "
            "'val_fraction': 0.5}))")
    for run, hash_seed in (("a", "1"), ("b", "12345")):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, "-c", code, str(tmp_path / run)], env=env, check=True, timeout=300)
    assert _files(tmp_path / "a") == _files(tmp_path / "b") and len(_files(tmp_path / "a")) == 2 * len(CLASSES) + 3


def test_each_class_has_its_mouth(tiny):
    """The labels match the painted geometry: mean inner-lip opening over the inter-ocular distance,
    from the CSV's own landmarks. Surprise drops the jaw into an O, Happy parts the lips over teeth,
    Neutral and Anger keep them closed (pressed thin for Anger), Sad's arch barely opens them."""
    root, _ = tiny
    gaps: dict[int, list[float]] = {}
    for name in ("training.csv", "validation.csv"):
        for row in _rows(root, name)[1:]:
            lmk = np.array(row[5].split(";"), float).reshape(68, 2)
            iod = np.linalg.norm(lmk[36:42].mean(0) - lmk[42:48].mean(0))
            gap = np.mean([np.linalg.norm(lmk[lo] - lmk[up]) for up, lo in ((61, 67), (62, 66), (63, 65))])
            gaps.setdefault(int(row[6]), []).append(gap / iod)
    mean = {c: float(np.mean(v)) for c, v in gaps.items()}
    assert mean[3] > 0.25 and mean[1] > 0.05                     # Surprise, Happy: open
    assert mean[0] < 0.05 and mean[6] < 0.05 and mean[2] < 0.06  # Neutral, Anger, Sad: closed
    assert mean[3] > 2 * mean[1] > 2 * max(mean[0], mean[6])


def test_rerun_replaces_previous_output(tmp_path):
    root = tmp_path / "s"
    make_affectnet_sample(root, SampleParams(**{**TINY, "per_class": 8}))
    make_affectnet_sample(root, SampleParams(**TINY))
    jpgs = list((root / "Manually_Annotated_Images").rglob("*.jpg"))
    assert len(jpgs) == TINY["per_class"] * len(CLASSES)       # nothing stale from the bigger run


def test_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        make_affectnet_sample(tmp_path, SampleParams(**TINY))
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    assert not (tmp_path / MARKER).exists()


def test_refuses_user_files_inside_an_earlier_sample(tmp_path):
    root = tmp_path / "s"
    make_affectnet_sample(root, SampleParams(**TINY))
    (root / "NOTES.txt").write_text("mine")
    (root / "extra").mkdir()
    with pytest.raises(FileExistsError, match="NOTES.txt"):
        make_affectnet_sample(root, SampleParams(**TINY))
    assert (root / "NOTES.txt").read_text() == "mine" and (root / "extra").is_dir() and (root / MARKER).is_file()
    (root / "NOTES.txt").unlink()
    (root / "extra").rmdir()
    (root / "Manually_Annotated_Images" / "1" / "mine.jpg").write_bytes(b"a photo of mine")   # deeper down
    with pytest.raises(FileExistsError, match=r"did not write \(Manually_Annotated_Images/1/mine.jpg\)"):
        make_affectnet_sample(root, SampleParams(**TINY))
    assert (root / "Manually_Annotated_Images" / "1" / "mine.jpg").read_bytes() == b"a photo of mine"


@pytest.mark.parametrize("inside, says", [(False, "not written by ferdata.sample"), (True, "notes.csv")])
def test_a_folder_it_must_not_replace_is_refused_before_any_work(tmp_path, monkeypatch, inside, says):
    """A foreign folder, or user files in an earlier sample: refused before the faces are detected."""
    root = tmp_path / "s"
    if inside:
        make_affectnet_sample(root, SampleParams(**TINY))
        (root / "Manually_Annotated_file_lists" / "notes.csv").write_text("mine")
    else:
        root.mkdir()
        (root / "mine.txt").write_text("keep me")
    monkeypatch.setattr(writer, "load_identities", lambda: pytest.fail("faces were detected before the refusal"))
    with pytest.raises(FileExistsError, match=says):
        make_affectnet_sample(root, SampleParams(**TINY))


def test_a_killed_runs_leftovers_are_cleared(tmp_path):
    root = tmp_path / "s"
    make_affectnet_sample(root, SampleParams(**TINY))
    partial = tmp_path / ".s.partial"                    # what a run killed mid-write leaves
    (partial / "Manually_Annotated_Images").mkdir(parents=True)
    (partial / "Manually_Annotated_Images" / "half.jpg").write_bytes(b"\xff\xd8")
    make_affectnet_sample(root, SampleParams(**TINY))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_a_run_killed_between_its_renames_gets_its_output_back(tmp_path, monkeypatch):
    root = tmp_path / "s"
    make_affectnet_sample(root, SampleParams(**TINY))
    before = _files(root)
    root.rename(tmp_path / ".s.old")                     # killed after moving the old output aside

    def broken(*args, **kwargs):
        raise RuntimeError("render failed")
    monkeypatch.setattr(writer, "render_sample", broken)
    with pytest.raises(RuntimeError, match="render failed"):     # the next run fails too ...
        make_affectnet_sample(root, SampleParams(**TINY))
    assert _files(root) == before                        # ... and the previous sample is in place again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_an_extreme_val_fraction_keeps_training_identities():
    splits = split_identities(load_identities(), 0.995, np.random.default_rng(0))
    assert {i.tier for i in splits["train"]} == {"photo", "lfw"}
    assert {i.tier for i in splits["validation"]} == {"photo", "lfw"}
    assert not {i.name for i in splits["train"]} & {i.name for i in splits["validation"]}


@pytest.mark.parametrize("bad", [
    {"classes": ()}, {"classes": (0, 0)}, {"classes": (9,)}, {"val_fraction": 0.0},
    {"val_fraction": 1.0}, {"per_class": 1}, {"image_size": 32}, {"jpeg_quality": 0},
    {"classes": (1, 1.5)}, {"classes": 3}, {"classes": ["Neutral", "Happy"]}, {"classes": (True, 2)},
    {"per_class": "96"}, {"per_class": 9.5}, {"seed": 0.5}, {"image_size": None}, {"val_fraction": "abc"},
    {"val_fraction": None},
])
def test_rejects_bad_arguments(tmp_path, bad):
    with pytest.raises(ValueError):
        make_affectnet_sample(tmp_path / "x", SampleParams(**{**TINY, **bad}))


@pytest.mark.parametrize("change,words", [
    ({"per_clas": 4, "per_class": None}, "unknown keys ['per_clas']"),
    ({"workers": 2}, "unknown keys ['workers']"),
    ({"per_class": "96"}, "sample.per_class must be >= 2, got '96' (YAML read it as text: write it without quotes)"),
    ({"classes": ["Neutral", "Happy"]}, "sample.classes must be a list of distinct AffectNet ids"),
    ({"seed": 0.5}, "sample.seed must be a whole number, got 0.5"),
])
def test_a_bad_sample_section_is_one_clear_error(tmp_path, change, words):
    """Typos and wrong types in params.yaml's sample section gave tracebacks (TypeError, numpy's)."""
    import yaml
    from typer.testing import CliRunner

    from ferdata.cli import app

    values = {k: v for k, v in {**TINY, "classes": list(CLASSES), **change}.items() if v is not None}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"sample": values}))
    res = CliRunner().invoke(app, ["sample", str(tmp_path / "out"), "--params", str(tmp_path / "params.yaml")])
    assert res.exit_code != 0 and isinstance(res.exception, ValueError) and words in str(res.exception)
    assert not (tmp_path / "out").exists()
    (tmp_path / "none.yaml").write_text(yaml.safe_dump({"detect": {}}))
    res = CliRunner().invoke(app, ["sample", str(tmp_path / "out"), "--params", str(tmp_path / "none.yaml")])
    assert "has no 'sample' section" in str(res.exception)


def test_the_output_may_be_the_current_folder_or_a_link_to_one(tiny, tmp_path, monkeypatch):
    """'.' failed after all the work ("has an empty name"); a symlinked folder was replaced by a real
    one and the next run failed for good ("Cannot call rmtree on a symbolic link")."""
    root, _ = tiny
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    make_affectnet_sample(Path("."), SampleParams(**TINY))
    assert _files(here) == _files(root)
    target, link = tmp_path / "target", tmp_path / "link"
    target.mkdir()
    link.symlink_to(target)
    for _ in range(2):
        make_affectnet_sample(link, SampleParams(**TINY))
        assert link.is_symlink() and _files(target) == _files(root)


def test_landmarks_lie_inside_box_and_image(tiny):
    root, _ = tiny
    size = TINY["image_size"]
    for rec in AffectNetReader(root).read():
        x0, y0, x1, y1 = rec.box
        lmk = rec.landmarks
        assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
        assert (lmk[:, 0] >= x0).all() and (lmk[:, 0] <= x1).all()
        assert (lmk[:, 1] >= y0).all() and (lmk[:, 1] <= y1).all()


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_embedded_backend_finds_the_labelled_face(tiny, embedded):
    root, _ = tiny
    records = [r for r in AffectNetReader(root).read() if isinstance(r, FaceRecord)]
    found = 0
    for rec in records:
        faces = embedded.detect(decode_rgb(Path(rec.path).read_bytes()))
        if faces and max(_iou(f.box, rec.box) for f in faces) > 0.4:
            found += 1
    assert found >= 0.8 * len(records)


def _aligned_grey(rec: FaceRecord) -> np.ndarray:
    """28x28 grey aligned crop from the CSV landmarks (the annotation, no detector)."""
    img = decode_rgb(Path(rec.path).read_bytes())
    crop = align_face(img, five_from_68(rec.landmarks), 112).image
    return cv2.resize(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), (28, 28), interpolation=cv2.INTER_AREA)


def _softmax_regression(x: np.ndarray, y: np.ndarray, k: int, l2: float = 1e-2, steps: int = 1500):
    """Multinomial logistic regression by full-batch gradient descent (numpy only)."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    w, b, onehot = np.zeros((z.shape[1], k)), np.zeros(k), np.eye(k)[y]
    for _ in range(steps):
        logits = z @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) / len(z)
        w -= 0.5 * (z.T @ g + l2 * w)
        b -= 0.5 * g.sum(0)
    return lambda q: (((q - mu) / sd) @ w + b).argmax(1)


@pytest.mark.slow
def test_classes_are_separable_on_held_out_identities(tmp_path):
    """Linear models on aligned pixels and on landmark geometry, trained on the training
    split, must beat chance (20 %) on validation (held-out identities) by a wide margin."""
    root = tmp_path / "s"
    make_affectnet_sample(root, SampleParams(per_class=40, classes=CLASSES, val_fraction=0.25, seed=0,
                                             image_size=256, jpeg_quality=90))
    records = [r for r in AffectNetReader(root).read() if isinstance(r, FaceRecord)]
    label = {c: i for i, c in enumerate(CLASSES)}
    split = {s: [r for r in records if r.split == s] for s in ("train", "test")}
    y = {s: np.array([label[r.label] for r in rs]) for s, rs in split.items()}

    pixels = {s: np.stack([_aligned_grey(r) for r in rs]).reshape(len(rs), -1).astype(np.float64)
              for s, rs in split.items()}
    predict = _softmax_regression(pixels["train"], y["train"], len(CLASSES))
    pixel_acc = float((predict(pixels["test"]) == y["test"]).mean())

    def geometry(rs: list[FaceRecord]) -> np.ndarray:
        out = []
        for r in rs:
            five = five_from_68(r.landmarks)
            centre, d = (five[0] + five[1]) / 2, np.linalg.norm(five[1] - five[0])
            out.append(((r.landmarks - centre) / d).reshape(-1))
        return np.array(out)

    predict = _softmax_regression(geometry(split["train"]), y["train"], len(CLASSES))
    geometry_acc = float((predict(geometry(split["test"])) == y["test"]).mean())
    assert pixel_acc >= 0.45, pixel_acc
    assert geometry_acc >= 0.8, geometry_acc
