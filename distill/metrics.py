"""Rank 0's record of training: the tqdm bar, `<output>/metrics.jsonl` (one JSON object a line) and the
same scalars as TensorBoard events under `<output>/tensorboard/`."""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from tqdm import tqdm

from common.errors import InputError
from common.files import write_atomic
from distill.distributed import DistContext, all_mean

# The scalars of a training record (distill.train._log) that go to TensorBoard, as train/<name>.
TRAIN_SCALARS = ("loss", "lr", "images_per_s", "data_wait", "grad_norm", "cos_st", "alpha", "margin_scaler", "skipped")


class Meter:
    """Sums over one logging interval, kept on the device so that logging costs no per-step sync."""

    FIELDS = ("loss", "cos_st", "alpha", "margin_scaler")

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.grad_norm: torch.Tensor | float = float("nan")  # the interval's last step's (after all-reduce)
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(self.FIELDS), dtype=torch.float64, device=self.device)
        self.seen = torch.zeros(len(self.FIELDS), dtype=torch.float64, device=self.device)
        self.steps = 0
        self.wait = 0.0
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor, stats: dict) -> None:
        """Record a step whose loss was finite."""
        for i, name in enumerate(self.FIELDS):
            value = loss if name == "loss" else stats.get(name)
            if value is not None:
                self.sums[i] += torch.as_tensor(value, dtype=torch.float64, device=self.device).detach()
                self.seen[i] += 1

    def summary(self, ctx: DistContext) -> dict:
        """Means over the interval and over ranks (one all-reduce: every rank must call this)."""
        totals = all_mean(ctx, torch.stack([self.sums, self.seen])).cpu()
        out = {}
        for i, name in enumerate(self.FIELDS):
            out[name] = float(totals[0, i] / totals[1, i]) if totals[1, i] > 0 else None
        return out


class RunLog:
    """The tqdm bar, metrics.jsonl and (with `tensorboard`) the event files, on rank 0 only; other ranks get
    a silent instance. The one writer of the run's records: the loop hands every record to `write`."""

    def __init__(self, output: str | Path, *, enabled: bool, start_step: int, total_steps: int,
                 tensorboard: bool = False) -> None:
        self.enabled = enabled
        self.path = Path(output) / "metrics.jsonl"
        self.bar: Optional[tqdm] = None
        self.events = None  # a torch.utils.tensorboard.SummaryWriter
        if enabled:
            _drop_records_after(self.path, start_step)
            if tensorboard:
                self.events = _event_writer(Path(output) / "tensorboard", start_step)
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.events is not None:
            for tag, value in scalars(record).items():
                self.events.add_scalar(tag, value, global_step=record["step"])
        if self.bar is not None and "loss" in record:
            self.bar.set_postfix(loss=_fmt(record["loss"]), lr=f"{record['lr']:.4g}",
                                 img_s=f"{record['images_per_s']:.0f}", refresh=False)

    def message(self, text: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.events is not None:
            self.events.close()  # flushes: the events of the last steps are on disk
            self.events = None


def scalars(record: dict) -> dict[str, float]:
    """A record's TensorBoard scalars, by tag: a training record's TRAIN_SCALARS as train/<name> (None, a
    field with no value in the interval, is left out), a verification record's accuracy as
    eval/<set name>/accuracy, a benchmark record's headline as eval/<benchmark>/<metric> (eval/IJBC/tar@far=1e-4,
    eval/tinyface/rank-1); nothing for other events (resume_changes)."""
    if record.get("event") == "verification":
        return {f"eval/{Path(record['target']).stem}/accuracy": float(record["accuracy"])}
    if record.get("event") == "benchmark":
        return {f"eval/{record['target']}/{record['metric']}": float(record["value"])}
    if "event" in record:
        return {}
    return {f"train/{name}": float(record[name]) for name in TRAIN_SCALARS if record.get(name) is not None}


def read_records(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; a line that is not a JSON record (a torn tail) is left out with a warning."""
    return [record for _, record in _records(path)]


def _event_writer(folder: Path, start_step: int):
    """A SummaryWriter whose purge_step hides the points of steps after `start_step` that an earlier attempt
    wrote (a resumed run logs them again), as _drop_records_after does for metrics.jsonl: TensorBoard then
    shows every step once. A fresh run (start step 0) hides all of an earlier run's points in the folder."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:  # torch's message when the tensorboard package is missing
        raise InputError(f"train.tensorboard: true needs the tensorboard package ({error}); install it (pip install "
                         f"tensorboard) or set train.tensorboard=false") from error
    return SummaryWriter(log_dir=str(folder), purge_step=start_step + 1)


def _fmt(value: Optional[float]) -> str:
    return "nan" if value is None else f"{value:.4f}"


def _drop_records_after(path: Path, step: int) -> None:
    """A resumed run repeats the steps after its checkpoint: drop the earlier attempt's records of them,
    so that metrics.jsonl reads as one run. A line that is not JSON (the torn tail of a process killed
    mid-write, or of a full disk) is dropped with a warning."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    kept = [line for line, record in _records(path, lines) if record.get("step", 0) <= step]
    if len(kept) != len(lines):
        write_atomic(path, "".join(line + "\n" for line in kept))


def _records(path: Path, lines: Optional[list[str]] = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(line, record) for each JSON record of metrics.jsonl `path` (its `lines`, when already read); a line
    that is not one is skipped with a warning naming the file and the line."""
    if lines is None:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            warnings.warn(f"{path}: line {number} of {len(lines)} is not a JSON record (a write torn by a kill or a "
                          f"full disk); dropped: {line[:80]!r}", RuntimeWarning, stacklevel=3)
            continue
        yield line, record
