"""`python -m distill plan`: the run's schedule, weight decay and head memory, before a GPU is spent.

Nothing here builds real weights or touches a device: the student and the head are built on torch's
"meta" device (shapes only) to count their parameters, and so are the student and the teacher whose MACs
and FLOPs it states (models.complexity; the teacher's backbone is teacher.network, or the one its local
weights name). The dataset's size comes from its manifest (the union's, for several directories:
pipeline.dataset_layout) or from `--num-samples/--num-classes`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any, Optional, Sequence

import torch

import configs
import models
import pipeline
from configs import ConfigError, RunConfig
from distill.class_shard import shards_classes
from distill.heads import head_from_config
from distill.optim import decay_groups, plan as make_plan, rank_batch

_FP32 = 4  # bytes


def preview(cfg: RunConfig, *, world_size: int, num_samples: int, num_classes: int,
            epoch_samples: Optional[int] = None, datasets: Sequence[pipeline.DatasetSpan] = ()) -> dict[str, Any]:
    """The plan as one JSON-able dict (see docs/training.md for an example). `epoch_samples`:
    the samples of one epoch under data.weights (default num_samples); `datasets`: the union's layout."""
    epoch_samples = num_samples if epoch_samples is None else epoch_samples
    steps = pipeline.steps_per_epoch(epoch_samples, rank_batch(cfg.train), world_size)  # optimizer steps
    plan = make_plan(cfg.train, world_size=world_size, steps_per_epoch=steps)
    with torch.device("meta"):
        student = models.build(cfg.model.name, embedding_size=cfg.model.embedding_size)
        head = head_from_config(cfg, num_classes)
    decayed, undecayed = decay_groups([student, head], cfg.train.weight_decay_on)
    teacher_name, teacher_cost, teacher_why = models.complexity.of_teacher(cfg.teacher.spec, cfg.teacher.network)
    sharded = shards_classes(cfg.distill, num_classes, world_size)
    replicated_bytes = head_bytes(cfg, num_classes, world_size, sharded=False)
    sharded_bytes = head_bytes(cfg, num_classes, world_size, sharded=True)
    warmup_curve = [{"step": s, "lr": plan.lr_at(s)} for s in sorted({0, plan.warmup_steps // 4,
                    plan.warmup_steps // 2, 3 * plan.warmup_steps // 4, plan.warmup_steps - 1})] if plan.warmup_steps else []
    return {
        "world_size": world_size,
        "per_rank_batch": cfg.train.batch_size,
        "accumulate": cfg.train.accumulate,
        "global_batch": plan.global_batch,
        "num_samples": num_samples,
        "num_classes": num_classes,
        "epoch_samples": epoch_samples,
        "datasets": [dataclasses.asdict(d) for d in datasets],
        "steps_per_epoch": plan.steps_per_epoch,
        "epochs": plan.epochs,
        "total_steps": plan.total_steps,
        "stop_step": min(plan.stop_step, plan.total_steps),
        "peak_lr": plan.lr,
        "schedule": plan.schedule,
        "warmup": {"shape": plan.warmup, "epochs": plan.warmup_epochs, "steps": plan.warmup_steps,
                   "curve": warmup_curve},
        "decays": [{"epoch": e, "step": s, "lr": plan.lr_at(s)} for e, s in zip(cfg.train.decay_epochs, plan.decay_steps)]
        if plan.schedule == "multistep" else [],
        "epoch_start_lr": plan.epoch_start_lr(),
        "weight_decay": {"value": cfg.train.weight_decay, "on": cfg.train.weight_decay_on,
                         "decayed_params": sum(p.numel() for p in decayed),
                         "undecayed_params": sum(p.numel() for p in undecayed)},
        "grad_clip": cfg.train.grad_clip,
        "precision": precision(cfg.train),
        "shard_classes": sharded,
        "head_bytes_per_rank": replicated_bytes if not sharded else sharded_bytes,
        "head_bytes_replicated": replicated_bytes,
        "head_bytes_sharded": sharded_bytes,
        # FlopCounterMode on the meta device (models.complexity): FLOPs = 2 x MACs, both stated.
        "cost": {"student": {"name": cfg.model.name, **models.complexity.of_module(student).as_dict()},
                 "teacher": {"name": teacher_name, **(teacher_cost.as_dict() if teacher_cost else {}),
                             "why_not": teacher_why}},
    }


_PRECISION_WHY = {
    "auto": "the default: bf16 autocast on a CUDA GPU with bf16 (Ampere and later), fp16 autocast with loss "
            "scaling on one without (V100, T4), fp32 on the CPU; the margin head computes in fp32 throughout",
    "fp32": "fp32 weights and arithmetic, as the originals trained (their code has no autocast)",
    "bf16": "bf16 autocast for the student and the teacher; the margin head computes in fp32",
    "fp16": "fp16 autocast with a GradScaler (an overflowing step is skipped and the scale halved); the margin "
            "head computes in fp32",
}


def precision(train: configs.TrainConfig) -> dict[str, Any]:
    """train.precision, what it means on CUDA and on the CPU, and why (`plan` prints it)."""
    cuda = {"auto": "bf16 (fp16 without bf16 support)", "fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}[train.precision]
    why = _PRECISION_WHY[train.precision]
    if train.precision in ("fp32", "auto"):
        why += ("; TF32 for fp32 matmuls and convolutions on Ampere and later (train.tf32: true), as the originals "
                "on Ampere (PyTorch's cuDNN convolutions default to TF32)" if train.tf32 else
                "; TF32 off (train.tf32: false): full fp32 matmuls and convolutions")
    return {"setting": train.precision, "cuda": cuda, "cpu": "fp32" if train.precision == "auto" else train.precision,
            "tf32": train.tf32, "why": why}


def head_bytes(cfg: RunConfig, num_classes: int, world_size: int, sharded: bool) -> dict[str, int]:
    """fp32 bytes one rank holds for the head (docs/clusters.md's memory table comes from here).

    Replicated: all C centres on every rank, and the logits of its B samples against all C classes.
    Sharded: ceil(C/W) centres, and the logits of the global batch (W*B rows) against them, so the
    [rows x columns] working set stays B x C while the centres shrink W-fold; with Partial FC only
    sample_rate of the columns are in the logits."""
    rows = -(-num_classes // world_size) if sharded else num_classes
    columns = max(1, int(cfg.distill.sample_rate * rows)) if sharded else num_classes
    # train.accumulate: the head takes a step's micro-batches at once (their centres move once, as for one batch)
    logit_rows = rank_batch(cfg.train) * (world_size if sharded else 1)
    centres = rows * cfg.model.embedding_size * _FP32
    trained = cfg.distill.mode == "none"  # centres are parameters: a gradient and a momentum buffer each
    # each step: the normalised centres (the sampled ones), and the cosines, logits and their gradient
    step = columns * cfg.model.embedding_size * _FP32 + 3 * logit_rows * columns * _FP32
    return {
        "centres": centres,
        "optimizer_state": 2 * centres if trained else 0,
        "step_working_set": step,
        "total": centres * (3 if trained else 1) + step,
    }


def format_text(p: dict[str, Any]) -> str:
    lines = [
        f"global batch     {p['global_batch']} = {p['per_rank_batch']} per rank x "
        + (f"{p['accumulate']} micro-batches (train.accumulate) x " if p["accumulate"] > 1 else "")
        + f"{p['world_size']} rank(s)",
        f"dataset          {p['num_samples']:,} samples, {p['num_classes']:,} classes",
    ]
    if len(p["datasets"]) > 1:
        lines += [f"  {d['dir']}: samples {d['first_key']:,}.., classes {d['first_class']:,}.. "
                  f"({d['num_samples']:,} and {d['num_classes']:,})" for d in p["datasets"]]
    if p["epoch_samples"] != p["num_samples"]:
        lines.append(f"epoch            {p['epoch_samples']:,} samples (data.weights)")
    lines += [
        f"steps            {p['steps_per_epoch']:,} per epoch x {p['epochs']} epochs = {p['total_steps']:,}"
        + (f" (the run stops at {p['stop_step']:,}: train.max_steps)" if p["stop_step"] < p["total_steps"] else ""),
        f"peak lr          {p['peak_lr']:.6g} ({p['schedule']})",
    ]
    w = p["warmup"]
    if w["steps"]:
        curve = ", ".join(f"step {c['step']}: {c['lr']:.4g}" for c in w["curve"])
        lines.append(f"warmup           {w['shape']} over {w['epochs']:g} epoch(s) = {w['steps']:,} steps; {curve}")
    else:
        lines.append("warmup           none")
    for d in p["decays"]:
        lines.append(f"decay            from the first step of epoch {d['epoch']:g} (1-based; step {d['step']:,}): "
                     f"lr {d['lr']:.4g}")
    lines.append("lr at the start of each epoch (1-based):")
    lrs = p["epoch_start_lr"]
    lines += [("  " + "  ".join(f"{e + 1:>2}: {lr:<9.4g}" for e, lr in enumerate(lrs[i:i + 6], start=i))).rstrip()
              for i in range(0, len(lrs), 6)]
    wd = p["weight_decay"]
    lines.append(f"weight decay     {wd['value']:g} on {wd['on']}: {wd['decayed_params']:,} parameters decayed, "
                 f"{wd['undecayed_params']:,} not")
    lines.append("gradient clip    " + (f"student's gradient to norm {p['grad_clip']:g}" if p["grad_clip"] else "off"))
    for role in ("student", "teacher"):
        c = p["cost"][role]
        lines.append(f"{role + ' cost':<17}{c['name']}: " + (
            f"{c['params'] / 1e6:.2f} M parameters, {c['macs'] / 1e9:.3f} GMACs = {c['flops'] / 1e9:.3f} GFLOPs "
            f"(FLOPs = 2 x MACs) at {c['input_size']}x{c['input_size']}" if "flops" in c else f"not counted: {c['why_not']}"))
    pr = p["precision"]
    lines.append(f"precision        {pr['setting']}: {pr['cuda']} on CUDA, {pr['cpu']} on the CPU; {pr['why']}")
    for layout in ("replicated", "sharded"):
        hb = p[f"head_bytes_{layout}"]
        chosen = "  <- this run" if p["shard_classes"] == (layout == "sharded") else ""
        where = "every centre on every rank" if layout == "replicated" else f"1/{p['world_size']} of the centres a rank"
        lines.append(f"head {layout:<11} {_gib(hb['total'])} a rank ({where}: centres {_gib(hb['centres'])}, "
                     f"optimizer state {_gib(hb['optimizer_state'])}, per-step working set "
                     f"{_gib(hb['step_working_set'])}; fp32){chosen}")
    return "\n".join(lines)


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 27 else f"{n / 2 ** 20:.1f} MiB"


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = _parse_args(argv)
    cfg = configs.load(args.config, args.overrides)
    datasets: tuple[pipeline.DatasetSpan, ...] = ()
    if args.num_samples is not None:
        num_samples, num_classes = args.num_samples, args.num_classes
        sizes = [num_samples]
        if cfg.data.weights is not None and len(cfg.data.weights) != 1:
            raise ConfigError(f"data.weights={list(cfg.data.weights)}: --num-samples gives one dataset's size, the "
                              f"weights need each dataset's; leave out --num-samples/--num-classes to read them "
                              f"from data.shards' manifests")
    else:
        from convert.manifest import ManifestError

        try:
            datasets = pipeline.dataset_layout(cfg.data.shards)
        except (OSError, ManifestError, pipeline.ShardError) as e:
            raise ConfigError(f"data.shards={cfg.data.shards!r}: {e} (the plan reads the dataset's size from its "
                              f"manifest: convert the dataset first, or give --num-samples N --num-classes C)") from e
        num_samples, num_classes = sum(d.num_samples for d in datasets), sum(d.num_classes for d in datasets)
        sizes = [d.num_samples for d in datasets]
    result = preview(cfg, world_size=args.world_size, num_samples=num_samples, num_classes=num_classes,
                     epoch_samples=pipeline.epoch_size(sizes, cfg.data.weights), datasets=datasets)
    print(json.dumps(result, indent=1) if args.json else format_text(result))
    return result


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m distill plan", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a YAML file in configs/")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, as for training")
    parser.add_argument("--world-size", type=int, default=1, help="ranks (GPUs) of the run (default 1)")
    parser.add_argument("--num-samples", type=int, help="dataset size (default: data.shards' manifests)")
    parser.add_argument("--num-classes", type=int, help="class count; needed with --num-samples")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.world_size < 1:
        parser.error(f"--world-size: expected >= 1, found {args.world_size}")
    if (args.num_samples is None) != (args.num_classes is None):
        parser.error("--num-samples and --num-classes go together")
    if args.num_samples is not None and (args.num_samples < 1 or args.num_classes < 1):
        parser.error(f"--num-samples/--num-classes: expected >= 1, found {args.num_samples}, {args.num_classes}")
    return args
