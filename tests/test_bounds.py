"""Both sides of every inequality of paper.md §2 (flatbook.bounds), in float64.

At exact interpolation (targets = the network's own outputs) every inequality must hold to
lhs ≤ rhs·(1 + 1e-9) and every identity to 1e-8, on 100 random networks of varied depth,
width, activation and input scale.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flatbook import bounds as B
from flatbook import curvature, geometry, models

DT = torch.float64
ACTS = ["relu", "tanh", "gelu", "softplus", "sigmoid", "linear"]
SCALES = [1e-2, 0.3, 1.0, 3.0, 30.0]


def _random_case(i: int) -> tuple[nn.Sequential, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + i)

    def ri(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    depth = ri(1, 4)
    d, k = ri(1, 6), ri(1, 4)
    widths = [d, *[ri(1, 7) for _ in range(depth - 1)], k]
    act = ACTS[i % len(ACTS)]
    net = models.mlp(widths, activation=act, bias=bool(i % 3), seed=i, dtype=DT)
    if i % 4 == 0:  # rescale weights so that layers are not all near PyTorch's init scale
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(0.3 + 2.5 * float(torch.rand(1, generator=g)))
    n = ri(3, 8)
    scale = SCALES[(i // len(ACTS)) % len(SCALES)]
    if i % 10 == 9:  # image-shaped inputs, flattened by the network (T1–T3 still apply)
        X = scale * torch.randn(n, 1, 2, 3, generator=g, dtype=DT)
        net = nn.Sequential(nn.Flatten(), *models.mlp([6, *widths[1:]], act, seed=i, dtype=DT))
    else:
        X = scale * torch.randn(n, d, generator=g, dtype=DT)
    return net, X


@pytest.mark.parametrize("block", range(4))
def test_every_inequality_and_identity_on_random_networks(block: int) -> None:
    for i in range(25 * block, 25 * block + 25):
        net, X = _random_case(i)
        q = B.quantities(net, X)
        assert q.first == "l1"
        bl = B.all_bounds(q)
        assert len(bl) == 12 + 3 * len(q.layers)
        for name, b in bl.items():
            assert b.holds(1e-9), (i, name, str(b))
        # identities: L1 (H = GN), L2 per layer and sample, T5 (κ by Hessian blocks)
        l1 = B.l1_identity(net, X)
        assert l1.holds(1e-8), i
        H = l1.lhs  # the dense Hessian [P, P]
        # L2: parameter side by per-sample autograd Jacobians, input side from G = ∂f/∂z
        for name, idt in B.l2_identity(net, X, method="jacrev").items():
            assert idt.holds(1e-8), (i, name, idt.rel_err)
        for name in q.layers:
            k_hess = B.relative_flatness(net, X, name, method="hessian", hessian_matrix=H)
            assert abs(k_hess - B.kappa(q, name)) <= 1e-8 * max(float(k_hess), 1e-300), (i, name)
            # T5 bounds against the definition of κ_l, not only its identity
            assert B.t5_mls(q, name, k_hess).holds(1e-9), (i, name)
            assert B.t5_lvr(q, name, k_hess).holds(1e-9), (i, name)
        # T7: at η = η*(B), where the necessary mean-square condition holds with equality,
        # tr H ≤ 2k/(pη)
        n = X.shape[0]
        batch = 1 + i % (n - 1)
        eta = B.mean_square_lr(net, X, batch)
        assert math.isfinite(eta) or q.trace == 0  # a dead ReLU net has H = 0
        if math.isfinite(eta):
            assert B.t7_sgd(q.trace, eta, batch, n, q.k).holds(1e-9), i


def test_trace_matches_dense_hessian_and_l3_is_block_le_whole() -> None:
    net, X = _random_case(7)
    q = B.quantities(net, X)
    H = curvature.dense_hessian(net, "squared", X, net(X).detach())
    assert abs(torch.trace(H) - q.trace) <= 1e-10 * q.trace
    # ‖J_x‖_F² from the singular values against the entries of an autograd input Jacobian
    J = geometry.input_jacobian(net, X)
    torch.testing.assert_close(q.output.frob_sq, J.pow(2).sum((1, 2)), rtol=1e-10, atol=0)
    # L3's two sides against per-sample autograd Jacobians of every parameter (jacrev)
    sq = curvature.jacobian_sqnorms(net, X, method="jacrev")
    b = B.l3_bound(q)
    assert isinstance(b.lhs, torch.Tensor) and b.lhs.shape == (X.shape[0],)
    assert any(n.endswith("bias") for n in sq)  # so that L3 has a gap to check
    torch.testing.assert_close(b.rhs, sum(sq.values()), rtol=1e-10, atol=0)
    torch.testing.assert_close(b.lhs, sum(v for n, v in sq.items() if n.endswith("weight")),
                               rtol=1e-10, atol=0)


def test_kappa_laplacian_form_equals_definition_away_from_interpolation() -> None:
    net = models.mlp([4, 6, 5, 3], activation="tanh", seed=2, dtype=DT)
    X = torch.randn(7, 4, dtype=DT)
    Y = torch.randn(7, 3, dtype=DT)  # not interpolating: the residual term counts
    H = curvature.dense_hessian(net, "squared", X, Y)
    for layer in ("l1", "l2", "l3"):
        k_def = B.relative_flatness(net, X, layer, Y, method="hessian")
        k_blk = B.relative_flatness(net, X, layer, Y, method="hessian", hessian_matrix=H)
        assert abs(k_def - k_blk) < 1e-12 * abs(k_def)
        k_lap = B.relative_flatness(net, X, layer, Y, method="laplacian")
        k_gn = B.relative_flatness(net, X, layer, Y, method="gn")
        assert abs(k_def - k_lap) < 1e-10 * abs(k_def)
        if layer != "l3":  # last layer: f is linear in h, so the residual term vanishes
            assert abs(k_def - k_gn) > 1e-6 * abs(k_def)
    ident = B.t5_identity(net, X, "l2", Y)
    assert not ident.holds(1e-8)  # the T5 identity needs interpolation
    assert B.t5_identity(net, X, "l2").holds(1e-8)


def test_relu_rescaling_leaves_kappa_and_t5_unchanged_but_not_trace() -> None:
    net = models.mlp([5, 8, 6, 3], activation="relu", seed=3, dtype=DT)
    X = torch.randn(10, 5, dtype=DT)

    def summary(m: nn.Sequential) -> dict[str, float]:
        q = B.quantities(m, X)
        out = {"trace": float(q.trace), "adaptive": float(B.adaptive_sharpness(m, X))}
        for name in q.layers:
            out[f"kappa_{name}"] = float(B.relative_flatness(m, X, name, method="hessian"))
            out[f"kappa_gn_{name}"] = float(B.kappa(q, name))
            out[f"t5_mls_{name}"] = B.t5_mls(q, name).lhs  # type: ignore[assignment]
            out[f"t5_lvr_{name}"] = B.t5_lvr(q, name).lhs  # type: ignore[assignment]
        return out

    before = summary(net)
    a = 3.7
    with torch.no_grad():  # W_1 → aW_1, b_1 → a b_1, W_2 → W_2 / a: same function (ReLU)
        net[0].weight.mul_(a)
        net[0].bias.mul_(a)
        net[2].weight.div_(a)
    after = summary(net)
    for key, v in before.items():
        if key == "trace":
            assert abs(after[key] - v) > 0.05 * v  # tr H is not invariant
        else:
            assert abs(after[key] - v) <= 1e-8 * abs(v), key


def test_gd_stability_bound_predicts_divergence_of_gd_on_the_quadratic_model() -> None:
    net = models.mlp([3, 5, 2], activation="tanh", seed=5, dtype=DT)
    X = torch.randn(8, 3, dtype=DT)
    H = curvature.dense_hessian(net, "squared", X, net(X).detach())
    lam = float(torch.linalg.eigvalsh(H)[-1])
    for factor, stable in ((0.98, True), (1.02, False)):
        eta = factor * 2 / lam
        assert B.t7_gd(lam, eta).holds() is stable
        v = torch.ones(H.shape[0], dtype=DT)
        for _ in range(2000):  # GD on ½ δᵀHδ: δ ← (I − ηH) δ
            v = v - eta * (H @ v)
        assert bool(v.norm() < 10.0) is stable


def test_t6_construction_hits_prescribed_trace_and_local_dimension() -> None:
    for trace, ld, d, k, depth in [
        (0.5, 1.0, 5, 3, 1),
        (3.7, 2.5, 6, 4, 2),
        (120.0, 4.0, 4, 6, 3),
        (1e-3, 1.7, 7, 2, 4),
    ]:
        t6 = B.t6_construction(trace, ld, d=d, k=k, depth=depth, n=12, seed=1)
        H = curvature.dense_hessian(t6.model, "squared", t6.X, t6.Y)
        assert abs(torch.trace(H).item() - trace) <= 1e-6 * trace
        q = B.quantities(t6.model, t6.X)
        assert abs(q.trace.item() - trace) <= 1e-6 * trace
        assert (q.output.ld - ld).abs().max() <= 1e-6
        with torch.no_grad():
            assert float((t6.model(t6.X) - t6.Y).abs().max()) == 0.0  # zero loss
    # LD is free while the trace is fixed: same trace, LD 1 and r
    lo = B.t6_construction(2.0, 1.0, d=4, k=4)
    hi = B.t6_construction(2.0, 4.0, d=4, k=4)
    assert abs(B.quantities(lo.model, lo.X).output.ld.mean() - 1.0) < 1e-6
    assert abs(B.quantities(hi.model, hi.X).output.ld.mean() - 4.0) < 1e-6


def test_cnn_and_vit_network_wide_bounds_hold_and_t1_is_refused() -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(4, 1, 8, 8, generator=g, dtype=DT)
    for net in (
        models.lenet5((1, 8, 8), 3, activation="tanh", seed=0, dtype=DT),
        models.vit((1, 8, 8), 3, patch=4, dim=8, depth=1, heads=2, seed=0, dtype=DT),
    ):
        q = B.quantities(net, X)
        assert q.first is None and q.notes
        bl = B.all_bounds(q)
        assert "t1_weighted" not in bl and "t4_nmls" in bl
        assert all(b.holds(1e-9) for b in bl.values()), {k: str(b) for k, b in bl.items()}
        for idt in B.l2_identity(net, X, method="jacrev").values():  # dense head layers
            assert idt.holds(1e-8)
        with pytest.raises(ValueError, match="first layer is dense"):
            B.t1_weighted(q)


def test_a_violated_inequality_is_detected() -> None:
    # Dropping ‖W_1‖₂² from T1 gives a false statement: it must be caught.
    lin = nn.Sequential(nn.Linear(3, 2, bias=False)).to(DT)
    with torch.no_grad():
        lin[0].weight.copy_(torch.tensor([[4.0, 0, 0], [0, 3.0, 0]], dtype=DT))
    X = torch.randn(5, 3, dtype=DT)
    q = B.quantities(lin, X)
    ok = B.t1_weighted(q)
    assert ok.holds()
    wrong = B.Bound("t1_without_w", ok.lhs, q.trace)
    assert not wrong.holds()
    # and a right-hand side a hair too small fails, per sample too
    ps = B.t1_per_sample(q)
    assert not B.Bound("x", ps.lhs, ps.lhs * (1 - 1e-6)).holds(1e-9)
    assert B.Bound("x", ps.lhs, ps.lhs).holds(1e-9)
    assert not B.Bound("nan", math.nan, 1.0).holds()


def test_result_types() -> None:
    b = B.Bound("a", torch.tensor(2.0), 6.0)
    assert b.lhs == 2.0 and b.slack == 3.0 and b.holds() and "slack 3" in str(b)
    assert B.Bound("z", 0.0, 1.0).slack == math.inf
    bt = B.Bound("t", torch.tensor([1.0, 2.0]), torch.tensor([4.0, 2.0]))
    assert torch.equal(bt.slack, torch.tensor([4.0, 1.0], dtype=DT))
    assert bt.worst() == (2.0, 2.0, 1.0)
    one_two = torch.tensor([1.0, 2.0], dtype=DT)
    i = B.Identity("i", one_two, one_two + torch.tensor([0.0, 1e-9], dtype=DT))
    assert i.holds(1e-8) and not i.holds(1e-12)
    assert B.sgd_p(10, 10) == 0.0 and B.sgd_p(10, 1) == 1.0
    assert B.t7_sgd(5.0, 0.1, 10, 10, 3).rhs == math.inf


def test_bad_arguments_raise() -> None:
    net = models.mlp([3, 4, 2], seed=0, dtype=DT)
    X = torch.randn(5, 3, dtype=DT)
    with pytest.raises(ValueError, match="ld"):
        B.t6_construction(1.0, 5.0, d=4, k=3)
    with pytest.raises(ValueError, match="trace"):
        B.t6_construction(0.0, 1.0)
    with pytest.raises(ValueError, match="lr"):
        B.t7_gd(1.0, 0.0)
    with pytest.raises(ValueError, match="batch_size"):
        B.t7_sgd(1.0, 0.1, 20, 10, 2)
    with pytest.raises(ValueError, match="method"):
        B.relative_flatness(net, X, "l1", method="exact")
    with pytest.raises(ValueError, match="unknown dense layer"):
        B.relative_flatness(net, X, "l9")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        B.quantities(lambda x: x, X)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- shared weights


def _cross_term_sum(s: B.SharedWeightTerms) -> torch.Tensor:
    """Σ_{t,t'} ⟨G_t, G_t'⟩_F ⟨h_t, h_t'⟩ literally, from Gram matrices over positions, [n]."""
    gg = torch.einsum("nkmt,nkms->nts", s.G, s.G)
    hh = torch.einsum("npt,nps->nts", s.patches, s.patches)
    return (gg * hh).sum((1, 2))


def _weight_jacobian(net: nn.Module, name: str, X: torch.Tensor) -> torch.Tensor:
    """∂f(x_i)/∂W for the parameter ``name`` by vmap(jacrev), [n, k, *W.shape]."""
    params = {n: p.detach() for n, p in net.named_parameters()}

    def f1(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(net, {**params, name: w}, (x.unsqueeze(0),))
        return out.squeeze(0)

    return torch.func.vmap(torch.func.jacrev(f1), in_dims=(None, 0))(params[name], X)


def test_shared_weight_terms_on_lenet_and_vit_match_the_parameter_jacobian() -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(5, 1, 8, 8, generator=g, dtype=DT)
    lenet = models.lenet5((1, 8, 8), 3, activation="tanh", seed=0, dtype=DT)
    vit = models.vit((1, 8, 8), 3, patch=2, dim=8, depth=1, heads=2, seed=0, dtype=DT)
    for net, T in ((lenet, 64), (vit, 16)):
        s = B.shared_weight_terms(net, X, 0)
        m = net[0].proj.out_channels if net is vit else net[0].out_channels
        assert s.T == T and s.patches.shape == (5, 1 * 4 if net is vit else 25, T)
        assert s.G.shape == (5, 3, m, T)
        assert s.grad_identity().holds(1e-10), str(s.grad_identity())
        assert torch.allclose(s.tied, _cross_term_sum(s), rtol=1e-10)  # eq-shared-grad
        assert s.position_wise().holds(1e-9) and s.tied_le_untied().holds(1e-9)
        # the per-entry gradient Σ_t G_t h_tᵀ, against reverse-mode autodiff in W directly
        JW = _weight_jacobian(net, s.weight_name, X)
        grad = torch.einsum("nkmt,npt->nkmp", s.G, s.patches)
        assert torch.allclose(JW.reshape(grad.shape), grad, rtol=1e-10, atol=1e-12)
    # the ratio tied/U is not 1: the positions interact (cross terms)
    assert (s.tied - s.untied).abs().max() > 1e-3 * s.untied.max()


def test_shared_weight_cross_terms_cancel_on_the_flat_example() -> None:
    # thm-shared-counterexample: f = ½ vᵀ(W x₁ + W x₂) on antisymmetric inputs (u, −u)
    p, m = 3, 4
    net = nn.Sequential(nn.Unflatten(1, (1, 2 * p)), nn.Conv1d(1, m, p, stride=p, bias=False),
                        nn.AvgPool1d(2), nn.Flatten(), nn.Linear(m, 1, bias=False)).to(DT)
    U = torch.randn(6, p, generator=torch.Generator().manual_seed(1), dtype=DT)
    X = torch.cat([U, -U], dim=1)
    s = B.shared_weight_terms(net, X, 1)
    assert s.T == 2 and s.weight_name == "1.weight"
    assert s.tied.abs().max() < 1e-28 and s.from_terms.abs().max() < 1e-28  # cancelled
    v = net[4].weight.detach().reshape(m)
    assert torch.allclose(s.untied, 0.5 * v.pow(2).sum() * U.pow(2).sum(1), rtol=1e-12)
    assert (s.sensitivity > 0).all() and s.position_wise().holds(1e-12)
    assert not B.Bound("untied_le_tied", s.untied, s.tied).holds()  # the direction we'd need


def test_shared_weight_terms_with_one_position_are_the_dense_l2_identity() -> None:
    g = torch.Generator().manual_seed(2)
    X = torch.randn(7, 1, 3, 4, generator=g, dtype=DT)
    conv = nn.Sequential(nn.Conv2d(1, 5, (3, 4)), nn.Tanh(), nn.Flatten(), nn.Linear(5, 2)).to(DT)
    dense = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.Tanh(), nn.Linear(5, 2)).to(DT)
    with torch.no_grad():
        dense[1].weight.copy_(conv[0].weight.reshape(5, 12))
        dense[1].bias.copy_(conv[0].bias)
        dense[3].load_state_dict(conv[3].state_dict())
    assert torch.allclose(conv(X), dense(X), rtol=1e-13)
    l2 = B.l2_identity(dense, X)["l1"]  # ‖∇_W f‖_F = ‖G‖_F ‖h‖, from independent code
    for net, item in ((conv, 0), (dense, 1)):
        s = B.shared_weight_terms(net, X, item)
        assert s.T == 1
        assert torch.allclose(s.untied, s.tied, rtol=1e-10)  # no cross terms
        assert torch.allclose(s.tied, l2.lhs**2, rtol=1e-10)
        assert torch.allclose(s.untied, l2.rhs**2, rtol=1e-10)
        # T = 1: the position-wise form is ‖h‖² ‖∂f/∂h‖_F² ≤ ‖W‖₂² ‖∇_W f‖_F² (T3, layer form)
        H = dense[:1](X)
        Jh = geometry.input_jacobian(dense[1:], H)
        assert torch.allclose(s.sensitivity, H.pow(2).sum(1) * Jh.pow(2).sum((1, 2)), rtol=1e-10)


class _Untied(nn.Module):
    """A token-wise linear map with its own copy W_t of the weight at each token t."""

    def __init__(self, lin: nn.Linear, T: int) -> None:
        super().__init__()
        self.w = nn.Parameter(lin.weight.detach().clone().repeat(T, 1, 1))  # [T, m, p]
        self.b = nn.Parameter(lin.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("tmp,ntp->ntm", self.w, x) + self.b


def test_untied_sum_is_the_gradient_norm_of_the_untied_network() -> None:
    T, p, m, k = 4, 3, 5, 2
    torch.manual_seed(3)
    net = nn.Sequential(nn.Unflatten(1, (T, p)), nn.Linear(p, m), nn.Tanh(), nn.Flatten(),
                        nn.Linear(T * m, k)).to(DT)
    untied = nn.Sequential(net[0], _Untied(net[1], T), net[2], net[3], net[4])
    X = torch.randn(6, T * p, generator=torch.Generator().manual_seed(3), dtype=DT)
    assert torch.allclose(net(X), untied(X), rtol=1e-13)
    s = B.shared_weight_terms(net, X, 1)
    assert s.T == T and s.grad_identity().holds(1e-10)
    assert torch.allclose(s.tied, _cross_term_sum(s), rtol=1e-10)
    assert s.position_wise().holds(1e-9) and s.tied_le_untied().holds(1e-9)
    U = curvature.jacobian_sqnorms(untied, X)["1.w"]
    assert torch.allclose(s.untied, U, rtol=1e-10)


def test_shared_weight_terms_bad_arguments() -> None:
    X = torch.randn(3, 1, 6, 6, dtype=DT)
    net = models.lenet5((1, 6, 6), 2, seed=0, dtype=DT)
    with pytest.raises(ValueError, match="item must be one of"):
        B.shared_weight_terms(net, X, 1)  # the activation
    with pytest.raises(ValueError, match="item must be an index"):
        B.shared_weight_terms(net, X, 99)
    grouped = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.Flatten(), nn.LazyLinear(1))
    with pytest.raises(ValueError, match="groups=1"):
        B.shared_weight_terms(grouped, torch.randn(2, 2, 4, 4), 0)


# ----------------------------------------------------------------------------- per-layer S_ad


def _frozen_adaptive(net: nn.Sequential, X: torch.Tensor, names: set[str], **kw) -> float:  # noqa: ANN003
    """Reference: adaptive sharpness of the network in which only ``names`` are trainable."""
    for name, p in net.named_parameters():
        p.requires_grad_(name in names)
    try:
        return float(B.adaptive_sharpness(net, X, **kw))
    finally:
        for p in net.parameters():
            p.requires_grad_(True)


def test_per_layer_adaptive_sharpness_equals_the_frozen_computation() -> None:
    net = models.mlp([4, 6, 5, 3], activation="tanh", seed=4, dtype=DT)
    X = torch.randn(9, 4, generator=torch.Generator().manual_seed(4), dtype=DT)
    Y = torch.randn(9, 3, generator=torch.Generator().manual_seed(5), dtype=DT)
    names = [n for n, _ in net.named_parameters()]
    for method, kw in (("gn", {}), ("hessian", {"Y": Y})):
        total = float(B.adaptive_sharpness(net, X, method=method, **kw))
        parts = 0.0
        for name in names:
            s = float(B.adaptive_sharpness(net, X, method=method, params=[name], **kw))
            ref = _frozen_adaptive(net, X, {name}, method=method, **kw)
            assert s == pytest.approx(ref, rel=1e-12) and s != 0  # (H_jj < 0 possible off-fit)
            parts += s
        assert parts == pytest.approx(total, rel=1e-10)  # Σ_j over disjoint blocks
        pair = {"0.weight", "2.bias"}
        assert float(B.adaptive_sharpness(net, X, method=method, params=pair, **kw)) == (
            pytest.approx(_frozen_adaptive(net, X, pair, method=method, **kw), rel=1e-12))
    assert all(p.requires_grad for p in net.parameters())
    with pytest.raises(ValueError, match="params .*unknown.*'9.weight'"):
        B.adaptive_sharpness(net, X, params=["9.weight"])
    with pytest.raises(ValueError, match="params"):
        B.adaptive_sharpness(net, X, params=[])


def test_rescale_layers_leaves_kappa_and_per_layer_adaptive_sharpness_invariant() -> None:
    net = models.mlp([5, 7, 6, 3], activation="relu", seed=6, dtype=DT)
    X = torch.randn(8, 5, generator=torch.Generator().manual_seed(6), dtype=DT)
    q0 = B.quantities(net, X)
    for idx, a in ((0, 0.2), (2, 4.5)):
        na = models.rescale_layers(net, idx, a)
        q = B.quantities(na, X)
        for layer in q0.layers:
            assert float(B.kappa(q, layer)) == pytest.approx(float(B.kappa(q0, layer)), rel=1e-10)
            k_def = B.relative_flatness(na, X, layer, method="hessian")
            assert float(k_def) == pytest.approx(float(B.kappa(q0, layer)), rel=1e-9)
        for name in ("0.weight", "2.weight", "4.weight"):
            assert float(B.adaptive_sharpness(na, X, params=name)) == pytest.approx(
                float(B.adaptive_sharpness(net, X, params=name)), rel=1e-10)
        assert abs(float(q.trace) - float(q0.trace)) > 0.05 * float(q0.trace)
