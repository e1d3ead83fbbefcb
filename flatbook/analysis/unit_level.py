"""Unit-level statistics of the experiment analysis: the fitted change of a quantity over a
window, co-movement along a run, and the tests that turn one summary per independent unit (a
run, or a seed) into a verdict — studentized bootstrap (:func:`unit_test`), the minimum
detectable effect (:func:`mde`) and the exact binomial test of a fraction
(:func:`fraction_test`). Re-exported by :mod:`flatbook.analysis.stats`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

__all__ = ["ALPHA", "MIN_UNITS", "FractionTest", "UnitTest", "bootstrap_t", "bootstrap_t_rows",
           "comovement", "comovement_rows", "fraction_test", "late_change", "late_change_rows",
           "mde", "partial_correlation", "unit_test", "unit_tests_rows", "unit_values"]

ALPHA = 0.05
"""Nominal two-sided level of every verdict (95% intervals)."""
MIN_UNITS = 5
"""Fewer independent units than this: no verdict (inconclusive), whatever the interval."""


def late_change(t: ArrayLike, v: ArrayLike, log: bool = False) -> float:
    """Fitted change of v over a window: the least-squares slope of v (or log v) on t times
    the window's length, b̂·(t_end − t_start) with b̂ = Σ(t−t̄)(v−v̄)/Σ(t−t̄)². In log units
    (``log=True``) it is the fitted relative change (−0.1 ≈ a 10% fall). NaN with fewer than
    3 finite points (or v ≤ 0 when ``log``).

    Under a shuffle-in-time null (values exchangeable in time) its expectation is exactly 0,
    which is what the trend claims test against."""
    ta = np.asarray(t, dtype=float).ravel()
    va = np.asarray(v, dtype=float).ravel()
    if ta.shape != va.shape:
        raise ValueError(f"t and v must have the same length; got {ta.size} and {va.size}")
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            va = np.where(va > 0, np.log(np.where(va > 0, va, 1.0)), np.nan)
    keep = np.isfinite(ta) & np.isfinite(va)
    ta, va = ta[keep], va[keep]
    if ta.size < 3 or np.ptp(ta) == 0:
        return math.nan
    tc = ta - ta.mean()
    return float((tc * (va - va.mean())).sum() / (tc * tc).sum() * np.ptp(ta))


def late_change_rows(t: ArrayLike, V: ArrayLike, log: bool = False) -> np.ndarray:
    """:func:`late_change` of every row of V [M, T] on the shared times t [T] (all values
    finite; positive when ``log``), shape [M]."""
    ta = np.asarray(t, dtype=float).ravel()
    Va = np.asarray(V, dtype=float)
    if Va.shape[-1] != ta.size:
        raise ValueError(f"V rows have {Va.shape[-1]} values for {ta.size} times")
    if log:
        Va = np.log(Va)
    tc = ta - ta.mean()
    return (Va - Va.mean(axis=-1, keepdims=True)) @ tc / (tc @ tc) * np.ptp(ta)


def partial_correlation(x: ArrayLike, y: ArrayLike, z: ArrayLike | None = None) -> float:
    """Pearson correlation of x and y after removing from both their least-squares fit on z
    (a control variable; plain correlation if z is None): r_{xy·z} = (r_xy − r_xz r_yz) /
    √((1 − r_xz²)(1 − r_yz²)). NaN with fewer than 4 finite triples or a constant residual."""
    cols = [np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()]
    if z is not None:
        cols.append(np.asarray(z, dtype=float).ravel())
    if len({c.size for c in cols}) != 1:
        raise ValueError(f"x, y (and z) must have the same length; got {[c.size for c in cols]}")
    m = np.all([np.isfinite(c) for c in cols], axis=0)
    cols = [c[m] for c in cols]
    if cols[0].size < 4:
        return math.nan
    xa, ya = cols[0] - cols[0].mean(), cols[1] - cols[1].mean()
    if z is not None:
        za = cols[2] - cols[2].mean()
        zz = float((za * za).sum())
        if zz > 0:
            xa = xa - za * (za * xa).sum() / zz
            ya = ya - za * (za * ya).sum() / zz
    den = math.sqrt(float((xa * xa).sum() * (ya * ya).sum()))
    if not den > 1e-300:
        return math.nan
    return float((xa * ya).sum() / den)


def _partial_rows(x: np.ndarray, y: np.ndarray, z: np.ndarray | None) -> np.ndarray:
    """Partial correlation along the last axis of x, y [..., T] given a control z that
    broadcasts against them (see :func:`partial_correlation`); NaN where a residual is
    constant."""
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    if z is not None:
        zc = z - z.mean(axis=-1, keepdims=True)
        zz = (zc * zc).sum(-1, keepdims=True)
        safe = np.where(zz > 0, zz, 1.0)
        xc = xc - zc * np.where(zz > 0, (xc * zc).sum(-1, keepdims=True) / safe, 0.0)
        yc = yc - zc * np.where(zz > 0, (yc * zc).sum(-1, keepdims=True) / safe, 0.0)
    den = np.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-300, (xc * yc).sum(-1) / np.where(den > 1e-300, den, 1.0),
                        np.nan)


def comovement_rows(A: ArrayLike, B: ArrayLike, control: ArrayLike | None = None,
                    n_null: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`comovement` of every row pair of A, B [M, T] (finite), with a control [M, T]:
    (statistic [M], null mean [M]); the null shuffles each row of B with its own seeded
    permutations (one [M, n_null, T] array)."""
    Aa, Ba = np.asarray(A, dtype=float), np.asarray(B, dtype=float)
    dA, dB = np.diff(Aa, axis=1), np.diff(Ba, axis=1)
    dZ = None if control is None else np.diff(np.asarray(control, dtype=float), axis=1)
    M, T = Ba.shape
    stat = _partial_rows(dA, dB, dZ)
    rng = np.random.default_rng(seed)
    perms = np.argsort(rng.random((M, int(n_null), T)), axis=2)
    dBn = np.diff(np.take_along_axis(Ba[:, None, :], perms, axis=2), axis=2)
    null = _partial_rows(dA[:, None, :], dBn, None if dZ is None else dZ[:, None, :])
    with np.errstate(invalid="ignore"):
        return stat, np.nanmean(null, axis=1)


def comovement(a: ArrayLike, b: ArrayLike, control: ArrayLike | None = None,
               n_null: int = 200, seed: int = 0) -> tuple[float, float]:
    """Co-movement of two series along one run: the partial correlation of their increments
    Δa_t, Δb_t given the increments of ``control`` (e.g. Δ log loss: a loss still falling
    moves both), and its mean under the null that shuffles b in time independently of a
    (``n_null`` seeded shuffles, vectorised). Returns (statistic, null mean); the excess
    statistic − null mean is the run-level summary (expectation 0 when the two series are
    unrelated). NaNs with fewer than 5 finite points."""
    aa = np.asarray(a, dtype=float).ravel()
    bb = np.asarray(b, dtype=float).ravel()
    cc = None if control is None else np.asarray(control, dtype=float).ravel()
    m = np.isfinite(aa) & np.isfinite(bb)
    if cc is not None:
        m &= np.isfinite(cc)
    aa, bb = aa[m], bb[m]
    if aa.size < 5:
        return math.nan, math.nan
    dz = np.diff(cc[m]) if cc is not None else None
    da = np.diff(aa)
    stat = float(_partial_rows(da[None], np.diff(bb)[None], dz)[0])
    if not math.isfinite(stat):
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    perms = np.argsort(rng.random((int(n_null), bb.size)), axis=1)
    null = _partial_rows(np.broadcast_to(da, (int(n_null), da.size)), np.diff(bb[perms], axis=1),
                         dz)
    null = null[np.isfinite(null)]
    return stat, float(null.mean()) if null.size else math.nan


@dataclass(frozen=True)
class UnitTest:
    """A claim's part tested on one summary per independent unit (a run with its own data and
    initialisation; or a seed, when cells of a sweep share one).

    Attributes:
        effect: mean over units of the run-level summary, minus ``null`` (the effect size).
        lo, hi: 95% studentized-bootstrap interval of the effect.
        n_units: independent units with a defined summary.
        sd: standard deviation of the unit summaries (between-unit spread).
        mde: minimum detectable effect: |effect| that a two-sided test at α = 0.05 detects
            with 80% power, (t_{0.975, n−1} + t_{0.8, n−1}) · sd / √n.
        pvalue: two-sided bootstrap-t p-value for effect = 0.
        expected: the claimed sign (+1 / −1).
        verdict: reproduced (interval on the claimed side of 0), contradicted (on the other
            side), inconclusive (interval contains 0, or fewer than :data:`MIN_UNITS` units),
            not tested (no unit).
    """

    effect: float
    lo: float
    hi: float
    n_units: int
    sd: float
    mde: float
    pvalue: float
    expected: int
    verdict: str

    def as_dict(self) -> dict[str, object]:
        """The test's fields as a dict (``effect``, ``lo``, ``hi``, ``n_units``, …)."""
        return asdict(self)


def unit_values(values: ArrayLike, units: Sequence[object] | None = None) -> np.ndarray:
    """One value per independent unit: the mean of the finite ``values`` sharing a unit label
    (``units`` None: every value is its own unit). Shape [n_units]."""
    va = np.asarray(values, dtype=float).ravel()
    if units is None:
        return va[np.isfinite(va)]
    if len(units) != va.size:
        raise ValueError(f"units has {len(units)} labels for {va.size} values")
    groups: dict[object, list[float]] = {}
    for u, v in zip(units, va, strict=True):
        if math.isfinite(v):
            groups.setdefault(u, []).append(float(v))
    return np.array([np.mean(g) for g in groups.values()])


def _bt_rows(Xa: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray,
                                                              np.ndarray]:
    """Row means m [S], standard errors se [S] and |T*| = |x̄* − x̄|/se* [S, n_boot] (+∞
    where a resample has no spread: counted as extreme, which widens the interval) of X
    [S, n]."""
    S, n = Xa.shape
    m = Xa.mean(axis=1)
    se = Xa.std(axis=1, ddof=1) / math.sqrt(n)
    idx = np.random.default_rng(seed).integers(0, n, size=(S, int(n_boot), n))
    xb = np.take_along_axis(Xa[:, None, :], idx, axis=2)
    mb, sb = xb.mean(axis=2), xb.std(axis=2, ddof=1) / math.sqrt(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        tb = np.where(sb > 0, np.abs((mb - m[:, None]) / sb), np.inf)
    return m, se, tb


def bootstrap_t_rows(X: ArrayLike, n_boot: int = 2000, level: float = 1 - ALPHA, seed: int = 0,
                     levels: Sequence[float] = ()) -> tuple[np.ndarray, ...]:
    """:func:`bootstrap_t` of every row of X [S, n] (finite values, same n per row) at once:
    (mean, lo, hi, p) each [S], then (lo, hi) at each of ``levels`` from the same resamples.
    One [S, n_boot, n] index array from one seeded generator — the row-wise form the
    calibration studies use; :func:`bootstrap_t` is its S = 1 case."""
    Xa = np.asarray(X, dtype=float)
    if Xa.ndim != 2:
        raise ValueError(f"X must be 2-D [S, n]; got shape {Xa.shape}")
    S, n = Xa.shape
    nan = np.full(S, math.nan)
    if n < 2:
        m0 = Xa.mean(axis=1) if n else nan.copy()
        return (m0, nan.copy(), nan.copy(), nan.copy()) + (nan.copy(), nan.copy()) * len(levels)
    m, se, tb = _bt_rows(Xa, n_boot, seed)
    flat = ~(se > 0)        # every unit the same value: a degenerate (point) interval
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.mean(tb >= np.abs(m / se)[:, None], axis=1)
    p = np.where(flat, np.where(m == 0, 1.0, 0.0), p)
    out = [m]
    for j, lev in enumerate((level, *levels)):
        q = np.quantile(np.where(flat[:, None], 0.0, tb), lev, axis=1)
        lo, hi = np.where(flat, m, m - q * se), np.where(flat, m, m + q * se)
        out += [lo, hi] if j else [lo, hi, p]
    return tuple(out)


def bootstrap_t(x: ArrayLike, n_boot: int = 2000, level: float = 1 - ALPHA, seed: int = 0
                ) -> tuple[float, float, float, float]:
    """(mean, lo, hi, p) of the mean of x: *symmetric* studentized bootstrap interval
    x̄ ± q_level(|T*|)·se, with T* = (x̄* − x̄)/se* over ``n_boot`` seeded resamples and
    se = s/√n, and the two-sided p-value P(|T*| ≥ |T|) of T = x̄/se. The symmetric form holds
    its level better than the percentile or equal-tailed intervals with 5–20 units (checked
    in tests/test_verdicts.py). Non-finite values are dropped; NaNs with fewer than 2 values;
    a point interval when every value is the same."""
    xa = np.asarray(x, dtype=float).ravel()
    xa = xa[np.isfinite(xa)]
    if xa.size < 2:
        return (float(xa.mean()) if xa.size else math.nan), math.nan, math.nan, math.nan
    m, lo, hi, p = bootstrap_t_rows(xa[None, :], n_boot, level, seed)
    return float(m[0]), float(lo[0]), float(hi[0]), float(p[0])


@functools.lru_cache(maxsize=256)
def _t_sum(alpha: float, power: float, df: int) -> float:
    return float(stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df))


def mde(sd: float, n: int, alpha: float = ALPHA, power: float = 0.8) -> float:
    """Minimum detectable effect of a one-sample test of the mean: (t_{1−α/2, n−1} +
    t_{power, n−1}) · sd / √n (NaN for n < 2)."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    return _t_sum(float(alpha), float(power), int(n) - 1) * sd / math.sqrt(n)


def unit_test(values: ArrayLike, expected: int, units: Sequence[object] | None = None,
              null: float = 0.0, n_boot: int = 2000, seed: int = 0,
              min_units: int = MIN_UNITS, n_parts: int = 1) -> UnitTest:
    """Test a claimed sign of the mean of run-level summaries over independent units.

    ``values`` [n_runs] are averaged within ``units`` (:func:`unit_values`), ``null`` is
    subtracted, and the effect's 95% interval comes from :func:`bootstrap_t`. The verdict
    (:class:`UnitTest`) is "reproduced" when the interval lies on the ``expected`` side of 0,
    "contradicted" when the (1 − α/``n_parts``) interval lies on the other side (Bonferroni:
    a claim with k essential parts is contradicted when *any* part is, so each part is held
    to α/k; reproduction needs *every* part and keeps α), otherwise (or with fewer than
    ``min_units`` units) "inconclusive"; "not tested" with no unit.
    """
    from flatbook.analysis.verdicts import CONTRADICTED, INCONCLUSIVE, NOT_TESTED, REPRODUCED

    if expected not in (1, -1):
        raise ValueError(f"expected must be +1 or -1; got {expected!r}")
    u = unit_values(values, units) - float(null)
    n = int(u.size)
    if n == 0:
        return UnitTest(math.nan, math.nan, math.nan, 0, math.nan, math.nan, math.nan,
                        expected, NOT_TESTED)
    if n >= 2:
        m_, lo_, hi_, p_, clo_, chi_ = bootstrap_t_rows(
            u[None, :], n_boot=n_boot, seed=seed, levels=(1 - ALPHA / max(1, int(n_parts)),))
        m, lo, hi, p, clo, chi = (float(a[0]) for a in (m_, lo_, hi_, p_, clo_, chi_))
    else:
        m, lo, hi, p, clo, chi = float(u[0]), math.nan, math.nan, math.nan, math.nan, math.nan
    sd = float(u.std(ddof=1)) if n > 1 else math.nan
    if n < min_units or not (math.isfinite(lo) and math.isfinite(hi)):
        verdict = INCONCLUSIVE
    elif (lo > 0) if expected == 1 else (hi < 0):
        verdict = REPRODUCED
    elif (chi < 0) if expected == 1 else (clo > 0):
        verdict = CONTRADICTED
    else:
        verdict = INCONCLUSIVE
    return UnitTest(m, lo, hi, n, sd, mde(sd, n), p, expected, verdict)


def unit_tests_rows(U: ArrayLike, expected: int, n_boot: int = 2000, seed: int = 0,
                    min_units: int = MIN_UNITS, n_parts: int = 1) -> dict[str, np.ndarray]:
    """:func:`unit_test` (no unit grouping, null 0) of every row of U [S, n] at once:
    arrays ``effect``, ``lo``, ``hi``, ``p`` [S] and ``verdict`` [S] (strings) — the form the
    calibration studies use."""
    from flatbook.analysis.verdicts import CONTRADICTED, INCONCLUSIVE, REPRODUCED

    Ua = np.asarray(U, dtype=float)
    m, lo, hi, p, clo, chi = bootstrap_t_rows(Ua, n_boot=n_boot, seed=seed,
                                              levels=(1 - ALPHA / max(1, int(n_parts)),))
    good = (lo > 0) if expected == 1 else (hi < 0)
    bad = (chi < 0) if expected == 1 else (clo > 0)
    verdict = np.where(good, REPRODUCED, np.where(bad, CONTRADICTED, INCONCLUSIVE))
    if Ua.shape[1] < min_units:
        verdict[:] = INCONCLUSIVE
    return {"effect": m, "lo": lo, "hi": hi, "p": p, "verdict": verdict}


@dataclass(frozen=True)
class FractionTest:
    """A claim that holds in *each* case (run), tested by an exact binomial test of the
    fraction k/n against the stated null fraction p0 (two-sided, α = 0.05): reproduced if
    k/n is significantly above p0, contradicted if significantly below, else inconclusive;
    not tested with n = 0. ``lo``, ``hi``: Clopper–Pearson 95% interval of the fraction."""

    k: int
    n: int
    p0: float
    fraction: float
    lo: float
    hi: float
    pvalue: float
    verdict: str


def fraction_test(k: int, n: int, p0: float = 0.5, alpha: float = ALPHA) -> FractionTest:
    """Binomial test of k successes in n cases against the null fraction ``p0``
    (scipy.stats.binomtest, two-sided; see :class:`FractionTest`)."""
    from flatbook.analysis.verdicts import CONTRADICTED, INCONCLUSIVE, NOT_TESTED, REPRODUCED

    if not 0 < p0 < 1:
        raise ValueError(f"p0 must be in (0, 1); got {p0}")
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"need 0 ≤ k ≤ n; got k={k}, n={n}")
    if n == 0:
        return FractionTest(k, n, p0, math.nan, math.nan, math.nan, math.nan, NOT_TESTED)
    res = stats.binomtest(int(k), int(n), p0)
    ci = res.proportion_ci(1 - alpha, method="exact")
    f = k / n
    if res.pvalue < alpha:
        verdict = REPRODUCED if f > p0 else CONTRADICTED
    else:
        verdict = INCONCLUSIVE
    return FractionTest(int(k), int(n), float(p0), f, float(ci.low), float(ci.high),
                        float(res.pvalue), verdict)
