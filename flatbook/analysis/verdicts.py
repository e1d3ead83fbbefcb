"""The verdict words and how the parts of a claim combine.

A claim of the paper is split into named *parts*, each a stated test (:mod:`.stats`); every
part and every claim gets one of four words:

- ``reproduced``: the 95% interval of the effect lies on the claimed side of 0;
- ``contradicted``: it lies on the other side;
- ``inconclusive``: it contains 0 (or there are too few independent units to decide);
- ``not tested``: no data for it at this scale (e.g. a claim about several settings, run on
  one).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

REPRODUCED, CONTRADICTED, INCONCLUSIVE, NOT_TESTED = (
    "reproduced", "contradicted", "inconclusive", "not tested")
VERDICTS = (REPRODUCED, CONTRADICTED, INCONCLUSIVE, NOT_TESTED)
DECIDED = (REPRODUCED, CONTRADICTED)


def check_verdict(v: str) -> str:
    """``v`` if it is one of :data:`VERDICTS`, else ValueError naming the allowed words."""
    if v not in VERDICTS:
        raise ValueError(f"unknown verdict {v!r}; allowed: {VERDICTS}")
    return v


def combine(verdicts: Iterable[str], essential: Sequence[bool] | None = None) -> str:
    """Verdict of a claim from the verdicts of its parts (only ``essential`` ones count;
    default: all): contradicted if an essential part is contradicted; reproduced only if every
    essential part is reproduced; not tested if no essential part was tested; otherwise
    inconclusive."""
    vs = [check_verdict(v) for v in verdicts]
    ess = [True] * len(vs) if essential is None else list(essential)
    if len(ess) != len(vs):
        raise ValueError(f"essential has {len(ess)} flags for {len(vs)} parts")
    core = [v for v, e in zip(vs, ess, strict=True) if e]
    if not core or all(v == NOT_TESTED for v in core):
        return NOT_TESTED
    if any(v == CONTRADICTED for v in core):
        return CONTRADICTED
    if all(v == REPRODUCED for v in core):
        return REPRODUCED
    return INCONCLUSIVE
