"""The command line of `python -m distill` (training) and `python -m distill cache-teacher`: known failures
become one-line errors."""
from __future__ import annotations

import os
import sys
from typing import Sequence

import models
import pipeline
from configs import ConfigError
from distill.checkpoint import CheckpointError
from distill.teacher_cache import TeacherCacheError

# Failures whose message already says what, where and what was found: no traceback needed.
KNOWN_ERRORS = (ConfigError, CheckpointError, models.TeacherLoadError, models.UnknownModelError,
                pipeline.ShardError, pipeline.BatchSizeError, pipeline.PipelineDeviceError,
                pipeline.UnknownAugmentationError, TeacherCacheError, FileNotFoundError)


def run(argv: Sequence[str]) -> int:
    if argv[:1] == ["cache-teacher"]:
        return run_cache(argv[1:])
    if argv[:1] == ["plan"]:
        return run_plan(argv[1:])
    from distill.train import TrainingDiverged, main

    try:
        main(argv)
    except (*KNOWN_ERRORS, TrainingDiverged) as e:
        rank = os.environ.get("RANK")
        prefix = f"[rank {rank}] " if rank not in (None, "0") else ""
        print(f"{prefix}python -m distill: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("python -m distill: interrupted; re-run the same command to resume from the newest checkpoint",
              file=sys.stderr)
        return 130
    return 0


def run_cache(argv: Sequence[str]) -> int:
    """`python -m distill cache-teacher ...`: build (or finish) a teacher embedding cache."""
    from distill.cache_build import main

    try:
        manifest = main(argv)
    except KNOWN_ERRORS as e:
        rank = os.environ.get("RANK")
        prefix = f"[rank {rank}] " if rank not in (None, "0") else ""
        print(f"{prefix}python -m distill cache-teacher: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("python -m distill cache-teacher: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    if os.environ.get("RANK", "0") == "0":
        print(f"teacher cache complete: {manifest.num_samples} samples x 2 views x {manifest.embedding_size} "
              f"(float16), teacher sha256 {manifest.teacher_sha256[:12]}")
    return 0


def run_plan(argv: Sequence[str]) -> int:
    """`python -m distill plan ...`: print the schedule, weight decay and head memory of a config."""
    from distill.preview import main

    try:
        main(argv)
    except KNOWN_ERRORS as e:
        print(f"python -m distill plan: error: {e}", file=sys.stderr)
        return 1
    return 0
