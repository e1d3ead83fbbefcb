"""Studies with a known truth, for calibrating the verdicts.

- :func:`simulated_study`: runs whose late-phase trajectories are level + drift + AR(1)
  noise — no effect (``effect=0``) or a planted drift of ``effect`` × the between-run standard
  deviation, in the claimed direction of every trend claim, plus (``comove``) a common noise
  component shared by log tr H and log LVR.
The nulls of the analysis plan (R6: N1–N6) and the rules run on many draws at once are in
:mod:`.nulls`.

- :func:`shuffle_late_phase`: a real study with every measured quantity shuffled in time
  inside each run's interpolation phase (step, training loss and accuracy kept in order) —
  which destroys every late-phase trend and co-movement with time while keeping each run's
  values.

Both return objects with the interface :func:`flatbook.analysis.evaluate_claims` reads
(``summaries``, ``trajectories``, ``finished``, ``interpolating``, ``late_trajectories()``,
``setting.independent``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from flatbook.analysis.phases import RunView
from flatbook.keyword_form import resolve

TREND_KEYS = {"trace_gn": (-1, True), "log_lvr_median": (-1, False),
              "lambda_max": (-1, True), "ld_median": (+1, False),
              "test_lambda_max": (+1, True), "test_log_lvr_median": (-1, False)}
"""Simulated quantities: (claimed direction of the late-phase change, positive quantity
simulated in log space)."""
KEEP_IN_ORDER = ("step", "epoch", "train_loss", "train_acc")
"""Columns a shuffle-in-time null leaves in order."""


@dataclass
class RunSet(RunView):
    """A minimal study: per-run ``summaries`` (dicts with ``lr``, ``batch_size``, ``seed``,
    ``status``, ``interpolates``, ``phase_index``, ``phase_step``) and ``trajectories``
    (``key → array[T]``); ``setting.independent`` says whether runs are independent units."""

    summaries: list[dict[str, Any]]
    trajectories: list[dict[str, np.ndarray]]
    setting: Any = field(default_factory=lambda: SimpleNamespace(independent=True))


@dataclass(frozen=True)
class Simulation:
    """The model of a simulated study (:func:`simulated_study`): ``n_runs`` runs of
    ``n_measure`` measurements, the interpolation phase from measurement ``onset``; a planted
    drift ``effect`` (in between-run standard deviations ``sd_between``), a common component
    ``comove`` ∈ [0, 1) of log tr H and log LVR, AR(1) noise of stationary sd ``sd_within``
    and coefficient ``phi`` ∈ (−1, 1); ``seed`` seeds everything."""

    n_runs: int = 12
    n_measure: int = 16
    onset: int = 1
    effect: float = 0.0
    comove: float = 0.0
    sd_between: float = 1.0
    sd_within: float = 0.5
    phi: float = 0.5
    seed: int = 0


def simulate_arrays(n_studies: int = 1, *, options: Simulation | None = None,
                    **flags: Any) -> dict[str, np.ndarray]:
    """Trajectories of ``n_studies`` simulated studies at once: ``step`` [T] and, for
    ``train_loss``, ``train_acc`` and each quantity of :data:`TREND_KEYS`, an array
    [n_studies, n_runs, T] (model: see :func:`simulated_study`; ``options``: a
    :class:`Simulation`, or its fields as keywords)."""
    o = resolve(Simulation, "simulate_arrays", options, flags)
    n_runs, n_measure, onset, effect, comove = o.n_runs, o.n_measure, o.onset, o.effect, o.comove
    sd_between, sd_within, phi, seed = o.sd_between, o.sd_within, o.phi, o.seed
    if n_runs < 1 or n_measure < 4 or not 0 <= onset < n_measure - 2:
        raise ValueError(f"need n_runs ≥ 1, n_measure ≥ 4 and 0 ≤ onset < n_measure − 2; got "
                         f"{n_runs}, {n_measure}, {onset}")
    if not 0 <= comove < 1:
        raise ValueError(f"comove must be in [0, 1); got {comove}")
    if not -1 < phi < 1:
        raise ValueError(f"phi must be in (−1, 1); got {phi}")
    rng = np.random.default_rng(seed)
    S, Rn, T = int(n_studies), int(n_runs), int(n_measure)
    step = np.arange(T, dtype=float) * 100.0
    s = np.clip((np.arange(T) - onset) / (T - 1 - onset), 0.0, 1.0)

    def ar1() -> np.ndarray:
        z = rng.standard_normal((S, Rn, T))
        e = np.empty_like(z)
        e[..., 0] = z[..., 0]
        c = math.sqrt(1 - phi * phi)
        for t in range(1, T):
            e[..., t] = phi * e[..., t - 1] + c * z[..., t]
        return e * sd_within

    out: dict[str, np.ndarray] = {"step": step}
    frac = np.minimum(1.0, np.arange(T) / max(onset, 1))
    loss = np.exp(np.log(0.5) + (np.log(1e-3) - np.log(0.5)) * frac
                  + 0.05 * rng.standard_normal((S, Rn, T)))
    loss[..., onset:] = np.minimum(loss[..., onset:], 5e-3)
    out["train_loss"] = loss
    out["train_acc"] = np.broadcast_to(np.where(np.arange(T) >= onset, 1.0, 0.9),
                                       (S, Rn, T)).copy()
    common = ar1()
    for key, (sign, positive) in TREND_KEYS.items():
        e = ar1()
        if comove and key in ("trace_gn", "log_lvr_median"):
            e = math.sqrt(comove) * common + math.sqrt(1 - comove) * e
        v = (rng.normal(0.0, sd_between, (S, Rn, 1)) + sign * effect * sd_between * s + e)
        out[key] = np.exp(v) if positive else v
    return out


def simulated_study(*, options: Simulation | None = None, **flags: Any) -> RunSet:
    """A study of ``n_runs`` independent runs with ``n_measure`` measurements each, the
    interpolation phase starting at measurement ``onset``.

    For each quantity of :data:`TREND_KEYS` and run r: value_t = a_r + d·s_t + e_t (in log
    space for positive quantities), with a_r ~ N(0, sd_between²) the run's level, s_t the
    position in the late phase rescaled to [0, 1] (0 before it), d = ``effect`` · sd_between
    in the claimed direction, and e_t an AR(1) process (coefficient ``phi``, stationary sd
    ``sd_within``). ``comove`` ∈ [0, 1) mixes a common AR(1) component into log tr H and log
    LVR (correlated increments). The training loss falls log-linearly below 1e-2 with small
    noise; accuracy is 1 from the onset. (The S = 1 case of :func:`simulate_arrays`.)
    The parameters: ``options`` (:class:`Simulation`) or its fields as keywords.
    """
    o = resolve(Simulation, "simulated_study", options, flags)
    n_runs, onset = o.n_runs, o.onset
    arr = simulate_arrays(1, options=o)
    summaries, trajs = [], []
    for r in range(n_runs):
        traj = {"step": arr["step"].copy()}
        traj |= {k: v[0, r].copy() for k, v in arr.items() if k != "step"}
        trajs.append(traj)
        summaries.append({"lr": 0.1, "batch_size": 16, "seed": r, "status": "completed",
                          "interpolates": True, "phase_index": onset,
                          "phase_step": float(arr["step"][onset]),
                          **{k: float(traj[k][-1]) for k in TREND_KEYS}})
    return RunSet(summaries, trajs)


def shuffle_late_phase(study: Any, seed: int = 0,
                       keep: tuple[str, ...] = KEEP_IN_ORDER) -> RunSet:
    """The study with, inside each interpolating run's interpolation phase, the measurements
    of every column except ``keep`` permuted jointly in time (one seeded permutation per run).
    Summaries are copied unchanged; runs outside the interpolation phase are left as they
    are."""
    rng = np.random.default_rng(seed)
    trajs = [dict(t) for t in study.trajectories]
    for i in study.interpolating:
        k = study.summaries[i]["phase_index"]
        t = trajs[i]
        n = t["step"].size - k
        perm = k + rng.permutation(n)
        for key, v in list(t.items()):
            if key in keep:
                continue
            w = np.array(v, copy=True)
            w[k:] = np.asarray(v)[perm]
            t[key] = w
    setting = getattr(study, "setting", SimpleNamespace(independent=True))
    return RunSet([dict(s) for s in study.summaries], trajs, setting)
