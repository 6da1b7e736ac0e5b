"""AdaDistill centre update: alpha and alpha' with their clamps, the duplicate-label rule, and
identical centres on 2 gloo ranks equal to one process on the concatenated batch."""

import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import distill
from distill.centres import coefficients, occurrence, update_centres


def e(i, d=3):
    v = torch.zeros(d)
    v[i] = 1.0
    return v


def test_alpha_plain_and_weighted_with_clamps():
    s2 = 2 ** -0.5
    f_t = torch.stack([e(0), e(0), e(0), e(1)])
    f_s = torch.stack([e(0), torch.tensor([s2, s2, 0.0]), -e(0), e(1)])  # cos_st 1, 0.707, -1, 1
    centres = torch.stack([e(0) * 5, torch.tensor([s2, s2, 0.0]) * 0.1, -e(0)])  # raw rows, any norm
    labels = torch.tensor([0, 1, 0, 2])  # lambda: 1, 0.707, 1, cos(-e0, e1) = 0 -> 1e-6
    plain = coefficients(centres, labels, f_s, f_t, weighted=False)
    weighted = coefficients(centres, labels, f_s, f_t, weighted=True)
    assert plain.cos_st.tolist() == pytest.approx([1.0, s2, -1.0, 1.0], abs=1e-6)
    assert plain.lam.tolist() == pytest.approx([1.0, s2, 1.0, 1e-6], abs=1e-7)
    assert plain.alpha.tolist() == pytest.approx([1.0, s2, 1e-6, 1.0], abs=1e-7)
    assert weighted.alpha.tolist() == pytest.approx([1.0, 0.5, 1e-6, 1e-6], abs=1e-6)


def sequential(centres, labels, f_t, alpha):
    """The documented rule, written as the obvious loop."""
    out = centres.clone()
    for i, y in enumerate(labels.tolist()):
        out[y] = alpha[i] * out[y] + (1 - alpha[i]) * f_t[i]
    return out


def case(seed=0, n=9, c=5, d=4):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, d, generator=g) * 0.01
    labels = torch.tensor([3, 1, 3, 0, 3, 1, 4, 2, 0][:n])
    f_t = F.normalize(torch.randn(n, d, generator=g), dim=1)
    alpha = torch.rand(n, generator=g).clamp(1e-6, 1)
    return centres, labels, f_t, alpha


def test_occurrence_counts_earlier_duplicates():
    assert occurrence(torch.tensor([3, 1, 3, 0, 3, 1])).tolist() == [0, 0, 1, 0, 2, 1]


def test_update_applies_duplicates_in_batch_order():
    centres, labels, f_t, alpha = case()
    got = centres.clone()
    update_centres(got, labels, f_t, alpha)
    assert torch.equal(got, sequential(centres, labels, f_t, alpha))
    # the order of duplicates matters, and the rule follows it
    swap = torch.tensor([4, 1, 2, 3, 0, 5, 6, 7, 8])  # exchanges two samples of class 3
    again = centres.clone()
    update_centres(again, labels[swap], f_t[swap], alpha[swap])
    assert torch.equal(again, sequential(centres, labels[swap], f_t[swap], alpha[swap]))
    assert not torch.equal(again[3], got[3])


def test_rounds_from_the_hosts_labels_give_the_same_update():
    """The loader's host copy of the labels gives the rounds without a device sync, and the same bits."""
    from distill.centres import rounds_from_host

    for seed in range(3):
        centres, labels, f_t, alpha = case(seed=seed)
        perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
        labels, f_t, alpha = labels[perm], f_t[perm], alpha[perm]
        rounds = rounds_from_host(labels.numpy(), centres.device)
        assert rounds.bounds[-1] == len(labels) and len(rounds.bounds) - 1 == int(occurrence(labels).max()) + 1
        got = centres.clone()
        update_centres(got, labels, f_t, alpha, rounds)
        assert torch.equal(got, sequential(centres, labels, f_t, alpha))


def test_other_samples_do_not_change_a_class_result():
    centres, labels, f_t, alpha = case(seed=1)
    ref = centres.clone()
    update_centres(ref, labels, f_t, alpha)
    # interleave the classes differently, each class keeping its own samples' relative order
    perm = torch.tensor([6, 0, 1, 7, 2, 3, 4, 5, 8])
    for y in range(5):
        assert [i for i in perm.tolist() if labels[i] == y] == (labels == y).nonzero().squeeze(1).tolist()
    got = centres.clone()
    update_centres(got, labels[perm], f_t[perm], alpha[perm])
    assert torch.equal(got, ref)
    # reversing class 1's two samples changes class 1 only
    swap = torch.tensor([0, 5, 2, 3, 4, 1, 6, 7, 8])
    other = centres.clone()
    update_centres(other, labels[swap], f_t[swap], alpha[swap])
    assert not torch.equal(other[1], ref[1])
    assert torch.equal(other[[0, 2, 3, 4]], ref[[0, 2, 3, 4]])


def test_rows_without_samples_stay_untouched():
    centres, labels, f_t, alpha = case()
    got = centres.clone()
    update_centres(got, labels[:2], f_t[:2], alpha[:2])
    assert torch.equal(got[[0, 2, 4]], centres[[0, 2, 4]])


# ---- two gloo ranks -------------------------------------------------------------------------------

SPLIT = 4  # rank 0 holds samples 0..3, rank 1 the 4 others: equal, as the loader gives every rank B samples
LABELS = torch.tensor([2, 0, 2, 1, 3, 2, 0, 4])
GEOM = {"w": 1.0, "k": 3.0, "warmup_epochs": 1.0}


def global_batch(step):
    g = torch.Generator().manual_seed(100 + step)
    z_s = torch.randn(8, 6, generator=g) * 4
    z_t = z_s + torch.randn(8, 6, generator=g)
    return z_s, z_t, LABELS


def make_head():
    torch.manual_seed(0)
    return distill.build_head("adaface", 5, 6, kd="adadistill", geom=GEOM)


def _rank_main(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        head = make_head()
        part = slice(0, SPLIT) if rank == 0 else slice(SPLIT, None)
        logits = []
        for step in range(2):
            z_s, z_t, labels = global_batch(step)
            out, _ = head.logits(z_s[part], labels[part], z_t[part], epoch_progress=0.5 * step,
                                 global_labels=labels.numpy())
            logits.append(out.logits)
        torch.save({"state": head.state_dict(), "logits": logits}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process_on_the_concatenated_batch(tmp_path):
    mp.spawn(_rank_main, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key in ("centres", "batch_mean", "batch_std"):
        assert torch.equal(r0["state"][key], r1["state"][key]), key

    head = make_head()
    for step in range(2):
        z_s, z_t, labels = global_batch(step)
        single, _ = head.logits(z_s, labels, z_t, epoch_progress=0.5 * step, global_labels=labels.numpy())
        single = single.logits
        torch.testing.assert_close(torch.cat([r0["logits"][step], r1["logits"][step]]), single)
    for key, value in head.state_dict().items():
        torch.testing.assert_close(r0["state"][key], value, msg=key)
