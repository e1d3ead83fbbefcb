"""The late window of R2 and the run-level statistics computed inside it.

The *late window* of a run at loss threshold τ starts at the first measurement from which the
train accuracy is 100 % and the train loss L = (1/2n) Σ‖f − y‖² stays ≤ τ to the end of the
run (:func:`flatbook.analysis.phases.phase_start`). A run with fewer than
:data:`.plan.MIN_WINDOW` measurements in it is *not in the late phase*: counted and reported,
never silently dropped.

A :class:`Panel` holds the runs in the late phase of a study at one threshold as arrays
[R, T] on the shared measurement grid, with each run's window start: the form every rule of
:mod:`.rules` reads and the calibration nulls rewrite (:mod:`.nulls`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from flatbook.analysis.phases import phase_start
from flatbook.analysis.plan import MIN_WINDOW, PRIMARY_THRESHOLD

__all__ = ["Panel", "end_values", "fitted_change", "kendall_change", "panel",
           "panel_from_arrays", "trend_change", "window_counts"]


@dataclass
class Panel:
    """Runs in the late phase of a study, as arrays.

    Attributes:
        step: [T] the measurement grid (shared by every run).
        series: record key → [R, T] values (NaN where not measured).
        starts: [R] index of each run's first window measurement.
        lr, batch: [R] η and B of each run (B = inf for full batch).
        seeds: [R] each run's seed.
        runs: [R] index of each run in the study.
        counts: ``{"runs", "finished", "diverged", "never", "short", "late"}``: runs in the
            study, that did not diverge, that diverged, that never reach the threshold, that
            reach it with fewer than ``min_window`` measurements, and in the late phase.
        threshold, min_window: the window's definition.
    """

    step: np.ndarray
    series: dict[str, np.ndarray]
    starts: np.ndarray
    lr: np.ndarray
    batch: np.ndarray
    runs: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)
    seeds: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    threshold: float = PRIMARY_THRESHOLD
    min_window: int = MIN_WINDOW

    @property
    def n(self) -> int:
        """Runs in the late phase (R)."""
        return int(self.starts.size)

    @property
    def cells(self) -> list[tuple[float, float]]:
        """(η, B) cell of each run."""
        return list(zip(self.lr.tolist(), self.batch.tolist(), strict=True))

    def mask(self, starts: ArrayLike | None = None) -> np.ndarray:
        """[R, T] True inside each run's window (from ``starts``; default the window's)."""
        s = self.starts if starts is None else np.asarray(starts)
        return np.arange(self.step.size)[None, :] >= s[:, None]

    def log(self, key: str) -> np.ndarray:
        """[R, T] log of a positive series (NaN where ≤ 0 or missing)."""
        v = self.series.get(key)
        if v is None:
            return np.full((self.n, self.step.size), math.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(v > 0, np.log(np.where(v > 0, v, 1.0)), np.nan)

    def values(self, key: str, log: bool) -> np.ndarray:
        """[R, T] the series in the units a row analyses (log or as recorded)."""
        if log:
            return self.log(key)
        return self.series.get(key, np.full((self.n, self.step.size), math.nan))

    def with_series(self, **series: np.ndarray) -> Panel:
        """A copy with some series replaced (for the nulls)."""
        return replace(self, series=self.series | series)


def _b(v: object) -> float:
    return math.inf if v == "full" else float(v)  # type: ignore[arg-type]


def window_counts(study: Any, threshold: float, min_window: int = MIN_WINDOW
                  ) -> tuple[list[int], list[int], dict[str, int]]:
    """(indices of runs in the late phase, their window starts, counts) of a study at
    ``threshold`` (see :class:`Panel` for the counts)."""
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0; got {threshold!r}")
    if min_window < 3:
        raise ValueError(f"min_window must be ≥ 3; got {min_window!r}")
    fin = [i for i, s in enumerate(study.summaries) if s["status"] == "completed"]
    runs, starts, never, short = [], [], 0, 0
    for i in fin:
        t = study.trajectories[i]
        k = phase_start(t, threshold)
        if k is None:
            never += 1
        elif t["step"].size - k < min_window:
            short += 1
        else:
            runs.append(i)
            starts.append(int(k))
    n = len(study.summaries)
    return runs, starts, {"runs": n, "finished": len(fin), "diverged": n - len(fin),
                          "never": never, "short": short, "late": len(runs)}


def panel(study: Any, threshold: float = PRIMARY_THRESHOLD, min_window: int = MIN_WINDOW,
          keys: Sequence[str] | None = None) -> Panel:
    """The :class:`Panel` of a study (``summaries``, ``trajectories``) at ``threshold``:
    the runs with ≥ ``min_window`` measurements in the late window, every record key (or
    ``keys``) as [R, T] arrays padded with NaN to the longest run."""
    runs, starts, counts = window_counts(study, threshold, min_window)
    trajs = [study.trajectories[i] for i in runs]
    T = max((t["step"].size for t in trajs), default=0)
    step = next((np.asarray(t["step"], float) for t in trajs if t["step"].size == T),
                np.zeros(0))
    names = list(keys) if keys is not None else sorted({k for t in trajs for k in t})
    series = {}
    for k in names:
        a = np.full((len(trajs), T), math.nan)
        for r, t in enumerate(trajs):
            if k in t:
                v = np.asarray(t[k], dtype=float)
                a[r, :v.size] = v
        series[k] = a
    # a shorter run ends earlier: its window is moved to end with it (same grid, padded)
    s = [study.summaries[i] for i in runs]
    return Panel(step, series, np.asarray(starts, dtype=int),
                 np.array([float(x["lr"]) for x in s]), np.array([_b(x["batch_size"]) for x in s]),
                 np.asarray(runs, dtype=int), counts,
                 np.array([int(x.get("seed", -1)) for x in s], dtype=int), float(threshold),
                 int(min_window))


def panel_from_arrays(step: ArrayLike, series: Mapping[str, ArrayLike], starts: ArrayLike,
                      lr: ArrayLike, batch: ArrayLike, threshold: float = PRIMARY_THRESHOLD
                      ) -> Panel:
    """A :class:`Panel` from arrays (a fixture or a simulation): ``series`` key → [R, T]."""
    st = np.asarray(starts, dtype=int)
    R = st.size
    ser = {k: np.asarray(v, dtype=float) for k, v in series.items()}
    bad = [k for k, v in ser.items() if v.shape[0] != R]
    if bad:
        raise ValueError(f"series {bad} do not have {R} rows (one per run)")
    return Panel(np.asarray(step, dtype=float), ser, st, np.asarray(lr, float),
                 np.asarray(batch, float), np.arange(R), {"runs": R, "finished": R,
                 "diverged": 0, "never": 0, "short": 0, "late": R}, np.arange(R),
                 float(threshold))


def fitted_change(step: ArrayLike, V: ArrayLike, mask: ArrayLike) -> np.ndarray:
    """Per row of V [..., R, T]: the least-squares slope of V on ``step`` [T] over the
    finite values inside ``mask`` [..., R, T], times the window's length (last − first step
    inside it): b̂·(t_end − t_start), b̂ = Σ(t − t̄)(v − v̄)/Σ(t − t̄)² (R4's trend
    statistic). NaN with fewer than 3 points."""
    Va = np.asarray(V, dtype=float)
    t = np.broadcast_to(np.asarray(step, dtype=float), Va.shape)
    m = np.asarray(mask, dtype=bool) & np.isfinite(Va)
    w = m.astype(float)
    n = w.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        tb = (w * t).sum(-1) / n
        vb = (w * np.where(m, Va, 0.0)).sum(-1) / n
        tc = (t - tb[..., None]) * w
        num = (tc * np.where(m, Va - vb[..., None], 0.0)).sum(-1)
        den = (tc * tc).sum(-1)
        length = np.where(m, t, -np.inf).max(-1) - np.where(m, t, np.inf).min(-1)
        out = num / den * length
    return np.where((n >= 3) & (den > 0), out, math.nan)


def kendall_change(step: ArrayLike, V: ArrayLike, mask: ArrayLike) -> np.ndarray:
    """Per row of V [..., R, T]: Kendall's τ_b between time (``step`` [T]) and V over the
    non-NaN values inside ``mask`` — −∞ (log LVR of a rank-collapsed measurement: volume 0)
    is the smallest value, tied with other −∞. τ_b = Σ_{a<b} s_t s_v / √(Σ|s_t| · Σ|s_v|),
    s_t = sign(t_b − t_a), s_v = sign(v_b − v_a). NaN with fewer than 3 points or constant V."""
    Va = np.asarray(V, dtype=float)
    t = np.asarray(step, dtype=float)
    m = np.asarray(mask, dtype=bool) & ~np.isnan(Va)
    st = np.sign(t[None, :] - t[:, None])                           # [T, T]: t_b − t_a
    vv = np.where(m, Va, 0.0)
    sv = ((vv[..., None, :] > vv[..., :, None]).astype(float)
          - (vv[..., None, :] < vv[..., :, None]))                   # [..., T, T]
    pair = (m[..., :, None] & m[..., None, :]) & np.triu(np.ones(st.shape, bool), 1)
    num = (st * sv * pair).sum((-1, -2))
    den = np.sqrt((np.abs(st) * pair).sum((-1, -2)) * (np.abs(sv) * pair).sum((-1, -2)))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    return np.where((m.sum(-1) >= 3) & (den > 0), out, math.nan)


def trend_change(step: ArrayLike, V: ArrayLike, mask: ArrayLike) -> np.ndarray:
    """R4's run-level trend statistic of V [..., R, T]: :func:`fitted_change` when every
    value inside the windows is finite or NaN, else (a ±∞ anywhere in a study's windows, e.g.
    log LVR = −∞ at rank collapse, where a slope is undefined) :func:`kendall_change` for all
    runs of that study (the leading axes before R). The switch depends only on the multiset of
    each window's values, so a shuffle of the window in time leaves it unchanged."""
    Va = np.asarray(V, dtype=float)
    mk = np.broadcast_to(np.asarray(mask, dtype=bool), Va.shape)
    inf = (np.isinf(Va) & mk).any(axis=(-1, -2), keepdims=True)[..., 0]     # [..., 1]
    if not inf.any():
        return fitted_change(step, Va, mk)
    return np.where(inf, kendall_change(step, Va, mk), fitted_change(step, Va, mk))


def end_values(V: ArrayLike, starts: ArrayLike) -> np.ndarray:
    """Per row of V [..., R, T]: the mean of the non-NaN values over the last quarter of the
    run's window (the measurements from start + ⌊3/4 · length⌋ on; at least one): R4's
    end-of-run value. A −∞ (log LVR at rank collapse: volume 0) makes it −∞ (the log of the
    geometric mean volume, 0); factor tests then rank (:func:`..rules.factor_test`)."""
    Va = np.asarray(V, dtype=float)
    T = Va.shape[-1]
    st = np.asarray(starts)
    first = st + (3 * (T - st)) // 4
    m = (np.arange(T) >= first[..., None]) & ~np.isnan(Va)
    with np.errstate(invalid="ignore"):
        return np.where(m, Va, 0.0).sum(-1) / m.sum(-1)
