"""The run configuration: one frozen dataclass per section, each checking its own values.

Key names follow the research code where its users know them (`s`, `m`, `h`, `t_alpha`, `lr`,
`momentum`, `weight_decay`, `batch_size`, `embedding_size`, `output`); the sections group them.
Derived values (global batch, scaled lr, steps) are computed by `distill.optim.plan`, never
written back here. The sections are the contract types the parts take as they are: `AugmentConfig` is
the pipeline's augmentation, `GeomConfig` the head's geometry term; `check_margin` is the one rule for
a margin's hyper-parameters, used here and by the margins themselves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from configs import rules


class ConfigError(ValueError):
    """A config file or override is malformed: names the file or override, the key and the value."""


def _check(ok: bool, key: str, expected: str, found: object) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, found {found!r}")


def _follow(key: str, problem: Optional[str]) -> None:
    """A rule of configs/rules.py (shared with the part that takes the value): its problem, under the key."""
    if problem is not None:
        raise ConfigError(f"{key}: expected {problem}")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_margin(prefix: str, *, s: float, m: Optional[float], h: Optional[float] = None,
                 t_alpha: Optional[float] = None) -> None:
    """The one rule for a margin's hyper-parameters, for a config (`prefix` "distill.": keys distill.s, ...)
    and for a margin built directly (`prefix` "arcface: option "): s finite > 0, m in [0, pi/2) (None: the
    loss's default), h finite >= 0 and t_alpha in (0, 1] (AdaFace)."""
    _check(_number(s) and s > 0, f"{prefix}s", "a finite number > 0", s)
    _check(m is None or (_number(m) and 0 <= m < math.pi / 2), f"{prefix}m", "a number in [0, pi/2)", m)
    _check(h is None or (_number(h) and h >= 0), f"{prefix}h", "a finite number >= 0", h)
    _check(t_alpha is None or (_number(t_alpha) and 0 < t_alpha <= 1), f"{prefix}t_alpha", "in (0, 1]", t_alpha)


@dataclass(frozen=True)
class AugmentConfig:
    """Per-sample probabilities of AdaFace's extra augmentations (0 = off); the flip is always on.
    The pipeline takes this type as it is (pipeline.Augment)."""
    crop: float = 0.0                             # random crop-and-resize back to the full size
    low_res: float = 0.0                          # downscale then upscale (low-resolution faces)
    photometric: float = 0.0                      # brightness, contrast and saturation jitter

    def __post_init__(self) -> None:
        for key in ("crop", "low_res", "photometric"):
            p = getattr(self, key)
            _check(_number(p) and 0.0 <= p <= 1.0, f"data.augment.{key}", "a probability in [0, 1]", p)

    @property
    def any(self) -> bool:
        return self.crop > 0 or self.low_res > 0 or self.photometric > 0


@dataclass(frozen=True)
class DataConfig:
    """A list of directories is one dataset laid end to end (pipeline/datasets.py): each one's classes and
    keys follow those of the directories before it. A one-element list is stored as its string, and
    weights of all 1 as null, so that either spelling is the same run."""
    shards: Union[str, tuple[str, ...]]           # the converted directory (manifest.json + shards), or a list of them: classes and samples laid end to end in that order
    weights: Optional[tuple[float, ...]] = None   # one per data.shards directory: each epoch takes round(w * its samples) of it (2: every sample twice, 0.5: a random half drawn anew each epoch); null: 1 each
    backend: Literal["auto", "dali", "torch"] = "auto"# auto: DALI, or the torch loader (one warning) where DALI cannot be imported or cannot decode on this GPU (no CUDA support, no nvJPEG); dali: DALI or an error naming what is missing
    hw_decoder_load: Optional[float] = None       # share of each batch's JPEGs for the GPU's hardware JPEG decoder (A100/H100/H200), 0..1; null: DALI's default (0.65); ignored on the CPU
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        dirs = (self.shards,) if isinstance(self.shards, str) else tuple(self.shards)
        _check(bool(dirs) and all(isinstance(d, str) and d for d in dirs), "data.shards",
               "a directory or a non-empty list of directories", self.shards)
        _follow("data.shards", rules.shards_problem(dirs))
        object.__setattr__(self, "shards", dirs[0] if len(dirs) == 1 else dirs)
        _follow("data.weights", rules.weights_problem(self.weights, len(dirs)))
        if self.weights is not None:
            w = tuple(self.weights)
            object.__setattr__(self, "weights", None if all(x == 1 for x in w) else tuple(float(x) for x in w))
        _follow("data.hw_decoder_load", rules.hw_decoder_load_problem(self.hw_decoder_load))

    @property
    def shard_dirs(self) -> tuple[str, ...]:
        """data.shards as a tuple of directories (one for a single string)."""
        return (self.shards,) if isinstance(self.shards, str) else self.shards


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mobilefacenet"                   # a name from models.names()
    embedding_size: int = 512                     # the embedding dimension D

    def __post_init__(self) -> None:
        _check(self.embedding_size > 0, "model.embedding_size", "> 0", self.embedding_size)


@dataclass(frozen=True)
class StudentConfig:
    """Fine-tuning: the student's backbone (model.*) starts from trained weights instead of a random draw.
    The head, optimizer and schedule start fresh; `resume` continues a run instead (distill/student_init.py)."""
    init: Optional[str] = None                    # weights for the student's backbone before step 0: a checkpoint, run directory, exported or CVLFace folder, hf:<repo>; null: random
    init_strict: bool = True                      # true: every key must fit model.name (a mismatch names the missing and unexpected keys); false: load the keys that fit, list the rest in the log

    def __post_init__(self) -> None:
        _check(self.init is None or (isinstance(self.init, str) and bool(self.init)), "student.init",
               "null or a path or spec", self.init)


@dataclass(frozen=True)
class TeacherConfig:
    # hf:<repo_id>[@rev], a local file or directory, or one of our run directories (its latest
    # checkpoint's backbone). None only with distill.mode: none.
    spec: Optional[str] = None                    # hf:OWNER/NAME[@REV], a file or directory, or a run directory of ours
    network: Optional[str] = None                 # backbone name for a bare state dict (arcface_torch .pth)


@dataclass(frozen=True)
class GeomConfig:
    """AdaFace KD's geometry-aware margin: z_hat += w_eff * k * ReLU(lambda - cos_st) * lambda. The head
    takes this type as it is (distill.heads)."""
    w: float = 1.0                                # weight of the geometry term (reached after warmup_epochs)
    k: float = 3.0                                # scale of ReLU(lambda - cos_st) * lambda
    warmup_epochs: float = 1.0                    # w ramps linearly from 0 over these (fractional) epochs

    def __post_init__(self) -> None:
        for key in ("w", "k", "warmup_epochs"):
            value = getattr(self, key)
            _check(_number(value) and value >= 0, f"distill.geom.{key}", "a finite number >= 0", value)


# distill.shard_classes: auto shards the class centres from this many classes on (with 2+ ranks): MS1MV2
# (85,742) keeps the replicated head it was tuned with; Glint360K and WebFace42M (2M, 4.1 GB of fp32
# centres at D=512) are sharded.
SHARD_AUTO_MIN_CLASSES = 100_000


@dataclass(frozen=True)
class DistillConfig:
    mode: Literal["adadistill", "none"] = "adadistill"# adadistill: teacher-driven class centres; none: a plain margin head (no teacher)
    loss: Literal["arcface", "cosface", "adaface"] = "arcface"# the margin on the target logit
    s: float = 64.0                               # logit scale
    m: Optional[float] = None                     # margin; null: the loss's own (ArcFace 0.5 rad, CosFace 0.35, AdaFace 0.4)
    h: float = 0.333                              # AdaFace only: the norm scaler's concentration
    t_alpha: float = 0.01                         # AdaFace only: the norm statistics' EMA rate
    alpha: Literal["weighted", "plain"] = "weighted"   # AdaDistill: alpha' = cos_st * lambda, or cos_st
    geom: Optional[GeomConfig] = None             # AdaFace + AdaDistill only; null = plain AdaFace KD
    # A directory written by `python -m distill cache-teacher`: the loop reads the teacher's embeddings
    # from it (flip is then the only augmentation allowed) and never builds the teacher network.
    teacher_cache: Optional[str] = None           # directory from `python -m distill cache-teacher`; the teacher is then never run
    centres_from_cache: bool = False              # start the AdaDistill centres at the cache's class means
    shard_classes: Union[bool, Literal["auto"]] = "auto"  # true: rank r of W holds only the centres of classes [r*C/W, (r+1)*C/W) (softmax across ranks, same results); auto: on with 2+ ranks from 100,000 classes (SHARD_AUTO_MIN_CLASSES) or with sample_rate < 1
    centre_update: Literal["global", "per_rank"] = "global"  # AdaDistill centres: global, every rank from the whole global batch (the copies stay equal); per_rank, each rank from its own samples, as the original code (the copies drift apart; a checkpoint keeps rank 0's)
    sample_rate: float = 1.0                      # distill.mode none only: Partial FC, each rank's logits use its batch's classes plus a random sample of its other classes, this share of its rows (an approximation of the full softmax); 1 = every class

    def __post_init__(self) -> None:
        check_margin("distill.", s=self.s, m=self.m, h=self.h, t_alpha=self.t_alpha)
        if self.centres_from_cache:
            _check(self.teacher_cache is not None and self.mode == "adadistill", "distill.centres_from_cache",
                   "false unless distill.teacher_cache is set and distill.mode is adadistill",
                   f"true with teacher_cache={self.teacher_cache!r}, mode={self.mode}")
        _check(isinstance(self.shard_classes, bool) or self.shard_classes == "auto", "distill.shard_classes",
               "true, false or auto", self.shard_classes)
        _check(_number(self.sample_rate) and 0 < self.sample_rate <= 1, "distill.sample_rate", "a number in (0, 1]",
               self.sample_rate)
        if self.sample_rate < 1:
            # AdaDistill moves the centres of the batch's classes only and needs every logit of the softmax
            # against teacher-driven centres; sampling is arcface_torch's Partial FC for trained centres.
            _check(self.mode == "none", "distill.sample_rate", "1 unless distill.mode is none (Partial FC samples "
                   "trained centres)", f"{self.sample_rate} with mode={self.mode}")
            _check(self.shard_classes is not False, "distill.sample_rate", "1 with distill.shard_classes: false "
                   "(each rank samples among its own classes: set shard_classes to true or auto)",
                   f"{self.sample_rate} with shard_classes=false")
            # per_rank keeps every centre on every rank, so the head is not sharded and has nothing to sample
            _check(self.centre_update == "global", "distill.sample_rate", "1 with distill.centre_update: per_rank "
                   "(Partial FC samples among a rank's own shard of the classes)",
                   f"{self.sample_rate} with centre_update=per_rank")
        _check(self.centre_update == "global" or self.shard_classes is not True, "distill.centre_update",
               "global with distill.shard_classes: true (a rank holds only its classes' centres)",
               f"{self.centre_update} with shard_classes=true")
        if self.geom is not None:
            _check(self.loss == "adaface" and self.mode == "adadistill", "distill.geom",
                   "null unless distill.loss is adaface and distill.mode is adadistill",
                   f"geom with loss={self.loss}, mode={self.mode}")


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation recipe. Its rules are the originals' (fdbtrs/AdaDistill, the AdaFace-KD code,
    insightface's arcface_torch) unless a key says otherwise: `python -m distill plan` prints the result.

    The lr schedule, stepped per step: the peak lr is train.lr / lr_batch * global batch. Multistep: each
    decay epoch m counts epochs from 1, as the originals' `0.1 ** len([m for m in decay_epochs if m - 1 <=
    epoch])` with a 0-based epoch: [8, 14, 20, 25] multiplies the lr by decay_factor from the first step of
    the 8th, 14th, 20th and 25th epoch (after 7, 13, 19 and 24 complete epochs). A fractional m decays
    after (m - 1) epochs' worth of steps. Warmup (while fewer than warmup_epochs epochs are done) replaces
    the decayed lr: linear, lr * (step + 1) / warmup steps; or quadratic, the AdaFace-KD code's per-step
    lr * ((epoch + batch / steps_per_epoch + 1) / (warmup_epochs + 1)) ** 2 (0.25x at the first step of a
    one-epoch warmup).
    """
    batch_size: int = 128                         # per rank and micro-batch
    accumulate: int = 1                           # micro-batches of batch_size per optimizer step (gradient accumulation): the global batch is batch_size x accumulate x ranks; steps count optimizer steps
    lr: float = 0.1                               # at a global batch of lr_batch; scaled linearly
    lr_batch: int = 512                           # the global batch at which train.lr applies
    momentum: float = 0.9                         # SGD momentum
    weight_decay: float = 5e-4                    # SGD weight decay, on the parameters weight_decay_on names
    weight_decay_on: Literal["all", "weights"] = "all"   # all: every parameter, as the originals; weights: none on 1-D ones (BatchNorm, PReLU, biases)
    epochs: int = 26                              # length of the schedule
    warmup_epochs: float = 0.0                    # per-step warmup over these (fractional) epochs; 0 = none
    warmup: Literal["linear", "quadratic"] = "linear"    # warmup shape: linear from lr/steps, or the AdaFace-KD code's quadratic from lr/(warmup_epochs+1)^2
    schedule: Literal["multistep", "cosine"] = "multistep"# lr decay after the warmup
    decay_epochs: tuple[float, ...] = (8, 14, 20, 25)   # multistep, 1-based as the originals: lr *= decay_factor from the first step of epoch m
    decay_factor: float = 0.1                     # multistep: the factor at each decay epoch
    max_steps: int = 0                            # stop after this many steps in total; 0 = the schedule's length
    log_every: int = 50                           # steps between metrics.jsonl lines (rank 0)
    checkpoint_every: int = 2000                  # steps; also at every epoch's end and when the run stops
    keep_checkpoints: int = 2                     # newest mid-epoch checkpoints kept; epoch ends are all kept
    grad_clip: float = 5.0                        # max L2 norm of the student's gradient (the head's is never clipped, as in the originals); 0 = off
    max_nonfinite: int = 20                       # this many non-finite losses in a row stop the run
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"   # auto: bf16 autocast on a CUDA GPU that has bf16, fp16 (with loss scaling) on one that has not (V100, T4), fp32 on CPU; fp16: float16 autocast with torch.amp.GradScaler (overflowing steps skipped, counted as skipped)
    channels_last: bool = True                    # NHWC student and teacher: measured faster on CPU; the usual GPU choice
    tensorboard: bool = True                      # rank 0 writes every logged scalar and each evaluation to <output>/tensorboard/
    tf32: bool = True                             # CUDA: TF32 for fp32 matmuls and convolutions (the head's cosines: ~1e-3 relative error, as bf16's ~4e-3 is not taken)

    def __post_init__(self) -> None:
        for key in ("lr", "momentum", "weight_decay", "warmup_epochs", "decay_factor", "grad_clip"):
            _check(_number(getattr(self, key)), f"train.{key}", "a finite number", getattr(self, key))
        _check(all(_number(m) for m in self.decay_epochs), "train.decay_epochs", "finite epochs", self.decay_epochs)
        for key in ("batch_size", "accumulate", "lr_batch", "epochs", "log_every", "checkpoint_every", "max_nonfinite"):
            _check(getattr(self, key) > 0, f"train.{key}", "> 0", getattr(self, key))
        for key in ("max_steps", "keep_checkpoints", "weight_decay", "warmup_epochs", "grad_clip"):
            _check(getattr(self, key) >= 0, f"train.{key}", ">= 0", getattr(self, key))
        _check(self.lr > 0, "train.lr", "> 0", self.lr)
        _check(0 <= self.momentum < 1, "train.momentum", "in [0, 1)", self.momentum)
        _check(0 < self.decay_factor <= 1, "train.decay_factor", "in (0, 1]", self.decay_factor)
        _check(list(self.decay_epochs) == sorted(self.decay_epochs), "train.decay_epochs",
               "ascending epochs", self.decay_epochs)
        _check(all(m >= 1 for m in self.decay_epochs), "train.decay_epochs",
               "epochs >= 1 (1-based, as the originals: 8 decays from the first step of the 8th epoch)",
               self.decay_epochs)


@dataclass(frozen=True)
class EvalConfig:
    targets: tuple[str, ...] = ()                 # .bin verification sets, run on rank 0
    every_epochs: int = 1                         # verification at the end of every this many epochs; 0 = not at epoch ends
    every_steps: int = 0                          # verification also after every this many (optimizer) steps, as the originals' callbacks; 0 = off
    batch_size: int = 128                         # images per batch of the verification pass
    benchmarks: tuple[Literal["IJBB", "IJBC", "tinyface"], ...] = ()  # IJBB, IJBC (TAR@FAR=1e-4), tinyface (rank-1): run with the .bin sets, on rank 0; their data is checked at start
    ijb_root: Optional[str] = None                # folder holding IJBB/IJBC (CVLFace's IJBC_gt_aligned or insightface's IJBC), for eval.benchmarks
    tinyface_root: Optional[str] = None           # folder holding tinyface_aligned_pad_0.1 (or its metadata.pt), for eval.benchmarks

    def __post_init__(self) -> None:
        _check(len(set(self.benchmarks)) == len(self.benchmarks), "eval.benchmarks", "names without repeats",
               list(self.benchmarks))
        _check(self.every_epochs >= 0, "eval.every_epochs", ">= 0", self.every_epochs)
        _check(self.every_steps >= 0, "eval.every_steps", ">= 0", self.every_steps)
        _check(self.batch_size > 0, "eval.batch_size", "> 0", self.batch_size)


@dataclass(frozen=True)
class RunConfig:
    output: str                                   # the run directory
    data: DataConfig                              # the shards and the loader
    model: ModelConfig = field(default_factory=ModelConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0                                 # seeds the data order, the initial weights and every RNG
    resume: str = "auto"                          # auto (newest checkpoint in output, if any), none, or a path
    resume_changes: Literal["refuse", "allow"] = "refuse"  # a resume that changes the recipe: refuse it, or allow it (recorded in metrics.jsonl)

    def __post_init__(self) -> None:
        _check(bool(self.output), "output", "a directory", self.output)
        _check(bool(self.resume), "resume", "auto, none or a checkpoint path", self.resume)
        if self.distill.mode == "adadistill":
            # Also with a teacher cache: the cache is checked against this teacher's weights.
            _check(self.teacher.spec is not None, "teacher.spec",
                   "a teacher (hf:<repo>, a path or a run directory) with distill.mode: adadistill", None)
        if self.distill.teacher_cache is not None:
            # A cache holds two views a sample, the plain and the mirrored one (distill/teacher_cache.py).
            extra = {k: getattr(self.data.augment, k) for k in ("crop", "low_res", "photometric")
                     if getattr(self.data.augment, k)}
            _check(not extra, "distill.teacher_cache", "no augmentation besides the flip, as the cache holds the "
                   "plain and mirrored view of each sample only: data.augment's crop, low_res and photometric at 0, "
                   "or the teacher run online (distill.teacher_cache=null)", extra)
