"""`load_teacher(spec)`: a frozen, eval-mode teacher from the hub or a local file, loaded strictly."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
from torch import nn

from . import hub, teacher_files
from .errors import TeacherLoadError
from .registry import UnknownModelError, build

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class TeacherSpec:
    """`hf:<owner>/<name>[@revision]` (a hub repository) or a local file or directory."""

    text: str
    repo_id: Optional[str] = None
    revision: Optional[str] = None
    path: Optional[Path] = None

    def __post_init__(self) -> None:
        if (self.repo_id is None) == (self.path is None):
            raise ValueError(f"TeacherSpec {self.text!r}: exactly one of repo_id and path must be set")

    @classmethod
    def parse(cls, text: Union[str, "os.PathLike[str]"]) -> "TeacherSpec":
        if isinstance(text, os.PathLike):
            text = os.fspath(text)
        if not isinstance(text, str) or not text.strip():
            raise TeacherLoadError(f"teacher spec: expected 'hf:<owner>/<name>[@revision]' or a path, found {text!r}")
        if text.startswith("hf:"):
            repo_id, at, revision = text[3:].partition("@")
            if not _REPO_ID.match(repo_id) or (at and not revision):
                raise TeacherLoadError(f"teacher {text!r}: expected hf:<owner>/<name>[@revision], found repo "
                                       f"{repo_id!r} revision {revision!r}")
            return cls(text, repo_id=repo_id, revision=revision or None)
        path = Path(text).expanduser()
        if not path.exists():
            raise TeacherLoadError(f"teacher {text!r}: no such file or directory: {path}; hint: give a checkpoint "
                                   f"file, a CVLFace directory or hf:<owner>/<name>")
        return cls(text, path=path)


class Teacher(nn.Module):
    """A loaded teacher: RGB [B,3,112,112] in [-1,1] -> raw embedding [B,D], frozen and always in eval mode.

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

    def train(self, mode: bool = True) -> "Teacher":
        # A parent's .train() must not switch the teacher's BatchNorm to batch statistics (or update
        # its running statistics): the teacher stays exactly as loaded.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.color_space == "BGR":
            x = x.flip(1)
        return self.net(x)


def _check_finite(spec: str, weights: teacher_files.TeacherWeights) -> None:
    for key, value in weights.state_dict.items():
        # One reduction a tensor: NaN and inf survive a float64 sum, which cannot overflow from fp32 values.
        if value.is_floating_point() and not bool(torch.isfinite(value.sum(dtype=torch.float64))):
            bad = int((~torch.isfinite(value)).sum())
            raise TeacherLoadError(f"teacher {spec!r}: {weights.file}: {key} holds {bad} non-finite value(s); "
                                   "hint: the checkpoint is corrupt or was saved after the training diverged")


def _sample(keys: list, n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def _load_strict(spec: str, net: nn.Module, weights: teacher_files.TeacherWeights) -> None:
    """Every key present, none extra, every shape equal; the message lists what differs."""
    expected: Mapping[str, torch.Tensor] = net.state_dict()
    found = weights.state_dict
    # BatchNorm fills a missing `num_batches_tracked` itself, and it plays no part in eval mode.
    missing = [k for k in expected if k not in found and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k} (file {tuple(found[k].shape)}, {weights.name} {tuple(v.shape)})"
              for k, v in expected.items() if k in found and found[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_sample(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_sample(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {_sample(shapes)}")
    if problems:
        raise TeacherLoadError(f"teacher {spec!r}: {weights.file}: the weights do not fit {weights.name!r}: "
                               f"{'; '.join(problems)}; hint: name the right backbone (network=...) or check "
                               "that the file is the checkpoint you meant")
    # Cast to the module's dtypes (a checkpoint may hold fp16 weights), then adopt the tensors as they
    # are (assign=True): the net was built on the meta device, so nothing is allocated twice.
    converted = {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in found.items()}
    try:
        net.load_state_dict(converted, strict=True, assign=True)
    except RuntimeError as error:
        raise TeacherLoadError(f"teacher {spec!r}: {weights.file}: {error}") from error
    unset = [n for n, t in list(net.named_parameters()) + list(net.named_buffers()) if t.is_meta]
    if unset:
        raise TeacherLoadError(f"teacher {spec!r}: {weights.file}: no values for {_sample(unset)}")


def load_teacher(spec: Union[str, "os.PathLike[str]"], device: Union[str, torch.device] = "cpu",
                 network: Optional[str] = None) -> Teacher:
    """The teacher named by `spec`, frozen, in eval mode, on `device`.

    spec: `hf:<owner>/<name>[@revision]` (a CVLFace repository, via the huggingface_hub cache), a CVLFace
    directory, one of our run directories (its newest checkpoint), or a checkpoint file (ours, an AdaFace
    .ckpt, or a plain state dict of `network`).
    network: the backbone's registry name; needed for plain state dicts (arcface_torch .pth), checked
    against the file's own description where it has one. Any failure raises TeacherLoadError.
    """
    parsed = TeacherSpec.parse(spec)
    if parsed.repo_id is not None:
        folder = hub.snapshot(spec, parsed.repo_id, parsed.revision)
        weights = teacher_files.read_directory(spec, folder, network)
    elif parsed.path.is_dir():
        newest = teacher_files.run_checkpoint(spec, parsed.path)
        weights = (teacher_files.read_file(spec, newest, network) if newest is not None
                   else teacher_files.read_directory(spec, parsed.path, network))
    else:
        weights = teacher_files.read_file(spec, parsed.path, network)
    _check_finite(spec, weights)
    try:
        with torch.device("meta"):  # shapes only: the weights come from the file
            net = build(weights.name, weights.embedding_size)
    except (UnknownModelError, ValueError) as error:
        raise TeacherLoadError(f"teacher {spec!r}: {weights.file}: {error}") from error
    _load_strict(spec, net, weights)
    teacher = Teacher(net, weights.name, weights.color_space, str(weights.file))
    try:
        return teacher.to(device)
    except Exception as error:  # e.g. AssertionError "Torch not compiled with CUDA enabled"
        raise TeacherLoadError(f"teacher {spec!r}: cannot move to device {device!r}: {error}") from error
