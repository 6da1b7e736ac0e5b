"""Host syncs of a training step: at most one per step outside logging (the health flag's all-reduce).

On a GPU every device-to-host read (.item(), .tolist(), .cpu(), bool(tensor), ...) and every op whose
output size depends on the data (nonzero, unique, bincount, masked_select, repeat_interleave by a
tensor) waits for the device's queue to drain. On the CPU they cost nothing, so this test counts the
calls instead: each one would be a sync on a GPU."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

import convert
import models
from convert.synthetic import write_synthetic
from distill import checkpoint, cli, train

STUDENT, TEACHER, DIM = "mobilefacenet_s", "iresnet_s", 32
SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero",
                "unique", "unique_consecutive", "bincount", "masked_select", "repeat_interleave")
SYNC_FUNCTIONS = ("nonzero", "unique", "unique_consecutive", "bincount", "masked_select", "repeat_interleave")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("syncs")
    # few classes: the global batch holds each label several times, so the centre update has rounds
    write_synthetic(root / "rec", 4, 16, seed=0, workers=1)
    convert.convert_rec(root / "rec", root / "shards", workers=1, progress=False)
    torch.manual_seed(1)
    net = models.build(TEACHER, embedding_size=DIM)
    checkpoint.save(root / "teacher", {"student": net.state_dict(), "head": {}, "optimizer": {}, "scheduler": {},
                                       "scaler": {}, "step": 1, "epoch": 0, "epoch_step": 1,
                                       "rng": [checkpoint.capture_rng()],
                                       "config": {"model": {"name": TEACHER, "embedding_size": DIM}}})
    assert cli.run(["cache-teacher", "--teacher", str(root / "teacher"), "--shards", str(root / "shards"),
                    "--out", str(root / "cache"), "--batch-size", "16", "--no-progress"]) == 0
    return {"root": root, "shards": root / "shards", "teacher": root / "teacher", "cache": root / "cache"}


class SyncCounter:
    """Counts the calls that would sync a GPU, while `active`."""

    def __init__(self, monkeypatch) -> None:
        self.active, self.calls = False, Counter()
        for name in SYNC_METHODS:
            if hasattr(torch.Tensor, name):
                monkeypatch.setattr(torch.Tensor, name, self._wrap(getattr(torch.Tensor, name), f"Tensor.{name}"))
        for name in SYNC_FUNCTIONS:
            monkeypatch.setattr(torch, name, self._wrap(getattr(torch, name), f"torch.{name}"))

    def _wrap(self, fn, label):
        def counted(*args, **kwargs):
            if self.active:
                self.calls[label] += 1
            return fn(*args, **kwargs)
        return counted


@pytest.mark.parametrize("teacher", ["online", "cache"])
@pytest.mark.parametrize("loss", ["arcface", "adaface"])
def test_one_host_sync_per_step(data, tmp_path, monkeypatch, teacher, loss):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    counter = SyncCounter(monkeypatch)
    steps = []
    real_step = train.train_step

    def counted_step(run, batch, pos):
        counter.active = True
        try:
            return real_step(run, batch, pos)
        finally:
            counter.active = False
            steps.append(dict(counter.calls))
            counter.calls.clear()

    monkeypatch.setattr(train, "train_step", counted_step)
    text = {"output": str(tmp_path / "run"), "seed": 2, "data": {"shards": str(data["shards"])},
            "model": {"name": STUDENT, "embedding_size": DIM}, "teacher": {"spec": str(data["teacher"])},
            "distill": {"mode": "adadistill", "loss": loss, "s": 16.0,
                        "teacher_cache": str(data["cache"]) if teacher == "cache" else None,
                        "geom": {"w": 1.0, "k": 3.0, "warmup_epochs": 1.0} if loss == "adaface" else None},
            "train": {"batch_size": 16, "lr": 0.05, "lr_batch": 16, "epochs": 2, "max_steps": 4, "log_every": 100,
                      "checkpoint_every": 100, "precision": "fp32"}}
    (tmp_path / "run.yaml").write_text(json.dumps(text))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train.main(["--config", str(tmp_path / "run.yaml")]).step == 4
    finally:
        torch.set_num_threads(threads)
    assert len(steps) == 4
    for number, calls in enumerate(steps, start=1):
        assert sum(calls.values()) <= 1, f"step {number} would sync the GPU {sum(calls.values())} times: {calls}"
