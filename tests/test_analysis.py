"""flatbook.analysis: rank correlations, bootstrap intervals, trajectories, verdict logic."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from flatbook import analysis as A


def test_known_small_data_kendall_spearman() -> None:
    # x = 1..4, y = (1, 3, 2, 4): 5 concordant, 1 discordant pair -> tau = 4/6;
    # rank differences (0, 1, -1, 0) -> rho = 1 - 6*2 / (4*15) = 0.8
    x, y = [1, 2, 3, 4], [1, 3, 2, 4]
    assert A.rank_correlation(x, y, "kendall")[0] == pytest.approx(4 / 6, abs=1e-12)
    assert A.rank_correlation(x, y, "spearman")[0] == pytest.approx(0.8, abs=1e-12)
    # a strictly decreasing transform reverses the sign exactly
    assert A.rank_correlation(x, -np.exp(y), "kendall")[0] == pytest.approx(-4 / 6)


def test_vectorised_rows_match_scipy_with_ties() -> None:
    rng = np.random.default_rng(1)
    xr = rng.integers(0, 5, size=(20, 15)).astype(float)   # many ties
    yr = xr + rng.integers(0, 3, size=(20, 15))
    tau = A.stats._kendall_rows(xr, yr)
    rho = A.stats._spearman_rows(xr, yr)
    for b in range(20):
        assert tau[b] == pytest.approx(stats.kendalltau(xr[b], yr[b]).statistic, abs=1e-12)
        assert rho[b] == pytest.approx(stats.spearmanr(xr[b], yr[b]).statistic, abs=1e-12)


@pytest.mark.parametrize("method", A.METHODS)
def test_bootstrap_ci_covers_population_correlation(method: str) -> None:
    # bivariate normal with Pearson r: tau = (2/pi) asin r, Spearman = (6/pi) asin(r/2)
    r, n, reps = 0.6, 50, 40
    truth = 2 / np.pi * np.arcsin(r) if method == "kendall" else 6 / np.pi * np.arcsin(r / 2)
    cov = np.array([[1, r], [r, 1]])
    rng = np.random.default_rng(0)
    hits, widths = 0, []
    for rep in range(reps):
        xy = rng.multivariate_normal([0, 0], cov, size=n)
        c = A.correlation(xy[:, 0], xy[:, 1], method, n_boot=400, seed=rep)
        assert -1 <= c.lo <= c.hi <= 1 and c.n == n
        hits += c.lo <= truth <= c.hi
        widths.append(c.hi - c.lo)
    assert hits / reps >= 0.8, hits          # nominal 95%; percentile bootstrap a bit under
    assert hits / reps < 1.0 or np.mean(widths) < 0.6   # not trivially wide
    # and a null relationship is not declared significant most of the time
    z = rng.standard_normal((2, 200))
    assert A.correlation(z[0], z[1], method, n_boot=400).sign == 0


def test_perfect_monotone_and_constant_and_nonfinite() -> None:
    x = np.arange(10.0)
    c = A.correlation(x, x ** 3, "kendall", n_boot=200)
    assert (c.estimate, c.lo, c.hi) == pytest.approx((1.0, 1.0, 1.0)) and c.sign == 1
    assert c.contains_estimate
    # a constant variable: undefined, NaN, never a verdict other than not reproduced
    c0 = A.correlation(x, np.ones(10), "spearman", n_boot=50)
    assert math.isnan(c0.estimate) and math.isnan(c0.lo) and c0.sign == 0
    # -inf (rank-deficient log LVR) and NaN are dropped pairwise
    y = x.copy()
    y[[2, 5]] = [-np.inf, np.nan]
    c1 = A.correlation(x, y, "kendall", n_boot=50)
    assert c1.n == 8 and c1.estimate == pytest.approx(1.0)
    with pytest.raises(ValueError, match="method"):
        A.correlation(x, x, "pearson")
    with pytest.raises(ValueError, match="same length"):
        A.correlation(x, x[:3])


def test_bootstrap_is_seeded() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((2, 30))
    a = A.bootstrap_statistics(x, y, "kendall", 100, seed=7)
    b = A.bootstrap_statistics(x, y, "kendall", 100, seed=7)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, A.bootstrap_statistics(x, y, "kendall", 100, seed=8))


def test_correlation_table_and_matrix() -> None:
    recs = [{"a": float(i), "b": float(i) ** 2, "c": float(-i)} for i in range(8)]
    rows = A.correlation_table(recs, ["a"], ["b", "c", "missing"], n_boot=100)
    assert len(rows) == 3 * 2
    m = A.correlation_matrix(rows, ["a"], ["b", "c", "missing"], "kendall")
    assert m[0, 0] == pytest.approx(1.0) and m[0, 1] == pytest.approx(-1.0)
    assert math.isnan(m[0, 2])
    table = A.markdown_table(rows, ["x", "y", "method", "n"])
    assert table.count("\n") == 1 + len(rows) and "| a | b | kendall | 8 |" in table


def test_trajectory_helpers() -> None:
    loss = [1.0, 0.5, 1e-4, 2e-3, 1e-4, 1e-5, 1e-6]
    assert A.interpolation_start(loss, 1e-3) == 4          # stays below from index 4
    assert A.interpolation_start([1.0, 1e-5, 1.0], 1e-3) is None
    assert A.interpolation_start([1e-5, 1e-6], 1e-3) == 0
    traj = {"step": np.arange(7), "loss": np.array(loss)}
    late = A.late_phase(traj, 4)
    assert list(late["step"]) == [4, 5, 6]
    assert A.late_phase(traj, None)["step"].size == 0
    assert A.trend([0, 1, 2, 3], [4.0, 3.0, 2.5, 1.0]) == -1.0
    assert math.isnan(A.trend([0, 1], [1.0, 2.0]))
    assert A.relative_change([2.0, 3.0, 1.0]) == -0.5
    v = [10.0, 5.0, 2.15, 1.95, 2.05, 2.0]
    assert A.plateau_start(v, 0.1) == 2
    assert A.plateau_start([1.0, 2.0, 4.0], 0.1) == 2
    assert A.trajectory_correlations([traj, {"step": [0, 1, 2]}], "step", "loss")[1] != 0
    with pytest.raises(ValueError, match="threshold"):
        A.interpolation_start(loss, 0.0)


def test_mean_ci() -> None:
    m, lo, hi = A.mean_ci([0.2, 0.4, 0.6, np.nan], n_boot=500)
    assert m == pytest.approx(0.4) and 0.2 <= lo <= m <= hi <= 0.6
    assert all(math.isnan(v) for v in A.mean_ci([np.nan]))


def test_claims_and_grid() -> None:
    keys = [c.key for c in A.CLAIMS]
    assert len(keys) == len(set(keys)) >= 8
    assert all(c.version and c.criterion for c in A.CLAIMS)
    assert keys == [c.key for c in A.plan.CLAIM_SPECS]
    g = A.run_grid(lr=[0.1, 0.2], batch_size=[8, 32, 64])
    assert len(g) == 6 and g[1] == {"lr": 0.1, "batch_size": 32}
    with pytest.raises(ValueError, match="lr"):
        A.run_grid(lr=[])


# ----------------------------------------------------------------------------- study layer
def fake_study(sign: int = 1, n_meas: int = 6, seed: int = 0) -> A.Study:
    """Runs whose records follow the paper's claims (sign=+1) or contradict the η one (−1)."""
    from types import SimpleNamespace

    rng = np.random.default_rng(seed)
    results = []
    for lr in (0.1, 0.2, 0.4, 0.8):
        for B in (8, 32, 128):
            for s in (0, 1):
                scale = (1 / lr if sign > 0 else lr * 10) * B / 8
                lam = (1 / lr if sign > 0 else lr * 10) * (1 + B / 256)   # ≤ 2/η iff sign > 0
                recs = []
                for j in range(n_meas):
                    late = 1 - 0.02 * j                       # slow monotone fall
                    jit = 1 + 0.001 * rng.standard_normal()
                    c = 0.01 * rng.standard_normal()          # shared by tr H and log LVR
                    recs.append({
                        "step": 100.0 * j, "train_loss": 0.5 if j == 0 else 1e-3 / (j + 1),
                        "train_acc": 0.5 if j == 0 else 1.0, "test_loss": 0.1, "test_acc": 0.9,
                        "lambda_max": lam * late * jit,
                        "trace_gn": 10 * scale * late * np.exp(c),
                        "log_lvr_median": np.log(scale) - j + c, "mls_median": scale * late ** 3,
                        "nmls": scale * late * 1.1, "nvr": scale * late ** 2,
                        "ld_median": 1.0 + j + 0.1 * rng.random(), "l1_kappa": scale * late,
                        "t2_gm_holds": 1.0, "t2_gm_slack": 100.0,
                        "t2_per_sample_slack_median": 100.0, "test_trace_hessian": 2.0 + j,
                        "test_lambda_max": 1.0 + j, "test_log_lvr_median": -float(j)})
                results.append(SimpleNamespace(
                    records=recs, status="completed", data={"n_train": 600, "n_classes": 10},
                    config=SimpleNamespace(lr=lr, batch_size=B, seed=s)))
    return A.Study(A.get_setting("digits-mlp"), [], results, 1e-2)


def test_study_summaries_and_ceilings() -> None:
    st = fake_study()
    s = st.summaries[0]
    assert s["interpolates"] and s["phase_step"] == 100.0 and s["phase_index"] == 1
    assert s["trend_log_lvr_median"] == pytest.approx(-1.0)
    assert s["kappa_sum"] == pytest.approx(s["l1_kappa"])
    gd, sgd = A.stability_ceilings(0.2, 8, 600, 10)
    p = (600 - 8) / (8 * 599)
    assert gd == pytest.approx(10.0) and sgd == pytest.approx(2 * 10 / (p * 0.2))
    assert A.stability_ceilings(0.2, "full", 600, 10)[1] == math.inf
    i = st.pick()
    assert st.summaries[i]["lr"] == 0.4 and st.summaries[i]["batch_size"] == 8


def test_claim_verdicts_follow_the_data() -> None:
    rows = A.evaluate_claims(fake_study(+1, n_meas=14), sensitivity=False)
    v = {c["key"]: c["verdict"] for c in rows}
    for key in ("zero_loss", "late_fall", "lr_effect", "batch_effect", "bound_loose",
                "test_data", "stability"):
        assert v[key] == A.REPRODUCED, (key, v[key])
    # tr H falls 2 % a step: no plateau; one setting cannot say anything across settings;
    # no label-noise study was given
    for key in ("volume_after_plateau", "consistency", "label_noise"):
        assert v[key] == A.NOT_TESTED, (key, v[key])
    by = {c["key"]: c for c in rows}
    assert by["stability"]["by_design"] and not by["stability"]["counted"]
    assert by["ld"]["aliases"] == ["ld_differs"] and by["late_fall"]["plan_hash"]
    assert math.isfinite(by["late_fall"]["holm_p"]) and not math.isfinite(
        by["zero_loss"]["holm_p"])
    # sharpness rising with η contradicts the claim; λ_max = 10 η·… also exceeds 2/η
    w = {c["key"]: c["verdict"] for c in A.evaluate_claims(fake_study(-1, n_meas=14),
                                                            sensitivity=False)}
    assert w["lr_effect"] == A.CONTRADICTED and w["stability"] == A.CONTRADICTED
    assert w["late_fall"] == A.REPRODUCED          # the time course is unchanged
    # too short a late window: every run is "not in the late phase", counted
    short = A.evaluate_claims(fake_study(+1, n_meas=6), sensitivity=False)
    assert short[0]["n_late"] == 0 and short[0]["n_short"] == 24
    assert {c["key"]: c["verdict"] for c in short}["late_fall"] == A.NOT_TESTED


def test_claim_rows_carry_effects_before_the_verdict() -> None:
    rows = A.evaluate_claims(fake_study(+1, n_meas=14))
    late = next(r for r in rows if r["key"] == "late_fall")
    names = [p["name"] for p in late["parts"]]
    assert names == ["lambda_max", "trace", "volume", "coupling"]
    assert all(p["essential"] for p in late["parts"])
    for p in late["parts"]:
        assert {"measure", "kind", "effect", "lo", "hi", "p", "mde", "mde_sd", "n",
                "verdict"} <= set(p)
    j = np.arange(1, 14)                      # the late window: measurements 1..13
    want = A.late_change(100.0 * j, 1 - 0.02 * j, log=True)   # noiseless fitted change
    assert late["numbers"]["trace"] == pytest.approx(want, abs=0.01)
    first = late["evidence"].split(") → ")[0]  # effect, interval, n and MDE, then the word
    assert first.index("[") < first.index("MDE") and "Δlog L in the window" in first
    assert late["evidence"].split("; Δlog tr H")[0].endswith("→ reproduced")


def test_label_noise_claim_pairs_runs() -> None:
    from flatbook.analysis import calibration as K

    sim = {"n_runs": 10, "n_measure": 12, "onset": 1, "sd_within": 0.2}
    plain = K.simulated_study(seed=0, **sim)
    flatter = K.simulated_study(seed=1, effect=1.0, **sim)        # tr H falls in each run
    same = K.simulated_study(seed=2, **sim)
    (p,), _ = A.claims.claim_label_noise(plain, flatter, n_boot=500)
    assert p.verdict == A.REPRODUCED and p.n_units == 10 and p.effect < 0
    (q,), _ = A.claims.claim_label_noise(plain, same, n_boot=500)
    assert q.verdict == A.INCONCLUSIVE
    (r,), _ = A.claims.claim_label_noise(plain, None)
    assert r.verdict == A.NOT_TESTED
    for s in flatter.summaries:                  # no pair with the same (η, B, seed): none
        s["seed"] += 100
    (u,), _ = A.claims.claim_label_noise(plain, flatter, n_boot=100)
    assert u.verdict == A.NOT_TESTED and u.n_units == 0


def test_theorem_checks_count_not_applicable_apart() -> None:
    st = fake_study(+1)
    for t in st.trajectories:
        t["t2_gm_lhs"] = np.where(np.arange(t["step"].size) % 2 == 0, 0.0, 1.0)
        t["t2_gm_rhs"] = np.full(t["step"].size, 100.0)
    (row,) = A.theorem_checks(st, ["t2_gm"])
    n = sum(t["step"].size for t in st.trajectories)
    assert row["not_applicable"] + row["applies"] == n and row["not_applicable"] == n // 2
    assert row["holds"] == row["applies"] and row["median_slack"] == pytest.approx(100.0)


def test_consistency_and_labels() -> None:
    rows = [{"where": w, "x": "trace_gn", "y": y, "method": "kendall", "estimate": e}
            for w, y, e in [("across", "mls_median", 0.5), ("along", "mls_median", 0.3),
                            ("across", "ld_median", 0.9), ("along", "ld_median", -0.2)]]
    c = {r["y"]: r["worst"] for r in A.consistency(rows, "trace_gn",
                                                   ["mls_median", "ld_median", "nmls"])}
    assert c["mls_median"] == 0.3 and c["ld_median"] == -0.2 and math.isnan(c["nmls"])
    assert A.label("test_lambda_max", tex=False) == "test λ_max"
    assert A.label("rep_3_ld_mean", tex=False) == "LD of h (item 3)"
    assert A.label("unknown_key") == "unknown_key"


def test_label_noise_claim_pairs_runs_over_the_plain_window() -> None:
    plain = fake_study(+1, n_meas=14)
    twin = fake_study(+1, n_meas=14, seed=1)
    for t in twin.trajectories:                 # tr H falls 5 % more per step; the twin's
        t["trace_gn"] = t["trace_gn"] * 0.95 ** np.arange(t["step"].size)
        t["train_loss"] = np.full(t["step"].size, 0.5)  # loss never reaches the threshold
    rows = {c["key"]: c for c in A.evaluate_claims(plain, label_noise=twin,
                                                   sensitivity=False)}
    (part,) = rows["label_noise"]["parts"]
    assert part["verdict"] == A.REPRODUCED and part["n"] == 24
    assert part["effect"] == pytest.approx(12 * 100 * math.log(0.95) / 100, rel=0.05)
    assert "label_noise_flatter" in rows["label_noise"]["aliases"]
    assert "chosen after seeing data" in rows["label_noise"]["flags"]
