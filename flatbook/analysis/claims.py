"""The paper's empirical claims as stated tests, and the theorem checks kept apart.

Each claim is split into named *parts*. A part is a test on one summary per run — e.g. the
fitted change of log tr H over the run's interpolation phase (:func:`.stats.late_change`) —
averaged over *independent units* (runs with their own data subset and initialisation; where
the cells of a sweep share a seed, the seed) with a 95% studentized-bootstrap interval over
units (:func:`.stats.unit_test`). A part is *essential* when the claim says it; the claim's
verdict combines its essential parts (:func:`.verdicts.combine`). Nothing is typed by hand:
every verdict follows from the runs by the criterion stated in :data:`CLAIMS`.

Effect sizes and the minimum detectable effect (MDE, 80% power at α = 0.05) are reported
with every part, so "inconclusive" can be read as "smaller than the MDE" rather than "absent".
The calibration of these tests (≤ 6.4% decisions on studies without an effect, ≥ 80%
"reproduced" with a planted effect) is checked in ``tests/test_verdicts.py`` on simulated
studies (:mod:`.calibration`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flatbook.analysis.stats import (
    ALPHA,
    MIN_UNITS,
    UnitTest,
    bootstrap_units_correlation,
    comovement,
    fraction_test,
    late_change,
    unit_test,
)
from flatbook.analysis.tables import label
from flatbook.analysis.verdicts import (
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_TESTED,
    REPRODUCED,
    VERDICTS,
    combine,
)

__all__ = ["CLAIMS", "Claim", "Part", "claims_by_key", "evaluate_claims", "late_change_table",
           "trend_claims",
           "theorem_checks"]


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


CLAIMS: tuple[Claim, ...] = (
    Claim("zero_loss", "v3",
          "Across the learning-rate and batch-size sweeps all networks reach ~0 training loss.",
          "fraction of non-diverged runs that end in the interpolation phase, exact binomial "
          "test against the null fraction 1/2 (α = 0.05, two-sided)"),
    Claim("late_fall", "v1",
          "In the late phase of training (after interpolation) sharpness and the volume of the "
          "representation fall together.",
          "essential parts: fitted change of log tr H over the interpolation phase < 0; of log "
          "LVR < 0 (both against the shuffle-in-time null, whose mean is 0); co-movement — "
          "partial correlation of the increments of log tr H and log LVR given the increments "
          "of log training loss, minus its mean when log LVR is shuffled in time — > 0; each "
          "mean over independent units, 95% bootstrap-t interval; λ_max reported, not essential"),
    Claim("lr_sharpness", "v3",
          "A higher learning rate ends in a flatter minimum (lower sharpness).",
          "Kendall τ across runs between η and final λ_max, and between η and final tr H, "
          "both < 0 (95% interval from resampling independent units); needs ≥ 2 values of η"),
    Claim("lr_compression", "v3",
          "A higher learning rate ends in a more compressed representation (lower volume and "
          "sensitivity).",
          "Kendall τ across runs between η and final log LVR, and between η and final MLS, "
          "both < 0 (95% interval over independent units); needs ≥ 2 values of η"),
    Claim("batch_flat", "v3",
          "A smaller batch ends flatter and more compressed.",
          "Kendall τ across runs between B and final tr H, and between B and final log LVR, "
          "both > 0 (95% interval over independent units); needs ≥ 2 batch sizes"),
    Claim("volume_after_plateau", "v3",
          "Volume keeps falling after sharpness has plateaued.",
          "a plateau of tr H detected on the whole run (from where it stays within 10% of its "
          "final value) that starts after the onset of the interpolation phase with ≥ 5 "
          "measurements after it; fitted change of log LVR after it < 0 over such runs; not "
          "tested when fewer than 5 runs have such a plateau"),
    Claim("ld_differs", "v1, v3",
          "Local dimensionality is not controlled by sharpness and moves differently "
          "(v3: it increases during training).",
          "fitted change of the output LD (median over points) over the interpolation phase "
          "> 0, mean over independent units, 95% bootstrap-t interval"),
    Claim("stability", "v3 (Ma & Ying)",
          "SGD ends below its linear-stability ceiling: λ_max ≤ 2/η.",
          "fraction of non-diverged runs with final λ_max ≤ 2/η, exact binomial test against "
          "the null fraction 1/2"),
    Claim("bound_loose", "v1",
          "The volume bound holds but is loose.",
          "looseness only (that T2 holds is a theorem, checked apart): per run the median "
          "log10 slack rhs/lhs of T2 (geometric-mean form) over measurements where it applies "
          "(lhs > 0); mean over independent units > 1 (slack > 10×)"),
    Claim("mls_consistent", "v3",
          "Correlations of sharpness with the representation measures vary by setting; MLS "
          "correlates most consistently.",
          "a claim across settings: not tested with one setting (load several and compare)"),
    Claim("test_sharpness_rises", "v1 §4.2",
          "On test data, sharpness rises during the late phase while volume falls.",
          "essential parts: fitted change of log test λ_max over the interpolation phase > 0; "
          "paired contrast with train (test minus train change of log λ_max, same run) > 0; "
          "fitted change of test log LVR < 0; each over independent units, 95% bootstrap-t"),
    Claim("label_noise_flatter", "v3 §3 (mechanism)",
          "Label-noise SGD drives the network to flatter minima than plain SGD (the mechanism "
          "behind the late-phase fall of sharpness).",
          "paired over runs with the same η, B, data and initialisation: change of log tr H "
          "over their common interpolation window, label-noise minus plain, < 0 (95% "
          "bootstrap-t over pairs); not tested without the label-noise study"),
)


def claims_by_key() -> dict[str, Claim]:
    """The :data:`CLAIMS` indexed by key."""
    return {c.key: c for c in CLAIMS}


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


def _trend_part(study: Any, key: str, expected: int, name: str, *, log: bool,
                essential: bool = True, n_boot: int = 2000, seed: int = 0,
                n_parts: int = 1) -> Part:
    late = _late(study)
    vals = [late_change(t["step"], t[key], log=log) if key in t else math.nan for _, t in late]
    t = unit_test(vals, expected, run_units(study, [i for i, _ in late]), n_boot=n_boot,
                  seed=seed, n_parts=n_parts)
    what = f"Δ{'log ' if log else ''}{label(key, tex=False)} over the late phase"
    return Part.from_test(name, what, t, essential,
                          unit="(log units)" if log else "")


def _comovement_part(study: Any, a: str, b: str, name: str, *, n_boot: int, seed: int,
                     n_null: int = 200, n_parts: int = 1) -> Part:
    late = _late(study)
    vals = []
    for j, (_, t) in enumerate(late):
        if a not in t or b not in t:
            vals.append(math.nan)
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            la = np.log(np.where(t[a] > 0, t[a], np.nan))
            ll = np.log(np.where(t["train_loss"] > 0, t["train_loss"], np.nan))
        stat, null = comovement(la, t[b], ll, n_null=n_null, seed=seed + j)
        vals.append(stat - null)
    t = unit_test(vals, +1, run_units(study, [i for i, _ in late]), n_boot=n_boot, seed=seed,
                  n_parts=n_parts)
    return Part.from_test(name, f"co-movement of Δlog {label(a, tex=False)} and "
                          f"Δ{label(b, tex=False)} (partial r given Δlog loss, minus null)", t)


def _not_tested(name: str, what: str, note: str, essential: bool = True) -> Part:
    return Part(name, what, essential, NOT_TESTED, note=note)


def _axis_part(study: Any, axis: str, key: str, expected: int, name: str, *, n_boot: int,
               seed: int, n_parts: int = 1) -> Part:
    sym = "η" if axis == "lr" else "B"
    what = f"τ({sym}, final {label(key, tex=False)})"
    fin = list(study.finished)
    xs = [math.inf if study.summaries[i][axis] == "full" else float(study.summaries[i][axis])
          for i in fin]
    if len(set(xs)) < 2:
        return _not_tested(name, what, f"one value of {sym} in this sweep")
    ys = [float(study.summaries[i].get(key, math.nan)) for i in fin]
    units = run_units(study, fin)
    if getattr(study.setting, "independent", False):
        est, lo, hi, n, clo, chi = bootstrap_units_correlation(
            xs, ys, units, n_boot=n_boot, seed=seed, levels=(1 - ALPHA / n_parts,))
        if n < MIN_UNITS or not math.isfinite(lo):
            v = INCONCLUSIVE
        elif (lo > 0) if expected == 1 else (hi < 0):
            v = REPRODUCED
        elif (chi < 0) if expected == 1 else (clo > 0):
            v = CONTRADICTED
        else:
            v = INCONCLUSIVE
        mde = 2.8 * (hi - lo) / (2 * 1.96) if math.isfinite(lo) else math.nan
        return Part(name, what, True, v, est, lo, hi, n, mde, expected=expected)
    # shared seeds: τ across the cells within each seed, then a test over seeds
    from flatbook.analysis.stats import rank_correlation

    per: dict[object, tuple[list[float], list[float]]] = {}
    for x, y, u in zip(xs, ys, units, strict=True):
        per.setdefault(u, ([], []))
        per[u][0].append(x)
        per[u][1].append(y)
    taus = [rank_correlation(px, py, "kendall")[0] for px, py in per.values()]
    t = unit_test(taus, expected, None, n_boot=n_boot, seed=seed, n_parts=n_parts)
    return Part.from_test(name, what + " within seeds", t)


# --------------------------------------------------------------------------- claims
def _claim_zero_loss(study: Any, **_: Any) -> tuple[list[Part], str]:
    fin = [study.summaries[i] for i in study.finished]
    k = sum(bool(s["interpolates"]) for s in fin)
    ft = fraction_test(k, len(fin), 0.5)
    n_div = sum(s["status"] == "diverged" for s in study.summaries)
    p = Part("fraction", "fraction of non-diverged runs at ~0 loss", True, ft.verdict,
             ft.fraction, ft.lo, ft.hi, ft.n, math.nan, ft.pvalue,
             note=f"{k} of {ft.n}; {n_div} diverged; null 1/2")
    return [p], ""


def claim_late_fall(study: Any, n_boot: int = 2000, seed: int = 0, n_null: int = 200
                    ) -> tuple[list[Part], str]:
    """Parts of ``late_fall`` (see :data:`CLAIMS`); ``n_null`` shuffles per run for the
    co-movement null."""
    parts = [
        _trend_part(study, "trace_gn", -1, "trace", log=True, n_boot=n_boot, seed=seed,
                    n_parts=3),
        _trend_part(study, "log_lvr_median", -1, "volume", log=False, n_boot=n_boot,
                    seed=seed + 1, n_parts=3),
        _comovement_part(study, "trace_gn", "log_lvr_median", "comovement", n_boot=n_boot,
                         seed=seed + 2, n_null=n_null, n_parts=3),
        _trend_part(study, "lambda_max", -1, "lambda_max", log=True, essential=False,
                    n_boot=n_boot, seed=seed + 3),
    ]
    return parts, ""


def claim_ld_differs(study: Any, n_boot: int = 2000, seed: int = 0) -> tuple[list[Part], str]:
    """Parts of ``ld_differs``."""
    return [_trend_part(study, "ld_median", +1, "ld_rises", log=False, n_boot=n_boot,
                        seed=seed)], ""


def claim_test_sharpness_rises(study: Any, n_boot: int = 2000, seed: int = 0
                               ) -> tuple[list[Part], str]:
    """Parts of ``test_sharpness_rises``: the test trend, its contrast with the train trend
    of the same runs, and the test volume trend."""
    late = _late(study)
    units = run_units(study, [i for i, _ in late])
    if not late or "test_lambda_max" not in late[0][1]:
        note = "no test measurements recorded"
        return [_not_tested("test_rises", "Δlog test λ_max", note),
                _not_tested("test_minus_train", "test − train Δlog λ_max", note),
                _not_tested("test_volume", "Δ test log LVR", note)], ""
    up = _trend_part(study, "test_lambda_max", +1, "test_rises", log=True, n_boot=n_boot,
                     seed=seed, n_parts=3)
    diff = [late_change(t["step"], t["test_lambda_max"], log=True)
            - late_change(t["step"], t["lambda_max"], log=True) for _, t in late]
    ct = unit_test(diff, +1, units, n_boot=n_boot, seed=seed + 1, n_parts=3)
    contrast = Part.from_test("test_minus_train", "test − train Δlog λ_max (paired)", ct,
                              unit="(log units)")
    vol = _trend_part(study, "test_log_lvr_median", -1, "test_volume", log=False,
                      n_boot=n_boot, seed=seed + 2, n_parts=3)
    return [up, contrast, vol], ""


def _claim_axis(study: Any, axis: str, keys: Sequence[str], expected: int, n_boot: int,
                seed: int) -> tuple[list[Part], str]:
    return [_axis_part(study, axis, k, expected, k, n_boot=n_boot, seed=seed + j,
                       n_parts=len(keys)) for j, k in enumerate(keys)], ""


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


def _claim_after_plateau(study: Any, n_boot: int = 2000, seed: int = 0
                         ) -> tuple[list[Part], str]:
    rows = after_plateau_changes(study)
    use = [r for r in rows if r["usable"]]
    what = "Δ log LVR after the tr H plateau"
    if len(use) < MIN_UNITS:
        return [_not_tested("after_plateau", what,
                            f"{len(use)} of {len(rows)} runs have a tr H plateau after the "
                            f"onset with ≥ 5 measurements after it")], ""
    t = unit_test([r["change_after"] for r in use], -1,
                  run_units(study, [int(r["run"]) for r in use]), n_boot=n_boot, seed=seed)
    return [Part.from_test("after_plateau", what, t)], ""


def _claim_stability(study: Any, **_: Any) -> tuple[list[Part], str]:
    fin = [study.summaries[i] for i in study.finished]
    k = sum(float(s["lambda_max"]) <= float(s["gd_ceiling"]) for s in fin)
    ft = fraction_test(k, len(fin), 0.5)
    return [Part("below_ceiling", "fraction of runs with final λ_max ≤ 2/η", True, ft.verdict,
                 ft.fraction, ft.lo, ft.hi, ft.n, math.nan, ft.pvalue,
                 note=f"{k} of {ft.n}; null 1/2")], ""


def _claim_bound_loose(study: Any, n_boot: int = 2000, seed: int = 0
                       ) -> tuple[list[Part], str]:
    idx = [i for i in study.finished if "t2_gm_slack" in study.trajectories[i]]
    vals = []
    for i in idx:
        t = study.trajectories[i]
        lhs = t.get("t2_gm_lhs", np.full(t["step"].size, 1.0))
        sl = t["t2_gm_slack"][(lhs > 0) & np.isfinite(t["t2_gm_slack"])
                              & (t["t2_gm_slack"] > 0)]
        vals.append(float(np.median(np.log10(sl))) if sl.size else math.nan)
    t = unit_test(vals, +1, run_units(study, idx), null=1.0, n_boot=n_boot, seed=seed)
    p = Part.from_test("loose", "median log10 slack of T2 (GM) − 1", t, unit="(decades)")
    return [p], ""


def _claim_mls_consistent(study: Any, **_: Any) -> tuple[list[Part], str]:
    return [_not_tested("across_settings", "MLS the most consistent correlate across settings",
                        "one setting in this study; the claim compares settings")], ""


def claim_label_noise(study: Any, noise: Any | None, n_boot: int = 2000, seed: int = 0
                      ) -> tuple[list[Part], str]:
    """Paired label-noise claim: for each plain run and the label-noise run with the same η,
    B and seed (both interpolating), the change of log tr H over their common interpolation
    window [max of the two onsets, end], noise minus plain; test mean < 0 over pairs."""
    what = "Δlog tr H, label-noise − plain (paired)"
    if noise is None:
        return [_not_tested("paired", what, "no label-noise study loaded")], ""
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
"""The claims about a direction of change over the late phase (calibrated in the tests)."""


def trend_claims(study: Any, n_boot: int = 2000, seed: int = 0) -> dict[str, str]:
    """Verdicts of the :data:`TREND_CLAIMS` alone (cheaper than :func:`evaluate_claims`; the
    same functions), e.g. for a shuffle-in-time null."""
    out = {}
    for key, fn in (("late_fall", claim_late_fall), ("ld_differs", claim_ld_differs),
                    ("test_sharpness_rises", claim_test_sharpness_rises)):
        parts, _ = fn(study, n_boot=n_boot, seed=seed)
        out[key] = combine([p.verdict for p in parts], [p.essential for p in parts])
    return out


def evaluate_claims(study: Any, n_boot: int = 2000, seed: int = 0, *,
                    label_noise: Any | None = None) -> list[dict[str, object]]:
    """Score every claim of :data:`CLAIMS` on a study by its stated criterion.

    Args:
        study: a :class:`flatbook.analysis.Study` (or anything with its ``summaries``,
            ``trajectories``, ``finished``, ``interpolating``, ``late_trajectories()`` and
            ``setting.independent``).
        n_boot: bootstrap resamples of every interval; seed: their seed.
        label_noise: the paired label-noise study (same η, B, seeds), for
            ``label_noise_flatter``; None: that claim is "not tested".

    Returns one dict per claim: ``key``, ``version``, ``claim``, ``criterion``, ``verdict``
    (one of :data:`.verdicts.VERDICTS`), ``parts`` (list of :meth:`Part.as_dict`),
    ``evidence`` (the parts in words: effect, interval, units, MDE, verdict) and ``numbers``
    (effect of each part by name).
    """
    kw = {"n_boot": n_boot, "seed": seed}
    fns = {
        "zero_loss": lambda: _claim_zero_loss(study),
        "late_fall": lambda: claim_late_fall(study, **kw),
        "lr_sharpness": lambda: _claim_axis(study, "lr", ["lambda_max", "trace_gn"], -1, **kw),
        "lr_compression": lambda: _claim_axis(study, "lr", ["log_lvr_median", "mls_median"],
                                              -1, **kw),
        "batch_flat": lambda: _claim_axis(study, "batch_size", ["trace_gn", "log_lvr_median"],
                                          +1, **kw),
        "volume_after_plateau": lambda: _claim_after_plateau(study, **kw),
        "ld_differs": lambda: claim_ld_differs(study, **kw),
        "stability": lambda: _claim_stability(study),
        "bound_loose": lambda: _claim_bound_loose(study, **kw),
        "mls_consistent": lambda: _claim_mls_consistent(study),
        "test_sharpness_rises": lambda: claim_test_sharpness_rises(study, **kw),
        "label_noise_flatter": lambda: claim_label_noise(study, label_noise, **kw),
    }
    rows = []
    for c in CLAIMS:
        parts, _ = fns[c.key]()
        verdict = combine([p.verdict for p in parts], [p.essential for p in parts])
        assert verdict in VERDICTS
        rows.append({
            "key": c.key, "version": c.version, "claim": c.text, "criterion": c.criterion,
            "verdict": verdict, "parts": [p.as_dict() for p in parts],
            "evidence": "; ".join(("" if p.essential else "(not essential) ") + p.text()
                                  for p in parts),
            "numbers": {p.name: p.effect for p in parts},
        })
    return rows


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
