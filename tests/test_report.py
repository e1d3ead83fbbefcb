"""flatbook.report: one call, every measure and bound, stable flat keys."""

from __future__ import annotations

import importlib
import math
import types

import pytest
import torch
from torch import nn

import flatbook
from flatbook import bounds as B
from flatbook import curvature, geometry, models

DT = torch.float64

GLOBAL_KEYS = {
    "n", "d", "k", "n_params", "n_dense", "first_layer_dense", "loss", "max_residual",
    "interpolating", "lambda_max", "lambda_max_residual", "lambda_max_n_hvp",
    "lambda_max_converged", "trace_gn", "log_lvr_mean", "log_lvr_median", "mls_mean",
    "mls_median", "ld_mean", "ld_median", "frob_sq_mean", "r", "pr_output", "nmls", "nvr",
    "log_lvr_finite_frac", "log_frob_sq_mean",
}  # fmt: skip
LAYER_KEYS = {
    "index", "width_in", "r", "mls_mean", "mls_median", "log_lvr_mean", "log_lvr_median",
    "ld_mean", "ld_median", "frob_sq_mean", "h_sqnorm_mean", "weight_norm", "log_lvr_finite_frac",
    "grad_w_sqnorm_mean", "kappa", "pr",
}  # fmt: skip
AGG = ("lhs", "rhs", "slack", "holds")
PER_SAMPLE = ("slack_min", "slack_median", "holds")


def _expected_keys(layers: list[str], t7: bool = False) -> set[str]:
    keys = set(GLOBAL_KEYS)
    keys |= {f"{l}_{k}" for l in layers for k in LAYER_KEYS}
    agg = ["t1_weighted", "t1_min", "t2_min", "t2_gm", "t3_weighted", "t3_min", "t3_gm"]
    agg += ["t4_nmls", "t4_nvr"] + [f"t5_{m}_{l}" for l in layers for m in ("mls", "lvr")]
    agg += ["t7_gd", "t7_sgd"] if t7 else []
    keys |= {f"{b}_{s}" for b in agg for s in AGG}
    per = ["t1_per_sample", "t2_per_sample", "lem3"] + [f"lem2_{l}" for l in layers]
    keys |= {f"{b}_{s}" for b in per for s in PER_SAMPLE}
    return keys


def test_mlp_report_values_and_stable_keys() -> None:
    net = models.mlp([4, 6, 3], activation="tanh", seed=0, dtype=DT)
    X = torch.randn(12, 4, dtype=DT)
    rep = flatbook.report(net, X, lr=0.05, batch_size=4)  # Y = f(X): interpolation
    d = rep.as_dict()
    assert set(d) == _expected_keys(["l1", "l2"], t7=True)
    assert all(isinstance(v, float) for v in d.values())
    assert d["loss"] == 0.0 and d["interpolating"] == 1.0 and d["first_layer_dense"] == 1.0
    # curvature against the dense float64 Hessian
    H = curvature.dense_hessian(net, "squared", X, net(X).detach())
    lam = torch.linalg.eigvalsh(H)[-1].item()
    assert abs(d["lambda_max"] - lam) <= 1e-5 * lam
    assert abs(d["trace_gn"] - torch.trace(H).item()) <= 1e-10 * d["trace_gn"]
    # measures and bounds are those of flatbook.geometry / flatbook.bounds
    J = geometry.input_jacobian(net, X)
    assert abs(d["mls_mean"] - geometry.mls(J).mean().item()) < 1e-12
    assert abs(d["ld_median"] - geometry.local_dim(J).median().item()) < 1e-12
    q = B.quantities(net, X)
    t3 = B.t3_weighted(q)
    assert (d["t3_weighted_lhs"], d["t3_weighted_rhs"]) == (t3.lhs, t3.rhs)
    assert d["t7_gd_slack"] == pytest.approx((2 / 0.05) / lam, rel=1e-5)
    assert d["l2_kappa"] == pytest.approx(float(B.kappa(q, "l2")), rel=1e-12)
    assert d["nmls"] == d["t4_nmls_lhs"]
    assert all(v == 1.0 for k, v in d.items() if k.endswith("_holds"))
    # same model, other data: same keys (the training engine records them per measurement)
    d2 = flatbook.report(net, 2 * X, sharpness=False).as_dict()
    assert set(d2) == _expected_keys(["l1", "l2"]) and math.isnan(d2["lambda_max"])
    text = str(rep)
    for word in ("λ_max", "tr H", "l2", "t3_weighted", "t7_sgd", "slack"):
        assert word in text


def test_optional_quantities_and_named_representations() -> None:
    net = models.mlp([3, 5, 2], activation="tanh", seed=1, dtype=DT)
    X = torch.randn(10, 3, dtype=DT)
    d = flatbook.report(
        net, X, sharpness=False, hessian_trace=True, n_hvp=40, adaptive=True,
        representations=["1"],
    ).as_dict()  # fmt: skip
    # at interpolation tr H = GN trace: the (seeded) Hutch++ estimate lies within 3 s.e.
    assert (
        abs(d["trace_hessian"] - d["trace_gn"])
        <= 1e-6 * d["trace_gn"] + 3 * d["trace_hessian_stderr"]
    )
    assert d["adaptive_sharpness"] == pytest.approx(
        float(B.adaptive_sharpness(net, X, method="hessian")), rel=1e-10
    )
    m = geometry.representation_measures(net, X, "1")
    assert d["rep_1_ld_mean"] == pytest.approx(float(m.ld.mean()), rel=1e-12)
    assert {"rep_1_log_lvr_mean", "rep_1_mls_mean", "rep_1_pr"} <= set(d)
    assert d["rep_1_log_lvr_finite_frac"] == 1.0 and d["log_lvr_finite_frac"] == 1.0


def test_cnn_report_away_from_interpolation() -> None:
    g = torch.Generator().manual_seed(0)
    cnn = models.lenet5((1, 8, 8), 3, activation="tanh", seed=0, dtype=DT)
    X = torch.randn(6, 1, 8, 8, generator=g, dtype=DT)
    Y = nn.functional.one_hot(torch.arange(6) % 3, 3).to(DT)
    rep = flatbook.report(cnn, X, Y, sharpness=False)
    d = rep.as_dict()
    assert set(d) == _expected_keys(["l1", "l2", "l3"])
    assert d["first_layer_dense"] == 0.0 and d["interpolating"] == 0.0
    assert math.isnan(d["t1_weighted_lhs"]) and math.isnan(d["t2_per_sample_holds"])
    assert d["l1_index"] == 7.0 and d["l1_width_in"] == float(cnn[7].in_features)
    assert d["t4_nmls_holds"] == 1.0 and d["lem3_holds"] == 1.0  # valid at any θ
    assert any("interpolation" in n for n in rep.notes)
    assert any("T1–T3 not applicable" in n for n in rep.notes)
    assert "t1_weighted" not in str(rep)


def test_vit_report_with_cross_entropy() -> None:
    g = torch.Generator().manual_seed(1)
    vit = models.vit((1, 8, 8), 3, patch=4, dim=8, depth=1, heads=2, seed=0, dtype=DT)
    X = torch.randn(5, 1, 8, 8, generator=g, dtype=DT)
    labels = torch.tensor([0, 1, 2, 0, 1])
    rep = flatbook.report(vit, X, labels, loss="cross_entropy", sharpness=False)
    d = rep.as_dict()
    assert d["n_dense"] == 1.0 and d["l1_index"] == float(len(vit) - 1)
    assert math.isnan(d["max_residual"]) and d["pr_output"] >= 1.0
    with torch.no_grad():
        ce = float(nn.functional.cross_entropy(vit.eval()(X), labels))
    assert d["loss"] == pytest.approx(ce, rel=1e-12)
    assert any("squared loss" in n for n in rep.notes)


def test_report_is_the_function_and_rejects_unsupported_models() -> None:
    mod = importlib.import_module("flatbook.report")  # must not replace the function
    assert isinstance(mod, types.ModuleType) and mod.report is flatbook.report
    assert isinstance(flatbook.report, types.FunctionType) and flatbook.Report is mod.Report
    # any nn.Module is measured (issue 13); a non-module is refused, naming the parameter
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        flatbook.report(lambda x: x, torch.randn(4, 3))  # type: ignore[arg-type]


def test_rank_deficient_network_reports_minus_inf_without_crashing() -> None:
    net = models.mlp([3, 4, 2], activation="relu", seed=2, dtype=DT)
    with torch.no_grad():
        net[0].bias.fill_(-100.0)  # every hidden unit dead: J_x = 0
    X = torch.randn(6, 3, dtype=DT)
    rep = flatbook.report(net, X, sharpness=False)
    d = rep.as_dict()
    assert d["log_lvr_finite_frac"] == 0.0 and d["log_lvr_mean"] == -math.inf
    assert d["mls_mean"] == 0.0 and math.isnan(d["ld_mean"])
    assert d["trace_gn"] > 0  # the output bias still moves f
    assert all(v == 1.0 for k, v in d.items() if k.endswith("_holds"))
    assert "-inf" in str(rep)


def test_t7_sgd_uses_the_training_set_size_not_the_evaluation_subset() -> None:
    """p = (n − B)/(B(n − 1)) is a property of the sampling: n is the training-set size."""
    net = models.mlp([4, 8, 3], seed=1, dtype=torch.float64)
    X = torch.randn(16, 4, dtype=torch.float64)  # an evaluation subset of a larger set
    lr, batch, n_train = 0.1, 8, 1000
    d = flatbook.report(net, X, lr=lr, batch_size=batch, n_train=n_train, sharpness=False)
    d = d.as_dict()
    p = (n_train - batch) / (batch * (n_train - 1))
    assert d["t7_sgd_rhs"] == pytest.approx(2 * 3 / (p * lr), rel=1e-12)
    d16 = flatbook.report(net, X, lr=lr, batch_size=batch, sharpness=False).as_dict()
    p16 = (16 - batch) / (batch * 15)
    assert d16["t7_sgd_rhs"] == pytest.approx(2 * 3 / (p16 * lr), rel=1e-12)
    assert d16["t7_sgd_rhs"] != pytest.approx(d["t7_sgd_rhs"])


def test_report_does_not_import_sympy() -> None:
    # torch.autograd.grad with grad_outputs imports sympy on its first call in a process
    # (~0.7 s, more than a whole report of a small model); the measurement path avoids it
    import subprocess
    import sys

    code = (
        "import sys, torch, flatbook\n"
        "from flatbook import models, curvature\n"
        "net = models.mlp([6, 16, 3], seed=0)\n"
        "X = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))\n"
        "Y = torch.nn.functional.one_hot(torch.arange(40) % 3, 3).float()\n"
        "r = flatbook.report(net, X, Y, tol=1e-4)\n"
        "t = curvature.trace(net, 'squared', X, Y, method='gn').value\n"
        "with torch.no_grad():  # the scalar form of a VJP must still see a graph\n"
        "    r0 = flatbook.report(net, X, Y, tol=1e-4)\n"
        "    t0 = curvature.trace(net, 'squared', X, Y, method='gn').value\n"
        "assert r.scalars['lambda_max'] > 0 and t > 0\n"
        "assert r0.scalars['lambda_max'] == r.scalars['lambda_max'] and t0 == t\n"
        "assert r0.scalars['n_dense'] == r.scalars['n_dense'] == 2\n"
        "print('sympy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr


def test_option_records_equal_keyword_form() -> None:
    """report(options=ReportOptions(...)) is the keyword form; unknown keywords are named."""
    from flatbook.pipeline import CurvatureOptions, ReportOptions, StabilityInputs

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    X, Y = torch.randn(10, 4, dtype=torch.float64), torch.randn(10, 2, dtype=torch.float64)
    a = flatbook.report(net, X, Y, tol=1e-4, lr=0.05, batch_size=5).as_dict()
    b = flatbook.report(net, X, Y, options=ReportOptions(
        curvature=CurvatureOptions(tol=1e-4), stability=StabilityInputs(lr=0.05, batch_size=5),
    )).as_dict()
    assert list(a) == list(b)
    assert all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in a)
    assert a["t7_sgd_lhs"] == a["t7_sgd_lhs"]  # the stability inputs reached the bounds
    with pytest.raises(TypeError, match="'tolerance'"):
        flatbook.report(net, X, Y, tolerance=1e-4)
    with pytest.raises(TypeError, match="not both"):
        flatbook.report(net, X, Y, options=ReportOptions(), tol=1e-4)
