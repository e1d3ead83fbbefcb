"""Experiment analysis: run grids, late-phase summaries, rank correlations with bootstrap
confidence intervals, and the verdict logic of the reproduction report.

Everything here works on plain NumPy arrays and dictionaries, so that it can be tested without
training a network: a *trajectory* is a mapping ``name → array[T]`` (one value per measurement,
with a ``"step"`` column), a *run summary* is a mapping ``name → float``.

Statistics. The paper (Chen, Recanatesi & Shea-Brown, arXiv 2310.01770) does not say
which correlation statistic it reports; we use both rank statistics of :mod:`scipy.stats`:

- Kendall's τ_b = (n_c − n_d) / √((n_0 − n_x)(n_0 − n_y)) (n_c, n_d concordant / discordant
  pairs, n_0 = n(n−1)/2, n_x, n_y pairs tied in x or y), and
- Spearman's ρ = Pearson correlation of the (average) ranks,

each with a percentile bootstrap interval over resampled *pairs* (x_i, y_i) (seeded).

Verdicts. A claim of the paper is scored ``"reproduced"``, ``"partly"`` or ``"not reproduced"``
by a stated, mechanical criterion (:func:`sign_verdict`, :func:`fraction_verdict`,
:func:`combine`), never by hand; ``"not tested"`` marks a claim without data at that scale.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

METHODS = ("kendall", "spearman")
REPRODUCED, PARTLY, NOT_REPRODUCED, NOT_TESTED = (
    "reproduced", "partly", "not reproduced", "not tested")
VERDICTS = (REPRODUCED, PARTLY, NOT_REPRODUCED, NOT_TESTED)


# --------------------------------------------------------------------------- run grids
def run_grid(**axes: Sequence[object]) -> list[dict[str, object]]:
    """Cartesian product of parameter axes, last axis fastest.

    ``run_grid(lr=[0.1, 0.2], batch_size=[8, 32])`` →
    ``[{"lr": 0.1, "batch_size": 8}, {"lr": 0.1, "batch_size": 32}, {"lr": 0.2, …}, …]``.
    """
    for name, values in axes.items():
        if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"run_grid axis {name!r} must be a non-empty list; got {values!r}")
    names = list(axes)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes.values())]


# --------------------------------------------------------------------------- trajectories
def _finite_pairs(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    xa = np.asarray(x, dtype=float).ravel()
    ya = np.asarray(y, dtype=float).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length; got {xa.size} and {ya.size}")
    keep = np.isfinite(xa) & np.isfinite(ya)
    return xa[keep], ya[keep]


def interpolation_start(loss: ArrayLike, threshold: float) -> int | None:
    """Index where the *interpolation phase* starts: the first measurement from which the
    training loss stays ≤ ``threshold`` until the end (None if the last one is above it).

    Args:
        loss: training loss at each measurement, shape [T].
        threshold: loss level counted as "zero" (e.g. 1e-3 for the squared loss).
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0; got {threshold}")
    la = np.asarray(loss, dtype=float).ravel()
    below = np.isfinite(la) & (la <= threshold)
    if la.size == 0 or not below[-1]:
        return None
    above = np.flatnonzero(~below)
    return int(above[-1] + 1) if above.size else 0


def late_phase(traj: Mapping[str, ArrayLike], start: int | None) -> dict[str, np.ndarray]:
    """The trajectory restricted to measurements ``start, start+1, …`` (empty if None)."""
    out = {}
    for k, v in traj.items():
        a = np.asarray(v)
        out[k] = a[start:] if start is not None else a[:0]
    return out


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


def plateau_start(v: ArrayLike, rel_tol: float = 0.1) -> int | None:
    """First index i from which v stays within ``rel_tol`` (relative) of its final value:
    the *plateau* of a quantity such as λ_max. None if v has no finite value at the end."""
    if not rel_tol > 0:
        raise ValueError(f"rel_tol must be > 0; got {rel_tol}")
    va = np.asarray(v, dtype=float).ravel()
    if va.size == 0 or not np.isfinite(va[-1]):
        return None
    inside = np.isfinite(va) & (np.abs(va - va[-1]) <= rel_tol * abs(va[-1]))
    outside = np.flatnonzero(~inside)
    return int(outside[-1] + 1) if outside.size else 0


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
        return asdict(self) | {"sign": self.sign}


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


# --------------------------------------------------------------------------- verdicts
def sign_verdict(estimate: float, lo: float, hi: float, expected: int) -> str:
    """Verdict for a claimed *direction* of association (expected = +1 or −1).

    reproduced: the whole interval has the expected sign (lo > 0 for +1, hi < 0 for −1);
    partly: the point estimate has the expected sign but the interval reaches 0;
    not reproduced: the point estimate is 0, of the opposite sign, or undefined.
    """
    if expected not in (1, -1):
        raise ValueError(f"expected must be +1 or -1; got {expected!r}")
    if not all(math.isfinite(v) for v in (estimate, lo, hi)):
        return NOT_REPRODUCED
    if (lo > 0 if expected == 1 else hi < 0):
        return REPRODUCED
    if estimate * expected > 0:
        return PARTLY
    return NOT_REPRODUCED


def correlation_verdict(c: Correlation, expected: int) -> str:
    """:func:`sign_verdict` of a :class:`Correlation`."""
    return sign_verdict(c.estimate, c.lo, c.hi, expected)


def fraction_verdict(k: int, n: int, full: float = 0.9, part: float = 0.5) -> str:
    """Verdict for a claim that holds in *each* case (run, sample): reproduced if the fraction
    k/n of cases where it holds is ≥ ``full``, partly if ≥ ``part``, otherwise not reproduced;
    not tested if n = 0."""
    if not 0 < part <= full <= 1:
        raise ValueError(f"need 0 < part ≤ full ≤ 1; got part={part}, full={full}")
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"need 0 ≤ k ≤ n; got k={k}, n={n}")
    if n == 0:
        return NOT_TESTED
    f = k / n
    return REPRODUCED if f >= full else PARTLY if f >= part else NOT_REPRODUCED


def combine(verdicts: Iterable[str]) -> str:
    """Verdict of a claim made of several parts: reproduced if every tested part is,
    not reproduced if none is reproduced or partly, partly otherwise; not tested if no part
    was tested."""
    vs = [v for v in verdicts if v != NOT_TESTED]
    for v in vs:
        if v not in VERDICTS:
            raise ValueError(f"unknown verdict {v!r}; allowed: {VERDICTS}")
    if not vs:
        return NOT_TESTED
    if all(v == REPRODUCED for v in vs):
        return REPRODUCED
    if all(v == NOT_REPRODUCED for v in vs):
        return NOT_REPRODUCED
    return PARTLY


@dataclass(frozen=True)
class Claim:
    """One empirical claim of the paper.

    Attributes:
        key: short identifier used in glue keys (``exp_claim_<key>_…``).
        version: where the paper states it ("v1", "v3", "v5", or "v1–v5").
        text: the claim in one sentence.
        criterion: how our verdict is computed from the runs (one sentence).
    """

    key: str
    version: str
    text: str
    criterion: str


CLAIMS: tuple[Claim, ...] = (
    Claim("zero_loss", "v3",
          "Across the learning-rate and batch-size sweeps all networks reach ~0 training loss.",
          "fraction of non-diverged runs whose final training loss is ≤ the loss threshold "
          "(reproduced ≥ 0.9, partly ≥ 0.5)"),
    Claim("late_fall", "v1",
          "In the late phase of training (after interpolation) sharpness and the volume of the "
          "representation fall together.",
          "trend (Kendall τ with time over the late phase, averaged over runs, bootstrap CI over "
          "runs) of λ_max, tr H and log LVR each negative: reproduced if every CI is below 0"),
    Claim("lr_sharpness", "v3",
          "A higher learning rate ends in a flatter minimum (lower sharpness).",
          "Kendall τ across runs between η and final λ_max and tr H negative (CI below 0)"),
    Claim("lr_compression", "v3",
          "A higher learning rate ends in a more compressed representation (lower volume and "
          "sensitivity).",
          "Kendall τ across runs between η and final log LVR and MLS negative (CI below 0)"),
    Claim("batch_flat", "v3",
          "A smaller batch ends flatter and more compressed.",
          "Kendall τ across runs between B and final tr H and log LVR positive (CI above 0)"),
    Claim("volume_after_plateau", "v3",
          "Volume keeps falling after sharpness has plateaued.",
          "after the point from which tr H stays within 10% of its final value, the trend of "
          "log LVR is negative: fraction of runs (reproduced ≥ 0.9, partly ≥ 0.5)"),
    Claim("ld_differs", "v1, v3",
          "Local dimensionality is not controlled by sharpness and moves differently "
          "(v3: it increases during training).",
          "late-phase trend of LD (output) positive: Kendall τ with time averaged over runs, "
          "CI above 0"),
    Claim("stability", "v3 (Ma & Ying)",
          "SGD ends below its linear-stability ceiling: λ_max ≤ 2/η.",
          "fraction of non-diverged runs with final λ_max ≤ 2/η (reproduced ≥ 0.9, "
          "partly ≥ 0.5)"),
    Claim("bound_loose", "v1",
          "The volume bound holds but is loose.",
          "fraction of measurements where lhs ≤ rhs of the volume bound (T2, reproduced ≥ 0.9) "
          "and median slack rhs/lhs ≥ 10"),
    Claim("mls_consistent", "v3",
          "Correlations of sharpness with the representation measures vary by setting; MLS "
          "correlates most consistently.",
          "among LVR, MLS, NMLS, NVR, LD: MLS has the highest smallest-over-analyses Kendall τ "
          "with tr H (across runs, and along trajectories)"),
    Claim("test_sharpness_rises", "v1 §4.2",
          "On test data, sharpness rises during the late phase while volume falls.",
          "late-phase trend of tr H on test data positive and of test log LVR negative "
          "(CI over runs excludes 0)"),
)


def claims_by_key() -> dict[str, Claim]:
    """The :data:`CLAIMS` indexed by key."""
    return {c.key: c for c in CLAIMS}


# --------------------------------------------------------------------------- tables
def _fmt(v: object, digits: int = 3) -> str:
    if isinstance(v, float | np.floating):
        return "nan" if not math.isfinite(v) else f"{v:.{digits}g}"
    return str(v)


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None,
                   headers: Sequence[str] | None = None,
                   fmt: Callable[[object], str] = _fmt) -> str:
    """A Markdown (GitHub pipe) table of ``rows``; shown by ``IPython.display.Markdown``."""
    if not rows:
        return ""
    cols = list(columns or rows[0].keys())
    heads = list(headers or cols)
    if len(heads) != len(cols):
        raise ValueError(f"headers has {len(heads)} entries for {len(cols)} columns")
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
