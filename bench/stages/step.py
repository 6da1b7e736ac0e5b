"""Stage step: the distillation step fed by the pipeline, against the reference step, with the data wait.

Every variant runs `distill.train.train_step` (student forward+backward through the AdaDistill margin
head, teacher forward) for `--step-steps` timed steps per round, after one untimed step. They differ in
where batches come from (the project's loader, or the insightface-style baseline), where the teacher's
embeddings come from (the online teacher, or its embedding cache: step_cache, whose cache is built untimed
before the rounds), and how the step runs (the loop's device defaults, or fp32 eager as the original
research code runs it). reference_step is that original step: fp32, eager, online teacher, fed by the
insightface-style loader. The data wait is the fraction of a round spent in `next(batches)`.
`--num-classes N` gives the head N classes instead of the data's, to measure its cost at a dataset's size
(85,742 for MS1MV2, 2,059,906 for WebFace42M); the labels stay the data's.
"""
from __future__ import annotations

import functools
import itertools
import time
from dataclasses import dataclass
from typing import Callable, Dict

import torch

from bench.baseline_loader import epoch_loaders
from bench.data import BenchData
from bench.harness import Contender, Pair, Sample, compare, measure
from bench.settings import BenchError, Settings
from bench.stages.registry import register
from bench.step_rig import StepOptions, StepRig, cached_teacher, online_teacher


@dataclass(frozen=True)
class StepVariant:
    """loader: "pipeline" or "baseline"; teacher: a TEACHERS key; reference_options: fp32 eager, as the
    original research code runs the step, instead of the loop's defaults on the device."""

    name: str
    description: str
    loader: str
    teacher: str
    reference_options: bool


VARIANTS = (
    StepVariant("step", "train_step fed by pipeline.build_loader (DALI), online teacher, loop defaults",
                loader="pipeline", teacher="online", reference_options=False),
    StepVariant("reference_step", "train_step fed by the insightface-style loader, online teacher, fp32 eager",
                loader="baseline", teacher="online", reference_options=True),
    StepVariant("step_cache", "train_step fed by pipeline.build_loader (DALI, with_flip), teacher embeddings "
                "from the cache (distill.teacher_cache), loop defaults", loader="pipeline", teacher="cache",
                reference_options=False),
)
# pipeline_supply vs step: the loader's img/s alone over the step's consumption (> 1: the data keeps up).
# step_cache vs step: the same step without the teacher's forward pass (goal >= 3x).
PAIRS = (Pair("step", "reference_step"), Pair("pipeline_supply", "step"), Pair("step_cache", "step", goal=3.0))

# teacher kind -> (settings, data, device, options) -> callable(batch) -> [B, D] teacher embeddings
TEACHERS: Dict[str, Callable] = {
    "online": lambda settings, data, device, options: online_teacher(settings.teacher, device, options),
    "cache": lambda settings, data, device, options: cached_teacher(
        settings.teacher, str(data.jpeg_shards), str(settings.scratch / "step" / "teacher_cache"), device,
        settings.progress),
}


def _pipeline_batches(data: BenchData, settings: Settings, with_flip: bool = False) -> Callable:
    import pipeline

    epochs = itertools.count()
    loader = functools.cache(lambda: pipeline.build_loader(data.jpeg_shards, settings.step_batch_size,
                                                           device=settings.device, seed=0, backend="dali",
                                                           with_flip=with_flip))  # one for the run, as training's
    return lambda: loader().epoch(next(epochs))


def _baseline_batches(data: BenchData, settings: Settings, with_flip: bool = False) -> Callable:
    import pipeline

    if with_flip:
        raise BenchError("step stage: the insightface-style loader does not report its flips; a variant with "
                         "the cached teacher needs loader='pipeline'")

    device = torch.device(settings.device)
    loaders = epoch_loaders(data.rec, data.idx, data.jpeg_shards, settings.step_batch_size,
                            workers=settings.workers, pin_memory=device.type == "cuda")

    def batches():
        for images, labels, keys in loaders():  # as the original training loop: .to(device) of each batch
            # one process: its batch is the global batch, whose host labels the head takes (no host sync)
            yield pipeline.Batch(images=images.to(device, non_blocking=True), labels=labels.to(device),
                                 index=keys.to(device), keys=keys.numpy(), global_labels=labels.numpy())

    return batches


_LOADERS = {"pipeline": _pipeline_batches, "baseline": _baseline_batches}


def _supply(data: BenchData, settings: Settings) -> Contender:
    """The step's loader alone: the rest of an epoch after its first batch, at the step's batch size."""
    make_batches = _pipeline_batches(data, settings)
    device = torch.device(settings.device)

    def run() -> Sample:
        it = iter(make_batches())
        try:
            next(it)
            start, images = time.perf_counter(), 0
            for batch in it:
                images += batch.labels.shape[0]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return Sample(images, time.perf_counter() - start)
        finally:
            it.close()

    return Contender("pipeline_supply", f"pipeline.build_loader (DALI) alone at batch {settings.step_batch_size}: "
                                        f"what the step could be fed", run)


def _contender(variant: StepVariant, settings: Settings, data: BenchData) -> Contender:
    device = torch.device(settings.device)
    options = StepOptions.reference() if variant.reference_options else StepOptions.project_default(device)
    teacher = TEACHERS[variant.teacher](settings, data, device, options)
    # --num-classes: the head's cost at a dataset's class count (the data's labels stay below it)
    classes = settings.step_num_classes or data.classes
    if classes < data.classes:
        raise BenchError(f"--num-classes {classes}: the data has {data.classes} classes; give at least that many")
    rig = StepRig(student=settings.student, num_classes=classes, batch_size=settings.step_batch_size,
                  steps_per_epoch=data.images // settings.step_batch_size, device=device, options=options,
                  teacher=teacher, scratch=str(settings.scratch / "step" / variant.name))
    make_batches = _LOADERS[variant.loader](data, settings, with_flip=variant.teacher == "cache")  # cache keys on it
    return Contender(variant.name, f"{variant.description}; {settings.student} student, {settings.teacher} "
                                   f"teacher, batch {settings.step_batch_size}, {classes:,} classes",
                     lambda: rig.timed_steps(make_batches(), settings.step_steps))


@register("step")
def run(settings: Settings, data: BenchData) -> list:
    needed = (settings.step_steps + 1) * settings.step_batch_size  # one untimed step, then the timed ones
    if data.images < needed:
        raise BenchError(f"step stage: {settings.step_steps} timed steps + 1 of batch {settings.step_batch_size} "
                         f"need {needed} images in an epoch, the data holds {data.images}; use more --images or "
                         f"fewer --step-steps / a smaller --step-batch-size")
    contenders = [_contender(v, settings, data) for v in VARIANTS] + [_supply(data, settings)]
    measured = measure(contenders, repeats=settings.repeats, warmup=settings.warmup, label="step",
                       progress=settings.progress)
    return compare("step", measured, PAIRS)
