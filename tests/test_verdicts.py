"""The building blocks of the descriptive statistics (unit tests, bootstrap-t, co-movement,
fitted changes). The plan's decision rules are tested in tests/test_rules.py and calibrated
under the nulls N1–N6 in tests/test_calibration.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from flatbook import analysis as A

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
