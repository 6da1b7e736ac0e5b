"""Saving and resuming a run: `<output>/checkpoints/step-<9 digits>.pt`, the `latest` pointer, and the
random number generators' states that make a resume exact.

A checkpoint is a dict of plain tensors, numbers, strings, lists and dicts (docs/DESIGN.md, "The
project's concrete seams"), so `torch.load(weights_only=True)` reads it and no code runs on load.
Every file is written atomically (common.files), so a run killed at any moment leaves either the old
or the new checkpoint, never a torn one. Reading a checkpoint's backbone for any other purpose (a
teacher, the evaluator) is models.load_backbone's job; `models.newest_checkpoint` reads `latest`.
"""
from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from common.files import write_atomic
import models
from models import CHECKPOINTS_DIR, LATEST, CheckpointError

REQUIRED_KEYS = ("student", "head", "optimizer", "scheduler", "scaler", "step", "epoch", "epoch_step", "rng",
                 "config")
_NAME = re.compile(r"^step-(\d{9})\.pt$")
_ROWS = re.compile(r"^step-(\d{9})\.head$")

__all__ = ["CheckpointError", "REQUIRED_KEYS", "RESUMABLE_KEYS", "capture_rng", "directory", "file_name", "latest",
           "load", "prune", "recipe_changes", "resolve_resume", "restore_rng", "save", "seed_all"]

# Keys a resumed run may change without changing what the run computes: where it stops, how it logs,
# saves and evaluates, where its files are, how the data is read (same samples, same order), the memory
# layout, whether the teacher runs online or from its cache (checked against the same weights), and whether
# the class centres are sharded across ranks (the same results; the rows are re-sharded on load).
RESUMABLE_KEYS = ("output", "resume", "resume_changes", "train.max_steps", "train.epochs", "train.log_every",
                  "train.checkpoint_every", "train.keep_checkpoints", "train.max_nonfinite", "train.channels_last",
                  "train.tensorboard", "train.tf32",
                  "data.backend", "distill.teacher_cache", "distill.centres_from_cache", "distill.shard_classes",
                  "eval.")


def directory(output: str | Path) -> Path:
    return Path(output) / CHECKPOINTS_DIR


def file_name(step: int) -> str:
    return f"step-{step:09d}.pt"


def rows_dir(output: str | Path, step: int) -> Path:
    """The folder of a sharded head's per-rank row files of checkpoint `step` (distill.head_rows); a folder,
    so that the evaluator's batch mode, which reads every *.pt file of checkpoints/, never sees them."""
    return directory(output) / f"step-{step:09d}.head"


def save(output: str | Path, state: dict) -> Path:
    """Write `state` as the checkpoint of `state["step"]`, then point `latest` at it."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    assert not missing, f"checkpoint state lacks {missing}"
    folder = directory(output)
    path = folder / file_name(int(state["step"]))
    write_atomic(path, lambda f: torch.save(state, f))
    write_atomic(folder / LATEST, path.name + "\n")
    return path


def latest(output: str | Path) -> Optional[Path]:
    """The newest checkpoint of the run in `output`, or None when it has none yet."""
    return models.newest_checkpoint(Path(output))


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
            raise CheckpointError(f"resume: {resume} is a directory without {directory(path)}/{LATEST}")
        return found
    if not path.is_file():
        raise CheckpointError(f"resume: {resume} is neither auto, none, a checkpoint file nor a run directory")
    return path


def recipe_changes(saved: dict, saved_world_size: int, current: dict, world_size: int) -> dict[str, tuple]:
    """{dotted key: (old, new)} for every key of the run's recipe that differs between the config a
    checkpoint was saved with and the current one (both as configs.to_dict gives them). The per-rank
    batch and train.accumulate may change with the world size as long as the global batch stays the same."""
    old, new = _flatten(saved), _flatten(current)
    changes = {key: (old.get(key), new.get(key)) for key in sorted(set(old) | set(new))
               if old.get(key) != new.get(key) and not key.startswith(RESUMABLE_KEYS)}
    # train.accumulate splits a rank's batch into micro-batches: only the product matters to the data and
    # the schedule (the loader's batches are batch_size x accumulate), so the two may trade
    if "train.batch_size" in changes or "train.accumulate" in changes:
        was = (old.get("train.batch_size"), old.get("train.accumulate") or 1)
        now = (new.get("train.batch_size"), new.get("train.accumulate") or 1)
        changes.pop("train.batch_size", None), changes.pop("train.accumulate", None)
        if (was[0] or 0) * was[1] * saved_world_size != (now[0] or 0) * now[1] * world_size:
            changes["global batch (train.batch_size x train.accumulate x ranks)"] = (
                f"{was[0]} x {was[1]} x {saved_world_size}", f"{now[0]} x {now[1]} x {world_size}")
    return changes


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = tuple(value) if isinstance(value, list) else value
    return flat


def prune(output: str | Path, *, keep: int, steps_per_epoch: int) -> None:
    """Delete mid-epoch checkpoints beyond the newest `keep` (0 keeps all). Checkpoints at an epoch's
    end are kept: they are what the evaluator's batch mode and users compare."""
    folder = directory(output)
    newest = latest(output)
    steps = sorted(int(m.group(1)) for p in folder.iterdir() if (m := _NAME.match(p.name)))
    mid_epoch = [s for s in steps if s % steps_per_epoch != 0]
    for step in (mid_epoch[:-keep] if keep else []):
        path = folder / file_name(step)
        if path != newest:
            path.unlink(missing_ok=True)  # the main file first: it is what commits the row files
    # row folders that no main file names, older than the newest checkpoint: those of the checkpoints just
    # deleted, and a save killed between its row files and its main file
    for p in list(folder.iterdir()):
        m = _ROWS.match(p.name)
        if m and steps and int(m.group(1)) < steps[-1] and not (folder / file_name(int(m.group(1)))).exists():
            shutil.rmtree(rows_dir(output, int(m.group(1))), ignore_errors=True)


# The random number generators. The data order and flips do not depend on these (the pipeline derives
# them from (seed, epoch, step)); these cover dropout and anything else drawn from torch, numpy or
# Python's `random` during training. Stored as tensors, lists and numbers only (weights_only=True).

def capture_rng() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
