"""Loss-correct curvature: for cross-entropy, every trace is labelled with its matrix and agrees
with a dense float64 computation (flatbook.gn, flatbook.report)."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

import flatbook
from flatbook import curvature, gn

DT = torch.float64


def _dense_fisher_trace(model: nn.Module, X: torch.Tensor, Y: torch.Tensor) -> float:
    """(1/n) Σ_i tr(J_iᵀ M_i J_i), J_i from vmap(jacrev), M_i = (Σ_c y_ic)(diag p_i − p_i p_iᵀ)."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def f1(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (x.unsqueeze(0),)).squeeze(0)

    J = vmap(jacrev(f1), in_dims=(None, 0))(params, X)
    n, k = X.shape[0], next(iter(J.values())).shape[1]
    Jf = torch.cat([t.reshape(n, k, -1) for t in J.values()], dim=2)  # [n, k, P]
    with torch.no_grad():
        p = torch.softmax(model(X), dim=1)
    M = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    if Y.ndim == 2:
        M = M * Y.sum(1)[:, None, None]
    return float(torch.einsum("nkp,nkl,nlp->", Jf, M, Jf) / n)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(DT).eval()


def _data(n: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g, dtype=DT), torch.randint(0, 3, (n,), generator=g)


def _labelled(text: str, what: str) -> list[tuple[float, float | None]]:
    """(value, ± bar) of every printed line whose label contains ``what``."""
    out = []
    in_note = False
    for line in text.splitlines():
        # a note starts with "Note:" and continues on lines indented by six spaces; a label's
        # formula continues on a line indented by eight
        in_note = (line.startswith("Note:") or line.startswith("        ")
                   or (in_note and line.startswith("      ")))
        if what in line and not in_note:
            m = re.search(r"\s(-?[\d.]+(?:e[+-]?\d+)?)(?:\s*±\s*([\d.]+(?:e[+-]?\d+)?))?"
                          r"(?:\s*\(1 s\.e\.\))?\s*$", line)
            assert m, f"no number at the end of {line!r}"
            out.append((float(m[1]), None if m[2] is None else float(m[2])))
    return out


def test_cross_entropy_report_labels_every_trace_by_its_matrix() -> None:
    model = _mlp()
    X, Y = _data()
    rep = flatbook.report(model, X, Y, loss="cross_entropy", hessian_trace=True, n_hvp=30)
    text = str(rep)
    trH = float(torch.trace(curvature.dense_hessian(model, "cross_entropy", X, Y)))
    # every number labelled tr H agrees with the dense CE Hessian trace within its printed bar
    labelled = _labelled(text, "tr H")
    assert len(labelled) == 1
    for value, bar in labelled:
        assert bar is not None and bar > 0
        assert abs(value - trH) <= bar, (value, bar, trH)
    d = rep.as_dict()
    fisher = _dense_fisher_trace(model, X, Y)
    assert d["trace_ggn"] == pytest.approx(fisher, rel=1e-12)
    assert _labelled(text, "Fisher/GN trace (cross-entropy)")[0][0] == pytest.approx(fisher,
                                                                                       rel=1e-5)
    # the squared-loss GN trace is still there (the bounds use it), labelled as such
    sq = _labelled(text, "GN trace (squared loss)")[0][0]
    assert sq == pytest.approx(d["trace_gn"], rel=1e-5)
    assert abs(d["trace_gn"] - trH) > 0.5 * trH  # the old "tr H" headline was this number
    assert abs(fisher - trH) > 1e-3 * trH  # Fisher ≠ tr H off interpolation


def test_fisher_trace_soft_targets_and_models_outside_the_probe_sweep() -> None:
    # LayerNorm parameters are not dense-layer weights: K_i comes from the Gram pass
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 3)).to(DT)
    X, y = _data(10)
    Y = torch.softmax(torch.randn(10, 3, generator=torch.Generator().manual_seed(3),
                                  dtype=DT), dim=1)
    with flatbook.probe.Probe(model, X, Y, "cross_entropy") as p:
        meas = p.measure()
        assert gn.probe_grams(p, meas) is None
        value = gn.ggn_trace(p, meas)
    assert value == pytest.approx(_dense_fisher_trace(model, X, Y), rel=1e-12)
    G = curvature.gauss_newton_matrix(model, X, "cross_entropy", Y)
    assert value == pytest.approx(float(torch.trace(G)), rel=1e-12)


def test_probe_grams_are_the_per_sample_ntk_blocks() -> None:
    model = _mlp()
    X, Y = _data(7)
    with flatbook.probe.Probe(model, X, Y, "cross_entropy") as p:
        K = gn.probe_grams(p, p.measure())
    assert K is not None
    params = {n: t.detach() for n, t in model.named_parameters()}
    J = vmap(jacrev(lambda q, x: functional_call(model, q, (x[None],))[0]),
             in_dims=(None, 0))(params, X)
    Jf = torch.cat([t.reshape(7, 3, -1) for t in J.values()], dim=2)
    torch.testing.assert_close(K, Jf @ Jf.transpose(1, 2), rtol=1e-12, atol=1e-12)


def test_squared_loss_report_keeps_its_keys_and_label() -> None:
    model = _mlp()
    X, _ = _data(8)
    rep = flatbook.report(model, X, sharpness=False)
    assert "trace_ggn" not in rep.as_dict()
    assert gn.trace_label("trace_gn") in str(rep)
    assert "= tr H at interpolation" in gn.trace_label("trace_gn", "squared")


def test_labels() -> None:
    assert gn.trace_label("trace_ggn", "cross_entropy").startswith(
        "Fisher/GN trace (cross-entropy)")
    assert "tr H" not in gn.trace_label("trace_gn", "cross_entropy")
    assert gn.trace_label("trace_hessian", "cross_entropy") == "tr H (Hutch++)"
    assert gn.show_label("trace_gn") == "GN tr (sq)" and gn.show_label("loss") == "loss"
    with pytest.raises(ValueError, match="unknown trace key"):
        gn.trace_label("trace_x")
    from flatbook import __main__ as cli

    assert dict(cli.SHOW_COLUMNS)["trace_gn"] == gn.show_label("trace_gn")
