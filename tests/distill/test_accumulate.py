"""train.accumulate: k micro-batches of B per optimizer step train as one batch of k*B (the student's
parameters, the AdaDistill centres and the AdaFace statistics, to float rounding), where no BatchNorm batch
statistics are in play; a run with micro-batches resumes bit-exactly."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import convert
import models
from convert.synthetic import write_synthetic
from distill import checkpoint, train

STUDENT, DIM = "mobilefacenet_s", 64   # the smallest registered backbone


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic(root / "rec", 8, 8, seed=0, workers=1)  # 64 images: 4 steps of 16 an epoch
    convert.convert_rec(root / "rec", root / "shards", workers=1, progress=False)
    return root / "shards"


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("teacher_run")
    torch.manual_seed(1)
    net = models.build(STUDENT, embedding_size=DIM)
    checkpoint.save(run, {"student": net.state_dict(), "head": {}, "optimizer": {}, "scheduler": {}, "scaler": {},
                          "step": 1, "epoch": 0, "epoch_step": 1, "rng": [checkpoint.capture_rng()],
                          "config": {"model": {"name": STUDENT, "embedding_size": DIM}}})
    return run


def _config(tmp_path: Path, shards: Path, teacher: Path, name: str, **train_keys) -> Path:
    text = {
        "output": str(tmp_path / name), "seed": 3,
        "data": {"shards": str(shards), "backend": "auto"},
        "model": {"name": STUDENT, "embedding_size": DIM},
        "teacher": {"spec": str(teacher)},
        # adaface: the AdaFace norm statistics move with the batch as the centres do
        "distill": {"mode": "adadistill", "loss": "adaface", "s": 16.0},
        "train": {"lr": 0.2, "lr_batch": 16, "epochs": 2, "warmup_epochs": 0.5, "decay_epochs": [2],
                  "log_every": 1, "checkpoint_every": 100, "precision": "fp32", **train_keys},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(text))  # JSON is YAML
    return path


_REAL_BUILD_RUN = train.build_run


def _eval_mode_batchnorm(monkeypatch, micro_sizes: list):
    """build_run with the student's BatchNorm layers in eval mode (running statistics, not the batch's), and
    a hook recording the batch size of each of the student's forwards."""
    real = _REAL_BUILD_RUN

    def build(*args, **kwargs):
        run = real(*args, **kwargs)
        for m in run.student_module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        run.student_module.register_forward_hook(lambda mod, inp, out: micro_sizes.append(inp[0].shape[0]))
        return run

    monkeypatch.setattr(train, "build_run", build)


def test_two_micro_batches_of_b_give_the_parameters_and_centres_of_one_batch_of_2b(tmp_path, shards, teacher_run,
                                                                                  monkeypatch, one_process):
    sizes = {}
    for name, batch, k in (("one", 16, 1), ("two", 8, 2)):
        sizes[name] = []
        _eval_mode_batchnorm(monkeypatch, sizes[name])
        cfg = _config(tmp_path, shards, teacher_run, name, batch_size=batch, accumulate=k, max_steps=3)
        assert train.main(["--config", str(cfg)]).step == 3
    # k=2: each step embeds its two micro-batches without autograd, then runs each again with it
    assert sizes["one"] == [16] * 3 and sizes["two"] == [8] * 12
    one, two = (checkpoint.load(checkpoint.latest(tmp_path / n)) for n in ("one", "two"))
    init = models.build(STUDENT, embedding_size=DIM).state_dict()
    for key, value in one["student"].items():
        torch.testing.assert_close(two["student"][key], value, rtol=1e-5, atol=1e-5, msg=key)
    first_conv = next(key for key, v in init.items() if v.dim() == 4)
    assert not torch.allclose(one["student"][first_conv], init[first_conv])  # it learned: not a trivial equality
    assert set(one["head"]) >= {"centres", "batch_mean", "batch_std"}
    for key, value in one["head"].items():
        torch.testing.assert_close(two["head"][key], value, rtol=1e-5, atol=1e-5, msg=key)
    assert not torch.allclose(one["head"]["centres"], torch.zeros_like(one["head"]["centres"]), atol=0.05)
    # the same schedule and data: the steps count optimizer steps, the lr scales with 8 x 2 x 1 = 16
    logs = {n: [r for r in map(json.loads, (tmp_path / n / "metrics.jsonl").read_text().splitlines()) if "lr" in r]
            for n in ("one", "two")}
    assert [(r["step"], r["lr"]) for r in logs["two"]] == [(r["step"], r["lr"]) for r in logs["one"]]
    assert [r["step"] for r in logs["two"]] == [1, 2, 3]
    for a, b in zip(logs["one"], logs["two"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)


def test_a_run_with_micro_batches_resumes_bit_exactly(tmp_path, shards, teacher_run, monkeypatch, one_process):
    cfg = _config(tmp_path, shards, teacher_run, "straight", batch_size=8, accumulate=2, max_steps=6)
    assert train.main(["--config", str(cfg)]).step == 6
    cfg = _config(tmp_path, shards, teacher_run, "resumed", batch_size=8, accumulate=2, max_steps=6)
    assert train.main(["--config", str(cfg), "train.max_steps=3"]).step == 3
    assert train.main(["--config", str(cfg)]).step == 6  # resumes at step 3, mid-epoch
    straight, resumed = (checkpoint.load(checkpoint.latest(tmp_path / n)) for n in ("straight", "resumed"))
    for part in ("student", "head"):
        for key, value in straight[part].items():
            assert torch.equal(resumed[part][key], value), (part, key)
