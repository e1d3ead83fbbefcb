"""Option records and their keyword form (flatbook.keyword_form): the record, the keywords and the
old positional options give the same result; an unknown keyword is a TypeError naming it."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from flatbook import curvature, models  # noqa: E402
from flatbook import plots_experiments as PE  # noqa: E402
from flatbook.analysis import calibration as K  # noqa: E402
from flatbook.analysis import study as ST  # noqa: E402
from flatbook.keyword_form import resolve, with_positional  # noqa: E402
from flatbook.probe import Probe, ProbeOptions  # noqa: E402

DT = torch.float64


def _tiny() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DT)
    X = torch.randn(10, 3, dtype=DT)
    return net, X, torch.randn(10, 2, dtype=DT)


def test_resolve_builds_overrides_and_names_unknown_keywords() -> None:
    o = resolve(curvature.SharpnessOptions, "sharpness", None, {"tol": 1e-4})
    assert o == curvature.SharpnessOptions(tol=1e-4)
    base = curvature.SharpnessOptions(k=3, seed=2)
    assert resolve(curvature.SharpnessOptions, "f", base, {"seed": 5}) == \
        curvature.SharpnessOptions(k=3, seed=5)                    # keywords over the record
    with pytest.raises(TypeError, match=r"f\(\) got an unexpected keyword 'tolerance'.*'tol'"):
        resolve(curvature.SharpnessOptions, "f", None, {"tolerance": 1e-4})
    with pytest.raises(TypeError, match="options must be a SharpnessOptions"):
        resolve(curvature.SharpnessOptions, "f", curvature.TraceOptions(), {})
    assert with_positional("f", ("k", "tol"), (2,), {"seed": 1}) == {"k": 2, "seed": 1}
    with pytest.raises(TypeError, match="at most 2 positional"):
        with_positional("f", ("k", "tol"), (2, 1e-3, 0), {})
    with pytest.raises(TypeError, match="'k' both positionally and as a keyword"):
        with_positional("f", ("k", "tol"), (2,), {"k": 3})


def test_sharpness_record_keywords_and_positional_forms_agree() -> None:
    net, X, Y = _tiny()
    kw = curvature.sharpness(net, "squared", X, Y, k=2, tol=1e-8, seed=3, ncv=6)
    rec = curvature.sharpness(net, "squared", X, Y,
                              options=curvature.SharpnessOptions(k=2, tol=1e-8, seed=3, ncv=6))
    pos = curvature.sharpness(net, "squared", X, Y, 2, 1e-8, 3, ncv=6)
    for r in (rec, pos):
        assert torch.equal(r.values, kw.values) and r.n_hvp == kw.n_hvp
        assert torch.equal(r.residuals, kw.residuals)
    other = curvature.sharpness(net, "squared", X, Y, k=2, tol=1e-8, seed=4, ncv=6)
    assert not torch.equal(other.vectors, kw.vectors)       # the seed does reach the solver
    with pytest.raises(TypeError, match="unexpected keyword 'maxiter'.*'max_hvp'"):
        curvature.sharpness(net, "squared", X, Y, maxiter=10)


def test_trace_record_keywords_and_positional_forms_agree() -> None:
    net, X, Y = _tiny()
    kw = curvature.trace(net, "squared", X, Y, method="hutchpp", n_hvp=12, seed=1, block=4)
    rec = curvature.trace(net, "squared", X, Y, options=curvature.TraceOptions(
        method="hutchpp", n_hvp=12, seed=1, block=4))
    pos = curvature.trace(net, "squared", X, Y, "hutchpp", 12, 1, block=4)
    assert (rec.value, rec.stderr, rec.n_hvp) == (kw.value, kw.stderr, kw.n_hvp)
    assert (pos.value, pos.stderr, pos.n_hvp) == (kw.value, kw.stderr, kw.n_hvp)
    assert curvature.trace(net, "squared", X, Y, "gn").value == \
        curvature.trace(net, "squared", X, Y, options=curvature.TraceOptions()).value
    with pytest.raises(TypeError, match="unexpected keyword 'probes'"):
        curvature.trace(net, "squared", X, Y, probes=10)


def test_probe_takes_the_report_probe_record() -> None:
    from flatbook import pipeline

    assert pipeline.ProbeOptions is ProbeOptions              # one record for probe and report
    net, X, Y = _tiny()
    with Probe(net, X, Y, options=ProbeOptions(chunk=3, layers=["l1"])) as p:
        a = p.measure()
        assert p.skipped and set(a.layers) == {"l1"}
    with Probe(net, X, Y, chunk=3, layers=["l1"]) as p:
        b = p.measure()
    assert torch.equal(a.J_x, b.J_x) and torch.equal(a.layers["l1"].J, b.layers["l1"].J)
    with pytest.raises(TypeError, match="unexpected keyword 'layer'.*'layers'"):
        Probe(net, X, Y, layer=["l1"])


def test_vit_record_and_keywords_build_the_same_network() -> None:
    kw = dict(patch=4, dim=8, depth=2, heads=2, mlp_ratio=1.5, pool="mean")
    a = models.vit((1, 8, 8), 3, seed=0, dtype=DT, **kw)
    b = models.vit((1, 8, 8), 3, options=models.ViTOptions(**kw), seed=0, dtype=DT)
    assert len(a) == 2 + 2 + 1                                 # embed, 2 blocks, pool, head
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    assert isinstance(models.build("vit", (1, 8, 8), 3, dim=8, heads=2)[-1], nn.Linear)
    with pytest.raises(TypeError, match="unexpected keyword 'width'"):
        models.vit((1, 8, 8), 3, width=8)
    with pytest.raises(ValueError, match="heads"):
        models.vit((1, 8, 8), 3, dim=6, heads=4)


def test_simulation_record_and_keywords_agree() -> None:
    a = K.simulated_study(n_runs=3, n_measure=8, effect=0.5, seed=2)
    b = K.simulated_study(options=K.Simulation(n_runs=3, n_measure=8, effect=0.5, seed=2))
    assert len(a.summaries) == 3
    for ta, tb in zip(a.trajectories, b.trajectories, strict=True):
        assert all(np.array_equal(ta[k], tb[k]) for k in ta)
    arr = K.simulate_arrays(2, n_runs=3, n_measure=8, seed=2)
    assert arr["trace_gn"].shape == (2, 3, 8)
    with pytest.raises(TypeError, match="unexpected keyword 'runs'.*'n_runs'"):
        K.simulated_study(runs=3)


def test_load_study_routes_its_options_and_the_run_overrides(monkeypatch: Any) -> None:
    seen: dict[str, Any] = {}

    def fake_obtain(configs: list, setting: object, results_dir: object, **kw: Any) -> list:
        seen.update(configs=configs, results_dir=results_dir, **kw)
        return []

    monkeypatch.setattr(ST, "obtain", fake_obtain)
    st = ST.load_study("digits-mlp", lrs=[0.1], batch_sizes=[8], seeds=[0], steps=4,
                       results_dir="somewhere", workers=2, engine="solo",
                       options=ST.StudyOptions(compute_missing=False, loss_threshold=0.5))
    assert st.loss_threshold == 0.5 and st.n_runs == 0
    assert seen["results_dir"] == "somewhere" and seen["workers"] == 2
    assert seen["engine"] == "solo" and seen["compute_missing"] is False
    assert [c.steps for c in seen["configs"]] == [4]            # a RunConfig override
    with pytest.raises(ValueError, match="unknown run parameter"):
        ST.load_study("digits-mlp", results_dirs="x")


def test_plot_records_and_keywords_agree() -> None:
    x = np.array([0.1, 0.1, 0.2, 0.2])
    fig, (a, b) = plt.subplots(1, 2)
    PE.sweep_lines(a, x, x * 2, np.array([1, 2, 1, 2]), group_label="B", logy=True)
    PE.sweep_lines(b, x, x * 2, np.array([1, 2, 1, 2]),
                   options=PE.SweepStyle(group_label="B", logy=True))
    assert a.get_yscale() == b.get_yscale() == "log"
    assert [ln.get_label() for ln in a.get_lines()] == [ln.get_label() for ln in b.get_lines()]
    with pytest.raises(TypeError, match="unexpected keyword 'label'"):
        PE.sweep_lines(a, x, x, x, label="no")
    plt.close(fig)
    with pytest.raises(TypeError, match="gd_ceiling"):
        PE.late_phase_figure({"step": x}, None, sgd_ceiling=1.0, loss_threshold=0.1)
    with pytest.raises(TypeError, match="unexpected keyword 'col'"):
        PE.sweep_figure([], ["a"], ["a"], col=2)


def test_the_modules_with_option_records_keep_the_house_rules() -> None:
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("house_rules",
                                                  root / "scripts" / "house_rules.py")
    assert spec is not None and spec.loader is not None
    hr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hr)
    names = ["curvature.py", "curvature_options.py", "keyword_form.py", "probe.py",
             "probe_options.py", "models.py", "rescale.py", "plots_experiments.py",
             "analysis/calibration.py", "analysis/claims.py", "analysis/nulls.py",
             "analysis/stats.py", "analysis/unit_level.py", "analysis/study.py"]
    out = [o for n in names for o in hr.offences(root / "flatbook" / n, 60, 8, 600)]
    assert out == []
