"""Weight initialisation shared by backbones whose reference code initialises them the same way."""
from __future__ import annotations

from torch import nn


def kaiming_fan_out_(model: nn.Module) -> None:
    """Kaiming normal (fan_out) for conv and linear weights, zero biases, BatchNorm2d at identity: the
    initialisation of CVLFace's IR nets and AdaDistill's MobileFaceNet."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
