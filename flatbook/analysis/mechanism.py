r"""The mechanism of R5: an exact decomposition of the late-phase change of the volume.

At one measurement, with J_i = J_x(x_i) the output Jacobian at evaluation point i, r = min(k, d),
ISO_i = LVR_i^{2/r}·r/‖J_i‖_F² ∈ (0, 1] (the AM–GM ratio, L4) and the weighted T1 form
M = (1/n) Σ ‖x_i‖²‖J_i‖_F² ≤ ‖W₁‖₂² tr H with slack s = ‖W₁‖₂² tr H / M (T1):

    A := (2/r) · mean_i log LVR_i                       (log of GM_i LVR_i^{2/r}; T2's left side)
       = log tr H + log ‖W₁‖₂² − log s                 (= log M, the T1 form)
         + [log F̄ − log M]                             (aggregation: weighting by ‖x_i‖²)
         + [mean_i log ‖J_i‖_F² − log F̄]                (spread of the magnitudes, ≤ 0)
         + [A − mean_i log ‖J_i‖_F² + log r]            (isotropy: mean_i log ISO_i ≤ 0)
         − log r,

with F̄ = (1/n) Σ‖J_i‖_F². Every bracket is a recorded quantity (``log_lvr_mean``,
``trace_gn``, ``l1_weight_norm``, ``t1_weighted_lhs`` / ``_slack``, ``frob_sq_mean``,
``log_frob_sq_mean``, ``r``), and the identity holds at every measurement *exactly* (the last
term is constant). The late-phase change of each term is its fitted change
(:func:`.window.fitted_change`, a linear map), so the six changes add up to ΔA to rounding:

    ΔA = Δlog tr H + Δlog ‖W₁‖₂² − Δlog s + Δaggregation + Δspread + Δisotropy.

Stores recorded before ``log_frob_sq_mean`` existed (measurement version 1) cannot separate the
spread from the point-wise AM–GM gap: there the spread term is 0 and the isotropy term carries
both (``spread_separated`` False, and :func:`mechanism_sentence` says so). A is finite only
when every point's Jacobian has full rank; runs where some point is rank-deficient anywhere
in the window (``log_lvr_finite_frac`` < 1) are not decomposed and are counted in the
rank-collapse row with the share of points that collapse. The right side of T2 (GM form)
changes by Δlog tr H + Δlog ‖W₁‖₂² (the evaluation points are fixed), reported beside ΔA.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from flatbook.analysis.window import Panel, fitted_change

__all__ = ["KEYS", "MISSING_KEYS", "TERMS", "decompose", "mechanism_sentence", "terms_at"]

KEYS = ("log_lvr_mean", "trace_gn", "l1_weight_norm", "t1_weighted_lhs", "t1_weighted_slack",
        "frob_sq_mean", "r", "log_lvr_finite_frac")
"""Record keys the decomposition needs."""
SPREAD_KEY = "log_frob_sq_mean"
"""Record key (measurement version ≥ 2) that separates the spread of ‖J_i‖_F² from isotropy."""
TERMS = ("trace", "weight", "slack", "aggregation", "spread", "isotropy")
"""The terms, in the order they add up to the total."""
MISSING_KEYS = ("per-point log LVR (to decompose on the points that stay full rank when others "
                "collapse)",)
"""Quantities the store does not record that a finer decomposition would need."""


def terms_at(t: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The terms of the identity at every measurement of a trajectory (key → [..., T]):
    ``total`` = A, ``trace``, ``weight``, ``slack`` (= −log s), ``aggregation``,
    ``spread``, ``isotropy`` and ``const`` = −log r, with total = Σ terms + const exactly.
    Without :data:`SPREAD_KEY` in ``t`` the spread is 0 and isotropy includes it."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.asarray(t["r"], float)
        A = 2.0 / r * np.asarray(t["log_lvr_mean"], float)
        M = np.log(np.asarray(t["t1_weighted_lhs"], float))
        Fb = np.log(np.asarray(t["frob_sq_mean"], float))
        tr = np.log(np.asarray(t["trace_gn"], float))
        w = 2 * np.log(np.asarray(t["l1_weight_norm"], float))
        # −log s is computed as log M − log tr H − log‖W‖²: the recorded slack is the same
        # ratio, rounded; using M keeps the identity exact to float64 rounding
        slack = M - tr - w
        Lb = np.asarray(t[SPREAD_KEY], float) if SPREAD_KEY in t else Fb
        return {"total": A, "trace": tr, "weight": w, "slack": slack, "aggregation": Fb - M,
                "spread": Lb - Fb, "isotropy": A - (Lb - np.log(r)), "const": -np.log(r)}


def decompose(p: Panel) -> dict[str, Any]:
    """Per run of a :class:`.window.Panel`: the fitted late-window change of A and of each of
    :data:`TERMS` (arrays [R], NaN for rank-collapsed runs), ``bound`` = Δ log of T2's right
    side, ``residual`` = ΔA − Σ terms (rounding only), ``full_rank`` [R] (every point full
    rank through the window), ``collapse_share`` [R] (1 − the smallest finite fraction in
    the window), ``slack_recorded`` (Δlog of the recorded T1 slack, a check) and
    ``spread_separated`` (the panel records :data:`SPREAD_KEY` for every decomposed run)."""
    if p.n == 0:
        empty = np.zeros(0)
        return {k: empty for k in ("total", *TERMS, "residual", "bound", "collapse_share",
                                   "slack_recorded")} | {"full_rank": np.zeros(0, bool),
                                                         "spread_separated": False}
    missing = [k for k in KEYS if k not in p.series]
    if missing:
        raise ValueError(f"the panel lacks {missing}: the decomposition needs {KEYS}")
    m = p.mask()
    ff = np.where(m, p.series["log_lvr_finite_frac"], np.inf)
    low = ff.min(axis=1) if ff.size else np.full(p.n, math.nan)
    full = np.isfinite(low) & (low >= 1.0)
    series = dict(p.series)
    sep = SPREAD_KEY in series and bool(np.isfinite(np.where(
        m & full[:, None], series[SPREAD_KEY], 0.0)).all())
    if not sep:
        series.pop(SPREAD_KEY, None)   # absent or incomplete: spread folded into isotropy
    tt = terms_at(series)
    ch = {k: fitted_change(p.step, v, m) for k, v in tt.items() if k != "const"}
    for k in ch:
        ch[k] = np.where(full, ch[k], math.nan)
    out: dict[str, Any] = {k: ch[k] for k in ("total", *TERMS)}
    out["residual"] = ch["total"] - sum(ch[k] for k in TERMS)
    out["bound"] = ch["trace"] + ch["weight"]
    out["full_rank"] = full
    out["collapse_share"] = np.where(np.isfinite(low), 1.0 - np.minimum(low, 1.0), math.nan)
    out["slack_recorded"] = np.where(
        full, fitted_change(p.step, p.log("t1_weighted_slack"), m), math.nan)
    out["spread_separated"] = sep
    return out


def mechanism_sentence(d: Mapping[str, np.ndarray]) -> str:
    """R5's sentence from the per-run changes of :func:`decompose` (means over decomposed
    runs): if the isotropy term carries more than half of the volume change (same sign), the
    compression is mostly anisotropy, which flatness does not control; else if T2's right
    side rises while the volume falls, the fall is not explained by flatness; otherwise how
    much the sharpness term (Δlog tr H) accounts for, in nats beside the total."""
    ok = np.asarray(d["full_rank"], bool)
    n, R = int(ok.sum()), int(ok.size)
    if R == 0:
        return "No run is in the late window: there is no volume change to decompose."
    if n == 0:
        return (f"No run keeps every evaluation point full rank through the late window "
                f"(0 of {R}): the volume change cannot be decomposed.")
    mean = {k: float(np.mean(np.asarray(d[k])[ok])) for k in ("total", "bound", *TERMS)}
    tot, iso, bnd, tr = mean["total"], mean["isotropy"], mean["bound"], mean["trace"]
    head = (f"Over the late window ({n} of {R} runs full rank), the volume (2/r)·mean log LVR "
            f"changes by {tot:+.3g} nats: Δlog tr H {tr:+.3g}, Δlog ‖W₁‖₂² "
            f"{mean['weight']:+.3g}, T1 slack {mean['slack']:+.3g}, aggregation "
            f"{mean['aggregation']:+.3g}, spread of ‖J‖_F² {mean['spread']:+.3g}, isotropy "
            f"{iso:+.3g}. ")
    if not d.get("spread_separated", False):
        head += ("(This store does not record mean log ‖J‖_F², so the isotropy term also "
                 "carries the spread of ‖J‖_F² over points.) ")
    if tot != 0 and iso / tot > 0.5:
        return head + ("The compression is mostly anisotropy, which flatness does not "
                       "control.")
    if bnd > 0 and tot < 0:
        return head + (f"The bound's right side rises ({bnd:+.3g}) while the volume falls: "
                       "the fall is not explained by flatness in this setting.")
    return head + (f"The sharpness term accounts for {tr:+.3g} of the {tot:+.3g} nats.")
