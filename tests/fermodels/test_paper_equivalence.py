"""Independent re-implementations (seed_models.md §2.3, §3.3; Nie et al. Eqs. 6-10) compared with the models.

They pin what the other model tests check only in parts (myCBAM by its parameter count, PCNN by its regions,
mosaic and STN init separately): a quadrant of myCBAM swapped, or NeAA's neutral divisor (n - 1)^2 made n^2,
passed every other test.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fermodels.losses import neutral_aware_anchor
from fermodels.models.convcut import SeparableConv2d
from fermodels.registry import create_model


def _cbam_by_spec(m, x):
    """myCBAM as seed_models.md §2.3 describes it: quadrants split at int(h/2), int(w/2) (TL, TR, BL, BR),
    shared MLP on the concatenated avg and max pools; 4 channel groups tiled g1 over g2 | g3 over g4."""
    h, w = x.shape[2] // 2, x.shape[3] // 2
    quads = [x[:, :, :h, :w], x[:, :, :h, w:], x[:, :, h:, :w], x[:, :, h:, w:]]
    avg = torch.cat([q.mean((2, 3)) for q in quads], 1)
    mx = torch.cat([q.amax((2, 3)) for q in quads], 1)
    x = x * torch.sigmoid(m.mlp(avg) + m.mlp(mx))[:, :, None, None]
    groups = x.chunk(4, 1)
    maps = [torch.stack([g.amax(1), g.mean(1)], 1) for g in groups]
    mosaic = torch.cat([torch.cat(maps[:2], 2), torch.cat(maps[2:], 2)], 3)
    return x * torch.sigmoid(m.spatial_pool(m.spatial_bn(m.spatial_conv(mosaic))))


def test_cmnet_forward_is_model_5_on_the_unmirrored_split() -> None:
    torch.manual_seed(0)
    net = create_model("cmnet").eval()
    img = torch.randn(2, 3, 224, 224)
    out = net({"image": img, "left": img[..., :112], "right": img[..., 112:].flip(-1)})
    t = net.trunk
    fused = t.to_layer3(img) + torch.cat([t.to_layer3(img[..., :112]), t.to_layer3(img[..., 112:])], 3)
    want = net.fc(_cbam_by_spec(net.attention, t.layer4(fused)).mean((2, 3)))
    torch.testing.assert_close(out["logits"], want, rtol=1e-4, atol=1e-5)


def test_pcnn_forward_is_the_public_forward() -> None:
    torch.manual_seed(0)
    p = create_model("pcnn", stn_identity_init=False).eval()
    x = torch.randn(2, 3, 224, 224)
    cuts = {"eye_left": x[:, :, :112, :112], "eye_right": x[:, :, :112, 112:], "cheek_left": x[:, :, 112:145, :112],
            "cheek_right": x[:, :, 112:145, 112:], "mouth": x[:, :, 145:, :]}
    f = {k: p.local_trunks[k].to_layer3(v) for k, v in cuts.items()}
    whole = p.global_trunk.to_layer3(x)
    tiles = torch.cat([torch.cat([f["eye_left"], f["eye_right"]], 3), torch.cat([f["cheek_left"], f["cheek_right"]], 3),
                       f["mouth"]], 2)
    mosaic = F.interpolate(tiles, size=(14, 14), mode="bilinear", align_corners=True)
    theta = p.fc_loc(p.global_trunk.layer4(mosaic).flatten(1)).view(-1, 2, 3)
    warped = F.grid_sample(mosaic, F.affine_grid(theta, list(whole.shape), align_corners=True), align_corners=True)
    out = p({"image": x})
    torch.testing.assert_close(out["logits"], p.fc(p.global_trunk.layer4(whole + warped).mean((2, 3))),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["local_logits"], sum(p.local_heads[k](v.mean((2, 3))) for k, v in f.items()))


def _neaa_by_the_equations(f, logits, y, neutral=0):
    p = torch.softmax(logits, -1)
    entropy = -(p * p.log()).sum(-1)
    total = f.sum() * 0
    for c in y.unique().tolist():
        idx = (y == c).nonzero().flatten().tolist()
        if c == neutral:                                            # Eq. 9
            if len(idx) > 1:
                pairs = sum(((f[i] - f[j]) ** 2).mean() for i in idx for j in idx if i != j)
                total = total + pairs / (len(idx) - 1) ** 2
        else:                                                       # Eqs. 6-8
            a = idx[int(entropy[idx].argmin())]
            total = total + sum(((f[i] - f[a]) ** 2).mean() for i in idx) / len(idx)
    return total


def test_neaa_value_and_gradient_are_eqs_6_to_10_on_random_batches() -> None:
    g = torch.Generator().manual_seed(0)
    for trial in range(50):
        b = 1 + trial % 17
        f = torch.randn(b, 12, generator=g, dtype=torch.float64) * 3
        logits = torch.randn(b, 7, generator=g, dtype=torch.float64)
        y = torch.randint(0, 1 + trial % 7, (b,), generator=g)
        f1, f2 = f.clone().requires_grad_(), f.clone().requires_grad_()
        got, want = neutral_aware_anchor(f1, logits, y), _neaa_by_the_equations(f2, logits, y)
        (g1,), (g2,) = torch.autograd.grad(got, f1), torch.autograd.grad(want, f2, allow_unused=True)
        assert math.isclose(got.item(), want.item(), rel_tol=1e-5, abs_tol=1e-6)
        torch.testing.assert_close(g1, torch.zeros_like(f) if g2 is None else g2, rtol=1e-4, atol=1e-6)


def test_separable_conv_same_padding_is_tensorflows() -> None:
    for n in (7, 9, 14, 28, 30):
        conv = SeparableConv2d(2, 3, 4, 4, "same")
        assert conv(torch.randn(1, 2, n, n)).shape[-1] == math.ceil(n / 4)
