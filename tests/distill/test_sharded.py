"""Class centres sharded across ranks (distill.shard_classes): on two gloo ranks the sharded head gives the
replicated head's losses, student gradients, centre gradients and state, step after step; the shard
bounds; Partial FC sampling; the errors a user can cause."""
from __future__ import annotations

import datetime
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import configs
import distill
from distill.class_shard import ClassShard, bounds, shard_for_run
from distill.heads import init_centres

C, D, B, STEPS = 11, 8, 6, 4  # 11 classes over 2 ranks: 5 and 6 rows (an uneven split)
CASES = {
    "arcface_adadistill": dict(loss="arcface", kd="adadistill", s=32.0),
    "cosface_adadistill": dict(loss="cosface", kd="adadistill", s=32.0, alpha="plain"),
    "adaface_geom": dict(loss="adaface", kd="adadistill", s=32.0, geom={"w": 1.0, "k": 3.0, "warmup_epochs": 1.0}),
    "arcface_none": dict(loss="arcface", kd="none", s=32.0),
    "adaface_none": dict(loss="adaface", kd="none", s=32.0),
}


def _batch(step: int, rank: int):
    """Rank `rank`'s part of step `step`'s global batch (labels with duplicates, across both shards)."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(2 * B, D, generator=g) * 3
    teacher = x + 0.5 * torch.randn(2 * B, D, generator=g)
    labels = torch.randint(0, C, (2 * B,), generator=g)
    part = slice(rank * B, (rank + 1) * B)
    return x[part], teacher[part], labels[part], labels.numpy()


def _heads(case: dict, shard: ClassShard):
    options = {k: v for k, v in case.items() if k not in ("loss", "kd")}
    torch.manual_seed(0)
    replicated = distill.build_head(case["loss"], C, D, kd=case["kd"], **options)
    torch.manual_seed(0)
    sharded = distill.build_head(case["loss"], C, D, kd=case["kd"], shard=shard, **options)
    torch.manual_seed(5)
    student = torch.nn.Linear(D, D)
    return replicated, sharded, student, [torch.nn.Linear(D, D) for _ in range(2)]


def _average(grads):
    """DDP's average of a gradient over the ranks."""
    out = [g.clone() for g in grads]
    for g in out:
        dist.all_reduce(g)
        g /= dist.get_world_size()
    return out


def _case_steps(name: str, case: dict, rank: int) -> dict:
    shard = ClassShard(rank, 2, C)
    replicated, sharded, student, (s_rep, s_sh) = _heads(case, shard)
    s_rep.load_state_dict(student.state_dict())
    s_sh.load_state_dict(student.state_dict())
    out = {"loss": [], "student_grad": [], "student_grad_avg": [], "centres_grad": [], "centres": [], "stats": []}
    for step in range(STEPS):
        x, teacher, labels, host = _batch(step, rank)
        losses, grads, stats_pair = [], [], []
        for net, head in ((s_rep, replicated), (s_sh, sharded)):
            net.zero_grad(set_to_none=True)
            head.zero_grad(set_to_none=True)
            emb = net(x)
            loss, stats = head(emb, labels, teacher, epoch_progress=0.3 * step, global_labels=host)
            loss.backward()
            losses.append(loss.detach())
            grads.append([p.grad for p in net.parameters()])
            stats_pair.append({k: float(v) for k, v in stats.items() if torch.is_tensor(v)})
        out["stats"] += [stats_pair[1], stats_pair[0]]  # sharded, replicated
        out["loss"].append(torch.stack(losses))
        out["student_grad"].append([(a, b) for a, b in zip(*grads)])
        avg = [_average(g) for g in grads]
        out["student_grad_avg"].append(list(zip(*avg)))
        if case["kd"] == "none":  # the replicated centres' gradient is DDP-averaged, the sharded rows' is not
            full = _average([replicated.centres.grad])[0]
            out["centres_grad"].append((full[shard.start:shard.stop], sharded.centres.grad.clone()))
        with torch.no_grad():  # one SGD step on both, so that the next step starts from moved weights
            for net, g in ((s_rep, avg[0]), (s_sh, avg[1])):
                for p, gp in zip(net.parameters(), g):
                    p -= 0.5 * gp
            if case["kd"] == "none":
                replicated.centres -= 0.5 * full
                sharded.centres -= 0.5 * sharded.centres.grad
        out["centres"].append((replicated.centres.detach()[shard.start:shard.stop].clone(),
                               sharded.centres.detach().clone()))
        for key in ("batch_mean", "batch_std"):
            if hasattr(replicated, key):
                out.setdefault(key, []).append((getattr(replicated, key).clone(), getattr(sharded, key).clone()))
    return out


def _rank_main(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=120))
    try:
        results = {name: _case_steps(name, case, rank) for name, case in CASES.items()}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded")
    mp.spawn(_rank_main, args=(str(out / "init"), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_gloo_ranks_sharded_equals_replicated(two_ranks, case):
    for rank, results in enumerate(two_ranks):
        r = results[case]
        for step, pair in enumerate(r["loss"]):
            torch.testing.assert_close(pair[1], pair[0], rtol=0, atol=1e-4,
                                       msg=f"{case} rank {rank} step {step}: loss sharded vs replicated")
        for step, grads in enumerate(r["student_grad"] + r["student_grad_avg"]):
            for rep, sh in grads:
                torch.testing.assert_close(sh, rep, rtol=0, atol=1e-5, msg=f"{case} rank {rank}: student gradient")
        # relative: the first step's centre gradients are ~100 (rows of norm ~0.03 are normalised)
        for rep, sh in r["centres_grad"]:
            torch.testing.assert_close(sh, rep, rtol=1e-5, atol=1e-5, msg=f"{case} rank {rank}: centres gradient")
        for step, (rep, sh) in enumerate(r["centres"]):
            torch.testing.assert_close(sh, rep, rtol=1e-5, atol=1e-5, msg=f"{case} rank {rank} step {step}: centres")
        for key in ("batch_mean", "batch_std"):
            for rep, sh in r.get(key, []):
                torch.testing.assert_close(sh, rep, rtol=1e-6, atol=1e-5, msg=f"{case}: {key}")
        stats = r["stats"]
        for sh, rep in zip(stats[::2], stats[1::2]):
            assert sh.keys() == rep.keys()
            for key in sh:
                assert sh[key] == pytest.approx(rep[key], abs=1e-5), f"{case} rank {rank}: stat {key}"
    if CASES[case]["kd"] == "adadistill":  # the centres moved (else the comparison above proves little)
        first = two_ranks[0][case]["centres"]
        assert not torch.allclose(first[0][1], first[-1][1])


def test_shard_bounds_cover_every_class_once():
    for classes, world in ((11, 2), (10, 3), (7, 7), (2_059_906, 64)):
        spans = [bounds(classes, world, r) for r in range(world)]
        assert spans[0][0] == 0 and spans[-1][1] == classes
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert max(b - a for a, b in spans) - min(b - a for a, b in spans) <= 1


def test_sharded_rows_start_as_the_replicated_rows():
    full = init_centres(0, 10_000, 4, seed=7)
    torch.testing.assert_close(init_centres(3_000, 9_001, 4, seed=7), full[3_000:9_001], rtol=0, atol=0)
    assert 0.009 < full.std() < 0.011


def _config(**distill_keys):
    return configs.RunConfig(output="o", data=configs.DataConfig(shards="s"),
                             distill=configs.DistillConfig(mode="none", **distill_keys))


def test_auto_shards_large_class_counts_on_several_ranks_only():
    d = _config().distill
    assert shard_for_run(d, 85_742, 0, 8) is None
    assert shard_for_run(d, 2_000_000, 0, 1) is None
    assert shard_for_run(d, 2_000_000, 3, 8) == ClassShard(3, 8, 2_000_000)
    assert shard_for_run(_config(sample_rate=0.1).distill, 1000, 0, 1) == ClassShard(0, 1, 1000)
    assert shard_for_run(_config(shard_classes=False).distill, 2_000_000, 0, 8) is None


def test_user_errors_name_the_config_key():
    with pytest.raises(configs.ConfigError, match="distill.shard_classes"):
        shard_for_run(_config(shard_classes=True).distill, 3, 0, 4)  # fewer classes than ranks
    with pytest.raises(configs.ConfigError, match=r"distill.sample_rate.*\(0, 1\]"):
        _config(sample_rate=0.0)
    with pytest.raises(configs.ConfigError, match=r"distill.sample_rate.*\(0, 1\]"):
        _config(sample_rate=1.5)
    with pytest.raises(configs.ConfigError, match="distill.sample_rate.*mode"):
        configs.RunConfig(output="o", data=configs.DataConfig(shards="s"), teacher=configs.TeacherConfig(spec="t"),
                          distill=configs.DistillConfig(mode="adadistill", sample_rate=0.5))
    with pytest.raises(configs.ConfigError, match="distill.sample_rate.*shard_classes"):
        _config(sample_rate=0.5, shard_classes=False)
    # per_rank holds every centre on every rank (shard_classes auto then shards nothing): nothing to sample among
    with pytest.raises(configs.ConfigError, match="distill.sample_rate.*per_rank"):
        _config(sample_rate=0.5, centre_update="per_rank")
    with pytest.raises(configs.ConfigError, match="distill.shard_classes"):
        _config(shard_classes="yes")


def test_partial_fc_keeps_the_batch_classes_and_samples_the_rest(one_process):
    classes, rate = 40, 0.25
    torch.manual_seed(0)
    head = distill.build_head("cosface", classes, D, kd="none", shard=ClassShard(0, 1, classes), sample_rate=rate,
                              s=16.0)
    labels = torch.tensor([3, 3, 17, 39, 0])
    emb = torch.randn(5, D, requires_grad=True)
    out, _ = head.logits(emb, labels, global_labels=labels.numpy())
    assert out.logits.shape == (5, int(rate * classes))
    # the sampled columns hold every positive class; the loss is the softmax over the sampled columns
    loss = out.cross_entropy()
    loss.backward()
    touched = torch.nonzero(head.centres.grad.abs().sum(1)).squeeze(1)
    assert set(labels.tolist()) <= set(touched.tolist()) and len(touched) == int(rate * classes)
    picked = head.centres.detach()[touched]
    cos = F.normalize(emb.detach(), dim=1) @ F.normalize(picked, dim=1).t()
    target = torch.searchsorted(touched, labels)
    expected = F.cross_entropy(head.margin.logits(cos, target), target)
    torch.testing.assert_close(loss.detach(), expected)
    head.eval()  # evaluation: every class, no sampling
    full, _ = head.logits(emb.detach(), labels, global_labels=labels.numpy())
    assert full.logits.shape == (5, classes)


def test_one_rank_shard_equals_the_replicated_head(one_process):
    """A one-rank shard (sample_rate 1) is the replicated head: the sharded path's arithmetic, no collectives."""
    for case in CASES.values():
        options = {k: v for k, v in case.items() if k not in ("loss", "kd")}
        torch.manual_seed(0)
        rep = distill.build_head(case["loss"], C, D, kd=case["kd"], **options)
        torch.manual_seed(0)
        sh = distill.build_head(case["loss"], C, D, kd=case["kd"], shard=ClassShard(0, 1, C), **options)
        x, teacher, labels, host = _batch(0, 0)
        labels = torch.from_numpy(host[:B]).clone()
        a, _ = rep.logits(x, labels, teacher, global_labels=np.asarray(labels))
        b, _ = sh.logits(x, labels, teacher, global_labels=np.asarray(labels))
        torch.testing.assert_close(b.cross_entropy(), F.cross_entropy(a.logits, labels), rtol=0, atol=1e-5)
        torch.testing.assert_close(sh.centres, rep.centres, rtol=0, atol=1e-6)
