"""Core curvature identities (paper.md L1). Extended by the curvature test-suite."""

import torch

from flatbook import curvature, models


def test_gn_trace_equals_dense_trace_at_interpolation() -> None:
    net = models.mlp([3, 7, 7, 2], activation="tanh", seed=3, dtype=torch.float64)
    X = torch.randn(20, 3, dtype=torch.float64)
    Y = net(X).detach()
    H = curvature.dense_hessian(net, "squared", X, Y)
    assert H.shape == (sum(p.numel() for p in net.parameters()),) * 2
    assert torch.allclose(H, H.T, atol=1e-12)
    assert abs(torch.trace(H) - curvature.gn_trace(net, X)) < 1e-10 * torch.trace(H)


def test_gn_trace_differs_away_from_interpolation() -> None:
    # the check above could not pass by accident: with random targets the residual term counts
    net = models.mlp([3, 7, 2], activation="tanh", seed=4, dtype=torch.float64)
    X = torch.randn(20, 3, dtype=torch.float64)
    Y = torch.randn(20, 2, dtype=torch.float64) * 3
    H = curvature.dense_hessian(net, "squared", X, Y)
    assert abs(torch.trace(H) - curvature.gn_trace(net, X)) > 1e-6
