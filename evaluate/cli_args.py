"""The option value types and the model-and-run options that every `python -m evaluate` command shares."""

from __future__ import annotations

import argparse
from pathlib import Path


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, found {text!r}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, found {text!r}")
    return value


def far(text: str) -> float:
    """A rate in (0, 1): --far (the impostor rule's, or evaluate threshold's operating points) and
    --stranger-rate."""
    value = finite_float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a rate in (0, 1), found {text!r}")
    return value


def model_and_run(p: argparse.ArgumentParser) -> None:
    """The options every command shares: how to build the backbone, and where and how to run it."""
    p.add_argument("--config", type=Path, help="YAML whose model.name/embedding_size build the backbone")
    p.add_argument("--network", help="backbone name for a bare state dict (e.g. iresnet50)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
