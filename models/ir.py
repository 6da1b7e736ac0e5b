"""The CVLFace / AdaFace IR family (ir18, ir50, ir101), with CVLFace's own state-dict keys.

Same layer order as CVLFace's `models/iresnet/model.py` and AdaFace's `net.py` (Kim et al., AdaFace,
CVPR 2022): input_layer.{0 conv, 1 BN, 2 PReLU}; body.<i>.res_layer.{0 BN, 1 conv, 2 BN, 3 PReLU,
4 conv (strided), 5 BN}; body.<i>.shortcut_layer = MaxPool2d(1, stride) or {0 conv1x1, 1 BN};
output_layer.{0 BN2d, 1 Dropout, 2 Flatten, 3 Linear, 4 BN1d without affine}. Their checkpoints
therefore load with `strict=True` once the wrapper prefix (`model.net.`, `net.`, `model.`) is removed.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .registry import kaiming_fan_out_, register

_WIDTHS = (64, 128, 256, 512)


class BasicBlockIR(nn.Module):
    """res_layer(x) + shortcut_layer(x); the stride sits on the second conv of res_layer."""

    def __init__(self, in_channel: int, depth: int, stride: int) -> None:
        super().__init__()
        if in_channel == depth:
            # A 1x1 max-pool with a stride is a parameter-free subsampling identity.
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False),
                nn.BatchNorm2d(depth),
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            nn.BatchNorm2d(depth),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IR(nn.Module):
    """input_layer, body (a flat Sequential of units), output_layer: [B,3,112,112] -> [B,embedding_size]."""

    def __init__(self, units: Sequence[int], embedding_size: int = 512) -> None:
        super().__init__()
        if len(units) != 4 or min(units) < 1:
            raise ValueError(f"IR: expected 4 positive stage depths, found {units}")
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, _WIDTHS[0], (3, 3), 1, 1, bias=False),
            nn.BatchNorm2d(_WIDTHS[0]),
            nn.PReLU(_WIDTHS[0]),
        )
        body = []
        in_channel = _WIDTHS[0]
        for depth, count in zip(_WIDTHS, units):
            for i in range(count):
                body.append(BasicBlockIR(in_channel, depth, 2 if i == 0 else 1))
                in_channel = depth
        self.body = nn.Sequential(*body)
        # nn.Flatten (a reshape) rather than CVLFace's `.view`, so channels_last input works; it
        # holds no parameters, so the keys are unchanged.
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(_WIDTHS[-1]),
            nn.Dropout(0.4),
            nn.Flatten(),
            nn.Linear(_WIDTHS[-1] * 7 * 7, embedding_size),
            nn.BatchNorm1d(embedding_size, affine=False),
        )
        kaiming_fan_out_(self)  # CVLFace's initialisation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.body(self.input_layer(x)))


# Units per stage, as CVLFace's get_blocks(18 / 50 / 100); CVLFace names the last one ir101.
IR_UNITS = {"ir18": (2, 2, 2, 2), "ir50": (3, 4, 14, 3), "ir101": (3, 13, 30, 3)}


@register("ir18")
def ir18(embedding_size: int) -> IR:
    return IR(IR_UNITS["ir18"], embedding_size)


@register("ir50")
def ir50(embedding_size: int) -> IR:
    return IR(IR_UNITS["ir50"], embedding_size)


@register("ir101")
def ir101(embedding_size: int) -> IR:
    return IR(IR_UNITS["ir101"], embedding_size)
