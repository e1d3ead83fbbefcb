"""The parts of the kinds that are not trends, couplings or factors: fractions (k of n), by
design, theorems, across settings, paired contrasts, the bound's looseness and the mechanism
(:mod:`.mechanism`). Called by :func:`.scoring.score_panel`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from flatbook.analysis import rules as RL
from flatbook.analysis.plan import MIN_WINDOW, ClaimSpec, Row
from flatbook.analysis.verdicts import NOT_TESTED
from flatbook.analysis.window import Panel, fitted_change

__all__ = ["other_part"]


def _fraction(k: int, n: int, what: str) -> tuple[dict, str, dict]:
    v = RL.fraction_rule(k, n)
    frac = k / n if n else math.nan
    return ({"effect": np.array([frac]), "n": np.array([n]), "verdict": np.array([v])},
            f"{k} of {n} {what}", {"k": k})


def _stability(study: Any, row: Row) -> tuple[dict, str, dict]:
    fin = [s for s in study.summaries if s["status"] == "completed"]
    if row.name == "gd":
        ratio = [float(s["lr"]) * float(s["lambda_max"]) / 2 for s in fin]
    else:
        ratio = [float(s["trace_gn"]) / float(s["sgd_ceiling"]) for s in fin]
    ratio = np.asarray(ratio, float)
    k = int(np.sum(ratio <= 1.0))
    res, note, ex = _fraction(k, len(fin), "runs at or below the ceiling (by design)")
    q = np.nanquantile(ratio, [0.0, 0.5, 1.0]) if ratio.size else [math.nan] * 3
    return res, note + f"; min/median/max {q[0]:.2g}/{q[1]:.2g}/{q[2]:.2g}", ex


def _label_noise(p: Panel, noise: Any, row: Row, k: int, o: Any) -> tuple[dict, str, dict]:
    """Paired over (η, B, seed): Δlog tr H over the *plain* run's late-window steps, noise −
    plain (the twin's clean loss may never reach the threshold, so its own window is not
    used); ``noise`` is the label-noise study (same configs, same order)."""
    if noise is None:
        return {}, "no label-noise study loaded", {}
    key = {(float(s["lr"]), str(s["batch_size"]), int(s["seed"])): j
           for j, s in enumerate(noise.summaries) if s["status"] == "completed"}
    d, n_pairs = [], 0
    for r in range(p.n):
        j = key.get((float(p.lr[r]), _bkey(p.batch[r]), int(p.seeds[r])))
        if j is None:
            continue
        tn = noise.trajectories[j]
        n = min(tn["step"].size, p.step.size)
        if not np.array_equal(np.asarray(tn["step"][:n], float), p.step[:n]):
            continue
        n_pairs += 1
        m = p.mask()[r:r + 1, :n]
        with np.errstate(divide="ignore", invalid="ignore"):
            ln = np.log(np.asarray(tn[row.measure][:n], float))[None]
        dn = fitted_change(p.step[:n], ln, m)[0]
        dp = fitted_change(p.step[:n], p.log(row.measure)[r:r + 1, :n], m)[0]
        d.append(dn - dp)
    u = np.asarray(d, float)
    u = u[np.isfinite(u)]
    res = RL.signflip_test(u[None], row.direction, n_parts=k, n_flip=o.n_flip, seed=o.seed)
    return res, f"{u.size} of {p.n} plain runs paired ({n_pairs} matched)", {}


def _bkey(b: float) -> str:
    return "full" if math.isinf(b) else str(int(b))


def _mechanism(p: Panel, row: Row, k: int, o: Any) -> tuple[dict, str, dict]:
    from flatbook.analysis.mechanism import KEYS, decompose
    if any(key not in p.series for key in KEYS):
        return {}, "the store lacks a key the decomposition needs", {}
    dec = decompose(p)
    if row.name == "rank_collapse":
        full = dec["full_rank"]
        res, note, ex = _fraction(int(full.sum()), p.n, "runs keep every point full rank")
        share = dec["collapse_share"][~full]
        return res, note + (f"; mean share of collapsed points in the others "
                            f"{float(np.nanmean(share)):.2g}" if share.size else ""), ex
    u = dec[row.name][np.isfinite(dec[row.name])]
    res = RL.signflip_test(u[None], -1, n_parts=1, n_flip=o.n_flip, seed=o.seed)
    if row.direction == 0:                  # a term: its two-sided test, no claimed sign
        res = res | {"verdict": np.array([NOT_TESTED], dtype=object)}
        return res, "a term of the decomposition (two-sided p; no claimed sign)", {
            "values": dec[row.name]}
    return res, "", {"values": dec[row.name]}


def other_part(p: Panel, spec: ClaimSpec, row: Row, k: int, o: Any, *,
               noise: Any = None, study: Any = None,
               cache: dict[str, dict] | None = None) -> tuple[dict, str, dict]:
    """(rule result, note, extra fields) of a row whose kind is not trend / coupling /
    equivalence / factor / correlation."""
    from flatbook.analysis.scoring import trend_values

    cache = cache if cache is not None else {}
    if row.kind == "theorem":
        return {}, "a theorem (T6, proved and checked in the derivation chapters)", {}
    if row.kind == "across settings":
        return {}, "one setting in this study; the claim compares settings", {}
    if row.kind == "by design":
        return _stability(study, row) if study is not None else ({}, "", {})
    if row.kind == "fraction":
        c = p.counts
        if spec.key == "zero_loss":
            reach = c.get("late", 0) + c.get("short", 0)
            if row.name == "reach":
                return _fraction(reach, c.get("runs", 0), "runs reach the threshold")
            return _fraction(c.get("late", 0), c.get("runs", 0),
                             f"runs have ≥ {MIN_WINDOW} measurements in the window")
        if spec.key == "mechanism":
            return _mechanism(p, row, k, o)
        return {}, "counted in the note of the essential row", {}
    if row.kind == "decomposition":
        return _mechanism(p, row, k, o)
    if row.kind == "descriptive":
        m = p.mask()
        v = np.where(m, p.series.get(row.measure, np.full(m.shape, math.nan)), math.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            lv = np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)
        u = np.nanmedian(np.where(np.isfinite(lv), lv, np.nan), axis=1) - 1.0
        u = u[np.isfinite(u)]
        return RL.signflip_test(u[None], +1, n_parts=k, n_flip=o.n_flip, seed=o.seed), \
            "effect: mean log10 slack − 1 (decades above 10×)", {}
    if row.kind == "paired":
        if spec.key == "label_noise":
            return _label_noise(p, noise, row, k, o)
        if spec.key == "ld":
            a = cache.get("equivalence")
            b = cache.get("log_lvr_median") or _lvr_coupling(p, o)
            if a is None or "d" not in a or "d" not in b or a["d"].shape != b["d"].shape:
                return {}, "needs both couplings on the same runs", {}
            u = (a["d"] - b["d"])[0]
            return RL.signflip_test(u[None], row.direction, n_flip=o.n_flip, seed=o.seed), \
                "coupling(LD) − coupling(LVR), paired over runs", {}
        test = trend_values(p, row.measure, row.log)
        train = trend_values(p, row.against, row.log)
        u = test - train
        u = u[np.isfinite(u)]
        return RL.signflip_test(u[None], row.direction, n_flip=o.n_flip, seed=o.seed), \
            "test − train, same run", {}
    return {}, f"kind {row.kind!r} is not scored", {"verdict": NOT_TESTED}


def _lvr_coupling(p: Panel, o: Any) -> dict:
    from flatbook.analysis.scoring import _coupling
    return _coupling(p, "log_lvr_median", False, "trace_gn", 1, o)
