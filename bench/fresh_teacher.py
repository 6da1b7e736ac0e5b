"""`python -m bench.fresh_teacher NETWORK OUT`: a freshly initialised backbone saved as a teacher file.

The GPU check (bench/gpu_check.sh) distils from a teacher without downloading one: a registered backbone
(models.build, seeded) written as an arcface_torch-style state dict, which `teacher.spec=OUT
teacher.network=NETWORK` loads through the training loop's own path (models.load_teacher: strict keys,
shapes and finite values). Its weights change nothing in what the check measures (a step's cost, a resume).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from bench.settings import BenchError
from common.errors import run_command

PROG = "python -m bench.fresh_teacher"


def write(network: str, out: Path, seed: int = 0) -> Path:
    """Save a freshly initialised `network` (seeded) as a state dict at `out`, atomically; returns `out`."""
    import torch

    import models
    from common.files import atomic_path

    if network not in models.names():
        raise BenchError(f"network {network!r}: not a registered backbone; known: {', '.join(models.names())}")
    torch.manual_seed(seed)
    state = models.build(network).state_dict()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=".pth") as tmp:
        torch.save(state, tmp)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("network", help="a registered backbone, e.g. iresnet50")
    p.add_argument("out", type=Path, help="the .pth file to write")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    def run() -> int:
        path = write(args.network, args.out, args.seed)
        print(f"wrote a fresh {args.network} (seed {args.seed}) to {path}: teacher.spec={path} "
              f"teacher.network={args.network}")
        return 0

    return run_command(PROG, run)


if __name__ == "__main__":
    sys.exit(main())
