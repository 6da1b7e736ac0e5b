"""Rank 0's view of training: the tqdm bar and `<output>/metrics.jsonl`, one JSON object a line."""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from convert.files import write_atomic
from distill.distributed import DistContext, all_mean


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
    """The tqdm bar and metrics.jsonl, on rank 0 only; other ranks get a silent instance."""

    def __init__(self, output: str | Path, *, enabled: bool, start_step: int, total_steps: int) -> None:
        self.enabled = enabled
        self.path = Path(output) / "metrics.jsonl"
        self.bar: Optional[tqdm] = None
        if enabled:
            _drop_records_after(self.path, start_step)
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.bar is not None and "loss" in record:
            self.bar.set_postfix(loss=_fmt(record["loss"]), lr=f"{record['lr']:.4g}",
                                 img_s=f"{record['images_per_s']:.0f}", refresh=False)

    def message(self, text: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt(value: Optional[float]) -> str:
    return "nan" if value is None else f"{value:.4f}"


def _drop_records_after(path: Path, step: int) -> None:
    """A resumed run repeats the steps after its checkpoint: drop the earlier attempt's records of them,
    so that metrics.jsonl reads as one run. A line that is not JSON (the torn tail of a process killed
    mid-write, or of a full disk) is dropped with a warning."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    kept = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            warnings.warn(f"{path}: line {number} of {len(lines)} is not a JSON record (a write torn by a kill or a "
                          f"full disk); dropped: {line[:80]!r}", RuntimeWarning, stacklevel=2)
            continue
        if record.get("step", 0) <= step:
            kept.append(line)
    if len(kept) != len(lines):
        write_atomic(path, "".join(line + "\n" for line in kept))
