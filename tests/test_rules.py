"""The plan's decision rules (R4) and the mechanism identity (R5) against closed forms."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from flatbook.analysis import mechanism as M
from flatbook.analysis import rules as RL
from flatbook.analysis import window as W

R_, X_, I_, T_ = "reproduced", "contradicted", "inconclusive", "not tested"


def test_signflip_exact_p_is_the_enumeration() -> None:
    u = np.array([0.9, 1.1, -0.2, 0.7, 0.4, 1.3, 0.8, -0.1])
    res = RL.signflip_test(u, +1)
    means = [np.mean(u * s) for s in itertools.product((1, -1), repeat=u.size)]
    assert res["p_claimed"][0] == pytest.approx(np.mean(np.array(means) >= u.mean() - 1e-12))
    assert res["verdict"][0] == R_ and RL.signflip_test(u, -1)["verdict"][0] == X_
    q = stats.t.ppf(0.975, 7) * u.std(ddof=1) / math.sqrt(8)
    assert res["hi"][0] - res["lo"][0] == pytest.approx(2 * q)
    assert res["mde_sd"][0] == pytest.approx(
        (stats.t.ppf(0.975, 7) + stats.t.ppf(0.8, 7)) / math.sqrt(8))
    assert RL.signflip_test(u[:3], +1)["verdict"][0] == I_          # too few units
    assert RL.signflip_test(np.zeros((1, 0)), +1)["verdict"][0] == T_
    with pytest.raises(ValueError, match="expected"):
        RL.signflip_test(u, 0)


def test_contradiction_is_held_to_alpha_over_k() -> None:
    p_c, p_o = np.array([0.5, 0.5, 0.01]), np.array([0.02, 0.004, 0.9])
    assert list(RL.decide(p_c, p_o, 36, n_parts=4)) == [I_, X_, R_]


def test_holm_matches_the_step_down_rule() -> None:
    adj, rej = RL.holm([0.01, 0.04, 0.03, float("nan"), 0.005])
    assert adj[4] == pytest.approx(0.02) and adj[0] == pytest.approx(0.03)
    assert adj[2] == pytest.approx(0.06) and adj[1] == pytest.approx(0.06)
    assert list(rej) == [True, False, False, False, True] and math.isnan(adj[3])


def test_factor_test_two_levels_is_the_stratified_difference_of_means() -> None:
    rng = np.random.default_rng(0)
    lv = np.repeat([0.25, 0.5], 12)
    st = np.tile(np.repeat([16, 64], 6), 2)
    y = rng.standard_normal(24) - 0.8 * (lv == 0.5) + 0.5 * (st == 64)
    res = RL.factor_test(y, lv, list(st), -1, n_perm=4000)
    want = np.mean([y[(lv == 0.5) & (st == b)].mean() - y[(lv == 0.25) & (st == b)].mean()
                    for b in (16, 64)])
    assert res["effect"][0] == pytest.approx(want)
    assert res["lo"][0] < want < res["hi"][0] and res["verdict"][0] == R_
    # the stratum effect (B) does not leak into the η test: permutations stay in strata
    flat = RL.factor_test(0.5 * (st == 64) + 0.01 * rng.standard_normal(24), lv, list(st), -1,
                          n_perm=2000)
    assert flat["verdict"][0] == I_


def test_tost_says_small_only_inside_the_margin() -> None:
    assert RL.tost(np.array([0.01]), np.array([0.03]), 35, 0.2, 36)["verdict"][0] == R_
    assert RL.tost(np.array([0.15]), np.array([0.1]), 35, 0.2, 36)["verdict"][0] == I_
    assert RL.tost(np.array([0.6]), np.array([0.05]), 35, 0.2, 36)["verdict"][0] == X_


def test_fraction_rule_needs_every_run() -> None:
    assert RL.fraction_rule(36, 36) == R_ and RL.fraction_rule(35, 36) == X_
    assert RL.fraction_rule(0, 0) == T_
    with pytest.raises(ValueError):
        RL.fraction_rule(3, 2)


def test_coupling_finds_shared_increments_not_shared_shape() -> None:
    rng = np.random.default_rng(1)
    R, T = 12, 30
    t = np.linspace(0, 1, T)
    shape = np.exp(-t / 0.2)
    common = rng.standard_normal((R, T)) * 0.05
    x = shape + common + 0.02 * rng.standard_normal((R, T))
    y = shape + common + 0.02 * rng.standard_normal((R, T))
    L = np.log(1e-3) - t[None] * np.ones((R, 1))
    cells = [0] * 6 + [1] * 6
    Z = RL.coupling_matrix(x, y, L, np.zeros(R, int), cells)
    assert np.isnan(Z[0, 0, 6]) and np.isfinite(Z[0, 0, 1])          # only within cells
    assert RL.coupling_test(Z, cells, n_perm=1000)["verdict"][0] == R_
    # two independent decays of the same shape: correlated increments, not coupling
    xs = shape + 0.02 * rng.standard_normal((R, T))
    ys = shape + 0.02 * rng.standard_normal((R, T))
    Z0 = RL.coupling_matrix(xs, ys, L, np.zeros(R, int), cells)
    assert RL.coupling_test(Z0, cells, n_perm=1000)["verdict"][0] != R_


def test_fitted_change_and_end_values() -> None:
    t = np.arange(10.0) * 100
    V = np.stack([3 + 0.002 * t, np.where(t >= 300, -0.001 * t, 99.0)])
    st = np.array([0, 3])
    ch = W.fitted_change(t, V, np.arange(10)[None] >= st[:, None])
    assert ch[0] == pytest.approx(1.8) and ch[1] == pytest.approx(-0.6)
    ev = W.end_values(V, st)
    assert ev[0] == pytest.approx(np.mean(V[0, 7:])) and ev[1] == pytest.approx(
        np.mean(V[1, 8:]))


def test_rank_collapse_trend_is_kendalls_tau_with_minus_inf_smallest() -> None:
    t = np.arange(8.0)
    falls = np.array([5.0, 4.0, 3.5, 3.0, 2.0, -np.inf, -np.inf, -np.inf])
    V = np.stack([falls, np.array([1.0, 2, 3, 4, 5, 6, 7, 8])])
    m = np.ones(V.shape, bool)
    tau = W.kendall_change(t, V, m)
    assert tau[1] == pytest.approx(1.0)
    assert tau[0] == pytest.approx(stats.kendalltau(t, np.where(np.isinf(falls), -99,
                                                                 falls)).statistic)
    # a ±∞ anywhere in a study's windows: τ for all of its runs; else the fitted change
    assert np.allclose(W.trend_change(t, V, m), tau)
    fin = np.where(np.isinf(V), 0.0, V)
    assert np.allclose(W.trend_change(t, fin, m), W.fitted_change(t, fin, m))
    # the switch is per study (leading axis): a finite study keeps its fitted change
    both = W.trend_change(t, np.stack([V, fin]), m)
    assert np.allclose(both[0], tau) and np.allclose(both[1], W.fitted_change(t, fin, m))
    assert W.end_values(V, np.zeros(2, int))[0] == -np.inf


def test_factor_test_ranks_minus_inf_and_leaves_out_nan_runs() -> None:
    rng = np.random.default_rng(3)
    lv = np.repeat([0.1, 0.3], 6).astype(float)
    st = [16, 64] * 6
    y = rng.standard_normal(12) + 2.0 * (lv > 0.2)
    y[:2] = -np.inf
    a = RL.factor_test(y, lv, st, +1, n_perm=2000)
    b = RL.factor_test(stats.rankdata(y), lv, st, +1, n_perm=2000)
    assert a["effect"][0] == pytest.approx(b["effect"][0]) and a["verdict"][0] == R_
    y2 = y.copy()
    y2[5] = np.nan
    keep = np.arange(12) != 5
    c = RL.factor_test(y2, lv, st, +1, n_perm=2000)
    d = RL.factor_test(stats.rankdata(y[keep]), lv[keep], [s for s, k in zip(st, keep,
                                                                            strict=True) if k],
                       +1, n_perm=2000)
    assert c["n"][0] == 11 and c["effect"][0] == pytest.approx(d["effect"][0])
    u = np.array([[0.5, np.nan, 0.7, 0.9, 0.4, 0.8]])
    assert RL.signflip_test(u, +1)["n"][0] == 5


def test_coupling_is_one_sided() -> None:
    R = 12
    cells = [0] * 6 + [1] * 6
    Z = np.full((R, R), 0.5) - 1.5 * np.eye(R)          # real pairs far below re-pairings
    res = RL.coupling_test(Z, cells, n_perm=500)
    assert res["p_other"][0] < 0.01 and res["verdict"][0] == I_
    assert RL.coupling_test(-Z, cells, n_perm=500)["verdict"][0] == R_


def test_mechanism_terms_add_up_to_the_total_to_rounding() -> None:
    rng = np.random.default_rng(2)
    R, T = 7, 15
    n, r = 50, 10
    step = np.arange(T) * 10.0
    series = {"train_loss": np.full((R, T), 1e-4), "r": np.full((R, T), float(r))}
    for key in ("log_lvr_mean",):
        series[key] = rng.normal(-5, 1, (R, T))
    for key in ("trace_gn", "l1_weight_norm", "t1_weighted_lhs", "frob_sq_mean"):
        series[key] = np.exp(rng.normal(0, 1, (R, T)))
    series["t1_weighted_slack"] = (series["l1_weight_norm"] ** 2 * series["trace_gn"]
                                   / series["t1_weighted_lhs"])
    series["log_lvr_finite_frac"] = np.ones((R, T))
    series["log_lvr_finite_frac"][0, 5] = 1 - 1 / n          # one point collapses in run 0
    p = W.panel_from_arrays(step, series, np.zeros(R, int), np.ones(R), np.ones(R))
    d = M.decompose(p)
    ok = d["full_rank"]
    assert not ok[0] and ok[1:].all() and d["collapse_share"][0] == pytest.approx(1 / n)
    assert np.abs(d["residual"][ok]).max() < 1e-12 * np.abs(d["total"][ok]).max() + 1e-12
    assert np.allclose(d["slack"][ok], -d["slack_recorded"][ok])
    # at every measurement the identity holds exactly (the constant is −log r)
    tt = M.terms_at(series)
    tot = sum(tt[k] for k in M.TERMS) + tt["const"]
    assert np.allclose(tot, tt["total"], atol=1e-12)
    s = M.mechanism_sentence(d)
    assert "6 of 7 runs" in s and "nats" in s
    assert not d["spread_separated"] and np.all(d["spread"][ok] == 0) and "spread" in s
    # with mean_i log ‖J_i‖² recorded (Jensen: ≤ log mean) the spread is split off isotropy
    series[M.SPREAD_KEY] = np.log(series["frob_sq_mean"]) - rng.uniform(0, 1, (R, T))
    d2 = M.decompose(W.panel_from_arrays(step, series, np.zeros(R, int), np.ones(R),
                                         np.ones(R)))
    assert d2["spread_separated"] and np.abs(d2["residual"][ok]).max() < 1e-9
    assert np.allclose(d2["spread"][ok] + d2["isotropy"][ok], d["isotropy"][ok])
    assert "does not record" not in M.mechanism_sentence(d2)


def test_mechanism_figure_has_a_panel_per_term() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from flatbook import plots
    from flatbook.plots_mechanism import mechanism_figure

    rng = np.random.default_rng(3)
    d = {k: rng.standard_normal(8) for k in ("total", *M.TERMS, "bound")}
    d["full_rank"] = np.arange(8) > 0
    fig = mechanism_figure(d)
    assert sum(ax.get_visible() for ax in fig.axes) == len(M.TERMS) + 2
    assert not plots.small_text(fig)
