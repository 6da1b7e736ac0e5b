"""The backbone a `python -m evaluate` command names (--checkpoint with --network or --config), loaded."""

from __future__ import annotations

from pathlib import Path

import yaml

import models
from models import onnx_net


def _model_section(config: Path) -> dict:
    """`model.name` and `model.embedding_size` of a YAML run config: the backbone of a bare state dict."""
    try:
        data = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise models.CheckpointError(f"{config}: cannot read the config: {err}") from err
    section = data.get("model") if isinstance(data, dict) else None
    if not isinstance(section, dict) or "name" not in section:
        raise models.CheckpointError(f"{config}: expected a 'model' section with 'name'")
    return section


def load(path: Path, args, device) -> models.LoadedBackbone:
    """The backbone in `path` (checkpoint, run directory or .pth), named by --network or --config's model;
    an exported model.onnx, or a folder of `python -m models export` holding one, runs in onnxruntime."""
    if onnx_net.onnx_file(path) is not None:
        return onnx_net.load_onnx(path, device=device)
    given = _model_section(args.config) if args.config is not None else {}
    return models.load_backbone(path, network=args.network or given.get("name"),
                                embedding_size=given.get("embedding_size"), device=device)


def described(loaded) -> dict:
    """What a report says of the backbone it ran."""
    return {"checkpoint": str(loaded.file), "network": loaded.name, "embedding_size": loaded.embedding_size,
            "step": loaded.step}
