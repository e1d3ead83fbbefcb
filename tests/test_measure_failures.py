"""Every failure of a measurement named: a right result, or an error / note saying the cause."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

import flatbook
from flatbook import curvature
from flatbook.checks import BadDataError, SampleMixingError

DT = torch.float64


def _mlp(*widths: int) -> nn.Sequential:
    torch.manual_seed(0)
    mods: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=False):
        mods += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*mods[:-1]).to(DT)


X = torch.randn(8, 3, generator=torch.Generator().manual_seed(1), dtype=DT)


class _Tokens(nn.Module):
    """Token ids → summed embeddings: no per-sample dense layer, integer inputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.e = nn.Embedding(10, 4).to(DT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.e(x).sum(1)


def test_integer_inputs_without_a_dense_layer_give_the_exact_gn_trace() -> None:
    model = _Tokens()
    ids = torch.randint(0, 10, (6, 5), generator=torch.Generator().manual_seed(2))
    rep = flatbook.report(model, ids, sharpness=False)
    W = model.e.weight.detach()
    J = vmap(jacrev(lambda w, x: functional_call(model, {"e.weight": w}, (x[None],))[0]),
             in_dims=(None, 0))(W, ids)
    assert rep.as_dict()["trace_gn"] == pytest.approx(float(J.pow(2).sum() / 6), rel=1e-12)
    assert any("integer inputs" in n for n in rep.notes)


class _Centred(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(3, 2).to(DT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l(x - x.mean(0))


class _GradMix(nn.Module):
    """Same output as l(x), but ∂f(x_0)/∂x_j ≠ 0: mixing seen only in the Jacobian."""

    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(3, 2).to(DT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(0)
        return self.l(x + m - m.detach())


@pytest.mark.parametrize("model", [
    _Centred(),
    nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False),
                  nn.Linear(4, 2)).to(DT),
    _GradMix(),
], ids=["mean-centred", "batch-stat-batchnorm", "jacobian-only"])
def test_sample_mixing_models_are_refused_with_the_reason(model: nn.Module) -> None:
    with pytest.raises(SampleMixingError, match="depends on the .*other samples"):
        flatbook.report(model, X, sharpness=False)


def test_running_stat_batchnorm_in_train_mode_is_measured_with_a_note() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).to(DT).train()
    rep = flatbook.report(model, X, sharpness=False)
    assert any("training mode" in n and "'1'" in n and "BatchNorm" in n for n in rep.notes)
    assert model.training and model[1].training  # flags restored


def test_train_mode_dropout_is_noted_and_measured_in_eval_mode() -> None:
    model = nn.Sequential(nn.Linear(3, 5), nn.Dropout(0.5), nn.Linear(5, 2)).to(DT).train()
    rep = flatbook.report(model, X, sharpness=False)
    assert any("training mode" in n and "dropout off" in n for n in rep.notes)
    plain = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2)).to(DT)
    plain.load_state_dict({k.replace("2.", "1."): v for k, v in model.state_dict().items()})
    assert rep.as_dict()["trace_gn"] == pytest.approx(
        flatbook.report(plain, X, sharpness=False).as_dict()["trace_gn"], rel=1e-12)
    assert not any("training mode" in n for n in flatbook.report(plain.eval(), X,
                                                                sharpness=False).notes)


def test_attention_kernel_switch_is_noted() -> None:
    class Att(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.MultiheadAttention(4, 1, batch_first=True).to(DT)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = x.reshape(x.shape[0], 2, 4)
            return self.a(t, t, t)[0].sum(1)

    rep = flatbook.report(Att().eval(), torch.randn(4, 8, dtype=DT), sharpness=False)
    assert any("math scaled-dot-product kernel" in n for n in rep.notes)


@pytest.mark.parametrize("where", ["X", "Y", "weights", "output"])
def test_non_finite_data_is_named_bad_data(where: str) -> None:
    model = _mlp(3, 4, 2)
    Xb, Y = X.clone(), torch.zeros(8, 2, dtype=DT)
    if where == "X":
        Xb[2, 1] = float("nan")
    elif where == "Y":
        Y[5, 0] = float("inf")
    elif where == "weights":
        with torch.no_grad():
            model[0].weight[0, 0] = float("nan")
    else:
        model = nn.Sequential(model, nn.Softplus(), _Log())  # finite data, NaN outputs
    name = {"X": "X has", "Y": "Y has", "weights": "weights are not finite",
            "output": "output f\\(X\\) has"}[where]
    with pytest.raises(BadDataError, match=f"^bad data: .*{name}"):
        flatbook.report(model, Xb, Y if where != "output" else None, sharpness=False)


class _Log(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(-x)  # NaN for positive entries


def test_huge_inputs_are_named_in_float32_and_exact_in_float64() -> None:
    m32 = _mlp(3, 5, 2).float()
    with pytest.raises(BadDataError, match="magnitude .*overflow torch.float32"):
        flatbook.report(m32, X.float() * 1e30, sharpness=False)
    with pytest.raises(BadDataError, match="magnitude .*overflow torch.float32"):
        flatbook.report(m32, X * 1e30, sharpness=False)  # float64 data, cast to float32
    rep = flatbook.report(_mlp(3, 5, 2), X * 1e30, sharpness=False)  # tanh saturates: J_x = 0
    assert rep.as_dict()["mls_mean"] == 0.0
    assert any("input Jacobian J_x is exactly 0 for 8 of 8" in n for n in rep.notes)


@pytest.mark.parametrize("tol", [1.0, 10.0, 0.0, -1e-3, float("nan"), True, "1e-3"])
def test_tol_must_be_in_the_open_unit_interval(tol: float) -> None:
    model = _mlp(3, 4, 2)
    with pytest.raises(ValueError, match=r"tol must be a relative tolerance in \(0, 1\)"):
        curvature.sharpness(model, "squared", X, model(X).detach(), tol=tol)
    with pytest.raises(ValueError, match=r"tol must be .* in \(0, 1\)"):
        flatbook.report(model, X, tol=tol)


def test_sharpness_carries_its_certified_error_bound() -> None:
    model = _mlp(3, 4, 2)
    Y = torch.zeros(8, 2, dtype=DT)
    ev = torch.linalg.eigvalsh(curvature.dense_hessian(model, "squared", X, Y))
    r = curvature.sharpness(model, "squared", X, Y, tol=0.5)
    assert r.error_bound == float(r.residuals[0]) <= 0.5 * abs(r.lambda_max)
    assert float((ev - r.lambda_max).abs().min()) <= r.error_bound  # an eigenvalue within r
    assert r.lambda_max <= float(ev[-1]) + 1e-12  # a Ritz value never exceeds λ_max
    rep = flatbook.report(model, X, Y, tol=0.5)
    assert f"± {r.error_bound:.2g} (residual bound" in str(rep)


def test_numpy_inputs_are_told_to_use_from_numpy() -> None:
    model = _mlp(3, 4, 2)
    with pytest.raises(TypeError, match=r"torch.from_numpy\(X\)"):
        curvature.sharpness(model, "squared", X.numpy(), X[:, :2])
    with pytest.raises(TypeError, match=r"X is a numpy array: pass torch.from_numpy\(X\)"):
        flatbook.report(model, X.numpy(), X[:, :2].numpy())
    with pytest.raises(TypeError, match=r"Y is a numpy array: pass torch.from_numpy\(Y\)"):
        flatbook.report(model, X, X[:, :2].numpy())
    with pytest.raises(TypeError, match=r"torch.from_numpy"):
        flatbook.report(model, [(X.numpy(), X[:, :2].numpy())])


def test_dict_batches_are_pointed_to_forward_and_the_advice_works() -> None:
    model = _Tokens()
    ids = torch.randint(0, 10, (6, 5), generator=torch.Generator().manual_seed(2))
    loader = [{"input_ids": ids[:3], "labels": ids[:3, 0] % 4},
              {"input_ids": ids[3:], "labels": ids[3:, 0] % 4}]
    with pytest.raises(TypeError, match=r"keys \['input_ids', 'labels'\].*forward="):
        flatbook.report(model, loader, loss="cross_entropy")
    batches = [({k: v for k, v in b.items() if k != "labels"}, b["labels"]) for b in loader]
    rep = flatbook.report(model, batches, loss="cross_entropy", sharpness=False,
                          forward=lambda m, x: m(x["input_ids"]))
    direct = flatbook.report(model, ids, torch.cat([b["labels"] for b in loader]),
                             loss="cross_entropy", sharpness=False)
    assert rep.as_dict()["trace_ggn"] == pytest.approx(direct.as_dict()["trace_ggn"], rel=1e-12)


def test_layer_keys_are_stable_under_freezing() -> None:
    model = _mlp(3, 5, 4, 2)
    before = flatbook.report(model, X, sharpness=False).layers
    model[0].weight.requires_grad_(False)
    model[0].bias.requires_grad_(False)
    after = flatbook.report(model, X, sharpness=False)
    assert list(before) == ["l1", "l2", "l3"] and list(after.layers) == ["l2", "l3"]
    for key in ("mls_mean", "h_sqnorm_mean", "weight_norm"):
        assert after.layers["l2"][key] == pytest.approx(before["l2"][key], rel=1e-12)
    assert any("'0'" in n and "frozen" in n for n in after.notes)
