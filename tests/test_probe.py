"""Issue 13: any nn.Module, any data container — flatbook.report without rewriting the model.

Every per-layer number of the report is checked against an independent autograd reference
(per sample, per output component: ∂f_c/∂z_l and ∂f_c/∂W_l from the module's actual output
z_l, never through the probe's δ hooks or the ghost norms), in float64 at 1e-8.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import flatbook
from flatbook import bounds as B
from flatbook import curvature, losses
from flatbook.probe import Probe, resolve_data

DT = torch.float64


# ----------------------------------------------------------------------------- models


class ResCNN(nn.Module):
    """conv → BatchNorm → pool → flatten → tanh, then h + tanh(fc(h)) (skip around fc), head."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.flat = nn.Flatten()
        self.act = nn.Tanh()
        self.fc = nn.Linear(16, 16)
        self.head = nn.Linear(16, k)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.flat(self.pool(self.bn(self.conv(x)))))
        h = h + torch.tanh(self.fc(h))
        return self.head(h)


class TBlock(nn.Module):
    """Pre-LN transformer block (MultiheadAttention, need_weights=False), mean pool, MLP head."""

    def __init__(self, D: int = 8, k: int = 3) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(D)
        self.attn = nn.MultiheadAttention(D, 2, batch_first=True)
        self.ln2 = nn.LayerNorm(D)
        self.mlp = nn.Sequential(nn.Linear(D, 16), nn.GELU(), nn.Linear(16, D))
        self.pool_ln = nn.LayerNorm(D)
        self.fc = nn.Linear(D, D)
        self.head = nn.Linear(D, k)

    def forward(self, x: Tensor) -> Tensor:
        y = self.ln1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        x = x + self.mlp(self.ln2(x))
        h = self.pool_ln(x).mean(1)
        return self.head(torch.tanh(self.fc(h)))


class TwoOut(nn.Module):
    """Returns (logits, features)."""

    def __init__(self, d: int = 5, k: int = 3) -> None:
        super().__init__()
        self.enc = nn.Linear(d, 7)
        self.cls = nn.Linear(7, k)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = torch.tanh(self.enc(x))
        return self.cls(z), z


def _res_cnn(seed: int = 0) -> ResCNN:
    torch.manual_seed(seed)
    m = ResCNN().to(DT)
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.weight.uniform_(0.5, 1.5)
        m.bn.bias.uniform_(-0.3, 0.3)
    return m


def _tblock(seed: int = 0) -> TBlock:
    torch.manual_seed(seed)
    m = TBlock().to(DT)
    with torch.no_grad():
        for ln in (m.ln1, m.ln2, m.pool_ln):
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.uniform_(-0.3, 0.3)
    return m


CASES = {
    "rescnn": (lambda: _res_cnn(), lambda g: torch.randn(6, 1, 6, 6, generator=g, dtype=DT),
               None, ["fc", "head"]),
    "tblock": (lambda: _tblock(), lambda g: torch.randn(5, 4, 8, generator=g, dtype=DT),
               None, ["fc", "head"]),
    "two_out": (lambda: (torch.manual_seed(0), TwoOut().to(DT))[1],
                lambda g: torch.randn(6, 5, generator=g, dtype=DT), 0, ["enc", "cls"]),
}


def _select(out: object, output: int | None) -> Tensor:
    return out[output] if output is not None else out  # type: ignore[index,return-value]


def _reference(model: nn.Module, X: Tensor, names: list[str], output: int | None
               ) -> dict[str, dict[str, Tensor]]:
    """Per sample: h_{l−1}, ‖∇_{W_l} f‖_F², MLS of G_l W_l (G_l = ∂f/∂z_l), by plain autograd."""
    model.eval()
    mods = {n: model.get_submodule(n) for n in names}
    ref: dict[str, dict[str, list[Tensor]]] = {n: {"h": [], "gw": [], "mls": []} for n in names}
    for i in range(X.shape[0]):
        cap: dict[str, tuple[Tensor, Tensor]] = {}
        hs = [m.register_forward_hook(
            lambda mod, inp, out, n=n, cap=cap: cap.__setitem__(n, (inp[0], out)))
            for n, m in mods.items()]
        try:
            f = _select(model(X[i : i + 1]), output).reshape(-1)
        finally:
            for h in hs:
                h.remove()
        for n, m in mods.items():
            h_in, z = cap[n]
            G, gw = [], 0.0
            for c in range(f.numel()):
                gz, gW = torch.autograd.grad(f[c], [z, m.weight], retain_graph=True)
                G.append(gz.reshape(-1))
                gw = gw + gW.pow(2).sum()
            J = torch.stack(G) @ m.weight.detach()  # ∂f/∂(layer input) along the layer, [k, p]
            ref[n]["h"].append(h_in.detach().pow(2).sum())
            ref[n]["gw"].append(gw.detach())
            ref[n]["mls"].append(torch.linalg.matrix_norm(J, ord=2))
    return {n: {k: torch.stack(v) for k, v in d.items()} for n, d in ref.items()}


# ----------------------------------------------------------------------------- acceptance


@pytest.mark.parametrize("case", list(CASES))
def test_report_on_non_sequential_models_matches_autograd_references(case: str) -> None:
    make, data, output, names = CASES[case]
    model = make()
    X = data(torch.Generator().manual_seed(1))
    rep = flatbook.report(model, X, output=output, sharpness=False)
    assert set(names) <= set(rep.layers), (names, list(rep.layers))
    ref = _reference(model, X, names, output)
    for n in names:
        v, r = rep.layers[n], ref[n]
        assert v["h_sqnorm_mean"] == pytest.approx(float(r["h"].mean()), rel=1e-8, abs=0)
        assert v["grad_w_sqnorm_mean"] == pytest.approx(float(r["gw"].mean()), rel=1e-8, abs=0)
        assert v["mls_mean"] == pytest.approx(float(r["mls"].mean()), rel=1e-8, abs=0)
        W = model.get_submodule(n).weight.detach()
        assert v["weight_norm"] == pytest.approx(float(torch.linalg.matrix_norm(W, ord=2)),
                                                 rel=1e-12)
    assert rep.bounds["t4_nmls"].holds(1e-9) and rep.bounds["t4_nvr"].holds(1e-9)
    for n in names:
        assert rep.bounds[f"t5_mls_{n}"].holds(1e-9) and rep.bounds[f"t5_lvr_{n}"].holds(1e-9)
        assert rep.bounds[f"lem2_{n}"].holds(1e-9)
    assert rep.bounds["lem3"].holds(1e-9)
    d = rep.as_dict()
    assert d["t4_nmls_holds"] == 1.0 and d["n_dense"] == float(len(rep.layers))


def test_attention_out_proj_and_token_wise_linears_are_listed_not_skipped() -> None:
    model = _tblock()
    X = torch.randn(4, 4, 8, dtype=DT)
    with Probe(model, X) as p:
        assert [L.name for L in p.layers()] == ["fc", "head"]
        assert "never called" in p.skipped["attn.out_proj"]
        assert "token-wise" in p.skipped["mlp.0"] and "token-wise" in p.skipped["mlp.2"]
    rep = flatbook.report(model, X, sharpness=False)
    assert any("attn.out_proj" in n for n in rep.notes)


def test_dataloader_gives_the_report_of_the_concatenated_tensors() -> None:
    model = _res_cnn()
    g = torch.Generator().manual_seed(3)
    X = torch.randn(10, 1, 6, 6, generator=g, dtype=DT)
    Y = torch.randn(10, 3, generator=g, dtype=DT)
    a = flatbook.report(model, X, Y, seed=0).as_dict()
    loader = DataLoader(TensorDataset(X, Y), batch_size=3, shuffle=False)
    b = flatbook.report(model, loader, seed=0).as_dict()
    c = flatbook.report(model, TensorDataset(X, Y), seed=0).as_dict()
    batches = [(X[:4], Y[:4]), (X[4:], Y[4:])]  # a plain list of (x, y) batches
    assert flatbook.report(model, batches, seed=0).as_dict()["lambda_max"] == a["lambda_max"]
    assert set(a) == set(b) == set(c)
    for key, va in a.items():
        for other in (b, c):
            vb = other[key]
            if math.isnan(va):
                assert math.isnan(vb), key
            else:
                assert vb == pytest.approx(va, rel=1e-6, abs=1e-12), key


def test_shuffling_or_augmenting_data_is_refused() -> None:
    X, Y = torch.randn(8, 5, dtype=DT), torch.randn(8, 3, dtype=DT)
    with pytest.raises(ValueError, match="shuffle"):
        resolve_data(DataLoader(TensorDataset(X, Y), batch_size=4, shuffle=True))

    class Noisy:
        def __iter__(self):  # noqa: ANN204 - an iterable of batches with random augmentation
            yield X + 0.01 * torch.randn_like(X), Y

    with pytest.raises(ValueError, match="two passes"):
        resolve_data(Noisy())
    with pytest.raises(ValueError, match="Y must be None"):
        resolve_data(DataLoader(TensorDataset(X, Y)), Y)
    with pytest.raises(TypeError, match="forward="):  # dict inputs need a call convention
        flatbook.report(nn.Linear(5, 3).to(DT), [({"a": X}, Y)])


def test_sequential_wrap_finds_the_nested_layers_and_empty_bounds_never_hold() -> None:
    model = _res_cnn()
    X = torch.randn(5, 1, 6, 6, dtype=DT)
    direct = flatbook.report(model, X, sharpness=False)
    wrapped = flatbook.report(nn.Sequential(model), X, sharpness=False)
    assert list(wrapped.layers) == ["0.fc", "0.head"]
    seq = flatbook.report(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DT),
                          torch.randn(5, 3, dtype=DT), sharpness=False)
    assert list(seq.layers) == ["l1", "l2"] and seq.layer("2") is seq.layers["l2"]
    for a, b in (("fc", "0.fc"), ("head", "0.head")):
        assert wrapped.layers[b]["mls_mean"] == pytest.approx(direct.layers[a]["mls_mean"],
                                                              rel=1e-12)
    # no dense layer at all: lem3 / t4 are empty sums — not applicable, never "holds"
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten()).to(DT)
    Xc = torch.randn(4, 1, 4, 4, dtype=DT)
    for net in (conv, nn.Sequential(conv)):
        rep = flatbook.report(net, Xc, sharpness=False)
        d = rep.as_dict()
        assert d["n_dense"] == 0.0
        for name in ("lem3", "t4_nmls", "t4_nvr"):
            assert not rep.bounds[name].applicable and not rep.bounds[name].holds()
            assert math.isnan(d[f"{name}_holds"])
        text = str(rep)
        rows = [ln for ln in text.splitlines() if ln.strip().startswith(("lem3", "t4_"))]
        assert rows and all("n/a" in ln and " yes " not in ln for ln in rows), rows
        assert "inf" not in "".join(rows)


def test_skip_connection_path_and_total_sensitivity_differ() -> None:
    model = _res_cnn()
    X = torch.randn(5, 1, 6, 6, dtype=DT)
    rep = flatbook.report(model, X, sharpness=False)
    v = rep.layers["fc"]
    assert v["skip"] == 1.0 and v["total_mls_mean"] != pytest.approx(v["mls_mean"], rel=1e-3)
    # the total ∂f/∂h (h = act's output) by autograd: J_total = J_path + ∂f/∂h through the skip
    model.eval()
    tot = []
    for i in range(5):
        cap = {}
        hk = model.act.register_forward_hook(lambda m, i_, o, cap=cap: cap.__setitem__("h", o))
        f = model(X[i : i + 1]).reshape(-1)
        hk.remove()
        rows = [torch.autograd.grad(f[c], cap["h"], retain_graph=True)[0].reshape(-1)
                for c in range(f.numel())]
        tot.append(torch.linalg.matrix_norm(torch.stack(rows), ord=2))
    assert v["total_mls_mean"] == pytest.approx(float(torch.stack(tot).mean()), rel=1e-8)
    # without a skip the two coincide
    two = flatbook.report(TwoOut().to(DT), torch.randn(4, 5, dtype=DT), output=0,
                          sharpness=False)
    assert two.layers["enc"]["skip"] == 0.0  # x reaches f only through enc
    assert two.layers["enc"]["total_mls_mean"] == pytest.approx(
        two.layers["enc"]["mls_mean"], rel=1e-10)
    assert two.scalars["first_layer_dense"] == 1.0 and two.bounds["t1_weighted"].holds(1e-9)
    assert math.isnan(two.layers["cls"]["skip"])  # input from a functional op: not measured


# ----------------------------------------------------------------------------- inputs, outputs


def test_output_selectors_regression_targets_and_dtype_policy() -> None:
    torch.manual_seed(0)
    model = TwoOut().to(DT)
    X = torch.randn(6, 5, dtype=DT)
    with pytest.raises(TypeError, match="output="):
        flatbook.report(model, X, sharpness=False)
    a = flatbook.report(model, X, output=0, sharpness=False).as_dict()
    b = flatbook.report(model, X, output=lambda out: out[0], sharpness=False).as_dict()
    assert a["mls_mean"] == b["mls_mean"]

    class Dict(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x: Tensor) -> dict[str, Tensor]:
            o, z = self.net(x)
            return {"logits": o, "features": z}

    c = flatbook.report(Dict(), X, output="logits", sharpness=False).as_dict()
    assert c["mls_mean"] == pytest.approx(a["mls_mean"], rel=1e-12)
    # 1-D regression: output [n], targets [n]
    reg = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 1), nn.Flatten(0)).to(DT)
    y = torch.randn(6, dtype=DT)
    d = flatbook.report(reg, X, y).as_dict()
    with torch.no_grad():
        ref = 0.5 * (reg(X) - y).pow(2).mean()
    assert d["k"] == 1.0 and d["loss"] == pytest.approx(float(ref), rel=1e-12)
    # float64 inputs on a float32 model: cast, with a note; half precision refused
    m32 = nn.Sequential(nn.Linear(5, 3)).float()
    rep = flatbook.report(m32, X, sharpness=False)
    assert any("cast" in n for n in rep.notes)
    with pytest.raises(TypeError, match="float32 or float64"):
        flatbook.report(nn.Sequential(nn.Linear(5, 3)).half(), X)
    with pytest.raises(TypeError, match="integers"):
        flatbook.report(nn.Sequential(nn.Linear(5, 3)).to(DT), torch.randint(0, 9, (4, 5)))
    with pytest.raises(ValueError, match="one-hot"):
        flatbook.report(nn.Sequential(nn.Linear(5, 3)).to(DT), X, torch.tensor([0, 1, 2] * 2))


def test_integer_inputs_have_no_input_jacobian_but_dense_layers_are_measured() -> None:
    torch.manual_seed(0)

    class Tok(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 6)
            self.fc = nn.Linear(6, 3)

        def forward(self, t: Tensor) -> Tensor:
            return self.fc(self.emb(t).mean(1))

    model = Tok().to(DT)
    T = torch.randint(0, 10, (7, 4))
    rep = flatbook.report(model, T, sharpness=False)
    d = rep.as_dict()
    assert math.isnan(d["mls_mean"]) and d["fc_mls_mean"] > 0
    assert rep.bounds["t4_nmls"].holds(1e-9)
    ref = _reference(model, T, ["fc"], None)
    assert d["fc_mls_mean"] == pytest.approx(float(ref["fc"]["mls"].mean()), rel=1e-8)


# ----------------------------------------------------------------------------- losses


def test_torch_loss_instances_are_recognised_with_their_normalisation() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT)
    X, Y = torch.randn(8, 4, dtype=DT), torch.randn(8, 3, dtype=DT)
    ours = flatbook.report(net, X, Y, "squared", tol=1e-10)
    mse = flatbook.report(net, X, Y, nn.MSELoss(), tol=1e-10)
    assert mse.scalars["lambda_max"] == pytest.approx(ours.scalars["lambda_max"], rel=1e-8)
    assert any("2/k" in n for n in mse.notes)
    # the factor the note states is right: λ_max of nn.MSELoss() is (2/k) λ_max of ours
    H = curvature.dense_hessian(net, lambda f, y: nn.functional.mse_loss(f, y), X, Y)
    lam = float(torch.linalg.eigvalsh(H)[-1])
    assert lam == pytest.approx(2 / 3 * ours.scalars["lambda_max"], rel=1e-8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    ce = flatbook.report(net, X, labels, nn.CrossEntropyLoss(), sharpness=False)
    ce2 = flatbook.report(net, X, labels, "cross_entropy", sharpness=False)
    assert ce.scalars["loss"] == ce2.scalars["loss"]
    for bad in (nn.MSELoss(reduction="none"), nn.CrossEntropyLoss(label_smoothing=0.1),
                nn.L1Loss()):
        with pytest.raises(TypeError, match="loss"):
            losses.resolve(bad)
    with pytest.raises(TypeError, match="nn.MSELoss|MSELoss"):
        curvature.sharpness(net, nn.MSELoss(), X, Y)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- curvature


def test_dense_hessian_off_interpolation_on_layernorm_matches_finite_differences() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 3)).to(DT)
    with torch.no_grad():
        net[1].weight.normal_()
        net[1].bias.normal_()
    X, Y = torch.randn(7, 4, dtype=DT), torch.randn(7, 3, dtype=DT)
    H = curvature.dense_hessian(net, "squared", X, Y)
    params = dict(net.named_parameters())
    theta = torch.cat([p.detach().reshape(-1) for p in params.values()])

    def grad(t: Tensor) -> Tensor:
        t = t.clone().requires_grad_(True)
        ps, i = {}, 0
        for n, p in params.items():
            ps[n] = t[i : i + p.numel()].view_as(p)
            i += p.numel()
        out = torch.func.functional_call(net, ps, (X,))
        return torch.autograd.grad(losses.squared(out, Y), t)[0]

    h = 1e-5
    E = torch.eye(theta.numel(), dtype=DT)
    Hfd = torch.stack([(grad(theta + h * e) - grad(theta - h * e)) / (2 * h) for e in E], 1)
    assert float((H - Hfd).norm() / H.norm()) < 1e-7
    assert float((H - H.T).norm() / H.norm()) < 1e-12


@pytest.mark.parametrize("kind", ["mha", "encoder_layer"])
def test_second_derivatives_through_attention(kind: str) -> None:
    torch.manual_seed(0)
    if kind == "mha":
        net: nn.Module = _tblock()
    else:
        net = nn.Sequential(
            nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True),
            nn.Flatten(), nn.Linear(32, 3)).to(DT)
    X, Y = torch.randn(5, 4, 8, dtype=DT), torch.randn(5, 3, dtype=DT)
    s = curvature.sharpness(net, "squared", X, Y, tol=1e-10)
    H = curvature.dense_hessian(net, "squared", X, Y)
    assert s.lambda_max == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-8)
    rep = flatbook.report(net, X, Y, sharpness=False)
    assert all(rep.bounds[n].holds(1e-9) for n in rep.bounds if rep.bounds[n].applicable)
    q = B.quantities(net, X)
    assert q.layers and q.trace > 0


def test_layers_are_selectable_by_name_type_or_predicate() -> None:
    model = _res_cnn()
    X = torch.randn(4, 1, 6, 6, dtype=DT)
    full = flatbook.report(model, X, sharpness=False)
    only = flatbook.report(model, X, layers=["head"], sharpness=False)
    assert list(only.layers) == ["head"] and "not selected" in " ".join(only.notes)
    assert only.layers["head"]["mls_mean"] == pytest.approx(full.layers["head"]["mls_mean"],
                                                            rel=1e-12)
    # T4 sums over the selected layers only: a smaller left side, the same trace
    assert only.bounds["t4_nmls"].lhs < full.bounds["t4_nmls"].lhs
    assert only.bounds["t4_nmls"].rhs == full.bounds["t4_nmls"].rhs
    assert list(flatbook.report(model, X, layers=lambda n, m: n == "fc",
                                sharpness=False).layers) == ["fc"]
    assert len(flatbook.report(model, X, layers=nn.Linear, sharpness=False).layers) == 2
    with pytest.raises(ValueError, match="unknown dense layer"):
        flatbook.report(model, X, layers=["conv"], sharpness=False)


def test_geometry_and_named_representations_of_any_module() -> None:
    from flatbook import geometry

    model = _res_cnn()
    X = torch.randn(4, 1, 6, 6, dtype=DT)
    rep = flatbook.report(model, X, sharpness=False, representations=["act"])
    lm = geometry.layer_measures(model, X)
    assert list(lm) == ["fc", "head"]
    assert float(lm["fc"].measures.mls.mean()) == pytest.approx(rep.layers["fc"]["mls_mean"],
                                                                 rel=1e-12)
    # x ↦ h = act(…) by autograd, sample by sample
    model.eval()
    ref = []
    for i in range(4):
        def h_of(x: Tensor) -> Tensor:
            cap = {}
            hk = model.act.register_forward_hook(lambda m, i_, o: cap.__setitem__("h", o))
            model(x.reshape(1, 1, 6, 6))
            hk.remove()
            return cap["h"].reshape(-1)
        J = torch.autograd.functional.jacobian(h_of, X[i].reshape(-1))
        ref.append(torch.linalg.matrix_norm(J, ord=2))
    assert rep.representations["act"]["mls_mean"] == pytest.approx(
        float(torch.stack(ref).mean()), rel=1e-8)
    m = geometry.representation_measures(model, X, "act")
    assert float(m.mls.mean()) == pytest.approx(rep.representations["act"]["mls_mean"],
                                                rel=1e-12)
    with pytest.raises(ValueError, match="unknown representation"):
        flatbook.report(model, X, sharpness=False, representations=["nope"])


def test_a_reused_activation_module_is_not_taken_as_the_producer() -> None:
    class Reuse(nn.Module):  # torchvision's BasicBlock calls self.relu twice
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.relu = nn.Linear(4, 6), nn.Linear(6, 2), nn.Tanh()

        def forward(self, x: Tensor) -> Tensor:
            h = self.relu(self.a(self.relu(x)))
            return self.b(h) + h[:, :2]

    torch.manual_seed(0)
    model = Reuse().to(DT)
    X = torch.randn(5, 4, dtype=DT)
    with Probe(model, X) as p:
        assert {L.name: L.producer for L in p.layers()} == {"a": None, "b": None}
    rep = flatbook.report(model, X, sharpness=False)
    ref = _reference(model, X, ["a", "b"], None)
    for n in ("a", "b"):
        assert rep.layers[n]["mls_mean"] == pytest.approx(float(ref[n]["mls"].mean()), rel=1e-8)
        assert math.isnan(rep.layers[n]["skip"])


def test_dict_inputs_through_a_forward_callable() -> None:
    class Masked(nn.Module):  # forward(input_ids, mask), as a tokenizer's output is consumed
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(12, 6)
            self.fc = nn.Linear(6, 6)
            self.head = nn.Linear(6, 3)

        def forward(self, input_ids: Tensor, mask: Tensor) -> Tensor:
            e = self.emb(input_ids) * mask.unsqueeze(-1)
            pooled = e.sum(1) / mask.sum(1, keepdim=True)
            return self.head(torch.tanh(self.fc(pooled)))

    torch.manual_seed(0)
    model = Masked().to(DT)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 12, (8, 5), generator=g)
    mask = (torch.rand(8, 5, generator=g) > 0.3).to(DT)
    mask[:, 0] = 1.0
    Y = torch.randn(8, 3, generator=g, dtype=DT)
    call = lambda m, x: m(**x)  # noqa: E731
    batches = [({"input_ids": ids[:5], "mask": mask[:5]}, Y[:5]),
               ({"input_ids": ids[5:], "mask": mask[5:]}, Y[5:])]
    rep = flatbook.report(model, batches, forward=call)
    rep_t = flatbook.report(model, {"input_ids": ids, "mask": mask}, Y, forward=call)
    assert rep.as_dict()["lambda_max"] == pytest.approx(rep_t.as_dict()["lambda_max"], rel=1e-10)
    assert math.isnan(rep.scalars["mls_mean"])  # integer ids: no input Jacobian
    # references: the same model called directly, per sample, by autograd
    model.eval()
    for n in ("fc", "head"):
        mod = model.get_submodule(n)
        mls, gw = [], []
        for i in range(8):
            cap = {}
            hk = mod.register_forward_hook(lambda m_, a, z, cap=cap: cap.__setitem__("z", z))
            f = model(ids[i : i + 1], mask[i : i + 1]).reshape(-1)
            hk.remove()
            rows, g2 = [], 0.0
            for c in range(3):
                gz, gW = torch.autograd.grad(f[c], [cap["z"], mod.weight], retain_graph=True)
                rows.append(gz.reshape(-1))
                g2 = g2 + gW.pow(2).sum()
            mls.append(torch.linalg.matrix_norm(torch.stack(rows) @ mod.weight.detach(), ord=2))
            gw.append(g2.detach())
        assert rep.layers[n]["mls_mean"] == pytest.approx(float(torch.stack(mls).mean()),
                                                          rel=1e-8)
        assert rep.layers[n]["grad_w_sqnorm_mean"] == pytest.approx(
            float(torch.stack(gw).mean()), rel=1e-8)
    assert rep.bounds["t4_nmls"].holds(1e-9)


def test_vmap_fallback_equals_batched_sweep(monkeypatch) -> None:
    """Where autograd cannot batch the cotangents, one vmap(jacrev) per chunk gives the same
    J_x, J_l and total Jacobians (only G_l is then not available)."""
    from flatbook import probe_sweep

    class Skip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 5), nn.Linear(5, 5), nn.Linear(5, 2)
            self.act = nn.Tanh()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.act(self.a(x))
            return self.c(torch.tanh(self.b(h)) + h)

    torch.manual_seed(0)
    net = Skip().double()
    X = torch.randn(7, 4, dtype=torch.float64)
    with Probe(net, X, chunk=3) as p:
        fast = p.measure()

    def refuse(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("no batching rule")

    monkeypatch.setattr(probe_sweep, "batched_grad", refuse)
    with Probe(net, X, chunk=3) as p:
        slow = p.measure()
    torch.testing.assert_close(slow.J_x, fast.J_x, rtol=1e-12, atol=1e-14)
    assert set(slow.layers) == set(fast.layers)
    for name, r in fast.layers.items():
        s = slow.layers[name]
        torch.testing.assert_close(s.J, r.J, rtol=1e-12, atol=1e-14)
        assert (s.J_total is None) == (r.J_total is None) and s.skip == r.skip
        assert s.G is None and r.G is not None
    assert fast.layers["b"].skip is True  # h reaches c around b
