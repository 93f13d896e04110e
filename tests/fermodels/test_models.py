"""Contract tests over every registered model, then family-specific behaviour and cost checks."""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from fermodels.cli import app
from fermodels.examples import example_batch, synthetic_landmarks
from fermodels.info import model_info
from fermodels.losses import GLOBAL_BATCH, neutral_aware_anchor
from fermodels.registry import FIELDS, create_model, list_models

# Narrow ConvNeXt so the Conv-cut variants run in milliseconds; the real default is tested below.
TINY = {"convcut": dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), width=32),
        "convcut_paper": dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), width=32)}
EXPECTED = {"resnet18", "resnet18_112", "resnet18_heatmap", "resnet18_heatmap_112", "ir50", "cmnet", "pcnn", "pcda",
            "convcut", "convcut_paper"}
ALL = list_models()
# Non-default configurations that change the forward graph, run through the same contract.
VARIANTS = [pytest.param(n, {}, id=n) for n in ALL] + [
    pytest.param("pcnn", {"regions": "landmarks"}, id="pcnn-landmarks"),
    pytest.param("cmnet", {"mirror_right_half": True, "share_trunk": False}, id="cmnet-mirrored-unshared"),
    pytest.param("pcda", {"h_norm": "softmax", "depth": 1}, id="pcda-softmax-depth1"),
]


def build(name: str, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, **{**TINY.get(name, {}), **kwargs})


def export_batch_size(name: str) -> int:
    """2 where the graph mixes samples (batch attention), else 1 to keep CPU time down."""
    return 2 if name.startswith("convcut") else 1


class LogitsOnly(nn.Module):
    """Tensor-in / logits-out view of a model (ONNX and tracing need positional tensors)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.fields = model, model.card.fields

    def forward(self, *tensors: Tensor) -> Tensor:
        return self.model(dict(zip(self.fields, tensors)))["logits"]


def test_registry_has_every_model() -> None:
    assert EXPECTED <= set(ALL)


def test_a_class_count_below_two_is_refused_by_name() -> None:
    for bad in (-3, 0, 1, 2.5, True):
        with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
            create_model("resnet18_112", num_classes=bad)


@pytest.mark.parametrize("name, kwargs, says", [
    ("cmnet", {"alpha": 1.5}, "alpha must be in [0, 1]"),            # 1 - alpha < 0: halves pushed apart
    ("cmnet", {"alpha": -0.1}, "alpha must be in [0, 1]"),
    ("pcda", {"heatmap_sigma": 0.0}, "heatmap_sigma must be > 0"),   # 0/0: NaN logits
    ("pcda", {"heatmap_sigma": -1.0}, "heatmap_sigma must be > 0"),  # the square hid the sign
    ("pcda", {"neaa_weight": -0.01}, "neaa_weight must be >= 0"),
    ("pcda", {"depth": -1}, "depth must be >= 1 and mlp_ratio > 0"),  # built no block, silently
    ("pcda", {"depth": 0}, "depth must be >= 1 and mlp_ratio > 0"),   # the class token alone: one answer
    ("pcda", {"mlp_ratio": -2.0}, "depth must be >= 1 and mlp_ratio > 0"),
    ("pcnn", {"local_weight": -8.0}, "main_weight and local_weight must be >= 0"),
    ("pcda", {"heads": 0}, "dim and heads must be >= 1"),              # ZeroDivisionError: a traceback
    ("pcda", {"dim": 0}, "dim and heads must be >= 1"),                # a model without features
    ("pcda", {"heads": 0, "depth": 0}, "dim and heads must be >= 1"),
])
def test_a_weight_or_scale_out_of_its_range_is_refused_by_name(name: str, kwargs: dict, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        with torch.device("meta"):
            create_model(name, **kwargs)


@pytest.mark.parametrize("name", ALL)
def test_card_describes_model(name: str) -> None:
    card = build(name).card
    assert card.name == name and card.input_size in (112, 224)
    assert "image" in card.fields and set(card.fields) <= set(FIELDS)
    assert card.losses and card.paper and card.notes


@pytest.mark.parametrize("name, kwargs", VARIANTS)
def test_forward_backward_with_only_card_fields(name: str, kwargs: dict) -> None:
    model = build(name, **kwargs).train()
    batch = example_batch(model.card, batch_size=2)
    assert set(batch) == set(model.card.fields) | {"label"}
    out = model(batch)
    assert out["logits"].shape == (2, 7)
    losses = model.losses(out, batch)
    assert tuple(losses) == model.card.losses
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"trainable parameters unused in forward: {no_grad[:5]}"


# What the trainer puts in a batch for train.class_weights / train.label_smoothing: two values each.
EXTRAS = {"class_weight": (torch.ones(7), torch.tensor([1.0, 1e-3, 1, 1, 1, 1, 1])), "label_smoothing": (0.0, 0.3)}


@pytest.mark.parametrize("key", sorted(EXTRAS))
@pytest.mark.parametrize("name", ALL)
def test_class_weights_and_label_smoothing_reach_every_cross_entropy_term(name: str, key: str) -> None:
    model = build(name).eval()
    batch = example_batch(model.card, batch_size=2)
    one, other = EXTRAS[key]
    with torch.no_grad():
        out = model(batch)
        a, b = model.losses(out, {**batch, key: one}), model.losses(out, {**batch, key: other})
    changed = {k for k in a if not torch.allclose(a[k], b[k])}
    assert changed == {k for k in a if k.startswith("ce")}


@pytest.mark.parametrize("name", ALL)
def test_eval_is_deterministic_and_batch_size_one_works(name: str) -> None:
    model = build(name).eval()
    batch = example_batch(model.card, batch_size=1)
    with torch.no_grad():
        a, b = model(batch)["logits"], model(batch)["logits"]
    assert a.shape == (1, 7) and torch.equal(a, b)
    model.train()
    out = model(batch)
    assert all(torch.isfinite(v) for v in model.losses(out, batch).values())


@pytest.mark.parametrize("name", ALL)
def test_autocast_losses_stay_float32(name: str) -> None:
    """Mixed precision (the trainer's ``amp``): every loss comes back finite in float32."""
    model = build(name).train()
    batch = example_batch(model.card, batch_size=2)
    batch["label"] = torch.tensor([0, 0])  # a class with 2 samples: NeAA's pair term is exercised
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.losses(model(batch), batch)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("name", ALL)
def test_eight_classes(name: str) -> None:
    model = build(name, num_classes=8).eval()
    with torch.no_grad():
        assert model(example_batch(model.card, 2, num_classes=8))["logits"].shape == (2, 8)


@pytest.mark.parametrize("name", ALL)
def test_missing_field_is_named(name: str) -> None:
    model = build(name)
    batch = example_batch(model.card, 1)
    missing = model.card.fields[-1]
    del batch[missing]
    with pytest.raises(KeyError, match=missing):
        model(batch)


@pytest.mark.parametrize("name, kwargs", [("pcda", {}), ("pcnn", {"regions": "landmarks"})])
@pytest.mark.parametrize("bad", ["flat", "unbatched", "five_point", "xyz", "batch"])
def test_a_malformed_landmark_field_is_named(name: str, kwargs: dict, bad: str) -> None:
    """From the Python API: an IndexError deep in the model, a conv's channel error, or (x, y, z)
    points taken without a word."""
    model = build(name, **kwargs).eval()
    batch = example_batch(model.card, 2)
    lmk = batch["lmk"]
    batch["lmk"] = {"flat": lmk.reshape(2, 136), "unbatched": lmk[0], "five_point": lmk[:, :5],
                    "xyz": torch.cat([lmk, torch.zeros(2, 68, 1)], -1), "batch": lmk[[0, 1, 1]]}[bad]
    with pytest.raises(ValueError, match=r"batch\['lmk'\]"), torch.no_grad():
        model(batch)


@pytest.mark.parametrize("name", ["resnet18", "cmnet", "ir50"])
def test_an_image_without_three_channels_is_named(name: str) -> None:
    model = build(name).eval()
    batch = example_batch(model.card, 2)
    batch["image"] = batch["image"][:, :1]
    with pytest.raises(ValueError, match=r"batch\['image'\] of shape \(B, 3"), torch.no_grad():
        model(batch)


def test_half_faces_of_another_batch_size_are_named() -> None:
    model = build("cmnet").eval()
    batch = example_batch(model.card, 2)
    batch["left"] = batch["left"][[0, 1, 1]]
    with pytest.raises(ValueError, match=r"batch\['left'\] holds 3 samples, batch\['image'\] 2"), torch.no_grad():
        model(batch)


@pytest.mark.parametrize("name, kwargs", VARIANTS)
def test_the_ddp_probe_of_used_parameters_matches_what_the_training_loss_reaches(name: str, kwargs: dict) -> None:
    """The trainer tells DDP whether parameters go unused from one eval-mode forward pass (no
    gradients, no BatchNorm update): a parameter called there but not reached by the training
    loss (or the other way round) would hang or fail DDP's gradient reduction at the second step."""
    from fermodels.info import used_parameters

    model = build(name, **kwargs)
    batch = example_batch(model.card, 2)
    called = {id(p) for p in used_parameters(model.eval(), batch)}
    model.train()
    sum(model.losses(model(batch), batch).values()).backward()
    reached = {id(p) for p in model.parameters() if p.grad is not None}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert called & trainable == reached


@pytest.mark.parametrize("name, kwargs", VARIANTS)
def test_onnx_export_matches_torch(name: str, kwargs: dict, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = build(name, **kwargs).eval()
    batch = example_batch(model.card, export_batch_size(name))
    inputs = tuple(batch[f] for f in model.card.fields)
    wrapper = LogitsOnly(model).eval()
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, inputs, str(path), dynamo=False, opset_version=17,
                          input_names=list(model.card.fields), output_names=["logits"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {f: batch[f].numpy() for f in model.card.fields})[0]
    with torch.no_grad():
        want = wrapper(*inputs).numpy()
    assert got.shape == want.shape
    assert abs(got - want).max() < 1e-3


@pytest.mark.parametrize("name", ALL)
def test_jit_trace_matches_eager(name: str) -> None:
    model = build(name).eval()
    inputs = tuple(example_batch(model.card, export_batch_size(name))[f] for f in model.card.fields)
    wrapper = LogitsOnly(model).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, inputs, check_trace=False)
        assert torch.allclose(traced(*inputs), wrapper(*inputs), atol=1e-5)


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(KeyError, match="cmnet"):
        create_model("no_such_model")


# ---- CMNet -------------------------------------------------------------------------------

def test_mycbam_matches_public_parameter_count() -> None:
    from fermodels.models.cmnet import MyCBAM
    assert sum(p.numel() for p in MyCBAM(512).parameters()) == 82_569
    x = torch.randn(2, 512, 7, 7)
    assert MyCBAM(512).eval()(x).shape == x.shape


def test_cmnet_default_reproduces_public_split() -> None:
    """By default (mirror_right_half=False, as the public code) batch['right'] is flipped back:
    the trunk sees the raw right columns."""
    model = build("cmnet").eval()
    image = torch.randn(1, 3, 224, 224)
    batch = {"image": image, "left": image[..., :112], "right": torch.flip(image[..., 112:], dims=[3])}
    with torch.no_grad():
        out = model(batch)
        want = model.trunk.to_layer3(image[..., 112:]).mean(dim=(2, 3))
    assert torch.allclose(out["right_desc"], want, atol=1e-5)


def test_cmnet_mirrored_mode_feeds_mirrored_half_and_restores_layout() -> None:
    model = build("cmnet", mirror_right_half=True).eval()
    image = torch.randn(1, 3, 224, 224)
    right = torch.flip(image[..., 112:], dims=[3])
    with torch.no_grad():
        out = model({"image": image, "left": image[..., :112], "right": right})
        want = model.trunk.to_layer3(right).mean(dim=(2, 3))
    assert torch.allclose(out["right_desc"], want, atol=1e-5)


def test_cmnet_fuses_the_left_half_into_the_left_columns_of_the_whole_face_map() -> None:
    """Guards against the halves' maps fused in swapped order: X = T(whole) + concat_W(T(left), T(right)),
    so layer4 must receive T(whole) + T(left) in its left 7 columns (at 224: 14 x 14 layer3 maps) and
    T(whole) + T(right columns, un-mirrored) in its right 7."""
    torch.manual_seed(0)
    model = build("cmnet").eval()
    image = torch.randn(1, 3, 224, 224)
    batch = {"image": image, "left": image[..., :112], "right": torch.flip(image[..., 112:], dims=[3])}
    seen = []
    hook = model.trunk.layer4.register_forward_pre_hook(lambda _mod, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            model(batch)
            whole = model.trunk.to_layer3(image)
            left, right = model.trunk.to_layer3(image[..., :112]), model.trunk.to_layer3(image[..., 112:])
    finally:
        hook.remove()
    (fused,) = seen
    assert fused.shape == whole.shape == (1, 256, 14, 14) and left.shape[-1] == right.shape[-1] == 7
    assert (left - right).abs().max() > 0.1, "the halves must differ for the test to see a swap"
    torch.testing.assert_close(fused[..., :7], whole[..., :7] + left, atol=1e-4, rtol=0)
    torch.testing.assert_close(fused[..., 7:], whole[..., 7:] + right, atol=1e-4, rtol=0)


def test_cmnet_rejects_wrong_half_width_and_can_unshare() -> None:
    model = build("cmnet")
    batch = example_batch(model.card, 1)
    batch["left"] = torch.randn(1, 3, 224, 224)
    with pytest.raises(ValueError, match="left"):
        model(batch)
    shared = sum(p.numel() for p in model.parameters())
    unshared = sum(p.numel() for p in build("cmnet", share_trunk=False).parameters())
    assert unshared > shared


# ---- PCNN --------------------------------------------------------------------------------

def test_pcnn_fixed_regions_follow_public_code() -> None:
    from fermodels.models.pcnn import region_sizes
    assert region_sizes(224) == {"eye_left": (112, 112), "eye_right": (112, 112),
                                 "cheek_left": (33, 112), "cheek_right": (33, 112), "mouth": (79, 224)}
    model = build("pcnn").eval()
    crops = model.crops(example_batch(model.card, 1))
    maps = {k: model.local_trunks[k].to_layer3(v).shape[-2:] for k, v in crops.items()}
    assert maps == {"eye_left": (7, 7), "eye_right": (7, 7), "cheek_left": (3, 7),
                    "cheek_right": (3, 7), "mouth": (5, 14)}


def test_pcnn_mosaic_puts_the_image_left_eye_in_the_image_left_tile() -> None:
    """Guards against the two eye tiles swapped in the mosaic. Region names are image-left / image-right
    (ferdata.regions: ``eye_left`` is columns 0..size/2, the subject's right eye) and the mosaic keeps
    face layout, so a map that is ones only in ``eye_left`` must light the top rows' left 7 columns of
    the 14 x 14 mosaic and leave the right 7 columns dark."""
    model = build("pcnn").eval()
    shapes = {"eye_left": (7, 7), "eye_right": (7, 7), "cheek_left": (3, 7), "cheek_right": (3, 7),
              "mouth": (5, 14)}                                                  # layer3 maps at 224
    maps = {k: (torch.ones if k == "eye_left" else torch.zeros)(1, 2, *hw) for k, hw in shapes.items()}
    with torch.no_grad():
        out = model.mosaic(maps, torch.zeros(1, 2, 14, 14))
    assert out.shape == (1, 2, 14, 14)
    # 15 tile rows (7 eyes + 3 cheeks + 5 mouth) resized to 14: output rows 0..5 sample eye rows only
    torch.testing.assert_close(out[..., :6, :7], torch.ones(1, 2, 6, 7))
    assert torch.equal(out[..., 7:], torch.zeros(1, 2, 14, 7))


def test_pcnn_stn_starts_at_identity() -> None:
    model = build("pcnn").eval()
    with torch.no_grad():
        theta = model(example_batch(model.card, 2))["theta"]
    assert torch.allclose(theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3))
    from fermodels.models.pcnn import _affine_grid
    theta = torch.randn(2, 2, 3)
    want = torch.nn.functional.affine_grid(theta, (2, 1, 14, 14), align_corners=True)
    assert torch.allclose(_affine_grid(theta, 14, 14), want, atol=1e-6)


def test_synthetic_landmarks_are_a_mirror_symmetric_face_about_the_crop_centre() -> None:
    from ferdata.geometry import flip_landmarks
    for size in (112, 224):
        lmk = synthetic_landmarks(size).numpy()
        assert np.allclose(flip_landmarks(lmk, size), lmk, atol=1e-3)     # the flip maps it onto itself
        assert np.allclose(lmk[27:31, 0], (size - 1) / 2)                  # nose bridge on the centre pixel


def test_pcnn_landmark_regions_have_fixed_crop_sizes() -> None:
    model = build("pcnn", regions="landmarks")
    assert model.card.fields == ("image", "lmk")
    crops = model.crops(example_batch(model.card, 2))
    assert {k: tuple(v.shape[-2:]) for k, v in crops.items()} == model.sizes
    from ferdata.regions import landmark_regions
    from fermodels.models.pcnn import REGIONS, landmark_boxes
    lmk = synthetic_landmarks(224)
    lmk[:3] -= 30  # push some jaw points outside the crop: boxes are clipped like the pipeline's
    boxes = landmark_boxes(lmk[None], 224)[0]
    want = landmark_regions(lmk.numpy(), 224)
    assert torch.allclose(boxes, torch.tensor([want[r] for r in REGIONS]), atol=0.01)
    centres = dict(zip(REGIONS, ((boxes[:, :2] + boxes[:, 2:]) / 2).tolist()))
    assert centres["eye_left"][0] < 112 < centres["eye_right"][0]
    assert centres["eye_left"][1] < centres["cheek_left"][1] < centres["mouth"][1]
    with pytest.raises(ValueError, match="regions"):
        build("pcnn", regions="random")


# ---- PCDA --------------------------------------------------------------------------------

@pytest.mark.parametrize("h_norm", ["sigmoid", "raw", "minmax", "softmax"])
def test_pcda_heatmap_normalisations(h_norm: str) -> None:
    model = build("pcda", h_norm=h_norm, dim=64, heads=4).eval()
    with torch.no_grad():
        out = model(example_batch(model.card, 2))
    assert out["features"].shape == (2, 64) and out["heatmap"].shape == (2, 1, 14, 14)
    if h_norm == "minmax":
        assert out["heatmap"].amin() >= 0 and out["heatmap"].amax() <= 1
    if h_norm == "softmax":
        assert torch.allclose(out["heatmap"].mean(dim=(1, 2, 3)), torch.ones(2), atol=1e-5)


def test_pcda_computes_neaa_through_the_global_batch_it_is_handed() -> None:
    """Under DDP the trainer hands the losses a GlobalBatch (``batch[GLOBAL_BATCH]``): PCDA's
    NeAA goes through it with the features, logits and labels; its CE stays on the rank's rows."""
    model = build("pcda", dim=64, heads=4).eval()
    batch = {**example_batch(model.card, 4), "label": torch.tensor([0, 0, 3, 3])}
    with torch.no_grad():
        out = model(batch)
    calls = []

    class Whole:
        def loss(self, fn, *rows):
            calls.append((fn, rows))
            return torch.tensor(3.0)

    got, alone = model.losses(out, {**batch, GLOBAL_BATCH: Whole()}), model.losses(out, batch)
    (fn, (features, logits, labels)), = calls
    assert fn is neutral_aware_anchor and features is out["features"] and logits is out["logits"]
    assert torch.equal(labels, batch["label"])
    assert got["neaa"].item() == pytest.approx(model.neaa_weight * 3.0) != alone["neaa"].item()
    assert torch.equal(got["ce"], alone["ce"])


def test_pcda_drop_ratio_is_the_papers_and_only_acts_in_training() -> None:
    """Nie et al. §4.2: "the drop ratio is 0.5" in the cross-attention ViT: by default the
    tokens, the attention output and the MLP drop at 0.5 in training; eval is deterministic;
    drop=0 removes it, with the same parameters (checkpoints of either load into the other)."""
    torch.manual_seed(0)
    model = build("pcda", dim=64, heads=4)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)].count(0.5) == 3   # tokens + 2 blocks
    batch = example_batch(model.card, 2)
    with torch.no_grad():
        model.train()
        a, b = model(batch)["features"], model(batch)["features"]
        model.eval()
        c, d = model(batch)["features"], model(batch)["features"]
    assert not torch.allclose(a, b) and torch.equal(c, d)
    plain = build("pcda", dim=64, heads=4, drop=0.0)
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        plain.train()
        assert torch.allclose(plain(batch)["features"], plain(batch)["features"])


def test_pcda_rejects_unknown_h_norm() -> None:
    with pytest.raises(ValueError, match="h_norm"):
        build("pcda", h_norm="tanh")


def test_pcda_gaussians_peak_on_the_image_features_cell_of_each_landmark() -> None:
    """The maps multiply IR-50's 14 x 14 features: a landmark over the pixel a feature cell is centred
    on (found from IR-50's own gradients) peaks at exactly 1 there. The former cell-middle centres
    sat 3.5 px down-right of the features, peaking a cell off for a third of the positions."""
    from fermodels.models.backbones import IR50
    from fermodels.models.pcda import GaussianLandmarkEncoder

    torch.manual_seed(0)
    trunk, x = IR50(num_stages=3).eval(), torch.randn(1, 3, 112, 112, requires_grad=True)
    trunk(x)[0, :, 6, 9].sum().backward()
    weight = x.grad.abs().sum((0, 1))
    centre_y = float((weight.sum(1) * torch.arange(112.0)).sum() / weight.sum())
    centre_x = float((weight.sum(0) * torch.arange(112.0)).sum() / weight.sum())
    assert abs(centre_y - 48) < 1.5 and abs(centre_x - 72) < 1.5, (centre_y, centre_x)
    lmk = torch.full((1, 68, 2), 4.0)
    lmk[0, 5] = torch.tensor([72.0, 48.0])                     # x, y: over feature cell (row 6, col 9)
    lmk[0, 6] = torch.tensor([61.0, 94.0])                     # nearest cell centres: (12, 8)
    maps = GaussianLandmarkEncoder(112, 14).render(lmk)
    assert maps.shape == (1, 68, 14, 14)
    assert float(maps[0, 5, 6, 9]) == pytest.approx(1.0) and int(maps[0, 5].argmax()) == 6 * 14 + 9
    assert divmod(int(maps[0, 6].argmax()), 14) == (12, 8)
    old = GaussianLandmarkEncoder(112, 14, centres="cells").render(lmk)      # checkpoints saved before
    assert divmod(int(old[0, 6].argmax()), 14) == (11, 7)
    with pytest.raises(ValueError, match="heatmap_centres must be one of"):
        GaussianLandmarkEncoder(112, 14, centres="middle")


def _cross_attention_block(zeroed: tuple[str, ...]) -> nn.Module:
    """A small pre-LN cross-attention block (no dropout) with the named Linear layers zeroed."""
    from fermodels.models.pcda import CrossAttentionBlock

    torch.manual_seed(0)
    block = CrossAttentionBlock(dim=64, heads=4, mlp_ratio=2.0, drop=0.0).eval()
    layers = {"proj": block.proj, "mlp_out": block.mlp[-1]}
    with torch.no_grad():
        for name in zeroed:
            layers[name].weight.zero_()
            layers[name].bias.zero_()
    return block


def test_pcda_block_with_zero_attention_and_mlp_outputs_returns_the_fusion_tokens() -> None:
    """Guards against a dropped residual (t' = t_F + Proj(attn), t_F = t' + MLP(LN(t'))): with the output
    projection and the MLP's last Linear zeroed both branches add nothing, so the block is the identity
    on the fusion tokens (it returned zeros when the MLP's residual was lost)."""
    block = _cross_attention_block(("proj", "mlp_out"))
    lm, fusion = torch.randn(2, 10, 64), torch.randn(2, 10, 64)
    with torch.no_grad():
        out = block(lm, fusion)
    torch.testing.assert_close(out, fusion, atol=1e-6, rtol=0)


def test_pcda_block_attention_is_per_head_scaled_dot_product_attention() -> None:
    """Guards against the wrong softmax temperature (d^-1/2 for the head's (d/heads)^-1/2): with the MLP's
    last Linear zeroed, the block must equal t_F + Proj(multi-head attention) computed here with
    torch's scaled_dot_product_attention from the block's own LayerNorms and q / kv / proj layers."""
    block = _cross_attention_block(("mlp_out",))
    b, n, d, h = 2, 10, 64, 4
    g = torch.Generator().manual_seed(1)
    lm, fusion = torch.randn(b, n, d, generator=g) * 2, torch.randn(b, n, d, generator=g) * 2
    with torch.no_grad():
        out = block(lm, fusion)

        def heads(t: Tensor) -> Tensor:                  # (b, n, d) -> (b, h, n, d / h)
            return t.reshape(b, n, h, d // h).transpose(1, 2)

        q = heads(block.q(block.norm_lm(lm)))
        kv = block.kv(block.norm_fusion(fusion))          # the first d outputs are K, the next d V
        k, v = heads(kv[..., :d]), heads(kv[..., d:])
        attended = torch.nn.functional.scaled_dot_product_attention(q, k, v)   # scale 1 / sqrt(d / h)
        want = fusion + block.proj(attended.transpose(1, 2).reshape(b, n, d))
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)


# ---- Conv-cut ----------------------------------------------------------------------------

def test_convcut_paper_leaks_across_batch_and_convcut_does_not() -> None:
    torch.manual_seed(1)
    a, b, c = (torch.randn(1, 3, 224, 224) for _ in range(3))
    for name, leaks in (("convcut_paper", True), ("convcut", False)):
        model = build(name).eval()
        with torch.no_grad():
            with_b = model({"image": torch.cat([a, b])})["logits"][0]
            with_c = model({"image": torch.cat([a, c])})["logits"][0]
            alone = model({"image": a})["logits"][0]
        assert torch.allclose(with_b, with_c, atol=1e-5) is not leaks, name
        assert torch.allclose(with_b, alone, atol=1e-5) is not leaks, name


def test_convcut_frozen_backbone_stays_frozen_and_in_eval() -> None:
    model = build("convcut").train()
    assert not model.backbone.training and model.det.training
    assert not any(p.requires_grad for p in model.backbone.parameters())
    trainable = build("convcut", freeze_backbone=False).train()
    assert trainable.backbone.training and all(p.requires_grad for p in trainable.backbone.parameters())


def test_convcut_cut_stage_two_gives_three_by_three_tokens() -> None:
    model = build("convcut", cut_stage=2).eval()
    with torch.no_grad():
        det = model.det(model.backbone(torch.randn(1, 3, 224, 224)))
    assert det.shape == (1, 32, 3, 3)
    with pytest.raises(ValueError, match="cut_stage"):
        build("convcut", cut_stage=4)


def test_convcut_default_is_real_convnext_base() -> None:
    model = create_model("convcut", cut_stage=3).train()
    depths = [len(model.backbone.features[i]) for i in (1, 3, 5)]
    assert depths == [3, 3, 27] and len(model.backbone.features) == 6
    assert model.backbone.out_channels == 512
    batch = example_batch(model.card, 2)
    sum(model.losses(model(batch), batch).values()).backward()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 209_159


@pytest.mark.parametrize("name", ["convcut", "convcut_paper"])
def test_convcut_default_truncates_the_third_and_fourth_stages_as_the_paper_says(name: str) -> None:
    """Conv-cut §3: "the third and fourth stages of ConvNeXt-Base are truncated" - the default keeps
    the stem and stages 1-2 (256 x 28 x 28 at 224), not stage 3; an old checkpoint that did not store
    cut_stage was trained with the former default, 3."""
    from fermodels.runstate import FORMER_DEFAULTS
    model = create_model(name)
    assert len(model.backbone.features) == 4 and model.backbone.out_channels == 256
    assert FORMER_DEFAULTS[(name, "cut_stage")] == 3


@pytest.mark.slow
def test_convcut_default_exports_to_onnx(tmp_path) -> None:
    """The real ConvNeXt-Base cut at stage 3 (a 240 MB ONNX file)."""
    model = create_model("convcut", cut_stage=3).eval()
    image = example_batch(model.card, 1)["image"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(LogitsOnly(model).eval(), (image,), str(tmp_path / "convcut.onnx"),
                          dynamo=False, opset_version=17, input_names=["image"])
    assert (tmp_path / "convcut.onnx").stat().st_size > 200e6


# ---- cost (seed_models.md measurements of the public code) -------------------------------

@pytest.mark.parametrize("name, params_m, gmacs", [
    ("cmnet", 11.26, 3.22), ("pcnn", 25.9, 3.68), ("ir50", 17.61, 5.47)])
def test_info_matches_public_code_measurement(name: str, params_m: float, gmacs: float) -> None:
    info = model_info(name)
    assert info.card.name == name                            # the measured model's own card
    assert info.params_used / 1e6 == pytest.approx(params_m, rel=0.05)
    assert info.macs / 1e9 == pytest.approx(gmacs, rel=0.05)


def test_info_counts_shared_modules_once_and_skips_unused() -> None:
    from fermodels.info import used_parameters
    shared = nn.Linear(4, 4)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.unused = shared, nn.Linear(4, 50)

        def forward(self, batch: dict) -> dict:
            return {"logits": self.a(self.a(batch["x"]))}

    used = used_parameters(Twice(), {"x": torch.randn(1, 4)})
    assert sum(p.numel() for p in used) == 20


def test_cli_info_and_list() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["info", "cmnet"])
    assert result.exit_code == 0, result.output
    assert "11.26 M" in result.output and "3.22 G" in result.output and "224" in result.output
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0 and EXPECTED <= set(result.output.split())
    assert "11.18 M used" in runner.invoke(app, ["info", "resnet18_112", "--num-classes", "8"]).output
    for n in (3, 9, 100):                   # sizes of a model train.num_classes refuses were printed
        result = runner.invoke(app, ["info", "resnet18_112", "--num-classes", str(n)])
        assert isinstance(result.exception, ValueError) and "num_classes must be 7 or 8" in str(result.exception)


def test_a_card_with_one_half_face_is_refused():
    """A horizontal flip swaps the halves (augmentation, test-time flips): one alone raised a KeyError there."""
    from fermodels.registry import ModelCard

    with pytest.raises(ValueError, match="both half-faces, 'left' and 'right', or neither"):
        ModelCard("x", 112, ("image", "left"), ("ce",), "paper")
    assert ModelCard("x", 112, ("image", "left", "right"), ("ce",), "paper").fields[1:] == ("left", "right")


def test_the_heatmap_baseline_reads_the_heatmap_at_its_layer2_features_centres() -> None:
    """Layer-2 feature k of ResNet-18 sits over input pixel 8 k (gradient centroid); the stored
    heatmap (stride 4, cells centred at 4 j + 1.5) must weigh it with the value there, so a landmark
    on that pixel weighs its own cell most and its two neighbours alike; the former 2 x 2 average
    (checkpoints saved before) centred the cells 3.5 px right of and below the features."""
    from ferdata.heatmap import gaussian_heatmaps
    from fermodels.models.backbones import ResNet18Trunk
    from fermodels.models.baselines import heatmap_at_layer2

    torch.manual_seed(0)
    t, x = ResNet18Trunk(include_layer4=False).eval(), torch.randn(1, 3, 112, 112, requires_grad=True)
    t.layer2(t.layer1(t.maxpool(t.relu(t.bn1(t.conv1(x))))))[0, :, 6, 9].sum().backward()
    weight = x.grad.abs().sum((0, 1))
    centre_y = float((weight.sum(1) * torch.arange(112.0)).sum() / weight.sum())
    centre_x = float((weight.sum(0) * torch.arange(112.0)).sum() / weight.sum())
    assert abs(centre_y - 48) < 1.5 and abs(centre_x - 72) < 1.5, (centre_y, centre_x)
    heat = gaussian_heatmaps(torch.tensor([[72.0, 48.0]]), 28, sigma=1.0, stride=4.0).amax(0)[None, None]
    at = heatmap_at_layer2(heat)[0, 0]
    assert at.shape == (14, 14) and divmod(int(at.argmax()), 14) == (6, 9)
    assert float(at[6, 8]) == pytest.approx(float(at[6, 10]), rel=0.05)      # even on either side (linear reads)
    assert float(at[5, 9]) == pytest.approx(float(at[7, 9]), rel=0.05)
    old = heatmap_at_layer2(heat, "cells")[0, 0]
    assert float(old[6, 8]) > 2 * float(old[6, 10])                                   # pulled to the right
    torch.testing.assert_close(heatmap_at_layer2(torch.ones(2, 1, 28, 28)), torch.ones(2, 1, 14, 14))
    with pytest.raises(ValueError, match="heatmap_centres must be one of"):
        build("resnet18_heatmap_112", heatmap_centres="middle")


def test_the_heatmap_baseline_is_resnet18_where_the_heatmap_is_dark_and_reads_it_elsewhere() -> None:
    """F * (1 + H): with H = 0 the network is resnet18 with the same weights; a heatmap changes the
    prediction, through the feature cells it covers; a heatmap of the wrong grid is named."""
    net = build("resnet18_heatmap_112").eval()
    plain = build("resnet18_112").eval()
    plain.load_state_dict(net.state_dict())
    batch = example_batch(net.card, batch_size=2)
    with torch.no_grad():
        dark = net({**batch, "heatmap": torch.zeros_like(batch["heatmap"])})["logits"]
        torch.testing.assert_close(dark, plain({"image": batch["image"]})["logits"])
    heat = torch.zeros_like(batch["heatmap"], requires_grad=True)
    net({**batch, "heatmap": heat})["logits"][:, 0].sum().backward()
    assert heat.grad.abs().amax(dim=(1, 2, 3)).min() > 0                       # every face reads its heatmap
    with pytest.raises(ValueError, match=r"expects batch\['heatmap'\] of shape \(B, 1, 28, 28\)"):
        net({**batch, "heatmap": torch.zeros(2, 1, 56, 56)})


def test_convcut_self_attention_rows_are_softmax_over_keys() -> None:
    """Bug guarded: the softmax taken over the wrong axis of Y Y^T / sqrt(d) (columns, not rows):
    each output must be a convex mix of the inputs with weights softmax_j(y_i . y_j / sqrt(d))."""
    import math

    from fermodels.models.convcut import self_attention

    y = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]], dtype=torch.float64)
    rows = y[0].tolist()
    expected = []
    for yi in rows:
        w = [math.exp(sum(a * b for a, b in zip(yi, yj)) / math.sqrt(2)) for yj in rows]
        expected.append([sum(wj * yj[c] for wj, yj in zip(w, rows)) / sum(w) for c in range(2)])
    torch.testing.assert_close(self_attention(y), torch.tensor([expected], dtype=torch.float64))


@pytest.mark.parametrize("name, key", [("pcda", "lmk"), ("resnet18_heatmap_112", "heatmap"), ("cmnet", "right")])
@pytest.mark.parametrize("rows", [[0], [0, 1, 1]], ids=["fewer", "more"])
def test_a_field_of_another_batch_size_than_the_image_is_named(name: str, key: str, rows: list) -> None:
    """Fewer samples than the image too (not only more), and the heatmap too."""
    model = build(name).eval()
    batch = example_batch(model.card, 2)
    batch[key] = batch[key][rows]
    with pytest.raises(ValueError, match=rf"batch\['{key}'\] holds {len(rows)} samples, batch\['image'\] 2"), \
            torch.no_grad():
        model(batch)
