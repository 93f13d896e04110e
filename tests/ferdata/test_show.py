"""`ferdata show`: a contact sheet from shards, a single tar, or aligned chunks (derived
fields rendered on the fly); the typer command works in-process."""
from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferdata.geometry import align_face, split_halves, template
from ferdata.heatmap import max_heatmap_u8
from ferdata.io import encode_jpeg, encode_png
from ferdata.show import LABEL_H, PANEL, contact_sheet, most_samples, sheet_height, show, to_sheet_sample
from ferdata.tario import npy_bytes
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
                    fields |= {"heatmap.png": encode_png(max_heatmap_u8(lmk, 28, 1.0, 4.0)),
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

    samples = [to_sheet_sample(k, f) for _, k, f in _samples(tmp_path / "shards", 1000)]
    assert len(samples) == len(aligned) == 8
    assert [s.key for s in samples[:2]] == ["test_0", "train_0"]           # splits interleaved
    s = samples[1]
    assert s.label.startswith("Happy | embedded | train_0")                 # cls 1 = Happy
    assert s.heatmap.shape == (28, 28) and s.left.shape == (112, 56, 3) and s.lmk.shape == (68, 2)


def test_sheet_from_aligned_chunks_renders_derived_fields(tmp_path, aligned):
    write_shards(tmp_path / "aligned", aligned, derived=False)
    from ferdata.show import _samples

    s = to_sheet_sample(*next(_samples(tmp_path / "aligned", 1))[1:])
    img, lmk = aligned[3]
    np.testing.assert_array_equal(s.heatmap, max_heatmap_u8(lmk, 28, 1.0, 4.0))
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


def test_a_bad_sample_is_named_with_its_own_tar(tmp_path, aligned):
    """Every sample was named with the last tar of the folder (the generators bound ``tar`` late)."""
    img, lmk = aligned[0]
    with TarShardWriter(tmp_path / "two", "test", 1) as w:
        w.write("k0", {"lmk.npy": npy_bytes(lmk)})                   # test-000000.tar: no face image
        w.write("k1", {"jpg": encode_jpeg(img, 95), "lmk.npy": npy_bytes(lmk)})
    with pytest.raises(ValueError, match=r"two/test-000000.tar: sample 'k0' cannot be shown"):
        show(tmp_path / "two", tmp_path / "s.png", 4)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


@pytest.mark.parametrize("case, says", [
    ("lmk (5,)", r"lmk.npy holds a float32 array of shape \(5,\), not 68"),
    ("lmk (68, 3)", r"lmk.npy holds a float32 array of shape \(68, 3\), not 68"),
    ("lmk nan", "lmk.npy holds NaN or infinite coordinates"),
    ("lmk 1e30", r"lmk.npy holds coordinates from 1e\+30 to 1e\+30: more than a crop's width outside"),
    ("face 100 px", "crop size must be a multiple of 112 or 128, got 100"),
    ("face 112 x 128", "the face image is 112x128x3, not a square RGB crop")])
def test_a_face_or_landmarks_it_cannot_draw_are_named_with_tar_and_key(tmp_path, aligned, case, says):
    """Malformed landmarks crashed with a TypeError, an OpenCV error or a ValueError naming no file, and
    a face of a size no template has failed only when the sheet was drawn, naming nothing."""
    img, lmk = aligned[0]
    bad = {"lmk (5,)": np.zeros(5, np.float32), "lmk (68, 3)": np.zeros((68, 3), np.float32),
           "lmk nan": np.full((68, 2), np.nan, np.float32), "lmk 1e30": np.full((68, 2), 1e30, np.float32)}
    faces = {"face 100 px": cv2.resize(img, (100, 100)), "face 112 x 128": cv2.resize(img, (128, 112))}
    fields = {"jpg": encode_jpeg(faces.get(case, img), 95), "lmk.npy": _npy(bad.get(case, lmk)),
              "json": json.dumps({"backend": "embedded", "label": 1}).encode()}
    with TarShardWriter(tmp_path / "bad", "test", 10) as w:
        w.write("k0", fields)
    with pytest.raises(ValueError, match=rf"bad/test-000000.tar: sample 'k0' cannot be shown \(ValueError: {says}"):
        show(tmp_path / "bad", tmp_path / "s.png", 4)


def test_whole_number_landmarks_are_drawn(aligned):
    img, lmk = aligned[0]
    s = to_sheet_sample("k0", {"jpg": encode_jpeg(img, 95), "lmk.npy": _npy(np.rint(lmk).astype(np.int64))})
    assert s.lmk.shape == (68, 2) and contact_sheet([s]).std() > 20


def _record_padding(folder: Path, padding: float, report: bool = False) -> None:
    """What the shard stage (``_info.json``) or the align stage (``report.json``) records."""
    if report:
        (folder / "report.json").write_text(json.dumps({"stage": "align", "settings": {"padding": padding}}))
    else:
        (folder / "_info.json").write_text(json.dumps({"preprocess": {"align": {"padding": padding}}}))


def test_crosses_follow_the_padding_the_crops_were_made_with(tmp_path, aligned):
    """The crosses were the padding-0 template whatever align.padding made the crops: with padding 0.4
    every face looked misaligned by ~9 px. The split's _info.json records the padding."""
    root = tmp_path / "shards"
    write_shards(root, aligned)
    from ferdata.show import _samples

    unrecorded = show(root, tmp_path / "unrecorded.png", 3)
    for split in ("train", "test"):
        _record_padding(root / split, 0.4)
    out = show(root, tmp_path / "padded.png", 3)
    expected = contact_sheet([to_sheet_sample(k, f, 0.4) for _, k, f in _samples(root, 3)])
    np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB), expected)
    assert not np.array_equal(cv2.imread(str(out)), cv2.imread(str(unrecorded)))
    s = to_sheet_sample(*next(_samples(root, 1))[1:], padding=0.4)
    np.testing.assert_allclose(s.crosses, template(112, 0.4))


def test_recorded_padding_of_shards_and_aligned_chunks(tmp_path):
    """Shards record it in _info.json (preprocess.align), aligned chunks in report.json (settings);
    unrecorded is None (crosses for padding 0, marked "pad ?" on the face); a bad value names the file."""
    from ferdata.show import recorded_padding

    for name in ("split", "aligned", "none", "bad"):
        (tmp_path / name).mkdir()
    _record_padding(tmp_path / "split", 0.4)
    _record_padding(tmp_path / "aligned", 0.25, report=True)
    _record_padding(tmp_path / "bad", -1)
    assert recorded_padding(tmp_path / "split") == 0.4 and recorded_padding(tmp_path / "aligned") == 0.25
    assert recorded_padding(tmp_path / "none") is None
    with pytest.raises(ValueError, match=r"bad/_info.json: preprocess.align.padding is -1, not a number >= 0"):
        recorded_padding(tmp_path / "bad")


def test_an_unrecorded_padding_is_said_on_the_sheet(aligned):
    img, lmk = aligned[0]
    fields = {"jpg": encode_jpeg(img, 95), "lmk.npy": npy_bytes(lmk)}
    unknown, zero = to_sheet_sample("k", fields), to_sheet_sample("k", fields, 0.0)
    np.testing.assert_array_equal(unknown.crosses, zero.crosses)             # padding 0 assumed ...
    assert not np.array_equal(contact_sheet([unknown]), contact_sheet([zero]))   # ... and "pad ?" drawn


def test_command_in_process(tmp_path, aligned):
    from typer.testing import CliRunner

    from ferdata.cli import app

    write_shards(tmp_path / "shards", aligned)
    result = CliRunner().invoke(app, ["show", str(tmp_path / "shards"), "--out", str(tmp_path / "s.png"), "-n", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.png").is_file() and str(tmp_path / "s.png") in result.output
    assert "Contact sheet" in CliRunner().invoke(app, ["show", "--help"]).output


def test_a_file_that_is_no_tar_is_told_what_to_give(tmp_path):
    """An _info.json or a JPEG given to show read as a broken shard: 'check it with ferdata verify,
    then re-run the stage that wrote it'."""
    from ferdata.show import show

    (tmp_path / "_info.json").write_text("{}")
    with pytest.raises(ValueError, match="_info.json is no .tar: give a shards folder, one .tar of it"):
        show(tmp_path / "_info.json", tmp_path / "sheet.png")


@pytest.mark.parametrize("out, most", [("s.jpg", 704), ("s.webp", 176), ("s.png", 5000), ("s.bmp", 5000)])
def test_a_format_holds_the_sheet_its_encoder_writes(out, most):
    """352 rows of 2 tiles of (LABEL_H + PANEL + 8) px plus 8 is 65,480 px, 353 rows 65,666; 88 rows
    16,376, 89 rows 16,562 (the encoders' limits: below)."""
    assert most_samples(Path(out)) == most
    if out != "s.png" and out != "s.bmp":
        assert sheet_height(most) <= {"s.jpg": 65_500, "s.webp": 16_383}[out] < sheet_height(most + 2)


@pytest.mark.parametrize("ext, tallest", [(".jpg", 65_500), (".webp", 16_383)])
def test_opencv_encodes_a_format_up_to_the_height_the_sheet_limits_assume(ext, tallest):
    from ferdata.show import SHEET_FORMATS

    def encodes(height: int) -> bool:
        try:
            return cv2.imencode(ext, np.zeros((height, 1, 3), np.uint8))[0]
        except cv2.error:
            return False

    assert SHEET_FORMATS[ext] == tallest and encodes(tallest) and not encodes(tallest + 1)


@pytest.mark.parametrize("n", [0, -3])
def test_n_below_one_is_refused_before_reading(tmp_path, n):
    with pytest.raises(ValueError, match=f"-n {n}: a sheet shows at least 1 sample"):
        show(tmp_path / "not read", tmp_path / "s.png", n)


@pytest.mark.parametrize("n", [5001, 10**20])
def test_an_n_beyond_what_a_sheet_holds_shows_the_samples_there_are(tmp_path, aligned, n):
    """-n over 5000 was refused even where the split held 8 samples (and 10**20 gave islice's message
    before that)."""
    write_shards(tmp_path / "shards", aligned)
    sheet = cv2.imread(str(show(tmp_path / "shards", tmp_path / "s.png", n)))         # 8 samples, 4 rows
    assert sheet.shape[0] == 4 * (PANEL + LABEL_H + 8) + 8


def test_more_samples_than_a_png_sheet_holds_are_refused(tmp_path, aligned, monkeypatch):
    import ferdata.show as show_module

    write_shards(tmp_path / "shards", aligned)                              # 8 samples
    monkeypatch.setattr(show_module, "MAX_SAMPLES", 5)
    with pytest.raises(ValueError, match=r"-n 100000000000000000000: .*shards holds more than 5 "
                                         r"samples; a sheet shows at most 5 \(about 1.4 GB in memory\): use -n 5 "
                                         "or fewer"):
        show(tmp_path / "shards", tmp_path / "s.png", 10**20)
    assert show(tmp_path / "shards", tmp_path / "s.png", 5).is_file()


def test_the_format_limit_counts_the_samples_found_not_n(tmp_path, aligned):
    write_shards(tmp_path / "shards", aligned)
    sheet = cv2.imread(str(show(tmp_path / "shards", tmp_path / "s.jpg", 5000)))      # 8 samples, 4 rows
    assert sheet.shape[0] == 4 * (PANEL + LABEL_H + 8) + 8


def test_a_heatmap_that_is_not_8_bit_is_named_with_its_tar(tmp_path, aligned):
    img, lmk = aligned[0]
    ok, png16 = cv2.imencode(".png", np.full((28, 28), 40000, np.uint16))
    with TarShardWriter(tmp_path / "heat16", "test", 10) as w:
        w.write("k0", {"jpg": encode_jpeg(img, 95), "lmk.npy": npy_bytes(lmk), "heatmap.png": png16.tobytes()})
    with pytest.raises(ValueError, match=r"sample 'k0' cannot be shown \(ValueError: heatmap.png holds uint16"):
        show(tmp_path / "heat16", tmp_path / "s.png", 4)


def test_derived_chunks_are_told_apart_from_broken_shards(tmp_path, aligned):
    img, lmk = aligned[0]
    with TarShardWriter(tmp_path / "derived", "derived", 10) as w:
        w.write("k0", {"heatmap.png": encode_png(max_heatmap_u8(lmk, 28, 1.0, 4.0))})
    for given in (tmp_path / "derived", tmp_path / "derived" / "derived-000000.tar"):
        with pytest.raises(ValueError, match=r"derived chunks \(derived-\*.tar\) hold no face image: give the "
                                             "shards or the aligned folder"):
            show(given, tmp_path / "s.png", 4)


def test_a_sheet_too_tall_for_its_format_is_refused_after_one_sample_more_than_it_holds(tmp_path, aligned,
                                                                                      monkeypatch):
    """-n 5000 -o s.jpg read all 5000 samples before it was refused."""
    import ferdata.show as show_module

    write_shards(tmp_path / "shards", aligned)                              # 8 samples
    monkeypatch.setitem(show_module.SHEET_FORMATS, ".jpg", 3 * (PANEL + LABEL_H + 8) + 8)    # 3 rows: 6 samples
    drawn = []
    real = show_module._sheet_sample
    monkeypatch.setattr(show_module, "_sheet_sample", lambda *a: drawn.append(a[1]) or real(*a))
    with pytest.raises(ValueError, match=r"-n 5000: .*shards holds more than 6 samples; a \.jpg sheet holds at most "
                                         r"6 \(566 px tall\): use -n 6 or fewer, or a \.png"):
        show(tmp_path / "shards", tmp_path / "s.jpg", 5000)
    assert len(drawn) == 7
    assert show(tmp_path / "shards", tmp_path / "s.jpg", 6).is_file()


@pytest.mark.parametrize("n, rows", [(1, 1), (2, 1), (3, 2), (705, 353)])
def test_a_last_row_holding_one_tile_counts_in_the_sheets_height(n, rows):
    assert sheet_height(n) == rows * (LABEL_H + PANEL + 8) + 8


def test_a_sample_without_68_landmarks_says_so_in_its_heatmap_panel(aligned):
    """RAF-DB read by its 5 manual points has no ``lmk.npy`` and no heatmap: its panel was drawn from an all-zero
    heatmap, a plain blue tint, as if the 68 landmarks had been found nowhere."""
    from ferdata.show import _heat_panel

    img, lmk = aligned[0]
    five = to_sheet_sample("raf_0", {"jpg": encode_jpeg(img, 95), "cls": b"1"})
    assert five.lmk is None and five.heatmap is None
    panel = _heat_panel(five)
    assert panel.shape == (PANEL, PANEL, 3) and (panel.min(axis=2) < 16).sum() > 50     # black text on a face
    assert (panel[..., 2].astype(int) - panel[..., 0]).mean() < 20                         # no blue tint
    assert contact_sheet([five]).std() > 20
    full = to_sheet_sample("aff_0", {"jpg": encode_jpeg(img, 95), "lmk.npy": npy_bytes(lmk), "cls": b"1"})
    assert full.heatmap is not None and full.heatmap.max() > 0


def test_a_key_or_backend_with_undecodable_bytes_is_drawn_not_a_crash(tmp_path):
    """A shard from elsewhere whose key (a member name's bytes that are not UTF-8) or json backend
    (a "\\udcff" escape) holds a lone surrogate: cv2.putText ended the process with a segmentation
    fault (exit 139, no message). Run apart, so a crash fails this test, not the session."""
    import os
    import subprocess
    import sys

    with TarShardWriter(tmp_path, "train", 10) as w:
        w.write("k\udcff", {"jpg": encode_jpeg(np.full((112, 112, 3), 128, np.uint8), 95), "cls": b"1",
                           "json": b'{"backend": "emb\\udcfeedded", "label": 1}'})
    out = tmp_path / "sheet.png"
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "ferdata.cli", "show", str(tmp_path / "train-000000.tar"),
                           "-o", str(out), "-n", "1"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert out.is_file()
