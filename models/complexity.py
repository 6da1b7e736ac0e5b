"""A backbone's cost at its input size: parameters, MACs and FLOPs, counted by torch itself.

`torch.utils.flop_counter.FlopCounterMode` runs one forward on the meta device (shapes only: no memory,
no device, milliseconds even for an iresnet100) and counts 2 FLOPs per multiply-accumulate of every
convolution and matrix product; BatchNorm, PReLU and additions are not counted (a few percent at most).
MACs = FLOPs / 2. Figures quoted as "GFLOPs" by arcface_torch's model zoo (ptflops) are MACs, the
confusion of AdaDistill's issue #4, hence both are stated everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from .registry import build

INPUT_SIZE = 112


@dataclass(frozen=True)
class Complexity:
    params: int
    macs: int    # multiply-accumulates of one image's forward
    flops: int   # = 2 * macs (FlopCounterMode's convention for convolutions and matrix products)
    input_size: int = INPUT_SIZE

    def __post_init__(self) -> None:
        if self.params <= 0 or self.macs <= 0 or self.flops != 2 * self.macs:
            raise ValueError(f"Complexity: expected params, macs > 0 and flops = 2 x macs, found {self}")

    def text(self) -> str:
        return (f"{self.params / 1e6:.2f} M parameters, {self.macs / 1e9:.3f} GMACs = {self.flops / 1e9:.3f} "
                f"GFLOPs at {self.input_size}x{self.input_size}")

    def as_dict(self) -> dict:
        return {"params": self.params, "macs": self.macs, "flops": self.flops, "input_size": self.input_size}


def of_module(net: torch.nn.Module, input_size: int = INPUT_SIZE) -> Complexity:
    """Count `net` (any device; run here as a copy's shapes on the meta device) on one RGB image."""
    params = sum(p.numel() for p in net.parameters())
    meta = net if all(t.is_meta for t in net.parameters()) else _meta_copy(net)
    was_training = meta.training
    meta.eval()  # BatchNorm with batch statistics on one image would refuse; eval is how it is deployed
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            meta(torch.empty(1, 3, input_size, input_size, device="meta"))
    finally:
        meta.train(was_training)
    flops = int(counter.get_total_flops())
    return Complexity(params, flops // 2, flops, input_size)


def of_backbone(name: str, embedding_size: int, input_size: int = INPUT_SIZE) -> Complexity:
    """Count the registered backbone `name`, built on the meta device (no weights, no device)."""
    with torch.device("meta"):
        net = build(name, embedding_size)
    return of_module(net, input_size)


def _meta_copy(net: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(net).to("meta")


def of_teacher(spec: Optional[str], network: Optional[str]) -> tuple[str, Optional[Complexity], str]:
    """(backbone name, its cost or None, why not) of a config's teacher: `network` when given, else the
    name its local weights describe (models.weights reads them; nothing is built); for an `hf:` spec, the
    name in its description if the hub cache holds it (nothing is downloaded to count a teacher)."""
    from .loading import read_weights
    from .weights import CheckpointError

    if network:
        return network, of_backbone(network, 512), ""
    if not spec:
        return "-", None, "no teacher"
    if spec.startswith("hf:"):
        return _hub_teacher(spec)
    try:
        found = read_weights(spec)
    except CheckpointError as error:
        return spec, None, f"not readable here ({str(error).split(';')[0]})"
    return found.name, of_backbone(found.name, found.embedding_size), ""


def _hub_teacher(spec: str) -> tuple[str, Optional[Complexity], str]:
    from huggingface_hub import try_to_load_from_cache

    from .loading import Spec

    parsed = Spec.parse(spec)
    cached = try_to_load_from_cache(parsed.repo_id, "pretrained_model/model.yaml", revision=parsed.revision)
    if not isinstance(cached, str):
        return spec, None, "not in the local hub cache (nothing is downloaded to count it); set teacher.network"
    import yaml

    desc = yaml.safe_load(Path(cached).read_text())
    return desc["name"], of_backbone(desc["name"], int(desc["output_dim"])), ""
