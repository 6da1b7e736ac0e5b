"""The command line of `python -m distill`: run training, turn known failures into one-line errors."""
from __future__ import annotations

import os
import sys
from typing import Sequence

import models
import pipeline
from configs import ConfigError
from distill.checkpoint import CheckpointError

# Failures whose message already says what, where and what was found: no traceback needed.
KNOWN_ERRORS = (ConfigError, CheckpointError, models.TeacherLoadError, models.UnknownModelError,
                pipeline.ShardError, pipeline.BatchSizeError, pipeline.PipelineDeviceError,
                pipeline.UnknownAugmentationError, FileNotFoundError)


def run(argv: Sequence[str]) -> int:
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
