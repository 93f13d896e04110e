"""ONNX and TorchScript exports give PyTorch's predictions and describe their inputs."""
from __future__ import annotations

import json
import re
import warnings
import zipfile

import cv2
import numpy as np
import pytest
import torch

from fermodels.export import export_model, parity
from fermodels.registry import list_models
from fermodels import runstate
from fermodels.runstate import load_checkpoint, save_checkpoint, Position
from fermodels.trainparams import TrainParams

from tests.fermodels.helpers import make_params

TOLERANCE = 1e-5


def test_export_matches_pytorch_and_writes_metadata(tiny_run, tmp_path, one_thread):
    meta = export_model(tiny_run["ckpt"] / "best.pt", tmp_path)
    assert meta["files"] == {"onnx": "convcut.onnx", "torchscript": "convcut.ts"}
    saved = json.loads((tmp_path / "convcut.json").read_text())
    assert saved["classes"][:2] == ["Neutral", "Happy"] and saved["input_size"] == 224
    assert saved["inputs"]["image"]["shape"] == ["batch", 3, 224, 224]
    assert saved["normalisation"]["mean"] == [0.485, 0.456, 0.406]
    assert saved["preprocess"]["align"]["size"] == 112
    assert list(saved["face_backends"]) == ["annotations"]          # tiny_shards' faces: the annotations backend
    assert saved["per_sample"] is True                                # convcut, not convcut_paper: batch it freely
    diffs = parity(tmp_path, tiny_run["ckpt"] / "best.pt", batch=5)
    assert set(diffs) == {"onnx", "torchscript"} and max(diffs.values()) < TOLERANCE, diffs
    assert set(saved["parity"]) == {"onnx", "torchscript"} and max(saved["parity"].values()) < TOLERANCE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["convcut.json", "convcut.onnx", "convcut.ts"]


def test_the_metadata_alone_reproduces_the_training_crop(tiny_run, tmp_path, one_thread):
    """A deployer with only the .json (and OpenCV / scikit-image) gets the crop the align stage makes."""
    from skimage import data
    from skimage.transform import SimilarityTransform

    from ferdata.geometry import align_face

    meta = export_model(tiny_run["ckpt"] / "best.pt", tmp_path, formats=["onnx"])["alignment"]
    size = meta["crop_size"]
    photo = data.astronaut()
    kps5 = np.array([[199.0, 106.0], [248.0, 104.0], [226.0, 131.0], [204.0, 160.0], [243.0, 158.0]])
    if hasattr(SimilarityTransform, "from_estimate"):         # scikit-image 0.26+
        fit = SimilarityTransform.from_estimate(kps5, np.array(meta["template"]))
    else:                                                      # the releases pyproject.toml admits before it
        fit = SimilarityTransform()
        assert fit.estimate(kps5, np.array(meta["template"]))
    theirs = cv2.warpAffine(photo, fit.params[:2], (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
    ours = align_face(photo, kps5, 112).image
    assert theirs.shape == ours.shape == (112, 112, 3)
    assert np.abs(theirs.astype(int) - ours).max() <= 2
    assert meta["resize"].startswith("112 -> 224: pixel centres aligned, OpenCV INTER_LINEAR when enlarging")
    quality = load_checkpoint(tiny_run["ckpt"] / "best.pt")["preprocess"]["align"]["jpeg_quality"]
    assert f"a JPEG of quality {quality}" in meta["stored"]         # the training crops' pixels went through it


@pytest.mark.parametrize("name", list_models())
def test_the_metadata_says_how_to_make_every_input_of_every_model(name):
    from fermodels.export import alignment
    from fermodels.registry import create_model

    card = create_model(name).card
    meta = alignment({"align": {"size": 112, "padding": 0.0}}, card)
    described = {"image", *(f for f in ("lmk", "heatmap") if f in meta)}
    described |= {"left", "right"} if "halves" in meta else set()
    assert set(card.fields) <= described, f"{name}: {set(card.fields) - described} not described"


def test_torchscript_graph_holds_no_device_and_reexports_check_only_what_they_wrote(tiny_run, tmp_path, one_thread):
    """The normalisation constants are buffers (a traced graph moved to a GPU takes them along;
    made in forward they were baked in as CPU tensors), and `export --no-onnx` into a folder with
    an earlier export checks and prints the TorchScript file only (it failed with `error: onnx`)."""
    from typer.testing import CliRunner

    from fermodels.cli import app

    export_model(tiny_run["ckpt"] / "best.pt", tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)             # torch.jit.load's deprecation notice
        graph = torch.jit.load(str(tmp_path / "convcut.ts"))
    assert "cpu" not in graph.code and {"scale", "shift"} <= {n for n, _ in graph.named_buffers()}
    res = CliRunner().invoke(app, ["export", str(tiny_run["ckpt"] / "best.pt"), str(tmp_path), "--no-onnx"])
    assert res.exit_code == 0, res.output
    assert "torchscript:" in res.output and "onnx:" not in res.output


FORWARD_MADE = ("pcda", "pcnn")        # models that make tensors in forward (steps of a grid, batch indices)


@pytest.mark.parametrize("name, kwargs", [
    *((n, {}) for n in FORWARD_MADE), ("pcnn", {"regions": "landmarks"}),
    *(pytest.param(n, {}, marks=pytest.mark.slow) for n in list_models() if n not in FORWARD_MADE)])
def test_a_torchscript_graph_makes_its_tensors_on_its_inputs_device(name, kwargs, tmp_path, one_thread):
    """A tensor made in forward on ``x.device`` (torch.arange(n, device=theta.device)) was traced with the
    device as a constant: pcnn's and pcda's TorchScript graphs, moved to a GPU, made their grid steps on the
    CPU, which the GPU's tensors then met (a device mismatch); their ONNX graphs were fine."""
    from fermodels.export import ExportWrapper, _write_graphs
    from fermodels.registry import create_model

    _write_graphs(ExportWrapper(create_model(name, **kwargs).eval()), tmp_path, name, ["torchscript"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)             # torch.jit.load's deprecation notice
        graph = torch.jit.load(str(tmp_path / f"{name}.ts"))
    lines = str(graph.inlined_graph).splitlines()
    cpu = [line.split(" : ")[0].strip() for line in lines if 'Device = prim::Constant[value="cpu"]' in line]
    made = [line.strip() for line in lines if re.search(r"aten::(arange|zeros|ones|full|empty|eye|linspace)\(", line)
            and any(re.search(rf"{c}[,)]", line.split("=", 1)[1]) for c in cpu)]
    assert not made, made[:2]          # a constant index tensor on the CPU is fine: indexing moves it


def test_an_export_clears_the_staging_folder_a_killed_export_left(tiny_run, tmp_path, one_thread):
    """A killed export left its hidden staging folder (half-written graphs) in the output folder for
    good; the next export of the name removes it (one another export still holds would stay)."""
    left = tmp_path / ".convcut.export-k1ll3d"
    left.mkdir()
    (left / "convcut.onnx").write_bytes(b"half a graph")
    export_model(tiny_run["ckpt"] / "best.pt", tmp_path, formats=["onnx"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["convcut.json", "convcut.onnx"]


def test_an_output_folder_that_cannot_be_written_is_named(tiny_run, tmp_path, monkeypatch):
    """A read-only output folder failed once the model was built, naming the hidden staging folder
    ('[Errno 30] Read-only file system: '.../.convcut.export-4uqq9tn8'), as `predict --out` does not."""
    import errno
    import os
    from pathlib import Path

    out = tmp_path / "read-only"
    out.mkdir()
    real_open, real_mkdir = os.open, os.mkdir

    def refuse(path) -> None:
        if out in (Path(path), Path(path).parent):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def opened(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def made(path, *args, **kwargs):
        refuse(path)
        return real_mkdir(path, *args, **kwargs)
    monkeypatch.setattr(os, "open", opened)
    monkeypatch.setattr(os, "mkdir", made)
    with pytest.raises(ValueError, match=rf"^export cannot write in {re.escape(str(out))} \(Read-only file system\); "
                                         "choose another folder$"):
        export_model(tiny_run["ckpt"] / "best.pt", out)


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path, tiny_run):
    """An export, a truncated file, text or a picture given where a training checkpoint belongs. Bug
    guarded: text starting with some letters ('train:', 'score,...'), or a GIF, reached torch's legacy
    unpickler, which crashed with a traceback (IndexError: pop from empty list); our own TorchScript
    export and a pickled model were called cut-off, a state dict a checkpoint of an old version."""
    from fermodels.runstate import load_checkpoint as load

    export_model(tiny_run["ckpt"] / "best.pt", tmp_path, formats=["onnx", "torchscript"])
    (tmp_path / "text.pt").write_text("hello\n")
    (tmp_path / "params.pt").write_text("train:\n  lr: 0.1\n")
    (tmp_path / "scores.pt").write_text("score,path\n0.5,a.jpg\n")
    (tmp_path / "picture.pt").write_bytes(b"GIF89a" + bytes(40))
    (tmp_path / "cut.pt").write_bytes((tiny_run["ckpt"] / "best.pt").read_bytes()[:4000])
    net = torch.nn.Linear(2, 2)
    torch.save(net, tmp_path / "module.pt")
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    give = "give a training checkpoint such as runs/train/ckpt/best.pt"
    for bad, says in (("convcut.onnx", "ONNX or other protobuf data"), ("text.pt", r"it starts b'hello\\n'"),
                      ("params.pt", "it starts b'train:"), ("scores.pt", "it starts b'score,pa"),
                      ("picture.pt", "GIF data")):
        with pytest.raises(ValueError, match=rf"{bad} is not a fermodels-checkpoint/\d checkpoint \(not a torch "
                                             rf"archive: {says}.*\); {give}"):
            load(tmp_path / bad)
    with warnings.catch_warnings(record=True) as seen:                 # never handed to torch.jit.load
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match=f"convcut.ts is a TorchScript export .*, not a training checkpoint; "
                                             f"{give}"):
            load(tmp_path / "convcut.ts")
    assert not [str(w.message) for w in seen if "jit" in str(w.message)]
    with pytest.raises(ValueError, match=r"module.pt is a pickled model object \(torch.save\(model\)\), not a"):
        load(tmp_path / "module.pt")
    with pytest.raises(ValueError, match="weights.pt is not a fermodels-checkpoint/\\d checkpoint: a state dict"):
        load(tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="cut.pt is a cut-off or damaged checkpoint .*copy it again"):
        load(tmp_path / "cut.pt")                                   # torch's own format, cut short


def test_a_checkpoint_cut_short_anywhere_is_named(tmp_path, tiny_run):
    """A download or copy cut short: torch's zip reader fails with a bare OSError ([Errno 22]) past
    the first few kB; every cut is one error naming the file."""
    from fermodels.runstate import load_checkpoint as load

    data = (tiny_run["ckpt"] / "best.pt").read_bytes()
    for n in [*range(1000, len(data), len(data) // 12), len(data) - 100]:     # every cut says it is cut
        (tmp_path / "cut.pt").write_bytes(data[:n])
        with pytest.raises(ValueError, match=f"{tmp_path / 'cut.pt'} is a cut-off or damaged checkpoint") as err:
            load(tmp_path / "cut.pt")
        assert "miniz" not in str(err.value) and "there is a high" not in str(err.value)   # torch's advice, cut


def test_a_folder_or_a_damaged_checkpoint_is_one_clear_error(tmp_path, tiny_run):
    """A folder given as the checkpoint, one that lacks its weights, one whose weights were edited."""
    from fermodels.runstate import load_checkpoint as load, model_from_checkpoint

    with pytest.raises(IsADirectoryError, match="is a folder; give the .pt file in it"):
        load(tiny_run["ckpt"])
    state = load(tiny_run["ckpt"] / "best.pt")
    torch.save({k: v for k, v in state.items() if k != "state_dict"}, tmp_path / "nodict.pt")
    with pytest.raises(ValueError, match="damaged .* it lacks state_dict"):
        load(tmp_path / "nodict.pt")
    for classes, num, says in [(state["classes"][:-1], state["num_classes"], "names 6 classes .* for 7 outputs"),
                               ([*state["classes"][:-1], state["classes"][0]], 7, "class names repeat"),
                               ("Neutral", 7, "are not a list of names"), ([*state["classes"][:-1], ""], 7, "not a"),
                               (state["classes"], 7.0, "num_classes is 7.0, not a count")]:
        torch.save({**state, "classes": classes, "num_classes": num}, tmp_path / "names.pt")
        with pytest.raises(ValueError, match=f"names.pt is a damaged or edited .*{says}.*named wrongly"):
            load(tmp_path / "names.pt")
    first = next(iter(state["state_dict"]))
    edited = {**state, "state_dict": {k: v for k, v in state["state_dict"].items() if k != first}}
    with pytest.raises(ValueError, match="weights do not fit model 'convcut' .*Missing key"):
        model_from_checkpoint(edited)


def test_weights_saved_from_a_wrapped_model_load_or_name_the_prefix(tiny_run, caplog):
    """A state dict saved from a DDP (`module.`) or torch.compile (`_orig_mod.`) wrapper was "damaged or edited",
    its key list cut at 300 characters before the prefixed names showed. Every name prefixed: taken off (the
    same tensors); some: the error says so."""
    from fermodels.runstate import load_checkpoint as load, model_from_checkpoint

    state = load(tiny_run["ckpt"] / "best.pt")
    weights = state["state_dict"]
    for prefix in ("module.", "_orig_mod.", "_orig_mod.module."):
        caplog.clear()
        with caplog.at_level("WARNING", logger="fermodels.runstate"):
            net = model_from_checkpoint({**state, "state_dict": {prefix + k: v for k, v in weights.items()}})
        assert all(torch.equal(v, net.state_dict()[k]) for k, v in weights.items())
        assert f"weight names all start with {prefix}, the prefix of a model wrapped by" in caplog.text
    some = {("module." if i % 2 else "") + k: v for i, (k, v) in enumerate(weights.items())}
    with pytest.raises(ValueError, match=rf"do not fit model 'convcut'; {len(weights) // 2} of its {len(weights)} "
                                         r"weight names start with 'module.', the prefix DDP \(or DataParallel\)"):
        model_from_checkpoint({**state, "state_dict": some})


def test_unknown_format_or_none_is_refused(tiny_run, tmp_path):
    with pytest.raises(ValueError, match="onnx"):
        export_model(tiny_run["ckpt"] / "best.pt", tmp_path, formats=["tflite"])
    with pytest.raises(ValueError, match="no export format left"):           # it wrote the .json alone, exit 0
        export_model(tiny_run["ckpt"] / "best.pt", tmp_path / "none", formats=[])
    assert not (tmp_path / "none").exists()


def _checkpoint_of(name: str, path, preprocess: dict) -> None:
    """A random-init checkpoint of ``name`` in the trainer's format (export needs no training)."""
    from fermodels.registry import create_model

    params: TrainParams = make_params(model=name, model_kwargs={})
    torch.manual_seed(0)
    net = create_model(name, num_classes=7)
    save_checkpoint(path, model=net, params=params, optimizer=None, position=Position(0, 0, 0), best={},
                    data={}, preprocess=preprocess)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_model_exports_with_parity(name, tmp_path, preprocess):
    _checkpoint_of(name, tmp_path / "m.pt", preprocess)
    export_model(tmp_path / "m.pt", tmp_path)
    diffs = parity(tmp_path, tmp_path / "m.pt", batch=2)
    assert load_checkpoint(tmp_path / "m.pt")["model"] == name
    assert max(diffs.values()) < 1e-4, diffs


def test_checkpoints_rebuild_without_their_weight_files_and_keep_their_defaults(tmp_path, preprocess):
    """A model initialised from a weight file (`pretrained: /models/...`) rebuilds from its
    checkpoint where that file is absent (another machine: predict, evaluate, export), with the
    checkpoint's weights; checkpoints store every keyword, so a later default change does not
    alter them, and those saved before the cmnet default changed rebuild as they were trained."""
    from fermodels.registry import create_model
    from fermodels.runstate import FORMER_DEFAULTS, model_from_checkpoint

    params: TrainParams = make_params(model="cmnet", model_kwargs={"pretrained": str(tmp_path / "gone.pth")})
    torch.manual_seed(0)
    net = create_model("cmnet", num_classes=7)                 # as if initialised from that file
    save_checkpoint(tmp_path / "m.pt", model=net, params=params, optimizer=None, position=Position(0, 0, 0),
                    best={}, data={}, preprocess=preprocess)
    state = load_checkpoint(tmp_path / "m.pt")
    assert state["model_kwargs"]["mirror_right_half"] is False and state["model_kwargs"]["alpha"] == 0.9
    rebuilt = model_from_checkpoint(state)                     # FileNotFoundError before
    assert all(torch.equal(v, rebuilt.state_dict()[k]) for k, v in net.state_dict().items())
    assert rebuilt.mirror_right_half is False
    old = {**state, "model_kwargs": {"pretrained": str(tmp_path / "gone.pth")}}   # saved before the change
    assert model_from_checkpoint(old).mirror_right_half is FORMER_DEFAULTS[("cmnet", "mirror_right_half")]
    _checkpoint_of("pcda", tmp_path / "p.pt", preprocess)       # pcda's heatmaps moved onto the feature cells
    state = load_checkpoint(tmp_path / "p.pt")
    assert model_from_checkpoint(state).landmark_encoder.centres == "features"
    old = {**state, "model_kwargs": {k: v for k, v in state["model_kwargs"].items() if k != "heatmap_centres"}}
    assert model_from_checkpoint(old).landmark_encoder.centres == "cells"
    _checkpoint_of("resnet18_heatmap_112", tmp_path / "h.pt", preprocess)   # read at the features' centres
    state = load_checkpoint(tmp_path / "h.pt")
    assert model_from_checkpoint(state).heatmap_centres == "features"
    old = {**state, "model_kwargs": {k: v for k, v in state["model_kwargs"].items() if k != "heatmap_centres"}}
    assert model_from_checkpoint(old).heatmap_centres == "cells"


def test_the_metadata_records_the_keywords_an_older_checkpoint_is_built_with(tmp_path, preprocess):
    """A cmnet saved before checkpoints stored every keyword is rebuilt with mirror_right_half True (FORMER_DEFAULTS);
    its export's .json gave the stored keywords ({}), so a deployer rebuilding it from them got the new default."""
    from fermodels.export import metadata
    from fermodels.registry import create_model
    from fermodels.runstate import model_from_checkpoint

    _checkpoint_of("cmnet", tmp_path / "m.pt", preprocess)
    old = {**load_checkpoint(tmp_path / "m.pt"), "model_kwargs": {}}
    kwargs = metadata(old, create_model("cmnet").card, {})["model_kwargs"]
    assert kwargs["mirror_right_half"] is True is model_from_checkpoint(old).mirror_right_half
    assert kwargs == {**load_checkpoint(tmp_path / "m.pt")["model_kwargs"], "mirror_right_half": True}


@pytest.mark.parametrize("preprocess_kept", [{}, {"align"}])
def test_a_checkpoint_without_its_preprocessing_is_refused_by_export_as_by_predict(tmp_path, preprocess,
                                                                                    preprocess_kept):
    """Export wrote such a checkpoint's graphs with a warning and `alignment: {}` (no template, crop size nor
    JPEG quality to make its inputs with), which predict refuses to score faces with."""
    from fermodels.predictor import Predictor

    _checkpoint_of("resnet18_112", tmp_path / "m.pt", preprocess)
    state = torch.load(tmp_path / "m.pt", weights_only=False)
    torch.save({**state, "preprocess": {k: v for k, v in preprocess.items() if k in preprocess_kept}},
               tmp_path / "old.pt")
    refused = r"old.pt does not record its preprocessing \(align/derive settings\).*retrain it with the train stage"
    with pytest.raises(ValueError, match=refused):
        export_model(tmp_path / "old.pt", tmp_path / "out", formats=["onnx"])
    assert not list((tmp_path / "out").glob("*"))
    with pytest.raises(ValueError, match=refused):
        Predictor(tmp_path / "old.pt", device="cpu")


def _damage_first_tensor(src, dst) -> None:
    """``src`` with 64 bytes of its first tensor's data overwritten, the zip itself intact (what a
    bad disk or a broken copy leaves): torch.load reads such weights as numbers."""
    import zipfile

    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        info = next(i for i in z.infolist() if i.filename.split("/")[-2:-1] == ["data"])
    name_len, extra_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    data[start:start + 64] = bytes(0xFF for _ in range(64))
    dst.write_bytes(bytes(data))


def test_weights_damaged_inside_an_intact_file_are_named(tmp_path, tiny_run):
    from fermodels.runstate import load_checkpoint as load

    _damage_first_tensor(tiny_run["ckpt"] / "best.pt", tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad.pt is a damaged checkpoint: its '.*/data/\d+' fails its CRC-32"):
        load(tmp_path / "bad.pt")
    state = load(tiny_run["ckpt"] / "best.pt")                  # saved without checksums (all 0): loads
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(state, tmp_path / "no_crc.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    assert load(tmp_path / "no_crc.pt")["model"] == state["model"]


def test_non_finite_weights_and_unknown_settings_are_refused_with_what_to_do(tiny_run):
    from fermodels.runstate import load_checkpoint as load, model_from_checkpoint

    state = load(tiny_run["ckpt"] / "best.pt")
    name, first = next((k, v) for k, v in state["state_dict"].items() if v.is_floating_point())
    nan = {**state, "state_dict": {**state["state_dict"], name: torch.full_like(first, float("nan"))}}
    with pytest.raises(ValueError, match=f"weights are not finite \\(NaN or inf in {name}\\): its training diverged"):
        model_from_checkpoint(nan)
    newer = {**state, "model_kwargs": {**state["model_kwargs"], "bogus": 1}}
    with pytest.raises(ValueError, match="convcut was made with settings this version does not know .*'bogus'"):
        model_from_checkpoint(newer)


def test_export_refuses_parity_it_cannot_establish(tiny_run, tmp_path, monkeypatch):
    """NaN compares false with any tolerance: a NaN difference passed the parity check; and a model
    whose own probabilities are not finite gives nothing to check the exports against."""
    import fermodels.export as export

    export_model(tiny_run["ckpt"] / "best.pt", tmp_path, formats=["onnx"])
    real_forward = export.ExportWrapper.forward
    monkeypatch.setattr(export.ExportWrapper, "forward",
                        lambda self, *x: tuple(t * float("nan") for t in real_forward(self, *x)))
    with pytest.raises(RuntimeError, match="model gives non-finite outputs on the parity inputs"):
        parity(tmp_path, tiny_run["ckpt"] / "best.pt", formats=["onnx"])
    monkeypatch.undo()
    monkeypatch.setattr(export, "parity", lambda *a, **k: {"onnx": float("nan")})
    with pytest.raises(RuntimeError, match="differ from PyTorch's by nan"):
        export.export_command(tiny_run["ckpt"] / "best.pt", tmp_path, onnx=True, torchscript=False)


def test_a_graph_failing_parity_is_not_left_under_its_name(tiny_run, tmp_path, monkeypatch):
    """The graphs were written under their final names before the check: a failed export left a
    `.onnx` a deployer would pick up. Now nothing of it appears, and an earlier export stays whole."""
    import fermodels.export as export

    export_model(tiny_run["ckpt"] / "best.pt", tmp_path, formats=["onnx"])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(export, "parity", lambda folder, *a, **k: {"onnx": 0.0, "torchscript": 0.5})
    with pytest.raises(RuntimeError, match=r"torchscript graph's .* by 5.00e-01 .*not written to .*convcut.ts"):
        export_model(tiny_run["ckpt"] / "best.pt", tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before       # no .ts, no staging left
    with pytest.raises(RuntimeError, match="not written"):
        export_model(tiny_run["ckpt"] / "best.pt", tmp_path / "fresh")
    assert list((tmp_path / "fresh").iterdir()) == []


def test_an_export_stopped_anywhere_leaves_the_earlier_export_whole(tiny_run, tmp_path, monkeypatch):
    """The old .json was removed, the graphs renamed one by one, the new .json written last: Ctrl-C or an error
    between (a folder where a graph goes) left new graphs, or an old one beside a new one, without a .json. Each
    rename into or out of the folder fails in turn here: the earlier export stays whole; the run that meets no
    failure leaves the new one whole."""
    import os
    from itertools import count
    from pathlib import Path

    ckpt = tiny_run["ckpt"] / "best.pt"
    export_model(ckpt, tmp_path, formats=["onnx"])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real, renames = os.replace, []

    def failing(src, dst, *args, **kwargs):
        if tmp_path in (Path(src).parent, Path(dst).parent):
            renames.append(dst)
            if len(renames) == at:
                raise KeyboardInterrupt
        return real(src, dst, *args, **kwargs)
    monkeypatch.setattr(os, "replace", failing)
    for at in count(1):
        renames.clear()
        try:
            meta = export_model(ckpt, tmp_path)
        except KeyboardInterrupt:
            assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before, f"stopped at rename {at}"
            continue
        break
    assert at > 3 and sorted(p.name for p in tmp_path.iterdir()) == ["convcut.json", "convcut.onnx", "convcut.ts"]
    assert json.loads((tmp_path / "convcut.json").read_text())["files"] == meta["files"]
    assert len(meta["files"]) == 2
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def stopped_again(src, dst, *args, **kwargs):           # a second Ctrl-C while moving the files back
        if Path(dst).parent == tmp_path:
            raise KeyboardInterrupt
        return real(src, dst, *args, **kwargs)
    monkeypatch.setattr(os, "replace", stopped_again)
    with pytest.raises(KeyboardInterrupt) as stopped:
        export_model(ckpt, tmp_path, formats=["onnx"])
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(".convcut.replaced-")]
    assert [{p.name: p.read_bytes() for p in a.iterdir()} for a in aside] == [before]       # nothing deleted
    assert f"the earlier export's files are in {aside[0]}" in "".join(stopped.value.__notes__)


def test_a_folder_where_a_graph_goes_is_told_before_the_earlier_export_is_touched(tiny_run, tmp_path):
    """It failed at the rename of that graph, after the earlier .json was removed and another graph replaced."""
    export_model(tiny_run["ckpt"] / "best.pt", tmp_path, formats=["onnx"])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    (tmp_path / "convcut.ts").mkdir()
    with pytest.raises(IsADirectoryError, match=r"convcut.ts is a folder, where the export writes its .ts file: "
                                                "move it away"):
        export_model(tiny_run["ckpt"] / "best.pt", tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_a_narrower_export_leaves_no_graph_of_an_earlier_one(tiny_run, tmp_path):
    """Exporting ONNX alone into a folder that held an earlier export left its .ts under the final
    name beside a .json that no longer listed it."""
    export_model(tiny_run["ckpt"] / "best.pt", tmp_path)
    meta = export_model(tiny_run["ckpt"] / "best.pt", tmp_path, formats=["onnx"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["convcut.json", "convcut.onnx"]
    assert meta["files"] == {"onnx": "convcut.onnx"}


def test_parity_sees_logit_errors_a_saturated_model_hides(tmp_path, preprocess, one_thread):
    """A model whose probabilities are all 0 or 1 passed the probability check whatever its graph
    computed (parity 0.0 at a logit range of 13,000); logits are now compared on their scale."""
    _checkpoint_of("resnet18_112", tmp_path / "m.pt", preprocess)
    state = torch.load(tmp_path / "m.pt", weights_only=False)
    for factor, name in ((1e4, "saturated.pt"), (1.1e4, "other.pt")):
        weights = {**state["state_dict"], "fc.weight": state["state_dict"]["fc.weight"] * factor}
        torch.save({**state, "state_dict": weights}, tmp_path / name)
    export_model(tmp_path / "saturated.pt", tmp_path / "out", formats=["onnx"])
    assert max(parity(tmp_path / "out", tmp_path / "saturated.pt", formats=["onnx"]).values()) < TOLERANCE
    wrong = parity(tmp_path / "out", tmp_path / "other.pt", "resnet18_112", formats=["onnx"])["onnx"]
    assert wrong > 0.05                                       # the probabilities alike (0 or 1), the logits 10% off


def test_a_zip_that_holds_no_torch_data_is_named(tmp_path):
    with zipfile.ZipFile(tmp_path / "data.zip", "w") as z:
        z.writestr("images/a.txt", "hello")
    with pytest.raises(ValueError, match=r"data.zip is a zip archive that holds no torch data, not a training "
                                         r"checkpoint"):
        load_checkpoint(tmp_path / "data.zip")


def test_a_pickled_model_of_a_users_script_is_named(tmp_path, monkeypatch):
    import __main__

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))

    Net.__module__, Net.__qualname__ = "__main__", "Net"
    monkeypatch.setattr(__main__, "Net", Net, raising=False)
    torch.save(Net(), tmp_path / "mine.pt")
    with pytest.raises(ValueError, match=r"mine.pt is a pickled model object \(torch.save\(model\)\), not a training"):
        load_checkpoint(tmp_path / "mine.pt")


LONG = " ".join(f"word{i:02d}" for i in range(40))                    # 279 characters, no sentence end
EXACT = ("x" * 150 + " yyyyyyyyy")                                     # 160 characters


@pytest.mark.parametrize("raised, quoted", [
    (RuntimeError(""), "RuntimeError"),
    (RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory\n"
                  "  more. of it"), "PytorchStreamReader failed reading zip archive: failed finding central directory"),
    (OSError("Bad read. There is a high chance of miniz advice here."), "Bad read"),
    (RuntimeError(EXACT + ". Rest."), EXACT),
    (RuntimeError(LONG), LONG[:160].rsplit(" ", 1)[0] + " ...")],
    ids=["empty", "first-line", "first-sentence", "exactly-160", "long"])
def test_a_damaged_checkpoint_quotes_the_first_sentence_of_torchs_error(tmp_path, monkeypatch, raised, quoted):
    path = tmp_path / "cut.pt"
    torch.save({"a": torch.zeros(2)}, path)                          # a torch archive; torch.load fails on it below

    def failing(*args, **kwargs):
        raise raised

    monkeypatch.setattr(runstate.torch, "load", failing)
    with pytest.raises(ValueError) as err:
        load_checkpoint(path)
    assert f"(torch could not read it: {quoted}); copy it again" in str(err.value), str(err.value)


def test_the_metadata_says_which_reduction_a_turned_jpeg_is_warped_from(tmp_path):
    """A phone's JPEG stored turned (EXIF orientation 6) whose sides are no multiple of r is warped from a
    less reduced decode (ferdata.io.probe_image backs off): the .json must say so, and the rule it states,
    done with OpenCV alone, gives predict's crop (it took 1/4 where predict took 1/2: 74 levels off)."""
    import io as _io

    from PIL import Image
    from skimage import data

    from ferdata.crop import crop_face
    from ferdata.geometry import crop_reduction, similarity_matrix
    from fermodels.export import alignment
    from fermodels.predictor import Picture
    from fermodels.registry import create_model

    big = cv2.resize(data.astronaut(), (2046, 2046), interpolation=cv2.INTER_CUBIC)[:, :2042]
    exif = Image.Exif()
    exif[0x0112] = 6                                   # displayed = stored turned 90 degrees clockwise
    buf = _io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.rot90(big, 1))).save(buf, "JPEG", quality=92, exif=exif.tobytes())
    jpeg = buf.getvalue()
    kps5 = np.array([[199.0, 106.0], [248.0, 104.0], [226.0, 131.0], [204.0, 160.0], [243.0, 158.0]]) * 4
    meta = alignment({"align": {"size": 112, "padding": 0.0}}, create_model("convcut").card)
    assert "EXIF orientation turns or mirrors it" in meta["crop"] and "40 million pixels" in meta["crop"]
    row = {"box": [700.0, 300.0, 1100.0, 800.0], "score": 1.0, "kps5": kps5.tolist(), "lmk68": None, "backend": "x"}
    ours = crop_face(row, "embedded", 112, 0.0, Picture.from_file(jpeg).reduced)[0].image
    r = crop_reduction(kps5, 112)                      # 4: the face's size alone
    stored_h, stored_w = 2042, 2046                    # the turned JPEG's stored sides
    while r > 1 and (stored_w % r or stored_h % r):    # the rule the .json states
        r //= 2
    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}[r]
    picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), flag)[..., ::-1]
    m = similarity_matrix((kps5 + 0.5) / r - 0.5, np.array(meta["template"]))
    theirs = cv2.warpAffine(np.ascontiguousarray(picture), m, (112, 112), flags=cv2.INTER_LINEAR, borderValue=0)
    assert r == 2 and np.abs(theirs.astype(int) - ours).max() <= 1


def test_the_metadata_says_how_a_block_means_level_is_rounded():
    """A PNG or video frame's large face is warped from r x r block means; OpenCV rounds them half up at
    r = 2 and half to even at 4 and 8. Rounded otherwise (what "means" alone suggests), 12% of a 1/2
    picture's levels differ by one, which the crop's JPEG makes up to 9 levels of the model's input."""
    from ferdata.io import block_mean
    from fermodels.export import alignment
    from fermodels.registry import create_model

    crop = alignment({"align": {"size": 112, "padding": 0.0}}, create_model("convcut").card)["crop"]
    assert "half up at r = 2, half to even at r = 4 and 8" in crop
    rgb = np.random.default_rng(0).integers(0, 256, (61, 77, 3), dtype=np.uint8)
    for r, rounded in ((2, lambda s, n: (s + n // 2) // n), (4, lambda s, n: np.round(s / n)),
                       (8, lambda s, n: np.round(s / n))):
        padded = np.pad(rgb, ((0, -61 % r), (0, -77 % r), (0, 0)), mode="edge").astype(np.int64)
        sums = padded.reshape(padded.shape[0] // r, r, padded.shape[1] // r, r, 3).sum((1, 3))
        assert np.array_equal(block_mean(rgb, r), rounded(sums, r * r).astype(np.uint8)), r


@pytest.mark.parametrize("size, padding", [(112, 0.0), (224, 0.25), (128, 0.0), (112, 0.1)])
def test_the_metadata_template_is_the_one_the_crops_were_warped_to(size, padding):
    """Rounded to 4 decimals, a padded or 128-based template moved the deployer's crop by a level in places;
    the crop's JPEG made that 3 levels and the probabilities 1e-3 apart from predict's."""
    import json as _json

    from ferdata.geometry import template
    from fermodels.export import alignment
    from fermodels.registry import create_model

    meta = alignment({"align": {"size": size, "padding": padding}}, create_model("resnet18_112").card)
    written = _json.loads(_json.dumps(meta))["template"]       # through JSON, as a deployer reads it
    assert np.array_equal(np.array(written), template(size, padding))


def _jpeg_sampling(jpeg: bytes) -> list[tuple[int, int]]:
    """Each component's (horizontal, vertical) sampling factors from a JPEG's SOF marker."""
    i = 2
    while i < len(jpeg):
        marker, length = jpeg[i + 1], int.from_bytes(jpeg[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xC2:
            count = jpeg[i + 9]
            return [(jpeg[i + 11 + 3 * c] >> 4, jpeg[i + 11 + 3 * c] & 15) for c in range(count)]
        i += 2 + length
    raise AssertionError("no SOF marker")


def test_the_metadata_names_the_chroma_subsampling_the_crops_jpegs_used():
    """'A JPEG of quality 95' alone: an encoder set to 4:4:4 (TurboJPEG asks for it) gives crops up to 50
    levels from training's, probabilities 1e-2 apart; the crops' JPEGs are 4:2:0, and the .json says so."""
    from ferdata.io import encode_jpeg
    from fermodels.export import alignment
    from fermodels.registry import create_model

    meta = alignment({"align": {"size": 112, "padding": 0.0, "jpeg_quality": 95}, "derive": {"jpeg_quality": 90}},
                     create_model("cmnet").card)
    face = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    assert _jpeg_sampling(encode_jpeg(face, 95)) == [(2, 2), (1, 1), (1, 1)]      # 4:2:0
    assert meta["jpeg"] == {"quality": 95, "halves_quality": 90, "chroma_subsampling": "4:2:0",
                            "tables": "IJG standard, scaled by quality", "encoder": "OpenCV imencode (libjpeg-turbo)"}
    assert "4:2:0 chroma subsampling" in meta["stored"]


@pytest.mark.parametrize("name", ["cmnet", "pcda", "resnet18_heatmap"])
def test_the_metadata_says_how_predict_mirrors_a_face_for_flip_tta(name):
    """`predict --flip-tta` swaps the halves and re-indexes the landmarks: a deployer mirroring each input
    as an image (halves flipped in place, landmarks only moved) is 2e-2 away; the .json's recipe is exact."""
    from fermodels.augment import hflip_batch
    from fermodels.export import example_inputs, metadata
    from fermodels.registry import create_model

    card = create_model(name).card
    state = {"model": name, "model_kwargs": {}, "classes": ["a"] * 7}
    recipe = metadata(state, card, {})["flip_tta"]
    inputs = dict(zip(card.fields, example_inputs(card, batch=2)))
    ours = hflip_batch(inputs)
    theirs = {k: v.flip(-1) for k, v in inputs.items() if k in ("image", "heatmap")}
    if "halves" in recipe:
        theirs["left"], theirs["right"] = inputs["right"], inputs["left"]
    if "lmk" in recipe:
        lmk = inputs["lmk"][:, recipe["lmk_order"]].clone()
        lmk[..., 0] = card.input_size - 1 - lmk[..., 0]
        theirs["lmk"] = lmk
    assert set(theirs) == set(card.fields)
    assert all(torch.equal(ours[k], theirs[k]) for k in card.fields)


def test_the_metadata_names_the_code_data_and_files_it_came_from(tmp_path, preprocess):
    """A deployer told only 'fermodels-export/1' could not tell two exports apart, nor a graph from another
    export placed beside the .json: the checkpoint records its training code and shard hashes, the .json
    carries them, the package version and each file's sha256."""
    import hashlib

    from ferdata import __version__

    _checkpoint_of("resnet18_112", tmp_path / "m.pt", preprocess)
    state = torch.load(tmp_path / "m.pt", weights_only=False)
    state["data"] = {"code": "c0de", "train": {"/s": ["a" * 64]}, "val": {"/s": ["b" * 64]}}
    torch.save(state, tmp_path / "m.pt")
    meta = json.loads(json.dumps(export_model(tmp_path / "m.pt", tmp_path / "out", formats=["onnx"])))
    saved = json.loads((tmp_path / "out" / "resnet18_112.json").read_text())
    assert saved == meta
    assert meta["provenance"]["training_code"] == "c0de" and meta["provenance"]["package_version"] == __version__
    assert meta["provenance"]["shards"] == {"train": {"/s": ["a" * 64]}, "val": {"/s": ["b" * 64]}}

    def digest(path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    assert meta["sha256"] == {"checkpoint": digest(tmp_path / "m.pt"),
                              "onnx": digest(tmp_path / "out" / "resnet18_112.onnx")}


def test_an_export_of_a_last_pt_says_its_best_scores_are_not_its_weights(tmp_path, preprocess, caplog):
    """A last.pt holds the raw weights of the epoch it stopped at; its best is the best epoch's scores (of the
    weight average, with train.ema_decay). Its export carried that best as the graph's own scores."""
    _checkpoint_of("resnet18_112", tmp_path / "best.pt", preprocess)
    state = torch.load(tmp_path / "best.pt", weights_only=False)
    torch.save({**state, "epoch": 3, "best": {"epoch": 1, "accuracy": 0.8}}, tmp_path / "last.pt")
    torch.save({**state, "epoch": 1, "best": {"epoch": 1, "accuracy": 0.8}}, tmp_path / "best.pt")
    torch.save({**state, "epoch": 1, "best": {"epoch": 1, "accuracy": 0.8}, "ema": state["state_dict"]},
               tmp_path / "ema.pt")
    assert export_model(tmp_path / "best.pt", tmp_path / "b", ["onnx"])["best_scores_these_weights"] is True
    with caplog.at_level("WARNING", logger="fermodels.export"):
        for name in ("last.pt", "ema.pt"):
            meta = export_model(tmp_path / name, tmp_path / name.split(".")[0], ["onnx"])
            assert meta["best_scores_these_weights"] is False and meta["best"]["accuracy"] == 0.8
    assert caplog.text.count("export best.pt for the validated weights") == 2


def test_the_metadata_says_which_5_points_of_a_face_the_training_faces_were_aligned_by():
    """A model trained on a dataset's own landmarks (annotations) learnt faces aligned by the five points of their 68
    landmarks; the export said only "eye, image left ...", and a deployer aligning by a detector's own keypoints
    (RetinaFace's: 3.6 px of 112 away on average) scored the sample's held-out pictures 64% instead of 78%."""
    from fermodels.export import alignment
    from fermodels.registry import create_model

    card = create_model("resnet18_112").card
    pre = {"align": {"size": 112, "padding": 0.0}}
    assert "36-41" in alignment(pre, card, {"annotations": 30})["keypoints_from"]
    assert "detector's own" in alignment(pre, card, {"embedded": 30})["keypoints_from"]
    assert "36-41" in alignment(pre, card, {"annotations": 30, "embedded": 3})["keypoints_from"]     # most decide
    assert "detector's own" in alignment(pre, card, {"annotations": 3, "embedded": 30})["keypoints_from"]


def test_the_metadata_says_when_the_training_faces_were_a_datasets_own_crops():
    """A model trained mostly on FERPlus's or RAF-DB's own crops (precropped) saw faces framed as the dataset cut
    them; predict warns that new faces, warped to the template, are framed otherwise. The export said only that
    the crops were warped to the template by "the face detector's own 5 keypoints"."""
    from fermodels.export import alignment
    from fermodels.registry import create_model

    card = create_model("resnet18_112").card
    pre = {"align": {"size": 112, "padding": 0.0}}
    assert "dataset's own crops (precropped)" in alignment(pre, card, {"precropped": 30, "embedded": 3})["framing"]
    assert "framing" not in alignment(pre, card, {"precropped": 3, "embedded": 30})
    assert "framing" not in alignment(pre, card, {"annotations": 30})


def test_a_torchscript_graph_refuses_inputs_of_another_shape_as_onnx_and_pytorch_do(
        tmp_path, preprocess, one_thread):
    """The traced graph kept none of the model's input checks (``require``): a 224 px face fed to a 112 px
    model's .ts, or one face with a batch of two heatmaps, gave probabilities without a word (a CNN runs at
    any size; the heatmap broadcast over the batch), where the ONNX graph and the PyTorch model refuse them."""
    graphs = {}
    for name in ("resnet18_112", "resnet18_heatmap_112"):
        _checkpoint_of(name, tmp_path / f"{name}.pt", preprocess)
        export_model(tmp_path / f"{name}.pt", tmp_path, formats=["torchscript"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)             # torch.jit.load's deprecation notice
            graphs[name] = torch.jit.load(str(tmp_path / f"{name}.ts"))
    image, heatmap = torch.rand(2, 3, 112, 112) * 255, torch.rand(2, 1, 28, 28) * 255
    assert graphs["resnet18_112"](image)[1].shape == (2, 7)
    assert graphs["resnet18_heatmap_112"](image[:1], heatmap[:1])[1].shape == (1, 7)
    for name, bad, field in (("resnet18_112", (torch.rand(1, 3, 224, 224) * 255,), "image"),
                             ("resnet18_112", (image[:, :1],), "image"),
                             ("resnet18_heatmap_112", (image[:1], heatmap), "heatmap")):
        with pytest.raises(Exception, match=rf"input {field} is \[[^]]*\], not \[batch\]"):
            graphs[name](*bad)
