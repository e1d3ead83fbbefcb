"""flatbook.tight: every bound the book checks is an equality on its tight case.

A bound whose right side is a few per cent too small or too large, or a measure a few per cent
off, moves one of these slacks away from 1 (scripts/mutants.py plants such errors).
"""

from __future__ import annotations

import math

import pytest
import torch

from flatbook import bounds, chain, geometry, tight

TOL = 1e-9


def _slack_err(b: bounds.Bound) -> float:
    """max |slack − 1| over samples (per-sample bounds) or of the aggregate."""
    s = torch.as_tensor(b.slack, dtype=torch.float64)
    return float((s - 1).abs().max())


def _check_all_listed(tc: tight.TightCase) -> dict[str, bounds.Bound]:
    q = bounds.quantities(tc.model, tc.X)
    allb = bounds.all_bounds(q, lr=tc.lr, batch_size=tc.batch_size)
    listed = [name for name in tc.tight if not name.startswith(("corollary", "adaptive"))]
    assert listed and set(listed) <= set(allb), set(listed) - set(allb)
    for name in listed:
        assert _slack_err(allb[name]) < TOL, (name, str(allb[name]))
    return allb


@pytest.mark.parametrize("k", [1, 3])
def test_isotropic_linear_is_tight_for_t1_to_t7(k: int) -> None:
    tc = tight.isotropic_linear(k=k, d=5, n=6)
    allb = _check_all_listed(tc)
    # the bounds that are not listed are not tight for k > 1: the MLS forms lose exactly k
    if k == 3:
        assert allb["t3_weighted"].slack == pytest.approx(3.0, rel=1e-12)
        assert allb["t4_nmls"].slack == pytest.approx(3.0, rel=1e-12)
    # eta* from the Gram matrix of the per-sample Jacobians equals the closed form 2/rho^2
    assert bounds.mean_square_lr(tc.model, tc.X, 1) == pytest.approx(tc.lr, rel=1e-12)
    c = chain.corollary(tc.model, tc.X, tc.Y, tc.lr, tc.batch_size, n_hvp=12)
    assert abs(c.lvr.slack - 1) < TOL, str(c.lvr)
    assert all(abs(f - 1) < TOL for f in c.steps_lvr.values()), c.steps_lvr
    if k == 1:
        for b in (c.mls, c.mls_sharp, c.mls_qm):
            assert abs(b.slack - 1) < TOL, str(b)


def test_orthogonal_deep_linear_is_tight_at_every_layer() -> None:
    tc = tight.orthogonal_deep_linear(depth=3)
    allb = _check_all_listed(tc)
    # the first-layer weighted form is not tight: the other layers carry part of tr H
    assert allb["t1_weighted"].slack > 1.05


def test_scalar_output_t5_is_tight_against_the_hessian_definition() -> None:
    tc = tight.scalar_output()
    q = bounds.quantities(tc.model, tc.X)
    for name in q.layers:
        k_def = bounds.relative_flatness(tc.model, tc.X, name, method="hessian")
        assert _slack_err(bounds.t5_mls(q, name, k_def)) < 1e-10, name
        assert _slack_err(bounds.t5_lvr(q, name, k_def)) < 1e-10, name


def test_equal_units_make_the_adaptive_bound_tight() -> None:
    tc = tight.equal_units(d=4, m=3)
    net, X = tc.model, tc.X
    m = net[0].out_features
    J = geometry.input_jacobian(net, X)                          # ∂f/∂x, [n, 1, p]
    rel = (J * X[:, None, :]).pow(2).sum((1, 2)).mean()
    s_ad = bounds.adaptive_sharpness(net, X, params=["0.weight"], method="hessian")
    assert float(m * s_ad / rel) == pytest.approx(1.0, abs=1e-10)


def test_tied_tokens_make_both_shared_weight_bounds_tight() -> None:
    tc = tight.tied_tokens(T=3)
    s = bounds.shared_weight_terms(tc.model, tc.X, 1)
    assert s.T == 3
    assert _slack_err(s.position_wise()) < TOL and _slack_err(s.tied_le_untied()) < TOL


def test_equal_spectrum_and_rank_one_jacobians_make_the_ld_link_tight() -> None:
    J = tight.equal_spectrum_jacobians(N=4, d=7, scales=(0.2, 3.0))
    m = geometry.measures(J)
    torch.testing.assert_close(m.lvr_pow, m.frob_sq / m.r, rtol=1e-12, atol=0)
    torch.testing.assert_close(m.ld, torch.full_like(m.ld, 4.0), rtol=1e-12, atol=0)
    torch.testing.assert_close(m.mls**2, torch.tensor([0.04, 9.0], dtype=torch.float64))
    r1 = geometry.measures(tight.rank_one_jacobians(N=3, d=5, scales=(0.5, 2.0)))
    torch.testing.assert_close(r1.mls**2, r1.frob_sq, rtol=1e-12, atol=0)
    torch.testing.assert_close(r1.ld, torch.ones_like(r1.ld), rtol=1e-12, atol=0)


def test_t7_gd_is_tight_at_its_edge() -> None:
    assert bounds.t7_gd(4.0, 0.5).slack == 1.0
    assert not bounds.t7_gd(4.0, 0.5 * 1.02).holds()


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="k must be ≤ d"):
        tight.isotropic_linear(k=4, d=3)
    with pytest.raises(ValueError, match="radius"):
        tight.isotropic_linear(radius=-1.0)
    with pytest.raises(ValueError, match="scales"):
        tight.orthogonal_deep_linear(depth=4, scales=(1.0,))
    with pytest.raises(ValueError, match="m must be ≤ q"):
        tight.tied_tokens(q=2, m=3)
    with pytest.raises(ValueError, match="n must be an int"):
        tight.equal_units(n=0)
    assert math.isfinite(tight.isotropic_linear().lr)
