"""Heads against a slow per-sample float64 computation of the issue's formulas (AdaFace statistics,
AdaDistill centres, geometry margin), gradients, options and state."""

import math

import pytest
import torch
import torch.nn.functional as F

import distill
from distill.margins import EPS

B, C, D = 6, 4, 5
DEFAULT_M = {"arcface": 0.5, "cosface": 0.35, "adaface": 0.4}


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    z_s = torch.randn(B, D, generator=g) * 3
    z_t = torch.randn(B, D, generator=g) + 0.8 * z_s  # teachers roughly agree with students
    labels = torch.tensor([2, 0, 2, 1, 2, 3])  # class 2 three times
    return z_s, z_t, labels


def unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def reference(loss, kd, centres, z_s, z_t, labels, *, s=64.0, m=None, h=0.333, t_alpha=0.01, alpha="weighted",
              geom=None, progress=0.0, mean=20.0, std=100.0):
    """One training call, sample by sample: returns (logits, centres after, (mean, std) after, z_hat)."""
    m = DEFAULT_M[loss] if m is None else m
    W = centres.double().tolist()
    ys = labels.tolist()
    fs = [unit(v) for v in z_s.double().tolist()]
    if kd == "adadistill":
        ft = [unit(v) for v in z_t.double().tolist()]
        cos_st = [min(max(dot(a, b), -1.0), 1.0) for a, b in zip(fs, ft)]
        lam = [min(max(dot(unit(W[y]), f), 1e-6), 1.0) for y, f in zip(ys, ft)]
        al = [min(max(c * l if alpha == "weighted" else c, 1e-6), 1.0) for c, l in zip(cos_st, lam)]
        for i, y in enumerate(ys):  # the documented rule: duplicates in batch order
            W[y] = [al[i] * w + (1 - al[i]) * f for w, f in zip(W[y], ft[i])]
    z_hat = None
    if loss == "adaface":
        n = [min(max(math.sqrt(dot(v, v)), 0.001), 100.0) for v in z_s.double().tolist()]
        bm = sum(n) / len(n)
        bs = math.sqrt(sum((x - bm) ** 2 for x in n) / (len(n) - 1))
        mean, std = bm * t_alpha + (1 - t_alpha) * mean, bs * t_alpha + (1 - t_alpha) * std
        z_hat = []
        for i in range(len(ys)):
            extra = 0.0
            if geom is not None:
                w_eff = geom["w"] * min(1.0, progress / geom["warmup_epochs"])
                extra = w_eff * geom["k"] * max(lam[i] - cos_st[i], 0.0) * lam[i]
            z_hat.append(min(max(h * (n[i] - mean) / (std + EPS) + extra, -1.0), 1.0))
    logits = []
    for i, y in enumerate(ys):
        row = [dot(fs[i], unit(w)) for w in W]
        if loss == "adaface":
            row = [min(max(c, -1 + EPS), 1 - EPS) for c in row]
        out = [s * c for c in row]
        if loss == "arcface":
            out[y] = s * math.cos(math.acos(min(max(row[y], -1 + EPS), 1 - EPS)) + m)
        elif loss == "cosface":
            out[y] = s * (row[y] - m)
        else:
            theta = min(max(math.acos(row[y]) - m * z_hat[i], EPS), math.pi - EPS)
            out[y] = s * (math.cos(theta) - (m + m * z_hat[i]))
        logits.append(out)
    return torch.tensor(logits, dtype=torch.float64), torch.tensor(W, dtype=torch.float64), (mean, std), z_hat


def logits_of(head, z_s, labels, *args, **kwargs):
    """The head's margin logits and statistics (Head.logits) of one process's batch, its own global batch."""
    out, stats = head.logits(z_s, labels, *args, global_labels=labels.numpy(), **kwargs)
    return out.logits, stats


def fresh(loss, kd, seed=1, **options):
    torch.manual_seed(seed)
    return distill.build_head(loss, C, D, kd=kd, **options)


def near_teacher(head, z_t, labels):
    """Centres close to each class's first teacher embedding, so lambda is large (random centres give
    lambda ~ 0, where the geometry term vanishes)."""
    with torch.no_grad():
        for y in range(C):
            hits = (labels == y).nonzero()
            if len(hits):
                head.centres[y] = 0.2 * F.normalize(z_t[hits[0, 0]], dim=0) + 0.02 * head.centres[y]
    return head


@pytest.mark.parametrize("kd", ["none", "adadistill"])
@pytest.mark.parametrize("loss", ["arcface", "cosface", "adaface"])
def test_logits_state_and_stats_match_the_formulas(loss, kd):
    z_s, z_t, labels = batch()
    head = near_teacher(fresh(loss, kd, m=0.45 if loss == "arcface" else None), z_t, labels)
    centres0 = head.centres.detach().clone()
    logits, stats = logits_of(head, z_s, labels, z_t if kd == "adadistill" else None)
    want, centres, (mean, std), z_hat = reference(loss, kd, centres0, z_s, z_t, labels,
                                                  m=0.45 if loss == "arcface" else None)
    torch.testing.assert_close(logits.double(), want, atol=2e-4, rtol=1e-5)
    torch.testing.assert_close(head.centres.detach().double(), centres, atol=1e-6, rtol=1e-5)
    if kd == "none":
        assert torch.equal(head.centres.detach(), centres0)
        assert stats["cos_st"] is None and stats["alpha"] is None
    else:
        assert not torch.equal(head.centres, centres0)
        cos_st = F.cosine_similarity(z_s, z_t).clamp(-1, 1).mean()
        assert float(stats["cos_st"]) == pytest.approx(float(cos_st), abs=1e-5)
        assert 1e-6 <= float(stats["alpha"]) <= 1.0
    if loss == "adaface":
        assert float(head.batch_mean) == pytest.approx(mean, rel=1e-6)
        assert float(head.batch_std) == pytest.approx(std, rel=1e-6)
        assert float(stats["margin_scaler"]) == pytest.approx(sum(z_hat) / B, abs=1e-5)
    else:
        assert stats["margin_scaler"] == pytest.approx(0.45 if loss == "arcface" else 0.35)


@pytest.mark.parametrize("alpha", ["weighted", "plain"])
@pytest.mark.parametrize("progress", [0.0, 0.25, 0.5, 2.0])
def test_adaface_kd_geometry_margin_with_warmup(alpha, progress):
    z_s, z_t, labels = batch(seed=3)
    geom = {"w": 1.0, "k": 3.0, "warmup_epochs": 0.5}
    head = near_teacher(fresh("adaface", "adadistill", alpha=alpha, geom=geom), z_t, labels)
    centres0 = head.centres.detach().clone()
    logits, stats = logits_of(head, z_s, labels, z_t, epoch_progress=progress)
    want, centres, _, z_hat = reference("adaface", "adadistill", centres0, z_s, z_t, labels, alpha=alpha, geom=geom,
                                        progress=progress)
    torch.testing.assert_close(logits.double(), want, atol=2e-4, rtol=1e-5)
    torch.testing.assert_close(head.centres.double(), centres, atol=1e-6, rtol=1e-5)
    plain = near_teacher(fresh("adaface", "adadistill", alpha=alpha), z_t, labels)
    plain_logits, _ = logits_of(plain, z_s, labels, z_t)
    if progress == 0.0:  # w_eff = 0: exactly plain AdaFace KD
        torch.testing.assert_close(logits, plain_logits)
    else:  # the geometry term is non-negative, so it only raises z_hat where it acts
        assert not torch.allclose(logits, plain_logits)
        assert float(stats["margin_scaler"]) == pytest.approx(sum(z_hat) / B, abs=1e-5)


def test_adaface_statistics_ema_over_steps():
    head = fresh("adaface", "none", t_alpha=0.3)
    mean, std = 20.0, 100.0
    for seed in range(3):
        z_s, _, labels = batch(seed)
        z_s[0] = 0.0  # clipped to 0.001
        z_s[1] *= 1000  # clipped to 100
        logits_of(head, z_s, labels)
        n = z_s.norm(dim=1).clamp(0.001, 100).double()
        mean = 0.3 * float(n.mean()) + 0.7 * mean
        std = 0.3 * float(n.std(unbiased=True)) + 0.7 * std
        assert float(head.batch_mean) == pytest.approx(mean, rel=1e-6)
        assert float(head.batch_std) == pytest.approx(std, rel=1e-6)


@pytest.mark.parametrize("loss", ["arcface", "cosface", "adaface"])
@pytest.mark.parametrize("kd", ["none", "adadistill"])
def test_gradients_reach_the_student_only(loss, kd):
    z_s, z_t, labels = batch()
    z_s.requires_grad_(True)
    z_t.requires_grad_(True)
    head = fresh(loss, kd, geom={"w": 1, "k": 3, "warmup_epochs": 1} if loss == "adaface" else None)
    logits, _ = logits_of(head, z_s, labels, z_t if kd == "adadistill" else None, epoch_progress=0.5)
    F.cross_entropy(logits, labels).backward()
    assert z_s.grad is not None and torch.isfinite(z_s.grad).all() and z_s.grad.abs().sum() > 0
    assert z_t.grad is None
    if kd == "adadistill":
        assert not head.centres.requires_grad and head.centres.grad is None
        assert list(head.parameters()) == []
    else:
        assert [p is head.centres for p in head.parameters()] == [True]
        assert head.centres.grad is not None and head.centres.grad.abs().sum() > 0


@pytest.mark.parametrize("loss", ["arcface", "adaface"])
def test_no_nan_when_student_equals_centre_or_its_opposite(loss):
    head = fresh(loss, "adadistill")
    with torch.no_grad():
        head.centres[0] = torch.tensor([1.0, 0, 0, 0, 0])
    z = torch.tensor([[5.0, 0, 0, 0, 0], [-5.0, 0, 0, 0, 0]], requires_grad=True)
    labels = torch.tensor([0, 0])
    head.eval()  # keep the centre exactly on the student
    logits, _ = logits_of(head, z, labels, z.detach())
    F.cross_entropy(logits, labels).backward()
    assert torch.isfinite(logits).all() and torch.isfinite(z.grad).all()


def test_state_dict_resumes_exactly():
    geom = {"w": 1.0, "k": 3.0, "warmup_epochs": 1.0}
    a = fresh("adaface", "adadistill", geom=geom)
    logits_of(a, *batch(0)[::2], batch(0)[1])  # one step changes centres and statistics
    assert set(a.state_dict()) == {"centres", "batch_mean", "batch_std"}
    b = fresh("adaface", "adadistill", seed=7, geom=geom)
    b.load_state_dict(a.state_dict())
    z_s, z_t, labels = batch(1)
    la, _ = logits_of(a, z_s, labels, z_t, 0.3)
    lb, _ = logits_of(b, z_s, labels, z_t, 0.3)
    assert torch.equal(la, lb) and torch.equal(a.centres, b.centres) and torch.equal(a.batch_std, b.batch_std)


def test_eval_mode_changes_no_state():
    head = fresh("adaface", "adadistill").eval()
    before = {k: v.clone() for k, v in head.state_dict().items()}
    z_s, z_t, labels = batch()
    logits_of(head, z_s, labels, z_t)
    assert all(torch.equal(before[k], v) for k, v in head.state_dict().items())


def test_head_runs_in_float32_under_autocast():
    z_s, z_t, labels = batch()
    head = fresh("arcface", "adadistill")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = logits_of(head, z_s.bfloat16(), labels, z_t.bfloat16())
    assert logits.dtype == torch.float32 and head.centres.dtype == torch.float32


def test_adadistill_needs_the_teacher():
    z_s, _, labels = batch()
    with pytest.raises(ValueError, match="teacher_emb"):
        logits_of(fresh("cosface", "adadistill"), z_s, labels)
    with pytest.raises(ValueError, match="teacher_emb must have"):
        logits_of(fresh("cosface", "adadistill"), z_s, labels, z_s[:, :3])


@pytest.mark.parametrize("args,options,match", [
    (("sphereface", C), {}, "unknown loss 'sphereface'"),
    (("arcface", C), {"kd": "feature"}, "unknown kd 'feature'"),
    (("arcface", 0), {}, "num_classes"),
    (("arcface", C), {"margin": 0.5}, r"unknown options \['margin'\]"),
    (("arcface", C), {"h": 0.333}, "option h applies to adaface only"),
    (("cosface", C), {"kd": "adadistill", "geom": {"w": 1}}, "needs loss 'adaface'"),
    (("adaface", C), {"kd": "adadistill", "geom": {"w": 1, "K": 3}}, r"unknown keys \['K'\]"),
    (("adaface", C), {"kd": "adadistill", "geom": {"w": -1}}, "geom.w"),
    (("adaface", C), {"kd": "adadistill", "alpha": "mean"}, "option alpha"),
])
def test_build_head_rejects_bad_options(args, options, match):
    with pytest.raises(ValueError, match=match):
        distill.build_head(*args, embedding_size=D, **options)


def test_kd_none_ignores_distillation_options():
    head = distill.build_head("adaface", C, D, kd="none", alpha="plain", geom={"w": 1, "k": 3, "warmup_epochs": 1},
                              h=None, t_alpha=None)
    assert head.geom is None and head.margin.h == 0.333 and head.margin.t_alpha == 0.01
    assert isinstance(head.centres, torch.nn.Parameter)


@pytest.mark.parametrize("loss,kd", [("arcface", "adadistill"), ("adaface", "none")])
def test_forward_returns_the_cross_entropy_of_its_logits(loss, kd):
    """One head, one call: forward is the mean cross-entropy of Head.logits (state moved once, alike)."""
    z_s, z_t, labels = batch()
    teacher = z_t if kd == "adadistill" else None
    a, b = fresh(loss, kd), fresh(loss, kd)
    value, stats = a(z_s, labels, teacher, 0.5, global_labels=labels.numpy())
    logits, logit_stats = logits_of(b, z_s, labels, teacher, 0.5)
    assert torch.equal(value, F.cross_entropy(logits, labels))
    assert all(torch.equal(v, logit_stats[k]) if torch.is_tensor(v) else v == logit_stats[k] for k, v in stats.items())
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_the_global_batch_labels_are_required():
    z_s, z_t, labels = batch()
    head = fresh("arcface", "adadistill")
    for wrong in (None, labels, labels.numpy()[:3]):
        with pytest.raises(ValueError, match="global_labels must be the global batch's labels on the host"):
            head(z_s, labels, z_t, global_labels=wrong)
