"""Inference for users: the same detect -> align -> derive -> decode path as the shards (checked
bit for bit against the stages, a large face's reduced decode included), several faces per image,
no face, videos, CSV/JSON, the CLI."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ferdata.cli import app
from ferdata.geometry import align_face, crop_reduction
from ferdata.io import decode_jpeg_rgb, decode_rgb, encode_jpeg
from ferdata.layout import read_faces
from ferdata.params import load_params
from ferdata.records import FaceRecord
from ferdata.crop import checked_points
from ferdata.stages.align import AlignParams, run_align
from ferdata.stages.derive import DeriveParams, run_derive
from ferdata.stages.detect import DetectParams, run_detect
from ferdata.stages.shard import ShardParams, run_shard
from ferdata.tario import iter_tar_samples
from fermodels.data import split_decoder
from fermodels.indexed import IndexedSplit, indexed_loader, read_member
import fermodels.predict
import fermodels.predictor
from fermodels.predict import (annotation_names, annotation_path, check_annotations, expand_inputs,
                               is_annotated_copy, iter_frames, predict_files, run_predict)
from fermodels.predictor import Picture, Predictor, choose_backend
from fermodels.runstate import load_checkpoint
from fermodels.scoring import predict_loader
from fermodels.shardsplit import open_split

from tests.fermodels.helpers import REPO, stage_params, make_params


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    from skimage import data

    d = tmp_path_factory.mktemp("photos")
    face = data.astronaut()
    cv2.imwrite(str(d / "astronaut.jpg"), face[..., ::-1])
    cv2.imwrite(str(d / "two.jpg"), np.concatenate([face, face[:, ::-1]], 1)[..., ::-1])
    cv2.imwrite(str(d / "noise.png"), np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8))
    video = cv2.VideoWriter(str(d / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (512, 512))
    for _ in range(5):
        video.write(face[..., ::-1].copy())
    video.release()
    return d


@pytest.fixture(scope="module")
def predictor(tiny_run) -> Predictor:
    # tiny_run trained on annotations; the crops here are compared with the embedded backend's align stage
    return Predictor(tiny_run["ckpt"] / "best.pt", backend="embedded", device="cpu", keypoints="detector")


def test_same_sample_as_the_shard_stages(photos, predictor, tmp_path, one_thread):
    params = load_params(REPO / "params.yaml")
    rec = FaceRecord(dataset="photos", key="astronaut", path=str(photos / "astronaut.jpg"), label=1,
                     native_label="happy", split="test")
    run_detect([rec], stage_params(DetectParams, params["detect"], backend="embedded", workers=1,
                             cache_dir=str(tmp_path / "cache")), tmp_path / "detect")
    run_align(tmp_path / "detect", stage_params(AlignParams, params["align"], workers=1), tmp_path / "aligned")
    run_derive(tmp_path / "aligned", stage_params(DeriveParams, params["derive"], workers=1), tmp_path / "derived")
    run_shard(tmp_path / "aligned", tmp_path / "derived", stage_params(ShardParams, params["shard"]),
              tmp_path / "shards")
    card = predictor.card
    shards = [tmp_path / "shards"]
    split = open_split(shards, "test")
    assert split.face_backends == {"embedded": 1}               # _info.json counts who found the faces
    data = IndexedSplit(split, split_decoder(card, split, predictor.device), 7)
    _, from_shards, _ = predict_loader(predictor.model, indexed_loader(data, [0], 1, 0), card, predictor.device,
                                       flip_tta=False)
    image = cv2.imread(str(photos / "astronaut.jpg"))[..., ::-1].copy()
    faces, dropped = predictor.faces(image, "astronaut.jpg")
    assert len(faces) == 1 and dropped == 0
    member = data.members[0]
    assert faces[0].fields["jpg"] == read_member(member["jpg"]), "aligned face differs from the align stage's"
    assert np.array_equal(predictor.probabilities(faces), from_shards)
    conv = next(p for p in predictor.model.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)          # evaluate's layout, the faster one


def large_face_photo(faces: int = 1) -> np.ndarray:
    """The astronaut upscaled 4x (her face then decodes at 1/4 in the align stage) with fine
    per-pixel texture, which a one-step bilinear shrink aliases; ``faces=2`` adds a mirrored copy."""
    from skimage.data import astronaut

    big = cv2.resize(astronaut(), None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    texture = np.random.default_rng(0).integers(-16, 17, big.shape)
    big = np.clip(big + texture, 0, 255).astype(np.uint8)
    return big if faces == 1 else np.concatenate([big, big[:, ::-1]], 1)


@pytest.fixture(scope="module")
def large_face(tmp_path_factory) -> dict:
    """The large-face JPEG run through the real detect and align stages: its path, the detect
    table's row and the align stage's aligned JPEG."""
    d = tmp_path_factory.mktemp("large")
    path = d / "large.jpg"
    cv2.imwrite(str(path), large_face_photo()[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    params = load_params(REPO / "params.yaml")
    rec = FaceRecord(dataset="photos", key="large", path=str(path), label=1, native_label="happy", split="test")
    run_detect([rec], stage_params(DetectParams, params["detect"], backend="embedded", workers=1,
                                   cache_dir=str(d / "cache")), d / "detect")
    run_align(d / "detect", stage_params(AlignParams, params["align"], workers=1), d / "aligned")
    (row,) = read_faces(d / "detect")
    ((_, fields),) = [s for tar in sorted((d / "aligned").glob("aligned-*.tar")) for s in iter_tar_samples(tar)]
    return {"path": path, "row": row, "jpg": fields["jpg"], "align": params["align"]}


def test_large_face_crop_is_the_align_stages_byte_for_byte(large_face, predictor, one_thread):
    """A face 4x the crop's resolution: the align stage warps it from the JPEG decoded at 1/4
    (libjpeg's low-pass); predict must too, not shrink the full-size pixels in one aliasing warp."""
    face, align = large_face["row"]["face"], large_face["align"]
    assert crop_reduction(np.asarray(face["kps5"]), align["size"], align["padding"]) == 4
    ((_, picture, _),) = iter_frames(large_face["path"], 1)
    faces, dropped = predictor.faces(picture, str(large_face["path"]))
    assert len(faces) == 1 and dropped == 0
    assert list(faces[0].box) == face["box"], "not the detect stage's detection"
    assert faces[0].fields["jpg"] == large_face["jpg"], "aligned face differs from the align stage's"


def test_large_face_in_a_video_frame_is_low_passed_like_the_reduced_decode(large_face, predictor, one_thread):
    """A frame has no file bytes to decode reduced; its block-mean copy gives a sample (the crop's
    JPEG, decoded) within about a grey level of the align stage's (measured 1.18 mean abs diff;
    0.46 before JPEG encoding), 4x closer than one warp of the full-size frame (4.68; 4.29 before
    encoding), which aliases the fine texture."""
    face, align = large_face["row"]["face"], large_face["align"]
    full = decode_rgb(large_face["path"].read_bytes())
    faces, dropped = predictor.faces(full, str(large_face["path"]))
    assert len(faces) == 1 and dropped == 0
    trained = decode_jpeg_rgb(large_face["jpg"]).astype(np.float64)
    frame_crop = decode_jpeg_rgb(faces[0].fields["jpg"])
    unreduced = align_face(full, checked_points(face, full.shape)[0], align["size"], align["padding"]).image
    unreduced = decode_jpeg_rgb(encode_jpeg(unreduced, align["jpeg_quality"]))
    new, old = (float(np.abs(c - trained).mean()) for c in (frame_crop, unreduced))
    assert new < 2.0 and old > 3 * new, (new, old)


@pytest.mark.parametrize("ext", [".png", ".tif", ".webp"])
def test_a_file_that_decodes_only_whole_is_decoded_once_and_reduced_as_the_align_stage_reduces_it(
        ext, predictor, monkeypatch, one_thread):
    """A large face in a PNG (TIFF, WebP) needs the picture at 1/4: the align stage's decode_image(data, 4) decodes
    it whole and takes block means, so predict takes them of its whole decode, not decoding the file again."""
    _, buf = cv2.imencode(ext, large_face_photo()[..., ::-1], [cv2.IMWRITE_WEBP_QUALITY, 101] if ext == ".webp" else [])
    data = buf.tobytes()
    want = fermodels.predictor.decode_image(data, 4)
    decode, reduce = fermodels.predictor.decode_image, fermodels.predictor.block_mean
    calls = []
    monkeypatch.setattr(fermodels.predictor, "decode_image",
                        lambda data, r=1: calls.append(("decode", r)) or decode(data, r))
    monkeypatch.setattr(fermodels.predictor, "block_mean", lambda rgb, r: calls.append(("mean", r)) or reduce(rgb, r))
    picture = Picture.from_file(data)
    faces, _ = predictor.faces(picture, "large" + ext)
    assert len(faces) == 1 and calls == [("decode", 1), ("mean", 4)]
    got = picture.reduced(4)
    assert np.array_equal(got.rgb, want.rgb) and (got.scale, got.conversions, got.damage) == (
        want.scale, want.conversions, want.damage)


def test_each_reduction_is_decoded_once_per_picture(predictor, monkeypatch, one_thread):
    """Two large faces of one image need one decode at 1/4 between them (and a frame one block mean)."""
    _, buf = cv2.imencode(".jpg", large_face_photo(faces=2)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    decode, reduce = fermodels.predictor.decode_image, fermodels.predictor.block_mean   # ferdata.io's, as seen there
    calls = []
    monkeypatch.setattr(fermodels.predictor, "decode_image",
                        lambda data, r=1: calls.append(("decode", r)) or decode(data, r))
    monkeypatch.setattr(fermodels.predictor, "block_mean", lambda rgb, r: calls.append(("mean", r)) or reduce(rgb, r))
    picture = Picture.from_file(buf.tobytes())
    faces, _ = predictor.faces(picture, "two.jpg")
    assert len(faces) == 2 and calls == [("decode", 1), ("decode", 4)]
    calls.clear()
    faces, _ = predictor.faces(picture.rgb, "two.avi", 3)
    assert len(faces) == 2 and calls == [("mean", 4)]


def test_a_model_that_reads_no_derived_field_gets_none_made_and_the_same_input(photos, predictor, monkeypatch,
                                                                               one_thread):
    """Halves, heatmap and regions are made only for a model that reads them: an image-only model's batch and
    probabilities are those of the faces with every derived field made (derive was 2-4% of predict's time)."""
    assert set(predictor.card.fields) == {"image"}
    picture = Picture.from_file((photos / "two.jpg").read_bytes())
    real, calls = predictor.derive, []
    monkeypatch.setattr(predictor, "derive", lambda sample: calls.append(sample[0]) or real(sample))
    lean, _ = predictor.faces(picture, "two.jpg")
    assert len(lean) == 2 and calls == []
    monkeypatch.setattr(predictor, "derived", True)
    full, _ = predictor.faces(picture, "two.jpg")
    assert len(calls) == 2 and "left.jpg" in full[0].fields
    batches = [predictor.decoder.collate([{"__key__": f"f{i}", **f.fields} for i, f in enumerate(faces)])
               for faces in (lean, full)]
    assert batches[0].keys() == batches[1].keys()
    assert all(torch.equal(batches[0][k], batches[1][k]) for k in batches[0] if torch.is_tensor(batches[0][k]))
    assert np.array_equal(predictor.probabilities(lean), predictor.probabilities(full))


def test_faces_per_image_video_frames_and_rows(photos, predictor, one_thread):
    paths = [photos / n for n in ("astronaut.jpg", "two.jpg", "noise.png", "clip.avi")]
    rows, summary = run_predict(predictor, paths, batch_size=2, every=2)
    counts = {(Path(s["source"]).name, s["frame"]): s["faces"] for s in summary}
    assert counts == {("astronaut.jpg", 0): 1, ("two.jpg", 0): 2, ("noise.png", 0): 0,
                      ("clip.avi", 0): 1, ("clip.avi", 2): 1, ("clip.avi", 4): 1}
    assert len(rows) == 6
    for r in rows:
        probs = [r[c] for c in predictor.classes]
        assert abs(sum(probs) - 1) < 1e-4 and r["expression"] == predictor.classes[int(np.argmax(probs))]
    two = [r for r in rows if r["source"].endswith("two.jpg")]
    assert two[0]["box"][0] < 512 <= two[1]["box"][0] or two[1]["box"][0] < 512 <= two[0]["box"][0]


def test_cli_writes_csv_json_and_annotations(photos, tiny_run, tmp_path, one_thread):
    runner = CliRunner()
    ckpt = str(tiny_run["ckpt"] / "best.pt")
    res = runner.invoke(app, ["predict", str(photos / "astronaut.jpg"), str(photos / "noise.png"), "--model", ckpt,
                              "--backend", "embedded", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    table = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(table) == 1 and table[0]["expression"] in table[0]
    assert f"1 without a face: {photos / 'noise.png'}" in res.stderr          # a CSV has no row for it
    res = runner.invoke(app, ["predict", str(photos), "-m", ckpt, "--backend", "embedded", "--device", "cpu",
                              "-o", str(tmp_path / "out.json"), "--annotate", str(tmp_path / "ann"), "--every", "5",
                              "--keypoints", "detector"])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "out.json").read_text())
    assert len(out["faces"]) == 1 + 2 + 1 and len(out["images"]) == 4
    assert out["scoring"] == {"grey": False, "flip_tta": False, "backend": "embedded",     # what no CSV row says
                              "keypoints": "detector"}
    assert {p.name for p in (tmp_path / "ann").iterdir()} == {"astronaut.jpg", "two.jpg", "clip.avi.f000000.jpg"}
    assert runner.invoke(app, ["predict", str(tmp_path / "missing.jpg"), "-m", ckpt]).exit_code != 0


def test_cli_names_what_it_could_not_read_and_keeps_every_annotation(photos, tiny_run, tmp_path, one_thread):
    """An unreadable file is named with its reason (not counted as an image without a face), and
    same-named images in different folders, or differing only in extension, get one copy each."""
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    face = (photos / "astronaut.jpg").read_bytes()
    for rel in ("face.jpg", "sub/face.jpg"):
        (inputs / rel).write_bytes(face)
    cv2.imwrite(str(inputs / "face.png"), cv2.imread(str(photos / "astronaut.jpg")))
    (inputs / "broken.jpg").write_bytes(b"%PDF-1.4 not a picture")
    res = CliRunner().invoke(app, ["predict", str(inputs), "-m", str(tiny_run["ckpt"] / "best.pt"),
                                   "--backend", "embedded", "--device", "cpu", "--annotate", str(tmp_path / "ann")])
    assert res.exit_code == 0, res.output
    assert len(list(csv.DictReader(io.StringIO(res.stdout)))) == 3
    assert "3 face(s) in 3 image(s)/frame(s); 0 without a face; 1 not read: " in res.stderr
    assert f"{inputs / 'broken.jpg'} (not_an_image)" in res.stderr
    written = sorted(str(p.relative_to(tmp_path / "ann")) for p in (tmp_path / "ann").rglob("*.jpg"))
    assert written == ["face.jpg", "face.png.jpg", "sub/face.jpg"]


def test_file_names_that_are_not_utf8_are_scored_written_and_annotated(photos, tiny_run, tmp_path, one_thread):
    """A Latin-1 name (``café.jpg`` as bytes) is read, named in the CSV as its own bytes, and
    gets its annotated copy (cv2 could not write such a name; the CSV could not encode it)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    name = os.fsdecode(b"caf\xe9.jpg")
    (inputs / name).write_bytes((photos / "astronaut.jpg").read_bytes())
    results = fermodels.predict.predict_files([inputs], tiny_run["ckpt"] / "best.pt", out=tmp_path / "out.csv",
                                              annotate=tmp_path / "ann", backend="embedded", device="cpu")
    assert b"caf\xe9.jpg" in (tmp_path / "out.csv").read_bytes()
    assert len(results.rows) == len(list(csv.DictReader(io.StringIO((tmp_path / "out.csv").read_text(
        errors="surrogateescape"))))) == 1
    assert os.listdir(os.fsencode(tmp_path / "ann")) == [b"caf\xe9.jpg"]
    res = CliRunner().invoke(app, ["predict", str(inputs), "-m", str(tiny_run["ckpt"] / "best.pt"),
                                   "--backend", "embedded", "--device", "cpu"])        # CSV on stdout
    assert res.exit_code == 0, res.output
    assert res.stdout_bytes.splitlines()[1].startswith(os.fsencode(inputs) + b"/caf\xe9.jpg,")


def test_a_json_output_lists_what_the_input_folders_held_that_was_not_read(tiny_run, tmp_path, one_thread):
    """A folder's other files (an iPhone's .HEIC, notes), hidden ones and linked folders not followed were only
    counted in warnings naming one of each: a .json, which accounts for every picture, lists each with why."""
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / ".thumbs").mkdir()
    cv2.imwrite(str(photos / "a.jpg"), np.full((64, 64, 3), 128, np.uint8))
    for name in ("IMG_0001.HEIC", "notes.txt", "._a.jpg"):
        (photos / name).write_bytes(b"x")
    (photos / "sub" / "up").symlink_to(photos)
    out = tmp_path / "p.json"
    fermodels.predict.predict_files([photos], tiny_run["ckpt"] / "best.pt", out=out, backend="precropped",
                                    device="cpu")
    listed = json.loads(out.read_text())
    assert [i["source"] for i in listed["images"]] == [str(photos / "a.jpg")]
    assert sorted((Path(s["source"]).relative_to(photos).as_posix(), s["reason"]) for s in listed["skipped"]) == [
        ("._a.jpg", "hidden"), (".thumbs", "hidden"), ("IMG_0001.HEIC", "heic_unsupported"),
        ("notes.txt", "not_image_or_video"), ("sub/up", "linked_folder_not_followed")]


def test_a_folder_without_pictures_is_an_error_not_an_empty_result(tmp_path):
    """It printed a CSV header and '0 face(s) in 0 image(s)', exit 0: a wrong folder looked like a result."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no pictures here")
    for folder in ("empty", "notes"):
        with pytest.raises(FileNotFoundError, match=f"{tmp_path / folder}: no images .* or videos"):
            expand_inputs([tmp_path / folder])


def test_annotation_names_are_unique_below_the_inputs_common_folder(tmp_path):
    for rel in ("a/x.jpg", "b/x.jpg", "a/x.png", "a/y.JPEG", "a/deep/clip.mp4"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    files = [tmp_path / "a/x.jpg", tmp_path / "b/x.jpg"]
    assert annotation_names(files, files) == {files[0]: Path("a/x.jpg"), files[1]: Path("b/x.jpg")}
    folder = tmp_path / "a"
    paths = expand_inputs([folder])
    assert expand_inputs([folder, folder / "x.png", tmp_path / "b/x.jpg"]) == [*paths, tmp_path / "b/x.jpg"]
    assert {str(v) for v in annotation_names([folder], paths).values()} == {
        "x.jpg", "x.png.jpg", "y.JPEG", "deep/clip.mp4.jpg"}
    (folder / "link.jpg").symlink_to(tmp_path / "b/x.jpg")          # a link leaving the folder keeps its name
    assert annotation_names([folder], [folder / "link.jpg"]) == {folder / "link.jpg": Path("link.jpg")}
    assert annotation_path(Path("deep/clip.mp4.jpg"), 30, video=True) == Path("deep/clip.mp4.f000030.jpg")
    assert annotation_path(Path("x.jpg"), 0, video=False) == Path("x.jpg")
    (folder / "x.png.jpg").write_bytes(b"")      # a JPEG holding the name x.png's copy would take
    (folder / "x.png-2.jpg").write_bytes(b"")
    names = annotation_names([folder], expand_inputs([folder]))
    assert len(set(names.values())) == len(names) == 7                # with link.jpg
    assert {str(names[folder / n]) for n in ("x.png.jpg", "x.png-2.jpg", "x.png")} == {
        "x.png.jpg", "x.png-2.jpg", "x.png-3.jpg"}


@pytest.mark.parametrize("clip", ["clip", "two\nlines"])
def test_a_video_frames_copies_never_take_a_jpeg_inputs_copy_name(tmp_path, clip):
    """clip.avi beside a photo named clip.avi.f000000.jpg: frame 0's copy replaced the photo's (a name
    with a newline too: the frame-copy pattern did not match across it)."""
    for name in (f"{clip}.avi", f"{clip}.avi.f000000.jpg", f"{clip}.avi.f1000000.jpg", "other.mp4",
                 "other.mp4-2.jpg"):
        (tmp_path / name).write_bytes(b"")
    paths = expand_inputs([tmp_path])
    names = annotation_names([tmp_path], paths)
    videos = [p for p in paths if p.suffix in (".avi", ".mp4")]
    frames = {annotation_path(names[v], f, video=True) for v in videos for f in (0, 10, 1_000_000)}
    copies = {annotation_path(names[p], 0, video=False) for p in paths if p not in videos}
    assert not frames & copies, sorted(frames & copies)
    assert str(names[tmp_path / f"{clip}.avi"]) == f"{clip}.avi-2.jpg"
    assert str(names[tmp_path / "other.mp4"]) == "other.mp4.jpg"              # no JPEG named as its frames


def test_checkpoint_without_preprocessing_is_refused(tiny_shards, tmp_path, one_thread):
    """Shards of a version that did not record their align/derive settings, trained without them."""
    import shutil

    from fermodels.train import train

    old = shutil.copytree(tiny_shards, tmp_path / "tiny")
    for info_path in old.glob("*/_info.json"):
        info = json.loads(info_path.read_text())
        del info["preprocess"]
        info_path.write_text(json.dumps(info))
    train(old, make_params(epochs=1), tmp_path / "ckpt", tmp_path / "live")
    with pytest.raises(ValueError, match="preprocessing"):
        Predictor(tmp_path / "ckpt" / "best.pt", backend="embedded")


def test_checkpoints_record_the_settings_the_shards_were_made_with(tiny_shards, preprocess, tmp_path, caplog,
                                                                   one_thread):
    """Shards prepared with another params file (``ferdata prepare --params exp.yaml``) than the
    params.yaml training reads: inference must crop as the shards were cropped."""
    from fermodels.train import train

    info = json.loads((tiny_shards / "train" / "_info.json").read_text())
    assert info["preprocess"] == preprocess                       # made with params.yaml's settings
    other = {"align": {**preprocess["align"], "padding": 0.25}, "derive": preprocess["derive"]}
    train(tiny_shards, make_params(epochs=1), tmp_path / "ckpt", tmp_path / "live", other)
    assert load_checkpoint(tmp_path / "ckpt" / "best.pt")["preprocess"] == preprocess
    assert "not the ones the shards were made with" in caplog.text


def test_checkpoints_record_which_backend_found_the_training_faces(tiny_run):
    state = load_checkpoint(tiny_run["ckpt"] / "best.pt")
    train_samples = open_split([tiny_run["shards"]], "train").num_samples
    assert state["data"]["face_backends"] == {"annotations": train_samples}   # tiny_shards: annotations backend


def test_predict_finds_faces_with_the_training_detector_when_it_runs_here(monkeypatch, caplog):
    """No --backend: the detector behind most training crops (not the dataset-trusting backends,
    which find no face in a new photo); auto, with a warning, when that detector cannot run here."""
    from ferdata.faces import MissingModelError
    from ferdata.faces.insightface_backend import InsightFaceBackend

    assert choose_backend(None, {"annotations": 90, "embedded": 10}).name == "embedded"
    assert choose_backend("auto", {"embedded": 10}).name == "auto"                 # asked: as asked
    assert choose_backend(None, {"precropped": 5}).name == "auto"
    assert choose_backend(None, {}).name == "auto"                                   # older checkpoints
    assert choose_backend(None, {"unknown": 3, "no_such_backend": 1}).name == "auto"

    def missing(self):
        raise MissingModelError("insightface", "det_10g.onnx", ["/nowhere"], "install it")

    monkeypatch.setattr(InsightFaceBackend, "check_ready", missing)
    with caplog.at_level("WARNING", logger="fermodels"):
        backend = choose_backend(None, {"insightface": 10, "embedded": 2})
    assert backend.name == "embedded"                # the next detector the training faces came from
    assert "came mostly from insightface" in caplog.text and "using embedded" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="fermodels"):
        backend = choose_backend(None, {"insightface": 10, "annotations": 2})
    assert backend.name == "auto"
    assert "found by insightface: " in caplog.text and "which cannot run here; using auto" in caplog.text
    # options reach the chosen backend (each keeps what it reads): a pack the training data used
    monkeypatch.undo()
    chosen = choose_backend(None, {"embedded": 1}, {"pack": "antelopev2", "score_threshold": 0.7})
    assert chosen.name == "embedded" and chosen.options["score_threshold"] == 0.7 and "pack" not in chosen.options


def test_a_model_trained_on_a_datasets_own_crops_is_warned_that_auto_frames_new_faces_otherwise(caplog):
    """precropped training faces are framed as the dataset cut them; auto aligns new faces to the ArcFace
    template (face-box crops: the eyes 7-13 px of 112 elsewhere), so the model scores faces unlike its
    training faces: said as a warning (it was an info line, unseen through the Python API), with the fix.
    A model trained on a dataset's landmarks (annotations) was aligned to the template too: no warning."""
    with caplog.at_level("INFO", logger="fermodels"):
        assert choose_backend(None, {"precropped": 5}).name == "auto"
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "framed otherwise" in warned[0].getMessage()
    assert "--backend precropped" in warned[0].getMessage()
    caplog.clear()
    with caplog.at_level("INFO", logger="fermodels"):
        assert choose_backend(None, {"annotations": 5}).name == "auto"
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_a_model_trained_on_dataset_landmarks_aligns_new_faces_by_their_68_landmarks(photos, tiny_run, one_thread):
    """The annotations backend aligns a training face by five_from_68 of the dataset's 68 points; predict found
    new faces with auto (embedded) and aligned them by RetinaFace's 5 keypoints, which sit elsewhere (the
    astronaut's mouth corners 6 px of 112 outside the template's; the sample's held-out faces scored 64% where
    evaluate scored the same pictures 83%). New faces are aligned by their 68 landmarks' five points now."""
    from ferdata.geometry import five_from_68, similarity_matrix, template

    def fit_in_crop(sample) -> np.ndarray:
        """The similarity taking the crop's five_from_68 points to the template: the identity when the face
        was aligned by them, as the annotations backend aligned every training face."""
        return similarity_matrix(five_from_68(np.load(io.BytesIO(sample.fields["lmk.npy"]))), template(112))

    identity = np.eye(2, 3)
    predictor = Predictor(tiny_run["ckpt"] / "best.pt", device="cpu")            # its training faces: annotations
    assert predictor.keypoints == "landmarks"
    image = cv2.imread(str(photos / "astronaut.jpg"))[..., ::-1].copy()
    (face,), _ = predictor.faces(image, "astronaut.jpg")
    assert np.abs(fit_in_crop(face) - identity).max() < 0.01
    detector = Predictor(tiny_run["ckpt"] / "best.pt", device="cpu", keypoints="detector")
    (other,), _ = detector.faces(image, "astronaut.jpg")
    assert np.abs(fit_in_crop(other) - identity)[:, 2].max() > 1                 # a pixel or more off


def test_faces_without_68_landmarks_fall_back_to_the_keypoints_with_one_warning(photos, tiny_run, monkeypatch,
                                                                              caplog, one_thread):
    """A model trained on dataset landmarks, served by a backend that gives no 68 landmarks: its faces are aligned
    by the backend's 5 keypoints, said once, not face by face, and not silently."""
    from dataclasses import replace

    predictor = Predictor(tiny_run["ckpt"] / "best.pt", backend="embedded", device="cpu", keypoints="landmarks")
    detect = predictor.backend.detect
    monkeypatch.setattr(predictor.backend, "detect", lambda image, record: [replace(f, lmk68=None)
                                                                            for f in detect(image, record)])
    image = cv2.imread(str(photos / "astronaut.jpg"))[..., ::-1].copy()
    with caplog.at_level("WARNING"):
        for _ in range(2):
            predictor.faces(image, "astronaut.jpg")
    told = [r for r in caplog.records if "gives no 68 landmarks: faces are aligned by its 5 keypoints" in r.message]
    assert len(told) == 1


def test_landmarks_of_another_face_are_refused_when_they_align_the_face(photos, tiny_run, monkeypatch, one_thread):
    """--keypoints landmarks aligned a face by its 68 landmarks' five points after replacing the detector's
    keypoints by them, so the align stage's check that the 68 are this face's (MAX_LANDMARK_GAP) compared
    them with themselves: a dlib fit to a neighbour face or a misplaced box was scored, not skipped."""
    from dataclasses import replace

    image = cv2.imread(str(photos / "astronaut.jpg"))[..., ::-1].copy()
    for keypoints in ("detector", "landmarks"):
        predictor = Predictor(tiny_run["ckpt"] / "best.pt", backend="embedded", device="cpu", keypoints=keypoints)
        detect = predictor.backend.detect
        monkeypatch.setattr(predictor.backend, "detect", lambda im, rec, d=detect: [
            replace(f, lmk68=f.lmk68 + np.float32([110, 40])) for f in d(im, rec)])   # a face's width away
        faces, dropped = predictor.faces(image, "astronaut.jpg")
        assert (len(faces), dropped) == (0, 1), keypoints


def test_cli_passes_backend_options(photos, tiny_run, monkeypatch, one_thread):
    seen = {}
    real = fermodels.predictor.choose_backend

    def spy(asked, trained, options=None, model_dir=None, trained_options=None, allow_download=False):
        seen["options"], seen["allow_download"] = options, allow_download
        return real(asked, trained, options, model_dir, trained_options, allow_download)

    monkeypatch.setattr(fermodels.predictor, "choose_backend", spy)
    args = ["predict", str(photos / "astronaut.jpg"), "-m", str(tiny_run["ckpt"] / "best.pt"), "--backend", "embedded",
            "--device", "cpu", "--backend-option", "det_size=320", "--backend-option", "score_threshold=0.8"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert seen == {"options": {"threads": 1, "det_size": 320, "score_threshold": 0.8}, "allow_download": False}
    res = CliRunner().invoke(app, args + ["--allow-download"])
    assert res.exit_code == 0, res.output
    assert seen["allow_download"] is True


def test_the_face_model_gets_torchs_threads_unless_told(tiny_run):
    """Detect workers run their face model on one thread each; predict is one process."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert Predictor(tiny_run["ckpt"] / "best.pt", backend="embedded", device="cpu").backend.options["threads"] == 2
        told = Predictor(tiny_run["ckpt"] / "best.pt", backend="embedded", device="cpu",
                         backend_options={"threads": 1})
        assert told.backend.options["threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_allow_download_lets_the_training_detector_fetch_its_weights(monkeypatch):
    """Without it a detector whose weights are missing is passed over; with it the detector is
    built to download them (asked or chosen), and only one whose package is missing is passed over."""
    from ferdata.faces import MissingModelError
    from ferdata.faces.fan import FanBackend
    from ferdata.faces.insightface_backend import InsightFaceBackend

    def missing(self):
        raise MissingModelError("insightface", "det_10g.onnx", ["/nowhere"], "install it")

    def not_installed(self):
        raise ImportError("face_alignment backend needs the package: pip install face-alignment")

    monkeypatch.setattr(InsightFaceBackend, "check_ready", missing)
    monkeypatch.setattr(FanBackend, "check_ready", not_installed)
    assert choose_backend(None, {"insightface": 10, "embedded": 2}).name == "embedded"
    chosen = choose_backend(None, {"insightface": 10, "embedded": 2}, allow_download=True)
    assert chosen.name == "insightface" and chosen.allow_download
    chosen = choose_backend(None, {"face_alignment": 10, "embedded": 2}, allow_download=True)
    assert chosen.name == "embedded"
    assert choose_backend("insightface", {}, allow_download=True).allow_download
    assert not choose_backend("insightface", {}).allow_download
    # embedded fetches nothing: its missing predictor does not make it "ready" with downloads allowed,
    # so the next detector that found training faces (and can fetch its weights) is chosen
    from ferdata.faces.embedded import EmbeddedBackend

    def no_predictor(self):
        raise MissingModelError("embedded", "shape_predictor_68_face_landmarks.dat", ["/nowhere"], "install it")

    monkeypatch.setattr(EmbeddedBackend, "check_ready", no_predictor)
    chosen = choose_backend(None, {"embedded": 300, "insightface": 100}, allow_download=True)
    assert chosen.name == "insightface" and chosen.allow_download


def test_an_option_no_backend_reads_is_refused_without_backend_too(caplog):
    """A typo in --backend-option is refused whether or not --backend is given; an option some
    candidate reads but the chosen backend does not is named in a warning."""
    with pytest.raises(ValueError, match="takes no option 'pak'"):
        choose_backend("embedded", {}, {"pak": "antelopev2"})
    with pytest.raises(ValueError, match="take no option 'pak'; their options: .*pack"):
        choose_backend(None, {"embedded": 3}, {"pak": "antelopev2"})
    with pytest.raises(ValueError, match="take no option 'pak'"):
        choose_backend(None, {}, {"pak": "antelopev2", "score_threshold": 0.7})
    with caplog.at_level("WARNING", logger="fermodels"):
        chosen = choose_backend(None, {"embedded": 3}, {"pack": "antelopev2", "score_threshold": 0.7})
    assert chosen.name == "embedded" and chosen.options["score_threshold"] == 0.7
    assert "embedded does not read option 'pack'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="fermodels"):
        choose_backend(None, {"embedded": 3}, {"score_threshold": 0.7, "threads": 1})
    assert "does not read" not in caplog.text


def test_a_video_without_frames_is_reported_not_skipped(tmp_path):
    empty = tmp_path / "empty.avi"
    cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 64)).release()
    (tmp_path / "garbage.mp4").write_bytes(b"not a video at all")
    assert [(f, im, p) for f, im, p in iter_frames(empty, 1)] == [(0, None, "no_video_frames")]
    assert [(f, im, p) for f, im, p in iter_frames(tmp_path / "garbage.mp4", 1)] == [(0, None, "unreadable_video")]


def test_a_video_cut_short_is_reported_not_read_as_if_whole(tmp_path, predictor, caplog, one_thread):
    """Its header lists 40 frames, 21 decode: the frames there were scored and the summary said
    nothing of the rest."""
    import logging

    from skimage import data

    writer = cv2.VideoWriter(str(tmp_path / "full.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (512, 512))
    for _ in range(40):
        writer.write(data.astronaut()[..., ::-1].copy())
    writer.release()
    whole = (tmp_path / "full.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(whole[: len(whole) // 2])
    assert [(i, p is not None, why) for i, p, why in iter_frames(tmp_path / "full.avi", 10)] == [
        (0, True, ""), (10, True, ""), (20, True, ""), (30, True, "")]
    with caplog.at_level(logging.WARNING):
        rows, summary = run_predict(predictor, [tmp_path / "cut.avi"], batch_size=8, every=10)
    assert len(rows) == 3                                   # the frames that were there are still scored
    assert summary[-1]["problem"] == "video_cut_short", summary
    assert "cut.avi: 21 of the 40 frames its header lists could be read" in caplog.text
    assert "skipped" not in caplog.text                     # it was scored, on the frames there


def test_a_whole_mkv_whose_duration_runs_past_its_last_frame_is_not_cut_short(tmp_path):
    """Matroska stores no frame count: OpenCV's is duration x fps, and the duration is the longest
    track's (an audio track 2 s longer, imitated by editing the Duration field)."""
    import struct

    path = tmp_path / "clip.mkv"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 64))
    for i in range(30):
        writer.write(np.full((64, 64, 3), i * 8, np.uint8))
    writer.release()
    data = bytearray(path.read_bytes())
    at = data.find(b"\x44\x89")                          # Segment Info > Duration (EBML float, ms)
    size = data[at + 2] & 0x7F
    fmt = ">d" if size == 8 else ">f"
    (duration,) = struct.unpack(fmt, data[at + 3:at + 3 + size])
    data[at + 3:at + 3 + size] = struct.pack(fmt, duration + 2000.0)
    path.write_bytes(bytes(data))
    assert cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT) > 40      # what OpenCV estimates
    assert [(i, p is not None, why) for i, p, why in iter_frames(path, 10)] == [
        (0, True, ""), (10, True, ""), (20, True, "")]


def test_a_video_whose_name_is_not_utf8_is_read_not_a_crash(tmp_path):
    """cv2.VideoCapture on a name holding surrogate escapes (a Latin-1 file name) killed the process
    (SIGSEGV): predict wrote nothing for any input. Run in a child so a crash fails the test."""
    from skimage import data

    name = os.fsdecode(b"caf\xe9.avi")
    writer = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (512, 512))
    for _ in range(6):
        writer.write(data.astronaut()[..., ::-1].copy())
    writer.release()
    os.replace(tmp_path / "clip.avi", tmp_path / name)
    code = ("import sys; from pathlib import Path; from fermodels.predict import iter_frames; "
            "print([(i, p is not None, why) for i, p, why in iter_frames(Path(sys.argv[1]), 2)])")
    run = subprocess.run([sys.executable, "-c", code, os.fsencode(tmp_path / name)], capture_output=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert run.returncode == 0, f"rc {run.returncode}: {run.stderr.decode(errors='replace')[-500:]}"
    assert run.stdout.decode().strip() == "[(0, True, ''), (2, True, ''), (4, True, '')]"
    assert [p.name for p in tmp_path.iterdir()] == [name]            # nothing left beside it


@pytest.mark.parametrize("kind", ["grey", "rgba", "float01", "uint16"])
def test_an_array_that_is_not_rgb_uint8_is_refused_with_what_a_picture_is(kind, predictor):
    """``Predictor.faces(array)``: pixels in 0..1 found no face without a word; grey, RGBA and 16-bit
    failed inside the face backend."""
    from skimage import data

    a = data.astronaut()
    array = {"grey": cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), "rgba": np.dstack([a, np.full(a.shape[:2], 255, np.uint8)]),
             "float01": a / 255.0, "uint16": a.astype(np.uint16) * 257}[kind]
    with pytest.raises(ValueError, match=r"a picture is RGB uint8 \(H, W, 3\) pixels, got "):
        predictor.faces(array, kind)
    faces, _ = predictor.faces(a[:, ::-1], "mirrored view")         # a strided RGB view is a picture
    assert len(faces) == 1


def test_precropped_is_refused_for_a_model_that_reads_landmarks(tmp_path):
    """A new picture has no landmarks for precropped to give: every face was skipped, one warning
    each, and predict exited 0."""
    from fermodels.registry import create_model
    from fermodels.runstate import Position, preprocess_record, save_checkpoint

    path = tmp_path / "heatmap.pt"
    save_checkpoint(path, model=create_model("resnet18_heatmap_112", num_classes=7),
                    params=make_params(model="resnet18_heatmap_112", model_kwargs={}), optimizer=None,
                    position=Position(0, 0, 0), best={}, data={"face_backends": {"precropped": 1}},
                    preprocess=preprocess_record(load_params(REPO / "params.yaml")))
    with pytest.raises(ValueError, match="model 'resnet18_heatmap_112' reads heatmap from 68 landmarks, which "
                                         "--backend precropped cannot give a new image"):
        Predictor(path, backend="precropped", device="cpu")
    assert Predictor(path, device="cpu").backend.name != "precropped"      # found, as the README says


def test_a_missing_checkpoint_is_told_before_the_inputs_are_walked(tmp_path, caplog):
    """`--model` misspelt: the whole input folder was walked (minutes on a network share) and its skipped
    files warned of before the checkpoint was found missing."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "notes.txt").write_text("x")
    (photos / "a.jpg").write_bytes(b"")
    for model, error in ((tmp_path / "no.pt", FileNotFoundError), (tmp_path, IsADirectoryError)):
        caplog.clear()
        with caplog.at_level("WARNING"), pytest.raises(error, match=f"checkpoint {model} (not found|is a folder)"):
            fermodels.predict.predict_files([photos], model, out=tmp_path / "p.json")
        assert not caplog.records, caplog.text


def test_an_output_that_is_neither_csv_nor_json_is_refused_first(tmp_path):
    with pytest.raises(ValueError, match=r"out.xlsx: predictions are written as .csv or .json"):
        fermodels.predict.predict_files([tmp_path], tmp_path / "no.pt", out=tmp_path / "out.xlsx")


def test_an_output_or_annotation_folder_that_cannot_be_written_is_refused_before_scoring(tmp_path):
    """Checked before the checkpoint is even read (no.pt does not exist): a run of hours must not end
    in a write error with its results lost."""
    (tmp_path / "file.jpg").write_bytes(b"")
    inputs = [tmp_path / "file.jpg"]
    with pytest.raises(ValueError, match=r"--out .*p.csv: cannot write in .*file.jpg"):
        fermodels.predict.predict_files(inputs, tmp_path / "no.pt", out=tmp_path / "file.jpg" / "p.csv")
    with pytest.raises(ValueError, match=r"--annotate cannot write in .*file.jpg/ann"):
        fermodels.predict.predict_files(inputs, tmp_path / "no.pt", annotate=tmp_path / "file.jpg" / "ann")
    with pytest.raises(FileNotFoundError, match="no.pt not found"):          # a writable one passes
        fermodels.predict.predict_files(inputs, tmp_path / "no.pt", out=tmp_path / "new" / "p.csv",
                                        annotate=tmp_path / "ann")
    assert not (tmp_path / "new").exists() and not (tmp_path / "ann").exists()   # no empty folders left behind
    (tmp_path / "taken.csv").mkdir()
    with pytest.raises(ValueError, match=r"--out .*taken.csv is a folder: give the file to write"):   # not after
        fermodels.predict.predict_files(inputs, tmp_path / "no.pt", out=tmp_path / "taken.csv")     # scoring


def test_no_forward_pass_is_larger_than_the_batch_size(photos, predictor, monkeypatch, one_thread):
    """--batch-size caps every pass, with --annotate too (an image's faces went in one pass: a
    crowd photo with 300 faces was one batch of 300), and the rows keep the faces' order."""
    sizes, real = [], predictor.probabilities
    monkeypatch.setattr(predictor, "probabilities", lambda faces: sizes.append(len(faces)) or real(faces))
    paths = [photos / "two.jpg", photos / "astronaut.jpg", photos / "two.jpg"]
    reference, _ = run_predict(predictor, paths, batch_size=8, every=1)
    sizes.clear()
    rows, _ = run_predict(predictor, paths, batch_size=1, every=1)
    assert sizes and max(sizes) == 1 and sum(sizes) == 5
    sizes.clear()
    annotated, _ = run_predict(predictor, paths, batch_size=1, every=1, annotate=photos / "annotated")
    assert max(sizes) == 1 and sum(sizes) == 5
    for got in (rows, annotated):
        assert [(r["source"], r["face"]) for r in got] == [(r["source"], r["face"]) for r in reference]
        assert all(abs(a[c] - b[c]) < 1e-4 for a, b in zip(got, reference) for c in predictor.classes)


def test_a_model_whose_scores_depend_on_its_batch_scores_one_face_at_a_time(photos, predictor, monkeypatch, caplog,
                                                                             one_thread):
    """convcut_paper's card says per_sample false: predict must not let one file's faces change
    another's scores through a shared batch."""
    from dataclasses import replace

    from fermodels.registry import create_model

    assert create_model("convcut_paper", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)).card.per_sample is False
    assert create_model("convcut", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)).card.per_sample is True
    sizes: list[int] = []
    hook = predictor.model.register_forward_pre_hook(lambda _m, args: sizes.append(args[0]["image"].shape[0]))
    monkeypatch.setattr(predictor, "card", replace(predictor.card, per_sample=False))
    try:
        rows, _ = run_predict(predictor, [photos / "two.jpg", photos / "astronaut.jpg"], batch_size=32, every=1)
        assert sizes and set(sizes) == {1} and sum(sizes) == 3                 # the model saw one face a pass
        assert "scoring one face at a time" in caplog.text
        sizes.clear()
        faces = [face for path in ("two.jpg", "astronaut.jpg") for face in predictor.faces(
            cv2.imread(str(photos / path))[..., ::-1].copy(), path)[0]]
        alone = predictor.probabilities(faces)                                # the Python API too
        assert sizes == [1, 1, 1] and alone.shape == (3, len(predictor.classes))
    finally:
        hook.remove()


def test_annotating_into_the_inputs_folder_never_replaces_an_input(tmp_path):
    """A JPEG's annotated copy keeps its name: pointed at the photos' own folder, --annotate
    replaced the originals with their boxed copies."""
    photos = tmp_path / "photos"
    (photos / "more").mkdir(parents=True)
    for rel in ("a.jpg", "b.png", "more/c.JPEG"):
        (photos / rel).write_bytes(b"original")
    (tmp_path / "not_read.pt").write_bytes(b"")          # refused before the checkpoint is read (only found)
    with pytest.raises(ValueError, match=r"its copy of .*a\.jpg would replace the input .*a\.jpg; choose a folder"):
        predict_files([photos], tmp_path / "not_read.pt", annotate=photos)
    with pytest.raises(ValueError, match=r"more/c\.JPEG would replace"):
        predict_files([photos / "more"], tmp_path / "not_read.pt", annotate=photos / "more")
    assert all((photos / rel).read_bytes() == b"original" for rel in ("a.jpg", "b.png", "more/c.JPEG"))
    check_annotations(tmp_path / "annotated", annotation_names([photos], expand_inputs([photos])))   # elsewhere: fine
    check_annotations(photos, annotation_names([photos / "b.png"], [photos / "b.png"]))   # b.png.jpg beside it


def test_annotating_never_replaces_a_file_that_is_no_earlier_copy(photos, tiny_run, tmp_path, one_thread):
    """A camera restarts its numbering: day2/IMG_0001.jpg annotated into trip/, beside day 1's
    IMG_0001.jpg (no input), replaced day 1's photo with day 2's boxed copy. Only an earlier run's
    copy (its JPEG comment says so) is replaced; it still decodes as a plain JPEG."""
    trip = tmp_path / "trip"
    (trip / "day2").mkdir(parents=True)
    day1 = (photos / "two.jpg").read_bytes()
    (trip / "IMG_0001.jpg").write_bytes(day1)
    (trip / "day2" / "IMG_0001.jpg").write_bytes((photos / "astronaut.jpg").read_bytes())
    args = ["predict", str(trip / "day2"), "-m", str(tiny_run["ckpt"] / "best.pt"), "--backend", "embedded",
            "--device", "cpu", "--annotate"]
    res = CliRunner().invoke(app, [*args, str(trip)])
    assert isinstance(res.exception, ValueError)                       # `ferdata` prints it in one line
    assert f"would replace {trip / 'IMG_0001.jpg'}, a file that is not an annotated copy" in str(res.exception)
    assert (trip / "IMG_0001.jpg").read_bytes() == day1
    for _ in range(2):                                   # a second run replaces the first run's copy
        res = CliRunner().invoke(app, [*args, str(tmp_path / "ann")])
        assert res.exit_code == 0, res.output
        copy = (tmp_path / "ann" / "IMG_0001.jpg").read_bytes()
        assert is_annotated_copy(tmp_path / "ann" / "IMG_0001.jpg")
        assert decode_jpeg_rgb(copy).shape == cv2.imread(str(trip / "day2" / "IMG_0001.jpg")).shape
    assert not is_annotated_copy(trip / "IMG_0001.jpg") and not is_annotated_copy(tmp_path / "missing.jpg")


def test_a_videos_frame_copies_never_replace_a_file_that_is_no_earlier_copy(tmp_path):
    """A video's frame copies (clip.mp4.f000000.jpg) were not checked: a user's file of that name in the
    --annotate folder was replaced by an annotated frame. An earlier run's frame copies, and another
    video's, are not in the way."""
    (tmp_path / "in").mkdir()
    ann = tmp_path / "ann"
    ann.mkdir()
    video = tmp_path / "in" / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 64))
    for _ in range(3):
        writer.write(np.zeros((64, 64, 3), np.uint8))
    writer.release()
    names = annotation_names([video], [video])
    fermodels.predict.draw_faces(np.zeros((8, 8, 3), np.uint8), [], ann / "clip.mp4.f000000.jpg")   # a marked copy
    (ann / "other.mp4.f000001.jpg").write_bytes(encode_jpeg(np.zeros((8, 8, 3), np.uint8), 90))
    (ann / "clip.mp4.f000001.jpeg").write_bytes(b"yours")                 # no name a copy takes
    check_annotations(ann, names)
    theirs = ann / "clip.mp4.f000002.jpg"
    theirs.write_bytes(encode_jpeg(np.full((8, 8, 3), 200, np.uint8), 90))
    with pytest.raises(ValueError, match=f"would replace {theirs}, a file that is not an annotated copy"):
        check_annotations(ann, names)


def test_a_videos_frame_copy_that_is_an_input_is_not_replaced_and_the_folder_is_listed_once(tmp_path, monkeypatch):
    """A re-run of `predict photos/ --annotate photos/annotated` reads the first run's frame copies as
    inputs, and the video's new frame copy replaced one (a photo's copy there is refused). Listing the
    folder once per video made a re-run over 400 videos with 100 copies each take 104 s, not 6 s."""
    photos = tmp_path / "photos"
    ann = photos / "annotated"
    ann.mkdir(parents=True)
    (photos / "clip.mp4").write_bytes(b"not read here")
    fermodels.predict.draw_faces(np.zeros((8, 8, 3), np.uint8), [], ann / "clip.mp4.f000000.jpg")   # run 1's
    paths = expand_inputs([photos])
    assert ann / "clip.mp4.f000000.jpg" in paths
    with pytest.raises(ValueError, match="its copy of .*clip.mp4 would replace the input .*clip.mp4.f000000.jpg"):
        check_annotations(ann, annotation_names([photos], paths))

    for v in range(20):
        fermodels.predict.draw_faces(np.zeros((8, 8, 3), np.uint8), [], ann / f"v{v}.mp4.f000000.jpg")
    names = {tmp_path / "in" / f"v{v}.mp4": Path(f"v{v}.mp4.jpg") for v in range(20)}
    listed, real = [], Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: listed.append(self) or real(self))
    check_annotations(ann, names)
    assert listed == [ann]


@pytest.mark.parametrize("given", ["str", "path", "file"])
def test_picture_from_file_given_no_bytes_says_it_takes_bytes(given, tmp_path):
    """A path (the obvious mistake, given the name) failed inside the decoder: "startswith first arg
    must be str ..., not bytes" or "'PosixPath' object has no attribute 'startswith'"."""
    path = tmp_path / "photo.jpg"
    path.write_bytes(encode_jpeg(np.full((64, 64, 3), 128, np.uint8), 90))
    with open(path, "rb") as f:
        arg = {"str": str(path), "path": path, "file": f}[given]
        with pytest.raises(TypeError, match="^Picture.from_file takes the file's bytes, got "):
            Picture.from_file(arg)
    assert Picture.from_file(memoryview(path.read_bytes())).rgb.shape == (64, 64, 3)


@pytest.mark.parametrize("kind", ["pil", "bytes", "none"])
def test_faces_of_something_that_is_no_picture_says_what_a_picture_is(kind):
    """A PIL image, a file's bytes or None failed with "'...' object has no attribute 'rgb'"."""
    from PIL import Image

    thing = {"pil": Image.new("RGB", (64, 64)), "bytes": b"\xff\xd8", "none": None}[kind]
    predictor = object.__new__(Predictor)                 # the check comes before any model is used
    with pytest.raises(TypeError, match=r"^a picture is a Picture .* or an RGB uint8 \(H, W, 3\) array, got "):
        predictor.faces(thing, kind)


def test_folders_are_expanded_through_links_and_other_files_are_named(tmp_path, caplog):
    (tmp_path / "kept" / "more").mkdir(parents=True)
    for rel in ("photos/a.jpg", "kept/more/b.png", "photos/c.heic", "photos/.hidden.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "photos" / "linked").symlink_to(tmp_path / "kept")
    (tmp_path / "photos" / "up").symlink_to(tmp_path)                 # would score files outside photos/
    found = expand_inputs([tmp_path / "photos"])
    assert found == [tmp_path / "photos" / "a.jpg", tmp_path / "photos" / "linked" / "more" / "b.png"]
    assert "1 file(s) neither image" in caplog.text and "c.heic" in caplog.text
    assert "1 linked folder(s) not followed" in caplog.text
    assert "1 hidden file(s) or folder(s) skipped" in caplog.text and ".hidden.jpg" in caplog.text


def test_predict_reads_every_image_type_the_dataset_readers_read(tmp_path):
    from ferdata.io import IMAGE_EXTS

    for ext in IMAGE_EXTS:                      # a model trained on .pgm faces (JAFFE's .tiff, ...) predicts them too
        (tmp_path / f"face{ext.upper()}").write_bytes(b"")
    assert sorted(p.suffix.lower() for p in expand_inputs([tmp_path])) == sorted(IMAGE_EXTS)


def test_shards_that_record_no_settings_train_with_params_yamls_only_where_the_faces_agree(tiny_shards, preprocess,
                                                                                          tmp_path, caplog):
    """Shards of a version that did not record their align/derive settings were trained on with
    params.yaml's put into the checkpoint unchecked: 112 px faces under a params.yaml saying 128 gave a
    checkpoint telling inference to crop at 128 (another template placement), without a word."""
    import shutil

    from fermodels.trainparams import shards_preprocess

    old = shutil.copytree(tiny_shards, tmp_path / "old")
    for info_path in old.glob("*/_info.json"):
        info = json.loads(info_path.read_text())
        side = info.pop("preprocess")["align"]["size"]
        info_path.write_text(json.dumps(info))
    split = open_split([old], "train")
    assert not split.preprocess and side == preprocess["align"]["size"]
    with caplog.at_level("WARNING", "fermodels.trainparams"):
        assert shards_preprocess(split, preprocess) == preprocess
    assert "did not record how their faces were made" in caplog.text and "unchecked" in caplog.text
    other = {**preprocess, "align": {**preprocess["align"], "size": side + 16}}
    with pytest.raises(ValueError, match=f"{side} px faces where params.yaml's align.size is {side + 16}, in a split"):
        shards_preprocess(split, other)


def test_an_unrecorded_dataset_of_another_side_beside_a_recorded_one_is_refused(tiny_shards, preprocess, tmp_path):
    """The stored side checked was the smallest over the datasets: a dataset of an earlier version
    with 128 px faces trained beside one recording 112 (params.yaml's too) went unnoticed."""
    from ferdata.datasets import open_reader
    from fermodels.trainparams import shards_preprocess
    from tests.fermodels.helpers import write_affectnet

    params, base = load_params(REPO / "params.yaml"), tmp_path / "old"
    write_affectnet(base / "raw", 2, 1, range(7), 0)
    records = open_reader("affectnet", base / "raw", {"protocol": "affectnet7"}).read()
    run_detect(records, stage_params(DetectParams, params["detect"], backend="annotations", workers=1,
                                     cache_dir=str(base / "cache")), base / "detect")
    run_align(base / "detect", stage_params(AlignParams, params["align"], workers=1, size=128), base / "aligned")
    run_derive(base / "aligned", stage_params(DeriveParams, params["derive"], workers=1), base / "derived")
    run_shard(base / "aligned", base / "derived", stage_params(ShardParams, params["shard"], maxcount=4),
              base / "shards")
    for info_path in (base / "shards").glob("*/_info.json"):
        info = json.loads(info_path.read_text())
        del info["preprocess"]
        info_path.write_text(json.dumps(info))
    split = open_split([tiny_shards, base / "shards"], "train")
    assert split.preprocess == {} and preprocess["align"]["size"] == 112
    with pytest.raises(ValueError, match=rf"^{base}/shards/train: 128 px faces where params.yaml's align.size is 112"):
        shards_preprocess(split, preprocess)


def test_datasets_made_with_different_settings_do_not_train_one_model(tiny_shards, tmp_path):
    import shutil

    a, b = (shutil.copytree(tiny_shards, tmp_path / name) for name in ("a", "b"))
    assert open_split([a, b], "train").preprocess == json.loads((a / "train" / "_info.json").read_text())["preprocess"]
    info = json.loads((b / "train" / "_info.json").read_text())
    info["preprocess"]["align"]["size"] = 224
    (b / "train" / "_info.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="prepared with different align/derive settings"):
        open_split([a, b], "train")
    del info["preprocess"]
    (b / "train" / "_info.json").write_text(json.dumps(info))
    assert open_split([a, b], "train").preprocess == {}                 # one did not record them: unknown


def test_the_annotations_backend_is_refused_for_new_images():
    """It was accepted and could never place a face: '0 face(s)', rc 0."""
    with pytest.raises(ValueError, match=r"--backend annotations places a face by a dataset's own landmarks.*\(auto, "
                                         r"embedded, .*\), or precropped"):
        choose_backend("annotations", {"embedded": 3})
    assert choose_backend("precropped", {"embedded": 3}).name == "precropped"       # face crops: a face each


def test_an_option_value_a_candidate_refuses_is_an_error_not_a_fallback():
    """Bug guarded: det_size=100.5 made the training faces' detector 'cannot run here', the fallback
    `auto` then ended with "model file 'any face model' not found"; det_size=abc raised a TypeError."""
    with pytest.raises(ValueError, match="face backend 'embedded': option det_size must be a whole number, got 100.5"):
        choose_backend(None, {"embedded": 3}, {"det_size": 100.5})
    with pytest.raises(ValueError, match="face backend 'embedded': option det_size must be a whole number, got 'abc'"):
        choose_backend(None, {"embedded": 3}, {"det_size": "abc"})


def test_the_backend_runs_with_the_options_it_ran_with_for_the_training_faces(tiny_run, tmp_path):
    """Detection settings travel detect report -> align report -> shard _info.json -> checkpoint ->
    predict: a model whose training faces came from embedded at score_threshold 0.5 finds new faces
    at 0.5 (it used the backend's own 0.9), unless --backend-option says otherwise."""
    info = json.loads((tiny_run["shards"] / "train" / "_info.json").read_text())
    assert info["detect"]["backend"] == "annotations" and "options" in info["detect"]
    recorded = {"embedded": {"det_size": 320, "score_threshold": 0.5},
                "insightface": {"pack": "antelopev2", "det_size": 320}}
    assert choose_backend(None, {"embedded": 5}, None, None, recorded).options["score_threshold"] == 0.5
    assert choose_backend(None, {"embedded": 5}, {"score_threshold": 0.7}, None, recorded).options == \
        {"det_size": 320, "score_threshold": 0.7, "nms_threshold": 0.4}
    asked = choose_backend("embedded", {"insightface": 5}, None, None, recorded)
    assert asked.options["det_size"] == 320 and asked.options["score_threshold"] == 0.5
    state = load_checkpoint(tiny_run["ckpt"] / "best.pt")
    assert state["data"]["face_backend_options"] == {"annotations": info["detect"]["options"]}


def test_a_backend_run_two_ways_for_two_datasets_is_not_repeated(tiny_shards, tmp_path, caplog):
    import shutil

    a, b = (shutil.copytree(tiny_shards, tmp_path / name) for name in ("a", "b"))
    base = json.loads((a / "train" / "_info.json").read_text())["detect"]["options"]
    assert open_split([a, b], "train").face_backend_options == {"annotations": base}
    info = json.loads((b / "train" / "_info.json").read_text())
    info["detect"]["options"] = {**base, "landmarks": "68"}
    (b / "train" / "_info.json").write_text(json.dumps(info))
    assert open_split([a, b], "train").face_backend_options == {}
    assert "annotations ran with different options" in caplog.text


def test_a_face_with_non_finite_probabilities_gets_no_expression(photos, predictor, monkeypatch, tmp_path,
                                                                  caplog, one_thread):
    """Not the first class (argmax of NaNs), and no NaN in the JSON (not JSON), nor in annotations."""
    from fermodels.predict import run_predict
    from fermodels.predictions import json_text

    monkeypatch.setattr(predictor, "probabilities", lambda faces: np.full((len(faces), len(predictor.classes)), np.nan))
    rows, summary = run_predict(predictor, [photos / "astronaut.jpg"], batch_size=2, every=1,
                                annotate=tmp_path / "ann")
    assert len(rows) == 1 and rows[0]["expression"] is None and all(rows[0][c] is None for c in predictor.classes)
    assert "probabilities are not finite" in caplog.text
    json.loads(json_text(rows, summary), parse_constant=pytest.fail)
    assert (tmp_path / "ann" / "astronaut.jpg").is_file()


def test_predict_exits_1_when_no_input_could_be_read_and_logs_its_backend(tiny_run, tmp_path):
    """A broken video gave a header-only CSV and exit 0, like a photo without faces; and predict set
    up no logging, so which face backend it chose (and why) was never shown."""
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    args = ["predict", str(tmp_path / "broken.jpg"), "-m", str(tiny_run["ckpt"] / "best.pt"), "--device", "cpu"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and "1 not read" in res.output, res.output
    run = subprocess.run([sys.executable, "-m", "ferdata.cli", *args], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 1 and "fermodels.predict: " in run.stderr, run.stderr   # the backend choice


def test_flip_tta_averages_the_prediction_of_the_mirrored_face(photos, predictor, one_thread):
    """Bug guarded: flip TTA averaging the face's prediction with itself (the flip left out), which
    scores as if TTA were off: the result must be the mean of the face's and its mirror's softmax."""
    import copy

    from fermodels.augment import hflip_batch
    from fermodels.modelinput import normalise, to_device

    image = cv2.imread(str(photos / "astronaut.jpg"))[..., ::-1].copy()
    faces, _ = predictor.faces(image, "astronaut.jpg")
    tta = copy.copy(predictor)
    tta.flip_tta = True
    batch = predictor.decoder.collate([{"__key__": f"face{i}", **f.fields} for i, f in enumerate(faces)])
    b = normalise(to_device(batch, predictor.device, predictor.card.input_size), predictor.card)
    with torch.no_grad():
        plain = predictor.model(b)["logits"].float().softmax(-1)
        mirrored = predictor.model(hflip_batch(b))["logits"].float().softmax(-1)
    assert not torch.allclose(plain, mirrored, atol=1e-6)             # the mirror scores differently
    np.testing.assert_allclose(tta.probabilities(faces), ((plain + mirrored) / 2).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predictor.probabilities(faces), plain.numpy(), rtol=1e-5, atol=1e-6)


def test_a_value_a_later_training_detector_refuses_is_an_error_too():
    with pytest.raises(ValueError, match="face backend 'face_alignment': option flip_input must be true or false, "
                                         "got 'yes'"):
        choose_backend(None, {"insightface": 5, "face_alignment": 3}, {"flip_input": "yes"})


class _Capture:
    """A cv2.VideoCapture whose header lists ``listed`` frames and of which ``decoded`` decode."""

    def __init__(self, listed: int, decoded: int) -> None:
        self.listed, self.left = listed, decoded

    def isOpened(self) -> bool:
        return True

    def get(self, prop: int) -> float:
        return float(self.listed) if prop == cv2.CAP_PROP_FRAME_COUNT else 0.0

    def read(self):
        if self.left == 0:
            return False, None
        self.left -= 1
        return True, np.zeros((8, 8, 3), np.uint8)

    def grab(self) -> bool:
        if self.left == 0:
            return False
        self.left -= 1
        return True

    def release(self) -> None:
        pass


@pytest.mark.parametrize("listed, decoded, problem", [
    (10, 10, None), (10, 9, None),            # one frame of slack: a count estimated from the duration
    (10, 8, (8, None, "video_cut_short")), (10, 3, (3, None, "video_cut_short")),
    (0, 5, None), (-1, 5, None)])             # a count not known
def test_a_video_is_cut_short_when_two_or_more_of_its_listed_frames_do_not_decode(tmp_path, monkeypatch, listed,
                                                                                   decoded, problem):
    monkeypatch.setattr(cv2, "VideoCapture", lambda _: _Capture(listed, decoded))
    got = list(iter_frames(tmp_path / "v.avi", 4))
    assert [i for i, p, _ in got if p is not None] == list(range(0, decoded, 4))
    assert [(i, p, why) for i, p, why in got if p is None] == ([problem] if problem else [])


def test_a_misspelt_keypoints_source_is_refused_before_the_face_models_load(tiny_run, monkeypatch):
    """--keypoints is free text: a typo was told only after the face backend's models had loaded."""
    def loaded(*args, **kwargs):
        raise AssertionError("the face backend was made first")
    monkeypatch.setattr(fermodels.predictor, "choose_backend", loaded)
    with pytest.raises(ValueError, match="keypoints must be detector or landmarks, got 'landmark'"):
        Predictor(tiny_run["ckpt"] / "best.pt", device="cpu", keypoints="landmark")


@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (32, 3), (0, 0, 3), (0, 32, 3), (32, 0, 3)],
                         ids=["frames-stacked", "grey-3-wide", "empty", "no-rows", "no-columns"])
def test_an_array_of_another_rank_or_without_pixels_is_refused(shape):
    """Mutant killed: pt7 (the check read the last axis only). An empty frame reached the detector
    (ZeroDivisionError)."""
    from fermodels.predictor import Picture

    with pytest.raises(ValueError, match=r"a picture is RGB uint8 \(H, W, 3\) pixels, got uint8 "):
        Picture(np.zeros(shape, np.uint8))


def test_frames_not_scored_are_decoded_but_never_converted(tmp_path, monkeypatch):
    """--every 10 converted every frame to BGR (cap.read) and dropped 9 of 10 (audit h88): the frames between
    are grabbed (decoded, no conversion), so the stride and the cut-short count stay as they were."""
    capture = _Capture(10, 10)
    reads = []
    real = capture.read
    monkeypatch.setattr(capture, "read", lambda: reads.append(1) or real())
    monkeypatch.setattr(cv2, "VideoCapture", lambda _: capture)
    assert [i for i, p, _ in iter_frames(tmp_path / "v.mp4", 4)] == [0, 4, 8]
    assert len(reads) == 3


def test_a_picture_the_face_backend_fails_on_is_named_and_the_run_goes_on(photos, predictor, monkeypatch, caplog,
                                                                         one_thread):
    """The detect stage records an image its backend raises on as ``detector_failed`` and goes on; predict ended
    there, every row scored before it lost (audit h88)."""
    real = predictor.backend.detect

    def detect(image, record):
        if record.path.endswith("two.jpg"):
            raise RuntimeError("odd picture")
        return real(image, record)
    monkeypatch.setattr(predictor.backend, "detect", detect)
    paths = [photos / n for n in ("astronaut.jpg", "two.jpg", "noise.png")]
    rows, summary = run_predict(predictor, paths, batch_size=2, every=1)
    assert [Path(r["source"]).name for r in rows] == ["astronaut.jpg"]
    assert summary[1] == {"source": str(paths[1]), "frame": 0, "faces": 0, "problem": "detector_failed"}
    assert "detector_failed (RuntimeError: odd picture)" in caplog.text


def test_a_backend_failing_on_every_picture_stops_the_run(photos, predictor, monkeypatch, one_thread):
    """A broken backend (a bug, a GPU out of memory: torch's is a RuntimeError) raised on every picture: each was
    skipped as detector_failed and the run ended "successfully" with no rows. The detect stage stops when its
    first 10 images all fail (_Table.check_backend); predict does so too."""
    def detect(image, record):
        raise TypeError("a bug in the backend")
    monkeypatch.setattr(predictor.backend, "detect", detect)
    with pytest.raises(RuntimeError, match="failed on the first 10 pictures.*TypeError: a bug in the backend"):
        run_predict(predictor, [photos / "astronaut.jpg"] * 12, batch_size=2, every=1)
