"""Pretrained weight files: new weights under the same path train a new run; damaged, non-finite or
empty-path weights are refused by name; a misspelt layout is told when params are checked; `~` is
expanded; the timm mapping counts or refuses every tensor it does not rename."""
from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18
from torchvision.models.convnext import CNBlockConfig, ConvNeXt

from ferdata.errors import is_user_error, message
from fermodels.checkpoints import PretrainedMismatchError, load_pretrained
from fermodels.models.backbones import ResNet18Trunk
from tests.fermodels.helpers import REPO, build_shards, ferdata_quiet, make_params


def _tiny_convnext_file(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    net = ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, 32, 1), CNBlockConfig(32, 64, 1),
                    CNBlockConfig(64, None, 1)])
    torch.save(net.state_dict(), path)


def test_new_pretrained_weights_in_place_are_trained_from_not_resumed_past(tmp_path):
    """README: after replacing a pretrained file in place, `dvc repro --force --single-item train` trains
    again. The train stage's last.pt persists and resume_state compared params, shards and code only,
    so the re-run resumed the finished run: best.pt kept the old weights' run, the new file unused."""
    from fermodels.runstate import load_checkpoint, preprocess_record
    from fermodels.train import train
    from ferdata.params import load_params

    with ferdata_quiet():
        shards = build_shards(tmp_path / "tiny")
    pre = preprocess_record(load_params(REPO / "params.yaml"))
    weights = tmp_path / "convnext_base.pth"
    _tiny_convnext_file(weights, seed=1)
    params = make_params(epochs=1, model_kwargs={**make_params().model_kwargs, "pretrained": str(weights)})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(shards, params, tmp_path / "ckpt", tmp_path / "live", pre)
        first = load_checkpoint(tmp_path / "ckpt" / "best.pt")["state_dict"]
        _tiny_convnext_file(weights, seed=2)                        # new weights under the same path
        train(shards, params, tmp_path / "ckpt", tmp_path / "live", pre)
        again = load_checkpoint(tmp_path / "ckpt" / "best.pt")["state_dict"]
    finally:
        torch.set_num_threads(threads)
    key = "backbone.features.0.0.weight"
    assert not torch.equal(first[key], again[key]), "the re-run resumed the old weights' finished run"


def _damage_first_tensor(src: Path, dst: Path) -> None:
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        info = next(i for i in z.infolist() if i.filename.split("/")[-2:-1] == ["data"])
    n = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little")
    e = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + n + e
    data[start:start + 64] = b"\xff" * 64
    dst.write_bytes(bytes(data))


def test_damaged_bytes_inside_an_intact_pretrained_file_are_refused(tmp_path):
    """torch.load never checks the zip's CRC-32s: a damaged copy of resnet18_msceleb.pth loaded NaN into
    conv1 and reported success (load_checkpoint already refuses this for training checkpoints)."""
    good = tmp_path / "resnet18_msceleb.pth"
    torch.save({"state_dict": resnet18(weights=None).state_dict()}, good)
    bad = tmp_path / "damaged.pth"
    _damage_first_tensor(good, bad)
    with pytest.raises(PretrainedMismatchError) as caught:
        load_pretrained(ResNet18Trunk(), bad, "msceleb_resnet18")
    assert is_user_error(caught.value) and "damaged.pth" in message(caught.value)
    assert "\n" not in message(caught.value)


def test_non_finite_pretrained_weights_are_refused(tmp_path):
    """No published backbone holds NaN/inf; loading one started training from weights that are neither
    pretrained nor random (every loss NaN from step 1), silently."""
    state = resnet18(weights=None).state_dict()
    state["layer2.0.bn1.running_var"][3] = float("nan")
    path = tmp_path / "resnet18_msceleb.pth"
    torch.save(state, path)
    with pytest.raises(PretrainedMismatchError, match=r"layer2\.0\.bn1\.running_var"):
        load_pretrained(ResNet18Trunk(), path, "msceleb_resnet18")


@pytest.mark.parametrize("model, key", [("resnet18_112", "pretrained"), ("pcda", "landmark_checkpoint")])
def test_an_empty_weight_path_is_refused_not_read_as_none(model, key):
    """`-S train.model_kwargs.pretrained=$WEIGHTS` with WEIGHTS unset gives '': the model was built from
    random weights (pcda: its Gaussian substitute instead of the MobileFaceNet), with no warning; the
    params check lets a str through."""
    kwargs = {key: "  "} if key == "pretrained" else {key: "", "dim": 64, "heads": 4}
    with pytest.raises(ValueError, match=rf"train\.model_kwargs\.{key}"):
        make_params(model=model, model_kwargs=kwargs)


def test_a_misspelt_pretrained_layout_is_told_when_params_are_checked():
    """check_model_kwargs builds on the meta device with the weight path replaced by FROM_CHECKPOINT, and
    load_pretrained returned before looking the layout up: `pretrained_layout: convnext_tim` passed
    pipeline._checks and failed only when the train stage built the model, after the preprocessing."""
    with pytest.raises((ValueError, KeyError), match="convnext_tim"):
        make_params(model="convcut", model_kwargs={
            "pretrained": "/models/convnext_base.pth", "pretrained_layout": "convnext_tim", "depths": [1, 1, 1, 1],
            "dims": [8, 16, 32, 64], "cut_stage": 2})


def test_a_weight_path_with_a_tilde_is_expanded(tmp_path, monkeypatch):
    """detect.model_dir, detect.cache_dir and subset lists expand ~ (README); a weight path did not:
    `pretrained: ~/models/resnet18_msceleb.pth` said the file 'does not exist'."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    torch.save(resnet18(weights=None).state_dict(), tmp_path / "models" / "resnet18_msceleb.pth")
    assert load_pretrained(ResNet18Trunk(), "~/models/resnet18_msceleb.pth", "msceleb_resnet18").matched == 120


def test_timm_tensors_the_mapping_does_not_know_are_counted_or_refused_not_dropped(tmp_path):
    """The convnext_timm mapper dropped every key it did not rename before load_pretrained saw it: the
    head went uncounted (ignored=0) and a tensor inside a block the trunk has (another network's part)
    loaded silently, where the torchvision layout refuses the same file by name (module docstring)."""
    from fermodels.models.backbones import ConvNeXtTrunk
    from tests.fermodels.test_checkpoints import TINY_CONVNEXT, randomise, timm_names

    state = timm_names(randomise(ConvNeXtTrunk(3, **TINY_CONVNEXT)).state_dict())     # with head.norm / head.fc
    path = tmp_path / "convnext_base.fb_in22k_ft_in1k.pth"
    torch.save(state, path)
    assert load_pretrained(ConvNeXtTrunk(3, **TINY_CONVNEXT), path, "convnext_timm").ignored == 2
    state["stages.1.blocks.0.se.fc1.weight"] = torch.randn(4, 16)
    torch.save(state, path)
    with pytest.raises(PretrainedMismatchError, match=r"se\.fc1\.weight"):
        load_pretrained(ConvNeXtTrunk(3, **TINY_CONVNEXT), path, "convnext_timm")


def test_a_damaged_central_directory_entry_is_told_as_damage(tmp_path):
    """ZipFile.testzip catches BadZipFile alone: a member whose compression method was damaged in the
    zip's directory raised a raw NotImplementedError (a traceback, as for a bug)."""
    import struct

    good = tmp_path / "resnet18_msceleb.pth"
    torch.save(resnet18(weights=None).state_dict(), good)
    data = bytearray(good.read_bytes())
    start = struct.unpack("<I", data[data.rfind(b"PK\x05\x06") + 16:][:4])[0]
    entry = data.find(b"PK\x01\x02", start)
    data[entry + 10:entry + 12] = struct.pack("<H", 99)          # the first member's method: 0 -> 99
    bad = tmp_path / "damaged.pth"
    bad.write_bytes(bytes(data))
    with pytest.raises(PretrainedMismatchError) as caught:
        load_pretrained(ResNet18Trunk(), bad, "msceleb_resnet18")
    assert is_user_error(caught.value) and "damaged.pth" in str(caught.value)


def test_too_little_memory_for_whole_pretrained_weights_is_not_a_cut_download(tmp_path, monkeypatch):
    """Out of memory reading an intact file (torch's allocator says so in a RuntimeError) was told as "a
    cut-off download or another kind of file? download it again" (audit h68)."""
    import errno

    import fermodels.checkpoints as checkpoints

    good = tmp_path / "resnet18_msceleb.pth"
    torch.save({"state_dict": resnet18(weights=None).state_dict()}, good)

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 600000000 bytes. Error code 12 (Cannot allocate memory)")
    monkeypatch.setattr(checkpoints.torch, "load", no_memory)
    with pytest.raises(OSError, match="not enough memory to load") as caught:
        load_pretrained(ResNet18Trunk(), good, "msceleb_resnet18")
    assert caught.value.errno == errno.ENOMEM and "download" not in str(caught.value)


def test_a_bug_in_a_models_code_keeps_its_traceback_under_fer_traceback(monkeypatch):
    """check_model_kwargs turns a TypeError into "cannot be built with ..." (a bad value, or a bug in the
    model): ``from None`` twice (registry, trainparams) left FER_TRACEBACK=1 a traceback ending in
    trainparams.py, the model's own line gone."""
    import traceback

    import yaml

    import fermodels.models.baselines as baselines
    from fermodels.trainparams import train_section

    def buggy(self, *args, **kwargs):
        return len(5)                   # a bug of the model's code

    monkeypatch.setattr(baselines.ResNet18Classifier, "__init__", buggy)
    params = yaml.safe_load((Path(__file__).parents[2] / "params.yaml").read_text(encoding="utf-8"))
    params["train"] = {**params["train"], "model": "resnet18_112", "recipe": None,
                       "model_kwargs": {"pretrained": None}}
    with pytest.raises(ValueError, match="cannot be built with") as err:
        train_section(params, announce=False)
    shown = "".join(traceback.format_exception(err.value))
    assert "in buggy" in shown and "len(5)" in shown
