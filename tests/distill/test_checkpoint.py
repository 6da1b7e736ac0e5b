"""distill.checkpoint: the on-disk layout, `latest`, atomicity, pruning, resume resolution; run-dir teachers."""
from __future__ import annotations

import pytest
import torch

import configs
import models
from distill import checkpoint


def _state(step: int, epoch: int = 0, epoch_step: int = 0, student=None) -> dict:
    cfg = configs.RunConfig(output="runs/x", data=configs.DataConfig(shards="s"),
                            model=configs.ModelConfig(name="mobilefacenet_s", embedding_size=64),
                            distill=configs.DistillConfig(mode="none"))
    return {"student": student if student is not None else {"w": torch.full((2,), float(step))},
            "head": {"centres": torch.zeros(3, 2)}, "optimizer": {"state": {}, "param_groups": []},
            "scheduler": {"lr": 0.1}, "scaler": {}, "step": step, "epoch": epoch, "epoch_step": epoch_step,
            "rng": [checkpoint.capture_rng()], "config": configs.to_dict(cfg)}


def test_save_writes_the_documented_layout_and_latest(tmp_path):
    assert checkpoint.latest(tmp_path) is None
    first = checkpoint.save(tmp_path, _state(7))
    second = checkpoint.save(tmp_path, _state(12))
    assert first == tmp_path / "checkpoints" / "step-000000007.pt"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-000000012.pt"
    assert checkpoint.latest(tmp_path) == second
    raw = torch.load(second, weights_only=True)  # plain data only: the evaluator reads it this way
    assert raw["step"] == 12 and raw["config"]["model"]["name"] == "mobilefacenet_s"
    assert torch.equal(checkpoint.load(first)["student"]["w"], torch.full((2,), 7.0))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "latest", "step-000000007.pt", "step-000000012.pt"]  # no temporary files left behind


def test_broken_files_raise_checkpoint_error_naming_the_file(tmp_path):
    path = checkpoint.save(tmp_path, _state(3))
    path.write_bytes(path.read_bytes()[:100])  # torn
    with pytest.raises(checkpoint.CheckpointError, match="step-000000003.pt"):
        checkpoint.load(path)
    (tmp_path / "checkpoints" / "latest").write_text("step-000000099.pt\n")
    with pytest.raises(checkpoint.CheckpointError, match="step-000000099.pt"):
        checkpoint.latest(tmp_path)
    incomplete = tmp_path / "partial.pt"
    torch.save({"student": {}}, incomplete)
    with pytest.raises(checkpoint.CheckpointError, match="missing entries"):
        checkpoint.load(incomplete)


def test_resume_resolution(tmp_path):
    run = tmp_path / "run"
    assert checkpoint.resolve_resume("auto", run) is None
    assert checkpoint.resolve_resume("none", run) is None
    path = checkpoint.save(run, _state(5))
    assert checkpoint.resolve_resume("auto", run) == path
    assert checkpoint.resolve_resume(str(run), tmp_path / "other") == path
    assert checkpoint.resolve_resume(str(path), tmp_path / "other") == path
    with pytest.raises(checkpoint.CheckpointError, match="already holds checkpoints"):
        checkpoint.resolve_resume("none", run)
    with pytest.raises(checkpoint.CheckpointError, match="neither"):
        checkpoint.resolve_resume(str(tmp_path / "nowhere.pt"), run)


def test_prune_keeps_epoch_ends_and_the_newest(tmp_path):
    for step in (4, 8, 10, 12, 14, 16, 18):   # 10 steps an epoch: 10 is an epoch's end
        checkpoint.save(tmp_path, _state(step))
    checkpoint.prune(tmp_path, keep=2, steps_per_epoch=10)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*.pt"))
    assert kept == ["step-000000010.pt", "step-000000016.pt", "step-000000018.pt"]
    checkpoint.prune(tmp_path, keep=0, steps_per_epoch=10)  # 0 keeps all
    assert len(list((tmp_path / "checkpoints").glob("step-*.pt"))) == 3


def test_a_run_directory_is_a_teacher_spec(tmp_path):
    net = models.build("mobilefacenet_s", embedding_size=64)
    checkpoint.save(tmp_path, _state(20, student=net.state_dict()))
    loaded = models.load_teacher(str(tmp_path))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(loaded(x), net.eval()(x))
    bad = _state(21, student={"nonsense": torch.zeros(1)})
    checkpoint.save(tmp_path, bad)
    with pytest.raises(models.CheckpointError, match="step-000000021.pt|run directory"):
        models.load_teacher(str(tmp_path))
