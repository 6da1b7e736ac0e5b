"""MobileFaceNet (Chen et al., 2018) with the GDC head, as AdaDistill uses it, with AdaDistill's keys.

Layer order and key names follow AdaDistill's `backbones/mobilefacenet.py` (itself from cavaface):
conv1, conv2_dw, conv_23, conv_3.model.<i>, conv_34, conv_4.model.<i>, conv_45, conv_5.model.<i>,
conv_6_sep, output_layer.{conv_6_dw, linear, bn}; each block holds .conv/.bn(/.prelu). At width 1 it has
about 1.20M conv+linear parameters and 0.22 GMACs at 112x112. `width` scales every channel count;
`mobilefacenet_s` (quarter width) is the CPU demo's student.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from .registry import kaiming_fan_out_, register

Pair = Tuple[int, int]


class ConvBlock(nn.Module):
    """conv, BN, PReLU."""

    def __init__(self, cin: int, cout: int, kernel: Pair = (1, 1), stride: Pair = (1, 1),
                 padding: Pair = (0, 0), groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.prelu = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn(self.conv(x)))


class LinearBlock(nn.Module):
    """conv, BN, no activation (the projection of an inverted bottleneck)."""

    def __init__(self, cin: int, cout: int, kernel: Pair = (1, 1), stride: Pair = (1, 1),
                 padding: Pair = (0, 0), groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand to `expanded`, 3x3 depthwise (strided), 1x1 project."""

    def __init__(self, cin: int, cout: int, expanded: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.conv = ConvBlock(cin, expanded)
        self.conv_dw = ConvBlock(expanded, expanded, (3, 3), (stride, stride), (1, 1), groups=expanded)
        self.project = LinearBlock(expanded, cout)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.conv_dw(self.conv(x)))
        return x + out if self.residual else out


class Residual(nn.Module):
    """`count` residual bottlenecks at constant width and resolution."""

    def __init__(self, channels: int, count: int, expanded: int) -> None:
        super().__init__()
        self.model = nn.Sequential(*[DepthWise(channels, channels, expanded, 1, True) for _ in range(count)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class GDC(nn.Module):
    """Global depthwise conv head: 7x7 depthwise over the 7x7 map, flatten, linear, BN1d without affine."""

    def __init__(self, channels: int, embedding_size: int) -> None:
        super().__init__()
        self.conv_6_dw = LinearBlock(channels, channels, (7, 7), groups=channels)
        self.linear = nn.Linear(channels, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.conv_6_dw(x), 1)  # [B, C, 1, 1] -> [B, C]
        return self.bn(self.linear(x))


class MobileFaceNet(nn.Module):
    """[B,3,112,112] -> stride-2 stem (56) -> 28 -> 14 -> 7 -> GDC -> [B,embedding_size]."""

    def __init__(self, embedding_size: int = 512, width: float = 1.0) -> None:
        super().__init__()
        if not 0 < width <= 4:
            raise ValueError(f"MobileFaceNet: width must be in (0, 4], found {width}")

        def c(channels: int) -> int:
            return max(1, round(channels * width))

        self.conv1 = ConvBlock(3, c(64), (3, 3), (2, 2), (1, 1))
        self.conv2_dw = ConvBlock(c(64), c(64), (3, 3), (1, 1), (1, 1), groups=c(64))
        self.conv_23 = DepthWise(c(64), c(64), c(128), 2, False)
        self.conv_3 = Residual(c(64), 4, c(128))
        self.conv_34 = DepthWise(c(64), c(128), c(256), 2, False)
        self.conv_4 = Residual(c(128), 6, c(256))
        self.conv_45 = DepthWise(c(128), c(128), c(512), 2, False)
        self.conv_5 = Residual(c(128), 2, c(256))
        self.conv_6_sep = ConvBlock(c(128), c(512))
        self.output_layer = GDC(c(512), embedding_size)
        kaiming_fan_out_(self)  # AdaDistill's initialisation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_23(self.conv2_dw(self.conv1(x)))
        x = self.conv_45(self.conv_4(self.conv_34(self.conv_3(x))))
        x = self.conv_6_sep(self.conv_5(x))
        return self.output_layer(x)


@register("mobilefacenet")
def mobilefacenet(embedding_size: int) -> MobileFaceNet:
    return MobileFaceNet(embedding_size)


@register("mobilefacenet_s")
def mobilefacenet_s(embedding_size: int) -> MobileFaceNet:
    return MobileFaceNet(embedding_size, width=0.25)
