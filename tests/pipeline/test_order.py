"""The epoch plan alone (no images): partition, tail, determinism, and the draws both backends share."""
import numpy as np
import pytest

from pipeline.augment import Augment
from pipeline.order import BatchSizeError, plan_epoch


def test_ranks_partition_all_but_the_tail():
    plans = [plan_epoch(10007, 64, seed=1, epoch=3, rank=r, world_size=3) for r in range(3)]
    assert {p.steps for p in plans} == {10007 // (64 * 3)}
    used = np.concatenate([p.samples.ravel() for p in plans])
    assert len(np.unique(used)) == len(used) == 52 * 64 * 3
    assert used.min() >= 0 and used.max() < 10007


def test_order_depends_on_seed_and_epoch_only():
    a = plan_epoch(1000, 10, seed=1, epoch=2, rank=0, world_size=1).samples
    assert np.array_equal(a, plan_epoch(1000, 10, seed=1, epoch=2, rank=0, world_size=1).samples)
    assert not np.array_equal(a, plan_epoch(1000, 10, seed=1, epoch=3, rank=0, world_size=1).samples)
    assert not np.array_equal(a, plan_epoch(1000, 10, seed=2, epoch=2, rank=0, world_size=1).samples)
    # Two ranks of batch 5 cover exactly the single-process batches of 10, step by step.
    halves = [plan_epoch(1000, 5, seed=1, epoch=2, rank=r, world_size=2).samples for r in range(2)]
    assert np.array_equal(np.concatenate(halves, axis=1), a)


def test_draws_are_reproducible_and_fair():
    plan = plan_epoch(4096, 512, seed=0, epoch=0, rank=0, world_size=1)
    flips, params = plan.draws(3, Augment(), 112)
    assert params is None and 0.4 < flips.mean() < 0.6
    again, _ = plan.draws(3, Augment(crop=0.2), 112)
    assert np.array_equal(flips, again)  # turning augmentation on does not change the flips
    _, p = plan.draws(3, Augment(crop=1.0, low_res=0.0, photometric=1.0), 112)
    assert (p.roi_start >= 0).all() and (p.roi_end <= 1).all() and (p.roi_end > p.roi_start).all()
    assert (p.low_res_side == 112).all() and not (p.brightness == 1).all()


def test_batch_larger_than_the_epoch():
    with pytest.raises(BatchSizeError, match="2 x world_size 4 = 8 samples a step, but the epoch holds only 7"):
        plan_epoch(7, 2, seed=0, epoch=0, rank=0, world_size=4)


@pytest.mark.parametrize("world_size", [2, 4])
def test_draws_follow_the_global_position_not_the_rank(world_size):
    """W ranks x B/W draw the flips and augmentation parameters 1 rank x B draws, sample by sample: a
    run resumed on another number of ranks with the same global batch augments as it would have."""
    aug = Augment(crop=0.5, low_res=0.5, photometric=0.5)
    whole = plan_epoch(4096, 64, seed=5, epoch=2, rank=0, world_size=1)
    parts = [plan_epoch(4096, 64 // world_size, seed=5, epoch=2, rank=r, world_size=world_size)
             for r in range(world_size)]
    for step in (0, 7):
        flips, params = whole.draws(step, aug, 112)
        drawn = [p.draws(step, aug, 112) for p in parts]
        assert np.array_equal(np.concatenate([f for f, _ in drawn]), flips)
        for name in ("roi_start", "roi_end", "low_res_side", "brightness", "contrast", "saturation"):
            assert np.array_equal(np.concatenate([getattr(q, name) for _, q in drawn]), getattr(params, name))
        assert np.array_equal(np.concatenate([p.samples[step] for p in parts]), whole.samples[step])
