"""A model trained on grey faces alone (FER2013, JAFFE, most of CK+: grey pictures, decoded R = G = B)
is told apart from one trained on colour, from the align stage to the checkpoint, and served grey
faces: fed a colour photo's face as it is, it scores a picture unlike any it was trained on."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import fermodels.predict
from ferdata.cli import app
from ferdata.io import decode_jpeg_rgb
from ferdata.records import FaceRecord
from fermodels.export import metadata
from fermodels.predictor import Picture, Predictor
from fermodels.runstate import load_checkpoint, model_from_checkpoint
from fermodels.shardsplit import open_split

from tests.fermodels.helpers import build_shards, ferdata_quiet, make_params


def _is_grey(rgb: np.ndarray) -> bool:
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


@pytest.fixture(scope="module")
def grey_shards(tmp_path_factory):
    """``tiny_shards``' dataset with its pictures stored as grey JPEGs."""
    with ferdata_quiet():
        return build_shards(tmp_path_factory.mktemp("data") / "tinygrey", grey=True)


def _train(shards, out, datasets, preprocess):
    from fermodels.train import train

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(shards, make_params(epochs=1, datasets=datasets), out / "ckpt", out / "live", preprocess)
    finally:
        torch.set_num_threads(before)
    return out / "ckpt" / "best.pt"


@pytest.fixture(scope="module")
def grey_run(grey_shards, preprocess, tmp_path_factory):
    return _train(grey_shards, tmp_path_factory.mktemp("greyrun"), ["tinygrey"], preprocess)


def test_shards_of_grey_pictures_say_every_face_is_grey_and_colour_ones_as_before(grey_shards, tiny_shards):
    for split in ("train", "val", "test"):
        assert json.loads((grey_shards / split / "_info.json").read_text())["grey_faces"] is True
        assert "grey_faces" not in json.loads((tiny_shards / split / "_info.json").read_text())
    assert json.loads((grey_shards.parent / "aligned" / "report.json").read_text())["notes"]["grey_faces"] is True
    assert "grey_faces" not in json.loads((tiny_shards.parent / "aligned" / "report.json").read_text())["notes"]
    assert open_split([grey_shards], "train").grey and not open_split([tiny_shards], "train").grey
    assert not open_split([grey_shards, tiny_shards], "train").grey        # mixed: the model saw colour too


def _as_prepared_before_grey_faces(shards, copy):
    """A copy of grey shards as the shard stage before 6b2ab76 left them: no grey_faces in any _info.json."""
    import shutil

    shutil.copytree(shards, copy)
    for info in copy.glob("*/_info.json"):
        data = json.loads(info.read_text())
        del data["grey_faces"]
        info.write_text(json.dumps(data))
    return copy


def test_grey_shards_trained_with_ones_prepared_before_grey_faces_was_recorded_are_warned_of(
        grey_shards, preprocess, tmp_path, caplog):
    """One grey dataset prepared again after 6b2ab76, another not (its _info.json without grey_faces):
    the model trained on both records no grey_faces, so predict scores colour pictures in colour for it;
    that was silent (audit h84)."""
    old = _as_prepared_before_grey_faces(grey_shards, tmp_path / "old" / "tinygrey")
    with caplog.at_level("WARNING", logger="fermodels"):
        mixed = _train([grey_shards, old], tmp_path / "run", ["tinygrey", "oldgrey"], preprocess)
    assert "grey_faces" not in load_checkpoint(mixed)["data"]
    assert "prepared before the shard stage recorded grey_faces" in caplog.text and str(old) in caplog.text


def test_a_model_trained_on_grey_faces_alone_records_it(grey_run, grey_shards, tiny_run, preprocess, tmp_path,
                                                        caplog):
    """A mix of grey and colour datasets is a colour model, said in the log (a grey dataset prepared before
    grey_faces was recorded also counts as colour: the line tells to prepare it again)."""
    assert load_checkpoint(grey_run)["data"]["grey_faces"] is True
    assert "grey_faces" not in load_checkpoint(tiny_run["ckpt"] / "best.pt")["data"]      # colour: as before
    with caplog.at_level("INFO", logger="fermodels"):
        mixed = _train([grey_shards, tiny_run["shards"]], tmp_path, ["tinygrey", "tiny"], preprocess)
    assert "grey_faces" not in load_checkpoint(mixed)["data"]
    said = [r.getMessage() for r in caplog.records if "checkpoint records no data.grey_faces" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"{grey_shards} record(s) every face grey")
    assert f"and {tiny_run['shards']} do(es) not" in said[0]


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
    from skimage import data

    d = tmp_path_factory.mktemp("colour")
    cv2.imwrite(str(d / "astronaut.jpg"), data.astronaut()[..., ::-1])
    return d / "astronaut.jpg"


def test_predict_scores_a_grey_models_faces_in_grey_cropped_as_from_the_grey_picture(grey_run, tiny_run, astronaut,
                                                                                     caplog, one_thread):
    with caplog.at_level("INFO", logger="fermodels"):
        grey = Predictor(grey_run, backend="embedded", device="cpu")
    assert grey.grey and "trained on grey faces only" in caplog.text
    picture = Picture.from_file(astronaut.read_bytes())
    faces, _ = grey.faces(picture, "astronaut.jpg")
    assert faces and all(_is_grey(decode_jpeg_rgb(f.fields["jpg"])) for f in faces)
    # the crop is the one the align stage makes of the photo turned grey (a grey picture decodes R = G = B)
    rgb = picture.rgb
    grey_png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))[1].tobytes()
    colour = Predictor(grey_run, backend="embedded", device="cpu", grey=False)
    face = grey.backend.detect(rgb, FaceRecord(dataset="predict", key="a", path="astronaut.jpg", label=0,
                                               native_label=""))[0]
    _, from_colour = grey.aligned(picture, face)
    _, from_grey_file = colour.aligned(Picture.from_file(grey_png), face)
    assert np.array_equal(from_colour.image, from_grey_file.image)
    # a grey picture is left as it is: its crop the same either way
    grey_picture = Picture.from_file(grey_png)
    assert np.array_equal(grey.aligned(grey_picture, face)[1].image, colour.aligned(grey_picture, face)[1].image)
    # asked for colour, and a colour model (or an older checkpoint, which records nothing): the photo's colours
    assert not colour.grey and not _is_grey(decode_jpeg_rgb(colour.faces(picture, "astronaut.jpg")[0][0].fields["jpg"]))
    old = Predictor(tiny_run["ckpt"] / "best.pt", backend="embedded", device="cpu")
    assert not old.grey and not _is_grey(decode_jpeg_rgb(old.faces(picture, "astronaut.jpg")[0][0].fields["jpg"]))


def test_a_grey_models_faces_are_detected_on_the_grey_picture_as_the_detect_stage_found_them(
        grey_run, astronaut, monkeypatch, one_thread):
    """The detect stage ran the detector on the dataset's grey pictures: landmarks found on the colours
    differ (astronaut, embedded backend: 1.6 px), and so does the crop warped from them (7 levels on average)."""
    picture = Picture.from_file(astronaut.read_bytes())
    for grey in (True, False):
        predictor = Predictor(grey_run, backend="embedded", device="cpu", grey=grey)
        seen, real = [], predictor.backend.detect
        monkeypatch.setattr(predictor.backend, "detect", lambda rgb, record: seen.append(rgb) or real(rgb, record))
        faces, _ = predictor.faces(picture, "astronaut.jpg")
        grey_picture = cv2.cvtColor(cv2.cvtColor(picture.rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        assert faces and np.array_equal(seen[0], grey_picture if grey else picture.rgb)


def test_the_cli_chooses_grey_or_colour_over_the_checkpoint(grey_run, astronaut, monkeypatch, one_thread):
    seen = []
    real = fermodels.predict.Predictor

    def spy(*args, **kwargs):
        seen.append(kwargs.get("grey"))
        return real(*args, **kwargs)

    monkeypatch.setattr(fermodels.predict, "Predictor", spy)
    base = ["predict", str(astronaut), "-m", str(grey_run), "--backend", "embedded", "--device", "cpu"]
    for extra in ([], ["--colour"], ["--grey"]):
        res = CliRunner().invoke(app, base + extra)
        assert res.exit_code == 0, res.output
    assert seen == [None, False, True]


def test_grey_asked_of_a_checkpoint_without_grey_faces_does_not_say_its_faces_were_colour(tiny_run, caplog):
    """A checkpoint trained on grey faces before 6b2ab76 records no grey_faces: --grey, which CHANGES
    points such a checkpoint to, was told that its training faces "were not all grey"."""
    with caplog.at_level("INFO", logger="fermodels"):
        Predictor(tiny_run["ckpt"] / "best.pt", backend="embedded", device="cpu", grey=True)
    assert "were not all grey" not in caplog.text and "does not record" in caplog.text


def test_an_export_of_a_grey_model_says_so(grey_run, tiny_run):
    state = load_checkpoint(grey_run)
    meta = metadata(state, model_from_checkpoint(state).card, {})
    assert meta["grey_faces"] is True and "before the warp" in meta["grey"]
    colour = load_checkpoint(tiny_run["ckpt"] / "best.pt")
    assert "grey_faces" not in metadata(colour, model_from_checkpoint(colour).card, {})


def test_an_export_of_a_grey_model_says_its_faces_are_found_in_the_grey_picture(astronaut, one_thread):
    """Predict finds a grey model's faces in the picture turned grey (Picture.detected(grey=True)); the export
    said only that the picture is turned grey "before the warp", and a deployer finding faces on the colours
    had keypoints up to 5 px elsewhere (grace_hopper.jpg), crops 22 levels off on average."""
    from ferdata.faces import create_backend
    from fermodels.registry import create_model

    state = {"model": "resnet18_112", "model_kwargs": {}, "classes": ["a"] * 7, "data": {"grey_faces": True}}
    rule = metadata(state, create_model("resnet18_112").card, {})["grey"]
    assert "before the face backend finds its faces and keypoints" in rule and "before the warp" in rule
    picture = Picture.from_file(astronaut.read_bytes())
    backend = create_backend("embedded", {"threads": 1})
    on_colour, on_grey = (backend.detect(picture.detected(grey), None)[0].kps5 for grey in (False, True))
    assert np.abs(np.asarray(on_colour) - np.asarray(on_grey)).max() > 0.5      # the rule is not moot


@pytest.fixture
def fed(monkeypatch) -> list[bool]:
    """Whether each evaluate pass fed the model grey faces only (R = G = B), in order."""
    import fermodels.evaluate

    seen: list[bool] = []
    scored = fermodels.evaluate.predict_loader

    def spy(model, loader, *args, **kwargs):
        seen.append(all(_is_grey(b["image"].permute(0, 2, 3, 1).numpy()) for b in loader))
        return scored(model, loader, *args, **kwargs)
    monkeypatch.setattr(fermodels.evaluate, "predict_loader", spy)
    return seen


def _eval_params():
    """The project's evaluate section, quick: in the test process, on the CPU, no batch check."""
    from ferdata.params import load_params
    from fermodels.evaluate import EvalParams

    from tests.fermodels.helpers import REPO, stage_params

    return stage_params(EvalParams, load_params(REPO / "params.yaml")["evaluate"], workers=0, device="cpu",
                        batch_check=False)


def test_evaluating_a_grey_model_on_colour_faces_scores_them_grey_as_predict_serves_them(
        grey_run, grey_shards, tiny_shards, tmp_path, caplog, fed, one_thread):
    """A model trained on grey faces alone (FER2013) tested on a colour dataset (RAF-DB) was scored on
    colours it never saw, with a warning that `predict` would turn them grey: evaluate now does as predict
    does (evaluate.grey: null), and evaluate.grey: false keeps the colours, warned of as before."""
    from fermodels.evaluate import EvalParams, evaluate

    params = _eval_params()
    assert params.grey is None                                          # the project's default
    with caplog.at_level("INFO", logger="fermodels"):
        assert evaluate(grey_run, grey_shards, params, tmp_path / "own")["grey"] is True
        assert "turned grey" not in caplog.text                         # its own grey test faces: nothing to say
        grey = evaluate(grey_run, tiny_shards, params, tmp_path / "cross", datasets=["tiny"])
    assert grey["grey"] is True and fed == [True, True]
    assert "scored turned grey" in caplog.text and "not all grey" not in caplog.text
    caplog.clear()
    colour = evaluate(grey_run, tiny_shards, EvalParams(**{**params.__dict__, "grey": False}), tmp_path / "colour",
                      datasets=["tiny"])
    assert colour["grey"] is False and fed[-1] is False
    assert "trained on grey faces only" in caplog.text and "not all grey" in caplog.text


def test_colour_test_faces_scored_grey_are_said_to_be_found_in_colour_with_the_setting_that_makes_predicts(
        grey_run, tiny_shards, tmp_path, caplog, one_thread):
    """A grey model's colour test faces were found and warped in the colour pictures, where predict finds them
    in the picture turned grey: on 35 colour photos their probabilities differed from predict's by up to 0.08,
    told as "a level of rounding" (audit h117). The log says so and names the setting that prepares predict's
    crops (detect.grey)."""
    from fermodels.evaluate import evaluate

    with caplog.at_level("INFO", logger="fermodels"):
        evaluate(grey_run, tiny_shards, _eval_params(), tmp_path / "cross", datasets=["tiny"])
    said = [r.getMessage() for r in caplog.records if "scored turned grey" in r.getMessage()]
    assert len(said) == 1 and "found and warped in the colour pictures" in said[0]
    assert "datasets.tiny.detect: {grey: true} prepares the crops predict makes" in said[0]


def test_a_colour_model_is_scored_on_grey_faces_when_asked(tiny_run, tmp_path, caplog, fed, one_thread):
    from fermodels.evaluate import EvalParams, evaluate

    params = _eval_params()
    assert evaluate(tiny_run["ckpt"] / "best.pt", tiny_run["shards"], params, tmp_path / "as")["grey"] is False
    with caplog.at_level("INFO", logger="fermodels"):
        asked = evaluate(tiny_run["ckpt"] / "best.pt", tiny_run["shards"],
                         EvalParams(**{**params.__dict__, "grey": True}), tmp_path / "grey")
    assert asked["grey"] is True and fed == [False, True] and "evaluate.grey: true" in caplog.text


def test_evaluating_a_grey_model_on_grey_shards_prepared_before_grey_faces_was_recorded_does_not_warn(
        grey_run, grey_shards, tmp_path, caplog, one_thread):
    """Shards of a grey dataset prepared before 6b2ab76 record no grey_faces: they were told apart from
    colour ones by that key alone, so a grey model scored on them was warned of colours it was not fed."""
    from ferdata.params import load_params
    from fermodels.evaluate import EvalParams, evaluate

    from tests.fermodels.helpers import REPO, stage_params

    old = _as_prepared_before_grey_faces(grey_shards, tmp_path / "old" / "tinygrey")
    params = stage_params(EvalParams, load_params(REPO / "params.yaml")["evaluate"], workers=0, device="cpu",
                          batch_check=False)
    with caplog.at_level("INFO", logger="fermodels"):
        evaluate(grey_run, old, params, tmp_path / "eval")
    assert "trained on grey faces only" not in caplog.text and "look grey" in caplog.text


def test_a_large_faces_grey_crop_is_block_meaned_after_the_picture_turns_grey(grey_run, one_thread):
    """A face warped from a reduced copy (here 1/4) of a colour PNG or a video frame: the grey picture the
    align stage would read is block-meaned after it is turned grey; turned grey after the block means, 15%
    of the crop's values came out one level off (probabilities 7e-5)."""
    from skimage.data import astronaut

    from ferdata.geometry import crop_reduction

    big = cv2.resize(astronaut(), None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    big = np.clip(big + np.random.default_rng(0).integers(-16, 17, big.shape), 0, 255).astype(np.uint8)
    grey_big = cv2.cvtColor(big, cv2.COLOR_RGB2GRAY)
    grey = Predictor(grey_run, backend="embedded", device="cpu")
    colour = Predictor(grey_run, backend="embedded", device="cpu", grey=False)
    picture = Picture.from_file(cv2.imencode(".png", big[..., ::-1])[1].tobytes())
    face = grey.backend.detect(picture.detected(True), FaceRecord(dataset="predict", key="a", path="a.png", label=0,
                                                                  native_label=""))[0]
    assert crop_reduction(np.asarray(face.kps5, np.float64), 112, 0.0) > 1
    from_grey_file = colour.aligned(Picture.from_file(cv2.imencode(".png", grey_big)[1].tobytes()), face)[1].image
    assert np.array_equal(grey.aligned(picture, face)[1].image, from_grey_file)
    from_grey_frame = colour.aligned(Picture(cv2.cvtColor(grey_big, cv2.COLOR_GRAY2RGB)), face)[1].image
    assert np.array_equal(grey.aligned(Picture(big), face)[1].image, from_grey_frame)


@pytest.fixture(scope="module")
def colour_photos(tmp_path_factory):
    """Real colour photos in the ways the align stage reads them: JPEGs (grace_hopper as matplotlib ships it),
    a PNG, and a face 4x the crop's resolution as a PNG (block means of the grey picture) and a JPEG (libjpeg's
    reduced decode); and a grey PNG among them, as CK+ mixes grey and colour sessions."""
    import matplotlib.cbook
    from skimage.data import astronaut

    from tests.fermodels.test_predict import large_face_photo

    d = tmp_path_factory.mktemp("mixed")
    hopper = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    (d / "hopper.jpg").write_bytes(hopper.read_bytes())
    cv2.imwrite(str(d / "astronaut.jpg"), astronaut()[..., ::-1])
    cv2.imwrite(str(d / "astronaut.png"), astronaut()[..., ::-1])
    cv2.imwrite(str(d / "large.png"), large_face_photo()[..., ::-1])
    cv2.imwrite(str(d / "large.jpg"), large_face_photo()[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    cv2.imwrite(str(d / "grey.png"), cv2.cvtColor(astronaut()[:, ::-1], cv2.COLOR_RGB2GRAY))
    return sorted(d.iterdir())


def _prepared(paths, tmp_path, cache, grey):
    """``paths`` through the detect (embedded) and align stages, ``detect.grey`` as given: (detect report,
    align report, key -> aligned fields)."""
    from ferdata.params import load_params
    from ferdata.stages.align import AlignParams, run_align
    from ferdata.stages.detect import DetectParams, run_detect
    from ferdata.tario import iter_tar_samples

    from tests.fermodels.helpers import REPO, stage_params

    params = load_params(REPO / "params.yaml")
    records = [FaceRecord(dataset="mixed", key=p.stem + p.suffix[1:], path=str(p), label=1, native_label="happy")
               for p in paths]
    detected = run_detect(records, stage_params(DetectParams, params["detect"], backend="embedded", workers=1,
                                                cache_dir=str(cache), grey=grey), tmp_path / "detect")
    aligned = run_align(tmp_path / "detect", stage_params(AlignParams, params["align"], workers=1), tmp_path / "al")
    faces = {k: f for tar in sorted((tmp_path / "al").glob("aligned-*.tar")) for k, f in iter_tar_samples(tar)}
    return detected, aligned, faces


def test_a_dataset_made_grey_has_predicts_grey_crops_byte_for_byte_and_says_every_face_is_grey(
        colour_photos, grey_run, tmp_path, one_thread):
    """CK+ mixes grey and colour sessions: as it is, a colour dataset (its model served colour photos);
    ``detect.grey`` turns every picture grey as predict turns one for a grey model (BT.601, before detection
    and the warp), so its crops are predict's for those photos, byte for byte, and the dataset is grey."""
    _, as_is, _ = _prepared(colour_photos, tmp_path / "colour", tmp_path / "cache", grey=False)
    assert "grey_faces" not in as_is.notes
    detected, made, faces = _prepared(colour_photos, tmp_path / "grey", tmp_path / "cache", grey=True)
    assert made.notes["grey_faces"] is True and made.kept == len(colour_photos)
    assert made.settings["detect"]["grey"] is True and "grey" not in as_is.settings["detect"]
    assert detected.notes["detections_run"] == len(colour_photos)        # not the colour pictures' cached faces
    predictor = Predictor(grey_run, backend="embedded", device="cpu", keypoints="detector")
    assert predictor.grey
    for path in colour_photos:
        found, _ = predictor.faces(Picture.from_file(path.read_bytes()), path.name)
        assert found[0].fields["jpg"] == faces[path.stem + path.suffix[1:]]["jpg"], path.name


def test_a_mostly_grey_dataset_is_told_how_to_make_its_faces_grey(colour_photos, tmp_path, caplog):
    """CK+ as released: grey sessions and a few colour ones. Recorded as colour, its model was served colour
    photos without a word; the align stage names detect.grey (and says nothing of a colour or a grey dataset)."""
    from skimage.data import astronaut

    d = tmp_path / "ck"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(9):              # grey frames of one session: the same face, a little noise apart
        noisy = np.clip(astronaut().astype(np.int16) + rng.integers(-3, 4, (512, 512, 1)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(d / f"grey{i}.png"), cv2.cvtColor(noisy, cv2.COLOR_RGB2GRAY))
    mostly_grey = sorted(d.iterdir()) + [p for p in colour_photos if p.name == "astronaut.jpg"]
    with caplog.at_level("WARNING", logger="ferdata"):
        _, report, _ = _prepared(mostly_grey, tmp_path / "mostly", tmp_path / "cache", grey=False)
    assert report.kept == 10 and "grey_faces" not in report.notes
    told = [r.getMessage() for r in caplog.records if "detect: {grey: true}" in r.getMessage()]
    assert len(told) == 1 and told[0].startswith("align: 9 of the 10 faces are grey (R = G = B) and 1 in colour")
    caplog.clear()
    with caplog.at_level("WARNING", logger="ferdata"):
        _prepared(mostly_grey, tmp_path / "made", tmp_path / "cache", grey=True)
        _prepared(colour_photos, tmp_path / "colour", tmp_path / "cache", grey=False)
    assert "detect: {grey: true}" not in caplog.text


def test_a_pictures_grey_copy_is_made_once_for_detection_and_the_crop(monkeypatch):
    """Detection in grey and a small face's crop (warped from the whole picture in grey) read one grey copy:
    a 12-megapixel photo's costs 8 ms, a frame's each frame."""
    import ferdata.io
    import fermodels.predictor as predictor_module
    from skimage.data import astronaut

    real, calls = ferdata.io.grey_copy, []
    counted = lambda decoded: calls.append(1) or real(decoded)              # noqa: E731
    monkeypatch.setattr(predictor_module, "grey_copy", counted)            # a frame's, and detection's
    monkeypatch.setattr(ferdata.io, "grey_copy", counted)                  # a file's, through decode_grey
    for picture in (Picture(astronaut()), Picture.from_file(cv2.imencode(".jpg", astronaut())[1].tobytes())):
        calls.clear()
        seen = picture.detected(grey=True)
        assert seen is picture.reduced(1, grey=True).rgb and len(calls) == 1
        assert np.array_equal(seen, real(predictor_module.Decoded(picture.rgb, picture.scale, ())).rgb)
