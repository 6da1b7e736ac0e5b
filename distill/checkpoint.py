"""Run checkpoints on disk: `<output>/checkpoints/step-<9 digits>.pt` and the `latest` pointer.

A checkpoint is a dict of plain tensors, numbers, strings, lists and dicts (docs/DESIGN.md, "The
project's concrete seams"), so `torch.load(weights_only=True)` reads it and no code runs on load.
Every file is written to a temporary name, flushed to disk and renamed into place, so a run killed at
any moment leaves either the old or the new checkpoint, never a torn one.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

import torch

REQUIRED_KEYS = ("student", "head", "optimizer", "scheduler", "scaler", "step", "epoch", "epoch_step", "rng",
                 "config")
_NAME = re.compile(r"^step-(\d{9})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint or the `latest` pointer is missing, unreadable or incomplete."""


def directory(output: str | Path) -> Path:
    return Path(output) / "checkpoints"


def file_name(step: int) -> str:
    return f"step-{step:09d}.pt"


def save(output: str | Path, state: dict) -> Path:
    """Write `state` as the checkpoint of `state["step"]`, then point `latest` at it."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    assert not missing, f"checkpoint state lacks {missing}"
    folder = directory(output)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name(int(state["step"]))
    _atomic_write(path, lambda f: torch.save(state, f))
    _atomic_write(folder / "latest", lambda f: f.write((path.name + "\n").encode()))
    return path


def latest(output: str | Path) -> Optional[Path]:
    """The newest checkpoint of the run in `output`, or None when it has none yet."""
    pointer = directory(output) / "latest"
    if not pointer.exists():
        return None
    name = pointer.read_text().strip()
    path = pointer.parent / name
    if not _NAME.match(name) or not path.is_file():
        raise CheckpointError(f"{pointer} names {name!r}, which is not a checkpoint file in {pointer.parent}")
    return path


def load(path: str | Path) -> dict:
    """Read a checkpoint with `torch.load(weights_only=True)` onto the CPU and check its keys."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # a torn or foreign file: say which one and why
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: expected a dict, found {type(state).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path}: missing entries {missing} (expected {list(REQUIRED_KEYS)})")
    return state


def resolve_resume(resume: str, output: str | Path) -> Optional[Path]:
    """Which checkpoint a run starts from: `auto` -> the newest in `output` (None for a new run),
    `none` -> None (refusing an `output` that already holds checkpoints), else that file, or that run
    directory's newest checkpoint."""
    if resume == "auto":
        return latest(output)
    if resume == "none":
        found = latest(output)
        if found is not None:
            raise CheckpointError(f"resume: none, but {output} already holds checkpoints (newest {found.name}); "
                                  "use resume=auto to continue it or choose another output")
        return None
    path = Path(resume)
    if path.is_dir():
        found = latest(path)
        if found is None:
            raise CheckpointError(f"resume: {resume} is a directory without {directory(path)}/latest")
        return found
    if not path.is_file():
        raise CheckpointError(f"resume: {resume} is neither auto, none, a checkpoint file nor a run directory")
    return path


def prune(output: str | Path, *, keep: int, steps_per_epoch: int) -> None:
    """Delete mid-epoch checkpoints beyond the newest `keep` (0 keeps all). Checkpoints at an epoch's
    end are kept: they are what the evaluator's batch mode and users compare."""
    if keep == 0:
        return
    folder = directory(output)
    newest = latest(output)
    steps = sorted(int(m.group(1)) for p in folder.iterdir() if (m := _NAME.match(p.name)))
    mid_epoch = [s for s in steps if s % steps_per_epoch != 0]
    for step in mid_epoch[:-keep]:
        path = folder / file_name(step)
        if path != newest:
            path.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    _atomic_write(Path(path), lambda f: f.write(text.encode()))


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
