"""The every-N-epochs (or N-steps) verification callback: the student on `.bin` sets and on the IJB and TinyFace
benchmarks (eval.benchmarks, run by the evaluator's own evaluate.targets), on rank 0 only."""
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


def _benchmark_data(cfg: EvalConfig) -> tuple[dict[str, Path], dict[str, str]]:
    """({benchmark: its data}, {benchmark: why its data is missing, naming the key to set})."""
    from evaluate import targets  # torch and the evaluator: only where benchmarks are asked for

    found, missing = {}, {}
    for name in cfg.benchmarks:
        key, root = (("eval.ijb_root", cfg.ijb_root) if targets.kind(name) == "ijb"
                     else ("eval.tinyface_root", cfg.tinyface_root))
        if root is None:
            missing[name] = f"{key} is not set"
        elif not Path(root).is_dir():
            missing[name] = f"{key} {root} {'is not a directory' if Path(root).exists() else 'does not exist'}"
        else:
            roots = targets.DataRoots(ijb_root=Path(root), tinyface_root=Path(root))
            path, why = targets.locate(name, roots)
            if path is None:
                missing[name] = f"{why} ({key})"
            else:
                found[name] = path
    return found, missing


def check_benchmarks(cfg: EvalConfig) -> None:
    """Fail at start when a benchmark's data is missing, as check_targets does for the .bin sets: the
    message names each missing one, the key to set and the list of those present. Only their files are
    looked for here; reading a benchmark's protocol is left to its first evaluation."""
    if not cfg.benchmarks:
        return
    found, missing = _benchmark_data(cfg)
    if missing:
        why = "; ".join(f"{name}: {reason}" for name, reason in missing.items())
        raise MissingTargetError(f"eval.benchmarks: data not found: {why}; to evaluate the benchmarks that are "
                                 f"present only: eval.benchmarks=[{','.join(found)}]")


def benchmark_record(name: str, report: dict) -> dict:
    """The headline of a benchmark's report (evaluate.targets.run_target's): IJB's TAR at FAR=1e-4 in
    CVLFace's headline configuration, TinyFace's rank-1 identification rate, as a fraction like accuracy."""
    if "1:1" in report:
        head = report["1:1"]["headline"]
        return {"metric": f"tar@far={head['far']:.0e}".replace("e-0", "e-"), "value": float(head["tar"]),
                "config": head["config"], "pairs": report["pairs"]}
    return {"metric": "rank-1", "value": float(report["rank-1"]) / 100.0, "probes": report["probes"]}


def run(ctx: DistContext, student: nn.Module, cfg: EvalConfig, *, step: int, epoch: int) -> list[dict]:
    """Rank 0 embeds every target with the unwrapped student and returns one record per set; the other
    ranks wait at a barrier (the .bin sets are a few thousand pairs; IJB-C's image pass takes minutes, inside
    the process group's 60-minute timeout, distill/distributed.py). The RNG states are put back
    afterwards, so a run with verification trains exactly like one without."""
    records = []
    if ctx.is_main and (cfg.targets or cfg.benchmarks):
        from evaluate import targets, verification  # the evaluator is needed only here, on rank 0

        saved = capture_rng()
        was_training = student.training
        try:
            for target in cfg.targets:
                result = verification.test(student, verification.load_set(target), device=ctx.device,
                                           batch_size=cfg.batch_size, progress=True)
                records.append({"event": "verification", "step": step, "epoch": epoch, "target": target,
                                "accuracy": result["acc"], "accuracy_std": result["std"],
                                "xnorm": result["xnorm"], "pairs": result["pairs"]})
            found, missing = _benchmark_data(cfg)
            if missing:  # present at start, gone since: the same error as at start, not a silent skip
                check_benchmarks(cfg)
            for name, path in found.items():
                report = targets.run_target(student, name, path, device=ctx.device, batch_size=cfg.batch_size)
                records.append({"event": "benchmark", "step": step, "epoch": epoch, "target": name,
                                **benchmark_record(name, report)})
        finally:
            student.train(was_training)
            restore_rng(saved)
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
    barrier(ctx)
    return records
