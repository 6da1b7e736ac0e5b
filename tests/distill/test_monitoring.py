"""Watching a run: rank 0's TensorBoard events (every logged scalar and each evaluation, off with
train.tensorboard=false, each step once after a kill and resume) and `python -m distill plot`'s PNG."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from convert.synthetic import write_pairs_bin
from distill import checkpoint, cli
from distill.metrics import TRAIN_SCALARS

STUDENT, DIM = "mobilefacenet_s", 32
STEPS_PER_EPOCH = 4  # 8 identities x 8 images, a batch of 16
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(shards, tmp_path_factory) -> tuple[Path, Path]:
    """Tiny shards (conftest's), and a verification set of held-out identities (100 pairs: every fold of 10 gets both kinds)."""
    root = tmp_path_factory.mktemp("monitoring")
    pairs = write_pairs_bin(root / "heldout.bin", 4, 4, 100, seed=0, first_identity=100, workers=1)
    return shards, Path(pairs)


pytestmark = pytest.mark.usefixtures("one_process")


def _argv(tmp_path: Path, data: tuple[Path, Path], name: str, *overrides: str) -> list[str]:
    shards, pairs = data
    text = {"output": str(tmp_path / name), "seed": 1, "data": {"shards": str(shards)},
            "model": {"name": STUDENT, "embedding_size": DIM}, "distill": {"mode": "none", "s": 16.0, "m": 0.2},
            "train": {"batch_size": 16, "lr": 0.05, "lr_batch": 16, "epochs": 2, "max_steps": STEPS_PER_EPOCH,
                      "log_every": 1, "checkpoint_every": 2, "precision": "fp32"},
            "eval": {"targets": [str(pairs)], "batch_size": 16}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(text))  # JSON is YAML
    return ["--config", str(path), *overrides]


def _events(run: Path) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard shows: tag -> [(step, value)], after its purge of a resumed run's earlier attempt."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})  # 0: keep every point
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_holds_every_logged_scalar_and_each_evaluation(tmp_path, data):
    assert cli.run(_argv(tmp_path, data, "run")) == 0
    run = tmp_path / "run"
    events = _events(run)
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in _records(run):
        if record.get("event") == "verification":
            expected.setdefault("eval/heldout/accuracy", []).append((record["step"], record["accuracy"]))
        elif "event" not in record:
            for name in TRAIN_SCALARS:
                if record[name] is not None:
                    expected.setdefault(f"train/{name}", []).append((record["step"], record[name]))
    assert {"train/loss", "train/lr", "train/images_per_s", "train/grad_norm", "eval/heldout/accuracy"} <= set(expected)
    assert set(events) == set(expected)
    for tag, points in expected.items():
        assert [step for step, _ in events[tag]] == [step for step, _ in points], tag
        assert [value for _, value in events[tag]] == pytest.approx([value for _, value in points], rel=1e-6), tag
    assert [step for step, _ in events["train/loss"]] == list(range(1, STEPS_PER_EPOCH + 1))
    assert [step for step, _ in events["eval/heldout/accuracy"]] == [STEPS_PER_EPOCH]  # after the first epoch


def test_tensorboard_off_writes_no_events(tmp_path, data):
    assert cli.run(_argv(tmp_path, data, "off", "train.tensorboard=false", "eval.targets=[]")) == 0
    assert not (tmp_path / "off" / "tensorboard").exists()
    assert [r["step"] for r in _records(tmp_path / "off")] == list(range(1, STEPS_PER_EPOCH + 1))


def test_a_resumed_run_shows_each_step_once(tmp_path, data):
    run = tmp_path / "resumed"
    assert cli.run(_argv(tmp_path, data, "resumed")) == 0
    # As if killed after step 4 was logged but before its checkpoint was written: the newest is step 2's,
    # so the resumed attempt logs steps 3 and 4 (and the evaluation at 4) a second time.
    folder = checkpoint.directory(run)
    (folder / checkpoint.file_name(4)).unlink()
    (folder / "latest").write_text(checkpoint.file_name(2) + "\n")
    assert checkpoint.load(checkpoint.latest(run))["step"] == 2
    assert cli.run(_argv(tmp_path, data, "resumed", "train.max_steps=6")) == 0

    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one file per attempt
    events = _events(run)
    for tag, points in events.items():
        steps = [step for step, _ in points]
        assert len(steps) == len(set(steps)), f"{tag}: steps shown more than once: {steps}"
        expected = [STEPS_PER_EPOCH] if tag.startswith("eval/") else list(range(1, 7))
        assert steps == expected, tag
    # The points after the checkpoint are the resumed attempt's, as in metrics.jsonl.
    losses = {r["step"]: r["loss"] for r in _records(run) if "loss" in r}
    assert [value for _, value in events["train/loss"]] == pytest.approx([losses[s] for s in range(1, 7)], rel=1e-6)


def _fake_run(folder: Path, *, scale: float, torn: bool = False) -> Path:
    folder.mkdir(parents=True)
    records = [{"step": s, "epoch": s / 10, "loss": scale * (20 - s) / 20, "lr": 0.1 if s < 6 else 0.01,
                "images_per_s": 100.0, "data_wait": 0.0, "grad_norm": 1.0, "cos_st": None, "alpha": None,
                "margin_scaler": None, "skipped": 0} for s in range(1, 11)]
    records.insert(5, {"event": "verification", "step": 5, "epoch": 1, "target": "/x/lfw.bin", "accuracy": 0.6,
                       "accuracy_std": 0.01, "xnorm": 20.0, "pairs": 100})
    records.append({"event": "verification", "step": 10, "epoch": 2, "target": "/x/lfw.bin", "accuracy": 0.7,
                    "accuracy_std": 0.01, "xnorm": 20.0, "pairs": 100})
    text = "".join(json.dumps(r) + "\n" for r in records) + ('{"step": 11, "lo' if torn else "")
    (folder / "metrics.jsonl").write_text(text)
    return folder


def test_plot_draws_two_runs_into_a_png(tmp_path):
    first = _fake_run(tmp_path / "runs" / "teacher", scale=1.0)
    second = _fake_run(tmp_path / "runs" / "student", scale=2.0, torn=True)  # a kill's torn last line
    out = tmp_path / "plots" / "curves.png"
    done = subprocess.run([sys.executable, "-m", "distill", "plot", str(first), str(second), "--output", str(out),
                           "--names", "T", "S"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000
    assert sorted(p.name for p in out.parent.iterdir()) == ["curves.png"]  # no temporary file left
    assert "line 13 of 13 is not a JSON record" in done.stderr  # the torn line: a warning, not a failure


def test_plot_fails_with_one_line_on_a_folder_without_metrics(tmp_path, capsys):
    run = _fake_run(tmp_path / "good", scale=1.0)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "curves.png"
    assert cli.run(["plot", str(run), str(empty), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("python -m distill plot: error: ") and str(empty) in err and "metrics.jsonl" in err

    (empty / "metrics.jsonl").write_text(json.dumps({"event": "resume_changes", "step": 3, "changes": {}}) + "\n")
    assert cli.run(["plot", str(empty), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(empty) in err and "nothing to draw" in err
    assert not out.exists()
