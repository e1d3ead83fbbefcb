"""Input Jacobians and representation measures (flatbook.geometry; paper.md §1)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flatbook import geometry as G
from flatbook import layers, models

DT = torch.float64


def _fd_jacobian(fn: nn.Module, X: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """Central finite differences, [n, N, d] (reference)."""
    n, shape = X.shape[0], X.shape[1:]
    d = math.prod(shape)
    out = []
    with torch.no_grad():
        for x in X.reshape(n, d):
            E = torch.eye(d, dtype=X.dtype) * h
            fp = fn((x + E).reshape(d, *shape)).reshape(d, -1)
            fm = fn((x - E).reshape(d, *shape)).reshape(d, -1)
            out.append(((fp - fm) / (2 * h)).T)
    return torch.stack(out)


def _spectral_linear(N: int, d: int, s: torch.Tensor, seed: int) -> nn.Linear:
    """Bias-free linear map R^d → R^N with singular values s (len min(N, d))."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(N, N, generator=g, dtype=DT))
    V, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=DT))
    S = torch.zeros(N, d, dtype=DT)
    S[range(len(s)), range(len(s))] = s
    lin = nn.Linear(d, N, bias=False).to(DT)
    with torch.no_grad():
        lin.weight.copy_(U @ S @ V.T)
    return lin


def _models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return {
        "mlp": (
            models.mlp([6, 9, 7, 4], activation="tanh", seed=2, dtype=DT),
            torch.randn(5, 6, generator=g, dtype=DT),
        ),
        "mlp_wide_out": (  # N > d: the forward-mode path
            models.mlp([3, 8, 9], activation="softplus", seed=3, dtype=DT),
            torch.randn(5, 3, generator=g, dtype=DT),
        ),
        "cnn": (
            models.lenet5((1, 8, 8), 3, activation="tanh", pool="avg", seed=4, dtype=DT).eval(),
            torch.randn(3, 1, 8, 8, generator=g, dtype=DT),
        ),
        "vit": (
            models.vit((1, 8, 8), 3, patch=4, dim=8, depth=1, heads=2, seed=5, dtype=DT).eval(),
            torch.randn(3, 1, 8, 8, generator=g, dtype=DT),
        ),
    }


@pytest.mark.parametrize("name", ["mlp", "mlp_wide_out", "cnn", "vit"])
def test_jacobian_matches_central_differences(name: str) -> None:
    fn, X = _models()[name]
    J = G.input_jacobian(fn, X, chunk=2)
    N = fn(X[:1]).numel()
    assert J.shape == (X.shape[0], N, X[0].numel())
    assert (J - _fd_jacobian(fn, X)).abs().max() < 1e-6
    # every evaluation mode gives the same Jacobian
    for mode in ("rev", "fwd", "loop"):
        assert (G.input_jacobian(fn, X, mode=mode) - J).abs().max() < 1e-12, mode
    assert (G.input_jacobian(fn, X, chunk=None) - J).abs().max() < 1e-12  # automatic chunks


def test_hidden_representation_jacobian_matches_differences() -> None:
    fn, X = _models()["cnn"]
    head, tail = layers.split(fn, "2")  # x ↦ pooled feature map [6, 4, 4]
    J = G.input_jacobian(head, X)
    assert J.shape == (3, 6 * 4 * 4, 64)
    assert (J - _fd_jacobian(head, X)).abs().max() < 1e-6


@pytest.mark.parametrize("N,d", [(3, 5), (5, 3), (4, 4)])
def test_measures_match_closed_forms_on_linear_maps(N: int, d: int) -> None:
    r = min(N, d)
    s = torch.tensor([3.0, 1.5, 0.4, 0.2][:r], dtype=DT)
    lin = _spectral_linear(N, d, s, seed=N * 10 + d)
    X = torch.randn(6, d, dtype=DT)
    m = G.measures(G.input_jacobian(lin, X))
    ones = torch.ones(6, dtype=DT)
    assert m.r == r and m.N == N and m.d == d
    torch.testing.assert_close(m.sigma, s.expand(6, r), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.log_lvr, s.log().sum() * ones, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.mls, s[0] * ones, rtol=1e-12, atol=1e-12)
    ld = s.pow(2).sum() ** 2 / s.pow(4).sum()
    torch.testing.assert_close(m.ld, ld * ones, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.frob_sq, s.pow(2).sum() * ones, rtol=1e-12, atol=1e-12)
    J = G.input_jacobian(lin, X)
    torch.testing.assert_close(G.log_lvr(J), m.log_lvr)
    torch.testing.assert_close(G.mls(J), m.mls)
    torch.testing.assert_close(G.local_dim(J), m.ld)
    torch.testing.assert_close(G.frob_sq(J), m.frob_sq)
    torch.testing.assert_close(m.lvr_pow, s.prod() ** (2 / r) * ones)
    # LD is scale-invariant, log LVR shifts by r log c, MLS scales by c
    m2 = G.measures(3.0 * J)
    torch.testing.assert_close(m2.ld, m.ld)
    torch.testing.assert_close(m2.log_lvr, m.log_lvr + r * math.log(3.0))
    assert bool(((1 - 1e-12 <= m.ld) & (m.ld <= r + 1e-12)).all())


def test_deep_linear_representation_measures() -> None:
    # x ↦ h through two linear maps: singular values multiply when the bases are aligned
    a = _spectral_linear(4, 4, torch.tensor([2.0, 1.0, 0.5, 0.5], dtype=DT), seed=0)
    net = nn.Sequential(a, nn.Identity(), nn.Linear(4, 2).to(DT))
    X = torch.randn(3, 4, dtype=DT)
    m = G.representation_measures(net, X, "1")  # x ↦ a(x)
    torch.testing.assert_close(m.log_lvr, torch.full((3,), math.log(0.5), dtype=DT))
    # "to_output" at a dense layer's input equals that layer's measures
    lm = G.layer_measures(net, X)["l2"]
    m_out = G.representation_measures(net, X, "1", direction="to_output")
    torch.testing.assert_close(lm.measures.mls, m_out.mls)


def test_rank_deficiency_gives_minus_inf_not_a_crash() -> None:
    lin = _spectral_linear(3, 5, torch.tensor([2.0, 1.0, 0.0], dtype=DT), seed=7)
    X = torch.randn(4, 5, dtype=DT)
    J = G.input_jacobian(lin, X)
    assert torch.isneginf(G.log_lvr(J)).all()
    assert torch.isfinite(G.log_lvr(J[:, :2, :])).all()  # the rank-2 part alone is finite
    torch.testing.assert_close(G.local_dim(J), torch.full((4,), 25.0 / 17.0, dtype=DT))
    # a ReLU layer whose units are all dead: J = 0 exactly
    dead = nn.Sequential(nn.Linear(5, 3), nn.ReLU()).to(DT)
    with torch.no_grad():
        dead[0].weight.zero_()
        dead[0].bias.fill_(-1.0)
    m = G.measures(G.input_jacobian(dead, X))
    assert torch.isneginf(m.log_lvr).all() and (m.mls == 0).all() and torch.isnan(m.ld).all()


def test_gaussian_ball_converges_to_jacobian_measures() -> None:
    fn, X = _models()["mlp"]
    X = X[:2]
    m = G.measures(G.input_jacobian(fn, X))
    errs = []
    for alpha in (1e-1, 1e-8):
        b = G.gaussian_ball(fn, X, alpha=alpha, n_samples=20000, seed=0)
        assert b.r == 4
        errs.append((b.log_volume - m.log_lvr).abs().max().item())
        if alpha == 1e-8:
            assert errs[-1] < 0.05  # sampling error ≈ √(r/2m) + bias r(r+1)/4m
            assert (b.pr - m.ld).abs().max() < 0.03 * m.ld.max()
            two_pi_e = 2 * math.pi * math.e * alpha
            torch.testing.assert_close(b.entropy, b.log_volume + 0.5 * 4 * math.log(two_pi_e))
    assert errs[1] < errs[0]  # curvature error vanishes as α → 0


def test_gaussian_ball_is_scale_free_for_linear_maps_and_seeded() -> None:
    lin = _spectral_linear(5, 3, torch.tensor([2.0, 1.0, 0.1], dtype=DT), seed=3)
    X = torch.randn(2, 3, dtype=DT)
    b1 = G.gaussian_ball(lin, X, alpha=1.0, n_samples=500, seed=4)
    b2 = G.gaussian_ball(lin, X, alpha=1e-6, n_samples=500, seed=4)
    torch.testing.assert_close(b1.log_volume, b2.log_volume, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(b1.pr, b2.pr, rtol=1e-9, atol=1e-9)
    b3 = G.gaussian_ball(lin, X, alpha=1.0, n_samples=500, seed=5)
    assert not torch.equal(b1.log_volume, b3.log_volume)


def test_participation_ratio_isotropic_and_closed_form() -> None:
    g = torch.Generator().manual_seed(0)
    d, n = 10, 40000
    Z = torch.randn(n, d, generator=g, dtype=DT)
    assert abs(G.participation_ratio(Z).item() - d) < 0.05 * 1  # E ≈ d/(1 + d/n)
    s = torch.tensor([3.0, 2.0, 1.0, 0.0, 0.0], dtype=DT)
    pr = G.participation_ratio(Z[:, :5] * s)
    assert abs(pr.item() - (s.pow(2).sum() ** 2 / s.pow(4).sum()).item()) < 0.05
    # Gram path (n < N) and covariance path agree with the eigenvalue definition
    Zs = torch.randn(6, 30, generator=g, dtype=DT)
    lam = torch.linalg.eigvalsh(torch.cov(Zs.T))
    torch.testing.assert_close(G.participation_ratio(Zs), lam.sum() ** 2 / lam.pow(2).sum())
    Zt = torch.randn(50, 4, 2, generator=g, dtype=DT)  # multi-dim representations flatten
    lam = torch.linalg.eigvalsh(torch.cov(Zt.reshape(50, 8).T))
    torch.testing.assert_close(G.participation_ratio(Zt), lam.sum() ** 2 / lam.pow(2).sum())


def test_layer_measures_are_those_of_the_tail_jacobian() -> None:
    net = models.mlp([5, 6, 4, 3], activation="tanh", seed=8, dtype=DT)
    X = torch.randn(4, 5, dtype=DT)
    lm = G.layer_measures(net, X)
    assert list(lm) == ["l1", "l2", "l3"]
    out = G.output_measures(net, X)
    torch.testing.assert_close(lm["l1"].measures.log_lvr, out.log_lvr)  # h_0 = x
    torch.testing.assert_close(lm["l1"].h_sqnorm, X.pow(2).sum(1))
    for v in lm.values():
        W = v.layer.weight.detach()
        torch.testing.assert_close(v.weight_norm, torch.linalg.svdvals(W)[0])
        assert v.measures.r == min(3, v.layer.in_features)
    # last layer: ∂f/∂h_2 = W_3 for every sample
    torch.testing.assert_close(
        lm["l3"].measures.frob_sq, net[4].weight.detach().pow(2).sum().expand(4)
    )


def test_bad_arguments_raise() -> None:
    lin = nn.Linear(3, 2).to(DT)
    X = torch.randn(2, 3, dtype=DT)
    with pytest.raises(ValueError, match="mode"):
        G.input_jacobian(lin, X, mode="central")
    with pytest.raises(ValueError, match="chunk"):
        G.input_jacobian(lin, X, chunk=0)
    with pytest.raises(ValueError, match=r"J must be"):
        G.log_lvr(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="alpha"):
        G.gaussian_ball(lin, X, alpha=0.0)
    with pytest.raises(ValueError, match="n ≥ 2"):
        G.participation_ratio(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="direction"):
        G.representation_measures(nn.Sequential(lin), X, "input", direction="up")
