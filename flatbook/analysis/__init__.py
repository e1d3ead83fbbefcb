"""Experiment analysis: settings and their sweeps, loading a study from the result store,
statistics, and the paper's claims as stated tests.

One idea per module:

- :mod:`.settings` — :data:`SETTINGS` (the CPU default ``digits-mlp``, its label-noise twin,
  the extended studies and the paper's settings; ``POWERED_DIGITS``, the 36 + 36-run design
  switched on once the claims table is frozen) and :func:`study_configs`;
- :mod:`.store` — the measurement of every record (:func:`make_measure`), the store folder
  (:func:`store_for`) and :func:`obtain` (read back, or compute missing runs in parallel,
  compatible ones as ensembles: :mod:`flatbook.ensemble_runs`);
- :mod:`.phases` — the interpolation phase and plateaus of a trajectory;
- :mod:`.study` — run summaries and :class:`Study` (:func:`load_study`);
- :mod:`.stats` — rank correlations with bootstrap intervals, fitted late-phase changes,
  co-movement against a shuffle null, unit-level tests with effect sizes and MDEs, binomial
  tests;
- :mod:`.verdicts` — the four verdict words and how parts combine;
- :mod:`.plan` — the analysis plan as data: every claim, its rows, kinds, flags, version,
  hash and change log (frozen before a study is scored);
- :mod:`.window` — the late window (loss ≤ 1e-3, ≥ 10 measurements) and run-level statistics;
- :mod:`.rules` — the decision rules (sign-flip, run-mismatch coupling, stratified factor,
  correlation, TOST, k of n, Holm), vectorised over draws;
- :mod:`.scoring` — the plan scored on a study (parts, MDE, power, sensitivity);
- :mod:`.mechanism` — the exact decomposition of the late-phase volume change (R5);
- :mod:`.nulls` — the calibration nulls N1–N6, planted effects and power;
- :mod:`.fixture` — the compact fixture of real runs the calibration tests use;
- :mod:`.claims` — :data:`CLAIMS`, :func:`evaluate_claims`, :func:`theorem_checks`;
- :mod:`.across_settings` — the claim ``consistency`` scored on several settings' studies
  (:func:`evaluate_consistency`);
- :mod:`.calibration` — simulated studies with and without an effect (the tests' nulls);
- :mod:`.tables` — labels and Markdown tables.

Statistics. The paper (Chen, Recanatesi & Shea-Brown, arXiv 2310.01770) does not say which
correlation statistic it reports; we use Kendall's τ_b and Spearman's ρ from
:mod:`scipy.stats`, each with a percentile bootstrap interval. Verdicts come from tests on
independent units (see :mod:`.claims`).
"""

# ruff: noqa: F401  (re-exports: the public API of flatbook.analysis)
from flatbook.analysis import mechanism, nulls, plan, rules, scoring, window
from flatbook.analysis.across_settings import evaluate_consistency
from flatbook.analysis.calibration import Simulation, shuffle_late_phase, simulated_study
from flatbook.analysis.claims import (
    CLAIMS,
    Claim,
    Part,
    after_plateau_changes,
    claims_by_key,
    evaluate_claims,
    late_change_table,
    theorem_checks,
    trend_claims,
)
from flatbook.analysis.mechanism import decompose, mechanism_sentence
from flatbook.analysis.nulls import power_table
from flatbook.analysis.phases import (
    interpolation_start,
    late_phase,
    phase_start,
    plateau_start,
)
from flatbook.analysis.plan import (
    CHANGE_LOG,
    CLAIM_SPECS,
    FROZEN,
    HEADLINE,
    PLAN_HASH,
    PLAN_VERSION,
    PRIMARY_THRESHOLD,
    THRESHOLDS,
    frozen_line,
)
from flatbook.analysis.scoring import score_some, sensitivity
from flatbook.analysis.settings import (
    DEFAULT_SETTING,
    DIGITS_LABEL_NOISE,
    SETTINGS,
    Setting,
    default_results_dir,
    get_setting,
    independent_seed,
    label_noise_twin,
    run_grid,
    study_configs,
)
from flatbook.analysis.stats import (
    ALPHA,
    METHODS,
    MIN_UNITS,
    Correlation,
    FractionTest,
    UnitTest,
    bootstrap_statistics,
    bootstrap_t,
    comovement,
    correlation,
    correlation_matrix,
    correlation_table,
    fraction_test,
    late_change,
    mde,
    mean_ci,
    partial_correlation,
    rank_correlation,
    relative_change,
    trajectory_correlations,
    trend,
    unit_test,
    unit_values,
)
from flatbook.analysis.store import (
    MEASURE_VERSION,
    TEST_TRACE_HVPS,
    hidden_representations,
    make_measure,
    obtain,
    resolve_workers,
    store_for,
)
from flatbook.analysis.study import (
    REPRESENTATION,
    SHARPNESS,
    Study,
    StudyOptions,
    consistency,
    load_study,
    run_summary,
    stability_ceilings,
    trajectory,
)
from flatbook.analysis.tables import LABELS, PLAIN, label, markdown_table
from flatbook.analysis.verdicts import (
    CONTRADICTED,
    DECIDED,
    INCONCLUSIVE,
    NOT_TESTED,
    REPRODUCED,
    VERDICTS,
    combine,
)
from flatbook.analysis.window import Panel, panel

__all__ = [n for n in dir() if not n.startswith("_")]
