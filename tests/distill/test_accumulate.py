"""train.accumulate: k micro-batches of B per optimizer step train as one batch of k*B (the student's
parameters, the AdaDistill centres and the AdaFace statistics, to float rounding), where no BatchNorm batch
statistics are in play; a run with micro-batches resumes bit-exactly."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import models
from distill import checkpoint, train

STUDENT, DIM = "mobilefacenet_s", 64   # the smallest registered backbone


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


def _eval_mode_batchnorm(monkeypatch, micro_sizes: list, init_scale: float | None = None):
    """build_run with the student's BatchNorm layers in eval mode (running statistics, not the batch's), and
    a hook recording the batch size of each of the student's forwards; fp16: a GradScaler from `init_scale`."""
    real = _REAL_BUILD_RUN

    def build(*args, **kwargs):
        run = real(*args, **kwargs)
        for m in run.student_module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        run.student_module.register_forward_hook(lambda mod, inp, out: micro_sizes.append(inp[0].shape[0]))
        if init_scale is not None:
            run.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
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


def _rank_worker(rank: int, port: int, argv: list) -> None:
    """One of two gloo ranks, as torchrun starts them (one run a process), with eval-mode BatchNorm in the
    student."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    _eval_mode_batchnorm(pytest.MonkeyPatch(), [])
    train.main(argv)


@pytest.mark.slow
def test_two_ranks_with_the_sharded_head_and_partial_fc_accumulate_as_one_batch(tmp_path, shards, teacher_run):
    """2 gloo ranks x 2 micro-batches of 4 against 2 x 8: the DDP student's no_sync on the first micro-batch
    (its gradient all-reduced once, on the last), and the sharded head with Partial FC (distill.mode none,
    sample_rate 0.5: the columns sampled once per step from the step's whole batch, as for one batch)."""
    sharded = ["distill.mode=none", "teacher.spec=null", "distill.shard_classes=true", "distill.sample_rate=0.5",
               "distill.loss=cosface"]
    for batch, k in ((8, 1), (4, 2)):
        cfg = _config(tmp_path, shards, teacher_run, f"run_{k}", batch_size=batch, accumulate=k, max_steps=3)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.start_processes(_rank_worker, args=(port, ["--config", str(cfg), *sharded]), nprocs=2, join=True,
                           start_method="spawn")
    one, two = (checkpoint.load(checkpoint.latest(tmp_path / f"run_{k}")) for k in (1, 2))
    assert two["step"] == 3 and two["world_size"] == 2 and two["config"]["train"]["accumulate"] == 2
    for key, value in one["student"].items():  # rank 0's: without the all-reduce it would hold its own gradient
        torch.testing.assert_close(two["student"][key], value, rtol=1e-5, atol=1e-5, msg=key)
    for rank in (0, 1):  # each rank's rows of the trained centres (and their momentum), in the row files
        rows = [torch.load(checkpoint.rows_dir(tmp_path / f"run_{k}", 3) / f"rank-{rank}-of-2.pt", weights_only=True)
                for k in (1, 2)]
        assert rows[0].keys() == rows[1].keys() and "momentum" in rows[0]
        for key in rows[0]:
            torch.testing.assert_close(rows[1][key], rows[0][key], rtol=1e-5, atol=1e-5, msg=f"rank {rank} {key}")


@pytest.mark.slow
def test_fp16_scales_every_micro_batch_and_steps_once(tmp_path, shards, teacher_run, monkeypatch, one_process):
    """train.precision fp16 (CPU float16 autocast and GradScaler): the loss scale reaches the student through
    every micro-batch's backward and is taken out once before the clip and the step, so 2 x 2 trains as 1 x 4
    (float16 rounding apart)."""
    scales = {}
    real_step = train.train_step
    for name, batch, k in (("one", 4, 1), ("two", 2, 2)):
        # with eval-mode BatchNorm at its initial statistics (an identity) this net's float16 gradients
        # overflow at any scale above 1 (measured: 64 and down to 16 too); 2**-8 still tells a scale missing
        # from the micro-batches' backward (256x off) from one taken out once
        _eval_mode_batchnorm(monkeypatch, [], init_scale=2.0 ** -8)
        seen = scales.setdefault(name, [])

        def watched(run, b, pos, seen=seen):
            result = real_step(run, b, pos)
            seen.append((run.scaler.get_scale(), result.bad))
            return result

        monkeypatch.setattr(train, "train_step", watched)
        cfg = _config(tmp_path, shards, teacher_run, name, batch_size=batch, accumulate=k, max_steps=2,
                      lr_batch=4, precision="fp16")
        assert train.main(["--config", str(cfg)]).step == 2
    assert scales["two"] == scales["one"] == [(2.0 ** -8, 0), (2.0 ** -8, 0)]
    one, two = (checkpoint.load(checkpoint.latest(tmp_path / n)) for n in ("one", "two"))
    init = models.build(STUDENT, embedding_size=DIM).state_dict()
    for key, value in one["student"].items():
        if value.is_floating_point():
            moved = (value - init[key]).abs().max()
            torch.testing.assert_close(two["student"][key], value, rtol=0, atol=float(2e-2 * moved + 1e-6), msg=key)
    torch.testing.assert_close(two["head"]["centres"], one["head"]["centres"], rtol=1e-3, atol=1e-4)
