"""The training loop end to end on tiny synthetic shards: two gloo ranks learn and stay identical, a
killed run resumes bit-exactly, a missing teacher stops the run before any step, non-finite losses are
skipped and counted."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import convert
import models
from distill import checkpoint, cli, train
from convert.synthetic import write_synthetic

IDENTITIES, PER_IDENTITY = 16, 8          # 128 images; 2 ranks x 8 = 16 a step -> 8 steps an epoch
STEPS, CRASH_AFTER_CHECKPOINT = 20, 10
KILLED_AT = 12                           # the killed run dies here, 2 steps after its checkpoint
STUDENT = "mobilefacenet_s"              # the smallest registered backbone
DIM = 64


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic(root / "rec", IDENTITIES, PER_IDENTITY, seed=0, workers=1)
    convert.convert_rec(root / "rec", root / "shards", workers=1, progress=False)
    return root / "shards"


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    """A run directory of ours holding a (randomly initialised) teacher backbone: the teacher spec kind
    `teacher.spec=<run dir>`. Any fixed network serves to test the loop's mechanics."""
    run = tmp_path_factory.mktemp("teacher_run")
    torch.manual_seed(1)
    net = models.build(STUDENT, embedding_size=DIM)
    config = {"model": {"name": STUDENT, "embedding_size": DIM}}
    checkpoint.save(run, {"student": net.state_dict(), "head": {}, "optimizer": {}, "scheduler": {}, "scaler": {},
                          "step": 1, "epoch": 0, "epoch_step": 1, "rng": [checkpoint.capture_rng()], "config": config})
    return run


def _config(tmp_path: Path, shards: Path, teacher: Path | None, name: str, **train_keys) -> Path:
    train_cfg = {"batch_size": 8, "lr": 0.2, "lr_batch": 16, "epochs": 6, "warmup_epochs": 0.5,
                 "decay_epochs": [5], "max_steps": STEPS, "log_every": 1, "checkpoint_every": 100,
                 "precision": "fp32", **train_keys}
    text = {
        "output": str(tmp_path / name), "seed": 3,
        "data": {"shards": str(shards), "backend": "auto"},
        "model": {"name": STUDENT, "embedding_size": DIM},
        "teacher": {"spec": str(teacher) if teacher else None},
        "distill": {"mode": "adadistill" if teacher else "none", "loss": "arcface", "s": 16.0, "m": 0.2},
        "train": train_cfg,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(text))  # JSON is YAML
    return path


def _losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, argv: list, dump_at: int, kill_at: int | None) -> None:
    """One rank under torch.multiprocessing, as torchrun would start it (environment variables)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    step_fn = train.train_step

    def step_and_watch(run, batch, pos):
        result = step_fn(run, batch, pos)
        done = pos.step + 1  # the loop advances the position after the step
        if done == dump_at:  # this rank's own state, to compare ranks
            out = Path(run.cfg.output)
            torch.save({"student": run.student_module.state_dict(),
                        "parameters": [n for n, _ in run.student_module.named_parameters()],
                        "head": run.head_module.state_dict()}, out / f"rank{rank}.pt")
        if done == kill_at:
            os._exit(17)  # a crash: no cleanup, no final checkpoint
        return result

    train.train_step = step_and_watch
    train.main(argv)


def _spawn(argv: list, *, dump_at: int, kill_at: int | None = None) -> None:
    mp.start_processes(_worker, args=(2, _free_port(), argv, dump_at, kill_at), nprocs=2, join=True,
                       start_method="spawn")


def test_two_ranks_learn_stay_identical_and_resume_exactly(tmp_path, shards, teacher_run):
    cfg = _config(tmp_path, shards, teacher_run, "whole")
    _spawn(["--config", str(cfg)], dump_at=STEPS)
    whole = tmp_path / "whole"
    losses = _losses(whole)
    assert sorted(losses) == list(range(1, STEPS + 1))
    first, last = sum(losses[s] for s in range(1, 5)) / 4, sum(losses[s] for s in range(STEPS - 3, STEPS + 1)) / 4
    assert last < 0.9 * first, f"loss did not go down: {losses}"
    r0, r1 = (torch.load(whole / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # Weights and the head's state (centres, synchronised by the head) are equal on both ranks. The
    # BatchNorm running statistics are not compared: each rank updates them in its own forward, and
    # DDP copies rank 0's to every rank at the start of the next one.
    for key in r0["parameters"]:
        assert torch.equal(r0["student"][key], r1["student"][key]), f"ranks differ in student.{key}"
    for key, value in r0["head"].items():
        assert torch.equal(value, r1["head"][key]), f"ranks differ in head.{key}"
    final = checkpoint.load(checkpoint.latest(whole))
    assert (final["step"], final["epoch"], final["epoch_step"]) == (STEPS, STEPS // 8, STEPS % 8)
    assert len(final["rng"]) == 2

    # The same run killed 2 steps after its step-10 checkpoint, then the same command again.
    cfg = _config(tmp_path, shards, teacher_run, "killed", checkpoint_every=CRASH_AFTER_CHECKPOINT)
    with pytest.raises(mp.ProcessExitedException):
        _spawn(["--config", str(cfg)], dump_at=-1, kill_at=KILLED_AT)
    killed = tmp_path / "killed"
    assert checkpoint.latest(killed).name == "step-000000010.pt"
    _spawn(["--config", str(cfg)], dump_at=STEPS)
    resumed = _losses(killed)
    assert sorted(resumed) == list(range(1, STEPS + 1))  # the killed attempt's records of 11..12 were dropped
    for step in range(1, STEPS + 1):
        assert resumed[step] == losses[step], f"step {step}: resumed {resumed} != uninterrupted {losses}"
    after = torch.load(killed / "rank0.pt", weights_only=True)
    for part in ("student", "head"):
        for key, value in r0[part].items():
            assert torch.equal(value, after[part][key]), f"resumed run differs in {part}.{key}"


def times(loss_and_stats, factor):
    """train.compute_loss's (loss, stats) with the loss times `factor` (a non-finite step, injected)."""
    loss, stats = loss_and_stats
    return loss * factor, stats


@pytest.fixture
def one_thread():
    """Two cores shared with other work: OpenMP's spinning threads slow an oversubscribed run tenfold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _single_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def test_missing_teacher_fails_before_the_first_step(tmp_path, shards, monkeypatch, capsys, one_thread):
    _single_process(monkeypatch)
    steps = []
    monkeypatch.setattr(train, "train_step", lambda *a, **k: steps.append(1))
    cfg = _config(tmp_path, shards, tmp_path / "no_such_teacher.pt", "noteacher")
    assert cli.run(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "no_such_teacher.pt" in err and "error" in err
    assert steps == [] and checkpoint.latest(tmp_path / "noteacher") is None
    with pytest.raises(models.CheckpointError):
        train.main(["--config", str(cfg)])


def test_non_finite_losses_are_skipped_counted_and_stop_the_run_when_in_a_row(tmp_path, shards, monkeypatch,
                                                                               one_thread):
    _single_process(monkeypatch)
    calls = []
    real_loss = train.compute_loss

    def loss_with_nan(*args):
        calls.append(1)
        loss, stats = real_loss(*args)
        return (loss * float("nan") if len(calls) == 3 else loss), stats

    monkeypatch.setattr(train, "compute_loss", loss_with_nan)
    cfg = _config(tmp_path, shards, None, "nan", max_steps=5, batch_size=16)
    pos = train.main(["--config", str(cfg)])
    assert (pos.step, pos.skipped) == (5, 1)
    records = {r["step"]: r for r in map(json.loads, (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines())}
    assert records[2]["skipped"] == 0 and records[3]["skipped"] == 1 and records[3]["loss"] is None
    assert records[5]["loss"] is not None and records[5]["skipped"] == 1
    state = checkpoint.load(checkpoint.latest(tmp_path / "nan"))
    assert state["skipped"] == 1
    assert all(torch.isfinite(v).all() for v in state["student"].values() if v.is_floating_point())

    monkeypatch.setattr(train, "compute_loss", lambda *args: times(real_loss(*args), float("nan")))
    cfg = _config(tmp_path, shards, None, "diverged", max_steps=8, batch_size=16, max_nonfinite=3)
    with pytest.raises(train.TrainingDiverged) as info:
        train.main(["--config", str(cfg)])
    message = str(info.value)
    assert "3 non-finite steps in a row" in message and "learning rate" in message and "teacher" in message


def test_grad_clip_zero_turns_clipping_off(tmp_path, shards, monkeypatch, one_thread):
    """`train.grad_clip: 0` is an unreachable clip (it zeroed every gradient once); a reachable one is not."""
    _single_process(monkeypatch)
    for name, clip in (("off", 0.0), ("unreachable", 1e9), ("tight", 1e-3)):
        cfg = _config(tmp_path, shards, None, name, max_steps=4, batch_size=16, grad_clip=clip)
        assert train.main(["--config", str(cfg)]).step == 4
    off, unreachable, tight = (_losses(tmp_path / n) for n in ("off", "unreachable", "tight"))
    assert off == unreachable and len(set(off.values())) == 4
    assert tight[1] == off[1] and tight[4] != off[4]


def test_one_loader_serves_every_epoch_of_a_run_and_its_resume(tmp_path, shards, monkeypatch, one_thread):
    """The run builds its loader once and reads each epoch from it, the resumed epoch from its step."""
    _single_process(monkeypatch)
    built, epochs = [], []
    real_build = train.pipeline.build_loader

    def build_loader(*args, **kwargs):
        loader = real_build(*args, **kwargs)
        real_epoch = loader.epoch
        loader.epoch = lambda e, start_step=0: epochs.append((e, start_step)) or real_epoch(e, start_step)
        built.append(loader)
        return loader

    monkeypatch.setattr(train.pipeline, "build_loader", build_loader)
    for max_steps in (6, 10):  # 4 steps an epoch: the first run stops in epoch 1, the second resumes there
        cfg = _config(tmp_path, shards, None, "epochs", max_steps=max_steps, batch_size=32)
        assert train.main(["--config", str(cfg)]).step == max_steps
    assert len(built) == 2 and epochs == [(0, 0), (1, 0), (1, 2), (2, 0)]


@pytest.mark.slow
def test_fp16_an_overflow_skips_the_step_halves_the_loss_scale_and_leaves_no_nan(tmp_path, shards, monkeypatch,
                                                                                 one_thread):
    """train.precision: fp16 on the CPU (torch's CPU autocast and GradScaler take float16): a loss of 1e35,
    finite itself, overflows once scaled; that step is skipped and counted, the scale halves, and the run
    goes on with finite weights. The scale is in the checkpoint and a resume carries it on."""
    _single_process(monkeypatch)
    calls, scales = [], []
    real_loss, real_step, real_build = train.compute_loss, train.train_step, train.build_run

    def low_initial_scale(*args, **kwargs):  # 2**16 overflows this net's first steps by itself: start lower
        run = real_build(*args, **kwargs)
        run.scaler = torch.amp.GradScaler("cpu", init_scale=64.0)
        return run

    def huge_at_3(*args):
        calls.append(1)
        loss, stats = real_loss(*args)
        return (loss * 1e35 if len(calls) == 3 else loss), stats

    def watched(run, batch, pos):
        assert run.scaler.is_enabled() and run.autocast_dtype == torch.float16
        result = real_step(run, batch, pos)
        scales.append((run.scaler.get_scale(), result.bad))
        return result

    monkeypatch.setattr(train, "compute_loss", huge_at_3)
    monkeypatch.setattr(train, "train_step", watched)
    monkeypatch.setattr(train, "build_run", low_initial_scale)
    # CPU float16 convolutions are slow: a small batch
    cfg = _config(tmp_path, shards, None, "fp16", max_steps=5, batch_size=4, lr_batch=4, precision="fp16")
    pos = train.main(["--config", str(cfg)])
    assert (pos.step, pos.skipped) == (5, 1)
    initial = scales[0][0]
    assert [bad for _, bad in scales] == [0, 0, train._BAD_GRAD, 0, 0]
    assert initial == 64.0 and [s for s, _ in scales] == [initial, initial, initial / 2, initial / 2, initial / 2]
    records = {r["step"]: r for r in map(json.loads, (tmp_path / "fp16" / "metrics.jsonl").read_text().splitlines())}
    assert records[3]["skipped"] == 1 and records[3]["loss"] is None
    state = checkpoint.load(checkpoint.latest(tmp_path / "fp16"))
    assert state["scaler"]["scale"] == initial / 2 and state["skipped"] == 1
    assert all(torch.isfinite(v).all() for v in state["student"].values() if v.is_floating_point())
    scales.clear()
    monkeypatch.setattr(train, "build_run", real_build)  # the default initial scale, replaced by the checkpoint's
    train.main(["--config", str(cfg), "train.max_steps=6"])
    assert scales == [(initial / 2, 0)]  # resumed with the halved scale
