"""The paper's empirical claims scored by the analysis plan, and the theorem checks kept apart.

The claims, their rows (measure × direction), which rows are essential and the kind of test of
each live in :mod:`.plan` (versioned and hashed, frozen before a study is scored: R9).
:func:`evaluate_claims` scores them on a study (:mod:`.scoring`): every row is a *part* with its
effect, 95 % interval, p-value, MDE (in units and SDs), n and verdict; a claim is reproduced only
when every essential part is (intersection–union), contradicted when an essential part is
contradicted at α/k. Old claim keys remain as aliases (:func:`.plan.aliases`).

The descriptive helpers the experiment chapters use (:func:`late_change_table`,
:func:`after_plateau_changes`, :func:`claim_label_noise`, :func:`theorem_checks`) stay here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flatbook.analysis.plan import CLAIM_SPECS, aliases
from flatbook.analysis.stats import ALPHA, UnitTest, late_change, unit_test
from flatbook.analysis.tables import label
from flatbook.analysis.verdicts import NOT_TESTED

__all__ = ["CLAIMS", "Claim", "Part", "after_plateau_changes", "claim_label_noise",
           "claims_by_key", "evaluate_claims", "late_change_table", "run_units",
           "theorem_checks", "trend_claims"]


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


CLAIMS: tuple[Claim, ...] = tuple(
    Claim(c.key, c.version, c.words,
          "; ".join(("★ " if r.essential else "") + r.what for r in c.rows))
    for c in CLAIM_SPECS)
"""Every claim of :data:`.plan.CLAIM_SPECS` (key, version, words, rows in words)."""


@dataclass
class Part:
    """One named part of a claim: what is summarised per run, its expected sign, the test
    result (:class:`.stats.UnitTest` fields or a fraction test) and whether it is essential."""

    name: str
    what: str
    essential: bool
    verdict: str
    effect: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    n_units: int = 0
    mde: float = math.nan
    pvalue: float = math.nan
    unit: str = ""
    note: str = ""
    expected: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_test(cls, name: str, what: str, t: UnitTest, essential: bool = True,
                  unit: str = "", note: str = "") -> Part:
        """The part ``name`` (described as ``what``) carrying the verdict, effect, interval,
        units, MDE, p-value and expected sign of the unit-level test ``t``."""
        return cls(name, what, essential, t.verdict, t.effect, t.lo, t.hi, t.n_units, t.mde,
                   t.pvalue, unit, note, t.expected)

    def text(self) -> str:
        """The part in words: effect [interval], units, MDE, then the verdict word."""
        if self.verdict == NOT_TESTED and not math.isfinite(self.effect):
            return f"{self.what}: not tested" + (f" ({self.note})" if self.note else "")
        u = f" {self.unit}" if self.unit else ""
        ci = (f" [{self.lo:+.3g}, {self.hi:+.3g}]" if math.isfinite(self.lo) else "")
        mde = f", MDE {self.mde:.2g}" if math.isfinite(self.mde) else ""
        note = f"; {self.note}" if self.note else ""
        return (f"{self.what} = {self.effect:+.3g}{ci}{u} (n = {self.n_units}{mde}{note}) → "
                f"{self.verdict}")

    def as_dict(self) -> dict[str, Any]:
        """The part as a flat dict of its fields, the ``extra`` numbers merged in."""
        return {"name": self.name, "what": self.what, "essential": self.essential,
                "verdict": self.verdict, "effect": self.effect, "lo": self.lo, "hi": self.hi,
                "n_units": self.n_units, "mde": self.mde, "pvalue": self.pvalue,
                "unit": self.unit, "note": self.note, "expected": self.expected, **self.extra}


# --------------------------------------------------------------------------- run views
def run_units(study: Any, indices: Sequence[int]) -> list[object]:
    """Independent-unit label of each run: the run itself when the setting gives every run
    its own data and initialisation (``setting.independent``), else its seed (cells of the
    sweep that share a seed share data subset and initialisation)."""
    if getattr(study.setting, "independent", False):
        return [int(i) for i in indices]
    return [int(study.summaries[i]["seed"]) for i in indices]


def _late(study: Any) -> list[tuple[int, Mapping[str, np.ndarray]]]:
    return list(zip(study.interpolating, study.late_trajectories(), strict=True))


def after_plateau_changes(study: Any, sharp: str = "trace_gn", volume: str = "log_lvr_median",
                          rel_tol: float = 0.1, min_after: int = 5) -> list[dict[str, object]]:
    """Per interpolating run: the tr H plateau detected on the *whole* trajectory (first
    measurement from which ``sharp`` stays within ``rel_tol`` of its final value,
    :func:`.phases.plateau_start`), whether it starts strictly after the onset of the
    interpolation phase with ≥ ``min_after`` measurements after it (``usable``), and the
    fitted change of ``volume`` after it."""
    from flatbook.analysis.phases import plateau_start

    out = []
    for i in study.interpolating:
        t, s = study.trajectories[i], study.summaries[i]
        j = plateau_start(t[sharp], rel_tol) if sharp in t else None
        k0 = s["phase_index"]
        n_after = int(t["step"].size - j) if j is not None else 0
        usable = j is not None and k0 is not None and j > k0 and n_after >= min_after
        ch = late_change(t["step"][j:], t[volume][j:]) if usable and volume in t else math.nan
        out.append({"run": i, "plateau_step": float(t["step"][j]) if j is not None else math.nan,
                    "onset_step": s["phase_step"], "n_after": n_after, "usable": usable,
                    "change_after": ch})
    return out


def claim_label_noise(study: Any, noise: Any | None, n_boot: int = 2000, seed: int = 0
                      ) -> tuple[list[Part], str]:
    """Paired label-noise claim: for each plain run and the label-noise run with the same η,
    B and seed (both interpolating), the change of log tr H over their common interpolation
    window [max of the two onsets, end], noise minus plain; test mean < 0 over pairs."""
    what = "Δlog tr H, label-noise − plain (paired)"
    if noise is None:
        return [Part("paired", what, True, NOT_TESTED, note="no label-noise study loaded")], ""
    key = {(s["lr"], s["batch_size"], s["seed"]): i for i, s in enumerate(noise.summaries)}
    diffs, units, n_pairs, n_noise_interp = [], [], 0, 0
    for i in study.interpolating:
        s = study.summaries[i]
        j = key.get((s["lr"], s["batch_size"], s["seed"]))
        if j is None:
            continue
        n_pairs += 1
        if j not in noise.interpolating:
            continue
        n_noise_interp += 1
        tp, tn = study.trajectories[i], noise.trajectories[j]
        k = max(s["phase_index"], noise.summaries[j]["phase_index"])
        n_common = min(tp["step"].size, tn["step"].size)
        if n_common - k < 3 or not np.array_equal(tp["step"][:n_common], tn["step"][:n_common]):
            continue
        dp = late_change(tp["step"][k:n_common], tp["trace_gn"][k:n_common], log=True)
        dn = late_change(tn["step"][k:n_common], tn["trace_gn"][k:n_common], log=True)
        diffs.append(dn - dp)
        units.append(i)
    t = unit_test(diffs, -1, run_units(study, units) if units else None, n_boot=n_boot,
                  seed=seed)
    note = f"{n_noise_interp} of {n_pairs} label-noise runs reach the interpolation phase"
    return [Part.from_test("paired", what, t, unit="(log units)", note=note)], ""


TREND_CLAIMS = ("late_fall", "ld_differs", "test_sharpness_rises")
"""Old keys of the claims about the late phase (scored by :func:`trend_claims`)."""


def trend_claims(study: Any, n_boot: int = 2000, seed: int = 0) -> dict[str, str]:
    """Verdicts of the late-phase claims (``late_fall``, ``ld``, ``test_data``; keyed by
    their old names :data:`TREND_CLAIMS`) by the plan's rules, e.g. on a shuffled study.
    ``n_boot`` is kept for old callers (the rules are permutation tests)."""
    from flatbook.analysis.plan import spec
    from flatbook.analysis.scoring import Options, score_panel
    from flatbook.analysis.verdicts import combine
    from flatbook.analysis.window import panel

    p = panel(study)
    o = Options(n_flip=1000, n_perm=500, n_factor=1000, seed=seed)
    out = {}
    for key in TREND_CLAIMS:
        parts = score_panel(p, spec(key), o, study=study)
        out[key] = combine([q["verdict"] for q in parts], [q["essential"] for q in parts])
    return out


def evaluate_claims(study: Any, n_boot: int = 2000, seed: int = 0, *,
                    label_noise: Any | None = None, threshold: float | None = None,
                    sensitivity: bool = True) -> list[dict[str, object]]:
    """Score every claim of the plan (:data:`.plan.CLAIM_SPECS`) on a study.

    Args:
        study: a :class:`flatbook.analysis.Study` (or anything with ``summaries`` and
            ``trajectories``).
        n_boot: kept for old callers; the Monte Carlo sizes are the plan's.
        seed: seed of every Monte Carlo test (fixed by default: a verdict does not depend on
            the run of the code).
        label_noise: the paired label-noise study, for ``label_noise``; None: not tested.
        threshold: the late window's loss threshold (default the plan's, 1e-3).
        sensitivity: compute R2's sensitivity (flags *threshold-sensitive*).

    Returns one dict per claim (plan order): ``key``, ``aliases`` (old keys), ``version``,
    ``source``, ``sureness``, ``claim`` (the words), ``criterion`` (rows in words),
    ``verdict``, ``parts`` (one per row: ``measure``, ``kind``, ``essential``, ``effect``,
    ``lo``, ``hi``, ``p``, ``mde``, ``mde_sd``, ``effect_sd``, ``n``, ``verdict``, ``flags``,
    …; :func:`.scoring.part_dict`), ``flags``, ``by_design``, ``counted``, ``headline``,
    ``p`` (intersection–union p), ``holm_p`` / ``holm_reject`` (R7), ``power`` (claim-level
    power at 0.5 SD), ``evidence`` (the parts in words), ``numbers`` and the window counts
    ``n_runs``, ``n_late``, ``n_short``, ``n_never``, ``plan_version``, ``plan_hash``.
    """
    from flatbook.analysis.plan import PRIMARY_THRESHOLD
    from flatbook.analysis.scoring import Options, score_claims

    del n_boot
    return score_claims(study, label_noise=label_noise, options=Options(seed=seed),
                        threshold=PRIMARY_THRESHOLD if threshold is None else threshold,
                        with_sensitivity=sensitivity)


def claims_by_key() -> dict[str, Claim]:
    """The :data:`CLAIMS` indexed by key and by old key."""
    out = {c.key: c for c in CLAIMS}
    return out | {a: out[k] for a, k in aliases().items()}


POSITIVE = ("lambda_max", "trace_gn", "kappa_sum", "mls_median", "nmls", "nvr",
            "test_lambda_max", "test_trace_gn", "test_trace_hessian", "test_mls_median")
"""Quantities summarised in log units (their fitted change is a relative change)."""


def late_change_table(study: Any, keys: Sequence[str], n_boot: int = 2000, seed: int = 0,
                      log_keys: Sequence[str] = POSITIVE) -> list[dict[str, object]]:
    """For each key: the fitted change over each interpolating run's late phase
    (:func:`.stats.late_change`; in log units for ``log_keys``, default :data:`POSITIVE`), its mean
    over independent units with a 95% bootstrap-t interval and MDE, and the fraction of runs
    in which it fell. Descriptive (no verdict): the claims pick their parts from these."""
    late = _late(study)
    units = run_units(study, [i for i, _ in late])
    rows = []
    for j, k in enumerate(keys):
        lg = k in log_keys
        vals = np.array([late_change(t["step"], t[k], log=lg) if k in t else math.nan
                         for _, t in late])
        t = unit_test(vals, -1, units, n_boot=n_boot, seed=seed + j)
        fin = vals[np.isfinite(vals)]
        rows.append({"key": k, "measure": label(k), "log": lg, "effect": t.effect, "lo": t.lo,
                     "hi": t.hi, "n_units": t.n_units, "mde": t.mde,
                     "frac_falling": float(np.mean(fin < 0)) if fin.size else math.nan,
                     "values": vals})
    return rows


def theorem_checks(study: Any, keys: Sequence[str] | None = None) -> list[dict[str, object]]:
    """The bounds recorded at every measurement of the finished runs, counted apart from the
    empirical claims: a theorem cannot be "reproduced". Per bound ``<name>`` (record keys
    ``<name>_lhs``, ``_rhs``, ``_holds``): measurements where it *applies* (lhs > 0 and both
    sides finite), how many of those hold, how many are "not applicable" (lhs = 0: the bound
    says nothing there), and the median slack rhs/lhs where it applies. The stability
    ceilings T7 (``t7_*``) are left out by default: they are conditions for a linearly stable
    minimum, not inequalities at every step (the ``stability`` claim scores them)."""
    fin = list(study.finished)
    if not fin:
        return []
    t0 = study.trajectories[fin[0]]
    names = keys if keys is not None else sorted(
        k[:-6] for k in t0 if k.endswith("_holds") and f"{k[:-6]}_lhs" in t0
        and f"{k[:-6]}_rhs" in t0 and not k.startswith(("test_", "t7_")))
    out = []
    for nm in names:
        lhs = np.concatenate([study.trajectories[i].get(f"{nm}_lhs", np.array([]))
                              for i in fin])
        rhs = np.concatenate([study.trajectories[i].get(f"{nm}_rhs", np.array([]))
                              for i in fin])
        holds = np.concatenate([study.trajectories[i].get(f"{nm}_holds", np.array([]))
                                for i in fin])
        app = np.isfinite(lhs) & np.isfinite(rhs) & (lhs > 0)
        na = np.isfinite(lhs) & (lhs == 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            slack = rhs[app] / lhs[app]
        out.append({"bound": nm, "n": int(lhs.size), "applies": int(app.sum()),
                    "holds": int(np.sum(holds[app] > 0.5)), "not_applicable": int(na.sum()),
                    "median_slack": float(np.median(slack)) if slack.size else math.nan})
    return out


ALPHA_TEXT = f"{ALPHA:g}"
