"""One distillation step, set up by the training loop's own `distill.train.build_run`, to time
`distill.train.train_step`.

The step is the loop's `train_step` (lr, teacher embeddings, student forward, AdaDistill margin head,
loss, backward, clip, optimizer step) on the loop's `Run`, built from a RunConfig by `build_run`: no
second assembly of a training set-up. The teacher is a freshly initialised backbone handed to
`build_run`: its weights change nothing in the step's cost, and a benchmark must not depend on a
downloaded checkpoint.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch

from bench.harness import Sample

_STEP_SEED = 0


@dataclass(frozen=True)
class StepOptions:
    """How a variant runs the step: autocast dtype (None = fp32) and channels_last for student and teacher."""

    autocast_dtype: Optional[torch.dtype]
    channels_last: bool

    @staticmethod
    def project_default(device: torch.device) -> "StepOptions":
        """The loop's defaults (train.precision: auto, train.channels_last: true): bf16 autocast on CUDA,
        fp32 on the CPU; channels_last on both."""
        return StepOptions(torch.bfloat16 if device.type == "cuda" else None, True)

    @staticmethod
    def reference() -> "StepOptions":
        """The original research code's step: fp32, eager, contiguous."""
        return StepOptions(None, False)


def online_teacher(name: str, device: torch.device, options: StepOptions) -> Callable:
    """The loop's online teacher (distill.teacher.TeacherSource) around a fresh `name` backbone."""
    import models
    from distill.teacher import TeacherSource

    torch.manual_seed(_STEP_SEED)
    return TeacherSource(models.build(name), device=device, autocast_dtype=options.autocast_dtype,
                         channels_last=options.channels_last)


def cached_teacher(name: str, shards: str, cache_dir: str, device: torch.device, progress: bool) -> Callable:
    """The loop's cached teacher (distill.teacher_cache.CachedTeacher) for the same fresh `name` backbone as
    `online_teacher`, after building its cache over `shards` with `python -m distill cache-teacher`'s own
    code (untimed: a one-off cost per dataset and teacher; a cache already in `cache_dir` for the same
    weights and shards is reused)."""
    from distill import teacher_cache
    from distill.distributed import DistContext

    source = online_teacher(name, device, StepOptions.project_default(device))
    manifest = teacher_cache.build(source, f"fresh-init {name} (benchmark)", shards, cache_dir, device=device,
                                   batch_size=64, ctx=DistContext(rank=0, world_size=1, local_rank=0, device=device),
                                   progress=progress)
    return teacher_cache.CachedTeacher(cache_dir, manifest, device)


class StepRig:
    """The loop's Run (student, AdaDistill head, optimizer, schedule) and position, for `train_step`."""

    def __init__(self, *, student: str, num_classes: int, batch_size: int, steps_per_epoch: int,
                 device: torch.device, options: StepOptions, teacher: Callable, scratch: str) -> None:
        import configs
        from distill.distributed import DistContext
        from distill.train import Position, build_run

        precision = "bf16" if options.autocast_dtype == torch.bfloat16 else "fp32"
        # max_nonfinite: a fresh student and teacher may give non-finite steps; the loop skips their
        # update (at the same cost), and a benchmark must not stop for it.
        cfg = configs.RunConfig(
            output=scratch, data=configs.DataConfig(shards=scratch), seed=_STEP_SEED,
            model=configs.ModelConfig(name=student), teacher=configs.TeacherConfig(spec="fresh-init (benchmark)"),
            distill=configs.DistillConfig(mode="adadistill", loss="arcface", m=0.45),
            train=configs.TrainConfig(batch_size=batch_size, precision=precision,
                                      channels_last=options.channels_last, max_nonfinite=1 << 30))
        ctx = DistContext(rank=0, world_size=1, local_rank=0, device=device)
        self.run = build_run(cfg, ctx, num_classes=num_classes, steps_per_epoch=steps_per_epoch, teacher=teacher)
        self.pos = Position()

    def step(self, batch) -> None:
        """The loop's step, and its position advanced as the loop does (the lr follows the schedule)."""
        from distill.train import train_step

        train_step(self.run, batch, self.pos)
        self.pos.step += 1
        self.pos.epoch_step += 1

    def timed_steps(self, batches: Iterable, steps: int) -> Sample:
        """One untimed step (the loader's start, first allocations), then `steps` timed ones; the time spent
        in `next(batches)` is the data wait. `train_step` ends in a host sync, so each step is complete."""
        it = iter(batches)
        try:
            self.step(next(it))
            start = time.perf_counter()
            wait, images = 0.0, 0
            for _ in range(steps):
                t = time.perf_counter()
                batch = next(it)
                wait += time.perf_counter() - t
                self.step(batch)
                images += batch.labels.shape[0]
            return Sample(images, time.perf_counter() - start, wait)
        finally:
            close = getattr(it, "close", None)  # a generator (the DALI loader) frees its graph now
            if close is not None:
                close()
            del it  # a DataLoader iterator shuts its workers down
