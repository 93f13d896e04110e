"""`ferdata show`: a contact sheet from shards, a single tar, or aligned chunks (derived
fields rendered on the fly); the typer command works in-process."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferdata.geometry import align_face, split_halves
from ferdata.heatmap import summed_heatmap_u8
from ferdata.io import encode_jpeg, encode_png
from ferdata.show import LABEL_H, PANEL, contact_sheet, show, show_command, to_sheet_sample
from ferdata.stages.align import npy_bytes
from ferdata.tario import TarShardWriter

pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture(scope="module")
def aligned(embedded, photos) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for name in ("astronaut", "grace_hopper", "t1"):
        for f in embedded.detect(photos[name]):
            al = align_face(photos[name], f.kps5, 112, lmk68=f.lmk68)
            out.append((al.image, al.lmk68))
    return out


def write_shards(root: Path, aligned, derived: bool = True) -> None:
    """A shards folder (train/test) or, with ``derived=False``, an aligned chunk folder."""
    for split, part in (("train", aligned[:3]), ("test", aligned[3:])):
        folder = root / split if derived else root
        prefix = split if derived else f"aligned-{split}"
        with TarShardWriter(folder, prefix, 100) as w:
            for i, (img, lmk) in enumerate(part):
                fields = {"jpg": encode_jpeg(img, 95), "lmk.npy": npy_bytes(lmk),
                          "json": json.dumps({"backend": "embedded", "label": i}).encode()}
                if derived:
                    left, right = split_halves(img)
                    fields |= {"heatmap.png": encode_png(summed_heatmap_u8(lmk, 28, 1.0, 4.0)),
                               "left.jpg": encode_jpeg(left, 95), "right.jpg": encode_jpeg(right, 95),
                               "cls": str(i + 1).encode()}
                w.write(f"{split}_{i}", fields)


def test_sheet_from_shards(tmp_path, aligned):
    write_shards(tmp_path / "shards", aligned)
    out = show(tmp_path / "shards", tmp_path / "sheet.png", 5)
    sheet = cv2.imread(str(out))
    assert sheet is not None
    rows = -(-5 // 2)
    assert sheet.shape[0] == rows * (PANEL + LABEL_H + 8) + 8
    assert sheet.std() > 20                                      # faces, not a blank page


def test_sample_fields_and_labels(tmp_path, aligned):
    write_shards(tmp_path / "shards", aligned)
    from ferdata.show import _samples

    samples = [to_sheet_sample(k, f) for _, k, f in _samples(tmp_path / "shards")]
    assert len(samples) == len(aligned) == 8
    assert [s.key for s in samples[:2]] == ["test_0", "train_0"]           # splits interleaved
    s = samples[1]
    assert s.label.startswith("Happy | embedded | train_0")                 # cls 1 = Happy
    assert s.heatmap.shape == (28, 28) and s.left.shape == (112, 56, 3) and s.lmk.shape == (68, 2)


def test_sheet_from_aligned_chunks_renders_derived_fields(tmp_path, aligned):
    write_shards(tmp_path / "aligned", aligned, derived=False)
    from ferdata.show import _samples

    s = to_sheet_sample(*next(_samples(tmp_path / "aligned"))[1:])
    img, lmk = aligned[3]
    np.testing.assert_array_equal(s.heatmap, summed_heatmap_u8(lmk, 28, 1.0, 4.0))
    assert s.left.shape == (112, 56, 3) and s.label.startswith("Neutral | embedded")
    assert show(tmp_path / "aligned", tmp_path / "a.png", 2).is_file()
    single = sorted((tmp_path / "aligned").glob("*.tar"))[0]
    assert show(single, tmp_path / "b.png", 50).is_file()                    # one tar, n > samples


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shards"):
        show(tmp_path, tmp_path / "x.png", 4)
    with pytest.raises(FileNotFoundError, match="no such"):
        show(tmp_path / "nope", tmp_path / "x.png", 4)
    with pytest.raises(ValueError, match="at least one"):
        contact_sheet([])


def test_a_sample_it_cannot_draw_is_named_with_its_tar(tmp_path, aligned):
    """A sheet name that is no image fails before any work; a sample without a face image, with an
    unreadable label or a json that is not an object is a ValueError naming the tar and key."""
    with pytest.raises(ValueError, match=r"sheet.txt: a contact sheet is an image; end the name in \.bmp"):
        show(tmp_path, tmp_path / "sheet.txt", 4)
    img, lmk = aligned[0]
    cases = {"nojpg": {"lmk.npy": npy_bytes(lmk)}, "badcls": {"jpg": encode_jpeg(img, 95), "cls": b"abc"},
             "listjson": {"jpg": encode_jpeg(img, 95), "json": b"[1, 2]"},
             "badjpg": {"jpg": b"\xff\xd8 not a jpeg"}}
    for name, fields in cases.items():
        with TarShardWriter(tmp_path / name, "test", 10) as w:
            w.write("k0", fields)
        with pytest.raises(ValueError, match=rf"{name}/test-000000.tar: sample 'k0' cannot be shown"):
            show(tmp_path / name, tmp_path / "s.png", 4)


def test_command_in_process(tmp_path, aligned):
    import typer
    from typer.testing import CliRunner

    write_shards(tmp_path / "shards", aligned)
    app = typer.Typer()
    app.command("show")(show_command)
    app.command("noop")(lambda: None)                      # keep `show` a named sub-command
    result = CliRunner().invoke(app, ["show", str(tmp_path / "shards"), "--out", str(tmp_path / "s.png"), "-n", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.png").is_file() and str(tmp_path / "s.png") in result.output
    assert "Contact sheet" in CliRunner().invoke(app, ["show", "--help"]).output
