"""The every-N-epochs (or N-steps) verification callback: the student on `.bin` sets, on rank 0 only."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from common.errors import InputError
from configs import EvalConfig
from distill.checkpoint import capture_rng, restore_rng
from distill.distributed import DistContext, barrier


class MissingTargetError(InputError, FileNotFoundError):
    """A verification set named in eval.targets does not exist."""


def check_targets(targets: tuple[str, ...]) -> None:
    """Fail at start, not after the first epoch, when a requested set is missing, unreadable or too small
    for the 10-fold metric (reading its pair labels is cheap next to an epoch)."""
    missing = [t for t in targets if not Path(t).exists()]
    if missing:
        present = [t for t in targets if t not in missing]
        raise MissingTargetError(f"eval.targets: verification set(s) not found: {missing}; to evaluate the sets that "
                                 f"are present only: eval.targets=[{','.join(present)}]")
    from evaluate import verification

    for target in targets:
        problem = verification.fold_problem(verification.load_set(target).issame)
        if problem is not None:
            raise MissingTargetError(f"eval.targets: {target}: {problem}")


def run(ctx: DistContext, student: nn.Module, cfg: EvalConfig, *, step: int, epoch: int) -> list[dict]:
    """Rank 0 embeds every target with the unwrapped student and returns one record per set; the other
    ranks wait at a barrier (the sets are small: a few thousand pairs). The RNG states are put back
    afterwards, so a run with verification trains exactly like one without."""
    records = []
    if ctx.is_main and cfg.targets:
        from evaluate import verification  # the evaluator is needed only here, on rank 0

        saved = capture_rng()
        was_training = student.training
        try:
            for target in cfg.targets:
                result = verification.test(student, verification.load_set(target), device=ctx.device,
                                           batch_size=cfg.batch_size, progress=True)
                records.append({"event": "verification", "step": step, "epoch": epoch, "target": target,
                                "accuracy": result["acc"], "accuracy_std": result["std"],
                                "xnorm": result["xnorm"], "pairs": result["pairs"]})
        finally:
            student.train(was_training)
            restore_rng(saved)
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
    barrier(ctx)
    return records
