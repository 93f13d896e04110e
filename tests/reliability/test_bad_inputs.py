"""Bad inputs: every case of the corpus gets its recorded reason, the run completes,
good samples are kept; real photos for no face / several faces / EXIF / huge images."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from ferdata.datasets import DatasetLayoutError, open_reader
from ferdata.io import BadImage, _damage, decode_image, decode_jpeg_rgb, jpeg_damage, probe_image
from ferdata.stages.detect import run_detect
from ferdata.tario import iter_dir_samples
from ferdata.verify import verify_shards
from tests.reliability.corpus import (Case, build_corpus, child_env, damaged_jpeg, encode, exif_rotated, jpeg_of,
                                      multi_page_tiff, picture, real_photo, run_all, stage_params)

DECODE_REASONS = {"empty_file", "truncated", "not_an_image", "too_small", "too_large"}


def aligned_faces(aligned_dir: Path) -> dict[str, np.ndarray]:
    return {key: decode_jpeg_rgb(f["jpg"]) for key, f in iter_dir_samples(aligned_dir, "aligned")}


def test_every_bad_input_is_counted_by_reason(bad_corpus, bad_corpus_run):
    _, exp = bad_corpus
    out, reports = bad_corpus_run
    detect, align = reports["detect"], reports["align"]
    assert detect["kept"] + detect["dropped_total"] == exp.rows
    dropped = Counter(detect["dropped"]) + Counter(align["dropped"])
    assert dropped == exp.detect_dropped + exp.align_dropped
    assert {r: n for r, n in detect["dropped"].items() if r in DECODE_REASONS} == \
        {r: n for r, n in exp.detect_dropped.items() if r in DECODE_REASONS}
    assert align["kept"] == reports["derive"]["kept"] == reports["shard"]["kept"] == exp.kept
    assert align["notes"]["converted"] == dict(exp.converted)
    assert align["notes"]["duplicates"] == dict(exp.duplicates)
    for report, stage in ((detect, "detect"), (align, "aligned")):
        assert sum(report["dropped"].values()) == report["dropped_total"]
        assert all(ex["detail"] for exs in report["examples"].values() for ex in exs)
        lines = (out / stage / "dropped.jsonl").read_text().splitlines()
        assert Counter(json.loads(x)["reason"] for x in lines) == Counter(report["dropped"])
    assert verify_shards(out / "shards") == []


def test_kept_conversions_have_the_right_pixels(bad_corpus_run):
    out, _ = bad_corpus_run
    faces = aligned_faces(out / "aligned")
    rotated, upright = faces["train_1_exif_rotated"], faces["train_1_exif_upright_twin"]
    assert np.abs(rotated.astype(int) - upright).mean() < 3           # EXIF applied, landmarks agree
    alpha = faces["train_1_alpha"]
    assert alpha[:4, :4].max() < 16 and alpha[40:70, 40:70].mean() > 20  # transparent border is black
    paths = {json.loads(f["json"])["path"] for _, f in iter_dir_samples(out / "aligned", "aligned")}
    assert any(p.endswith("ünï cödé dir/fïle with space.jpg") for p in paths)   # unicode + spaces kept
    for key in ("train_1_grayscale", "train_1_cmyk", "train_1_sixteen", "train_1_palette"):
        assert faces[key].shape == (112, 112, 3)


@pytest.mark.parametrize("reduce", [1, 2, 4, 8])
def test_jpegs_decode_to_opencvs_pixels_bit_for_bit(reduce):
    """RGB and grey JPEGs are read by libjpeg-turbo in strict mode (to hear of damaged data): its
    pixels are OpenCV's, whatever the chroma subsampling, progression, size or reduction."""
    import cv2

    rgb = real_photo("astronaut")
    files = [encode(rgb, quality=90, subsampling=s) for s in (0, 1, 2)] + [
        encode(rgb, quality=75, progressive=True), encode(np.ascontiguousarray(rgb[:333, :517]), quality=85),
        encode(np.ascontiguousarray(rgb[..., 0]), quality=90)]
    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}[reduce]
    for data in files:
        got = decode_image(data, reduce)
        want = cv2.imdecode(np.frombuffer(data, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)[..., ::-1]
        assert got.rgb.shape == want.shape and np.array_equal(got.rgb, want) and not got.damage


def test_damaged_jpeg_data_is_named_and_harmless_warnings_are_not(bad_corpus_run):
    """Bug guarded: a JPEG whose compressed data is damaged decoded with grey or shifted blocks
    (OpenCV and Pillow say nothing) and was kept without a word. It is still kept (an official test
    set stays whole), counted as corrupt_jpeg_data and named in its sample's json."""
    sound = encode(picture(39), quality=92)
    assert jpeg_damage(damaged_jpeg(picture(39))).startswith("Corrupt JPEG data")
    assert jpeg_damage(sound) == "" and jpeg_damage(sound[:-2] + bytes(3) + sound[-2:]) == ""   # extra bytes
    assert jpeg_damage(encode(picture(39), "PNG")) == ""
    from ferdata.io import _damage                # libjpeg's one sign of most damage it notices: extra bytes
    for message, damaged in (("Corrupt JPEG data: 3 extraneous bytes before marker 0xd9", False),   # a writer's
                             ("Corrupt JPEG data: 114 extraneous bytes before marker 0xd9", True),  # decoder thrown
                             ("Corrupt JPEG data: 30 extraneous bytes before marker 0xd2", True),   # before a restart
                             ("Corrupt JPEG data: 2 extraneous bytes before marker 0xdb", False),   # between tables
                             ("Warning: unknown JFIF revision number 1.03", False)):
        assert bool(_damage(message)) is damaged, message
    decoded = decode_image(damaged_jpeg(picture(39)))
    assert decoded.damage.startswith("Corrupt JPEG data") and decoded.conversions == ("corrupt_jpeg_data",)
    cmyk = bytearray(encode(picture(39), mode="CMYK", quality=95))     # read by OpenCV, checked apart
    cmyk[len(cmyk) // 2:len(cmyk) // 2 + 400] = bytes(400)
    assert decode_image(bytes(cmyk)).conversions == ("cmyk", "corrupt_jpeg_data")
    out, _ = bad_corpus_run
    metas = {k: json.loads(f["json"]) for k, f in iter_dir_samples(out / "aligned", "aligned")}
    assert metas["train_1_damaged_data"]["jpeg_damage"].startswith("Corrupt JPEG data")
    assert [k for k, m in metas.items() if "jpeg_damage" in m] == ["train_1_damaged_data"]


def test_a_file_of_several_pictures_gives_its_first_and_says_so():
    first, second = picture(29), picture(38)
    got = decode_image(multi_page_tiff(first, second))
    assert np.array_equal(got.rgb, first) and got.conversions == ("first_frame_only",)
    assert decode_image(encode(first, "TIFF")).conversions == ()
    mpo = io.BytesIO()              # a camera's MPO JPEG: the photo, then previews or gain maps: not a note
    Image.fromarray(first).save(mpo, "MPO", save_all=True, append_images=[Image.fromarray(second)])
    assert decode_image(mpo.getvalue()).conversions == ()


def test_without_simplejpeg_jpegs_decode_to_the_same_pixels_and_it_is_said(monkeypatch, caplog):
    """A broken install without simplejpeg (a GPU image with its own packages) still decodes every
    JPEG, through OpenCV, and says once that damaged data goes unnoticed."""
    import sys

    import ferdata.io as fio

    data, damaged = encode(picture(39), quality=92), damaged_jpeg(picture(39))
    want = decode_image(data).rgb
    monkeypatch.setitem(sys.modules, "simplejpeg", None)            # import simplejpeg raises ImportError
    fio._simplejpeg.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="ferdata.io"):
            assert np.array_equal(decode_image(data).rgb, want) and decode_image(damaged).damage == ""
    finally:
        fio._simplejpeg.cache_clear()                           # the next test finds the installed module
    assert caplog.text.count("simplejpeg is not installed") == 1


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("extra", [0, 1, 2], ids=["unspecified", "associated", "unassociated"])
def test_a_tiffs_alpha_is_applied_once(dtype, extra):
    """OpenCV already premultiplies an 8-bit TIFF's unassociated alpha, and associated alpha is
    stored premultiplied: multiplying again darkened a half-transparent pixel 203 to 51. A 16-bit
    one's unassociated alpha is applied here."""
    import tifffile

    top = np.iinfo(dtype).max
    rgb = (real_photo("astronaut")[:40, :60].astype(np.float64) / 255)
    alpha = np.tile(np.linspace(0, 1, 60), (40, 1))[..., None]
    straight = np.round(np.dstack([rgb, alpha]) * top).astype(dtype)
    stored = np.round(np.dstack([rgb * alpha, alpha]) * top).astype(dtype) if extra == 1 else straight
    buf = io.BytesIO()
    tifffile.imwrite(buf, stored, photometric="rgb", extrasamples=[extra])
    want = rgb * (alpha if extra else 1) * 255                  # over black; an unspecified extra sample is no alpha
    got = decode_image(buf.getvalue()).rgb.astype(np.float64)
    assert np.abs(got - want).max() <= 2.5, np.abs(got - want).max()


@pytest.mark.parametrize("extra", [1, 2], ids=["associated", "unassociated"])
def test_a_grey_tiffs_alpha_is_applied(extra):
    """OpenCV reads a grey + alpha TIFF as grey alone: its transparent areas came out grey, not black."""
    import tifffile

    grey = real_photo("astronaut")[:40, :60].mean(axis=2) / 255
    alpha = np.tile(np.linspace(0, 1, 60), (40, 1))
    stored = np.dstack([grey * alpha if extra == 1 else grey, alpha])
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.round(stored * 255).astype(np.uint8), photometric="minisblack", extrasamples=[extra])
    got = decode_image(buf.getvalue())
    want = np.repeat((grey * alpha * 255)[..., None], 3, axis=2)
    assert "alpha_flattened" in got.conversions
    assert np.abs(got.rgb.astype(np.float64) - want).max() <= 2.5, np.abs(got.rgb - want).max()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(orientation):
    rgb = np.ascontiguousarray(real_photo("astronaut")[:120, :80])
    exif = Image.Exif()
    exif[0x0112] = orientation
    opaque = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    for data in (encode(rgb, quality=95, exif=exif.tobytes()), encode(opaque, "PNG", exif=exif.tobytes()),
                 encode(rgb, "TIFF", exif=exif), encode(rgb, "TIFF", "L", exif=exif, compression="tiff_lzw"),
                 encode(opaque, "TIFF", exif=exif)):                # TIFF decoders turn by tag 274 themselves
        ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
        got = decode_image(data)
        assert got.rgb.shape == ref.shape and np.array_equal(got.rgb, ref)
        assert ("exif_orientation" in got.conversions) == (orientation != 1)
        assert probe_image(data).shape == ref.shape[:2]             # header-only frame for pixel-free backends


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    import zlib

    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def _before_iend(png: bytes, chunk: bytes) -> bytes:
    """``png`` with ``chunk`` after its image data (just before IEND, 12 bytes from the end)."""
    return png[:-12] + chunk + png[-12:]


@pytest.mark.parametrize("where", ["exif_after_image", "xmp_after_image", "exif_before_image"])
def test_a_pngs_orientation_is_read_wherever_its_chunk_sits_without_decoding_it(monkeypatch, where):
    """PIL reads a PNG's chunks after the image data (where eXIf often sits) only once it has decoded
    every pixel, and getexif() did so while "reading the header": a 0.5 MB PNG of 121 MP took about
    100 MB before it was refused, a 3 MP one twice the decode time, and the pixel-free backends decoded
    every pixel. The header is read without a pixel now, and the orientation still found."""
    from PIL import PngImagePlugin

    rgb = np.ascontiguousarray(real_photo("astronaut")[:120, :80])
    exif = Image.Exif()
    exif[0x0112] = 6
    plain = encode(rgb, "PNG")
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    data = {"exif_after_image": _before_iend(plain, _png_chunk(b"eXIf", exif.tobytes().removeprefix(b"Exif\0\0"))),
            "xmp_after_image": _before_iend(plain, _png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + xmp)),
            "exif_before_image": encode(rgb, "PNG", exif=exif.tobytes())}[where]
    full = Image.open(io.BytesIO(data))
    full.load()
    ref = np.asarray(ImageOps.exif_transpose(full).convert("RGB"))
    assert ref.shape == (80, 120, 3)                                # PIL, every chunk read: turned
    loads = []
    real_load = PngImagePlugin.PngImageFile.load
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", lambda im: loads.append(1) or real_load(im))
    assert probe_image(data).shape == (80, 120) and not loads
    got = decode_image(data)
    assert np.array_equal(got.rgb, ref) and "exif_orientation" in got.conversions


@pytest.mark.parametrize("tail", ["bad_crc_text", "huge_ztxt", "bad_crc_exif", "many_chunks"])
def test_text_after_a_pngs_image_data_never_costs_the_picture(tail):
    """Moving chunks before the image data for PIL to read the orientation put them under PIL's header
    rules: a comment with a bad CRC, or a zTXt that inflates past 1 MB, made the picture undecodable
    (libpng only warns). Only orientation chunks with their CRC intact move now, and a PNG PIL still
    refuses so is read as stored. Thousands of chunks are walked once each (it was quadratic)."""
    import zlib

    rgb = np.ascontiguousarray(real_photo("astronaut")[:60, :40])
    plain = encode(rgb, "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6
    broken = _png_chunk(b"eXIf", exif.tobytes().removeprefix(b"Exif\0\0"))
    chunks = {"bad_crc_text": _png_chunk(b"tEXt", b"Comment\0hello")[:-4] + b"\0\0\0\0",
              "huge_ztxt": _png_chunk(b"zTXt", b"Raw profile type exif\0\0" + zlib.compress(b"a" * 2_000_000)),
              "bad_crc_exif": broken[:-4] + bytes(4),
              "many_chunks": _png_chunk(b"tEXt", b"Comment\0x") * 20_000 + _png_chunk(b"eXIf", broken[8:-4])}
    got = decode_image(_before_iend(plain, chunks[tail]))
    turned = tail == "many_chunks"                                   # the only intact orientation chunk
    assert np.array_equal(got.rgb, np.rot90(rgb, -1) if turned else rgb) and probe_image(plain).shape == (60, 40)


def test_a_16_bit_pgm_says_it_was_narrowed():
    """PIL opens a 16-bit PGM as mode I, so ``high_bit_depth`` was missing from its conversions."""
    import cv2

    ok, pgm = cv2.imencode(".pgm", np.full((30, 40), 51400, np.uint16))
    got = decode_image(pgm.tobytes())
    assert ok and got.conversions == ("high_bit_depth", "grayscale") and (got.rgb == 51400 >> 8).all()
    ok, pgm8 = cv2.imencode(".pgm", np.full((30, 40), 200, np.uint8))
    assert ok and decode_image(pgm8.tobytes()).conversions == ("grayscale",)


def test_a_1_bit_grey_pngs_transparent_value_is_flattened_to_black():
    """PIL gives a mode "1" PNG's key widened to 8 bits already (255), and it was widened again (65025):
    no pixel matched, and the clear white half decoded white."""
    white = np.zeros((32, 40), bool)
    white[:16] = True                                                 # the top half white, and transparent
    buf = io.BytesIO()
    Image.fromarray(white).save(buf, "PNG", transparency=1)
    data = buf.getvalue()
    assert data[24] == 1                                              # a 1-bit file
    rgba = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))
    assert (rgba[:16, :, 3] == 0).all() and (rgba[16:, :, 3] == 255).all()      # PIL: the top half is clear
    assert (decode_image(data).rgb == 0).all()                       # clear white and opaque black: all black


@pytest.mark.parametrize("depth", [2, 8, 16])
def test_a_grey_pngs_transparent_value_is_flattened_to_black(depth):
    """A grey PNG's tRNS (one sample value fully transparent): PIL makes those pixels alpha 0, and the
    decode said ``alpha_flattened``, but OpenCV ignores it on grey and they came out (10, 10, 10).
    The key is a value of the file's samples: 2-bit sample 1 is 85 once widened to 8 bits."""
    top = 2 ** depth - 1
    opaque_sample, key = top * 3 // 4, top // 3                     # 2, 1 / 191, 85 / 49151, 21845
    grey = np.full((32, 40), opaque_sample, np.uint16 if depth == 16 else np.uint8)
    grey[:16] = key
    buf = io.BytesIO()
    if depth == 2:                          # PIL packs the top bits of 8-bit values: widen the samples first
        Image.fromarray(grey * 85).save(buf, "PNG", transparency=key, bits=2)
    else:
        Image.fromarray(grey).save(buf, "PNG", transparency=key)    # 16: mode I;16
    data = buf.getvalue()
    assert data[24] == depth                                         # the file's bit depth
    if depth == 8:
        rgba = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))
        assert (rgba[:16, :, 3] == 0).all() and (rgba[16:, :, 3] == 255).all()      # PIL: the top half is clear
    got = decode_image(data)
    opaque = {2: 170, 8: 191, 16: 49151 >> 8}[depth]
    assert "alpha_flattened" in got.conversions
    assert (got.rgb[:16] == 0).all() and (got.rgb[16:] == opaque).all(), (got.rgb[0, 0], got.rgb[20, 0])


@pytest.mark.parametrize("size, orientation, expected", [((121, 83), 1, 4), ((121, 83), 6, 1), ((120, 84), 6, 4),
                                                          ((122, 84), 8, 2)])
def test_optional_reduction_keeps_flipped_frames_exact(size, orientation, expected):
    """EXIF-flipped/rotated images reduce only by factors dividing their stored size."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(np.ascontiguousarray(real_photo("astronaut")[:size[1], :size[0]]), quality=90, exif=exif.tobytes())
    probe = probe_image(data, reduce_at_least=4)
    assert probe.reduce == expected
    assert probe.shape == decode_image(data, 4).rgb.shape[:2] and probe.conversions == decode_image(data).conversions


@pytest.mark.parametrize("fmt, orientation", [("PNG", 1), ("PNG", 6), ("WEBP", 1), ("TIFF", 1)])
def test_other_formats_shrink_by_block_means_as_a_video_frame_does(fmt, orientation):
    """Only JPEGs shrank before the warp: a large face in a PNG was warped from full resolution
    (aliased: another prediction for the same pixels than from the JPEG or a video frame). Now
    every format's reduced decode is the block mean of its full decode, in the displayed frame."""
    from ferdata.io import block_mean

    exif = Image.Exif()
    exif[0x0112] = orientation
    rgb = np.ascontiguousarray(real_photo("astronaut")[:121, :83])
    options = {"exif": exif.tobytes()} if fmt == "PNG" else {"lossless": True} if fmt == "WEBP" else {}
    data = encode(rgb, fmt, **options)
    full = decode_image(data)
    for r in (2, 4, 8):
        reduced = decode_image(data, r)
        assert reduced.scale == 1 / r and probe_image(data, r).shape == reduced.rgb.shape[:2]
        assert np.array_equal(reduced.rgb, block_mean(full.rgb, r))
    assert decode_image(data, 4).rgb.shape[:2] == ((21, 31) if orientation == 6 else (31, 21))


@pytest.mark.parametrize("max_pixels", [10 ** 9, 5000, 1500, 300])
@pytest.mark.parametrize("orientation", [1, 6])
def test_probe_predicts_reduced_decodes(monkeypatch, max_pixels, orientation):
    """Odd sizes decoded at 1/2, 1/4, 1/8 (libjpeg rounds up): the probe gives the same frame,
    scale and conversions as the decode, without decoding."""
    monkeypatch.setattr("ferdata.io.MAX_PIXELS", max_pixels)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(np.ascontiguousarray(real_photo("astronaut")[:83, :121]), quality=90, exif=exif.tobytes())
    got, probe = decode_image(data), probe_image(data)
    assert (probe.shape, probe.scale, probe.conversions) == (got.rgb.shape[:2], got.scale, got.conversions)
    assert probe.scale == {10 ** 9: 1, 5000: 0.5, 1500: 0.25, 300: 0.125}[max_pixels]


@pytest.mark.parametrize("data, reason", [
    (b"", "empty_file"),
    (b"GIF89a" + b"\0" * 7, "truncated"),                          # no trailer byte: it ends early
    (b"GIF89a" + b"\0" * 7 + b";", "undecodable"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 30, "truncated"),
    (encode(picture(44), "BMP")[:400], "truncated"),                 # "undecodable" before, as every format
    (encode(picture(44), "WEBP")[:200], "truncated"),                #   but JPEG and PNG
    (b"%PDF-1.4 not a picture", "not_an_image"),
], ids=["empty", "gif-cut", "gif-garbage", "png-cut", "bmp-cut", "webp-cut", "pdf"])
def test_decode_reasons(data, reason):
    with pytest.raises(BadImage) as e:
        decode_image(data)
    assert e.value.reason == reason


def test_wrong_dataset_root_names_the_fix(tmp_path, bad_corpus):
    root, _ = bad_corpus
    params = stage_params(tmp_path)
    for wrong in (tmp_path / "nowhere", root / "Manually_Annotated_Images"):
        with pytest.raises(DatasetLayoutError, match="fix: point --root"):
            run_detect(open_reader("affectnet", wrong).read(), params["detect"], tmp_path / "detect")
    assert not (tmp_path / "detect" / "faces.jsonl.gz").exists()
    assert not list(tmp_path.glob(".detect*")) and not list(tmp_path.glob("detect/.*"))   # nothing half-written


def test_an_official_split_that_lost_every_sample_is_an_error_not_carved_from_train(tmp_path):
    root = tmp_path / "raw"
    build_corpus(root, [*(Case(f"good_{i}", jpeg_of(i)) for i in range(4)),
                        Case("test_missing", None, "detect", "missing_image", split="test")])
    with pytest.raises(ValueError, match="no sample is left in the dataset's official test split"):
        run_all(root, tmp_path / "out", stage_params(tmp_path))
    assert not (tmp_path / "out" / "shards").exists()


def test_names_that_sanitise_to_one_key_never_collide_silently(tmp_path):
    root = tmp_path / "raw"
    build_corpus(root, [Case("a", jpeg_of(1), rel="1/ä.jpg"), Case("o", jpeg_of(2), rel="1/ö.jpg", label="2"),
                        Case("t", jpeg_of(3), split="test")])
    reports = run_all(root, tmp_path / "out", stage_params(tmp_path))
    kept, dups = reports["align"]["kept"], reports["align"]["dropped"].get("duplicate_key", 0)
    assert (kept, dups) in ((3, 0), (2, 1))                             # both kept, or the 2nd counted
    assert reports["shard"]["kept"] == kept and verify_shards(tmp_path / "out" / "shards") == []


def test_real_photos_no_face_several_faces_exif(tmp_path):
    astronaut = real_photo("astronaut")
    tiny = np.asarray(Image.fromarray(astronaut).resize((24, 24)))
    whole = ("0", "0", "2000", "2000")          # a box around the whole photo: the dataset marks no one face
    cases = [
        Case("astronaut", lambda: encode(astronaut, quality=95), box=whole),
        Case("astronaut_exif", lambda: exif_rotated(astronaut, 6), reason="exif_orientation", box=whole),
        Case("grace", lambda: encode(real_photo("grace_hopper"), quality=95), box=whole, split="test"),
        Case("group_of_six", lambda: encode(real_photo("t1"), quality=95), box=whole),
        Case("coffee", lambda: encode(real_photo("coffee"), quality=95), "detect", "no_face"),
        Case("tiny_face", lambda: encode(tiny, quality=95), "detect", "no_face"),
    ]
    exp = build_corpus(tmp_path / "raw", cases)
    reports = run_all(tmp_path / "raw", tmp_path / "out", stage_params(tmp_path, backend="embedded"))
    assert Counter(reports["detect"]["dropped"]) == exp.detect_dropped
    align = reports["align"]
    assert align["kept"] == exp.kept == 4 and not align["dropped"]
    assert align["notes"]["converted"] == {"exif_orientation": 1}
    assert align["notes"]["faces"] == {"several_faces_one_kept": 1}
    samples = dict(iter_dir_samples(tmp_path / "out" / "aligned", "aligned"))
    assert json.loads(samples["train_1_group_of_six"]["json"])["num_faces"] == 6
    upright, rotated = (decode_jpeg_rgb(samples[k]["jpg"]) for k in ("train_1_astronaut", "train_1_astronaut_exif"))
    assert np.abs(upright.astype(int) - rotated).mean() < 6
    lmk = [np.load(io.BytesIO(samples[k]["lmk.npy"])) for k in ("train_1_astronaut", "train_1_astronaut_exif")]
    assert np.abs(lmk[0] - lmk[1]).mean() < 1.5


HUGE_CHILD = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    import cv2, numpy as np
    from skimage import data
    from tests.reliability.corpus import Case, build_corpus, run_all, stage_params, encode
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    warm = Path(sys.argv[3])
    face = dict(data=lambda: encode(data.astronaut(), quality=90), box=("128", "26", "154", "179"))
    build_corpus(warm, [Case("warm", **face), Case("warm", split="test", **face)])
    run_all(warm, out / "warm", stage_params(out / "warm", backend="embedded"))     # models loaded
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reports = run_all(root, out / "huge", stage_params(out / "huge", backend="embedded"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"base_mb": base / 1024, "peak_mb": peak / 1024, "align": reports["align"]}))
""")

MAKE_HUGE = textwrap.dedent("""
    import sys, cv2
    from skimage import data
    big = cv2.resize(data.astronaut()[..., ::-1], (10000, 10000), interpolation=cv2.INTER_LINEAR)
    cv2.imwrite(sys.argv[1], big, [cv2.IMWRITE_JPEG_QUALITY, 80])
""")


def test_huge_image_is_decoded_reduced_in_bounded_memory(tmp_path):
    """A 10k x 10k photo: the face is found and aligned; decoding it adds a bounded amount of memory (< 600 MB)."""
    cases = [Case("huge", None, box=("2500", "500", "3000", "3500")),    # the astronaut's face, x 19.5
             Case("astronaut", lambda: encode(real_photo("astronaut"), quality=90), split="test",
                  box=("128", "26", "154", "179"))]
    build_corpus(tmp_path / "raw", cases)
    huge = tmp_path / "raw" / "Manually_Annotated_Images" / cases[0].path()
    huge.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", MAKE_HUGE, str(huge)], check=True, env=child_env(), timeout=120)
    proc = subprocess.run([sys.executable, "-c", HUGE_CHILD, str(tmp_path / "raw"), str(tmp_path / "out"),
                           str(tmp_path / "warm")], capture_output=True, text=True, env=child_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["align"]["kept"] == 2
    assert result["align"]["notes"]["converted"] == {"downscaled_2x": 1}
    # The growth the huge image causes is what must stay bounded; the absolute RSS depends on
    # what else the interpreter has loaded (torch build, BLAS threads) and is not asserted.
    assert result["peak_mb"] - result["base_mb"] < 600, result


def test_an_image_replaced_after_detect_is_dropped_by_align_not_cropped(tmp_path):
    """Bug guarded: align dropped the check that the image on disk is the one detect hashed: an image
    replaced after detection was cropped with another picture's face geometry. Its record must be
    dropped as ``source_changed`` (counted, listed in dropped.jsonl), the others kept."""
    from ferdata.layout import read_faces
    from ferdata.stages.align import run_align

    root, out = tmp_path / "raw", tmp_path / "out"
    build_corpus(root, [Case(f"good_{i}", jpeg_of(600 + i), label=str(i)) for i in range(3)]
                 + [Case("good_test", jpeg_of(610), split="test")])
    params = stage_params(tmp_path)
    opened = open_reader("affectnet", root, {"protocol": "affectnet8"})
    run_detect(opened.read(), params["detect"], out / "detect", opened.official_splits())
    keys = {Path(r["record"]["path"]).name: r["record"]["key"] for r in read_faces(out / "detect")}
    replaced = root / "Manually_Annotated_Images" / "1" / "good_1.jpg"
    assert len(keys) == 4 and replaced.is_file()
    replaced.write_bytes(encode(picture(620), quality=90))          # another picture under the same name
    report = run_align(out / "detect", params["align"], out / "aligned").to_dict()
    assert (report["kept"], report["dropped"]) == (3, {"source_changed": 1})
    dropped = [json.loads(line) for line in (out / "aligned" / "dropped.jsonl").read_text().splitlines()]
    assert [(d["key"], d["reason"]) for d in dropped] == [(keys["good_1.jpg"], "source_changed")]
    kept = {key for key, _ in iter_dir_samples(out / "aligned", "aligned")}
    assert kept == set(keys.values()) - {keys["good_1.jpg"]}


@pytest.mark.parametrize("message, damaged", [
    ("Corrupt JPEG data: 8 extraneous bytes before marker 0xd9", False),     # TRAILING_JUNK: up to 8 is junk
    ("Corrupt JPEG data: 9 extraneous bytes before marker 0xd9", True),
    ("Corrupt JPEG data: 1 extraneous bytes before marker 0xd0", True),      # RST0
    ("Corrupt JPEG data: 1 extraneous bytes before marker 0xd7", True),      # RST7
    ("Corrupt JPEG data: 1 extraneous bytes before marker 0xda", True),      # SOS
    ("Premature end of JPEG file", True)])
def test_damage_rule_boundaries(message, damaged):
    assert bool(_damage(message)) is damaged


def test_more_than_eight_bytes_before_the_end_marker_is_damage():
    sound = encode(picture(39), quality=92)
    assert jpeg_damage(sound[:-2] + bytes(8) + sound[-2:]) == ""
    assert jpeg_damage(sound[:-2] + bytes(9) + sound[-2:]).startswith("Corrupt JPEG data: 9 extraneous bytes")


def test_a_strict_decoder_failure_other_than_damage_falls_back_to_opencv(monkeypatch):
    import ferdata.io as fio

    data = encode(picture(39), quality=92)
    want = decode_image(data).rgb

    class Broken:
        @staticmethod
        def decode_jpeg(*args, **kwargs):
            raise RuntimeError("unsupported by this build")

    monkeypatch.setattr(fio, "_simplejpeg", lambda: Broken)
    got = decode_image(data)
    assert np.array_equal(got.rgb, want) and got.damage == "" and got.conversions == ()


def test_a_webp_missing_its_last_bytes_is_truncated():
    data = encode(picture(44), "WEBP")
    with pytest.raises(BadImage) as e:
        decode_image(data[:-4])
    assert e.value.reason == "truncated"


def _exif6() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return exif.tobytes()                                             # b"Exif\0\0" + the TIFF block


def _raw_profile(kind: bytes) -> bytes:
    """ImageMagick's raw EXIF profile (tEXt, or zTXt compressed) with orientation 6."""
    blob = _exif6()
    text = f"\nexif\n{len(blob):8d}\n{blob.hex()}\n".encode()
    body = zlib.compress(text) if kind == b"zTXt" else text
    return _png_chunk(kind, b"Raw profile type exif\0" + (b"\0" if kind == b"zTXt" else b"") + body)


@pytest.mark.parametrize("kind", [b"tEXt", b"zTXt"])
def test_a_raw_exif_profile_after_a_pngs_image_data_turns_it(kind):
    """PIL's getexif() also reads ImageMagick's raw profile (text or compressed text): it moves too."""
    rgb = np.ascontiguousarray(real_photo("astronaut")[:60, :40])
    data = _before_iend(encode(rgb, "PNG"), _raw_profile(kind))
    assert probe_image(data).shape == (40, 60)
    got = decode_image(data)
    assert np.array_equal(got.rgb, np.rot90(rgb, -1)) and "exif_orientation" in got.conversions


@pytest.mark.parametrize("bad", ["bad_crc_profile", "huge_comment"])
def test_a_chunk_pil_refuses_after_the_image_data_does_not_cost_the_orientation_beside_it(bad):
    """Only an intact orientation chunk moves: a damaged one (bad CRC) or a comment PIL refuses before
    the image data (a zTXt that inflates past 1 MB) moved with it made PIL refuse the moved header,
    and the file was read as stored, its good eXIf unseen."""
    rgb = np.ascontiguousarray(real_photo("astronaut")[:60, :40])
    other = {"bad_crc_profile": _raw_profile(b"tEXt")[:-4] + bytes(4),
             "huge_comment": _png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"a" * 2_000_000))}[bad]
    good = _png_chunk(b"eXIf", _exif6().removeprefix(b"Exif\0\0"))
    data = _before_iend(encode(rgb, "PNG"), other + good)
    assert np.array_equal(decode_image(data).rgb, np.rot90(rgb, -1))


def test_an_empty_trusted_image_is_a_bad_image_not_an_opencv_assertion():
    with pytest.raises(BadImage, match="empty_file"):
        decode_jpeg_rgb(b"")
