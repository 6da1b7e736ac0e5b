"""Build a backbone from what users point the evaluator at.

Accepted: one of our checkpoints (`step-XXXXXXXXX.pt`, a dict with `student` and `config`), a run
directory or its `checkpoints/` folder (the file its `latest` names), or a bare backbone state dict
(arcface_torch's `backbone.pth`), which needs the network named by --network or by a YAML config's
`model.name`. Everything is read with torch.load(weights_only=True): no code from a file runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import yaml

import models


class CheckpointError(ValueError):
    """A checkpoint that cannot be found, read or matched to a backbone."""


@dataclass(frozen=True)
class LoadedBackbone:
    model: torch.nn.Module
    network: str
    embedding_size: int
    path: Path  # the weights file actually read
    step: Optional[int]


def resolve(path: str | Path) -> Path:
    """The checkpoint file behind `path`: itself, or the file `latest` names in a run directory."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint file or run directory")
    for folder in (path / "checkpoints", path):
        latest = folder / "latest"
        if latest.is_file():
            name = latest.read_text().strip()
            target = Path(name) if Path(name).is_absolute() else folder / name
            if not target.is_file():
                raise CheckpointError(f"{latest} names {name!r}, which does not exist")
            return target
    raise CheckpointError(f"{path}: a directory, but neither {path / 'checkpoints' / 'latest'} nor "
                          f"{path / 'latest'} exists")


def model_section(config_path: str | Path) -> dict:
    """The `model` section of a YAML run config (name, embedding_size)."""
    config_path = Path(config_path)
    try:
        data = yaml.safe_load(config_path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise CheckpointError(f"{config_path}: cannot read the config: {err}") from err
    section = data.get("model") if isinstance(data, dict) else None
    if not isinstance(section, dict) or "name" not in section:
        raise CheckpointError(f"{config_path}: expected a 'model' section with 'name'")
    return section


def load_backbone(path: str | Path, *, config: str | Path | None = None, network: str | None = None,
                  embedding_size: int | None = None, device="cpu") -> LoadedBackbone:
    """Read the weights and build the backbone, in eval mode on `device`.

    The network comes from, in order: --network, --config's model section, the checkpoint's saved
    config. A name that disagrees with the checkpoint's saved config is an error, not a guess.
    """
    file = resolve(path)
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types (pickle, zip, runtime) for a bad file
        raise CheckpointError(f"{file}: cannot be read with torch.load(weights_only=True): {err}") from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{file}: expected a dict (checkpoint or state dict), found {type(obj).__name__}")

    saved = {}
    step = None
    if "student" in obj:
        state = obj["student"]
        saved = (obj.get("config") or {}).get("model") or {}
        step = obj.get("step")
    else:
        state = obj
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file}: neither a checkpoint with 'student' nor a state dict of tensors "
                              f"(top-level keys: {sorted(obj)[:8]})")

    given = model_section(config) if config is not None else {}
    name = network or given.get("name") or saved.get("name")
    if name is None:
        raise CheckpointError(f"{file}: a bare state dict does not say which backbone it is; pass --network NAME "
                              f"or --config CFG (known: {', '.join(models.names())})")
    if saved.get("name") and name != saved["name"]:
        raise CheckpointError(f"{file}: was trained as {saved['name']!r}, but {name!r} was asked for")
    size = int(embedding_size or given.get("embedding_size") or saved.get("embedding_size") or 512)

    model = models.build(name, embedding_size=size)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches raise even when strict=False
        raise CheckpointError(f"{file}: weights do not fit {name!r} (embedding_size={size}): {err}") from err
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{file}: weights do not fit {name!r} (embedding_size={size}): "
                              f"missing {list(result.missing_keys)[:5]}{'...' if len(result.missing_keys) > 5 else ''}, "
                              f"unexpected {list(result.unexpected_keys)[:5]}"
                              f"{'...' if len(result.unexpected_keys) > 5 else ''}")
    model.to(device).eval()
    return LoadedBackbone(model=model, network=name, embedding_size=size, path=file,
                          step=int(step) if isinstance(step, (int, float)) else None)
