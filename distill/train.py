"""The training loop: `python -m distill --config CFG [key=value ...]`, with or without torchrun.

`_train` reads top to bottom: config and ranks, data, the run (teacher, student, head, optimizer and
schedule: `build_run`), optional resume, the loop, the final save. The loop advances its own position
and feeds its own meter; `train_step(run, batch, pos)` is one step (set the lr, teacher embeddings,
student forward, head and loss, backward, clip, optimizer step) and says what happened in a StepResult.
With train.accumulate k the loader's batch holds k micro-batches and a step is one optimizer step: the
student embeds them without autograd, the head takes all at once (its centres move once, as for one
batch), and each micro-batch's forward and backward then runs again with autograd (DDP's no_sync on the
first k-1), so only one micro-batch's activations are held at a time.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from common.errors import InputError
from common.files import write_atomic
import configs
import models
import pipeline
from configs import RunConfig
from distill import checkpoint, distributed, head_rows, preemption, student_init, teacher as teachers, teacher_cache, verify
from distill.class_shard import shard_for_run, shards_classes
from distill.heads import head_from_config
from distill.metrics import Meter, RunLog
from distill.optim import Plan, build_optimizer, plan as make_plan, rank_batch, set_lr

# Bits of the per-step health flag, OR-ed over ranks in one all-reduce; _STOP carries a rank's stop request
# (distill.preemption) in the same all-reduce, so every rank learns of it after the same step.
_BAD_LOSS, _BAD_GRAD, _BAD_TEACHER, _STOP = 1, 2, 4, 8


class TrainingDiverged(InputError, RuntimeError):
    """train.max_nonfinite non-finite steps in a row, or every step of a run non-finite."""


class ResumeError(InputError):
    """A resume whose config changes the run's recipe."""


@dataclass
class Position:
    """Where the run is: steps done in total, the epoch, steps done in it; skipped non-finite steps."""
    step: int = 0
    epoch: int = 0
    epoch_step: int = 0
    skipped: int = 0
    skipped_in_a_row: int = 0
    preempted: str = ""                   # the signal that stopped the run at a checkpoint (EXIT_PREEMPTED), or ""


@dataclass
class Run:
    """Everything a training step touches, built once by `build_run`."""
    cfg: RunConfig
    ctx: distributed.DistContext
    student: nn.Module                    # DDP-wrapped when distributed
    head: nn.Module                       # distill.heads.Head; in DDP with trained centres (mode none) of one shard
    teacher: Optional[Callable]           # batch -> [B, D] teacher embeddings (online or cached); None: no KD
    optimizer: torch.optim.Optimizer
    plan: Plan
    autocast_dtype: Optional[torch.dtype]  # None: fp32
    scaler: torch.amp.GradScaler          # fp16's loss scaling; disabled (a no-op) at other precisions
    init_source: Optional[dict] = None    # where student.init's weights came from (student_init), or None

    @property
    def student_module(self) -> nn.Module:
        return _unwrap(self.student)

    @property
    def head_module(self) -> nn.Module:
        return _unwrap(self.head)


@dataclass(frozen=True)
class StepResult:
    loss: torch.Tensor
    stats: dict                           # the head's cos_st, alpha, margin_scaler (tensors or None)
    grad_norm: torch.Tensor               # the student's, before clipping
    bad: int                              # 0: the update was applied; else the _BAD_* bits, on some rank
    stop: bool = False                    # some rank was asked to stop (distill.preemption): save and exit after this step


def main(argv: Optional[Sequence[str]] = None) -> Position:
    args = _parse_args(argv)
    cfg = configs.load(args.config, args.overrides)
    ctx = distributed.setup()
    try:
        with distributed.rank0_lock(ctx, cfg.output, f"python -m distill --config {args.config}"), \
                preemption.handle_signals():
            return _train(cfg, ctx)
    finally:
        distributed.teardown(ctx)




def _train(cfg: RunConfig, ctx: distributed.DistContext) -> Position:
    out = Path(cfg.output)
    resume_from = checkpoint.resolve_resume(cfg.resume, out)
    saved = checkpoint.load(resume_from) if resume_from is not None else None
    changes = _recipe_changes(cfg, ctx, resume_from, saved) if saved is not None else {}
    verify.check_targets(cfg.eval.targets)
    verify.check_benchmarks(cfg.eval)

    # Data: the run's one loader, which tells the steps per epoch and the classes and hands out every epoch.
    loader = _loader(cfg, ctx)
    run = build_run(cfg, ctx, num_classes=loader.num_classes, steps_per_epoch=len(loader), resuming=saved is not None)
    plan = run.plan
    pos = _start(out, run, resume_from, saved)
    log = RunLog(out, enabled=ctx.is_main, start_step=pos.step, total_steps=min(plan.stop_step, plan.total_steps),
                 tensorboard=cfg.train.tensorboard)
    _announce(log, run, loader, pos, resume_from, saved, changes)

    meter = Meter(ctx.device)
    started, skipped_before = pos.step, pos.skipped
    last_saved = pos.step if resume_from is not None else -1
    try:
        while pos.step < plan.stop_step and pos.epoch < plan.epochs and not pos.preempted:
            for batch in _timed(loader.epoch(pos.epoch, start_step=pos.epoch_step), meter):
                result = train_step(run, batch, pos)
                _count_step(run, pos, meter, result)
                if pos.step % cfg.train.log_every == 0:
                    _log(log, meter, run, pos)
                log.tick()
                if pos.step % cfg.train.checkpoint_every == 0 and pos.epoch_step < plan.steps_per_epoch:
                    last_saved = _save(out, run, pos)
                if result.stop and pos.step < plan.stop_step:  # a signal on some rank: all stop after this step
                    pos.preempted = preemption.signal_name() or "a signal on another rank"
                    break
                if cfg.eval.every_steps and pos.step % cfg.eval.every_steps == 0:
                    _verify(log, run, pos)
                if pos.step >= plan.stop_step:
                    break
            if pos.epoch_step == plan.steps_per_epoch:  # the epoch is complete
                last_saved = _end_epoch(out, log, run, pos)
        _end(out, run, pos, started, skipped_before, last_saved)
    finally:
        log.close()
    log.message(f"stopped at step {pos.step} (epoch {pos.epoch}); {pos.skipped} non-finite step(s) skipped; "
                f"checkpoints in {checkpoint.directory(out)}")
    if pos.preempted:
        log.message(f"stopped by {pos.preempted} at a checkpoint (exit status {preemption.EXIT_PREEMPTED}); run the "
                    f"same command again to resume")
    return pos


def _start(out: Path, run: Run, resume_from: Optional[Path], saved: Optional[dict]) -> Position:
    """Where the run starts: the checkpoint's position and state, or step 0 with per-rank random streams;
    rank 0 writes the run's config.yaml."""
    if saved is not None:
        pos = _restore(resume_from, saved, run)
    else:
        pos = Position()
        checkpoint.seed_all(run.cfg.seed + run.ctx.rank)  # per-rank streams (dropout) from here on
    if run.ctx.is_main:
        write_atomic(out / "config.yaml", configs.dump(run.cfg))
    return pos


def _announce(log: RunLog, run: Run, loader, pos: Position, resume_from: Optional[Path], saved: Optional[dict],
              changes: dict) -> None:
    """The run's opening messages: its data and decoder, where the student came from or where it resumed
    (and what the resume changes), the cached teacher's precision."""
    cfg, ctx, plan = run.cfg, run.ctx, run.plan
    log.message(f"data: {pipeline.layout_text(loader.datasets, cfg.data.weights)}, {loader.num_samples} samples, "
                f"{loader.num_classes} classes; {plan.steps_per_epoch} steps of {plan.global_batch} an epoch"
                f"{f' ({plan.accumulate} micro-batches of {cfg.train.batch_size} a rank each)' if plan.accumulate > 1 else ''}; "
                f"decoder: {loader.decoder}; device: {ctx.device}, {ctx.world_size} rank(s)")
    if run.init_source is not None and saved is None:
        log.message(student_init.describe(run.init_source))
    if resume_from is not None:
        log.message(f"resumed from {resume_from} at step {pos.step} (epoch {pos.epoch}, step {pos.epoch_step} in it)")
        saved_ranks = int(saved.get("world_size", ctx.world_size))
        if saved_ranks != ctx.world_size:
            log.message(_elastic_note(saved, saved_ranks, run))
    if changes:
        log.write({"event": "resume_changes", "step": pos.step,
                   "changes": {key: {"old": old, "new": new} for key, (old, new) in changes.items()}})
        log.message(f"resume_changes=allow: going on with {_describe(changes)} (recorded in metrics.jsonl)")
    if isinstance(run.teacher, teacher_cache.CachedTeacher):
        log.message(run.teacher.precision_note(teachers.precision_name(run.autocast_dtype)))


def _timed(batches: Iterator[pipeline.Batch], meter: Meter) -> Iterator[pipeline.Batch]:
    """`batches`, the time spent waiting for each added to the meter's data wait."""
    while True:
        waited = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            return
        meter.wait += time.perf_counter() - waited
        yield batch


def _count_step(run: Run, pos: Position, meter: Meter, result: StepResult) -> None:
    """The position and the meter after a step; a non-finite step is skipped, and train.max_nonfinite of
    them in a row raise TrainingDiverged."""
    if result.bad:
        pos.skipped += 1
        pos.skipped_in_a_row += 1
        if pos.skipped_in_a_row >= run.cfg.train.max_nonfinite:
            raise TrainingDiverged(_diverged_message(run.cfg, run.plan, pos, result.bad))
    else:
        pos.skipped_in_a_row = 0
        meter.add(result.loss, result.stats)
    meter.grad_norm = float("nan") if result.bad else result.grad_norm
    meter.steps += 1
    pos.step += 1
    pos.epoch_step += 1


def _end_epoch(out: Path, log: RunLog, run: Run, pos: Position) -> int:
    """The next epoch's position, saved; the verification sets every eval.every_epochs epochs. Returns the
    step saved."""
    cfg = run.cfg
    pos.epoch, pos.epoch_step = pos.epoch + 1, 0
    saved = _save(out, run, pos)
    # once a step: a step both ends an epoch and is a multiple of every_steps was verified in the loop
    if cfg.eval.every_epochs and pos.epoch % cfg.eval.every_epochs == 0 and not (
            cfg.eval.every_steps and pos.step % cfg.eval.every_steps == 0) and not pos.preempted:
        _verify(log, run, pos)
    return saved


def _end(out: Path, run: Run, pos: Position, started: int, skipped_before: int, last_saved: int) -> None:
    """The run's last checkpoint, unless its last step is saved already; a run of which every step was
    non-finite raises TrainingDiverged instead."""
    if pos.step > started and pos.skipped - skipped_before == pos.step - started:
        raise TrainingDiverged(f"every one of the {pos.step - started} steps of this run was non-finite (skipped), "
                               f"so nothing was learned; {_likely_causes(run.cfg, run.plan)}")
    if last_saved != pos.step:
        _save(out, run, pos)


def build_run(cfg: RunConfig, ctx: distributed.DistContext, *, num_classes: int, steps_per_epoch: int,
              teacher: Optional[Callable] = None, resuming: bool = False) -> Run:
    """The teacher (frozen, or its cache: fails here, before any step, when it cannot be loaded), the
    student (identically initialised on every rank), the head (margin and class centres: AdaDistill's
    teacher-driven buffers, or trained weights with distill.mode: none), the optimizer and the schedule.
    `teacher` replaces the one `teacher.spec` names (the benchmark's freshly initialised teacher)."""
    autocast_dtype = teachers.autocast_dtype(cfg.train.precision, ctx.device)
    plan = make_plan(cfg.train, world_size=ctx.world_size, steps_per_epoch=steps_per_epoch)
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every step has the same shapes: pick the fastest kernels once
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.train.tf32
    if cfg.distill.mode == "none":
        teacher = None
    elif teacher is None:
        teacher = teachers.build_source(cfg, ctx.device, autocast_dtype=autocast_dtype,
                                        channels_last=cfg.train.channels_last)

    checkpoint.seed_all(cfg.seed)
    student = models.build(cfg.model.name, embedding_size=cfg.model.embedding_size).to(ctx.device)
    # every rank reads the same file, so the ranks start alike (as from the same seed)
    init_source = student_init.init_student(student, cfg) if not resuming else None
    if cfg.train.channels_last:
        student = student.to(memory_format=torch.channels_last)
    # distill.shard_classes: this rank's classes, or None (one shard: every rank holds every centre)
    head = head_from_config(cfg, num_classes, shard_for_run(cfg.distill, num_classes, ctx.rank, ctx.world_size))
    shard, sharded = head.shard, head.shard.world_size > 1
    if cfg.distill.centres_from_cache and (ctx.is_main or sharded):  # the teacher's class means, of its own rows
        manifest = teacher_cache.CacheManifest.load(cfg.distill.teacher_cache)
        with torch.no_grad():
            head.centres.copy_(teacher_cache.plain_class_means(cfg.distill.teacher_cache, manifest, num_classes,
                                                               rows=(shard.start, shard.stop)))
    head = head.to(ctx.device)
    if not sharded:  # rank 0's centres everywhere; a sharded head's rows are each rank's own (drawn alike)
        distributed.broadcast_state(ctx, head)
    optimizer = build_optimizer([student, head], cfg.train, lr=plan.lr_at(0))

    # Trained centres are DDP's (their [C, D] gradient all-reduced each step) unless sharded: each rank's
    # rows then get their whole gradient from the cross-entropy across ranks (distill.sharded_softmax).
    trained = any(p.requires_grad for p in head.parameters())
    wrapped_head = _wrap(head, ctx, sync_buffers=False) if trained and not sharded else head
    # fp16 only: bf16 has fp32's exponent range, so its gradients do not underflow
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=autocast_dtype == torch.float16)
    return Run(cfg, ctx, _wrap(student, ctx, sync_buffers=True), wrapped_head, teacher, optimizer, plan, autocast_dtype,
               scaler, init_source)


def compute_loss(run: Run, batch: pipeline.Batch, student_emb: torch.Tensor, teacher_emb: Optional[torch.Tensor],
                 progress: float) -> tuple[torch.Tensor, dict]:
    """The head's loss and statistics of this step (a module-level function: tests inject NaNs here). The host's
    copy of the global batch's labels spares the head every host sync."""
    return run.head(student_emb, batch.labels, teacher_emb, progress, global_labels=batch.global_labels)


def train_step(run: Run, batch: pipeline.Batch, pos: Position) -> StepResult:
    """One optimizer step at position `pos` (read, not changed: the loop advances it); `batch` holds all
    train.accumulate micro-batches of this rank."""
    set_lr(run.optimizer, run.plan.lr_at(pos.step))
    if run.cfg.train.channels_last:  # one copy per step, shared by the student and the online teacher
        batch = replace(batch, images=batch.images.contiguous(memory_format=torch.channels_last))
    run.optimizer.zero_grad(set_to_none=True)
    if run.plan.accumulate == 1:
        teacher_emb = run.teacher(batch) if run.teacher is not None else None
        with _autocast(run):
            student_emb = run.student(batch.images)
    else:  # the embeddings without their graphs: the student's backward runs micro-batch by micro-batch below
        micro = micro_batches(batch, run.plan.accumulate)
        rng = _rng_state(run.ctx.device)
        teacher_emb, student_emb = _embed_micro_batches(run, micro)
    progress = pos.epoch + pos.epoch_step / run.plan.steps_per_epoch
    loss, stats = compute_loss(run, batch, student_emb, teacher_emb, progress)

    # Backward always runs, so that DDP's all-reduce sees every rank; a non-finite loss or gradient on
    # any rank then skips the update on all of them (one small all-reduce and host sync per step, as
    # GradScaler's inf check does). fp16: the loss is scaled and the gradients unscaled before the clip
    # (both param groups, student and head: one optimizer), so the clip and the check see true gradients.
    run.scaler.scale(loss).backward()
    if run.plan.accumulate > 1:  # the (scaled) loss's gradient of each micro-batch's embeddings, into the student
        _backward_micro_batches(run, micro, student_emb.grad, rng)
    run.scaler.unscale_(run.optimizer)
    grad_norm = _clip_student(run.student_module, run.cfg.train.grad_clip)
    head_grads = [p.grad for p in run.head_module.parameters() if p.grad is not None]
    head_norm = nn.utils.get_total_norm(head_grads) if head_grads else grad_norm.new_zeros(())
    flags = ((~torch.isfinite(loss)).int() * _BAD_LOSS
             | (~torch.isfinite(grad_norm + head_norm)).int() * _BAD_GRAD)
    if teacher_emb is not None:
        flags = flags | (~torch.isfinite(teacher_emb).all()).int() * _BAD_TEACHER
    if preemption.requested():  # rare: no device op on the steps without a request
        flags = flags | _STOP
    agreed = distributed.any_bits(run.ctx, flags, nbits=4)
    bad = agreed & ~_STOP
    if bad:
        run.optimizer.zero_grad(set_to_none=True)
    else:
        run.optimizer.step()
    _update_scale(run.scaler, bad)
    return StepResult(loss.detach(), stats, grad_norm, bad, stop=bool(agreed & _STOP))


def micro_batches(batch: pipeline.Batch, k: int) -> list[pipeline.Batch]:
    """The k equal micro-batches of a rank's batch, in order (device tensors and host keys/flips sliced
    alike); global_labels stays with the whole batch (the head sees that), so the micro-batches carry none."""
    n = batch.images.shape[0]
    if n % k:
        raise ValueError(f"train.accumulate={k}: a rank's batch of {n} does not split into {k} micro-batches")
    b = n // k
    cut = lambda x: None if x is None else [x[i * b:(i + 1) * b] for i in range(k)]  # noqa: E731
    parts = {name: cut(getattr(batch, name)) for name in ("images", "labels", "index", "flipped", "keys", "flips")}
    return [pipeline.Batch(**{name: None if p is None else p[i] for name, p in parts.items()}) for i in range(k)]


def _embed_micro_batches(run: Run, micro: list[pipeline.Batch]) -> tuple[Optional[torch.Tensor], torch.Tensor]:
    """Gradient accumulation, pass 1: the teacher's and the student's embeddings of every micro-batch, the
    student's without autograd (no activations kept), concatenated [k*B, D]. The head needs the whole
    batch at once: its AdaDistill centres and AdaFace statistics move once per optimizer step, from every
    micro-batch's samples, before any logit is taken (the logits use the moved centres), exactly as one
    batch of k*B. The student's buffers (BatchNorm statistics) are put back: pass 2 updates them, once per
    micro-batch, as the forward that trains."""
    student = run.student_module  # no DDP: a forward without autograd has nothing to synchronise
    buffers = [b.clone() for b in student.buffers()]
    with torch.no_grad():
        teacher_emb = torch.cat([run.teacher(m) for m in micro]) if run.teacher is not None else None
        with _autocast(run):
            student_emb = torch.cat([student(m.images) for m in micro])
    with torch.no_grad():
        for b, saved in zip(student.buffers(), buffers):
            b.copy_(saved)
    return teacher_emb, student_emb.requires_grad_(True)


def _backward_micro_batches(run: Run, micro: list[pipeline.Batch], grad: torch.Tensor, rng) -> None:
    """Gradient accumulation, pass 2: each micro-batch's forward again, now with autograd, and its backward
    from the head's gradient of its embeddings (rows of `grad`); the gradients add up in .grad. The RNG
    streams are those of pass 1 (dropout draws the same masks, so the forward is the one the head saw), and
    then those after the head, as if pass 2 had drawn nothing. DDP all-reduces on the last backward only."""
    after = _rng_state(run.ctx.device)
    _set_rng_state(run.ctx.device, rng)
    rows = grad.split(micro[0].images.shape[0])
    for i, (m, g) in enumerate(zip(micro, rows)):
        last = i == len(micro) - 1
        with run.student.no_sync() if isinstance(run.student, DDP) and not last else contextlib.nullcontext():
            with _autocast(run):
                emb = run.student(m.images)
            emb.backward(g)
    _set_rng_state(run.ctx.device, after)


def _autocast(run: Run):
    return torch.autocast(run.ctx.device.type, dtype=run.autocast_dtype or torch.float32,
                          enabled=run.autocast_dtype is not None)


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(device: torch.device, state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _update_scale(scaler: torch.amp.GradScaler, bad: int) -> None:
    """fp16: halve the loss scale after a skipped step, else count towards its growth (GradScaler.update).
    The inf flag GradScaler recorded in unscale_ is this rank's; it is replaced by the ranks' agreed `bad`,
    so that every rank's scale stays the same (a sharded head's gradients differ between ranks). We step
    the optimizer ourselves for the same reason: GradScaler.step would consult the local flag."""
    if not scaler.is_enabled():
        return
    for state in scaler._per_optimizer_states.values():  # no public way to set the agreed flag
        for found_inf in state["found_inf_per_device"].values():
            found_inf.fill_(1.0 if bad else 0.0)
    scaler.update()


def _clip_student(student: nn.Module, max_norm: float) -> torch.Tensor:
    """The student's gradient norm, clipped to `max_norm` as the originals do (`clip_grad_norm_(backbone
    .parameters(), max_norm=5)`); 0 turns clipping off. The head's gradient is never clipped."""
    if max_norm > 0:
        return nn.utils.clip_grad_norm_(student.parameters(), max_norm)
    return nn.utils.get_total_norm([p.grad for p in student.parameters() if p.grad is not None])


def _diverged_message(cfg: RunConfig, plan: Plan, pos: Position, bad: int) -> str:
    what = [name for bit, name in ((_BAD_LOSS, "loss"), (_BAD_GRAD, "gradients"), (_BAD_TEACHER, "teacher embeddings"))
            if bad & bit]
    return (f"{pos.skipped_in_a_row} non-finite steps in a row (train.max_nonfinite={cfg.train.max_nonfinite}), "
            f"ending at step {pos.step}; non-finite at the last one: {', '.join(what)}. {_likely_causes(cfg, plan)}")


def _likely_causes(cfg: RunConfig, plan: Plan) -> str:
    return (f"Likely causes: the learning rate is too high (train.lr={cfg.train.lr} scaled to {plan.lr:.4g} for a "
            f"global batch of {plan.global_batch}; try a lower train.lr or longer train.warmup_epochs), or the teacher "
            f"is broken (teacher.spec={cfg.teacher.spec!r}: check that it loads and gives finite embeddings), or bf16/fp16 "
            f"overflow (try train.precision=fp32). The last checkpoint in {checkpoint.directory(cfg.output)} is "
            f"before this.")


def _recipe_changes(cfg: RunConfig, ctx, path: Path, saved: dict) -> dict[str, tuple]:
    """The recipe keys this resume changes; raises ResumeError unless resume_changes: allow."""
    # from_dict fills the keys added since the checkpoint was written with their defaults
    old = configs.to_dict(configs.from_dict(saved["config"], where=str(path)))
    changes = checkpoint.recipe_changes(old, int(saved.get("world_size", ctx.world_size)),
                                        configs.to_dict(cfg), ctx.world_size)
    if changes and cfg.resume_changes != "allow":
        raise ResumeError(f"{path}: resuming with a changed recipe: {_describe(changes)}; set them back to go on "
                          f"with the same run, choose another output for a new one, or set resume_changes=allow to "
                          f"go on anyway (the change is recorded in metrics.jsonl). Keys that may change freely: "
                          f"{', '.join(k.rstrip('.') + ('.*' if k.endswith('.') else '') for k in checkpoint.RESUMABLE_KEYS)}")
    return changes


def _describe(changes: dict) -> str:
    return ", ".join(f"{key} {json.dumps(old)} -> {json.dumps(new)}" for key, (old, new) in changes.items())


def _log(log: RunLog, meter: Meter, run: Run, pos: Position) -> None:
    means = meter.summary(run.ctx)  # collective: every rank calls it
    elapsed = max(time.perf_counter() - meter.started, 1e-9)
    grad_norm = meter.grad_norm
    log.write({"step": pos.step, "epoch": round(pos.epoch + pos.epoch_step / run.plan.steps_per_epoch, 4),
               "loss": means["loss"], "lr": run.optimizer.param_groups[0]["lr"],
               "images_per_s": meter.steps * run.plan.global_batch / elapsed, "data_wait": meter.wait / elapsed,
               "grad_norm": float(grad_norm) if torch.is_tensor(grad_norm) else grad_norm,
               "cos_st": means["cos_st"], "alpha": means["alpha"], "margin_scaler": means["margin_scaler"],
               "skipped": pos.skipped})
    meter.reset()


def _verify(log: RunLog, run: Run, pos: Position) -> None:
    """The verification sets and benchmarks on rank 0 (the others wait), each result a metrics.jsonl record."""
    for record in verify.run(run.ctx, run.student_module, run.cfg.eval, step=pos.step, epoch=pos.epoch):
        log.write(record)
        metric, value = ("accuracy", record["accuracy"]) if "accuracy" in record else (record["metric"], record["value"])
        log.message(f"step {pos.step} (epoch {pos.epoch}): {record['target']} {metric} {value:.4f}")


def _save(out: Path, run: Run, pos: Position) -> int:
    """Collective (every rank hands in its RNG state; a sharded head's ranks each write their rows); rank 0
    writes the main file."""
    rng_states = distributed.gather_objects(run.ctx, checkpoint.capture_rng())
    row_files = shards_classes(run.cfg.distill, run.head_module.num_classes, run.ctx.world_size)
    head_state, optimizer_state, rows = head_rows.save_parts(out, pos.step, run.head_module, run.optimizer, run.ctx,
                                                             row_files=row_files)
    if run.ctx.is_main:
        checkpoint.save(out, {
            "student": run.student_module.state_dict(), "head": head_state,
            "optimizer": optimizer_state, "scheduler": run.plan.state_dict(), "scaler": run.scaler.state_dict(),
            "step": pos.step, "epoch": pos.epoch, "epoch_step": pos.epoch_step, "rng": rng_states,
            "config": configs.to_dict(run.cfg), "skipped": pos.skipped, "world_size": run.ctx.world_size,
            **({"init": run.init_source} if run.init_source is not None else {}),
            **({"head_rows": rows} if rows is not None else {})})
        checkpoint.prune(out, keep=run.cfg.train.keep_checkpoints, steps_per_epoch=run.plan.steps_per_epoch)
    distributed.barrier(run.ctx)
    return pos.step


def _restore(path: Path, state: dict, run: Run) -> Position:
    try:
        run.student_module.load_state_dict(state["student"])
        head_rows.restore(path, state, run.head_module, run.optimizer)  # re-shards the centres as this run holds them
        if state["scaler"] and run.scaler.is_enabled():  # fp16's loss scale and its growth count
            run.scaler.load_state_dict(state["scaler"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise checkpoint.CheckpointError(f"{path} does not fit this config (model {state['config']['model']}): "
                                         f"{e}") from e
    run.init_source = state.get("init")  # the run's origin, carried into its later checkpoints
    states = state["rng"]
    if len(states) == run.ctx.world_size:
        checkpoint.restore_rng(states[run.ctx.rank])
    else:  # another world size: the data split differs anyway, so exactness is impossible; reseed per rank
        checkpoint.seed_all(int(state["step"]) * 1000 + run.ctx.rank)
    return Position(step=int(state["step"]), epoch=int(state["epoch"]), epoch_step=int(state["epoch_step"]),
                    skipped=int(state.get("skipped", 0)))


def _elastic_note(saved: dict, saved_ranks: int, run: Run) -> str:
    """What a resume on another world size changes (recipe_changes has already refused another global batch)."""
    rows = saved.get("head_rows")
    sharded = shards_classes(run.cfg.distill, run.head_module.num_classes, run.ctx.world_size)
    layout = f"sharded over {run.ctx.world_size} rank(s)" if sharded else "replicated on every rank"
    was = f"{rows['world_size']} row files" if rows is not None else "one replicated tensor"
    return (f"resumed on {run.ctx.world_size} rank(s) a run saved on {saved_ranks}: the same global batch of "
            f"{run.plan.global_batch} ({rank_batch(run.cfg.train)} per rank), the same samples and flips at every "
            f"step; the class centres re-sharded from {was} to {layout}. BatchNorm statistics are computed per "
            f"rank, so the losses stay close to, not equal to, those the old world size would give.")


def _loader(cfg: RunConfig, ctx):
    """The run's loader (pipeline.build_loader): every epoch, each from any step."""
    # NHWC from the loader where the nets run channels_last: the layout change is then free (DALI writes
    # HWC), not a copy of every batch.
    # data.shards may list several directories, laid end to end (their classes and keys offset in order),
    # and data.weights sets how many samples each adds to an epoch: len(loader) is the weighted epoch's steps.
    # train.accumulate: one batch holds every micro-batch of an optimizer step (train_step splits it), so the
    # order, flips and augmentation are the 1 x accumulate*batch_size run's.
    return pipeline.build_loader(cfg.data.shards, rank_batch(cfg.train), rank=ctx.rank, world_size=ctx.world_size,
                                 device=ctx.device, seed=cfg.seed, augment=cfg.data.augment,
                                 backend=cfg.data.backend, hw_decoder_load=cfg.data.hw_decoder_load,
                                 layout="NHWC" if cfg.train.channels_last else "NCHW", weights=cfg.data.weights,
                                 with_flip=cfg.distill.teacher_cache is not None)  # the cache keys on the flip


def _wrap(module: nn.Module, ctx, *, sync_buffers: bool) -> nn.Module:
    """DDP. The student's buffers (BatchNorm statistics) are rank 0's at every forward, so rank 0's
    checkpoint resumes every rank exactly; the head keeps its own buffers equal across ranks (it updates
    them from the gathered global batch), so copying them each step would only cost time."""
    if not ctx.distributed:
        return module
    # torch 2.13 renamed broadcast_buffers to forward_sync_buffers (the old name warns).
    name = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters else "broadcast_buffers"
    return DDP(module, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None, **{name: sync_buffers})


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DDP) else module


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m distill", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a YAML file in configs/")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override any config key, dotted for nested ones, e.g. train.batch_size=64")
    return parser.parse_args(argv)
