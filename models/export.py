"""Write a checkpoint's backbone as a deployable folder, proven equal to the checkpoint before it appears.

`export(checkpoint, output)` loads the backbone (models.load_backbone: any checkpoint, run directory or
weights file), writes into a temporary folder beside `output`:
  model.onnx          the RGB-fed FrozenNet (models.onnx_export), with its preprocessing in metadata_props
  model.safetensors   the backbone's state dict (format "onnx": its own key names; "cvlface": CVLFace's
                      `model.net.<key>`, with pretrained_model/model.yaml and config.json's `conf`, the
                      layout models.load_teacher reads, so the student can be the next run's teacher)
  config.json         architecture, embedding size, preprocessing, cost, parity, the training config
  README.md           the model card (models.model_card)
checks the ONNX model against the checkpoint with onnxruntime (models.parity; and for "cvlface" the
folder loaded back as a teacher), and only then renames the folder to `output`. A failed check, a bad
checkpoint or any error leaves `output` as it was. An existing non-empty `output` is refused unless
`force` (then replaced as a whole, after the new folder is complete).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
import yaml

from common.errors import InputError
from common.files import write_atomic

from . import check_faces, complexity, model_card, onnx_export, onnx_net, parity
from .loading import load_backbone
from .weights import CHECKPOINTS_DIR, read_tensors_file

FORMATS = ("onnx", "cvlface")
ROUND_TRIP_TOLERANCE = 1e-5  # of the largest |embedding value|, at least 1e-5 absolute
CVLFACE_PREFIX = "model.net."  # models.weights.read_directory's key prefix for model.safetensors


class ExportError(InputError):
    """An export refused (output folder, format) or failed (parity); the message names the file."""


@dataclass(frozen=True)
class Exported:
    folder: Path
    parity: parity.Parity
    info: dict


def _check_output(output: Path, force: bool) -> None:
    if output.exists() and not output.is_dir():
        raise ExportError(f"{output}: --output exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise ExportError(f"{output}: the output folder is not empty; give --force to replace it, or another --output")


def _training_config(file: Path) -> Optional[dict]:
    """The effective config saved in one of our checkpoints, else None."""
    if file.suffix not in (".pt", ".pth"):
        return None
    obj = read_tensors_file(str(file), file)
    config = obj.get("config") if isinstance(obj, dict) else None
    return config if isinstance(config, dict) else None


def _evaluations(file: Path) -> list[dict]:
    """The run's last verification records (metrics.jsonl) and `python -m evaluate`'s report of this very
    checkpoint (<run>/reports/<name>.json), where they exist."""
    if file.parent.name != CHECKPOINTS_DIR:
        return []
    run, found = file.parent.parent, []
    metrics = run / "metrics.jsonl"
    if metrics.is_file():
        last: dict[str, dict] = {}
        for line in metrics.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut by a kill: the training log's own reader skips it too
                continue
            if isinstance(record, dict) and record.get("event") == "verification":
                last[record["target"]] = record
        found += [{"source": "metrics.jsonl", "set": Path(t).stem, "step": r["step"], "accuracy": r["accuracy"],
                   "std": r.get("accuracy_std")} for t, r in sorted(last.items())]
    report = run / "reports" / f"{file.stem}.json"
    if report.is_file():
        written = json.loads(report.read_text())
        found += [{"source": f"reports/{report.name}", "set": s, "step": written.get("step"), "accuracy": r["acc"],
                   "std": r.get("std")} for s, r in written.get("results", {}).items() if "acc" in r]
    return found


def _state_bytes(net: torch.nn.Module, prefix: str) -> bytes:
    from safetensors.torch import save

    state = {prefix + k: v.detach().contiguous() for k, v in net.state_dict().items()}
    return save(state, metadata={"format": "pt"})


def _commit(tmp: Path, output: Path) -> None:
    """Rename the finished folder to `output`; an old `output` is moved aside first and removed after."""
    old = output.with_name(f".{output.name}.{os.getpid()}.old")
    if output.exists():
        os.replace(output, old)
    os.replace(tmp, output)
    shutil.rmtree(old, ignore_errors=True)


def _round_trip(folder: Path, images: torch.Tensor, reference, source: Path, output: Path) -> dict:
    """`folder` loaded back as a teacher (models.load_backbone, torch) against the checkpoint's embeddings."""
    back = load_backbone(folder, device="cpu")
    diff = float(abs(parity.torch_embeddings(back.net, images) - reference).max())
    # Relative to the embeddings' scale: the same weights, but a checkpoint saved channels_last
    # (train.channels_last) runs other convolution kernels than the contiguous copy safetensors holds
    # (3.3e-6 on embeddings up to 8.6 for the demo's iresnet_s teacher).
    tolerance = ROUND_TRIP_TOLERANCE * max(1.0, float(abs(reference).max()))
    if diff > tolerance:
        raise ExportError(f"{source}: the cvlface folder loaded back as a teacher differs from the checkpoint by "
                          f"{diff:.3g} > {tolerance:.3g}; nothing was written to {output}")
    return {"max_abs_diff": diff, "tolerance": tolerance}


def _teacher_cost(config: Optional[dict]) -> Optional[dict]:
    """The training run's teacher, named with its cost (or why not), for the card; None without one."""
    if config is not None and isinstance(config.get("teacher"), dict) and config["teacher"].get("spec"):
        t_name, t_cost, why = complexity.of_teacher(config["teacher"].get("spec"), config["teacher"].get("network"))
        return {"name": t_name, "complexity": t_cost, "why_not": why}
    return None


def _write_weights(tmp: Path, loaded, fmt: str) -> tuple[dict, dict]:
    """model.safetensors in `tmp` (with CVLFace's key prefix and pretrained_model/model.yaml for the
    cvlface format). Returns (each file written so far: what it is, CVLFace's `conf` of the net)."""
    files = {onnx_net.MODEL_FILE: "the backbone for onnxruntime (input `images`, output `embedding`)",
             "model.safetensors": "the backbone's weights (safetensors)"}
    conf = {"name": loaded.name, "output_dim": loaded.embedding_size, "input_size": [3, 112, 112],
            "color_space": loaded.net.color_space}
    write_atomic(tmp / "model.safetensors", _state_bytes(loaded.net.net, CVLFACE_PREFIX if fmt == "cvlface" else ""))
    if fmt == "cvlface":
        (tmp / "pretrained_model").mkdir()
        write_atomic(tmp / "pretrained_model" / "model.yaml", yaml.safe_dump(conf, sort_keys=False))
        files["model.safetensors"] += f", keys `{CVLFACE_PREFIX}<key>` as CVLFace's hub repositories"
        files["pretrained_model/model.yaml"] = "CVLFace's description of the net (name, output_dim, color_space)"
    return files, conf


def _described(info: dict, cost, teacher: Optional[dict]) -> dict:
    """config.json's content: the card's facts, the costs as plain numbers."""
    described = {k: v for k, v in info.items() if k not in ("complexity", "teacher")}
    described["complexity"] = {"student": cost.as_dict(),
                               "teacher": None if teacher is None else {
                                   "name": teacher["name"], "why_not": teacher["why_not"],
                                   **(teacher["complexity"].as_dict() if teacher["complexity"] else {})}}
    return described


def export(checkpoint: Union[str, Path], output: Union[str, Path], *, fmt: str = "onnx",
           check_data: Optional[Path] = None, force: bool = False, network: Optional[str] = None,
           embedding_size: Optional[int] = None) -> Exported:
    if fmt not in FORMATS:
        raise ExportError(f"--format: expected one of {', '.join(FORMATS)}, found {fmt!r}")
    output = Path(output)
    _check_output(output, force)
    faces = check_faces.read_faces(check_data)
    loaded = load_backbone(checkpoint, network=network, embedding_size=embedding_size, device="cpu")
    images = parity.decode(faces.encoded)
    reference = parity.torch_embeddings(loaded.net, images)
    config = _training_config(loaded.file)
    cost = complexity.of_module(loaded.net.net)
    teacher = _teacher_cost(config)

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        props = onnx_export.metadata(loaded.name, loaded.embedding_size, loaded.net.color_space)
        onnx_export.export_onnx(loaded.net, tmp / onnx_net.MODEL_FILE, props)
        result = parity.onnx_parity(reference, onnx_net.session(tmp / onnx_net.MODEL_FILE), images)
        if not result.passed:
            raise ExportError(f"{loaded.file}: the ONNX export does not reproduce the checkpoint: {result.text()}, "
                              f"below the required cosine {parity.MIN_COSINE}; nothing was written to {output}")
        files, conf = _write_weights(tmp, loaded, fmt)
        info: dict[str, Any] = {
            "architecture": loaded.name, "embedding_size": loaded.embedding_size,
            "trained_color_space": loaded.net.color_space, "format": fmt, "checkpoint": str(loaded.file),
            "step": loaded.step, "input": props, "complexity": cost, "teacher": teacher,
            "parity": result.as_dict(), "check_data": faces.source, "evaluations": _evaluations(loaded.file),
            "config": config, "files": {**files, "config.json": "this export's description (machine-readable)",
                                        "README.md": "this card"},
            "onnxruntime": _version("onnxruntime"), "torch": torch.__version__}
        described = _described(info, cost, teacher)
        if fmt == "cvlface":
            described["conf"] = conf  # what models.weights.read_directory (and CVLFace) reads
            write_atomic(tmp / "config.json", json.dumps(described, indent=1, default=str) + "\n")
            round_trip = _round_trip(tmp, images, reference, loaded.file, output)
            info["round_trip"] = described["round_trip"] = round_trip
        write_atomic(tmp / "config.json", json.dumps(described, indent=1, default=str) + "\n")
        write_atomic(tmp / "README.md", model_card.card(info))
        _check_output(output, force)  # still free: another job may have written there meanwhile
        _commit(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Exported(output, result, info)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
