"""Margin logits against the papers' formulas, computed per sample in float64 Python."""

import math

import pytest
import torch

from distill.margins import EPS, MARGINS, AdaFaceMargin, ArcFaceMargin, CosFaceMargin, norm_scaler, register

COS = torch.tensor([[0.80, -0.20, 0.10, 0.30],
                    [0.05, 0.60, -0.90, 0.20],
                    [-0.40, 0.10, 0.20, 0.999],
                    [0.30, -0.7, 0.0, -0.95]])
LABELS = torch.tensor([0, 1, 3, 3])
Z_HAT = torch.tensor([0.5, -1.0, 0.2, 1.0])


def reference(name, s, m, cos, labels, z_hat=None):
    out = []
    for i, row in enumerate(cos.tolist()):
        y = int(labels[i])
        if name == "adaface":
            row = [min(max(c, -1 + EPS), 1 - EPS) for c in row]
        logits = [s * c for c in row]
        c = row[y]
        if name == "arcface":
            logits[y] = s * math.cos(math.acos(min(max(c, -1 + EPS), 1 - EPS)) + m)
        elif name == "cosface":
            logits[y] = s * (c - m)
        else:
            z = float(z_hat[i])
            theta = min(max(math.acos(c) - m * z, EPS), math.pi - EPS)
            logits[y] = s * (math.cos(theta) - (m + m * z))
        out.append(logits)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("name,margin", [("arcface", ArcFaceMargin(s=64.0, m=0.45)),
                                         ("cosface", CosFaceMargin(s=30.0, m=0.35)),
                                         ("adaface", AdaFaceMargin(s=64.0, m=0.4))])
def test_logits_match_the_formula(name, margin):
    got = margin.logits(COS, LABELS, Z_HAT)
    want = reference(name, margin.s, margin.m, COS, LABELS, Z_HAT)
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-5)


def test_adaface_angle_clamp_is_active():
    # z_hat = 1 subtracts m from theta: with theta_y small, theta + g_angle < eps and is clamped to eps.
    cos = torch.tensor([[0.99, 0.0]])
    got = AdaFaceMargin(s=1.0, m=0.4).logits(cos, torch.tensor([0]), torch.tensor([1.0]))
    assert got[0, 0].item() == pytest.approx(math.cos(EPS) - 0.8, abs=1e-6)


@pytest.mark.parametrize("name", sorted(MARGINS))
def test_no_nan_at_cos_plus_minus_one(name):
    cos = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [1.0, 1.0, -1.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 2])
    logits = MARGINS[name]().logits(cos, labels, torch.tensor([1.0, -1.0, 0.0]))
    logits.sum().backward()
    assert torch.isfinite(logits).all() and torch.isfinite(cos.grad).all()


def test_norm_scaler_formula_and_clamp():
    norms = torch.tensor([10.0, 20.0, 1000.0, 0.001])
    got = norm_scaler(norms, torch.tensor(20.0), torch.tensor(5.0), 0.333, shift=torch.tensor([0.1, 0.0, 0.0, 0.0]))
    want = [0.333 * (10 - 20) / (5 + EPS) + 0.1, 0.0, 1.0, -1.0]
    assert got.tolist() == pytest.approx(want, abs=1e-6)


def test_registry_rejects_duplicates():
    with pytest.raises(ValueError, match="registered twice"):
        register("arcface")(type("Other", (), {}))


@pytest.mark.parametrize("kwargs,match", [({"s": 0.0}, "option s"), ({"m": -0.1}, "option m"),
                                          ({"m": float("nan")}, "option m")])
def test_bad_options_name_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ArcFaceMargin(**kwargs)
    with pytest.raises(ValueError, match="t_alpha"):
        AdaFaceMargin(t_alpha=0.0)
