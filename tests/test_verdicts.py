"""Verdicts as calibrated statistics: the unit-level tests, the claim parts, and their
behaviour on studies with no effect (simulated and shuffled in time) and with a planted one."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from flatbook import analysis as A
from flatbook.analysis import calibration as K
from flatbook.analysis import claims as C

R, X, I, T = A.REPRODUCED, A.CONTRADICTED, A.INCONCLUSIVE, A.NOT_TESTED


# --------------------------------------------------------------------------- building blocks
def test_combine_essential_parts() -> None:
    assert A.combine([R, R, T], [True, True, False]) == R
    assert A.combine([R, X]) == X                      # a contradicted part is never "partly"
    assert A.combine([R, I]) == I
    assert A.combine([R, X], [True, False]) == R        # non-essential parts do not count
    assert A.combine([T, T]) == T and A.combine([I, T]) == I
    with pytest.raises(ValueError, match="unknown verdict"):
        A.combine(["partly"])
    with pytest.raises(ValueError, match="essential"):
        A.combine([R], [True, False])


def test_late_change_is_the_fitted_change() -> None:
    t = np.arange(11.0) * 10
    assert A.late_change(t, 3 + 0.2 * t) == pytest.approx(20.0)          # slope × length
    assert A.late_change(t, np.exp(-0.01 * t), log=True) == pytest.approx(-1.0)
    assert math.isnan(A.late_change(t[:2], t[:2]))
    assert math.isnan(A.late_change(t, -np.ones(11), log=True))
    # exchangeable values: the mean over all permutations is exactly 0
    rng = np.random.default_rng(0)
    v = rng.standard_normal(6)
    import itertools
    vals = [A.late_change(np.arange(6.0), np.array(p)) for p in itertools.permutations(v)]
    assert np.mean(vals) == pytest.approx(0.0, abs=1e-12)


def test_partial_correlation_removes_the_control() -> None:
    rng = np.random.default_rng(1)
    z = rng.standard_normal(400)
    x, y = z + 0.3 * rng.standard_normal(400), z + 0.3 * rng.standard_normal(400)
    assert A.partial_correlation(x, y) > 0.8                 # both driven by z
    assert abs(A.partial_correlation(x, y, z)) < 0.15        # nothing left given z
    # closed form r_xy·z = (r_xy − r_xz r_yz)/√((1 − r_xz²)(1 − r_yz²))
    r = np.corrcoef([x, y, z])
    want = (r[0, 1] - r[0, 2] * r[1, 2]) / math.sqrt((1 - r[0, 2] ** 2) * (1 - r[1, 2] ** 2))
    assert A.partial_correlation(x, y, z) == pytest.approx(want, abs=1e-12)


def test_comovement_null_mean_and_signal() -> None:
    rng = np.random.default_rng(2)
    a = np.cumsum(rng.standard_normal(30))
    b_same = a + 0.1 * rng.standard_normal(30)
    stat, null = A.comovement(a, b_same, n_null=300)
    assert stat > 0.8 and abs(null) < 0.2
    stat0, null0 = A.comovement(a, np.cumsum(rng.standard_normal(30)), n_null=300)
    assert abs(stat0 - null0) < 0.5


def test_bootstrap_t_and_mde_against_closed_forms() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal(40) + 1.0
    m, lo, hi, p = A.bootstrap_t(x, n_boot=4000)
    tq = stats.t.ppf(0.975, 39) * x.std(ddof=1) / math.sqrt(40)
    assert m == pytest.approx(x.mean()) and lo < m < hi
    assert (hi - lo) / 2 == pytest.approx(tq, rel=0.2)       # ≈ the t interval for normal data
    assert p < 1e-3
    assert A.mde(1.0, 20) == pytest.approx(
        (stats.t.ppf(0.975, 19) + stats.t.ppf(0.8, 19)) / math.sqrt(20))
    assert A.bootstrap_t([2.0, 2.0, 2.0])[1:3] == (2.0, 2.0)    # no spread: a point
    assert math.isnan(A.bootstrap_t([1.0])[1])


def test_unit_test_verdicts_and_units() -> None:
    up = A.unit_test(np.linspace(0.5, 1.5, 10), +1)
    assert up.verdict == R and up.lo > 0 and up.n_units == 10
    assert A.unit_test(np.linspace(0.5, 1.5, 10), -1).verdict == X
    assert A.unit_test([0.1, -0.2, 0.05, -0.1, 0.15, -0.05], +1).verdict == I
    assert A.unit_test([1.0, 2.0, 3.0], +1).verdict == I          # < MIN_UNITS units
    assert A.unit_test([], +1).verdict == T
    # runs sharing a unit (seed) are averaged first: 3 units, not 6
    t = A.unit_test([1, 1.2, 2, 2.2, 3, 3.2], +1, units=[0, 0, 1, 1, 2, 2])
    assert t.n_units == 3 and t.effect == pytest.approx(2.1)
    with pytest.raises(ValueError, match="expected"):
        A.unit_test([1, 2], 0)


def test_fraction_test_is_a_binomial_test() -> None:
    ft = A.fraction_test(12, 12, 0.5)
    assert ft.verdict == R and ft.pvalue == pytest.approx(2 * 0.5 ** 12)
    assert A.fraction_test(6, 12, 0.5).verdict == I
    assert A.fraction_test(0, 12, 0.5).verdict == X
    assert A.fraction_test(0, 0).verdict == T
    # coin flips at n = 22 with 12 successes (≥ 50%) are not evidence (old rule: "partly")
    assert A.fraction_test(12, 22, 0.5).verdict == I
    with pytest.raises(ValueError):
        A.fraction_test(13, 12)


# --------------------------------------------------------------------------- calibration
N_NULL_STUDIES = 1000
N_EFFECT_STUDIES = 300
MAX_NULL_RATE = 0.064          # nominal 5% two-sided, + ~2 Monte Carlo standard errors
MIN_POWER = 0.80
SIM = {"n_runs": 12, "n_measure": 16, "onset": 1, "sd_within": 0.25}
"""Shape of the simulated studies: the default store's (12 independent runs, 16 measurements,
interpolation from the second on) with within-run noise a quarter of the between-run spread."""


def _trend_verdicts(study: K.RunSet, seed: int, n_boot: int = 400) -> dict[str, str]:
    """The three trend claims through the claim functions evaluate_claims uses."""
    out = {}
    parts, _ = C.claim_late_fall(study, n_boot=n_boot, seed=seed, n_null=60)
    out["late_fall"] = A.combine([p.verdict for p in parts], [p.essential for p in parts])
    parts, _ = C.claim_ld_differs(study, n_boot=n_boot, seed=seed)
    out["ld_differs"] = parts[0].verdict
    parts, _ = C.claim_test_sharpness_rises(study, n_boot=n_boot, seed=seed)
    out["test_sharpness_rises"] = A.combine([p.verdict for p in parts])
    return out


def test_vectorised_calibration_path_matches_the_claim_functions() -> None:
    """The calibration below runs the claims vectorised over studies; on single studies the
    run-level effects are those of the claim functions and the verdicts agree."""
    agree = total = 0
    for s in range(12):
        arr = K.simulate_arrays(1, seed=s, effect=0.3 * (s % 3), comove=0.3, **SIM)
        rows = K.trend_verdicts_rows(arr, SIM["onset"])
        st = K.simulated_study(seed=s, effect=0.3 * (s % 3), comove=0.3, **SIM)
        parts, _ = C.claim_late_fall(st, n_boot=400, seed=0, n_null=60)
        assert parts[0].effect == pytest.approx(float(rows["late_fall"]["parts"][0]["effect"][0]))
        assert parts[1].effect == pytest.approx(float(rows["late_fall"]["parts"][1]["effect"][0]))
        one = _trend_verdicts(st, seed=0)
        for k, v in one.items():
            agree += v == rows[k]["verdict"][0]
            total += 1
    assert agree / total >= 0.9, (agree, total)     # bootstrap draws differ, not the rule


def test_no_effect_decides_at_most_the_nominal_rate() -> None:
    arr = K.simulate_arrays(N_NULL_STUDIES, seed=1, **SIM)
    rows = K.trend_verdicts_rows(arr, SIM["onset"], seed=1)
    votes = {k: list(v["verdict"]) for k, v in rows.items()}
    other = K.simulate_arrays(N_NULL_STUDIES, seed=2, **SIM)
    votes["label_noise_flatter"] = list(K.paired_verdicts_rows(arr, other, SIM["onset"]))
    for k, r in K.decision_rates(votes).items():
        assert r[R] + r[X] <= MAX_NULL_RATE, (k, r)


def test_planted_effect_is_found() -> None:
    arr = K.simulate_arrays(N_EFFECT_STUDIES, seed=3, effect=0.5, comove=0.5, **SIM)
    rows = K.trend_verdicts_rows(arr, SIM["onset"], seed=3)
    votes = {k: list(v["verdict"]) for k, v in rows.items()}
    noise = K.simulate_arrays(N_EFFECT_STUDIES, seed=4, effect=0.5, **SIM)
    plain = K.simulate_arrays(N_EFFECT_STUDIES, seed=5, **SIM)
    votes["label_noise_flatter"] = list(K.paired_verdicts_rows(plain, noise, SIM["onset"]))
    for k, r in K.decision_rates(votes).items():
        assert r[R] >= MIN_POWER and r[X] == 0.0, (k, r)


def test_shuffle_keeps_values_and_order_columns() -> None:
    st = K.simulated_study(seed=5, effect=2.0, **SIM)
    sh = K.shuffle_late_phase(st, seed=1)
    for a, b in zip(st.trajectories, sh.trajectories, strict=True):
        assert np.array_equal(a["step"], b["step"]) and np.array_equal(a["train_loss"],
                                                                        b["train_loss"])
        assert np.array_equal(np.sort(a["trace_gn"]), np.sort(b["trace_gn"]))
        assert not np.array_equal(a["trace_gn"], b["trace_gn"])
    # a strong planted trend is reproduced before and not after shuffling
    assert _trend_verdicts(st, 0)["ld_differs"] == R
    assert _trend_verdicts(sh, 0)["ld_differs"] != R


# --------------------------------------------------------------------------- a real store
@pytest.fixture(scope="module")
def small_real_study(tmp_path_factory: pytest.TempPathFactory) -> A.Study:
    """A small real sweep of the default setting: 8 independent runs of the digits MLP on 150
    points, 12 measurements each (about a minute on 2 cores)."""
    store = tmp_path_factory.mktemp("store")
    return A.load_study("digits-mlp", lrs=[0.25, 0.5], batch_sizes=[16, 64], seeds=[0, 1],
                        steps=440, measure_every=40, n_train=150, results_dir=store,
                        loss_threshold=0.05)


def test_shuffle_in_time_on_a_real_store_rarely_decides(small_real_study: A.Study) -> None:
    st = small_real_study
    assert len(st.interpolating) >= 6 and len(set(A.claims.run_units(st, st.finished))) == 8
    decided: dict[str, int] = {}
    n = 40
    for r in range(n):
        for k, v in A.trend_claims(K.shuffle_late_phase(st, seed=r), n_boot=300, seed=r).items():
            decided[k] = decided.get(k, 0) + (v in A.DECIDED)
    for k, d in decided.items():
        assert d <= 0.15 * n, (k, d)      # the acceptance rate of a shuffle null (nominal 5%)
