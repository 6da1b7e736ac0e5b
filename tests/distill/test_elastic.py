"""Runs that survive a change of GPU count: a run with sharded class centres on two gloo ranks (torchrun's
environment) writes its rows per rank, and resumes on one rank with the same global batch, the rows
re-sharded and the log saying so; the row files re-shard to any world size and into a replicated head."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import convert
from convert.synthetic import write_synthetic
from distill import checkpoint, head_rows, train
from distill.class_shard import ClassShard
from distill.heads import build_head
from distill.optim import build_optimizer
from configs import TrainConfig

from .test_train import _free_port, _losses, _worker

IDENTITIES, PER_IDENTITY = 13, 8  # 104 images: 2 ranks x 8 = 16 a step -> 6 steps an epoch; 13 classes: 6 + 7
STUDENT, DIM = "mobilefacenet_s", 32


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("elastic")
    write_synthetic(root / "rec", IDENTITIES, PER_IDENTITY, seed=1, workers=1)
    convert.convert_rec(root / "rec", root / "shards", workers=1, progress=False)
    return root / "shards"


def _config(tmp_path: Path, shards: Path, name: str, output: str) -> Path:
    text = {
        "output": str(tmp_path / output), "seed": 5,
        "data": {"shards": str(shards)},
        "model": {"name": STUDENT, "embedding_size": DIM},
        "distill": {"mode": "none", "loss": "cosface", "s": 16.0, "shard_classes": True},
        "train": {"batch_size": 8, "lr": 0.02, "lr_batch": 16, "epochs": 4, "decay_epochs": [3], "max_steps": 6,
                  "log_every": 1, "checkpoint_every": 3, "precision": "fp32", "tensorboard": False},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(text))
    return path


def _spawn(argv: list) -> None:
    mp.start_processes(_worker, args=(2, _free_port(), argv, -1, None), nprocs=2, join=True, start_method="spawn")


def test_sharded_run_on_two_ranks_resumes_on_one_with_the_same_global_batch(tmp_path, shards, monkeypatch, capsys):
    cfg = _config(tmp_path, shards, "two", "run")
    _spawn(["--config", str(cfg)])
    out = tmp_path / "run"
    ckpt = checkpoint.directory(out)
    for step in (3, 6):  # every rank's rows, in the checkpoint's folder
        assert sorted(p.name for p in checkpoint.rows_dir(out, step).iterdir()) == ["rank-0-of-2.pt", "rank-1-of-2.pt"]
    main = checkpoint.load(ckpt / "step-000000006.pt")
    assert "centres" not in main["head"] and main["head_rows"]["bounds"] == [[0, 6], [6, 13]]
    assert main["head_rows"]["momentum"] and main["world_size"] == 2
    shutil.copytree(out, tmp_path / "other")  # the same run, to go on with 2 ranks for comparison

    # The loop with DDP and a replicated head (its centres all-reduced) computes the same losses. Only the
    # first two steps are compared: this tiny student amplifies rounding noise chaotically (the replicated
    # loop with channels_last on and off already differs by 4e-3 at step 2 and 0.5 at step 4, measured);
    # test_sharded.py compares the heads step after step without a student in between.
    _spawn(["--config", str(cfg), f"output={tmp_path / 'replicated'}", "distill.shard_classes=false"])
    sharded, replicated = _losses(out), _losses(tmp_path / "replicated")
    assert sorted(sharded) == list(range(1, 7))
    for step in (1, 2):
        assert sharded[step] == pytest.approx(replicated[step], abs=1e-4), (sharded, replicated)
    assert "head_rows" not in checkpoint.load(checkpoint.latest(tmp_path / "replicated"))

    # One rank, the same global batch (16 = 1 x 16): no recipe change, so no resume_changes needed.
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        capsys.readouterr()
        pos = train.main(["--config", str(cfg), "train.batch_size=16", "train.max_steps=9"])
    finally:
        torch.set_num_threads(threads)
    log = capsys.readouterr().out
    assert pos.step == 9
    assert "resumed on 1 rank(s) a run saved on 2" in log and "re-sharded from 2 row files" in log
    assert "BatchNorm statistics are computed per rank" in log
    assert [p.name for p in checkpoint.rows_dir(out, 9).iterdir()] == ["rank-0-of-1.pt"]
    one = _losses(out)

    # The same checkpoint resumed on 2 ranks: the same samples, flips, weights and centres, but BatchNorm
    # normalises 8 samples a rank instead of 16; on this tiny, young network that moves the embeddings by
    # half their norm (measured), so the losses are close, not equal.
    _spawn(["--config", str(_config(tmp_path, shards, "two_more", "other")), "train.max_steps=9"])
    two = _losses(tmp_path / "other")
    mean = lambda losses: sum(losses[s] for s in (7, 8, 9)) / 3  # noqa: E731
    assert mean(one) == pytest.approx(mean(two), rel=0.15), (one, two)
    for step in range(1, 7):
        assert one[step] == two[step]  # the records before the resume are the first run's


def _mode_none_head(shard, classes=13):
    torch.manual_seed(0)
    return build_head("arcface", classes, 4, kd="none", shard=shard)


def test_rows_reshard_to_any_world_size_and_into_a_replicated_head(tmp_path, one_process):
    """Rows and momentum saved by 2 ranks load into 3 ranks' shards and a replicated head, unchanged."""
    classes, train_cfg = 13, TrainConfig(momentum=0.9)
    full = torch.randn(classes, 4)
    momentum = torch.randn(classes, 4)
    entries = []
    for rank in range(2):
        shard = ClassShard(rank, 2, classes)
        head = _mode_none_head(shard)
        opt = build_optimizer([head], train_cfg, lr=0.1)
        with torch.no_grad():
            head.centres.copy_(full[shard.start:shard.stop])
        opt.state[head.centres]["momentum_buffer"] = momentum[shard.start:shard.stop].clone()
        monkey_ctx = type("Ctx", (), {"distributed": False})()
        head_state, opt_state, entry = head_rows.save_parts(tmp_path, 4, head, opt, monkey_ctx)
        entries.append(entry)
    assert entries[0] == entries[1]
    state = {"head": head_state, "optimizer": opt_state, "head_rows": entries[0]}
    path = checkpoint.directory(tmp_path) / checkpoint.file_name(4)
    for rank in range(3):
        shard = ClassShard(rank, 3, classes)
        head = _mode_none_head(shard)
        opt = build_optimizer([head], train_cfg, lr=0.1)
        head_rows.restore(path, state, head, opt)
        torch.testing.assert_close(head.centres.detach(), full[shard.start:shard.stop], rtol=0, atol=0)
        torch.testing.assert_close(opt.state[head.centres]["momentum_buffer"], momentum[shard.start:shard.stop])
    head = _mode_none_head(None)
    opt = build_optimizer([head], train_cfg, lr=0.1)
    head_rows.restore(path, state, head, opt)
    torch.testing.assert_close(head.centres.detach(), full, rtol=0, atol=0)
    torch.testing.assert_close(opt.state[head.centres]["momentum_buffer"], momentum)
    # and back: the replicated head's checkpoint into a shard
    replicated = {"head": head.state_dict(), "optimizer": opt.state_dict()}
    shard = ClassShard(1, 2, classes)
    back = _mode_none_head(shard)
    opt = build_optimizer([back], train_cfg, lr=0.1)
    head_rows.restore(path, replicated, back, opt)
    torch.testing.assert_close(back.centres.detach(), full[6:], rtol=0, atol=0)
    torch.testing.assert_close(opt.state[back.centres]["momentum_buffer"], momentum[6:])

    # a missing row file is named
    (checkpoint.rows_dir(tmp_path, 4) / "rank-1-of-2.pt").unlink()
    whole = _mode_none_head(ClassShard(0, 1, classes))
    with pytest.raises(checkpoint.CheckpointError, match="rank-1-of-2.pt.*missing"):
        head_rows.restore(path, state, whole, build_optimizer([whole], train_cfg, lr=0.1))
