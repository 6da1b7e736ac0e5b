"""The command line of `python -m distill`: training, `cache-teacher`, `plan` and `plot`; known failures
become one-line errors."""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

import torch

from common.errors import run_command
import models
from configs import ConfigError
from distill import distributed, teacher as teachers, teacher_cache
from distill.teacher_cache import CacheManifest

# Failures whose message already says what, where and what was found, besides common.errors.InputError
# (which every package's own errors derive from): no traceback needed.
KNOWN_ERRORS = (ConfigError,)


def run(argv: Sequence[str]) -> int:
    if argv[:1] == ["cache-teacher"]:
        return run_command("python -m distill cache-teacher", lambda: _report_cache(cache_teacher(argv[1:])),
                           known=KNOWN_ERRORS, interrupted="interrupted; re-run the same command to resume")
    if argv[:1] == ["plan"]:
        from distill.preview import main as plan

        return run_command("python -m distill plan", lambda: plan(argv[1:]), known=KNOWN_ERRORS)
    if argv[:1] == ["plot"]:
        from distill.curves import main as plot

        return run_command("python -m distill plot", lambda: plot(argv[1:]), known=KNOWN_ERRORS)
    from distill.preemption import EXIT_PREEMPTED
    from distill.train import main as train

    # a run stopped by SIGTERM/SIGUSR1/SIGINT at a checkpoint exits EXIT_PREEMPTED (requeue and resume)
    return run_command("python -m distill", lambda: EXIT_PREEMPTED if train(argv).preempted else 0, known=KNOWN_ERRORS,
                       interrupted="interrupted; re-run the same command to resume from the newest checkpoint")


def _report_cache(manifest: CacheManifest) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(f"teacher cache complete: {manifest.num_samples} samples x 2 views x {manifest.embedding_size} "
              f"(float16), teacher sha256 {manifest.teacher_sha256[:12]}, {manifest.precision}")


def cache_teacher(argv: Optional[Sequence[str]] = None) -> CacheManifest:
    """Load the teacher, run it at the loop's precision over every sample (distill.teacher_cache.build)."""
    args = _cache_args(argv)
    ctx = distributed.setup()
    try:
        device = ctx.device if args.device == "auto" else torch.device(args.device)
        network = models.load_teacher(args.teacher, network=args.network)
        lock = distributed.rank0_lock(ctx, args.out, f"python -m distill cache-teacher --out {args.out}")
        # channels_last as the loop's default: faster here too.
        source = teachers.TeacherSource(network, device=device, channels_last=True,
                                        autocast_dtype=teachers.autocast_dtype(args.precision, device))
        with lock:  # one writer of the cache; under torchrun rank 0 holds it for all ranks
            return teacher_cache.build(source, str(args.teacher), args.shards, args.out, ctx=ctx, device=device,
                                       batch_size=args.batch_size, chunk=args.chunk, progress=not args.no_progress)
    finally:
        distributed.teardown(ctx)


def _cache_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m distill cache-teacher",
                                     description="Run the teacher once over every sample, plain and mirrored.")
    parser.add_argument("--teacher", required=True, help="teacher spec: hf:<repo>, a file or directory, a run dir")
    parser.add_argument("--network", default=None, help="backbone name for a bare state dict (arcface_torch .pth)")
    parser.add_argument("--shards", required=True, action="append",
                        help="a directory written by `python -m convert`; repeat the flag for several, laid end to "
                             "end in that order (as data.shards)")
    parser.add_argument("--out", required=True, help="the cache directory (created; an existing one is resumed)")
    parser.add_argument("--batch-size", type=int, default=256, help="teacher batch size (default 256)")
    parser.add_argument("--chunk", type=int, default=4096,
                        help="samples per resume unit (default 4096; a resumed cache keeps its own)")
    parser.add_argument("--device", default="auto", help="auto (the rank's GPU, else CPU), cpu, cuda, cuda:N")
    parser.add_argument("--precision", default="auto", choices=teachers.PRECISIONS,
                        help="the teacher's precision, as train.precision (auto: bf16 on CUDA, fp32 on the CPU); "
                             "recorded in the manifest")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    for flag, value in (("--batch-size", args.batch_size), ("--chunk", args.chunk)):
        if value < 1:
            parser.error(f"{flag}: expected >= 1, found {value}")
    return args
