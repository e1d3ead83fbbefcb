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
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

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
          "late-phase trend (Kendall τ with the step over the interpolation phase, mean over "
          "runs, bootstrap CI over runs) of λ_max, tr H and log LVR each below 0"),
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
          "after the measurement from which tr H stays within 10% of its final value, the "
          "trend of log LVR is negative: fraction of runs (reproduced ≥ 0.9, partly ≥ 0.5)"),
    Claim("ld_differs", "v1, v3",
          "Local dimensionality is not controlled by sharpness and moves differently "
          "(v3: it increases during training).",
          "late-phase trend of the output LD (mean Kendall τ with the step over runs, "
          "bootstrap CI) above 0, as v3 states"),
    Claim("stability", "v3 (Ma & Ying)",
          "SGD ends below its linear-stability ceiling: λ_max ≤ 2/η.",
          "fraction of non-diverged runs with final λ_max ≤ 2/η (reproduced ≥ 0.9, "
          "partly ≥ 0.5)"),
    Claim("bound_loose", "v1",
          "The volume bound holds but is loose.",
          "fraction of measurements (finished runs) where the volume bound T2 (geometric-mean "
          "form) holds ≥ 0.9, and median slack rhs/lhs ≥ 10"),
    Claim("mls_consistent", "v3",
          "Correlations of sharpness with the representation measures vary by setting; MLS "
          "correlates most consistently.",
          "for log LVR, MLS, NMLS, NVR, LD take the smaller of its Kendall τ with tr H across "
          "runs and along trajectories: reproduced if MLS has the highest such value and it is "
          "positive, partly if only one of the two holds"),
    Claim("test_sharpness_rises", "v1 §4.2",
          "On test data, sharpness rises during the late phase while volume falls.",
          "late-phase trend (mean Kendall τ with the step over runs, bootstrap CI) of λ_max of "
          "the test-loss Hessian above 0 and of test log LVR below 0"),
)


def claims_by_key() -> dict[str, Claim]:
    """The :data:`CLAIMS` indexed by key."""
    return {c.key: c for c in CLAIMS}


# --------------------------------------------------------------------------- tables
def _fmt(v: object, digits: int = 3) -> str:
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, float | np.floating):
        if not math.isfinite(v):
            return "–" if math.isnan(v) else ("∞" if v > 0 else "−∞")
        if float(v).is_integer() and abs(v) < 1e7:
            return str(int(v))
        return f"{v:.{digits}g}"
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


# --------------------------------------------------------------------------- settings / study
@dataclass(frozen=True)
class Setting:
    """One experimental setting of the paper (or our CPU default), as a sweep over η, B, seed.

    Attributes:
        name: key in :data:`SETTINGS`.
        paper: where the paper uses it (e.g. "v3 §5"), or "ours" for the CPU default.
        description: one line for the chapters.
        base: fields of :class:`flatbook.experiment.RunConfig` shared by every run.
        lrs, batch_sizes, seeds: the sweep axes (learning rate η, batch size B, seed).
        loss_threshold: training loss counted as "~0" (onset of the interpolation phase).
        test_size: held-out samples on which the measures are repeated (0: none).
        representations: ``"hidden"`` — also measure x ↦ h for every hidden activation
            (cheap for MLPs), ``"none"``.
        choices: what the paper does not state and we chose (documented in the chapters).
    """

    name: str
    paper: str
    description: str
    base: Mapping[str, object]
    lrs: tuple[float, ...]
    batch_sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    loss_threshold: float
    test_size: int
    representations: str = "hidden"
    choices: str = ""


def _full(name: str, paper: str, description: str, base: dict, lrs: tuple, bs: tuple,
          choices: str, representations: str = "none") -> Setting:
    common = {"loss": "squared", "schedule": "linear", "eval_size": 1000,
              "checkpoint_every": 2000, "progress": False, "device": "auto"}
    return Setting(name, paper, description, common | base, lrs, bs, (0, 1, 2), 1e-3, 1000,
                   representations, choices)


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting(
            "digits-mlp", "ours (CPU scale)",
            "an MLP with ReLU on scikit-learn digits, squared loss, plain SGD",
            {"model": "mlp", "model_kw": {"hidden": [64, 64]}, "dataset": "digits",
             "n_train": 600, "loss": "squared", "steps": 3000, "measure_every": 1000,
             "schedule": "late", "eval_size": 128, "checkpoint_every": None,
             "progress": False},
            (0.1, 0.2, 0.4, 0.6), (8, 32, 128), (0, 1), 1e-2, 128, "hidden",
            "every choice is ours: the paper has no digits experiment"),
        _full("fashion-mlp", "v3 §5", "an MLP on Fashion-MNIST",
              {"model": "mlp", "model_kw": {"hidden": [512, 512]}, "dataset": "fashion_mnist",
               "steps": 30000, "measure_every": 1000},
              (0.01, 0.02, 0.05, 0.1), (32, 128, 512),
              "widths, steps, η and B grids are ours (not stated in the paper)", "hidden"),
        _full("cifar2-vgg11", "v3 §5", "VGG-11 on two CIFAR-10 classes (cat, dog)",
              {"model": "vgg11", "dataset": "cifar10", "classes": [3, 5], "steps": 30000,
               "measure_every": 1000},
              (0.005, 0.01, 0.02, 0.05), (32, 128, 512),
              "which two classes, steps, η and B grids are ours"),
        _full("mnist-lenet", "v3 §5", "LeNet-5 on MNIST",
              {"model": "lenet5", "dataset": "mnist", "steps": 30000, "measure_every": 1000},
              (0.01, 0.02, 0.05, 0.1), (32, 128, 512),
              "the data set (MNIST), steps, η and B grids are ours"),
        _full("cifar10-vit", "v3 §5", "a small ViT on CIFAR-10",
              {"model": "vit", "dataset": "cifar10", "steps": 50000, "measure_every": 2000},
              (0.005, 0.01, 0.02, 0.05), (32, 128, 512),
              "the ViT size, the data set, steps, η and B grids are ours"),
        _full("cifar10-vgg10", "v1 §4", "VGG10 on CIFAR-10",
              {"model": "vgg10", "dataset": "cifar10", "steps": 50000, "measure_every": 2000},
              (0.005, 0.01, 0.02, 0.05), (32, 128, 512),
              "our reading of 'VGG10'; steps, η and B grids are ours"),
    )
}
"""The settings a chapter's ``setting`` parameter accepts (``"digits-mlp"`` runs in the book)."""

DEFAULT_SETTING = "digits-mlp"


def get_setting(name: str) -> Setting:
    """The :class:`Setting` called ``name``; ValueError listing the allowed names."""
    if name not in SETTINGS:
        raise ValueError(f"unknown setting {name!r}; allowed: {sorted(SETTINGS)}")
    return SETTINGS[name]


def _check_axis(name: str, values: object, kind: type, positive: bool = True) -> tuple:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{name} must be a non-empty list; got {values!r}")
    out = []
    for v in values:
        ok = isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
        if kind is int:
            ok = ok and float(v) == int(v)
        if not ok or (positive and not v > 0) or (not positive and v < 0):
            sign = "positive" if positive else "non-negative"
            raise ValueError(f"{name} must hold {sign} {kind.__name__}s; got {values!r}")
        out.append(kind(v))
    if len(set(out)) != len(out):
        raise ValueError(f"{name} has duplicates: {values!r}")
    return tuple(out)


def study_configs(
    setting: str = DEFAULT_SETTING,
    *,
    lrs: Sequence[float] | None = None,
    batch_sizes: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    **overrides: object,
) -> list[object]:
    """The :class:`flatbook.experiment.RunConfig` list of a setting's sweep (η × B × seed,
    seed fastest), with the axes or any RunConfig field overridden (None = the setting's).
    If ``steps`` is overridden below the setting's ``measure_every`` (and that is not given),
    measurements are taken every ``steps // 4`` steps.

    Raises ValueError naming a bad parameter (unknown setting, empty or non-positive axis,
    unknown RunConfig field, or a field value the engine rejects).
    """
    from flatbook import experiment as E

    s = get_setting(setting)
    lr_ax = _check_axis("lrs", s.lrs if lrs is None else lrs, float)
    b_ax = _check_axis("batch_sizes", s.batch_sizes if batch_sizes is None else batch_sizes, int)
    seed_ax = _check_axis("seeds", s.seeds if seeds is None else seeds, int, positive=False)
    fields = set(E.RunConfig.__dataclass_fields__)
    bad = sorted(k for k in overrides if k not in fields)
    if bad:
        raise ValueError(f"unknown run parameter(s) {bad}; allowed: RunConfig fields "
                         f"{sorted(fields)}")
    base = dict(s.base) | {k: v for k, v in overrides.items() if v is not None}
    steps = base.get("steps")
    if (overrides.get("measure_every") is None and isinstance(steps, int)
            and steps < int(base.get("measure_every", 1))):
        base["measure_every"] = max(1, steps // 4)   # fewer steps than the setting's spacing
    base_cfg = E.RunConfig.from_dict(base)
    return E.grid(base_cfg, lr=list(lr_ax), batch_size=list(b_ax), seed=list(seed_ax))


def default_results_dir() -> Path:
    """The shared result cache of the book: ``$FLATBOOK_RESULTS`` if set, else
    ``_build/exp_results`` in the source checkout (else ``~/.cache/flatbook/results``)."""
    env = os.environ.get("FLATBOOK_RESULTS")
    if env:
        return Path(env).expanduser()
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file():
        return root / "_build" / "exp_results"
    return Path.home() / ".cache" / "flatbook" / "results"


MEASURE_VERSION = 1
TEST_TRACE_HVPS = 30
"""Hessian-vector products of the Hutch++ estimate of the test-loss Hessian trace."""
"""Bump when :func:`make_measure` changes what it records (a new store folder is used)."""


def hidden_representations(model: object) -> list[str]:
    """Names (``flatbook.layers.representations``) of the outputs of the activation items of
    an ``nn.Sequential`` — the hidden-layer representations h_l = model[:i+1](x)."""
    from torch import nn

    from flatbook import layers, models

    acts = tuple(models.ACTIVATIONS[a] for a in models.ACTIVATIONS if a != "linear")
    names = set(layers.representations(model))  # type: ignore[arg-type]
    return [str(i) for i, m in enumerate(model) if isinstance(m, acts)  # type: ignore[arg-type]
            and str(i) in names and not isinstance(m, nn.Identity)]


def make_measure(config: object, X_test: object, Y_test: object, test_size: int,
                 representations: str, n_train: int | None = None) -> Callable:
    """Measurement function for :func:`flatbook.experiment.run`: one
    ``flatbook.report(...).as_dict()`` on the evaluation subset of the training set (λ_max,
    tr H, every measure and bound, with η and B for T7; hidden representations if asked)
    and, if ``test_size`` > 0, one on the first ``test_size`` held-out samples with keys
    prefixed ``test_`` (there also a Hutch++ estimate ``test_trace_hessian`` of the test-loss
    Hessian trace, since away from interpolation tr H ≠ the Gauss–Newton trace)."""
    import warnings

    from flatbook.report import report

    if representations not in ("hidden", "none"):
        raise ValueError(f"representations must be 'hidden' or 'none'; got {representations!r}")
    cfg = config
    B = None if cfg.batch_size == "full" else int(cfg.batch_size)  # type: ignore[attr-defined]
    opts = {"tol": cfg.sharpness_tol, "lr": cfg.lr, "batch_size": B,  # type: ignore[attr-defined]
            "n_train": n_train}  # T7's p uses the training-set size, not the eval subset
    Xt = X_test[:test_size] if test_size else None  # type: ignore[index]
    Yt = Y_test[:test_size] if test_size else None  # type: ignore[index]

    def measure(model, X, Y, loss, seed):  # noqa: ANN001, ANN202 - train.MeasureFn
        reps = hidden_representations(model) if representations == "hidden" else []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out = report(model, X, Y, loss=loss, seed=seed, representations=reps,
                         **opts).as_dict()
            if Xt is not None:
                dev = next(model.parameters()).device
                te = report(model, Xt.to(dev), Yt.to(dev), loss=loss, seed=seed,
                            hessian_trace=True, n_hvp=TEST_TRACE_HVPS, **opts).as_dict()
                out |= {f"test_{k}": v for k, v in te.items()}
        return {k: float(v) for k, v in out.items()}

    return measure


def store_for(results_dir: str | Path | None, setting: Setting) -> Path:
    """Folder of the result store for runs measured by :func:`make_measure` with this
    setting's measurement options: ``results_dir / "measure-<hash>"``. The hash covers the
    options, :data:`MEASURE_VERSION` and the source of :func:`make_measure`, so results
    recorded by another measurement never pass as these (the engine's store checks the run
    config and the numeric code; this adds the measurement)."""
    import hashlib
    import inspect
    import json

    spec = {"version": MEASURE_VERSION, "test_size": setting.test_size,
            "representations": setting.representations,
            "source": inspect.getsource(make_measure)}
    h = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    root = Path(results_dir) if results_dir else default_results_dir()
    return root / f"measure-{h}"


def obtain(
    configs: Sequence[object],
    setting: Setting,
    results_dir: str | Path | None = None,
    *,
    compute_missing: bool = True,
) -> list[object]:
    """Load each run's results from the store, or compute them (in order).

    Stored results are accepted only if their config hash equals the requested one, the
    flatbook major.minor version matches and the numeric code hash matches
    (``load_results(check="code")``). A missing or refused run is computed when
    ``compute_missing`` is True (the refused one overwritten), else the error is raised — use
    that to *only* read results produced elsewhere (e.g. on a GPU machine).

    Returns ``flatbook.experiment.Results`` in the order of ``configs``.
    """
    from flatbook import experiment as E

    store = store_for(results_dir, setting)
    out: list[object] = []
    todo: list[tuple[int, object, bool]] = []
    for i, c in enumerate(configs):
        try:
            out.append(E.load_results(store, c, check="code"))
        except FileNotFoundError:
            if not compute_missing:
                raise
            out.append(None)
            todo.append((i, c, False))
        except E.StaleResultsError:
            if not compute_missing:
                raise
            out.append(None)
            todo.append((i, c, True))
    if todo:
        E.validate([c for _, c, _ in todo])   # data present, B ≤ n, … before any training
        for i, c, stale in todo:
            ds = E.prepare(c)[0]
            m = make_measure(c, ds.X_test, ds.Y_test, min(setting.test_size, ds.n_test),
                             setting.representations, n_train=ds.n_train)
            out[i] = E.run(c, store, overwrite=stale, measure=m)
    E.check_numerics(out)  # one study, one numerics fingerprint (device, threads, dtype, torch)
    return out


# --------------------------------------------------------------------------- run summaries
SHARPNESS = ("lambda_max", "trace_gn", "kappa_sum")
"""Sharpness measures: λ_max(H), tr H (= Gauss–Newton trace at interpolation), and the
relative flatness Σ_l κ_l (T5; reparametrization-invariant)."""

REPRESENTATION = ("log_lvr_median", "mls_median", "nmls", "nvr", "ld_median", "gap_loss")
"""Representation measures (output map x ↦ f: median over the evaluation samples — robust to
the few samples whose Jacobian is rank-deficient, log LVR = −∞, or zero, LD undefined — and
the network-wide NMLS, NVR) and the generalization gap (test loss − train loss)."""

LABELS: dict[str, str] = {
    "lambda_max": r"$\lambda_{\max}$", "trace_gn": r"$\mathrm{tr}\,H$",
    "kappa_sum": r"$\Sigma_l\,\kappa_l$", "log_lvr_median": r"$\log\mathrm{LVR}$",
    "mls_median": "MLS", "nmls": "NMLS", "nvr": "NVR", "ld_median": "LD",
    "gap_loss": "gen. gap", "pr_output": "PR (output)", "train_loss": "train loss",
    "test_acc": "test accuracy", "test_trace_hessian": r"test $\mathrm{tr}\,H$ (Hutch++)",
    "ld_mean": "LD", "log_lvr_mean": r"$\log\mathrm{LVR}$", "mls_mean": "MLS", "pr": "PR",
    "test_loss": "test loss",
}
"""Axis labels (LaTeX) for record keys."""


PLAIN: dict[str, str] = {
    "lambda_max": "λ_max", "trace_gn": "tr H", "kappa_sum": "Σκ_l", "log_lvr_median": "log LVR",
    "mls_median": "MLS", "nmls": "NMLS", "nvr": "NVR", "ld_median": "LD", "gap_loss": "gen. gap",
    "pr_output": "PR (output)", "train_loss": "train loss", "test_acc": "test accuracy",
    "test_trace_hessian": "test tr H (Hutch++)", "ld_mean": "LD", "log_lvr_mean": "log LVR",
    "mls_mean": "MLS", "pr": "PR", "test_loss": "test loss",
}
"""Plain-text (Unicode) labels, for glued text where LaTeX is not rendered."""


def label(key: str, tex: bool = True) -> str:
    """Label of a record key: LaTeX for figures and tables (``tex=True``), plain Unicode for
    glued text; the key itself if unknown. ``test_`` and ``rep_<i>_`` keys say so."""
    table = LABELS if tex else PLAIN
    if key in table:
        return table[key]
    parts = key.split("_")
    if key.startswith("rep_") and len(parts) >= 4 and parts[1].isdigit():
        rest = "_".join(parts[2:])
        return f"{table.get(rest, rest)} of {'$h$' if tex else 'h'} (item {parts[1]})"
    if key.startswith("test_") and key[5:] in table:
        return "test " + table[key[5:]]
    return key


def trajectory(result: object) -> dict[str, np.ndarray]:
    """All record keys of a run as arrays [T] (NaN where missing), plus derived keys:
    ``gap_loss`` = test − train loss, ``gap_acc`` = train − test accuracy, ``kappa_sum`` =
    Σ_l κ_l over dense layers (and ``test_kappa_sum``)."""
    recs = result.records  # type: ignore[attr-defined]
    keys: dict[str, None] = {}
    for r in recs:
        keys.update(dict.fromkeys(r))
    t = {k: np.array([float(r.get(k, math.nan)) for r in recs]) for k in keys}
    nan = np.full(len(recs), math.nan)
    t["gap_loss"] = t.get("test_loss", nan) - t.get("train_loss", nan)
    t["gap_acc"] = t.get("train_acc", nan) - t.get("test_acc", nan)
    for pre in ("", "test_"):
        ks = [k for k in t if k.startswith(pre + "l") and k.endswith("_kappa")
              and k[len(pre) + 1:-6].isdigit()]
        t[pre + "kappa_sum"] = np.sum([t[k] for k in ks], axis=0) if ks else nan.copy()
    return t


def phase_start(traj: Mapping[str, np.ndarray], loss_threshold: float) -> int | None:
    """Index of the first measurement of the interpolation phase: from there on the training
    loss stays ≤ ``loss_threshold`` and the training accuracy is 100% (see
    :func:`interpolation_start`)."""
    loss = np.asarray(traj["train_loss"], dtype=float).copy()
    if "train_acc" in traj:
        loss[np.asarray(traj["train_acc"]) < 1.0] = math.inf
    return interpolation_start(loss, loss_threshold)


def run_summary(result: object, loss_threshold: float,
                keys: Sequence[str] | None = None) -> dict[str, object]:
    """One flat dict per run: ``lr``, ``batch_size``, ``seed``, ``status``, ``diverged``,
    ``interpolates`` (the run ends in the interpolation phase), ``phase_step`` (its onset),
    the final value of every key (``keys``: all record and derived keys), and for each the
    late-phase ``trend_<key>`` (Kendall τ with the step over the interpolation phase),
    ``late_change_<key>`` (relative change over it) and ``late_mean_<key>`` (mean over it)."""
    cfg = result.config  # type: ignore[attr-defined]
    t = trajectory(result)
    start = phase_start(t, loss_threshold)
    out: dict[str, object] = {
        "lr": float(cfg.lr), "batch_size": cfg.batch_size, "seed": int(cfg.seed),
        "status": result.status, "diverged": result.status == "diverged",  # type: ignore[attr-defined]
        "interpolates": start is not None,
        "phase_step": float(t["step"][start]) if start is not None else math.nan,
        "final_step": float(t["step"][-1]) if t["step"].size else math.nan,
    }
    late = late_phase(t, start)
    for k in (keys if keys is not None else list(t)):
        v = t.get(k)
        if v is None or k in ("step", "epoch"):
            continue
        out[k] = float(v[-1]) if v.size else math.nan
        out[f"trend_{k}"] = trend(late["step"], late[k]) if late["step"].size else math.nan
        out[f"late_change_{k}"] = relative_change(late[k]) if late["step"].size else math.nan
        fin = late[k][np.isfinite(late[k])] if late["step"].size else late[k][:0]
        out[f"late_mean_{k}"] = float(fin.mean()) if fin.size else math.nan
    return out


def stability_ceilings(lr: float, batch_size: int | str, n: int, k: int) -> tuple[float, float]:
    """(2/η, 2k/(pη)): the linear-stability ceilings of λ_max (GD) and of tr H (SGD with batch
    B drawn without replacement from n samples, p = (n − B)/(B(n − 1)); +inf for full batch),
    from :func:`flatbook.bounds.t7_gd` and :func:`flatbook.bounds.t7_sgd` (paper.md T7)."""
    from flatbook import bounds

    B = n if batch_size == "full" else int(batch_size)
    return (float(bounds.t7_gd(math.nan, lr).rhs),
            float(bounds.t7_sgd(math.nan, lr, B, n, k).rhs))


@dataclass
class Study:
    """A setting's sweep with its results (one :class:`flatbook.experiment.Results` per
    config, same order) and the per-run trajectories and summaries used by the chapters."""

    setting: Setting
    configs: list
    results: list
    loss_threshold: float

    def __post_init__(self) -> None:
        self.trajectories = [trajectory(r) for r in self.results]
        self.summaries = []
        for r, t in zip(self.results, self.trajectories, strict=True):
            s = run_summary(r, self.loss_threshold)
            s["n_train"], s["n_classes"] = int(r.data["n_train"]), int(r.data["n_classes"])
            s["gd_ceiling"], s["sgd_ceiling"] = stability_ceilings(
                s["lr"], s["batch_size"], s["n_train"], s["n_classes"])
            s["phase_index"] = phase_start(t, self.loss_threshold)
            self.summaries.append(s)

    @property
    def n_runs(self) -> int:
        return len(self.results)

    @property
    def finished(self) -> list[int]:
        """Indices of runs that completed (did not diverge)."""
        return [i for i, s in enumerate(self.summaries) if s["status"] == "completed"]

    @property
    def interpolating(self) -> list[int]:
        """Indices of completed runs that end in the interpolation phase."""
        return [i for i in self.finished if self.summaries[i]["interpolates"]]

    def hidden_ld_keys(self) -> list[str]:
        """Record keys of the local dimensionality of each hidden representation x ↦ h_l."""
        keys = self.trajectories[0] if self.trajectories else {}
        return sorted((k for k in keys if k.startswith("rep_") and k.endswith("_ld_mean")),
                      key=lambda k: int(k.split("_")[1]) if k.split("_")[1].isdigit() else 0)

    def pick(self, lr: float | None = None, batch_size: int | None = None,
             seed: int | None = None) -> int:
        """Index of the run closest (in log η, log B) to the requested one among interpolating
        runs (else completed, else all); defaults: the second-largest η, the smallest B, the
        first seed — a run deep in the late phase."""
        pool = self.interpolating or self.finished or list(range(self.n_runs))
        lrs = sorted({self.summaries[i]["lr"] for i in pool})
        bs = sorted({_b(self.summaries[i]["batch_size"]) for i in pool})
        lr = lr if lr is not None else lrs[-2] if len(lrs) > 1 else lrs[0]
        batch_size = batch_size if batch_size is not None else bs[0]
        seed = seed if seed is not None else min(self.summaries[i]["seed"] for i in pool)

        def dist(i: int) -> tuple[float, int]:
            s = self.summaries[i]
            return (abs(math.log(s["lr"] / lr)) + abs(math.log(_b(s["batch_size"]) / batch_size)),
                    abs(s["seed"] - seed))

        return min(pool, key=dist)

    def trends(self, keys: Sequence[str], n_boot: int = 2000, seed: int = 0
               ) -> list[dict[str, object]]:
        """For each key: the late-phase trend (Kendall τ of the value with the step over the
        interpolation phase) averaged over interpolating runs, with a bootstrap CI over runs,
        and the fraction of those runs where the value fell (τ < 0)."""
        rows = []
        for k in keys:
            v = np.array([self.summaries[i].get(f"trend_{k}", math.nan)
                          for i in self.interpolating], dtype=float)
            m, lo, hi = mean_ci(v, n_boot=n_boot, seed=seed)
            fin = v[np.isfinite(v)]
            rows.append({"key": k, "measure": label(k), "mean_tau": m, "lo": lo, "hi": hi,
                         "n_runs": int(fin.size),
                         "frac_falling": float(np.mean(fin < 0)) if fin.size else math.nan})
        return rows


    def describe(self) -> dict[str, str]:
        """The sweep in words, for glued prose: ``lrs``, ``batch_sizes``, ``seeds`` (sets),
        ``steps``, ``n_train``, ``eval_size``, ``test_size``, ``n_measure`` (measurements per
        run), ``model`` and ``dataset``."""
        def fmt(vals: Iterable[object]) -> str:
            return "{" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v)
                                   for v in sorted(set(vals), key=_b)) + "}"

        r0 = self.results[0]
        c0 = r0.config
        return {
            "lrs": fmt(float(s["lr"]) for s in self.summaries),
            "batch_sizes": fmt(s["batch_size"] for s in self.summaries),
            "seeds": fmt(s["seed"] for s in self.summaries),
            "steps": f"{int(max(s['final_step'] for s in self.summaries)):,}".replace(",", " "),
            "n_train": f"{int(r0.data['n_train']):,}".replace(",", " "),
            "eval_size": str(int(self.trajectories[0].get("n", [c0.eval_size])[0])),
            "test_size": str(int(self.trajectories[0]["test_n"][0]))
            if "test_n" in self.trajectories[0] else "0",
            "n_measure": str(len(self.trajectories[0]["step"])),
            "model": str(c0.model), "dataset": str(c0.dataset),
            "arch": str(c0.model) + "".join(f", {k} = {v}" for k, v in c0.model_kw.items()),
            "test_hvps": str(TEST_TRACE_HVPS),
        }

    def late_trajectories(self) -> list[dict[str, np.ndarray]]:
        """The interpolation-phase part of each interpolating run's trajectory."""
        return [late_phase(self.trajectories[i], self.summaries[i]["phase_index"])
                for i in self.interpolating]

    def trajectory_table(self, xs: Sequence[str], ys: Sequence[str],
                         methods: Sequence[str] = METHODS, n_boot: int = 2000, seed: int = 0
                         ) -> list[dict[str, object]]:
        """Correlations *along* trajectories: for each (x, y, method), the rank correlation of
        x with y over the measurements of each run's interpolation phase, averaged over runs
        (``estimate``) with a bootstrap CI over runs (``lo``, ``hi``); ``n`` = runs with a
        defined value. Same row format as :func:`correlation_table`."""
        trajs = self.late_trajectories()
        rows = []
        for x, y, m in itertools.product(xs, ys, methods):
            v = trajectory_correlations(trajs, x, y, m)
            est, lo, hi = mean_ci(v, n_boot=n_boot, seed=seed)
            n = int(np.isfinite(v).sum())
            sign = 1 if lo > 0 else -1 if hi < 0 else 0
            rows.append({"x": x, "y": y, "method": m, "estimate": est, "lo": lo, "hi": hi,
                         "n": n, "pvalue": math.nan, "level": 0.95, "n_boot": int(n_boot),
                         "sign": sign})
        return rows


def _b(batch_size: int | str) -> float:
    return math.inf if batch_size == "full" else float(batch_size)


def load_study(
    setting: str = DEFAULT_SETTING,
    *,
    lrs: Sequence[float] | None = None,
    batch_sizes: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    results_dir: str | Path | None = None,
    compute_missing: bool = True,
    loss_threshold: float | None = None,
    **overrides: object,
) -> Study:
    """Configs of ``setting`` (:func:`study_configs`), their results from the store or
    computed (:func:`obtain`), and the summaries (:class:`Study`). Every chapter calls this
    with the same parameters, so the sweep is computed once and then read back."""
    s = get_setting(setting)
    thr = s.loss_threshold if loss_threshold is None else loss_threshold
    if not (isinstance(thr, int | float) and thr > 0):
        raise ValueError(f"loss_threshold must be a positive number; got {loss_threshold!r}")
    configs = study_configs(setting, lrs=lrs, batch_sizes=batch_sizes, seeds=seeds, **overrides)
    results = obtain(configs, s, results_dir, compute_missing=compute_missing)
    return Study(s, configs, results, float(thr))


def consistency(rows: Sequence[Mapping[str, object]], x: str, ys: Sequence[str],
                method: str = "kendall") -> list[dict[str, object]]:
    """For each y: the ``method`` correlation with x across runs (rows with ``where ==
    "across"``) and along trajectories (``"along"``), and ``worst`` = the smaller of the two
    (NaN if either is undefined) — a measure correlates *consistently* when even its worst
    value is high (the paper's "MLS correlates most consistently", v3)."""
    out = []
    for y in ys:
        vals = {}
        for where in ("across", "along"):
            hit = [float(r["estimate"]) for r in rows if r.get("where") == where
                   and r["x"] == x and r["y"] == y and r["method"] == method]
            vals[where] = hit[0] if hit else math.nan
        worst = min(vals.values()) if all(math.isfinite(v) for v in vals.values()) else math.nan
        out.append({"y": y, "across": vals["across"], "along": vals["along"], "worst": worst})
    return out


def after_plateau(study: Study, sharp: str, volume: str, rel_tol: float = 0.1
                  ) -> list[dict[str, object]]:
    """Per interpolating run: the step from which ``sharp`` stays within ``rel_tol`` of its
    final value (:func:`plateau_start` on the interpolation phase), the number of measurements
    from there on, and the trend (Kendall τ with the step) of ``volume`` over them (NaN if
    fewer than 3)."""
    out = []
    for i, t in zip(study.interpolating, study.late_trajectories(), strict=True):
        s = study.summaries[i]
        j = plateau_start(t[sharp], rel_tol)
        if j is None:
            step, n_after, tr = math.nan, 0, math.nan
        else:
            step, n_after = float(t["step"][j]), int(t["step"].size - j)
            tr = trend(t["step"][j:], t[volume][j:]) if n_after >= 3 else math.nan
        out.append({"lr": s["lr"], "batch_size": s["batch_size"], "seed": s["seed"],
                    "plateau_step": step, "n_after": n_after, "trend_after": tr})
    return out


# --------------------------------------------------------------------------- claim verdicts
def _ci_text(m: float, lo: float, hi: float) -> str:
    return f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]" if math.isfinite(m) else "undefined"


def _trend_parts(study: Study, keys: Sequence[str], expected: int, n_boot: int, seed: int
                 ) -> tuple[list[str], list[str], dict[str, float]]:
    verdicts, texts, nums = [], [], {}
    for r in study.trends(keys, n_boot=n_boot, seed=seed):
        verdicts.append(sign_verdict(r["mean_tau"], r["lo"], r["hi"], expected))
        ci = _ci_text(r["mean_tau"], r["lo"], r["hi"])
        texts.append(f"{label(r['key'], tex=False)} trend τ̄ = {ci} (n = {r['n_runs']})")
        nums[f"trend_{r['key']}"] = r["mean_tau"]
    return verdicts, texts, nums


def _axis_parts(fin: Sequence[Mapping[str, object]], axis: str, keys: Sequence[str],
                expected: int, n_boot: int, seed: int
                ) -> tuple[list[str], list[str], dict[str, float]]:
    verdicts, texts, nums = [], [], {}
    sym = "η" if axis == "lr" else "B"
    for k in keys:
        c = correlation([float(s[axis]) if s[axis] != "full" else math.inf for s in fin],
                        [float(s.get(k, math.nan)) for s in fin], "kendall", n_boot, 0.95, seed)
        verdicts.append(correlation_verdict(c, expected))
        ci = _ci_text(c.estimate, c.lo, c.hi)
        texts.append(f"τ({sym}, {label(k, tex=False)}) = {ci} (n = {c.n})")
        nums[f"tau_{axis}_{k}"] = c.estimate
    return verdicts, texts, nums


def evaluate_claims(study: Study, n_boot: int = 2000, seed: int = 0) -> list[dict[str, object]]:
    """Score every claim of :data:`CLAIMS` on a :class:`Study` by its stated criterion.

    Returns one dict per claim: ``key``, ``version``, ``claim``, ``criterion``, ``verdict``
    (one of :data:`VERDICTS`), ``evidence`` (the numbers behind it, as text) and ``numbers``
    (the same as floats). Nothing here is typed by hand: every verdict follows from the runs.
    """
    fin = [study.summaries[i] for i in study.finished]
    out: dict[str, tuple[str, list[str], dict[str, float]]] = {}

    # zero training loss
    k = sum(bool(s["interpolates"]) for s in fin)
    n_div = sum(s["status"] == "diverged" for s in study.summaries)
    out["zero_loss"] = (fraction_verdict(k, len(fin)),
                        [f"{k} of {len(fin)} non-diverged runs end at ~0 loss "
                         f"(≤ {study.loss_threshold:g}, 100% train accuracy); {n_div} diverged"],
                        {"frac": k / len(fin) if fin else math.nan, "n_diverged": float(n_div)})
    # late phase: sharpness and volume fall
    v, t, nums = _trend_parts(study, ["lambda_max", "trace_gn", "log_lvr_median"], -1, n_boot,
                              seed)
    out["late_fall"] = (combine(v), t, nums)
    # learning rate
    v, t, nums = _axis_parts(fin, "lr", ["lambda_max", "trace_gn"], -1, n_boot, seed)
    out["lr_sharpness"] = (combine(v), t, nums)
    v, t, nums = _axis_parts(fin, "lr", ["log_lvr_median", "mls_median"], -1, n_boot, seed)
    out["lr_compression"] = (combine(v), t, nums)
    v, t, nums = _axis_parts(fin, "batch_size", ["trace_gn", "log_lvr_median"], +1, n_boot, seed)
    out["batch_flat"] = (combine(v), t, nums)
    # volume after the sharpness plateau
    pl = after_plateau(study, "trace_gn", "log_lvr_median", 0.1)
    defined = [p for p in pl if math.isfinite(p["trend_after"])]
    kf = sum(p["trend_after"] < 0 for p in defined)
    out["volume_after_plateau"] = (
        fraction_verdict(kf, len(defined)),
        [f"log LVR still falls after the tr H plateau in {kf} of {len(defined)} runs "
         f"(runs with ≥ 3 measurements after the plateau)"],
        {"frac": kf / len(defined) if defined else math.nan})
    # local dimensionality
    v, t, nums = _trend_parts(study, ["ld_median"], +1, n_boot, seed)
    out["ld_differs"] = (v[0], t, nums)
    # linear stability
    kb = sum(float(s["lambda_max"]) <= float(s["gd_ceiling"]) for s in fin)
    out["stability"] = (fraction_verdict(kb, len(fin)),
                        [f"final λ_max ≤ 2/η in {kb} of {len(fin)} runs"],
                        {"frac": kb / len(fin) if fin else math.nan})
    # the volume bound holds but is loose
    holds = np.concatenate([study.trajectories[i]["t2_gm_holds"] for i in study.finished]
                           ) if fin else np.array([])
    slack = np.concatenate([study.trajectories[i]["t2_gm_slack"] for i in study.finished]
                           ) if fin else np.array([])
    holds, slack = holds[np.isfinite(holds)], slack[np.isfinite(slack)]
    med = float(np.median(slack)) if slack.size else math.nan
    vh = fraction_verdict(int(holds.sum()), int(holds.size))
    vl = NOT_TESTED if not slack.size else REPRODUCED if med >= 10 else NOT_REPRODUCED
    out["bound_loose"] = (combine([vh, vl]),
                          [f"T2 (GM) holds at {int(holds.sum())} of {holds.size} measurements; "
                           f"median slack rhs/lhs = {med:.3g}"],
                          {"frac_holds": float(holds.mean()) if holds.size else math.nan,
                           "median_slack": med})
    # MLS most consistent
    ys = ["log_lvr_median", "mls_median", "nmls", "nvr", "ld_median"]
    rows = correlation_table(fin, ["trace_gn"], ys, ["kendall"], n_boot, 0.95, seed)
    for r in rows:
        r["where"] = "across"
    along = study.trajectory_table(["trace_gn"], ys, ["kendall"], n_boot, seed)
    for r in along:
        r["where"] = "along"
    cons = consistency(rows + along, "trace_gn", ys)
    worst = {r["y"]: r["worst"] for r in cons}
    finite = {y: w for y, w in worst.items() if math.isfinite(w)}
    mls = worst["mls_median"]
    top = max(finite, key=finite.get) if finite else None
    if not math.isfinite(mls):
        vm = NOT_REPRODUCED
    elif top == "mls_median" and mls > 0:
        vm = REPRODUCED
    elif top == "mls_median" or mls > 0:
        vm = PARTLY
    else:
        vm = NOT_REPRODUCED
    out["mls_consistent"] = (
        vm, ["smallest Kendall τ with tr H over (across runs, along trajectories): "
             + ", ".join(f"{label(y, tex=False)} {w:+.2f}" for y, w in worst.items())
             + f"; highest: {label(top, tex=False) if top else 'none'}"],
        {f"worst_{y}": w for y, w in worst.items()})
    # test data (v1 §4.2)
    v1, t1, n1 = _trend_parts(study, ["test_lambda_max"], +1, n_boot, seed)
    v2, t2, n2 = _trend_parts(study, ["test_log_lvr_median"], -1, n_boot, seed)
    out["test_sharpness_rises"] = (combine(v1 + v2), t1 + t2, n1 | n2)

    rows_out = []
    for c in CLAIMS:
        verdict, texts, nums = out[c.key]
        rows_out.append({"key": c.key, "version": c.version, "claim": c.text,
                         "criterion": c.criterion, "verdict": verdict,
                         "evidence": "; ".join(texts), "numbers": nums})
    return rows_out
