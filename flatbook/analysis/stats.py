"""Statistics of the experiment analysis: rank correlations (Kendall τ_b, Spearman ρ) with
percentile bootstrap intervals (across runs, and resampling independent units), trends along a
trajectory; and, re-exported from :mod:`flatbook.analysis.unit_level`, the unit-level tests
that turn run summaries into verdicts (see :mod:`flatbook.analysis.claims`)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from flatbook.analysis.unit_level import (
    ALPHA,
    MIN_UNITS,
    FractionTest,
    UnitTest,
    bootstrap_t,
    bootstrap_t_rows,
    comovement,
    comovement_rows,
    fraction_test,
    late_change,
    late_change_rows,
    mde,
    partial_correlation,
    unit_test,
    unit_tests_rows,
    unit_values,
)

__all__ = [
    # rank correlations and trends (this module)
    "METHODS", "Correlation", "bootstrap_statistics", "bootstrap_units_correlation",
    "correlation", "correlation_matrix", "correlation_table", "mean_ci", "rank_correlation",
    "relative_change", "trajectory_correlations", "trend",
    # unit-level tests (flatbook.analysis.unit_level)
    "ALPHA", "MIN_UNITS", "FractionTest", "UnitTest", "bootstrap_t", "bootstrap_t_rows",
    "comovement", "comovement_rows", "fraction_test", "late_change", "late_change_rows", "mde",
    "partial_correlation", "unit_test", "unit_tests_rows", "unit_values",
]

METHODS = ("kendall", "spearman")

# --------------------------------------------------------------------------- trajectories
def _finite_pairs(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    xa = np.asarray(x, dtype=float).ravel()
    ya = np.asarray(y, dtype=float).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length; got {xa.size} and {ya.size}")
    keep = np.isfinite(xa) & np.isfinite(ya)
    return xa[keep], ya[keep]



def trend(t: ArrayLike, v: ArrayLike, method: str = "kendall") -> float:
    """Monotone trend of v along t: rank correlation between time and value (NaN if < 3
    finite points or v constant). Negative = the quantity falls during the window."""
    ta, va = _finite_pairs(t, v)
    if ta.size < 3 or np.ptp(va) == 0 or np.ptp(ta) == 0:
        return math.nan
    return rank_correlation(ta, va, method)[0]


def relative_change(v: ArrayLike) -> float:
    """(v_end − v_start) / |v_start| over the finite values of v (NaN if fewer than 2)."""
    va = np.asarray(v, dtype=float).ravel()
    va = va[np.isfinite(va)]
    if va.size < 2 or va[0] == 0:
        return math.nan
    return float((va[-1] - va[0]) / abs(va[0]))


# --------------------------------------------------------------------------- correlations
def rank_correlation(x: ArrayLike, y: ArrayLike, method: str = "kendall") -> tuple[float, float]:
    """(statistic, two-sided p-value) of Kendall's τ_b or Spearman's ρ from scipy.stats,
    on the pairs where both values are finite. NaN if < 3 pairs or a constant variable."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    xa, ya = _finite_pairs(x, y)
    if xa.size < 3 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return math.nan, math.nan
    res = stats.kendalltau(xa, ya) if method == "kendall" else stats.spearmanr(xa, ya)
    return float(res.statistic), float(res.pvalue)


def _kendall_rows(xr: np.ndarray, yr: np.ndarray) -> np.ndarray:
    """τ_b of each row pair of xr, yr [B, n] (ties handled as scipy's τ_b)."""
    sx = np.sign(xr[:, :, None] - xr[:, None, :])
    sy = np.sign(yr[:, :, None] - yr[:, None, :])
    num = (sx * sy).sum(axis=(1, 2))
    den = np.sqrt((sx * sx).sum(axis=(1, 2)) * (sy * sy).sum(axis=(1, 2)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _spearman_rows(xr: np.ndarray, yr: np.ndarray) -> np.ndarray:
    """Spearman ρ of each row pair: Pearson correlation of average ranks."""
    rx = stats.rankdata(xr, axis=1)
    ry = stats.rankdata(yr, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)


def bootstrap_statistics(
    x: ArrayLike, y: ArrayLike, method: str = "kendall", n_boot: int = 2000, seed: int = 0
) -> np.ndarray:
    """The statistic on ``n_boot`` resamples of the finite pairs drawn with replacement
    (NumPy generator seeded by ``seed``); shape [n_boot], NaN where a resample is constant."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be ≥ 1; got {n_boot}")
    xa, ya = _finite_pairs(x, y)
    n = xa.size
    if n < 3:
        return np.full(int(n_boot), math.nan)
    idx = np.random.default_rng(seed).integers(0, n, size=(int(n_boot), n))
    rows = _kendall_rows if method == "kendall" else _spearman_rows
    chunk = max(1, 4_000_000 // (n * n)) if method == "kendall" else max(1, 4_000_000 // n)
    out = np.empty(int(n_boot))
    for s in range(0, int(n_boot), chunk):
        sl = idx[s:s + chunk]
        out[s:s + chunk] = rows(xa[sl], ya[sl])
    return out


@dataclass(frozen=True)
class Correlation:
    """A rank correlation with its percentile bootstrap interval.

    Attributes:
        method: "kendall" (τ_b) or "spearman" (ρ).
        estimate: statistic on the n finite pairs (NaN if undefined).
        lo, hi: percentile bootstrap interval at confidence ``level``.
        n: number of finite pairs used.
        pvalue: scipy's two-sided p-value for no association.
    """

    method: str
    estimate: float
    lo: float
    hi: float
    n: int
    pvalue: float
    level: float
    n_boot: int

    @property
    def sign(self) -> int:
        """+1 if the interval lies above 0, −1 if below 0, 0 if it contains 0 (or is NaN)."""
        if self.lo > 0:
            return 1
        if self.hi < 0:
            return -1
        return 0

    @property
    def contains_estimate(self) -> bool:
        """Whether lo ≤ estimate ≤ hi up to rounding (1e-9); a percentile interval need not
        contain the estimate, so this is reported, not assumed."""
        return bool(self.lo - 1e-9 <= self.estimate <= self.hi + 1e-9)

    def as_dict(self) -> dict[str, object]:
        """The correlation's fields plus ``sign`` and ``contains_estimate``, as a dict."""
        return asdict(self) | {"sign": self.sign, "contains_estimate": self.contains_estimate}


def correlation(
    x: ArrayLike,
    y: ArrayLike,
    method: str = "kendall",
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Correlation:
    """Kendall τ_b or Spearman ρ between x and y with a percentile bootstrap interval.

    Pairs with a non-finite value (e.g. log LVR = −∞ for a rank-deficient Jacobian) are
    dropped. The interval is [q_{(1−level)/2}, q_{(1+level)/2}] of the statistic over
    ``n_boot`` resamples of the pairs; constant resamples (statistic undefined) are left out.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level}")
    est, p = rank_correlation(x, y, method)
    n = _finite_pairs(x, y)[0].size
    boots = bootstrap_statistics(x, y, method, n_boot, seed)
    boots = boots[np.isfinite(boots)]
    if math.isnan(est) or boots.size == 0:
        lo = hi = math.nan
    else:
        a = 100 * (1 - level) / 2
        lo, hi = (float(q) for q in np.percentile(boots, [a, 100 - a]))
    return Correlation(method, est, lo, hi, int(n), p, float(level), int(n_boot))


def correlation_table(
    records: Sequence[Mapping[str, float]],
    xs: Sequence[str],
    ys: Sequence[str],
    methods: Sequence[str] = METHODS,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> list[dict[str, object]]:
    """One row per (x, y, method): the correlation across ``records`` (e.g. one summary per
    run) of ``record[x]`` with ``record[y]``; a missing key counts as NaN (dropped).

    Returns dicts with keys x, y and those of :meth:`Correlation.as_dict`.
    """
    rows = []
    for x, y, m in itertools.product(xs, ys, methods):
        xv = [float(r.get(x, math.nan)) for r in records]
        yv = [float(r.get(y, math.nan)) for r in records]
        rows.append({"x": x, "y": y} | correlation(xv, yv, m, n_boot, level, seed).as_dict())
    return rows


def correlation_matrix(
    rows: Iterable[Mapping[str, object]], xs: Sequence[str], ys: Sequence[str], method: str,
    field: str = "estimate",
) -> np.ndarray:
    """The ``field`` of :func:`correlation_table` rows as a matrix [len(xs), len(ys)] (NaN where
    absent) — the heat map of the correlations chapter."""
    out = np.full((len(xs), len(ys)), math.nan)
    for r in rows:
        if r["method"] == method and r["x"] in xs and r["y"] in ys:
            out[list(xs).index(r["x"]), list(ys).index(r["y"])] = float(r[field])
    return out


def mean_ci(values: ArrayLike, n_boot: int = 2000, level: float = 0.95, seed: int = 0
            ) -> tuple[float, float, float]:
    """(mean, lo, hi): mean of the finite values with a percentile bootstrap interval (used to
    aggregate per-run trajectory correlations over runs). NaNs if there is no finite value."""
    va = np.asarray(values, dtype=float).ravel()
    va = va[np.isfinite(va)]
    if va.size == 0:
        return math.nan, math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, va.size, size=(int(n_boot), va.size))
    a = 100 * (1 - level) / 2
    lo, hi = np.percentile(va[idx].mean(axis=1), [a, 100 - a])
    return float(va.mean()), float(lo), float(hi)


def trajectory_correlations(
    trajectories: Sequence[Mapping[str, ArrayLike]],
    x: str,
    y: str,
    method: str = "kendall",
) -> np.ndarray:
    """Rank correlation of x with y *along* each trajectory (one value per run, NaN where
    undefined), shape [n_runs]."""
    return np.array([rank_correlation(t[x], t[y], method)[0] if x in t and y in t else math.nan
                     for t in trajectories])


def bootstrap_units_correlation(
    x: ArrayLike, y: ArrayLike, units: Sequence[object] | None = None, n_boot: int = 2000,
    level: float = 1 - ALPHA, seed: int = 0, levels: Sequence[float] = (),
) -> tuple[float, ...]:
    """Kendall τ_b of x with y across runs, with a percentile interval from resampling
    independent *units* (all runs of a resampled unit together — a cluster bootstrap; units
    None: runs). Returns (τ, lo, hi, n_units), then (lo, hi) at each of ``levels`` from the
    same resamples. Vectorised (:func:`_kendall_rows`) when every unit is one run."""
    xa = np.asarray(x, dtype=float).ravel()
    ya = np.asarray(y, dtype=float).ravel()
    keep = np.isfinite(xa) & np.isfinite(ya)
    labels = list(range(xa.size)) if units is None else list(units)
    if len(labels) != xa.size:
        raise ValueError(f"units has {len(labels)} labels for {xa.size} values")
    xa, ya = xa[keep], ya[keep]
    labels = [lab for lab, k in zip(labels, keep, strict=True) if k]
    uniq = list(dict.fromkeys(labels))
    est = rank_correlation(xa, ya, "kendall")[0]
    nan_tail = (math.nan, math.nan) * len(levels)
    if len(uniq) < 3 or not math.isfinite(est):
        return (est, math.nan, math.nan, len(uniq)) + nan_tail
    rng = np.random.default_rng(seed)
    if len(uniq) == len(labels):          # one run per unit: resample runs, vectorised
        idx = rng.integers(0, xa.size, size=(int(n_boot), xa.size))
        b = _kendall_rows(xa[idx], ya[idx])
    else:
        members = [np.flatnonzero([lab == u for lab in labels]) for u in uniq]
        boots = []
        for _ in range(int(n_boot)):
            pick = rng.integers(0, len(uniq), size=len(uniq))
            idx = np.concatenate([members[j] for j in pick])
            boots.append(rank_correlation(xa[idx], ya[idx], "kendall")[0])
        b = np.asarray(boots)
    b = b[np.isfinite(b)]
    if not b.size:
        return (est, math.nan, math.nan, len(uniq)) + nan_tail
    out: list[float] = [est]
    for j, lev in enumerate((level, *levels)):
        a = 100 * (1 - lev) / 2
        lo, hi = np.percentile(b, [a, 100 - a])
        out += [float(lo), float(hi)] + ([float(len(uniq))] if j == 0 else [])
    out[3] = int(out[3])
    return tuple(out)
