"""The nulls of R6 and the plan's rules run on many draws at once (calibration and power).

A *draw set* (:class:`Draws`) holds S studies' late-window series as arrays [S, R, T] on one
measurement grid, with window starts [S, R] and the (η, B) of each run [R].
:func:`score_draws` scores the rows of a claim of :mod:`.plan` on every draw with the same
rule functions (:mod:`.rules`) and the same seeds as :func:`flatbook.analysis.evaluate_claims`
(on one draw the two agree exactly: tested), vectorised over draws.

The nulls:

- N1 :func:`shuffle_in_time` — every series permuted in time inside each run's window
  (trend parts);
- N2 :func:`smooth_decays` — two (or more) series replaced by independent smooth decaying
  curves with different time constants plus noise (coupling parts: shared shape);
- N3 :func:`mismatch` — one series swapped between runs of one (η, B) cell (coupling parts);
- N4 :func:`plant` on some rows with others null — partial nulls (the intersection–union rule);
- N5 :func:`permute_labels` — η (or B) permuted within the other factor's strata (factors);
- N6 :func:`loss_driven` — both series a smooth non-linear function of the run's own loss
  plus independent noise (coupling parts: a shared driver is not coupling).

:func:`simulate` builds a synthetic draw set (the default design: 2 η × 2 B × 9 runs) with a
planted effect in SDs of the run-level statistic for power curves (:func:`power_curve`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from flatbook.analysis import rules as RL
from flatbook.analysis.plan import ClaimSpec, Row
from flatbook.analysis.verdicts import CONTRADICTED, REPRODUCED, combine
from flatbook.analysis.window import Panel, end_values, fitted_change, trend_change

__all__ = ["Draws", "decided_rate", "from_panel", "loss_driven", "mismatch", "permute_labels",
           "plant", "power_curve", "power_table", "score_draws", "shuffle_in_time", "simulate",
           "smooth_decays", "to_study"]

KEEP = ("step", "epoch", "train_loss", "train_acc")
"""Series a shuffle in time keeps in order."""


@dataclass
class Draws:
    """S studies on one grid: ``step`` [T], ``series`` key → [S, R, T], ``starts`` [S, R],
    ``lr`` and ``batch`` [R]."""

    step: np.ndarray
    series: dict[str, np.ndarray]
    starts: np.ndarray
    lr: np.ndarray
    batch: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """(S, R, T)."""
        return (self.starts.shape[0], self.starts.shape[1], self.step.size)

    @property
    def cells(self) -> list[tuple[float, float]]:
        """The (η, B) cell of each run r, a list of R pairs."""
        return list(zip(self.lr.tolist(), self.batch.tolist(), strict=True))

    def mask(self) -> np.ndarray:
        """[S, R, T] inside each window."""
        return np.arange(self.step.size)[None, None, :] >= self.starts[..., None]

    def values(self, key: str, log: bool) -> np.ndarray:
        """The series ``key`` [S, R, T], as log v (NaN where v ≤ 0) when ``log``."""
        v = self.series[key]
        if not log:
            return v
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(v > 0, np.log(np.where(v > 0, v, 1.0)), np.nan)


def from_panel(p: Panel, S: int = 1, keys: Sequence[str] | None = None) -> Draws:
    """S copies of a :class:`.window.Panel` (the real fixture) as a draw set."""
    ks = list(keys) if keys is not None else list(p.series)
    ser = {k: np.broadcast_to(p.series[k], (S, *p.series[k].shape)).copy() for k in ks
           if k in p.series}
    return Draws(p.step.copy(), ser, np.broadcast_to(p.starts, (S, p.n)).copy(), p.lr.copy(),
                 p.batch.copy())


# --------------------------------------------------------------------------- scoring
def _trend(d: Draws, row: Row, k: int, seed: int, n_flip: int) -> dict:
    start = np.zeros_like(d.starts) if row.window == "whole" else d.starts
    m = np.arange(d.step.size)[None, None, :] >= start[..., None]
    U = trend_change(d.step, d.values(row.measure, row.log), m)
    return RL.signflip_test(U, row.direction, n_parts=k, n_flip=n_flip, seed=seed)


def _coupling(d: Draws, row: Row, k: int, seed: int, n_perm: int) -> dict:
    Z = RL.coupling_matrix(d.values(row.measure, row.log), d.values(row.against, True),
                           d.values("train_loss", True), d.starts, d.cells)
    base = RL.coupling_test(Z, d.cells, 1 if row.kind != "coupling" else row.direction,
                            n_parts=k, n_perm=n_perm, seed=seed)
    if row.kind != "equivalence":
        return base
    n = int(base["n"][0])
    return base | RL.tost(base["effect"], base["sd"] / math.sqrt(max(n, 1)), n - 1,
                          row.margin, n, k)


def _levels(d: Draws, row: Row, k: int, seed: int, n_perm: int, n_factor: int) -> dict:
    y = end_values(d.values(row.measure, row.log), d.starts)
    if row.kind == "correlation":
        x = end_values(d.values(row.against, True), d.starts)
        return RL.correlation_test(y, x, row.direction, n_parts=k, n_perm=n_perm, seed=seed)
    lv, st = (d.lr, d.batch) if row.against == "lr" else (d.batch, d.lr)
    return RL.factor_test(y, lv, list(st), row.direction, n_parts=k, n_perm=n_factor,
                          seed=seed)


SCORED = ("trend", "coupling", "equivalence", "factor", "correlation")
"""Kinds :func:`score_draws` scores (the others are counts or labels, not decisions)."""


def score_draws(d: Draws, spec: ClaimSpec, *, seed: int = 0, n_flip: int = 4000,
                n_perm: int = 2000, n_factor: int = 10_000, rows: Sequence[str] | None = None
                ) -> dict[str, np.ndarray]:
    """Verdicts [S] of the rows of ``spec`` whose kind is in :data:`SCORED` (the late
    window; plateau rows are skipped) and, under ``"claim"``, the claim's verdict from its
    essential scored rows (intersection–union). Same defaults as the scoring of a study."""
    k = max(1, len(spec.essential_rows()))
    out: dict[str, np.ndarray] = {}
    ess = []
    for row in spec.rows:
        if row.kind not in SCORED or row.window == "plateau" or (
                rows is not None and row.name not in rows):
            continue
        if row.kind == "trend":
            res = _trend(d, row, k, seed, n_flip)
        elif row.kind in ("coupling", "equivalence"):
            res = _coupling(d, row, k, seed, n_perm)
        else:
            res = _levels(d, row, k, seed, n_perm, n_factor)
        out[row.name] = np.asarray(res["verdict"])
        if row.essential:
            ess.append(row.name)
    if ess:
        S = d.shape[0]
        out["claim"] = np.array([combine([out[r][s] for r in ess]) for s in range(S)])
    return out


def decided_rate(verdicts: np.ndarray) -> tuple[float, float]:
    """(fraction of draws decided — reproduced or contradicted —, its binomial SE)."""
    v = np.asarray(verdicts)
    f = float(np.mean((v == REPRODUCED) | (v == CONTRADICTED)))
    return f, math.sqrt(0.05 * 0.95 / max(v.size, 1))


# --------------------------------------------------------------------------- nulls
def shuffle_in_time(d: Draws, seed: int = 0, keep: Sequence[str] = KEEP) -> Draws:
    """N1: in every draw and run, the window's measurements of every series except ``keep``
    permuted jointly in time (one seeded permutation per draw and run)."""
    S, R, T = d.shape
    rng = np.random.default_rng(seed)
    # inside the window a random key in [0, 1); before it a negative key increasing in
    # time, so those measurements stay in place
    key = np.where(d.mask(), rng.random((S, R, T)), -1.0 - np.arange(T)[None, None, ::-1])
    idx = np.argsort(key, axis=2)
    ser = {k: (v if k in keep else np.take_along_axis(v, idx, axis=2))
           for k, v in d.series.items()}
    return replace(d, series=ser)


def _decay(shape: tuple[int, int, int], step: np.ndarray, starts: np.ndarray,
           rng: np.random.Generator, noise: float) -> np.ndarray:
    S, R, T = shape
    t = (step - step[0]) / max(np.ptp(step), 1.0)
    t0 = t[np.clip(starts, 0, T - 1)][..., None]
    tau = np.exp(rng.uniform(np.log(0.05), np.log(1.0), (S, R, 1)))
    amp = rng.uniform(0.2, 1.0, (S, R, 1))
    level = rng.normal(0.0, 1.0, (S, R, 1))
    return level + amp * np.exp(-np.maximum(t[None, None] - t0, 0) / tau) \
        + noise * rng.standard_normal((S, R, T))


def smooth_decays(d: Draws, keys: Sequence[str], seed: int = 0, noise: float = 0.02,
                  logs: Sequence[bool] | None = None) -> Draws:
    """N2: each of ``keys`` replaced, in every run, by its own smooth decaying curve
    level + a·exp(−(t − t_start)/τ) (τ log-uniform in [0.05, 1] of the run, a uniform in
    [0.2, 1]) plus independent N(0, noise²) — in log units for positive series (``logs``,
    default: every key but log LVR is positive)."""
    rng = np.random.default_rng(seed)
    ser = dict(d.series)
    for j, k in enumerate(keys):
        c = _decay(d.shape, d.step, d.starts, rng, noise)
        lg = (k != "log_lvr_median" and not k.startswith("log_")) if logs is None else logs[j]
        ser[k] = np.exp(c) if lg else c
    return replace(d, series=ser)


def mismatch(d: Draws, key: str, seed: int = 0) -> Draws:
    """N3: ``key`` of every run replaced by that of another run of the same (η, B) cell (a
    seeded random derangement within each cell, per draw)."""
    S, R, _ = d.shape
    rng = np.random.default_rng(seed)
    cells = d.cells
    v = d.series[key].copy()
    for c in dict.fromkeys(cells):
        g = np.array([i for i in range(R) if cells[i] == c])
        if g.size < 2:
            continue
        for s in range(S):
            order = rng.permutation(g)          # a random cycle: no run keeps its own
            v[s, order] = d.series[key][s, np.roll(order, 1)]
    return replace(d, series=d.series | {key: v})


def permute_labels(d: Draws, factor: str, seed: int = 0) -> tuple[Draws, np.ndarray]:
    """N5: the values of ``factor`` ("lr" or "batch_size") permuted among runs within the
    strata of the other factor, one seeded permutation per draw; returns the draws with every
    series' runs reordered accordingly (labels fixed, data moved) and the permutations [S, R]."""
    S, R, _ = d.shape
    strata = d.batch if factor == "lr" else d.lr
    perms = RL._cell_perms(list(strata), S, seed)
    ser = {k: np.take_along_axis(v, perms[..., None], axis=1) for k, v in d.series.items()}
    return replace(d, series=ser, starts=np.take_along_axis(d.starts, perms, axis=1)), perms


def loss_driven(d: Draws, keys: Sequence[str], seed: int = 0, noise: float = 0.02,
                slope: tuple[float, float] = (0.5, 1.5)) -> Draws:
    """N6: each of ``keys`` replaced by a smooth non-linear function of the run's own log
    loss, c·tanh(a·u) + level with u = log L standardised over the run's window, a uniform
    in ``slope`` (tanh(1.5 u) bends by a factor ~5 in slope over ±1.5 SD), c in [0.3, 1],
    plus independent N(0, noise²) (log units for positive series)."""
    rng = np.random.default_rng(seed)
    S, R, _ = d.shape
    ll = d.values("train_loss", True)
    w = d.mask() & np.isfinite(ll)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(w, ll, 0.0).sum(2, keepdims=True) / w.sum(2, keepdims=True)
        sd = np.sqrt(np.where(w, (ll - m) ** 2, 0.0).sum(2, keepdims=True)
                     / w.sum(2, keepdims=True)) + 1e-12
    ser = dict(d.series)
    for k in keys:
        a = rng.uniform(*slope, (S, R, 1))
        c = rng.uniform(0.3, 1.0, (S, R, 1))
        v = c * np.tanh(a * (ll - m) / sd) + rng.normal(0, 1, (S, R, 1)) \
            + noise * rng.standard_normal(ll.shape)
        ser[k] = v if k == "log_lvr_median" else np.exp(v)
    return replace(d, series=ser)


def plant(d: Draws, key: str, effect_sd: float, log: bool, seed: int = 0,
          sd: float | None = None) -> Draws:
    """Add a linear drift over each run's window to ``key`` whose fitted change is
    ``effect_sd`` × ``sd`` (default: the SD over runs of the key's fitted change, pooled over draws)
    — a planted trend of known size in SDs of the run-level statistic (N4, power)."""
    v = d.values(key, log)
    m = d.mask()
    if sd is None:          # the SD over runs of the run-level statistic, pooled over draws
        u = fitted_change(d.step, v, m)
        sd = float(np.sqrt(np.nanmean(np.nanvar(u, axis=1, ddof=1)))) or 1.0
    t = d.step[None, None, :]
    t0 = d.step[d.starts][..., None]
    L = d.step[-1] - t0
    ramp = np.where(m, (t - t0) / np.where(L > 0, L, 1.0), 0.0)
    nv = v + effect_sd * sd * ramp
    return replace(d, series=d.series | {key: np.exp(nv) if log else nv})


def simulate(S: int, *, n_rep: int = 9, lrs: Sequence[float] = (0.25, 0.5),
             batches: Sequence[float] = (16, 64), T: int = 24, seed: int = 0,
             sd_within: float = 0.25, phi: float = 0.5) -> Draws:
    """S synthetic studies of the default design (len(lrs) × len(batches) × ``n_rep`` runs,
    T measurements, window from measurement 0): every plan measure is level + AR(1) noise
    (coefficient ``phi``, sd ``sd_within``) with no trend, coupling or factor effect; the
    loss falls log-linearly from 1e-3 with noise."""
    rng = np.random.default_rng(seed)
    cells = [(lr, b) for lr in lrs for b in batches]
    R = len(cells) * n_rep
    lr = np.repeat([c[0] for c in cells], n_rep).astype(float)
    bt = np.repeat([c[1] for c in cells], n_rep).astype(float)
    step = np.arange(T, dtype=float) * 100

    def ar1() -> np.ndarray:
        z = rng.standard_normal((S, R, T))
        e = np.empty_like(z)
        e[..., 0] = z[..., 0]
        for t in range(1, T):
            e[..., t] = phi * e[..., t - 1] + math.sqrt(1 - phi * phi) * z[..., t]
        return e * sd_within

    ser = {"train_loss": np.exp(np.log(1e-3) - np.linspace(0, 2, T)[None, None]
                                - 0.3 * rng.random((S, R, 1))
                                + 0.05 * rng.standard_normal((S, R, T)))}
    for k in ("trace_gn", "lambda_max", "mls_median", "nmls", "nvr", "ld_median",
              "test_trace_hessian", "test_lambda_max"):
        ser[k] = np.exp(rng.normal(0, 1, (S, R, 1)) + ar1())
    for k in ("log_lvr_median", "test_log_lvr_median"):
        ser[k] = rng.normal(0, 1, (S, R, 1)) + ar1()
    return Draws(step, ser, np.zeros((S, R), int), lr, bt)


def power_curve(spec: ClaimSpec, row: str, effects: Sequence[float] = (0.25, 0.5, 1.0), *,
                S: int = 200, seed: int = 0, base: Draws | None = None,
                n_flip: int = 2000) -> dict[float, float]:
    """Power of a trend row (fraction of draws *reproduced*) at planted effects (in SDs of the
    run-level statistic) on ``base`` (default :func:`simulate` of the default design)."""
    r = next(x for x in spec.rows if x.name == row)
    if r.kind != "trend":
        raise ValueError(f"power_curve plants trends; row {row!r} is a {r.kind} row")
    d0 = base if base is not None else simulate(S, seed=seed)
    out = {}
    for e in effects:
        d = plant(d0, r.measure, r.direction * e, r.log, seed=seed)
        v = score_draws(d, spec, seed=seed, n_flip=n_flip, rows=[row])[row]
        out[float(e)] = float(np.mean(v == REPRODUCED))
    return out


def to_study(study: object, p: Panel, d: Draws, s: int = 0,
             keys: Sequence[str] | None = None) -> object:
    """A copy of ``study`` (a RunSet) whose runs in the panel ``p`` carry draw ``s`` of ``d``
    for ``keys`` (default every series of ``d``) — so a null built here can be scored by
    :func:`flatbook.analysis.evaluate_claims` itself."""
    from flatbook.analysis.calibration import RunSet

    trajs = [dict(t) for t in study.trajectories]  # type: ignore[attr-defined]
    for r, i in enumerate(p.runs):
        for k in (keys if keys is not None else list(d.series)):
            n = trajs[i]["step"].size
            trajs[i][k] = np.asarray(d.series[k][s, r, :n], dtype=float).copy()
    return RunSet([dict(x) for x in study.summaries], trajs)  # type: ignore[attr-defined]


def power_table(S: int = 400, seed: int = 0, effects: Sequence[float] = (0.25, 0.5, 1.0),
                base: Draws | None = None) -> list[dict[str, object]]:
    """R3/R6's power table, for the report: for every late-window trend row of the headline
    claims, the fraction of :func:`simulate` d studies of the default design (or ``base``)
    that reproduce it at each planted effect (SDs of the run-level statistic), and per claim
    ``claim_power`` = the product of its essential rows' power at 0.5 SD (claim-level power
    if the parts were independent; coupling, factor and correlation rows enter through the
    t approximation of :func:`flatbook.analysis.rules.power_t` at n runs)."""
    from flatbook.analysis.plan import CLAIM_SPECS, HEADLINE

    d0 = base if base is not None else simulate(S, seed=seed)
    n = d0.shape[1]
    out: list[dict[str, object]] = []
    for spec in CLAIM_SPECS:
        if spec.key not in HEADLINE:
            continue
        at_half = []
        for r in spec.rows:
            if r.kind == "trend" and r.window == "late":
                curve = power_curve(spec, r.name, effects, base=d0, seed=seed)
            elif r.kind in ("coupling", "factor", "correlation", "trend"):
                curve = {float(e): float(RL.power_t(e, n)) for e in effects}
            else:
                continue
            out.append({"claim": spec.key, "row": r.name, "essential": r.essential,
                        "simulated": r.kind == "trend" and r.window == "late",
                        **{f"power@{e:g}": curve[float(e)] for e in effects}})
            if r.essential:
                at_half.append(curve.get(0.5, math.nan))
        cp = float(np.prod(at_half)) if at_half else math.nan
        for row in out:
            if row["claim"] == spec.key:
                row["claim_power"] = cp
    return out
