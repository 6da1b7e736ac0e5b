"""The training recipe against the originals' code, transcribed: the lr at every step and epoch, the
optimizer's groups, `grad_clip: 0`, and the schedule preview (`python -m distill plan`)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import configs
import models
from distill import cli, optim as schedule
from distill.heads import head_from_config
from distill.optim import build_optimizer

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "configs" / "ms1mv2_mbf_ir50_adaarcdistill.yaml"        # fdbtrs/AdaDistill, 4 GPUs x 128
ADAFACE_KD = ROOT / "configs" / "ms1mv2_mbf_cvlface_adafacekd_geom.yaml"  # the AdaFace-KD code, 1 GPU x 384
MS1MV2_IMAGES, MS1MV2_CLASSES = 5_822_653, 85_742


# --- the originals, transcribed -----------------------------------------------------------------------
def adadistill_lr_step_func(epoch):
    """fdbtrs/AdaDistill config/config.py, dataset emoreIresNet (warmup_epoch = -1)."""
    return ((epoch + 1) / (4 + 1)) ** 2 if epoch < -1 else 0.1 ** len(
        [m for m in [8, 14, 20, 25] if m - 1 <= epoch])


def adafacekd_lr_step_func(epoch, warmup_epoch=1):
    """The AdaFace-KD code's config/config.py, dataset emoreIresNet (warmup_epoch = 1)."""
    if epoch < warmup_epoch:
        return ((epoch + 1) / (warmup_epoch + 1)) ** 2
    milestones = [8, 14, 20, 25]
    return 0.1 ** len([m for m in milestones if m - 1 <= epoch])


def original_lr(base, lr_func, epoch, batch, steps_per_epoch, warmup_epoch=None):
    """The lr of (epoch, batch): LambdaLR stepped once per epoch gives base * lr_func(epoch); the AdaFace-KD
    code overrides it per step while epoch < warmup_epoch with its quadratic warmup."""
    if warmup_epoch is not None and epoch < warmup_epoch:
        return base * ((epoch + batch / steps_per_epoch + 1) / (warmup_epoch + 1)) ** 2
    return base * lr_func(epoch)


def original_base_lr(lr, batch_size, world_size):
    return lr / 512 * batch_size * world_size  # train_AdaDistill.py: cfg.lr / 512 * cfg.batch_size * world_size


def original_steps_per_epoch(num_image, batch_size, world_size):
    return int(num_image / batch_size / world_size)  # with DistributedSampler and drop_last=True


CASES = [  # (config, world size, the original's per-rank batch, lr_func, quadratic warmup epochs)
    (PAPER, 4, 128, adadistill_lr_step_func, None),
    (ADAFACE_KD, 1, 384, adafacekd_lr_step_func, 1),
]


@pytest.mark.parametrize("path, world, batch, lr_func, warmup", CASES, ids=["adadistill", "adafacekd"])
def test_lr_at_the_start_of_every_epoch_of_the_real_run(path, world, batch, lr_func, warmup):
    cfg = configs.load(path)
    assert cfg.train.batch_size == batch
    steps = original_steps_per_epoch(MS1MV2_IMAGES, batch, world)
    plan = schedule.plan(cfg.train, world_size=world, steps_per_epoch=steps)
    base = original_base_lr(0.1, batch, world)
    assert plan.lr == base and plan.total_steps == steps * 26
    expected = [original_lr(base, lr_func, e, 0, steps, warmup) for e in range(26)]
    assert plan.epoch_start_lr() == expected  # exactly, float for float
    if warmup:
        # the warmup's first step is 0.25x and its last one is just below the peak
        assert plan.lr_at(0) == 0.25 * base and plan.lr_at(steps - 1) < base == plan.lr_at(steps)


@pytest.mark.parametrize("path, world, batch, lr_func, warmup", CASES, ids=["adadistill", "adafacekd"])
def test_lr_at_every_step_of_a_short_schedule(path, world, batch, lr_func, warmup):
    cfg = configs.load(path)
    steps = 7  # a synthetic epoch of 7 steps, the real 26 epochs
    plan = schedule.plan(cfg.train, world_size=world, steps_per_epoch=steps)
    base = original_base_lr(0.1, batch, world)
    ours = [plan.lr_at(s) for s in range(plan.total_steps)]
    theirs = [original_lr(base, lr_func, e, b, steps, warmup) for e in range(26) for b in range(steps)]
    assert ours == theirs


def test_fractional_warmup_and_decay_epochs():
    train = configs.TrainConfig(batch_size=8, lr=0.1, lr_batch=8, epochs=3, warmup_epochs=0.5, warmup="quadratic",
                                decay_epochs=(1.5, 3), decay_factor=0.5)
    plan = schedule.plan(train, world_size=1, steps_per_epoch=10)
    assert plan.warmup_steps == 5 and plan.decay_steps == (5, 20)
    assert plan.lr_at(0) == pytest.approx(0.1 * (1 / 1.5) ** 2) and plan.lr_at(4) == pytest.approx(0.1 * (1.4 / 1.5) ** 2)
    assert [plan.lr_at(s) for s in (5, 19, 20)] == pytest.approx([0.05, 0.05, 0.025])
    with pytest.raises(configs.ConfigError, match="1-based"):
        configs.TrainConfig(decay_epochs=(0.75,))


def _student_and_head(cfg, num_classes=50):
    torch.manual_seed(0)
    return models.build(cfg.model.name, embedding_size=cfg.model.embedding_size), head_from_config(cfg, num_classes)


@pytest.mark.parametrize("mode", ["adadistill", "none"])
def test_optimizer_decays_every_parameter_as_the_originals(mode):
    """fdbtrs/AdaDistill and the AdaFace-KD code: SGD(params=[{'params': backbone.parameters()}], momentum=0.9,
    weight_decay=cfg.weight_decay) (AdaDistill's centres are not parameters); arcface_torch adds its
    classifier's parameters to the same decay. One update from the same gradients is equal."""
    cfg = configs.load(PAPER, [f"distill.mode={mode}"])
    student, head = _student_and_head(cfg)
    ours = build_optimizer([student, head], cfg.train, lr=0.1)
    assert len(ours.param_groups) == 1 and ours.param_groups[0]["weight_decay"] == 5e-4
    trained = list(student.parameters()) + list(head.parameters())
    assert [id(p) for p in ours.param_groups[0]["params"]] == [id(p) for p in trained]
    assert len(list(head.parameters())) == (1 if mode == "none" else 0)

    twin_student, twin_head = copy.deepcopy(student), copy.deepcopy(head)
    twin = list(twin_student.parameters()) + list(twin_head.parameters())
    theirs = torch.optim.SGD(params=[{"params": twin}], lr=0.1, momentum=0.9, weight_decay=5e-4)
    for step in range(2):
        for p, q in zip(trained, twin):
            p.grad = torch.full_like(p, 0.01 * (step + 1))
            q.grad = p.grad.clone()
        ours.step(), theirs.step()
    assert all(torch.equal(p, q) for p, q in zip(trained, twin))


def test_weight_decay_on_weights_leaves_one_dimensional_parameters_alone():
    cfg = configs.load(PAPER, ["train.weight_decay_on=weights"])
    student, head = _student_and_head(cfg)
    decayed, undecayed = build_optimizer([student, head], cfg.train, lr=0.1).param_groups
    assert decayed["weight_decay"] == 5e-4 and undecayed["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim <= 1 for p in undecayed["params"])
    assert sum(p.numel() for p in undecayed["params"]) == 26_880  # MobileFaceNet's BatchNorm and PReLU


def test_plan_shows_the_originals_schedules(capsys):
    argv = ["plan", "--config", str(PAPER), "--world-size", "4", "--num-samples", str(MS1MV2_IMAGES),
            "--num-classes", str(MS1MV2_CLASSES), "--json"]
    assert cli.run(argv) == 0
    paper = json.loads(capsys.readouterr().out)
    assert (paper["global_batch"], paper["steps_per_epoch"], paper["total_steps"]) == (512, 11_372, 295_672)
    assert paper["peak_lr"] == 0.1
    assert paper["epoch_start_lr"] == [original_lr(0.1, adadistill_lr_step_func, e, 0, 11_372) for e in range(26)]
    assert paper["weight_decay"] == {"value": 5e-4, "on": "all", "decayed_params": 1_199_488, "undecayed_params": 0}
    assert paper["head_bytes_per_rank"]["centres"] == MS1MV2_CLASSES * 512 * 4
    # the originals trained in fp32, with TF32 on Ampere
    assert {k: paper["precision"][k] for k in ("setting", "cuda", "tf32")} == {"setting": "fp32", "cuda": "fp32",
                                                                               "tf32": True}

    argv = ["plan", "--config", str(ADAFACE_KD), "--world-size", "1", "--num-samples", str(MS1MV2_IMAGES),
            "--num-classes", str(MS1MV2_CLASSES)]
    assert cli.run(argv) == 0
    text = capsys.readouterr().out
    assert "global batch     384 = 384 per rank x 1 rank(s)" in text
    assert "15,163 per epoch x 26 epochs = 394,238" in text and "peak lr          0.075" in text
    assert "quadratic over 1 epoch(s) = 15,163 steps; step 0: 0.01875" in text
    assert "from the first step of epoch 8 (1-based; step 106,141): lr 0.0075" in text
    assert "precision        fp32: fp32 on CUDA, fp32 on the CPU; fp32 weights and arithmetic, as the originals" in text
    assert "TF32 for fp32 matmuls and convolutions" in text

    assert cli.run(argv + ["train.precision=auto"]) == 0  # every other config's default
    assert "precision        auto: bf16 (fp16 without bf16 support) on CUDA, fp32 on the CPU" in capsys.readouterr().out

    # train.accumulate: 2 micro-batches of 192 are the 384 batch's optimizer steps, lr and schedule
    assert cli.run(argv + ["train.batch_size=192", "train.accumulate=2"]) == 0
    accumulated = capsys.readouterr().out
    assert "global batch     384 = 192 per rank x 2 micro-batches (train.accumulate) x 1 rank(s)" in accumulated
    assert accumulated.splitlines()[1:] == text.splitlines()[1:]  # the head too takes a step's 384 samples at once


def test_plan_reads_the_dataset_from_the_shards_manifest(tmp_path, capsys):
    import convert
    from convert.synthetic import write_synthetic

    write_synthetic(tmp_path / "rec", 4, 5, seed=0, workers=1)
    convert.convert_rec(tmp_path / "rec", tmp_path / "shards", workers=1, progress=False)
    argv = ["plan", "--config", str(PAPER), f"data.shards={tmp_path / 'shards'}", "train.batch_size=4", "--json"]
    assert cli.run(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["num_samples"], result["num_classes"], result["steps_per_epoch"]) == (20, 4, 5)
    assert cli.run(["plan", "--config", str(PAPER), f"data.shards={tmp_path / 'absent'}"]) == 2
    assert "absent" in capsys.readouterr().err
