"""Scoring the analysis plan (:mod:`.plan`) on a study: one dict per claim with its rows.

:func:`score_panel` turns every row of every claim into a *part* by the rule of its kind
(:mod:`.rules`) on the runs of the late window (:mod:`.window`); :func:`score_claims` adds the
claim-level verdict (intersection–union of the essential rows), the by-design and other flags,
Holm's correction across the headline claims (R7), the claim-level power (R3) and the
threshold sensitivity of every trend row (R2). :func:`flatbook.analysis.evaluate_claims`
returns its result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from flatbook.analysis import rules as RL
from flatbook.analysis.plan import (
    CLAIM_SPECS,
    HEADLINE,
    MIN_WINDOW,
    PLAN_HASH,
    PLAN_VERSION,
    PLATEAU_MIN,
    PRIMARY_THRESHOLD,
    THRESHOLDS,
    ClaimSpec,
    Row,
)
from flatbook.analysis.verdicts import NOT_TESTED, VERDICTS, combine
from flatbook.analysis.window import Panel, end_values, panel, trend_change

__all__ = ["Options", "part_dict", "score_claims", "score_panel", "score_some", "sensitivity",
           "trend_values"]


class Options:
    """Scoring options: Monte Carlo sizes and the seed (fixed: a verdict must not depend on
    the run of the code)."""

    def __init__(self, n_flip: int = 4000, n_perm: int = 2000, n_factor: int = 10_000,
                 seed: int = 0) -> None:
        for name, v in (("n_flip", n_flip), ("n_perm", n_perm), ("n_factor", n_factor)):
            if not (isinstance(v, int) and v >= 100):
                raise ValueError(f"{name} must be an int ≥ 100; got {v!r}")
        self.n_flip, self.n_perm, self.n_factor, self.seed = n_flip, n_perm, n_factor, seed


def _row0(res: dict[str, np.ndarray]) -> dict[str, Any]:
    out = {}
    for k, v in res.items():
        if isinstance(v, np.ndarray) and v.ndim >= 1 and k != "d":
            x = v.reshape(-1)[0] if v.size else math.nan
            out[k] = x.item() if isinstance(x, np.generic) else x
        elif k != "d":
            out[k] = v
    return out


def part_dict(spec: Row, res: dict[str, Any], note: str = "",
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One part as the report prints it (R8): the row's ``name``, ``measure``, ``kind``,
    ``essential``, ``direction``, ``what``, ``flags``, then ``effect``, ``lo``, ``hi``,
    ``p``, ``sd``, ``effect_sd``, ``mde``, ``mde_sd``, ``n``, ``verdict``, ``power_05``
    (power at 0.5 SD), ``note``; with the older names ``n_units``, ``pvalue``, ``expected``."""
    r = _row0(res) if res else {}
    d = {"name": spec.name, "measure": spec.measure, "kind": spec.kind,
         "essential": spec.essential, "direction": spec.direction, "what": spec.what,
         "flags": list(spec.flags), "window": spec.window}
    for k in ("effect", "lo", "hi", "p", "sd", "effect_sd", "mde", "mde_sd"):
        d[k] = float(r.get(k, math.nan))
    d["n"] = int(r.get("n", 0)) if np.isfinite(r.get("n", 0)) else 0
    d["verdict"] = str(r.get("verdict", NOT_TESTED))
    assert d["verdict"] in VERDICTS
    n = d["n"]
    d["power_05"] = float(RL.power_t(0.5, n)) if spec.kind in ("trend", "coupling",
                                                               "paired") and n >= 2 else (
        float(_factor_power(d, 0.5)) if spec.kind == "factor" else math.nan)
    d["note"] = note
    d["n_units"], d["pvalue"], d["expected"] = n, d["p"], spec.direction
    d["unit"] = "(log units)" if spec.log else ""
    return d | (extra or {})


def _factor_power(d: dict[str, Any], effect_sd: float) -> float:
    se = (d["hi"] - d["lo"]) / (2 * 1.96) if math.isfinite(d["hi"]) else math.nan
    if not (math.isfinite(se) and se > 0 and math.isfinite(d["sd"])):
        return math.nan
    from scipy import stats
    ncp = effect_sd * d["sd"] / se
    df = max(2, d["n"] - 4)
    return float(stats.nct.sf(stats.t.ppf(0.975, df), df, ncp))


def trend_values(p: Panel, key: str, log: bool, starts: np.ndarray | None = None
                 ) -> np.ndarray:
    """[R] trend statistic of a measure over each run's window (from ``starts``): the
    fitted change, or Kendall's τ where a value is ±∞ (:func:`.window.trend_change`)."""
    return trend_change(p.step, p.values(key, log), p.mask(starts))


def _finite(*arrs: np.ndarray) -> np.ndarray:
    return np.all([np.isfinite(a) for a in arrs], axis=0)


def _trend(p: Panel, row: Row, k: int, o: Options) -> tuple[dict, str, dict]:
    starts = np.zeros_like(p.starts) if row.window == "whole" else p.starts
    u = trend_values(p, row.measure, row.log, starts)
    ok = np.isfinite(u)
    dl = trend_values(p, "train_loss", True, starts)
    res = RL.signflip_test(u[ok][None], row.direction or -1, n_parts=k, n_flip=o.n_flip,
                           seed=o.seed)
    dlog = float(np.nanmean(dl[ok])) if ok.any() else math.nan
    return res, f"Δlog L in the window {dlog:+.2f}", {"dlogL": dlog, "values": u}


def _coupling(p: Panel, measure: str, log: bool, against: str, k: int, o: Options,
              margin: float | None = None, direction: int = 1) -> dict:
    Z = RL.coupling_matrix(p.values(measure, log)[None], p.log(against)[None],
                           p.log("train_loss")[None], p.starts[None], p.cells)
    return RL.coupling_test(Z, p.cells, direction, n_parts=k, n_perm=o.n_perm, seed=o.seed,
                            margin=margin)


def _levels(p: Panel, row: Row, o: Options, k: int) -> dict:
    y = end_values(p.values(row.measure, row.log), p.starts)
    if row.kind == "correlation":
        x = end_values(p.log(row.against), p.starts)
        ok = _finite(x, y)
        return RL.correlation_test(y[ok][None], x[ok][None], row.direction, n_parts=k,
                                   n_perm=o.n_perm, seed=o.seed)
    lv, st = (p.lr, p.batch) if row.against == "lr" else (p.batch, p.lr)
    ok = ~np.isnan(y)
    if len(set(lv[ok].tolist())) < 2:
        return {}
    return RL.factor_test(y[ok][None], lv[ok], list(st[ok]), row.direction, n_parts=k,
                          n_perm=o.n_factor, seed=o.seed)


def _plateau(p: Panel, row: Row, k: int, o: Options) -> tuple[dict, str, dict]:
    """Plateau rule: per run the longest final stretch of the window (≥ PLATEAU_MIN
    measurements) whose fitted Δlog tr H is equivalent to 0 (|Δ| + t_{0.95}·se < margin);
    the fitted change of the measure inside it."""
    from scipy import stats
    lt = p.log("trace_gn")
    T = p.step.size
    starts = np.full(p.n, -1)
    for i in range(p.n):
        for a in range(int(p.starts[i]), T - PLATEAU_MIN + 1):
            t, v = p.step[a:], lt[i, a:]
            if not np.isfinite(v).all():
                continue
            tc = t - t.mean()
            b = float(tc @ (v - v.mean()) / (tc @ tc))
            res = v - v.mean() - b * tc
            se = math.sqrt(float(res @ res) / (t.size - 2) / float(tc @ tc)) * np.ptp(t)
            if abs(b * np.ptp(t)) + stats.t.ppf(0.95, t.size - 2) * se < row.margin:
                starts[i] = a
                break
    has = starts >= 0
    u = np.where(has, trend_values(p, row.measure, row.log, np.where(has, starts, 0)),
                 math.nan)
    dl = np.where(has, trend_values(p, "train_loss", True, np.where(has, starts, 0)),
                  math.nan)
    ok = np.isfinite(u)
    res = RL.signflip_test(u[ok][None], row.direction, n_parts=k, n_flip=o.n_flip,
                           seed=o.seed)
    dlog = float(np.nanmean(dl)) if ok.any() else math.nan
    note = f"{int(has.sum())} of {p.n} runs have a plateau; Δlog L inside it {dlog:+.2f}"
    return res, note, {"n_plateau": int(has.sum()), "dlogL": dlog}


def score_panel(p: Panel, spec: ClaimSpec, o: Options, *, noise: Any = None,
                study: Any = None) -> list[dict[str, Any]]:
    """The parts of one claim on a panel (see :func:`part_dict`); ``noise``: the label-noise
    study paired with it, ``study``: the study itself (for the by-design rows)."""
    from flatbook.analysis import scoring_extra as X

    k = max(1, len(spec.essential_rows()))
    parts = []
    cache: dict[str, dict] = {}
    for row in spec.rows:
        note, extra, res = "", {}, {}
        if p.n == 0 and row.kind not in ("fraction", "by design", "theorem",
                                         "across settings"):
            parts.append(part_dict(row, {}, "no run in the late phase"))
            continue
        if row.kind == "trend" and row.window == "plateau":
            res, note, extra = _plateau(p, row, k, o)
        elif row.kind == "trend":
            res, note, extra = _trend(p, row, k, o)
        elif row.kind == "coupling":
            res = cache.setdefault(row.measure, _coupling(p, row.measure, row.log,
                                                          row.against, k, o))
        elif row.kind == "equivalence":
            base = _coupling(p, row.measure, row.log, row.against, k, o)
            cache["equivalence"] = base
            se = base["sd"] / math.sqrt(max(int(base["n"][0]), 1))
            res = base | RL.tost(base["effect"], se, int(base["n"][0]) - 1, row.margin,
                                 int(base["n"][0]), k)
            note = f"margin ±{row.margin:g} (Fisher z)"
        elif row.kind in ("factor", "correlation"):
            res = _levels(p, row, o, k)
            if not res:
                note = "one level of the factor in this study"
        else:
            res, note, extra = X.other_part(p, spec, row, k, o, noise=noise, study=study,
                                            cache=cache)
        parts.append(part_dict(row, res, note, extra))
    return parts


def _claim_p(parts: Sequence[dict[str, Any]]) -> float:
    ess = [q for q in parts if q["essential"]]
    ps = [q["p"] for q in ess]
    if not ess or not all(math.isfinite(x) for x in ps):
        return math.nan
    return float(max(ps))          # the intersection–union p-value


def sensitivity(study: Any, thresholds: Sequence[float] = THRESHOLDS,
                o: Options | None = None) -> list[dict[str, Any]]:
    """R2's sensitivity table: for every trend row of the headline claims (late window), at
    each threshold the runs in the late phase, the mean fitted Δlog L inside the window, the
    effect [interval] and the verdict; ``sensitive`` = the verdict differs across thresholds
    (*threshold-sensitive*)."""
    o = o or Options()
    panels = {t: panel(study, t, MIN_WINDOW) for t in thresholds}
    out = []
    for spec in CLAIM_SPECS:
        if spec.key not in HEADLINE:
            continue
        k = max(1, len(spec.essential_rows()))
        for row in spec.rows:
            if row.kind != "trend" or row.window != "late":
                continue
            line: dict[str, Any] = {"claim": spec.key, "row": row.name, "what": row.what}
            verdicts = []
            for t, p in panels.items():
                if p.n == 0:
                    res, dl = {}, math.nan
                else:
                    res, _, ex = _trend(p, row, k, o)
                    dl = ex["dlogL"]
                q = part_dict(row, res)
                line[f"n@{t:g}"], line[f"dlogL@{t:g}"] = q["n"], dl
                line[f"effect@{t:g}"], line[f"verdict@{t:g}"] = q["effect"], q["verdict"]
                verdicts.append(q["verdict"])
            line["sensitive"] = len(set(verdicts)) > 1
            out.append(line)
    return out


def score_claims(study: Any, *, label_noise: Any | None = None, options: Options | None = None,
                 threshold: float = PRIMARY_THRESHOLD, with_sensitivity: bool = True
                 ) -> list[dict[str, Any]]:
    """Every claim of the plan on a study (see :func:`flatbook.analysis.evaluate_claims`)."""
    o = options or Options()
    p = panel(study, threshold, MIN_WINDOW)
    sens = {(r["claim"], r["row"]): r["sensitive"] for r in sensitivity(study, o=o)} \
        if with_sensitivity else {}
    rows = [_claim_record(spec, score_panel(p, spec, o, noise=label_noise, study=study), p,
                          threshold, sens) for spec in CLAIM_SPECS]
    head = [r for r in rows if r["key"] in HEADLINE]
    adj, rej = RL.holm([r["p"] for r in head])
    for r, a, j in zip(head, adj, rej, strict=True):
        r["holm_p"], r["holm_reject"] = float(a), bool(j)
    for r in rows:
        r.setdefault("holm_p", math.nan)
        r.setdefault("holm_reject", False)
    return rows


def score_some(study: Any, keys: Sequence[str], *, label_noise: Any | None = None,
               options: Options | None = None, threshold: float = PRIMARY_THRESHOLD
               ) -> list[dict[str, Any]]:
    """The claims ``keys`` (current or old keys) scored exactly as :func:`score_claims`
    scores them — same window, rows, tests and seeds — for a chapter that shows some of the
    plan's verdicts. Holm's correction and the threshold sensitivity need every headline claim
    and every threshold: they are left to the report (``holm_p`` NaN, no
    *threshold-sensitive* flag)."""
    from flatbook.analysis.plan import spec as _spec

    o = options or Options()
    p = panel(study, threshold, MIN_WINDOW)
    out = []
    for k in keys:
        sp = _spec(k)
        r = _claim_record(sp, score_panel(p, sp, o, noise=label_noise, study=study), p,
                          threshold, {})
        out.append(r | {"holm_p": math.nan, "holm_reject": False})
    return out


def _claim_record(spec: ClaimSpec, parts: list[dict[str, Any]], p: Panel, threshold: float,
                  sens: dict[tuple[str, str], bool]) -> dict[str, Any]:
    """One claim's dict (see :func:`flatbook.analysis.evaluate_claims`) from its parts."""
    for q in parts:
        if sens.get((spec.key, q["name"])):
            q["flags"] = [*q["flags"], "threshold-sensitive"]
    verdict = combine([q["verdict"] for q in parts], [q["essential"] for q in parts])
    ess = [q for q in parts if q["essential"]]
    pw = [q["power_05"] for q in ess if math.isfinite(q["power_05"])]
    flags = list(spec.flags) + (["threshold-sensitive"] if any(
        "threshold-sensitive" in q["flags"] for q in ess) else [])
    return {
        "key": spec.key, "aliases": list(spec.aliases), "version": spec.version,
        "source": spec.source, "sureness": spec.sureness, "claim": spec.words,
        "criterion": "; ".join(("★ " if r.essential else "") + r.what for r in spec.rows),
        "kind": spec.kind, "verdict": verdict, "parts": parts, "flags": flags,
        "by_design": "by design" in spec.flags, "counted": "by design" not in spec.flags,
        "headline": spec.headline, "p": _claim_p(parts),
        "power": float(np.prod(pw)) if pw else math.nan,
        "evidence": "; ".join(_text(q) for q in parts),
        "numbers": {q["name"]: q["effect"] for q in parts},
        "n_runs": p.counts.get("runs", 0), "n_late": p.n,
        "n_short": p.counts.get("short", 0), "n_never": p.counts.get("never", 0),
        "threshold": threshold, "plan_version": PLAN_VERSION, "plan_hash": PLAN_HASH,
        "note": spec.note,
    }


def _text(q: dict[str, Any]) -> str:
    pre = "" if q["essential"] else "(shown) "
    if not math.isfinite(q["effect"]):
        return f"{pre}{q['what']}: {q['verdict']}" + (f" ({q['note']})" if q["note"] else "")
    ci = f" [{q['lo']:+.3g}, {q['hi']:+.3g}]" if math.isfinite(q["lo"]) else ""
    mde = f", MDE {q['mde']:.2g}" if math.isfinite(q["mde"]) else ""
    p = f", p = {q['p']:.2g}" if math.isfinite(q["p"]) else ""
    note = f"; {q['note']}" if q["note"] else ""
    return f"{pre}{q['what']}: {q['effect']:+.3g}{ci} (n = {q['n']}{p}{mde}{note}) → " \
           f"{q['verdict']}"
