"""Training on several converted sets at once (`data.shards: [a, b]`): a `.rec` set and a folder set of other
identities train together with the sum of their classes, data.weights sets the epoch's length in the plan and
the loop, and a teacher cache built over both serves a run over both (and no other layout)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import convert
import models
import pipeline
from convert.synthetic import write_synthetic
from distill import checkpoint, cli, distributed, teacher_cache, train
from distill import teacher as teachers

A_IDS, A_PER, B_IDS, B_PER = 6, 5, 4, 6          # 30 + 24 = 54 samples, 6 + 4 = 10 classes
NA, NB = A_IDS * A_PER, B_IDS * B_PER
TEACHER, STUDENT, DIM, STEPS = "iresnet_s", "mobilefacenet_s", 32, 3


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("union")
    write_synthetic(root / "rec", A_IDS, A_PER, seed=1, fmt="rec", workers=1)
    write_synthetic(root / "folder", B_IDS, B_PER, seed=2, fmt="folder", first_identity=100, workers=1)
    convert.convert_rec(root / "rec", root / "a", workers=1, progress=False)
    convert.convert_folder(root / "folder", root / "b", workers=1, progress=False)
    torch.manual_seed(1)  # a fixed, randomly initialised teacher, saved as one of our runs
    net = models.build(TEACHER, embedding_size=DIM)
    checkpoint.save(root / "teacher", {"student": net.state_dict(), "head": {}, "optimizer": {}, "scheduler": {},
                                       "scaler": {}, "step": 1, "epoch": 0, "epoch_step": 1,
                                       "rng": [checkpoint.capture_rng()],
                                       "config": {"model": {"name": TEACHER, "embedding_size": DIM}}})
    return {"root": root, "a": root / "a", "b": root / "b", "teacher": root / "teacher"}


pytestmark = pytest.mark.usefixtures("one_process")


def _argv(tmp_path: Path, data: dict, name: str, *overrides: str, mode: str = "none", cache=None) -> list[str]:
    text = {"output": str(tmp_path / name), "seed": 1, "data": {"shards": str(data["a"])},
            "model": {"name": STUDENT, "embedding_size": DIM},
            "teacher": {"spec": str(data["teacher"]) if mode == "adadistill" else None},
            "distill": {"mode": mode, "s": 16.0, "m": 0.2, "teacher_cache": str(cache) if cache else None},
            "train": {"batch_size": 8, "lr": 0.02, "lr_batch": 8, "epochs": 2, "max_steps": STEPS, "log_every": 1,
                      "checkpoint_every": 100, "precision": "fp32"}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(text))
    return ["--config", str(path), *overrides]


def _both(data: dict) -> str:
    return f"data.shards=[{data['a']},{data['b']}]"


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_a_run_over_two_sets_has_the_sum_of_their_classes(data, tmp_path, capsys):
    assert cli.run(_argv(tmp_path, data, "both", _both(data))) == 0
    saved = checkpoint.load(checkpoint.latest(tmp_path / "both"))
    assert saved["step"] == STEPS
    assert saved["head"]["centres"].shape == (A_IDS + B_IDS, DIM)
    assert saved["config"]["data"]["shards"] == [str(data["a"]), str(data["b"])]  # the run records its datasets
    out = capsys.readouterr().out
    assert f"2 dataset(s) laid end to end: {data['a'].resolve()} (keys 0..{NA - 1}, classes 0..{A_IDS - 1})" in out
    assert f"{NA + NB} samples, {A_IDS + B_IDS} classes" in out


def test_weights_set_the_epochs_length_in_the_plan_and_the_loop(data, tmp_path, capsys):
    weights = "data.weights=[1, 0.5]"                   # 30 + 12 = 42 samples an epoch: 5 steps of 8
    assert cli.run(["plan", *_argv(tmp_path, data, "plan", _both(data), weights), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["num_samples"], plan["num_classes"], plan["epoch_samples"], plan["steps_per_epoch"]) == \
        (NA + NB, A_IDS + B_IDS, NA + NB // 2, (NA + NB // 2) // 8)
    assert [(d["first_key"], d["first_class"]) for d in plan["datasets"]] == [(0, 0), (NA, A_IDS)]
    assert cli.run(["plan", *_argv(tmp_path, data, "plan", _both(data), weights)]) == 0
    assert f"epoch            {NA + NB // 2} samples (data.weights)" in capsys.readouterr().out

    pos = train.main(_argv(tmp_path, data, "weighted", _both(data), weights, "train.max_steps=0", "train.epochs=1"))
    assert (pos.step, pos.epoch) == ((NA + NB // 2) // 8, 1)


def test_a_teacher_cache_over_two_sets_serves_a_run_over_them(data, tmp_path, monkeypatch):
    both = [str(data["a"]), str(data["b"])]
    cache = tmp_path / "cache"
    online = teachers.TeacherSource(models.load_teacher(str(data["teacher"])), device=torch.device("cpu"),
                                    autocast_dtype=None, channels_last=True)
    manifest = teacher_cache.build(online, str(data["teacher"]), both, cache, ctx=distributed.setup(),
                                   device=torch.device("cpu"), batch_size=8, chunk=20, progress=False)
    assert manifest.complete and manifest.num_samples == NA + NB and manifest.shards == ", ".join(both)
    digests = [hashlib.sha256((Path(d) / "manifest.json").read_bytes()).hexdigest() for d in both]
    assert manifest.shards_sha256 == hashlib.sha256("".join(h + "\n" for h in digests).encode()).hexdigest()
    union = pipeline.ShardSamples(both)
    assert np.array_equal(np.load(cache / teacher_cache.LABELS), union.labels(np.arange(NA + NB)))
    assert np.load(cache / teacher_cache.LABELS)[NA:].min() == A_IDS  # the second set's classes follow the first's

    # The cached run's losses are the online teacher's (rounded to float16, as stored): any mix-up of the
    # union's keys would change them.
    cached = train.main(_argv(tmp_path, data, "cached", _both(data), mode="adadistill", cache=cache))
    call = teachers.TeacherSource.__call__
    monkeypatch.setattr(teachers.TeacherSource, "__call__", lambda self, batch: call(self, batch).half().float())
    live = train.main(_argv(tmp_path, data, "online", _both(data), mode="adadistill"))
    assert cached.step == live.step == STEPS
    np.testing.assert_allclose(_losses(tmp_path / "cached"), _losses(tmp_path / "online"), rtol=1e-6, atol=1e-6)

    # Another layout of the same sets is other rows: refused, naming both hashes.
    with pytest.raises(teacher_cache.TeacherCacheError, match="shards") as err:
        train.main(_argv(tmp_path, data, "swapped", f"data.shards=[{data['b']},{data['a']}]", mode="adadistill",
                         cache=cache))
    assert manifest.shards_sha256 in str(err.value) and teacher_cache.shards_sha256(both[::-1]) in str(err.value)


def test_one_set_keeps_its_manifests_own_hash(data):
    own = hashlib.sha256((data["a"] / "manifest.json").read_bytes()).hexdigest()
    assert teacher_cache.shards_sha256(data["a"]) == teacher_cache.shards_sha256([str(data["a"])]) == own
