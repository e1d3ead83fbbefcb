"""Estimators on plain tensors (testable against A.trace() and eigvalsh), and the same numbers
through the loss-Hessian operator as through curvature.trace / sharpness."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch import nn

from flatbook import curvature, estimators, lanczos

F64 = torch.float64


def _spd(P: int, rank: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(P, rank, generator=g, dtype=F64)
    return B @ B.T


def test_hutchpp_exact_on_low_rank_tensor() -> None:
    A = _spd(30, 3)
    r = estimators.hutchpp_trace(A, 12)
    assert r.value == pytest.approx(float(A.trace()), rel=1e-10)
    assert r.n_hvp == 12


def test_hutchinson_within_error_bars_on_tensor() -> None:
    A = _spd(40, 40, seed=1)
    r = estimators.hutchinson_trace(A, 400, seed=2)
    assert abs(r.value - float(A.trace())) <= 5 * r.stderr
    assert r.stderr > 0 and r.n_hvp == 400


def test_lanczos_on_tensor_matches_eigvalsh() -> None:
    A = _spd(25, 25, seed=3)
    ev = torch.linalg.eigvalsh(A).flip(0)
    r = lanczos.lanczos(A, k=3, tol=1e-10)
    assert r.converged
    torch.testing.assert_close(r.values, ev[:3], rtol=1e-9, atol=0)
    assert float(r.residuals.max()) <= 1e-8 * float(ev[0])


def test_estimators_reject_bad_input() -> None:
    with pytest.raises(TypeError, match="square torch.Tensor or an operator"):
        estimators.hutchpp_trace([[1.0]], 4)
    with pytest.raises(ValueError, match="num_matvecs"):
        estimators.hutchpp_trace(torch.eye(3, dtype=F64), 3)
    with pytest.raises(ValueError, match="square"):
        estimators.hutchinson_trace(torch.ones(2, 3), 4)


@pytest.mark.parametrize("method", ["hutchinson", "hutchpp"])
def test_trace_is_the_estimator_on_the_hessian_operator(method: str) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).to(F64)
    X, Y = torch.randn(9, 4, dtype=F64), torch.randn(9, 2, dtype=F64)
    H = curvature.dense_hessian(net, "squared", X, Y)
    est = getattr(estimators, f"{method}_trace")
    a = curvature.trace(net, "squared", X, Y, method=method, n_hvp=30, seed=4)
    b = est(H, 30, seed=4)
    assert a.value == pytest.approx(b.value, rel=1e-10)
    assert a.stderr == pytest.approx(b.stderr, rel=1e-8)


def test_doctests() -> None:
    for mod in (estimators, lanczos):
        assert doctest.testmod(mod).failed == 0
