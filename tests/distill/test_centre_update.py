"""distill.centre_update on two gloo ranks: global keeps every rank's copy of the AdaDistill centres equal
(each moves with the whole global batch); per_rank moves each rank's copy with its own samples only, as
the original code does, so that the copies drift apart."""
from __future__ import annotations

import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import configs
import distill
from distill.class_shard import shard_for_run

C, D, B, STEPS = 7, 8, 6, 5


def _batch(step: int):
    """Step `step`'s global batch of 2 x B samples: student and teacher embeddings, labels (duplicates)."""
    g = torch.Generator().manual_seed(500 + step)
    x = torch.randn(2 * B, D, generator=g)
    return x, x + 0.3 * torch.randn(2 * B, D, generator=g), torch.randint(0, C, (2 * B,), generator=g)


def _run(head, part: slice):
    for step in range(STEPS):
        x, t, labels = _batch(step)
        head(x[part], labels[part], t[part], global_labels=labels.numpy())  # the host's copy, as the loader's


def _rank_main(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        out = {}
        for mode in ("global", "per_rank"):
            torch.manual_seed(0)
            head = distill.build_head("arcface", C, D, kd="adadistill", s=16.0, centre_update=mode)
            _run(head, slice(rank * B, (rank + 1) * B))
            out[mode] = head.centres.clone()
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _alone(part: slice) -> torch.Tensor:
    """One process, no process group, that sees only `part` of every global batch."""
    torch.manual_seed(0)
    head = distill.build_head("arcface", C, D, kd="adadistill", s=16.0)
    for step in range(STEPS):
        x, t, labels = _batch(step)
        head(x[part], labels[part], t[part], global_labels=labels[part].numpy())  # its own batch is its global one
    return head.centres


def test_global_copies_stay_equal_and_per_rank_copies_follow_their_own_samples(tmp_path):
    mp.spawn(_rank_main, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(r0["global"], r1["global"])
    assert torch.equal(r0["global"], _alone(slice(0, 2 * B)))  # the whole global batch, as one process
    for rank, got in enumerate((r0, r1)):
        torch.testing.assert_close(got["per_rank"], _alone(slice(rank * B, (rank + 1) * B)), rtol=0, atol=0)
    assert (r0["per_rank"] - r1["per_rank"]).abs().max() > 1e-3  # the copies drifted apart


def test_per_rank_never_shards_the_centres():
    cfg = configs.RunConfig(output="o", data=configs.DataConfig(shards="s"), teacher=configs.TeacherConfig(spec="t"),
                            distill=configs.DistillConfig(centre_update="per_rank"))
    assert shard_for_run(cfg.distill, 2_000_000, 0, 8) is None  # auto would shard 2M classes on 8 ranks
    with pytest.raises(configs.ConfigError, match="distill.centre_update"):
        configs.DistillConfig(centre_update="per_rank", shard_classes=True)
