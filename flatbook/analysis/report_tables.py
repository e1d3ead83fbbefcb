"""What the report prints (R8, §3): the claims × rows table, the headline computed from it
(Holm across the headline claims, R7), the sensitivity table (R2), the change log (R9)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from flatbook.analysis.plan import CHANGE_LOG, HEADLINE, PLAN_HASH, PLAN_VERSION, THRESHOLDS
from flatbook.analysis.verdicts import CONTRADICTED, INCONCLUSIVE, NOT_TESTED, REPRODUCED

__all__ = ["change_log_rows", "claim_rows", "headline", "plan_line", "sensitivity_rows"]


def _num(x: float, fmt: str = "{:+.3g}") -> str:
    return fmt.format(x) if isinstance(x, float | int) and math.isfinite(x) else "–"


def claim_rows(claims: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """One table row per part of every claim (R8): claim (with its verdict on its first
    row), the paper's words, source and sureness, row (★ essential), kind, n, effect [95 %
    interval], effect in SDs, p, MDE (units / SDs), the part's verdict and its flags."""
    out = []
    for c in claims:
        for j, q in enumerate(c["parts"]):
            flags = sorted(set(q.get("flags", [])) | (set(c["flags"]) if j == 0 else set()))
            ci = (f" [{_num(q['lo'])}, {_num(q['hi'])}]" if math.isfinite(q["lo"]) else "")
            out.append({
                "claim": (f"**{c['key']}**: {c['verdict']}" if j == 0 else ""),
                "the paper's words": (c.get("claim", "") if j == 0 else ""),
                "source": (f"{c['version']}; {c['source']} ({c['sureness']})" if j == 0 else ""),
                "row": ("★ " if q["essential"] else "") + q["what"],
                "kind": q["kind"], "n": str(q["n"]) if q["n"] else "–",
                "effect": _num(q["effect"]) + ci, "SDs": _num(q["effect_sd"], "{:+.2g}"),
                "p": _num(q["p"], "{:.2g}"),
                "MDE": (f"{_num(q['mde'], '{:.2g}')} / {_num(q['mde_sd'], '{:.2g}')} SD"
                        if math.isfinite(q["mde"]) else "–"),
                "verdict": q["verdict"], "flags": ", ".join(flags),
            })
    return out


def headline(claims: Sequence[Mapping[str, Any]]) -> str:
    """The one-line headline (R7/R8): the headline claims' verdicts after Holm's correction
    across them — a claim whose essential parts are all reproduced but whose intersection–
    union p does not survive Holm is reported inconclusive — with the number of tests."""
    head = [c for c in claims if c["key"] in HEADLINE]
    words: dict[str, list[str]] = {REPRODUCED: [], CONTRADICTED: [], INCONCLUSIVE: [],
                                   NOT_TESTED: []}
    for c in head:
        v = c["verdict"]
        if v == REPRODUCED and not c.get("holm_reject", False):
            v = INCONCLUSIVE
        words[v].append(c["key"])
    n_tests = sum(1 for c in head for q in c["parts"] if q["essential"])
    parts = [f"{w}: {', '.join(ks)}" for w, ks in words.items() if ks]
    return (f"Of the {len(head)} headline claims ({n_tests} essential tests, Holm's correction "
            f"across the claims) — " + "; ".join(parts) + ".")


def sensitivity_rows(table: Sequence[Mapping[str, Any]],
                     thresholds: Sequence[float] = THRESHOLDS) -> list[dict[str, str]]:
    """R2's table for Markdown: per trend row, at each threshold "verdict (n, Δlog L)",
    and *threshold-sensitive* where the verdict changes."""
    out = []
    for r in table:
        row = {"claim": r["claim"], "row": r["what"]}
        for t in thresholds:
            row[f"L ≤ {t:g}"] = (f"{r[f'verdict@{t:g}']} (n {r[f'n@{t:g}']}, Δlog L "
                                 f"{_num(r[f'dlogL@{t:g}'], '{:+.2f}')})")
        row["label"] = "threshold-sensitive" if r["sensitive"] else ""
        out.append(row)
    return out


def change_log_rows() -> list[dict[str, str]]:
    """The change log (R9) as table rows."""
    return [{"date": c.date, "change": c.what, "why": c.why,
             "results seen": "yes" if c.results_seen else "no"} for c in CHANGE_LOG]


def plan_line() -> str:
    """"analysis plan v<version>, hash <hash>" for the report."""
    return f"analysis plan v{PLAN_VERSION}, hash {PLAN_HASH}"
