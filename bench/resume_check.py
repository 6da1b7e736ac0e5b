"""`python -m bench.resume_check RUN --snapshot FILE --resumed-at N --until M`: did a run resume, not restart?

The GPU check (bench/gpu_check.sh) trains N steps, copies RUN/metrics.jsonl to FILE, and runs the same
command with train.max_steps=M. A resumed run keeps the first run's records of steps 1..N as they were (the
loop drops only records after its checkpoint) and appends N+1..M; a restart would rewrite them from step 1
(the loop drops every record after step 0), and its timings (images_per_s, data_wait) could not repeat byte
for byte. So the check is: the records up to step N unchanged, training steps logged once each and in order
up to M, the newest checkpoint at step M, and a verification record (eval.targets) before and after the
resume. Exit 0 with one summary line, or 2 with one line saying what differs.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

from bench.settings import BenchError
from common.errors import run_command

PROG = "python -m bench.resume_check"


def _records(path: Path) -> list:
    if not path.is_file():
        raise BenchError(f"{path}: not found (no metrics were written)")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = []
    for number, line in enumerate(lines, 1):
        try:
            out.append((line, json.loads(line)))
        except ValueError as err:
            raise BenchError(f"{path}: line {number} is not JSON ({err}): {line[:80]!r}") from err
    return out


def _train_steps(records: list) -> list:
    return [r["step"] for _, r in records if "event" not in r and "loss" in r]


def check(run: Path, snapshot: Path, resumed_at: int, until: int) -> str:
    """The summary line when `run` resumed from step `resumed_at` and went on to `until`; else BenchError."""
    from distill import checkpoint

    if not 0 < resumed_at < until:
        raise BenchError(f"--resumed-at {resumed_at} --until {until}: expected 0 < resumed-at < until")
    before, after = _records(snapshot), _records(run / "metrics.jsonl")
    first = _train_steps(before)
    if not first or first[-1] != resumed_at:
        raise BenchError(f"{snapshot}: the first run's last logged step is {first[-1] if first else None}, "
                         f"expected {resumed_at}")
    kept = [line for line, r in after if r.get("step", 0) <= resumed_at]
    old = [line for line, _ in before]
    if kept != old:
        differ = next((i + 1 for i, (a, b) in enumerate(zip(kept, old)) if a != b), None)
        where = (f"record {differ} differs" if differ is not None else
                 f"the first run left {len(old)} records up to step {resumed_at}, now there are {len(kept)}")
        raise BenchError(f"{run / 'metrics.jsonl'}: the records up to step {resumed_at} are not the first run's "
                         f"({where}): the run restarted instead of resuming from step {resumed_at}")
    steps = _train_steps(after)
    if not steps or steps != sorted(set(steps)) or steps[-1] != until:
        raise BenchError(f"{run / 'metrics.jsonl'}: expected training steps logged once each, in order, up to "
                         f"{until}; found {steps}")
    latest = checkpoint.latest(run)
    saved = checkpoint.load(latest)["step"] if latest is not None else None
    if saved != until:
        raise BenchError(f"{run}: the newest checkpoint ({latest}) is at step {saved}, expected {until}")
    checks = [r for _, r in after if r.get("event") == "verification"]
    for r in checks:
        if not (isinstance(r.get("accuracy"), (int, float)) and math.isfinite(r["accuracy"])
                and 0 <= r["accuracy"] <= 1):
            raise BenchError(f"{run / 'metrics.jsonl'}: verification at step {r.get('step')} has accuracy "
                             f"{r.get('accuracy')!r}, expected a number in [0, 1]")
    if not any(r["step"] <= resumed_at for r in checks) or not any(r["step"] > resumed_at for r in checks):
        raise BenchError(f"{run / 'metrics.jsonl'}: expected a verification record (eval.targets) before and after "
                         f"step {resumed_at}, found them at steps {[r['step'] for r in checks]}")
    accuracy = ", ".join(f"{r['accuracy']:.3f} at step {r['step']}" for r in checks)
    return (f"resumed, not restarted: the records of steps 1..{resumed_at} kept byte for byte, steps "
            f"{resumed_at + 1}..{until} added; newest checkpoint {latest.name} at step {until}; verification "
            f"({checks[0]['target']}): {accuracy}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="the run directory (output=)")
    p.add_argument("--snapshot", type=Path, required=True, help="metrics.jsonl as the first run left it")
    p.add_argument("--resumed-at", type=int, required=True, help="the first run's train.max_steps")
    p.add_argument("--until", type=int, required=True, help="the second run's train.max_steps")
    args = p.parse_args(argv)

    def run() -> int:
        print(check(args.run, args.snapshot, args.resumed_at, args.until))
        return 0

    return run_command(PROG, run)  # distill's CheckpointError is an InputError too


if __name__ == "__main__":
    sys.exit(main())
