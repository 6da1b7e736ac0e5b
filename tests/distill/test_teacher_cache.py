"""The teacher embedding cache: built through the CLI on tiny synthetic shards, its rows are the teacher's
outputs for both views of every sample; training from it gives the online teacher's losses; a cache of
other shards or another teacher, extra augmentations and an unfinished cache are refused; an interrupted
build resumes without redoing finished chunks."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

import configs
import convert
import models
import pipeline
from convert.synthetic import write_synthetic
from distill import checkpoint, cli, distributed, teacher_cache, train
from distill import teacher as teachers

IDENTITIES, PER_IDENTITY = 6, 8           # 48 images: 6 steps of 8, every sample in an epoch
TEACHER, STUDENT, DIM = "iresnet_s", "mobilefacenet_s", 32
CHUNK, STEPS = 20, 3                      # 3 chunks (20, 20, 8): the last one is partial


def _teacher_run(root: Path, seed: int) -> Path:
    """One of our run directories holding a randomly initialised iresnet_s: any fixed network will do."""
    torch.manual_seed(seed)
    net = models.build(TEACHER, embedding_size=DIM)
    checkpoint.save(root, {"student": net.state_dict(), "head": {}, "optimizer": {}, "scheduler": {}, "scaler": {},
                           "step": 1, "epoch": 0, "epoch_step": 1, "rng": [checkpoint.capture_rng()],
                           "config": {"model": {"name": TEACHER, "embedding_size": DIM}}})
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cache")
    write_synthetic(root / "rec", IDENTITIES, PER_IDENTITY, seed=0, workers=1)
    convert.convert_rec(root / "rec", root / "shards", workers=1, progress=False)
    teacher = _teacher_run(root / "teacher", seed=1)
    argv = ["cache-teacher", "--teacher", str(teacher), "--shards", str(root / "shards"), "--out",
            str(root / "tc"), "--batch-size", "8", "--chunk", str(CHUNK), "--no-progress"]
    assert cli.run(argv) == 0
    return {"root": root, "shards": root / "shards", "teacher": teacher, "cache": root / "tc"}


def _online(spec) -> teachers.TeacherSource:
    """The teacher as `python -m distill cache-teacher` runs it on the CPU: fp32, channels_last."""
    return teachers.TeacherSource(models.load_teacher(str(spec)), device=torch.device("cpu"), autocast_dtype=None,
                                  channels_last=True)


def _config(tmp_path: Path, data: dict, name: str, *, cache: bool, **distill_keys) -> list[str]:
    text = {
        "output": str(tmp_path / name), "seed": 3,
        "data": {"shards": str(data["shards"]), "backend": "auto"},
        "model": {"name": STUDENT, "embedding_size": DIM},
        "teacher": {"spec": str(data["teacher"])},
        "distill": {"mode": "adadistill", "loss": "arcface", "s": 16.0, "m": 0.2,
                    "teacher_cache": str(data["cache"]) if cache else None, **distill_keys},
        "train": {"batch_size": 8, "lr": 0.02, "lr_batch": 8, "epochs": 2, "max_steps": STEPS, "log_every": 1,
                  "checkpoint_every": 100, "precision": "fp32"},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(text))
    return ["--config", str(path)]


def _losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def test_entries_are_the_teachers_outputs_for_both_views(data):
    manifest = teacher_cache.CacheManifest.load(data["cache"])
    assert manifest.complete and manifest.done == ((0, IDENTITIES * PER_IDENTITY),)
    assert manifest.shape == (IDENTITIES * PER_IDENTITY, 2, DIM)
    emb = teacher_cache.open_embeddings(data["cache"], manifest)
    net = models.load_teacher(str(data["teacher"]))
    # The training loader's own batches: the cache must hold what the online teacher would compute.
    loader = pipeline.build_loader(data["shards"], 8, device="cpu", seed=5, with_flip=True)
    seen, mirrored = set(), 0
    with torch.no_grad():
        for batch in loader:
            shown, other = net(batch.images), net(batch.images.flip(3))
            idx, flip = batch.index.numpy(), batch.flipped.numpy().astype(int)
            cached_shown = torch.from_numpy(emb[idx, flip].astype(np.float32))
            cached_other = torch.from_numpy(emb[idx, 1 - flip].astype(np.float32))
            torch.testing.assert_close(cached_shown, shown, rtol=2e-3, atol=2e-3)  # float16 rounding
            torch.testing.assert_close(cached_other, other, rtol=2e-3, atol=2e-3)
            assert not torch.allclose(shown, other, atol=1e-2)  # the views differ, so the test can fail
            seen.update(idx.tolist())
            mirrored += int(flip.sum())
    assert len(seen) == IDENTITIES * PER_IDENTITY and 0 < mirrored < len(seen)
    labels = np.load(data["cache"] / teacher_cache.LABELS)
    assert np.array_equal(np.sort(np.bincount(labels)), np.full(IDENTITIES, PER_IDENTITY))


def test_steps_with_the_cache_give_the_online_teachers_losses(data, tmp_path, monkeypatch):
    """The online teacher's embeddings rounded to float16 (what the cache stores) must give the cached run's
    losses exactly: any mix-up of samples or views would change them. Unrounded, the runs agree to ~1e-5 at
    the first step, and then drift apart as training amplifies the rounding (measured: ~2e-3 by step 3)."""
    cached = train.main(_config(tmp_path, data, "cached", cache=True))
    online_call = teachers.TeacherSource.__call__
    monkeypatch.setattr(teachers.TeacherSource, "__call__", lambda self, batch: online_call(self, batch).half().float())
    online = train.main(_config(tmp_path, data, "online", cache=False))
    assert online.step == cached.step == STEPS
    a, b = _losses(tmp_path / "online"), _losses(tmp_path / "cached")
    assert len(a) == len(b) == STEPS
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
    assert len(set(np.round(a, 4))) == STEPS  # the steps differ from each other


def test_cache_is_built_at_the_online_teachers_precision_and_says_so(data, tmp_path, capsys):
    """`--precision auto` follows train.precision's rule (fp32 on this CPU); bf16 is recorded, its rows are the
    bf16-autocast teacher's, and a run whose online teacher would run at another precision is told so."""
    assert teacher_cache.CacheManifest.load(data["cache"]).precision == "fp32"
    argv = ["cache-teacher", "--teacher", str(data["teacher"]), "--shards", str(data["shards"]), "--out",
            str(tmp_path / "bf16"), "--batch-size", "8", "--no-progress", "--precision", "bf16"]
    assert cli.run(argv) == 0
    manifest = teacher_cache.CacheManifest.load(tmp_path / "bf16")
    assert manifest.precision == "bf16" and manifest.complete
    fp32 = teacher_cache.open_embeddings(data["cache"], manifest).astype(np.float32)
    bf16 = teacher_cache.open_embeddings(tmp_path / "bf16", manifest).astype(np.float32)
    assert not np.array_equal(fp32, bf16)
    cos = (fp32 * bf16).sum(-1) / np.linalg.norm(fp32, axis=-1) / np.linalg.norm(bf16, axis=-1)
    assert cos.min() > 0.99  # the same teacher, rounded differently
    argv[argv.index(str(tmp_path / "bf16"))] = str(data["cache"])
    assert cli.run(argv) == 2  # an fp32 cache is not finished at bf16
    assert "precision='fp32'" in capsys.readouterr().err

    capsys.readouterr()
    train.main(_config(tmp_path, data, "note", cache=True))
    assert "built with the teacher at fp32, as the online teacher would run here" in capsys.readouterr().out
    config = _config(tmp_path, data, "bf16_note", cache=True)
    assert train.main(config + [f"distill.teacher_cache={tmp_path / 'bf16'}"]).step == STEPS
    assert "the online teacher would run at fp32 here" in capsys.readouterr().out


def test_other_teacher_or_shards_refused_naming_both_hashes(data, tmp_path, capsys):
    other = _teacher_run(tmp_path / "other_teacher", seed=2)
    argv = _config(tmp_path, {**data, "teacher": other}, "other", cache=True)
    with pytest.raises(teacher_cache.TeacherCacheError) as err:
        train.main(argv)
    want = teacher_cache.CacheManifest.load(data["cache"]).teacher_sha256
    found = teacher_cache.weights_sha256(models.load_teacher(str(other)))
    assert want in str(err.value) and found in str(err.value) and want != found

    reshuffled = tmp_path / "reshuffled"  # the same images in another order: every cached row is wrong
    convert.convert_rec(data["root"] / "rec", reshuffled, workers=1, progress=False, seed=7)
    with pytest.raises(teacher_cache.TeacherCacheError, match="shards") as err:
        train.main(_config(tmp_path, {**data, "shards": reshuffled}, "reshuffled", cache=True))
    assert teacher_cache.shards_sha256(reshuffled) in str(err.value)
    assert teacher_cache.shards_sha256(data["shards"]) in str(err.value)
    assert cli.run(_config(tmp_path, {**data, "teacher": other}, "other_cli", cache=True)) == 2
    assert "weights sha256" in capsys.readouterr().err


def test_augmentation_besides_the_flip_refused(data, tmp_path):
    argv = _config(tmp_path, data, "augmented", cache=True) + ["data.augment.low_res=0.2"]
    with pytest.raises(configs.ConfigError, match="low_res"):  # a rule of the config, refused when it is loaded
        train.main(argv)


def test_interrupted_build_resumes_and_unfinished_cache_is_refused(data, tmp_path, monkeypatch):
    out = tmp_path / "partial"
    ctx = distributed.setup()
    kwargs = dict(batch_size=8, chunk=CHUNK, device=torch.device("cpu"), ctx=ctx, progress=False)
    teacher_cache.build(_online(data["teacher"]), str(data["teacher"]), data["shards"], out, stop_after=1, **kwargs)
    assert not teacher_cache.CacheManifest.load(out).complete
    with pytest.raises(teacher_cache.TeacherCacheError, match="incomplete"):
        train.main(_config(tmp_path, {**data, "cache": out}, "early", cache=True))

    calls = []
    embed = teacher_cache._embed
    monkeypatch.setattr(teacher_cache, "_embed", lambda *a: calls.append(a[2][0]) or embed(*a))
    manifest = teacher_cache.build(_online(data["teacher"]), str(data["teacher"]), data["shards"], out, **kwargs)
    assert calls == [CHUNK, 2 * CHUNK]  # the finished first chunk is not redone
    assert manifest.complete and not list(out.glob("progress-*"))
    # Equal up to float16 rounding: the two ranks run the teacher on other batch compositions, and
    # with several threads a conv's float32 sums can differ in the last bit, which float16 may round apart.
    np.testing.assert_allclose(np.load(out / teacher_cache.EMBEDDINGS).astype(np.float32),
                               np.load(data["cache"] / teacher_cache.EMBEDDINGS).astype(np.float32),
                               rtol=4e-3, atol=1e-2)

    other = _teacher_run(tmp_path / "other_teacher", seed=2)  # finishing with another teacher is refused
    with pytest.raises(teacher_cache.TeacherCacheError, match="teacher_sha256"):
        teacher_cache.build(_online(other), str(other), data["shards"], out, **kwargs)


def test_centres_start_at_the_plain_views_class_means(data):
    manifest = teacher_cache.CacheManifest.load(data["cache"])
    means = teacher_cache.plain_class_means(data["cache"], manifest, IDENTITIES + 1)
    emb = torch.from_numpy(np.load(data["cache"] / teacher_cache.EMBEDDINGS)[:, 0].astype(np.float32))
    labels = torch.from_numpy(np.load(data["cache"] / teacher_cache.LABELS))
    for c in range(IDENTITIES):
        torch.testing.assert_close(means[c], F.normalize(emb[labels == c], dim=1).mean(0))
    assert torch.equal(means[IDENTITIES], torch.zeros(DIM))  # a class without samples
    argv = _config(Path(data["root"]), data, "centres", cache=True, centres_from_cache=True)
    ctx = distributed.setup()
    run = train.build_run(train.configs.load(argv[1]), ctx, num_classes=IDENTITIES + 1, steps_per_epoch=1)
    assert torch.equal(run.head_module.centres, means)  # the loop's head, from the config


def _rank(rank: int, port: int, argv: list) -> None:
    """One rank as torchrun would start it (environment variables), building the cache."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cli.cache_teacher(argv)


def test_two_ranks_build_the_same_cache(data, tmp_path):
    out = tmp_path / "two_ranks"
    argv = ["--teacher", str(data["teacher"]), "--shards", str(data["shards"]), "--out", str(out),
            "--batch-size", "8", "--chunk", str(CHUNK), "--device", "cpu", "--no-progress"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(port, argv), nprocs=2, join=True, start_method="spawn")
    manifest = teacher_cache.CacheManifest.load(out)
    assert manifest.complete and not list(out.glob("progress-*"))
    # Equal up to float16 rounding: the two ranks run the teacher on other batch compositions, and
    # with several threads a conv's float32 sums can differ in the last bit, which float16 may round apart.
    np.testing.assert_allclose(np.load(out / teacher_cache.EMBEDDINGS).astype(np.float32),
                               np.load(data["cache"] / teacher_cache.EMBEDDINGS).astype(np.float32),
                               rtol=4e-3, atol=1e-2)
    assert np.array_equal(np.load(out / teacher_cache.LABELS), np.load(data["cache"] / teacher_cache.LABELS))


def _centres_rank(rank: int, port: int, argv: list, out: str) -> None:
    """One rank of a sharded head (distill.shard_classes: true) starting its centres from the cache."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ctx = distributed.setup()
    try:
        run = train.build_run(train.configs.load(argv[1]), ctx, num_classes=IDENTITIES + 1, steps_per_epoch=1)
        torch.save(run.head_module.centres.detach().clone(), os.path.join(out, f"rank-{rank}.pt"))
    finally:
        distributed.teardown(ctx)


def test_sharded_centres_start_at_their_own_rows_of_the_class_means(data, tmp_path):
    manifest = teacher_cache.CacheManifest.load(data["cache"])
    means = teacher_cache.plain_class_means(data["cache"], manifest, IDENTITIES + 1)
    argv = _config(tmp_path, data, "sharded_centres", cache=True, centres_from_cache=True, shard_classes=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_centres_rank, args=(port, argv, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    rows = [torch.load(tmp_path / f"rank-{r}.pt", weights_only=True) for r in range(2)]
    assert [len(r) for r in rows] == [3, 4]  # 7 classes over 2 ranks: [0, 3) and [3, 7)
    assert torch.equal(torch.cat(rows), means)


def test_a_manifest_without_precision_is_refused_saying_to_build_again(data, tmp_path):
    """A cache built before the precision was recorded: one error naming its manifest, no fp32 assumed."""
    import shutil

    old = tmp_path / "tc"
    shutil.copytree(data["cache"], old)
    raw = json.loads((old / "manifest.json").read_text())
    del raw["precision"]
    (old / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(teacher_cache.TeacherCacheError, match=rf"^{old / 'manifest.json'}: records no precision .*"
                                                              r"`python -m distill cache-teacher`$"):
        teacher_cache.CacheManifest.load(old)
