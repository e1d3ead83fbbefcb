"""The claim ``consistency`` scored across settings: "Correlations vary by setting; MLS
correlates most consistently" (plan row ``signs``, kind "across settings").

Per setting, every compression measure is related to tr H by the two statistics the
per-setting plan already scores (:mod:`.scoring`, unchanged): its *coupling* (late-phase
co-movement against the run-mismatch null) and its *level correlation* (Pearson's r of the
run-level end values), each with its interval. :func:`evaluate_consistency` collects them for
several :class:`~flatbook.analysis.study.Study` objects and :func:`consistency_verdict`
applies the row's rule (its docstring) to the table of intervals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from flatbook.analysis.plan import MIN_WINDOW, PRIMARY_THRESHOLD, ClaimSpec, Row
from flatbook.analysis.verdicts import CONTRADICTED, INCONCLUSIVE, NOT_TESTED, REPRODUCED

__all__ = ["MEASURES", "STATISTICS", "agreement_sign", "consistency_table",
           "consistency_verdict", "evaluate_consistency", "measure_parts", "setting_sign"]

MEASURES: tuple[tuple[str, str, bool], ...] = (
    ("MLS", "mls_median", True),
    ("LVR", "log_lvr_median", False),
    ("NMLS", "nmls", True),
    ("NVR", "nvr", True),
)
"""(label, record key, analysed in log units) of every measure compared: the measures whose
coupling and level correlation with tr H the plan scores in ``compression_v3`` (MLS, NMLS,
NVR) and LVR, the abstract's other compression metric (its coupling is ``late_fall``'s row;
its level correlation is scored here by the same rule). MLS first: the claim's target."""

STATISTICS = ("coupling", "level")
"""The two statistics of a measure in a setting: coupling and level correlation with tr H."""


def _spec(label: str, key: str, log: bool) -> ClaimSpec:
    """A two-row claim scored exactly like ``compression_v3``'s MLS rows (both essential, so
    k = 2 parts as there): coupling and level correlation of ``key`` with log tr H."""
    rows = (Row("coupling", key, "coupling", +1, True,
                f"coupling(log {label}, log tr H) > run-mismatch null", log=log,
                against="trace_gn"),
            Row("level", key, "correlation", +1, True,
                f"correlation across runs of end-of-window log {label} with log tr H",
                log=log, against="trace_gn"))
    return ClaimSpec(f"consistency_{label.lower()}", "", "", "our reading", "ours",
                     "coupling + correlation", rows)


def measure_parts(study: Any, options: Any = None, threshold: float = PRIMARY_THRESHOLD
                  ) -> dict[str, dict[str, dict[str, Any]]]:
    """label → {"coupling": part, "level": part} of one study: the parts (see
    :func:`flatbook.analysis.scoring.part_dict`: ``effect``, ``lo``, ``hi``, ``p``, ``n``,
    ``verdict``) of each measure of :data:`MEASURES`, scored by the per-setting rules on the
    study's late window (loss ≤ ``threshold``, ≥ 10 measurements)."""
    from flatbook.analysis.scoring import Options, score_panel
    from flatbook.analysis.window import panel

    o = options or Options()
    p = panel(study, threshold, MIN_WINDOW)
    out = {}
    for label, key, log in MEASURES:
        if p.n and key not in p.series:
            out[label] = {s: _missing(s, key) for s in STATISTICS}
            continue
        parts = score_panel(p, _spec(label, key, log), o)
        out[label] = dict(zip(STATISTICS, parts, strict=True))
    return out


def _missing(stat: str, key: str) -> dict[str, Any]:
    return {"name": stat, "effect": math.nan, "lo": math.nan, "hi": math.nan,
            "p": math.nan, "n": 0, "verdict": NOT_TESTED, "note": f"the store lacks {key}"}


def agreement_sign(part: Mapping[str, Any]) -> int:
    """+1 when a statistic's interval [lo, hi] lies wholly above 0, −1 wholly below, else 0
    (an interval that holds 0, or none)."""
    lo, hi = float(part.get("lo", math.nan)), float(part.get("hi", math.nan))
    if lo > 0:
        return 1
    if hi < 0:
        return -1
    return 0


def setting_sign(parts: Mapping[str, Mapping[str, Any]]) -> int:
    """A measure's sign in one setting: s = ±1 when its coupling and its level correlation
    both have sign s (:func:`agreement_sign`), else 0."""
    a, b = (agreement_sign(parts[s]) for s in STATISTICS)
    return a if a == b else 0


def consistency_verdict(table: Mapping[str, Mapping[str, Mapping[str, Mapping[str, Any]]]],
                        target: str = "MLS") -> tuple[str, dict[str, list[int]], str]:
    """The row ``signs`` of the claim ``consistency`` on ``table`` (setting → measure label →
    {"coupling": part, "level": part}, parts with ``lo`` and ``hi``): (verdict, measure →
    its sign in each setting, note).

    Rule (fixed before any cross-setting result was computed). A measure's sign in a setting
    is s = ±1 when its coupling and its level correlation with tr H have the same sign s with
    intervals that exclude 0, else 0 (:func:`setting_sign`). A measure *agrees* in k settings
    when its sign is the same non-zero s in k of them (k = the larger count of +1 and of −1);
    it agrees across settings when k is the number of settings. The verdict is

    - *not tested* with fewer than 2 settings;
    - *contradicted* when the target (MLS) has sign −1 (both statistics significantly
      negative) in some setting;
    - *reproduced* when the target has sign +1 in every setting and no other measure agrees
      in more settings than it. Ties count for the target ("most consistently" read as "at
      least as consistently as any other measure"): once MLS agrees positively in all
      settings no measure can agree in more, so the second condition never fails then — it
      is kept because it is the row's text;
    - *inconclusive* otherwise.

    Each interval is the per-setting scoring's (two-sided 95 %, or the plan's part level).
    """
    settings = list(table)
    labels = [m for m in table[settings[0]]] if settings else [target]
    signs = {m: [setting_sign(table[s][m]) for s in settings] for m in labels}
    n = len(settings)
    if n < 2:
        return NOT_TESTED, signs, f"{n} setting; the row compares ≥ 2 settings"

    def agree(v: list[int]) -> int:
        return max(v.count(1), v.count(-1))

    mine = signs[target]
    best = max((agree(v) for m, v in signs.items() if m != target), default=0)
    note = (f"{target} agrees positively in {mine.count(1)} of {n} settings; the most any "
            f"other measure agrees in is {best}")
    if -1 in mine:
        return CONTRADICTED, signs, note
    if mine.count(1) == n and best <= n:
        return REPRODUCED, signs, note
    return INCONCLUSIVE, signs, note


def consistency_table(signs: Mapping[str, Sequence[int]], names: Sequence[str]
                      ) -> list[dict[str, str]]:
    """Rows for :func:`flatbook.analysis.markdown_table`: one per measure, its sign (+, −, 0)
    in each setting of ``names`` and the number of settings it agrees in."""
    sym = {1: "+", -1: "−", 0: "0"}
    rows = []
    for m, v in signs.items():
        v = list(v)
        row = {"measure": m} | {f"`{s}`": sym[x] for s, x in zip(names, v, strict=True)}
        rows.append(row | {"agrees in": str(max(v.count(1), v.count(-1)))})
    return rows


def evaluate_consistency(studies: Sequence[Any], *, options: Any = None,
                         threshold: float = PRIMARY_THRESHOLD) -> dict[str, Any]:
    """The row ``signs`` of ``consistency`` on several studies (one per setting, each a
    :class:`~flatbook.analysis.study.Study` or an object with its interface and a
    ``setting.name``): ``verdict``, ``signs`` (measure → sign per setting), ``settings``
    (names in order), ``parts`` (setting → measure → {"coupling", "level"} parts), ``note``
    and ``table`` (:func:`consistency_table`). Rule: :func:`consistency_verdict`."""
    if isinstance(studies, Mapping) or not isinstance(studies, Sequence):
        raise TypeError("studies must be a sequence of Study objects (one per setting); "
                        f"got {type(studies).__name__}")
    names = [str(getattr(getattr(s, "setting", None), "name", f"setting {i}"))
             for i, s in enumerate(studies)]
    if len(set(names)) != len(names):
        raise ValueError(f"studies must be of different settings; got {names}")
    parts = {n: measure_parts(s, options, threshold) for n, s in zip(names, studies,
                                                                     strict=True)}
    verdict, signs, note = consistency_verdict(parts)
    return {"key": "consistency", "row": "signs", "verdict": verdict, "signs": signs,
            "settings": names, "parts": parts, "note": note,
            "table": consistency_table(signs, names)}
