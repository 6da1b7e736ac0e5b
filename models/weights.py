"""Read a backbone's weights and description from any file or folder a user points at, running no code.

Layouts understood (each becomes a `Weights`):
- CVLFace directory (also what the hub download gives): `pretrained_model/model.yaml` (or config.json's
  `conf`) names the net; weights in `model.safetensors` (`model.net.<key>`) or `pretrained_model/model.pt`
  (`net.<key>`).
- Our own training checkpoint: {"student": state dict, "step": n, "config": {"model": {"name",
  "embedding_size"}}}, or a run directory (or its `checkpoints/` folder), whose `latest` names its newest
  checkpoint: `newest_checkpoint` is the one reader of that pointer in the project.
- AdaFace `.ckpt` (PyTorch Lightning): {"state_dict": {"model.<key>", "head.<key>", ...},
  "hyper_parameters": {"arch": "ir_50", ...}}; AdaFace trains on BGR input.
- A plain state dict (arcface_torch `.pth`, AdaDistill's MobileFaceNet, ...) for the backbone named by
  `network`, optionally behind one wrapper prefix (`module.`, `net.`, `model.net.`, `model.`).
Files are read with safetensors or `torch.load(weights_only=True)` (for a Lightning .ckpt, with inert
stand-ins bound to the Lightning class names it mentions); `.py` files are never imported.
"""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch
import yaml

from common.errors import InputError

from .ir import IR_UNITS
from .registry import names

# Our run directories: `<run>/checkpoints/<file>` and a `latest` text file naming the newest one.
CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest"
DEFAULT_EMBEDDING_SIZE = 512  # a bare state dict does not say; every reference backbone uses 512


class CheckpointError(InputError, RuntimeError):
    """A spec, file or run directory that cannot be read, or whose weights do not become the backbone
    they name. The message names the spec, the file and what went wrong, and ends with a hint."""


_WRAPPER_PREFIXES = ("module.", "model.net.", "net.", "model.")
# AdaFace's `arch` hyper-parameter -> our registry name.
_ADAFACE_ARCH = {"ir_18": "ir18", "ir_50": "ir50", "ir_101": "ir101"}
# What a PyTorch Lightning checkpoint may name besides tensors (hyper-parameter and callback classes).
_LIGHTNING_NAMESPACES = ("pytorch_lightning.", "lightning.", "lightning_fabric.")
_NAME_HINT = "hint: name the backbone (network=...: teacher.network in a config, --network for the evaluator)"


@dataclass(frozen=True)
class Weights:
    """What a checkpoint says: which backbone, its embedding size, its input channel order, its weights,
    and the training step it was saved at (our checkpoints only)."""

    name: str
    embedding_size: int
    color_space: str  # "RGB" or "BGR": the channel order the weights were trained on
    state_dict: Mapping[str, torch.Tensor]
    file: Path
    step: Optional[int] = None

    def __post_init__(self) -> None:
        if self.color_space not in ("RGB", "BGR"):
            raise ValueError(f"Weights.color_space: expected RGB or BGR, found {self.color_space!r}")
        if self.embedding_size <= 0:
            raise ValueError(f"Weights.embedding_size: expected > 0, found {self.embedding_size}")


def fail(spec: str, file: Path, what: str, hint: str = "") -> CheckpointError:
    return CheckpointError(f"{spec!r}: {file}: {what}" + (f"; {hint}" if hint else ""))


def _sample(keys: Any, n: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


class _StandIn:
    """An inert stand-in for a Lightning bookkeeping class named in a .ckpt (AttributeDict hyper-parameters,
    a callback class used as a dict key). Building one gives a plain dict, which the restricted unpickler
    then fills with the pickled items; nothing else runs."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
        return {}


def _load_lightning(path: Path) -> Any:
    """torch.load(weights_only=True) of a Lightning .ckpt, whose pickle names Lightning classes next to the
    weights; each such name (and only such names) is bound to a fresh inert `_StandIn` subclass, so nothing
    from Lightning, installed or not, is imported or run."""
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    foreign = [g for g in unsafe if not g.startswith(_LIGHTNING_NAMESPACES)]
    if not unsafe or foreign:
        raise pickle.UnpicklingError(f"globals other than Lightning's: {foreign or unsafe}")
    stand_ins = [(type(g.rsplit(".", 1)[-1], (_StandIn,), {}), g) for g in unsafe]
    with torch.serialization.safe_globals(stand_ins):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_tensors_file(spec: str, path: Path) -> Any:
    """The object stored in `path`: safetensors for *.safetensors, else torch.load(weights_only=True)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path), device="cpu")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            if path.suffix != ".ckpt":
                raise
            return _load_lightning(path)
    except Exception as error:  # corrupt file, or pickled objects beyond tensors and plain containers
        # The first line only: torch.load's messages run over several (an error is one line).
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
        raise fail(spec, path, f"cannot be read safely ({type(error).__name__}: {first})",
                    "hint: weights are read with safetensors or torch.load(weights_only=True), never by "
                    "unpickling arbitrary objects; re-save the state dict alone (torch.save(model.state_dict()))"
                    ) from error


def _strip_prefix(spec: str, file: Path, tensors: Mapping[str, Any], prefix: str) -> Dict[str, torch.Tensor]:
    outside = [k for k in tensors if not k.startswith(prefix)]
    if outside:
        raise fail(spec, file, f"expected every key to start with {prefix!r}, found {len(outside)} that do not: "
                    f"{_sample(outside)}")
    return _tensor_dict(spec, file, {k[len(prefix):]: v for k, v in tensors.items()})


def _tensor_dict(spec: str, file: Path, obj: Any) -> Dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping) or not obj:
        raise fail(spec, file, f"expected a non-empty state dict, found {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise fail(spec, file, f"expected str -> tensor entries, found other values at {_sample(bad)}")
    return dict(obj)


def _cvlface_description(spec: str, directory: Path) -> tuple[Dict[str, Any], Path]:
    yaml_path = directory / "pretrained_model" / "model.yaml"
    config_path = directory / "config.json"
    try:
        if yaml_path.is_file():
            return yaml.safe_load(yaml_path.read_text()), yaml_path
        if config_path.is_file():  # CVLFace's config.json embeds the same description as `conf`
            conf = json.loads(config_path.read_text()).get("conf")
            if conf is not None:
                return conf, config_path
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise fail(spec, yaml_path if yaml_path.is_file() else config_path,
                    f"unreadable model description ({error})") from error
    raise fail(spec, directory, "not a CVLFace model directory: neither pretrained_model/model.yaml nor a "
                "config.json with `conf` is there", "hint: pass a CVLFace directory, an hf:<repo_id> spec or "
                "a checkpoint file")


def read_directory(spec: str, directory: Path, network: Optional[str]) -> Weights:
    """A CVLFace model directory (a hub snapshot or a local copy)."""
    desc, desc_file = _cvlface_description(spec, directory)
    if not isinstance(desc, dict):
        raise fail(spec, desc_file, f"expected a mapping, found {type(desc).__name__}")
    missing = [k for k in ("name", "output_dim", "input_size", "color_space") if k not in desc]
    if missing:
        raise fail(spec, desc_file, f"missing keys {missing} (found {sorted(desc)})")
    name, dim, size, color = desc["name"], desc["output_dim"], desc["input_size"], desc["color_space"]
    # CVLFace's own IR nets, or any of ours in the folder `python -m models export --format cvlface` writes.
    if name not in IR_UNITS and name not in names():
        raise fail(spec, desc_file, f"name: unsupported CVLFace architecture {name!r}; supported: "
                    f"{', '.join(sorted(IR_UNITS))} (and AdaDistill's exports: {', '.join(names())})")
    if network is not None and network != name:
        raise fail(spec, desc_file, f"name: the repository holds {name!r} but network={network!r} was asked for")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
        raise fail(spec, desc_file, f"output_dim: expected a positive int, found {dim!r}")
    if not isinstance(size, (list, tuple)) or list(size[-2:]) != [112, 112]:
        raise fail(spec, desc_file, f"input_size: expected [3, 112, 112], found {size!r}")
    if not isinstance(color, str) or color.upper() not in ("RGB", "BGR"):
        raise fail(spec, desc_file, f"color_space: expected RGB or BGR, found {color!r}")
    safetensors_file = directory / "model.safetensors"
    pt_file = directory / "pretrained_model" / "model.pt"
    if safetensors_file.is_file():
        # The hub wrapper holds IResNetModel as `.model`, which holds the net as `.net`.
        file, prefix = safetensors_file, "model.net."
    elif pt_file.is_file():
        file, prefix = pt_file, "net."
    else:
        raise fail(spec, directory, "no weights: neither model.safetensors nor pretrained_model/model.pt is there",
                    "hint: re-download the repository (it may be incomplete)")
    state = _strip_prefix(spec, file, _tensor_dict(spec, file, read_tensors_file(spec, file)), prefix)
    return Weights(name, dim, color.upper(), state, file)


def _own_checkpoint(spec: str, path: Path, obj: Mapping[str, Any], network: Optional[str]) -> Weights:
    model_cfg = obj["config"].get("model") if isinstance(obj["config"], Mapping) else None
    if not isinstance(model_cfg, Mapping) or "name" not in model_cfg or "embedding_size" not in model_cfg:
        raise fail(spec, path, "checkpoint config lacks model.name / model.embedding_size")
    name, dim = model_cfg["name"], model_cfg["embedding_size"]
    if network is not None and network != name:
        raise fail(spec, path, f"was trained as {name!r}, but network={network!r} was asked for")
    step = obj.get("step")
    return Weights(name, int(dim), "RGB", _tensor_dict(spec, path, obj["student"]), path,
                   step=int(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else None)


def _adaface_checkpoint(spec: str, path: Path, obj: Mapping[str, Any], network: Optional[str]) -> Weights:
    state = _tensor_dict(spec, path, obj["state_dict"])
    # Lightning saves the whole task: the backbone under `model.`, the margin head under `head.`.
    backbone = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    if not backbone:
        raise fail(spec, path, f"state_dict has no `model.` keys (found {_sample(state)})")
    hparams = obj.get("hyper_parameters")
    arch = hparams.get("arch") if isinstance(hparams, Mapping) else None
    name = network
    if name is None and isinstance(arch, str):
        name = _ADAFACE_ARCH.get(arch)
    if name is None:
        raise fail(spec, path, f"cannot tell the backbone (hyper_parameters.arch = {arch!r}; known: "
                    f"{', '.join(sorted(_ADAFACE_ARCH))})", _NAME_HINT)
    return Weights(name, DEFAULT_EMBEDDING_SIZE, "BGR", backbone, path)


def _plain_state_dict(spec: str, path: Path, obj: Mapping[str, Any], network: Optional[str],
                      embedding_size: Optional[int]) -> Weights:
    state = _tensor_dict(spec, path, obj)
    if network is None:
        raise fail(spec, path, "a bare state dict does not say which backbone it is for",
                    f"{_NAME_HINT}; known: {', '.join(names())}")
    for prefix in _WRAPPER_PREFIXES:  # DDP / wrapper prefixes, removed only when every key has one
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
            break
    return Weights(network, embedding_size or DEFAULT_EMBEDDING_SIZE, "RGB", state, path)


def newest_checkpoint(directory: Path, spec: Optional[str] = None) -> Optional[Path]:
    """The checkpoint file that `latest` names in a run directory (`<run>/checkpoints/latest`) or in its
    `checkpoints/` folder (`latest` right there); None where neither pointer exists."""
    for folder in (directory / CHECKPOINTS_DIR, directory):
        pointer = folder / LATEST
        if pointer.is_file():
            try:
                name = pointer.read_text().strip()
            except (OSError, UnicodeDecodeError) as error:
                raise fail(spec or str(directory), pointer, f"unreadable ({error})") from error
            path = folder / name
            if not name or "/" in name or not path.is_file():
                raise fail(spec or str(directory), pointer,
                           f"names {name!r}, which is not a checkpoint file in {folder}")
            return path
    return None


def read_file(spec: str, path: Path, network: Optional[str], embedding_size: Optional[int] = None) -> Weights:
    """A checkpoint file in any of the layouts above; `embedding_size` is for a bare state dict."""
    obj = read_tensors_file(spec, path)
    if isinstance(obj, Mapping) and "student" in obj and "config" in obj:
        return _own_checkpoint(spec, path, obj, network)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        return _adaface_checkpoint(spec, path, obj, network)
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return _plain_state_dict(spec, path, obj, network, embedding_size)
    found = _sample(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
    raise fail(spec, path, f"unrecognised checkpoint layout (top level: {found}); expected a state dict, our "
                "checkpoint (student + config), an AdaFace .ckpt (state_dict) or a CVLFace directory")
