"""Fine-tuning: the student's backbone from trained weights before step 0 (`student.init`).

Reads the weights through models.read_weights (the one reader of checkpoints, run directories, exported
and CVLFace folders and hub specs: no code runs), loads them into the freshly built student, and says
where they came from (`InitSource`, stored in every checkpoint of the run under `init`). The head, the
optimizer and the schedule are the run's own, fresh: this is not a resume.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from common.files import sha256_file
from configs import RunConfig
from models import CheckpointError
from models.loading import read_weights


def init_student(student: nn.Module, cfg: RunConfig) -> Optional[dict]:
    """Load `student.init` into `student` (built as model.*); None without one. Returns the record of the
    source: {"spec", "file", "sha256", "step", "loaded", "missing", "unexpected"} (plain data for the
    checkpoint). Strict (student.init_strict): any missing, unexpected or misshapen key is a CheckpointError
    naming them; else the keys that fit are loaded and the rest listed in the record."""
    spec = cfg.student.init
    if spec is None:
        return None
    found = read_weights(spec, network=cfg.model.name)
    state = dict(found.state_dict)
    if found.color_space == "BGR":  # CVLFace/AdaFace weights take BGR: reorder the first conv's input channels
        state = _rgb_first_conv(spec, found.file, state)
    expected = student.state_dict()
    # BatchNorm fills a missing num_batches_tracked itself (as models.loading does)
    missing = sorted(k for k in expected if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in expected)
    misshapen = sorted(k for k in state if k in expected and state[k].shape != expected[k].shape)
    if cfg.student.init_strict and (missing or unexpected or misshapen):
        raise CheckpointError(f"student.init={spec!r}: {found.file}: the weights do not fit model.name="
                              f"{cfg.model.name!r} (embedding size {cfg.model.embedding_size}): "
                              f"{_keys('missing', missing)}{_keys('unexpected', unexpected)}"
                              f"{_keys('misshapen', misshapen)}set student.init_strict=false to load the keys "
                              f"that fit")
    fits = {k: v.to(expected[k].dtype) if v.is_floating_point() else v
            for k, v in state.items() if k in expected and k not in misshapen}
    with torch.no_grad():
        student.load_state_dict(fits, strict=False)
    return {"spec": spec, "file": str(found.file), "sha256": sha256_file(found.file) if Path(found.file).is_file()
            else "", "step": found.step, "loaded": len(fits), "missing": missing, "unexpected": unexpected,
            "misshapen": misshapen}


def describe(record: dict) -> str:
    """One log line for the record init_student returned."""
    step = f" (step {record['step']})" if record["step"] is not None else ""
    text = (f"student.init: {record['loaded']} tensors from {record['file']}{step}, sha256 "
            f"{record['sha256'][:12]}; head, optimizer and schedule fresh")
    for what in ("missing", "unexpected", "misshapen"):
        if record[what]:
            text += f"; {len(record[what])} {what} key(s) left as initialised: {', '.join(record[what])}"
    return text


def _keys(what: str, keys: list) -> str:
    if not keys:
        return ""
    shown = ", ".join(keys[:5]) + (f", ... ({len(keys) - 5} more)" if len(keys) > 5 else "")
    return f"{len(keys)} {what} key(s): {shown}; "


def _rgb_first_conv(spec: str, file: Path, state: dict) -> dict:
    """The first convolution over 3 input channels with its input channels reversed: a net fed RGB then
    computes what the BGR-trained net computes (the flip FrozenNet does at its input, folded into weights)."""
    for key, value in state.items():
        if value.dim() == 4 and value.shape[1] == 3:
            return {**state, key: value.flip(1)}
    raise CheckpointError(f"student.init={spec!r}: {file}: BGR weights without a 3-channel first convolution "
                          "to reorder")
