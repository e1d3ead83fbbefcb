"""Calibration of every decision rule of the analysis plan (R6) under the nulls N1–N6, on the
committed fixture of ≥ 36 real runs (tests/data/fixture_runs.npz, made by
scripts/make_fixture.py) and on simulation, and the power of the trend parts (R3).

A rule passes when it decides (reproduced or contradicted) in at most 5 % + 2 binomial SE of the
draws (8.1 % at 200 draws, 6.4 % at 1000). Seeds are fixed here. The rules run vectorised over
draws (flatbook.analysis.nulls), with the same rule functions and seeds as evaluate_claims —
checked first, on the fixture itself and on a null built from it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from flatbook import analysis as A
from flatbook.analysis import nulls as N
from flatbook.analysis import plan as P
from flatbook.analysis import rules as RL
from flatbook.analysis import window as W
from flatbook.analysis.fixture import load_fixture

FIXTURE = Path(__file__).parent / "data" / "fixture_runs.npz"
DRAWS, DRAWS_BIG = 200, 1000
PERM = 400                     # within-cell pairings per coupling test in the calibration


def bound(n: int) -> float:
    """5 % + 2 binomial standard errors at n draws."""
    return 0.05 + 2 * math.sqrt(0.05 * 0.95 / n)


@pytest.fixture(scope="module")
def real() -> tuple[object, W.Panel]:
    st = load_fixture(FIXTURE)                      # required: no fixture, no calibration
    p = W.panel(st)
    assert p.n >= 36, f"the fixture has {p.n} runs in the late phase; rules need ≥ 36"
    return st, p


def rates(v: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: N.decided_rate(x)[0] for k, x in v.items()}


def check(v: dict[str, np.ndarray], n: int, what: str) -> None:
    r = rates(v)
    bad = {k: x for k, x in r.items() if x > bound(n)}
    assert not bad, (what, bad, r)


def test_vectorised_rules_are_those_of_evaluate_claims(real: tuple) -> None:
    st, p = real
    decays = N.smooth_decays(N.from_panel(p, 1), ["trace_gn", "lambda_max", "log_lvr_median"],
                             seed=11)
    for study in (st, N.to_study(st, p, decays, 0, ["trace_gn", "lambda_max",
                                                     "log_lvr_median"])):
        rows = {c["key"]: c for c in A.evaluate_claims(study, sensitivity=False)}
        d = N.from_panel(W.panel(study), 1)
        for key in ("late_fall", "compression_v3", "lr_effect", "batch_effect", "test_data"):
            got = N.score_draws(d, P.spec(key))
            parts = {q["name"]: q for q in rows[key]["parts"]}
            for name, v in got.items():
                want = rows[key]["verdict"] if name == "claim" else parts[name]["verdict"]
                assert v[0] == want, (key, name, v[0], want)


def test_n1_shuffle_in_time_trend_parts(real: tuple) -> None:
    _, p = real
    for d, n in ((N.shuffle_in_time(N.from_panel(p, DRAWS), seed=1), DRAWS),
                 (N.simulate(DRAWS, seed=2), DRAWS)):
        for key in ("late_fall", "test_data", "compression_v3", "ld"):
            spec = P.spec(key)
            rows = [r.name for r in spec.rows if r.kind == "trend" and r.window == "late"]
            check(N.score_draws(d, spec, n_perm=PERM, n_flip=2000, rows=rows), n, ("N1", key))
        # a claim of trend parts only, as combined (a joint shuffle turns the level
        # correlation of two series into correlated increments: N1 is no null for coupling)
        td = N.score_draws(d, P.spec("test_data"), n_flip=2000)
        assert N.decided_rate(td["claim"])[0] <= bound(n)


def test_n2_independent_smooth_decays_do_not_couple(real: tuple) -> None:
    _, p = real
    keys = ["trace_gn", "lambda_max", "log_lvr_median"]
    for d in (N.smooth_decays(N.from_panel(p, DRAWS_BIG), keys, seed=3),
              N.smooth_decays(N.simulate(DRAWS_BIG, seed=4), keys, seed=5)):
        v = N.score_draws(d, P.spec("late_fall"), n_perm=PERM, rows=["coupling"])
        check(v, DRAWS_BIG, "N2 late_fall")
    d = N.smooth_decays(N.from_panel(p, DRAWS_BIG), ["mls_median", "nmls", "nvr", "trace_gn"],
                        seed=6)
    spec = P.spec("compression_v3")
    v = N.score_draws(d, spec, n_perm=PERM, rows=["coupling_mls", "level_mls",
                                                  "coupling_nmls", "coupling_nvr"])
    check(v, DRAWS_BIG, "N2 compression_v3")


def test_n3_run_mismatch_within_cells(real: tuple) -> None:
    _, p = real
    d = N.from_panel(p, DRAWS)
    v = N.score_draws(N.mismatch(d, "log_lvr_median", seed=7), P.spec("late_fall"),
                      n_perm=PERM, rows=["coupling"])
    check(v, DRAWS, "N3 late_fall")
    d3 = N.mismatch(N.mismatch(N.mismatch(d, "mls_median", seed=8), "nmls", seed=9), "nvr",
                    seed=10)
    spec = P.spec("compression_v3")
    v = N.score_draws(d3, spec, n_perm=PERM, rows=[r.name for r in spec.rows
                                                   if r.kind == "coupling"])
    check(v, DRAWS, "N3 compression_v3")


def test_n4_partial_nulls_set_the_size_of_intersection_union() -> None:
    base = N.simulate(DRAWS_BIG, seed=12)
    lf = P.spec("late_fall")
    strong = base
    for key, log in (("lambda_max", True), ("trace_gn", True), ("log_lvr_median", False)):
        strong = N.plant(strong, key, -3.0, log, seed=13)
    # every trend part strongly true, the coupling null
    v = N.score_draws(strong, lf, n_perm=PERM)
    assert rates(v)["trace"] > 0.99 and N.decided_rate(v["claim"])[0] <= bound(DRAWS_BIG)
    # coupling strongly true (log LVR follows log tr H), λ_max null
    tr = N.plant(base, "trace_gn", -3.0, True, seed=14)
    lt = tr.values("trace_gn", True)
    rng = np.random.default_rng(15)
    lvr = lt + 0.05 * rng.standard_normal(lt.shape)
    d = N.Draws(tr.step, tr.series | {"log_lvr_median": lvr}, tr.starts, tr.lr, tr.batch)
    v = N.score_draws(d, lf, n_perm=PERM)
    assert rates(v)["coupling"] > 0.99 and N.decided_rate(v["claim"])[0] <= bound(DRAWS_BIG)
    # test_data: two parts strongly true, the volume null
    td = N.plant(N.plant(base, "test_trace_hessian", 3.0, True), "test_lambda_max", 3.0, True)
    v = N.score_draws(td, P.spec("test_data"))
    assert N.decided_rate(v["claim"])[0] <= bound(DRAWS_BIG)


def test_n5_labels_permuted_within_strata(real: tuple) -> None:
    _, p = real
    d = N.from_panel(p, DRAWS)
    for factor, key in (("lr", "lr_effect"), ("batch_size", "batch_effect")):
        dp, _ = N.permute_labels(d, factor, seed=16)
        check(N.score_draws(dp, P.spec(key)), DRAWS, ("N5", key))
        # the level correlation of compression_v3 is across runs: permuting runs breaks it
    rng = np.random.default_rng(17)
    perm = np.argsort(rng.random((DRAWS, p.n)), axis=1)
    dm = N.Draws(d.step, d.series | {"mls_median": np.take_along_axis(
        d.series["mls_median"], perm[..., None], axis=1)}, d.starts, d.lr, d.batch)
    check(N.score_draws(dm, P.spec("compression_v3"), n_perm=PERM, rows=["level_mls"]),
          DRAWS, "N5 level_mls")


def test_n6_a_shared_loss_driver_is_not_coupling(real: tuple) -> None:
    _, p = real
    keys = ["log_lvr_median", "trace_gn", "mls_median", "nmls", "nvr", "ld_median"]
    for d in (N.loss_driven(N.from_panel(p, DRAWS), keys, seed=18),
              N.loss_driven(N.simulate(DRAWS, seed=19), keys, seed=20)):
        for key in ("late_fall", "compression_v3"):
            spec = P.spec(key)
            rows = [r.name for r in spec.rows if r.kind == "coupling"]
            check(N.score_draws(d, spec, n_perm=PERM, rows=rows), DRAWS, ("N6", key))


def test_equivalence_decides_at_most_alpha_at_the_margin() -> None:
    rng = np.random.default_rng(21)
    se, n, m = 0.05, 36, P.TOST_MARGIN_Z
    for sign in (-1, 1):
        eff = sign * m + se * rng.standard_t(n - 1, DRAWS_BIG)
        v = RL.tost(eff, np.full(DRAWS_BIG, se), n - 1, m, n)["verdict"]
        assert np.mean(v == A.REPRODUCED) <= bound(DRAWS_BIG)
    assert np.mean(RL.tost(se * rng.standard_normal(DRAWS_BIG), np.full(DRAWS_BIG, se),
                           n - 1, m, n)["verdict"] == A.REPRODUCED) > 0.9


def test_planted_half_sd_trend_reaches_80_percent_on_the_default_design() -> None:
    base = N.simulate(DRAWS_BIG, seed=22)
    assert base.shape[1] == 36
    for key in ("late_fall", "test_data", "compression_v3", "ld"):
        spec = P.spec(key)
        for r in spec.rows:
            if r.kind != "trend" or r.window != "late":
                continue
            curve = N.power_curve(spec, r.name, base=base, seed=23)
            assert curve[0.5] >= 0.8, (key, r.name, curve)
            assert curve[0.25] < curve[0.5] <= curve[1.0]


def test_power_table_for_the_report() -> None:
    rows = N.power_table(S=200, seed=24)
    late = [r for r in rows if r["claim"] == "late_fall"]
    assert {r["row"] for r in late} == {"lambda_max", "trace", "volume", "coupling"}
    cp = late[0]["claim_power"]
    assert 0 < cp < min(r["power@0.5"] for r in late if r["essential"])   # parts multiply
    assert all(r["power@0.25"] <= r["power@1"] for r in rows)


def test_sensitivity_table_and_mechanism_on_real_runs(real: tuple) -> None:
    st, p = real
    table = A.sensitivity(st)
    assert {(r["claim"], r["row"]) for r in table} >= {("late_fall", "trace"),
                                                        ("late_fall", "lambda_max"),
                                                        ("test_data", "volume")}
    for r in table:
        assert all(f"verdict@{t:g}" in r and f"dlogL@{t:g}" in r for t in P.THRESHOLDS)
        vs = {r[f"verdict@{t:g}"] for t in P.THRESHOLDS}
        assert r["sensitive"] == (len(vs) > 1)
    rows = {c["key"]: c for c in A.evaluate_claims(st)}
    flagged = {(c, q["name"]) for c, row in rows.items() for q in row["parts"]
               if "threshold-sensitive" in q["flags"]}
    assert flagged == {(r["claim"], r["row"]) for r in table if r["sensitive"]}
    d = A.decompose(p)
    ok = d["full_rank"]
    assert ok.sum() >= 1 and np.abs(d["residual"][ok]).max() < 1e-9
    # the recorded T1 slack agrees with the one the identity uses (float32 store rounding)
    assert np.allclose(d["slack"][ok], -d["slack_recorded"][ok], atol=1e-4)
    assert A.mechanism_sentence(d).startswith("Over the late window")


def test_chapters_score_the_plan_rows_as_the_report_does(real: tuple) -> None:
    """score_some (the experiment chapters' verdicts) gives the same parts and verdicts as
    evaluate_claims (the report) for the same claims: no chapter has its own rule."""
    st, _ = real
    full = {c["key"]: c for c in A.evaluate_claims(st, sensitivity=False)}
    keys = ["late_fall", "lr_sharpness", "volume_after_plateau", "test_data"]   # old key too
    for c in A.score_some(st, keys):
        ref = full[c["key"]]
        assert c["verdict"] == ref["verdict"] and c["n_late"] == ref["n_late"]
        for q, r in zip(c["parts"], ref["parts"], strict=True):
            assert (q["name"], q["verdict"], q["n"]) == (r["name"], r["verdict"], r["n"])
            assert q["effect"] == r["effect"] or not np.isfinite(r["effect"])
