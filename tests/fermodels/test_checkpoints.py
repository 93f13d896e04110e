"""Pretrained loading: checkpoints written in tmp_path with the published key layouts.

Each reference is a freshly initialised module under the *published* names (torchvision,
face.evoLVe, POSTER++, cunjian, timm), saved the way the authors distribute it; the test loads
it into our trunk and checks every tensor, then checks the loud failures.
"""
from __future__ import annotations

import pickle
import re

import pytest
import torch
from torch import Tensor, nn
from torchvision.models import resnet18, resnet34
from torchvision.models.convnext import CNBlockConfig, ConvNeXt

from ferdata.registry import UnknownNameError
from fermodels.checkpoints import PretrainedMismatchError, load_pretrained
from fermodels.models.backbones import (IR50, ConvNeXtTrunk, DepthWise, MobileFaceNetTrunk,
                                        ResNet18Trunk)
from fermodels.registry import create_model

TINY_CONVNEXT = dict(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64))


def assert_same(module: nn.Module, reference: dict[str, Tensor], key=lambda k: k) -> None:
    for name, value in module.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            assert torch.equal(value, reference[key(name)]), name


def randomise(module: nn.Module) -> nn.Module:
    """Give BN statistics non-default values so a skipped buffer would be noticed."""
    with torch.no_grad():
        for name, buf in module.named_buffers():
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5)
    return module


@pytest.fixture
def msceleb(tmp_path) -> tuple[str, dict[str, Tensor]]:
    """DAN's resnet18_msceleb.pth: {'state_dict': torchvision keys incl. fc}, DataParallel prefix."""
    ref = randomise(resnet18(weights=None)).state_dict()
    path = tmp_path / "resnet18_msceleb.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.items()}, "epoch": 40}, path)
    return str(path), ref


def test_msceleb_resnet18_into_trunk(msceleb) -> None:
    path, ref = msceleb
    trunk = ResNet18Trunk(include_layer4=True)
    report = load_pretrained(trunk, path, "msceleb_resnet18")
    assert_same(trunk, ref)
    assert report.matched == len(trunk.state_dict()) and report.ignored == 2  # fc.weight, fc.bias


def test_models_load_msceleb_into_every_trunk(msceleb) -> None:
    path, ref = msceleb
    pcnn = create_model("pcnn", pretrained=path)
    for trunk in (pcnn.global_trunk, *pcnn.local_trunks.values()):
        assert_same(trunk, ref)
    cmnet = create_model("cmnet", pretrained=path)
    assert_same(cmnet.trunk, ref)
    assert torch.equal(create_model("resnet18", pretrained=path).trunk.layer4[1].conv2.weight,
                       ref["layer4.1.conv2.weight"])


def evolve_ir50() -> nn.Module:
    """face.evoLVe ``Backbone(input_size=112, num_layers=50, mode='ir')`` names: all 4 stages + output."""
    ref = IR50(num_stages=4)
    ref.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(), nn.Flatten(),
                                     nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512))
    return randomise(ref)


def test_ir50_face_evolve_layout(tmp_path) -> None:
    ref = evolve_ir50().state_dict()
    published = {"input_layer.0.weight", "input_layer.2.weight", "body.0.res_layer.0.running_mean",
                 "body.3.shortcut_layer.0.weight", "body.20.res_layer.3.weight",
                 "body.23.res_layer.4.running_var", "output_layer.3.weight"}
    assert published <= set(ref)
    path = tmp_path / "backbone_ir50_ms1m_epoch120.pth"
    torch.save(ref, path)
    model = create_model("ir50", pretrained=str(path))
    assert_same(model.backbone, ref)


def test_ir50_poster_v2_body_split(tmp_path) -> None:
    ref = evolve_ir50().state_dict()
    offsets = {"body1": (0, 3), "body2": (3, 7), "body3": (7, 21)}
    renamed = {}
    for key, value in ref.items():
        m = re.match(r"body\.(\d+)\.(.*)", key)
        if not m:
            renamed[key] = value
            continue
        unit = int(m.group(1))
        for stage, (lo, hi) in offsets.items():
            if lo <= unit < hi:
                renamed[f"{stage}.{unit - lo}.{m.group(2)}"] = value
    path = tmp_path / "ir50_posterv2.pth"
    torch.save(renamed, path)
    ir50 = IR50(num_stages=3)
    load_pretrained(ir50, path, "ir50")
    assert_same(ir50, ref)


def cunjian_mobilefacenet() -> dict[str, Tensor]:
    """State dict of cunjian's full MobileFaceNet (names read from models/mobilefacenet.py)."""
    ref = randomise(MobileFaceNetTrunk())
    ref.conv_45 = DepthWise(128, 128, groups=512, stride=2, residual=False)
    state = ref.state_dict()
    state["output_layer.conv_6_dw.conv.weight"] = torch.randn(512, 1, 7, 7)
    state["output_layer.linear.weight"] = torch.randn(136, 512)
    return state


def test_mobilefacenet_published_names_and_load(tmp_path) -> None:
    state = cunjian_mobilefacenet()
    published = {"conv1.conv.weight": (64, 3, 3, 3), "conv1.prelu.weight": (64,),
                 "conv2_dw.conv.weight": (64, 1, 3, 3), "conv_23.conv.conv.weight": (128, 64, 1, 1),
                 "conv_23.conv_dw.conv.weight": (128, 1, 3, 3), "conv_23.project.conv.weight": (64, 128, 1, 1),
                 "conv_3.model.3.project.bn.running_mean": (64,), "conv_34.project.conv.weight": (128, 256, 1, 1),
                 "conv_4.model.5.conv_dw.conv.weight": (256, 1, 3, 3)}
    own = MobileFaceNetTrunk().state_dict()
    assert {k: tuple(own[k].shape) for k in published} == published
    path = tmp_path / "mobilefacenet_model_best.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3, "best_nme": 0.1}, path)
    model = create_model("pcda", landmark_checkpoint=str(path), dim=64, heads=4)
    assert model.card.fields == ("image",) and "MobileFaceNet" in model.card.notes
    assert_same(model.landmark_backbone, state)
    assert not any(p.requires_grad for p in model.landmark_backbone.parameters())
    assert not model.train().landmark_backbone.training


def test_convnext_torchvision_layout(tmp_path) -> None:
    full = ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, 32, 1), CNBlockConfig(32, 64, 2),
                     CNBlockConfig(64, None, 1)])
    ref = full.state_dict()
    path = tmp_path / "convnext_base-6075fbad.pth"
    torch.save(ref, path)
    trunk = ConvNeXtTrunk(3, **TINY_CONVNEXT)
    report = load_pretrained(trunk, path, "convnext_torchvision")
    assert_same(trunk, ref)
    assert report.ignored > 0  # stage 4 and the classifier
    model = create_model("convcut", pretrained=str(path), **TINY_CONVNEXT)
    assert_same(model.backbone, ref)


def timm_names(tv: dict[str, Tensor]) -> dict[str, Tensor]:
    """Write a torchvision ConvNeXt state dict under timm's names (timm.models.convnext)."""
    sub = {"block.0": "conv_dw", "block.2": "norm", "block.3": "mlp.fc1", "block.5": "mlp.fc2"}
    out = {"head.norm.weight": torch.ones(64), "head.fc.weight": torch.randn(10, 64)}
    for key, value in tv.items():
        idx, rest = key.split(".", 2)[1:]
        i = int(idx)
        if i == 0:
            out[f"stem.{rest}"] = value
        elif i % 2 == 0:
            out[f"stages.{i // 2}.downsample.{rest}"] = value
        elif rest.endswith("layer_scale"):
            out[f"stages.{i // 2}.blocks.{rest.split('.')[0]}.gamma"] = value.flatten()
        else:
            block, part, kind = re.match(r"(\d+)\.(block\.\d)\.(\w+)", rest).groups()
            out[f"stages.{i // 2}.blocks.{block}.{sub[part]}.{kind}"] = value
    return out


def test_convnext_timm_layout(tmp_path) -> None:
    ref = randomise(ConvNeXtTrunk(3, **TINY_CONVNEXT)).state_dict()
    path = tmp_path / "convnext_base.fb_in22k_ft_in1k.pth"
    torch.save(timm_names(ref), path)
    trunk = ConvNeXtTrunk(3, **TINY_CONVNEXT)
    load_pretrained(trunk, path, "convnext_timm")
    assert_same(trunk, ref)


@pytest.mark.parametrize("cut", [2, 3])
def test_a_whole_timm_convnext_loads_into_a_cut_trunk(tmp_path, cut) -> None:
    """A real timm file holds all four stages and the head: the stages the trunk cuts off are
    ignored, not taken for another network's tensors inside its own parts."""
    full = randomise(ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, 32, 1), CNBlockConfig(32, 64, 2),
                               CNBlockConfig(64, None, 1)]))
    path = tmp_path / "convnext_base.fb_in22k_ft_in1k.pth"
    torch.save(timm_names({k: v for k, v in full.state_dict().items() if k.startswith("features.")}), path)
    trunk = ConvNeXtTrunk(cut, **TINY_CONVNEXT)
    assert load_pretrained(trunk, path, "convnext_timm").ignored > 0
    assert_same(trunk, full.state_dict())


def test_missing_tensor_fails_loudly(msceleb, tmp_path) -> None:
    _, ref = msceleb
    del ref["layer3.1.bn2.running_var"]
    path = tmp_path / "truncated.pth"
    torch.save({"state_dict": ref}, path)
    with pytest.raises(PretrainedMismatchError, match=r"1 missing \(layer3\.1\.bn2\.running_var\)"):
        load_pretrained(ResNet18Trunk(), path, "msceleb_resnet18")


def test_another_networks_file_whose_shapes_fit_is_refused(tmp_path) -> None:
    """An IR-SE-50 file (face.evoLVe's IR_SE_50, InsightFace_Pytorch's model_ir_se50.pth) holds every
    IR-50 tensor plus a squeeze-excitation at ``res_layer.5`` of each unit, and a ResNet-34 the first
    two blocks of each ResNet-18 stage plus more: both loaded, with the rest counted as unused, into
    a network that was neither pretrained nor random. Parts the trunk leaves out stay ignored."""
    ir_se = evolve_ir50().state_dict()
    for unit, depth in enumerate([64] * 3 + [128] * 4 + [256] * 14 + [512] * 3):
        ir_se[f"body.{unit}.res_layer.5.fc1.weight"] = torch.randn(depth // 16, depth, 1, 1)
        ir_se[f"body.{unit}.res_layer.5.fc2.weight"] = torch.randn(depth, depth // 16, 1, 1)
    path = tmp_path / "model_ir_se50.pth"
    torch.save(ir_se, path)
    with pytest.raises(PretrainedMismatchError, match=r"42 of its tensors .*body\.0\.res_layer\.5\.fc1\.weight"):
        load_pretrained(IR50(3), path, "ir50")           # units 21-23 (stage 4, left out) are not counted
    torch.save(resnet34(weights=None).state_dict(), path)
    with pytest.raises(PretrainedMismatchError, match=r"inside parts ResNet18Trunk has .*layer1\.2\.conv1\.weight"):
        load_pretrained(ResNet18Trunk(include_layer4=False), path, "msceleb_resnet18")
    torch.save(resnet18(weights=None).state_dict(), path)         # fc and layer4: parts it leaves out
    assert load_pretrained(ResNet18Trunk(include_layer4=False), path, "msceleb_resnet18").ignored == 32


def test_wrong_shape_fails_loudly(tmp_path) -> None:
    path = tmp_path / "ir50_as_resnet.pth"
    torch.save(IR50(3).state_dict(), path)
    with pytest.raises(PretrainedMismatchError, match="missing"):
        load_pretrained(ResNet18Trunk(), path, "msceleb_resnet18")
    ref = resnet18(weights=None).state_dict()
    ref["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(ref, path)
    with pytest.raises(PretrainedMismatchError, match=r"conv1\.weight: model \(64, 3, 7, 7\) vs checkpoint"):
        create_model("cmnet", pretrained=str(path))


def test_missing_file_unknown_layout_and_pickles(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_pretrained(ResNet18Trunk(), tmp_path / "nowhere.pth", "msceleb_resnet18")
    with pytest.raises(UnknownNameError, match="msceleb_resnet18"):
        load_pretrained(ResNet18Trunk(), tmp_path / "x.pth", "no_layout")
    path = tmp_path / "pickled_module.pth"
    torch.save({"state_dict": nn.Linear(2, 2)}, path)  # a whole module: needs unsafe unpickling
    with pytest.raises(PretrainedMismatchError, match="cannot be read as weights") as refused:   # never unpickled
        load_pretrained(nn.Linear(2, 2), path, "msceleb_resnet18")
    assert isinstance(refused.value.__cause__, pickle.UnpicklingError)
    said = str(refused.value)
    assert "(torch: Weights only load failed)" in said and "\x1b" not in said, said    # not its advice or ANSI codes


def test_ir50_stage_offsets_follow_the_3_4_14_3_units():
    """Bug guarded: a POSTER++ stage offset off by one (body4 at 20): body4.0 then overwrote body3's
    last unit, body.20. IR-50 has 3, 4, 14 and 3 units, so stages start at 0, 3, 7 and 21."""
    from fermodels.checkpoints import LAYOUTS

    keys = [f"body{s}.{n}.w" for s, units in zip(range(1, 5), (3, 4, 14, 3)) for n in range(units)]
    mapped = LAYOUTS.get("ir50")({k: torch.zeros(1) for k in keys})
    assert list(mapped) == [f"body.{i}.w" for i in range(24)]
    assert "body.20.w" in mapped and list(mapped)[keys.index("body4.0.w")] == "body.21.w"


@pytest.mark.parametrize("damage", ["cut", "html"])
def test_an_unreadable_pretrained_file_is_bad_input_told_in_one_line(tmp_path, damage):
    """A cut download of the pretrained weights (or an error page saved under its name) gave torch's
    RuntimeError / UnpicklingError with a traceback, from `dvc repro` and `fermodels` alike."""
    from ferdata.errors import is_user_error, message

    path = tmp_path / "resnet18_msceleb.pth"
    torch.save({"state_dict": ResNet18Trunk().state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "cut" else b"<html>404 Not Found</html>")
    with pytest.raises(PretrainedMismatchError) as caught:
        load_pretrained(ResNet18Trunk(), path, "msceleb_resnet18")
    assert is_user_error(caught.value), repr(caught.value)       # the DVC stages' policy (no extras)
    said = message(caught.value)
    assert f"'{path}' (msceleb_resnet18) cannot be read as weights" in said and "\n" not in said, said


def test_a_pretrained_file_of_another_network_is_bad_input_for_the_dvc_stages(tmp_path):
    """PretrainedMismatchError was bad input for the `fermodels` commands only (run_cli's extra): the
    train stage (`dvc repro`, pipeline/_args.install_excepthook) printed its traceback."""
    from ferdata.errors import is_user_error

    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(PretrainedMismatchError) as caught:
        load_pretrained(ResNet18Trunk(), tmp_path / "other.pth", "msceleb_resnet18")
    assert is_user_error(caught.value)


@pytest.mark.parametrize("prefix", ["_orig_mod.", "_orig_mod.module.", "module._orig_mod."])
def test_a_compiled_models_saved_weights_load_as_pretrained(tmp_path, prefix) -> None:
    """A backbone fine-tuned under torch.compile (and DDP) saves every name as ``_orig_mod.conv1.weight``:
    only DDP's ``module.`` was taken off, and the file was refused as missing every tensor."""
    ref = randomise(resnet18(weights=None)).state_dict()
    path = tmp_path / "compiled.pth"
    torch.save({f"{prefix}{k}": v for k, v in ref.items()}, path)
    trunk = ResNet18Trunk(include_layer4=True)
    load_pretrained(trunk, str(path), "msceleb_resnet18")
    assert_same(trunk, ref)


def test_an_averaged_models_file_loads_as_pretrained(tmp_path) -> None:
    """torch.optim.swa_utils.AveragedModel saves ``module.*`` beside its own ``n_averaged``: prefixes are taken
    off name by name, not only where every name has one."""
    averaged = torch.optim.swa_utils.AveragedModel(randomise(resnet18(weights=None)))
    path = tmp_path / "swa.pth"
    torch.save(averaged.state_dict(), path)
    assert "n_averaged" in averaged.state_dict()
    trunk = ResNet18Trunk(include_layer4=True)
    load_pretrained(trunk, str(path), "msceleb_resnet18")
    assert_same(trunk, averaged.module.state_dict())
