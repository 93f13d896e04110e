"""Backbone trunks shared by the model families, named so published checkpoints map onto them.

* :class:`ResNet18Trunk` - torchvision ResNet-18 children (``conv1`` ... ``layer3``/``layer4``)
  under torchvision's own names, so an MS-Celeb-1M ``resnet18_msceleb.pth`` loads key for key.
* :class:`IR50` - the ArcFace "IR" ResNet-50 of face.evoLVe, stages 1-3 (256 x 14 x 14 at 112),
  under face.evoLVe's names (``input_layer``, ``body.N``).
* :class:`MobileFaceNetTrunk` - cunjian's 68-point landmark MobileFaceNet up to ``conv_4``
  (128 x 14 x 14 at 112), under cunjian's names.
* :class:`ConvNeXtTrunk` - torchvision ConvNeXt (Base by default) cut after stage 2 or 3, under
  torchvision's ``features.N`` names.

Only the modules a forward pass uses are constructed (no unused output layers), so parameter
counts and ``load_pretrained`` checks see exactly what the model runs.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torchvision.models import convnext_base, resnet18
from torchvision.models.convnext import CNBlockConfig, ConvNeXt


class ResNet18Trunk(nn.Module):
    """torchvision ResNet-18 without ``avgpool``/``fc``; ``layer4`` only when asked for."""

    def __init__(self, include_layer4: bool = True) -> None:
        super().__init__()
        net = resnet18(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        self.layer4 = net.layer4 if include_layer4 else None

    def to_layer3(self, x: Tensor) -> Tensor:
        """conv1 ... layer3: 256 channels at 1/16 resolution."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x: Tensor) -> Tensor:
        x = self.to_layer3(x)
        return self.layer4(x) if self.layer4 is not None else x


class BottleneckIR(nn.Module):
    """ArcFace IR unit: BN-conv3x3-PReLU-conv3x3(stride)-BN plus a (pooled or projected) shortcut."""

    def __init__(self, in_channels: int, depth: int, stride: int) -> None:
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


IR50_STAGES = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))


class IR50(nn.Module):
    """IR-50 stem + the first ``num_stages`` stages; ``body`` indices follow face.evoLVe."""

    def __init__(self, num_stages: int = 3) -> None:
        super().__init__()
        if not 1 <= num_stages <= 4:
            raise ValueError(f"IR-50 has 4 stages, got num_stages={num_stages}")
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units: list[nn.Module] = []
        for in_ch, depth, n in IR50_STAGES[:num_stages]:
            units.append(BottleneckIR(in_ch, depth, 2))
            units.extend(BottleneckIR(depth, depth, 1) for _ in range(n - 1))
        self.body = nn.Sequential(*units)
        self.out_channels = IR50_STAGES[num_stages - 1][1]

    def forward(self, x: Tensor) -> Tensor:
        return self.body(self.input_layer(x))


class ConvBlock(nn.Module):
    """conv (no bias) + BN + PReLU, cunjian's ``Conv_block``."""

    def __init__(self, in_c: int, out_c: int, kernel: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_c)
        self.prelu = nn.PReLU(out_c)

    def forward(self, x: Tensor) -> Tensor:
        return self.prelu(self.bn(self.conv(x)))


class LinearBlock(nn.Module):
    """conv (no bias) + BN, no activation, cunjian's ``Linear_block``."""

    def __init__(self, in_c: int, out_c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_c)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand, 3x3 depthwise (stride), 1x1 linear projection."""

    def __init__(self, in_c: int, out_c: int, groups: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.conv = ConvBlock(in_c, groups)
        self.conv_dw = ConvBlock(groups, groups, 3, stride, 1, groups=groups)
        self.project = LinearBlock(groups, out_c)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.conv_dw(self.conv(x)))
        return x + y if self.residual else y


class Residual(nn.Module):
    """A stack of residual :class:`DepthWise` units (``model.N`` as in cunjian's code)."""

    def __init__(self, channels: int, num_block: int, groups: int) -> None:
        super().__init__()
        self.model = nn.Sequential(
            *(DepthWise(channels, channels, groups, 1, residual=True) for _ in range(num_block)))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class MobileFaceNetTrunk(nn.Module):
    """cunjian's landmark MobileFaceNet up to ``conv_4``: 112 x 112 -> 128 x 14 x 14.

    Nie et al. take the landmark features from exactly this layer; the later layers
    (``conv_45`` ... the 136-way regressor) are not built.
    """

    out_channels = 128

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvBlock(3, 64, 3, 2, 1)
        self.conv2_dw = ConvBlock(64, 64, 3, 1, 1, groups=64)
        self.conv_23 = DepthWise(64, 64, groups=128, stride=2, residual=False)
        self.conv_3 = Residual(64, num_block=4, groups=128)
        self.conv_34 = DepthWise(64, 128, groups=256, stride=2, residual=False)
        self.conv_4 = Residual(128, num_block=6, groups=256)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_23(self.conv2_dw(self.conv1(x)))
        return self.conv_4(self.conv_34(self.conv_3(x)))


CONVNEXT_BASE_DEPTHS = (3, 3, 27, 3)
CONVNEXT_BASE_DIMS = (128, 256, 512, 1024)


class ConvNeXtTrunk(nn.Module):
    """torchvision ConvNeXt ``features[: 2 * cut_stage]`` (stem + stages 1..cut_stage).

    Default is ConvNeXt-Base built by ``torchvision.models.convnext_base(weights=None)``;
    ``depths``/``dims`` build a narrower ConvNeXt for fast tests. Stochastic depth is 0
    (Keras' ConvNeXt default, and the backbone is frozen in Conv-cut anyway).
    """

    def __init__(self, cut_stage: int = 3, depths: Sequence[int] | None = None,
                 dims: Sequence[int] | None = None) -> None:
        super().__init__()
        if cut_stage not in (2, 3):
            raise ValueError(f"cut_stage must be 2 or 3, got {cut_stage}")
        if depths is None and dims is None:
            net = convnext_base(weights=None, stochastic_depth_prob=0.0)
            dims = CONVNEXT_BASE_DIMS
        else:
            depths = tuple(depths or CONVNEXT_BASE_DEPTHS)
            dims = tuple(dims or CONVNEXT_BASE_DIMS)
            if len(depths) != 4 or len(dims) != 4:
                raise ValueError(f"depths and dims need 4 entries, got {depths} and {dims}")
            setting = [CNBlockConfig(dims[i], dims[i + 1] if i < 3 else None, depths[i])
                       for i in range(4)]
            net = ConvNeXt(setting, stochastic_depth_prob=0.0)
        self.features = net.features[: 2 * cut_stage]
        self.out_channels = dims[cut_stage - 1]
        self.stride = 4 * 2 ** (cut_stage - 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


def freeze(module: nn.Module) -> None:
    """Stop gradients into ``module``; callers keep it in eval mode (see their ``train``)."""
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()


def global_avg_pool(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C)."""
    return torch.mean(x, dim=(2, 3))
