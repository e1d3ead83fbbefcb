"""Issue 14: exact GN trace of conv layers (ghost norms / instantiated per-sample gradients) and
bounded probe memory of Hutchinson / Hutch++ — mathematics only, in float64, never timed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flatbook import curvature, estimators, layer_rules
from flatbook._functional import named_params

F64 = torch.float64


def _conv2d_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(),
        nn.Conv2d(3, 4, (3, 2), stride=(2, 1), dilation=(1, 2), padding=(1, 0)), nn.Tanh(),
        nn.Conv2d(4, 2, 2, bias=False, padding="valid"), nn.Tanh(),
        nn.Flatten(), nn.LazyLinear(3),
    ).to(F64)


def _conv1d_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv1d(2, 3, 3, stride=2, padding=1), nn.Tanh(),
        nn.Conv1d(3, 2, 2, dilation=2), nn.Tanh(),
        nn.Conv1d(2, 2, 3, padding="same"), nn.Tanh(),
        nn.Flatten(), nn.LazyLinear(2),
    ).to(F64)


def _data(net: nn.Module, shape: tuple[int, ...], n: int, k: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(n, *shape, generator=g, dtype=F64)
    net(X[:1])  # materialise the lazy layer
    Y = torch.randn(n, k, generator=g, dtype=F64)
    return X, Y


CASES = [(_conv2d_net, (2, 6, 5), 3), (_conv1d_net, (2, 9), 2)]


@pytest.mark.parametrize("rule", ["auto", "ghost", "instantiate"])
@pytest.mark.parametrize(("make", "shape", "k"), CASES)
def test_conv_sqnorms_match_jacrev(make, shape, k, rule, monkeypatch) -> None:
    net = make()
    X, _ = _data(net, shape, 7, k)
    if rule != "auto":  # force one side of the mixed rule
        ghost = rule == "ghost"
        monkeypatch.setattr(layer_rules, "gram_costs",
                            lambda *a: (0, 1) if ghost else (1, 0))
    fast = curvature.jacobian_sqnorms(net, X, chunk=4)
    ref = curvature.jacobian_sqnorms(net, X, chunk=4, method="jacrev")
    assert set(fast) == set(ref)
    # every parameter went through the per-layer path (none fell back to vmap(jacrev))
    _, K = layer_rules.layer_grams(net, X, named_params(net))
    assert set(K) == set(ref)
    for name in ref:
        torch.testing.assert_close(fast[name], ref[name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("make", "shape", "k"), CASES)
@pytest.mark.parametrize("loss", ["squared", "cross_entropy"])
def test_conv_gn_trace_equals_dense_gauss_newton(make, shape, k, loss) -> None:
    net = make()
    X, Y = _data(net, shape, 6, k)
    if loss == "cross_entropy":
        Y = torch.arange(6) % k
    G = curvature.gauss_newton_matrix(net, X, loss, Y)
    tr = curvature.trace(net, loss, X, Y, method="gn", chunk=4)
    assert tr.value == pytest.approx(float(torch.trace(G)), rel=1e-10)


def test_conv_ghost_rule_is_used_where_cheaper(monkeypatch) -> None:
    """Both branches are reached by the default rule on a real model (not only when forced)."""
    seen: list[bool] = []
    real = layer_rules.gram_costs

    def spy(T: int, d: int, p: int, k: int) -> tuple[int, int]:
        g, i = real(T, d, p, k)
        seen.append(g < i)
        return g, i

    monkeypatch.setattr(layer_rules, "gram_costs", spy)
    torch.manual_seed(0)
    # wide channels on a tiny image: ghost is cheaper; a 1→2 conv on a larger image: instantiate
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Conv2d(2, 64, 3, stride=3), nn.Tanh(),
                        nn.Flatten(), nn.LazyLinear(2)).to(F64)
    X, _ = _data(net, (1, 11, 11), 3, 2)
    fast = curvature.jacobian_sqnorms(net, X)
    ref = curvature.jacobian_sqnorms(net, X, method="jacrev")
    for name in ref:
        torch.testing.assert_close(fast[name], ref[name], rtol=1e-10, atol=1e-12)
    assert True in seen and False in seen
    g, i = real(T=4, d=18, p=64, k=1)  # T² = 16 small against p·d: ghost
    assert g < i
    g, i = real(T=81, d=9, p=2, k=1)  # T² large against p·d: instantiate
    assert i < g


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(F64)


@pytest.mark.parametrize("method", ["hutchinson", "hutchpp"])
@pytest.mark.parametrize("block", [1, 3, 50])
def test_probes_in_blocks_bounded_and_exact(method, block, monkeypatch) -> None:
    """No probe array beyond [block, P] is formed, and the estimate is the same number for
    every block size (the probes are the same stream), equal to its dense formula."""
    net = _mlp()
    g = torch.Generator().manual_seed(3)
    X = torch.randn(11, 5, generator=g, dtype=F64)
    Y = torch.randn(11, 3, generator=g, dtype=F64)
    rows: list[int] = []
    real_rad = curvature._rademacher
    real_call = curvature.HVPOperator.__call__

    def rad(m: int, P: int, gen: torch.Generator) -> torch.Tensor:
        rows.append(m)
        return real_rad(m, P, gen)

    def call(self, v):  # noqa: ANN001, ANN202
        rows.append(1 if v.ndim == 1 else v.shape[0])
        return real_call(self, v)

    monkeypatch.setattr(estimators, "_rademacher", rad)
    monkeypatch.setattr(curvature.HVPOperator, "__call__", call)
    m = 20
    est = curvature.trace(net, "squared", X, Y, method=method, n_hvp=m, seed=5, block=block)
    assert max(rows) <= block
    monkeypatch.undo()
    ref = curvature.trace(net, "squared", X, Y, method=method, n_hvp=m, seed=5, block=m)
    assert est.value == pytest.approx(ref.value, rel=1e-12)
    assert est.n_hvp == ref.n_hvp == m
    if method == "hutchinson":  # the dense formula (1/m) Σ zᵀHz with the same probes
        H = curvature.dense_hessian(net, "squared", X, Y)
        P = H.shape[0]
        Z = curvature._rademacher(m, P, torch.Generator().manual_seed(5))
        assert est.value == pytest.approx(float(((Z @ H) * Z).sum(1).mean()), rel=1e-10)


def test_default_block_bounds_memory() -> None:
    assert curvature._probe_block(None, 10) == 16
    P = 1_860_000
    b = curvature._probe_block(None, P)
    assert 1 <= b and b * P <= curvature.PROBE_BLOCK_ENTRIES
    with pytest.raises(ValueError, match="block"):
        curvature._probe_block(0, P)


def test_report_shares_one_sweep_for_gn_trace_and_layer_jacobians(monkeypatch) -> None:
    """The probe's k reverse passes give J_x, G_l, J_l = G_l W_l and the GN trace at once: the
    values equal the separate references (ghost norms / jacrev, dense GN) in float64."""
    from flatbook import bounds

    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(),
                        nn.Linear(5, 3)).to(F64)
    X = torch.randn(9, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    ref_sq = curvature.jacobian_sqnorms(net, X, method="jacrev")
    G = curvature.gauss_newton_matrix(net, X)
    calls: list[int] = []
    real = curvature.jacobian_sqnorms
    monkeypatch.setattr(curvature, "jacobian_sqnorms",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    q = bounds.quantities(net, X)
    assert not calls  # the shared sweep was used
    assert float(q.trace) == pytest.approx(float(torch.trace(G)), rel=1e-12)
    for i, name in enumerate(q.grad_w_sqnorm, start=0):
        torch.testing.assert_close(q.grad_w_sqnorm[name], ref_sq[f"{2 * i}.weight"],
                                   rtol=1e-12, atol=0)
    # path Jacobians J_l = G_l W_l against autograd through the tail of the network
    x0 = X[:1].clone().requires_grad_(True)
    Jx = torch.autograd.functional.jacobian(lambda x: net(x).reshape(-1), x0).reshape(3, 4)
    torch.testing.assert_close(q.output.sigma[0], torch.linalg.svdvals(Jx), rtol=1e-12, atol=0)
    h1 = torch.tanh(net[0](X[:1]))
    J2 = torch.autograd.functional.jacobian(lambda h: net[2:](h).reshape(-1), h1).reshape(3, 6)
    torch.testing.assert_close(q.layers["l2"].measures.sigma[0], torch.linalg.svdvals(J2),
                               rtol=1e-12, atol=0)
