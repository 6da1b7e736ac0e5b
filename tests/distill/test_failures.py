"""What `python -m distill` does when things go wrong: one writer per run directory, a torn metrics line,
settings that are not finite, a run with no finite step, a resume that changes the recipe, a full disk
while saving, a broken manifest. Each is a one-line error (exit 2) naming the file, or a warning and on."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.files import LOCK_NAME, output_lock
import configs
from distill import checkpoint, cli, train

from .test_train import times

STUDENT, DIM = "mobilefacenet_s", 32


pytestmark = pytest.mark.usefixtures("one_process")


def _argv(tmp_path: Path, shards: Path, name: str, *overrides: str) -> list[str]:
    text = {"output": str(tmp_path / name), "seed": 1, "data": {"shards": str(shards)},
            "model": {"name": STUDENT, "embedding_size": DIM}, "distill": {"mode": "none", "s": 16.0, "m": 0.2},
            "train": {"batch_size": 16, "lr": 0.05, "lr_batch": 16, "epochs": 2, "max_steps": 2, "log_every": 1,
                      "checkpoint_every": 100, "precision": "fp32"}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(text))
    return ["--config", str(path), *overrides]


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1] if lines else ""


def test_a_second_job_on_the_same_run_directory_is_refused(tmp_path, shards, capsys):
    run = tmp_path / "locked"
    with output_lock(run, "python -m distill --config other.yaml"):
        assert cli.run(_argv(tmp_path, shards, "locked")) == 2
    err = _error(capsys)
    assert err.startswith("python -m distill: error: ") and str(run) in err and "other.yaml" in err
    assert checkpoint.latest(run) is None and not (run / "metrics.jsonl").exists()  # nothing written

    # A lock file left by a job that is gone (killed: the kernel dropped its lock) does not block a resume.
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom common.files import output_lock\n"
                               f"with output_lock({str(run)!r}, 'killed job'):\n print('held', flush=True)\n"
                               " time.sleep(60)"], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    assert "killed job" in (run / LOCK_NAME).read_text()
    assert cli.run(_argv(tmp_path, shards, "locked")) == 0
    assert checkpoint.load(checkpoint.latest(run))["step"] == 2


def test_a_second_cache_build_on_the_same_folder_is_refused(tmp_path, shards, capsys):
    teacher = tmp_path / "teacher"
    assert cli.run(_argv(tmp_path, shards, "teacher")) == 0
    out = tmp_path / "cache"
    with output_lock(out, "python -m distill cache-teacher (the first one)"):
        argv = ["cache-teacher", "--teacher", str(teacher), "--shards", str(shards), "--out", str(out),
                "--batch-size", "16", "--no-progress"]
        assert cli.run(argv) == 2
    err = _error(capsys)
    assert "cache-teacher: error: " in err and str(out) in err and "the first one" in err
    assert not (out / "manifest.json").exists()


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, shards):
    assert cli.run(_argv(tmp_path, shards, "torn", "train.checkpoint_every=1")) == 0
    metrics = tmp_path / "torn" / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 3, "epoch": 0.75, "lo')  # a kill in mid-write
    with pytest.warns(RuntimeWarning, match=r"metrics.jsonl: line 3 of 3 is not a JSON record"):
        assert cli.run(_argv(tmp_path, shards, "torn", "train.max_steps=3")) == 0
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == [1, 2, 3]


@pytest.mark.parametrize("override", ["train.lr=inf", "train.lr=.nan", "train.momentum=-.inf", "distill.s=inf",
                                      "train.decay_epochs=[8, .inf]", "distill.m=nan"])
def test_settings_that_are_not_finite_are_refused_at_load(tmp_path, shards, capsys, override):
    assert cli.run(_argv(tmp_path, shards, "nonfinite", override)) == 2
    err = _error(capsys)
    assert err.startswith("python -m distill: error: ") and override.split("=")[0] in err
    assert not (tmp_path / "nonfinite").exists()


def test_a_run_whose_every_step_is_non_finite_fails_even_when_short(tmp_path, shards, capsys, monkeypatch):
    real = train.compute_loss
    monkeypatch.setattr(train, "compute_loss", lambda *args: times(real(*args), float("nan")))
    assert cli.run(_argv(tmp_path, shards, "allnan", "train.max_steps=3", "train.max_nonfinite=10")) == 2
    assert "every one of the 3 steps of this run was non-finite" in _error(capsys)


def test_a_resume_that_changes_the_recipe_is_refused_unless_allowed(tmp_path, shards, capsys):
    assert cli.run(_argv(tmp_path, shards, "recipe")) == 0
    config_before = (tmp_path / "recipe" / "config.yaml").read_text()
    assert cli.run(_argv(tmp_path, shards, "recipe", "train.max_steps=3", "train.lr=0.2", "seed=5")) == 2
    err = _error(capsys)
    assert "step-000000002.pt: resuming with a changed recipe" in err
    assert "train.lr 0.05 -> 0.2" in err and "seed 1 -> 5" in err and "resume_changes=allow" in err
    assert (tmp_path / "recipe" / "config.yaml").read_text() == config_before  # not overwritten
    assert checkpoint.load(checkpoint.latest(tmp_path / "recipe"))["step"] == 2

    # Where it stops, how it logs: free to change. An expert may go on with a changed recipe: recorded.
    assert cli.run(_argv(tmp_path, shards, "recipe", "train.max_steps=3", "train.log_every=2")) == 0
    assert cli.run(_argv(tmp_path, shards, "recipe", "train.max_steps=4", "train.lr=0.2",
                         "resume_changes=allow")) == 0
    records = [json.loads(line) for line in (tmp_path / "recipe" / "metrics.jsonl").read_text().splitlines()]
    changed = [r for r in records if r.get("event") == "resume_changes"]
    assert changed == [{"event": "resume_changes", "step": 3, "changes": {"train.lr": {"old": 0.05, "new": 0.2}}}]


def test_the_global_batch_not_the_per_rank_batch_is_the_recipe():
    cfg = configs.to_dict(configs.load(Path(__file__).parents[2] / "configs" / "ms1mv2_mbf_ir50_adaarcdistill.yaml"))
    halved = json.loads(json.dumps(cfg))
    halved["train"]["batch_size"] = 64
    assert checkpoint.recipe_changes(cfg, 4, halved, 8) == {}  # 128 x 4 == 64 x 8
    assert checkpoint.recipe_changes(cfg, 4, halved, 4) == {
        "global batch (train.batch_size x train.accumulate x ranks)": ("128 x 1 x 4", "64 x 1 x 4")}
    # train.accumulate: micro-batches trade against the per-rank batch; another product is another recipe
    halved["train"]["accumulate"] = 2
    assert checkpoint.recipe_changes(cfg, 4, halved, 4) == {}  # 128 x 1 x 4 == 64 x 2 x 4
    doubled = json.loads(json.dumps(cfg))
    doubled["train"]["accumulate"] = 2
    assert checkpoint.recipe_changes(cfg, 4, doubled, 4) == {
        "global batch (train.batch_size x train.accumulate x ranks)": ("128 x 1 x 4", "128 x 2 x 4")}


def test_a_full_disk_while_saving_a_checkpoint_names_the_file(tmp_path, shards, capsys, monkeypatch):
    def no_space(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.torch, "save", no_space)
    assert cli.run(_argv(tmp_path, shards, "full")) == 2
    err = _error(capsys)
    assert "step-000000002.pt: cannot write it (No space left on device)" in err
    assert sorted(p.name for p in (tmp_path / "full" / "checkpoints").iterdir()) == []  # no temporary left


def test_a_broken_manifest_is_a_one_line_error(tmp_path, shards, capsys):
    broken = tmp_path / "broken_shards"
    broken.mkdir()
    (broken / "manifest.json").write_text('{"format": "adadistill-webdataset-shards", "version": 1, "num_sam')
    assert cli.run(_argv(tmp_path, shards, "manifest", f"data.shards={broken}")) == 2
    err = _error(capsys)
    assert err.startswith("python -m distill: error: ") and "manifest.json" in err


def test_a_verification_set_too_small_for_its_metric_fails_before_the_first_step(tmp_path, shards, capsys):
    from convert.synthetic import write_pairs_bin

    small = write_pairs_bin(tmp_path / "small.bin", 4, 2, 6, seed=0, workers=1)  # 6 pairs: 10 folds need 10
    assert cli.run(_argv(tmp_path, shards, "small", f"eval.targets=[{small}]")) == 2
    err = _error(capsys)
    assert "small.bin: 6 pairs: the 10-fold metric needs at least 10" in err
    assert checkpoint.latest(tmp_path / "small") is None
