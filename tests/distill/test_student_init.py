"""student.init: fine-tuning starts the student's backbone from trained weights (a checkpoint or a run
directory), strictly unless init_strict is false, records the source, and a resume never re-applies it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import configs
import models
from distill import checkpoint, cli, distributed, train

STUDENT, DIM = "mobilefacenet_s", 32

pytestmark = pytest.mark.usefixtures("one_process")


def _source(folder: Path, dim: int = DIM, seed: int = 7) -> Path:
    """A run directory of ours whose student is a fixed random net (any trained net serves)."""
    torch.manual_seed(seed)
    net = models.build(STUDENT, embedding_size=dim)
    with torch.no_grad():  # BatchNorm statistics unlike a fresh net's, so that they are checked too
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    checkpoint.save(folder, {"student": net.state_dict(), "head": {}, "optimizer": {}, "scheduler": {}, "scaler": {},
                             "step": 42, "epoch": 1, "epoch_step": 0, "rng": [checkpoint.capture_rng()],
                             "config": {"model": {"name": STUDENT, "embedding_size": dim}}})
    return folder


def _cfg(tmp_path: Path, **student) -> configs.RunConfig:
    return configs.RunConfig(output=str(tmp_path / "run"), data=configs.DataConfig(shards="unused"),
                             model=configs.ModelConfig(name=STUDENT, embedding_size=DIM),
                             student=configs.StudentConfig(**student),
                             distill=configs.DistillConfig(mode="none"),
                             train=configs.TrainConfig(precision="fp32", channels_last=False))


def _ctx() -> distributed.DistContext:
    return distributed.DistContext(0, 1, 0, torch.device("cpu"))


def test_the_students_embeddings_at_step_0_are_the_source_models(tmp_path):
    source = _source(tmp_path / "source")
    for spec in (source, checkpoint.latest(source)):  # a run directory, a checkpoint file
        run = train.build_run(_cfg(tmp_path, init=str(spec)), _ctx(), num_classes=5, steps_per_epoch=4)
        x = torch.randn(3, 3, 112, 112)
        reference = models.load_backbone(str(spec)).net
        with torch.no_grad():
            assert torch.equal(run.student_module.eval()(x), reference(x))
        record = run.init_source
        assert record["file"] == str(checkpoint.latest(source)) and record["step"] == 42
        assert len(record["sha256"]) == 64 and record["missing"] == record["unexpected"] == []
    fresh = train.build_run(_cfg(tmp_path), _ctx(), num_classes=5, steps_per_epoch=4)
    assert fresh.init_source is None
    with torch.no_grad():
        assert not torch.equal(fresh.student_module.eval()(x), reference(x))


def test_a_mismatch_is_an_error_naming_the_keys_unless_init_strict_is_false(tmp_path):
    other = _source(tmp_path / "other", dim=16)  # another embedding size: the last layers differ in shape
    with pytest.raises(models.CheckpointError, match=r"misshapen key\(s\): .*init_strict=false"):
        train.build_run(_cfg(tmp_path, init=str(other)), _ctx(), num_classes=5, steps_per_epoch=4)
    run = train.build_run(_cfg(tmp_path, init=str(other), init_strict=False), _ctx(), num_classes=5, steps_per_epoch=4)
    record = run.init_source
    assert record["misshapen"] and record["loaded"] > 0
    source = checkpoint.load(checkpoint.latest(other))["student"]
    student = run.student_module.state_dict()
    loaded = [k for k in source if k not in record["misshapen"]]
    assert len(loaded) == record["loaded"] and all(torch.equal(student[k], source[k]) for k in loaded)


def test_the_checkpoint_records_the_source_and_a_resume_does_not_reapply_it(tmp_path, shards):
    source = _source(tmp_path / "source")
    text = {"output": str(tmp_path / "run"), "seed": 1, "data": {"shards": str(shards)},
            "model": {"name": STUDENT, "embedding_size": DIM}, "student": {"init": str(source)},
            "distill": {"mode": "none", "s": 16.0, "m": 0.2},
            "train": {"batch_size": 16, "lr": 0.05, "lr_batch": 16, "epochs": 2, "max_steps": 2, "log_every": 1,
                      "checkpoint_every": 100, "precision": "fp32"}}
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(text))
    assert cli.run(["--config", str(path)]) == 0
    saved = checkpoint.load(checkpoint.latest(tmp_path / "run"))
    assert saved["init"]["file"] == str(checkpoint.latest(source)) and saved["init"]["step"] == 42
    assert saved["step"] == 2 and saved["config"]["student"]["init"] == str(source)
    # The source is gone: a resume reads the run's own checkpoint, never student.init, and keeps the record.
    for f in (source / "checkpoints").iterdir():
        f.unlink()
    assert cli.run(["--config", str(path), "train.max_steps=3"]) == 0
    resumed = checkpoint.load(checkpoint.latest(tmp_path / "run"))
    assert resumed["step"] == 3 and resumed["init"] == saved["init"]
