"""A spec or a file becomes a net: the one path from weights to a backbone, for the training loop's
teacher, the teacher cache and the evaluator alike.

`load_backbone(spec)` reads the weights (models.weights), builds the named backbone on the meta device,
loads it strictly (every key, every shape, finite values) and returns a `LoadedBackbone`: the frozen,
eval-mode `FrozenNet` (always fed RGB: a BGR net gets its channels flipped inside), its name, embedding
size, the file read and the step it was saved at. `load_teacher(spec)` is its net alone.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
from torch import nn

from . import hub, weights
from .registry import UnknownModelError, build
from .weights import CheckpointError

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Spec:
    """`hf:<owner>/<name>[@revision]` (a hub repository) or a local file or directory."""

    text: str
    repo_id: Optional[str] = None
    revision: Optional[str] = None
    path: Optional[Path] = None

    def __post_init__(self) -> None:
        if (self.repo_id is None) == (self.path is None):
            raise ValueError(f"Spec {self.text!r}: exactly one of repo_id and path must be set")

    @classmethod
    def parse(cls, text: Union[str, "os.PathLike[str]"]) -> "Spec":
        if isinstance(text, os.PathLike):
            text = os.fspath(text)
        if not isinstance(text, str) or not text.strip():
            raise CheckpointError(f"spec: expected 'hf:<owner>/<name>[@revision]' or a path, found {text!r}")
        if text.startswith("hf:"):
            repo_id, at, revision = text[3:].partition("@")
            if not _REPO_ID.match(repo_id) or (at and not revision):
                raise CheckpointError(f"{text!r}: expected hf:<owner>/<name>[@revision], found repo "
                                       f"{repo_id!r} revision {revision!r}")
            return cls(text, repo_id=repo_id, revision=revision or None)
        path = Path(text).expanduser()
        if not path.exists():
            raise CheckpointError(f"{text!r}: no such file or directory: {path}; hint: give a checkpoint file, a "
                                  f"run directory, a CVLFace directory or hf:<owner>/<name>")
        return cls(text, path=path)


class FrozenNet(nn.Module):
    """A loaded backbone: RGB [B,3,112,112] in [-1,1] -> raw embedding [B,D], frozen and always in eval mode.

    `net` is the backbone; `color_space` is the channel order it was trained on. A BGR net gets its input
    channels flipped here, as CVLFace's wrapper does, so callers always pass RGB.
    """

    def __init__(self, net: nn.Module, name: str, color_space: str, source: str) -> None:
        super().__init__()
        self.net = net
        self.name = name
        self.color_space = color_space
        self.source = source
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenNet":
        # A parent's .train() must not switch a teacher's BatchNorm to batch statistics (or update
        # its running statistics): the net stays exactly as loaded.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.color_space == "BGR":
            x = x.flip(1)
        return self.net(x)


def _check_finite(spec: str, found: weights.Weights) -> None:
    for key, value in found.state_dict.items():
        # One reduction a tensor: NaN and inf survive a float64 sum, which cannot overflow from fp32 values.
        if value.is_floating_point() and not bool(torch.isfinite(value.sum(dtype=torch.float64))):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"{spec!r}: {found.file}: {key} holds {bad} non-finite value(s); hint: the "
                                  "checkpoint is corrupt or was saved after the training diverged")


def _sample(keys: list, n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def _load_strict(spec: str, net: nn.Module, found: weights.Weights) -> None:
    """Every key present, none extra, every shape equal; the message lists what differs."""
    expected: Mapping[str, torch.Tensor] = net.state_dict()
    state = found.state_dict
    # BatchNorm fills a missing `num_batches_tracked` itself, and it plays no part in eval mode.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} (file {tuple(state[k].shape)}, {found.name} {tuple(v.shape)})"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_sample(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_sample(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {_sample(shapes)}")
    if problems:
        raise CheckpointError(f"{spec!r}: {found.file}: the weights do not fit {found.name!r} (embedding size "
                              f"{found.embedding_size}): {'; '.join(problems)}; hint: name the right backbone "
                              "(network=...) or check that the file is the checkpoint you meant")
    # Cast to the module's dtypes (a checkpoint may hold fp16 weights), then adopt the tensors as they
    # are (assign=True): the net was built on the meta device, so nothing is allocated twice.
    converted = {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    try:
        net.load_state_dict(converted, strict=True, assign=True)
    except RuntimeError as error:
        raise CheckpointError(f"{spec!r}: {found.file}: {error}") from error
    unset = [n for n, t in list(net.named_parameters()) + list(net.named_buffers()) if t.is_meta]
    if unset:
        raise CheckpointError(f"{spec!r}: {found.file}: no values for {_sample(unset)}")


@dataclass(frozen=True)
class LoadedBackbone:
    """What `load_backbone` returns: the frozen net and what it is."""

    net: FrozenNet
    name: str                      # registry name
    embedding_size: int
    file: Path                     # the weights file actually read
    step: Optional[int]            # the training step of one of our checkpoints; None otherwise


def read_weights(spec: Union[str, "os.PathLike[str]"], network: Optional[str] = None,
                 embedding_size: Optional[int] = None) -> weights.Weights:
    """The weights and description behind `spec`, without building anything (see load_backbone)."""
    parsed = Spec.parse(spec)
    spec = parsed.text
    if parsed.repo_id is not None:
        found = weights.read_directory(spec, hub.snapshot(spec, parsed.repo_id, parsed.revision), network)
    elif parsed.path.is_dir():
        newest = weights.newest_checkpoint(parsed.path, spec)
        found = (weights.read_file(spec, newest, network, embedding_size) if newest is not None
                 else weights.read_directory(spec, parsed.path, network))
    else:
        found = weights.read_file(spec, parsed.path, network, embedding_size)
    if embedding_size is not None and embedding_size != found.embedding_size:
        raise CheckpointError(f"{spec!r}: {found.file}: holds a {found.name!r} with embedding size "
                              f"{found.embedding_size}, but {embedding_size} was asked for")
    return found


def load_backbone(spec: Union[str, "os.PathLike[str]"], *, network: Optional[str] = None,
                  embedding_size: Optional[int] = None, device: Union[str, torch.device] = "cpu") -> LoadedBackbone:
    """The backbone named by `spec`, loaded strictly, frozen, in eval mode, on `device`.

    spec: `hf:<owner>/<name>[@revision]` (a CVLFace repository, via the huggingface_hub cache), a CVLFace
    directory, one of our run directories or its `checkpoints/` folder (the newest checkpoint), or a
    checkpoint file (ours, an AdaFace .ckpt, or a plain state dict of `network`).
    network: the backbone's registry name; needed for plain state dicts (arcface_torch .pth), checked
    against the file's own description where it has one. embedding_size: a plain state dict's (default
    512), checked against the description elsewhere. Any failure raises CheckpointError.
    """
    spec = Spec.parse(spec).text
    found = read_weights(spec, network, embedding_size)
    _check_finite(spec, found)
    try:
        with torch.device("meta"):  # shapes only: the weights come from the file
            net = build(found.name, found.embedding_size)
    except (UnknownModelError, ValueError) as error:
        raise CheckpointError(f"{spec!r}: {found.file}: {error}") from error
    _load_strict(spec, net, found)
    frozen = FrozenNet(net, found.name, found.color_space, str(found.file))
    try:
        frozen = frozen.to(device)
    except Exception as error:  # e.g. AssertionError "Torch not compiled with CUDA enabled"
        raise CheckpointError(f"{spec!r}: cannot move to device {device!r}: {error}") from error
    return LoadedBackbone(frozen, found.name, found.embedding_size, found.file, found.step)


def load_teacher(spec: Union[str, "os.PathLike[str]"], device: Union[str, torch.device] = "cpu",
                 network: Optional[str] = None) -> FrozenNet:
    """`load_backbone(spec, network=network, device=device).net`: what a teacher spec means."""
    return load_backbone(spec, network=network, device=device).net
