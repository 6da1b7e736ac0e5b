"""insightface's arcface_torch IResNet (Deng et al., ArcFace, CVPR 2019), with its exact state-dict keys.

Key names equal arcface_torch's `backbones/iresnet.py` (conv1, bn1, prelu, layerN.i.{bn1, conv1, bn2,
prelu, conv2, bn3, downsample.0, downsample.1}, bn2, fc, features), so a user's arcface_torch `.pth`
loads with `strict=True`. `widths` scales the four stages; the paper's nets use (64, 128, 256, 512)
and `iresnet_s` is the same architecture, narrower, for the CPU demo.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .registry import register

_FULL_WIDTHS = (64, 128, 256, 512)
# The demo teacher: a quarter-width iresnet18 (3.9M parameters and 0.17 GMACs, about 28x and 10x the
# quarter-width MobileFaceNet student), cheap enough to train on two CPU cores.
_DEMO_WIDTHS = (16, 32, 64, 128)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """BN, conv3x3, BN, PReLU, conv3x3 (strided), BN, plus the shortcut: the "improved" residual unit."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        # The stride sits on the second conv, so the first runs at the input resolution.
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """Stem, four stages (each halves the resolution: 112 -> 7), then BN, dropout, FC and a BN1d whose
    weight is fixed at 1 (arcface_torch's `features`)."""

    def __init__(self, layers: Sequence[int], embedding_size: int = 512,
                 widths: Sequence[int] = _FULL_WIDTHS, dropout: float = 0.0) -> None:
        super().__init__()
        if len(layers) != 4 or len(widths) != 4 or min(layers) < 1 or min(widths) < 1:
            raise ValueError(f"IResNet: expected 4 positive stage depths and widths, found {layers} and {widths}")
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-05)
        self.prelu = nn.PReLU(widths[0])
        self.layer1 = self._make_layer(widths[0], layers[0])
        self.layer2 = self._make_layer(widths[1], layers[1])
        self.layer3 = self._make_layer(widths[2], layers[2])
        self.layer4 = self._make_layer(widths[3], layers[3])
        self.bn2 = nn.BatchNorm2d(widths[3], eps=1e-05)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(widths[3] * 7 * 7, embedding_size)  # 112 / 2**4 = 7
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-05)
        # arcface_torch fixes the last BN's scale at 1 and never trains it (the margin loss
        # normalises the embedding, so a learnt scale would only drift).
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        # arcface_torch's initialisation, kept so that training from scratch behaves the same.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        # Every stage starts with stride 2, so its first unit always needs a projection shortcut.
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=2, bias=False),
            nn.BatchNorm2d(planes, eps=1e-05),
        )
        units = [IBasicBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        units += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.bn2(x), 1)  # [B, C*7*7] in (C, H, W) order, also for channels_last
        x = self.fc(self.dropout(x))
        return self.features(x)


@register("iresnet18")
def iresnet18(embedding_size: int) -> IResNet:
    return IResNet((2, 2, 2, 2), embedding_size)


@register("iresnet34")
def iresnet34(embedding_size: int) -> IResNet:
    return IResNet((3, 4, 6, 3), embedding_size)


@register("iresnet50")
def iresnet50(embedding_size: int) -> IResNet:
    return IResNet((3, 4, 14, 3), embedding_size)


@register("iresnet100")
def iresnet100(embedding_size: int) -> IResNet:
    return IResNet((3, 13, 30, 3), embedding_size)


@register("iresnet_s")
def iresnet_s(embedding_size: int) -> IResNet:
    return IResNet((2, 2, 2, 2), embedding_size, widths=_DEMO_WIDTHS)
