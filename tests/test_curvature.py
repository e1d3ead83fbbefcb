"""flatbook.curvature: every estimator against an exact (dense, float64) value (paper.md §4)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from flatbook import curvature, losses, models

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _setup(widths: list[int], n: int, seed: int, act: str = "tanh", interp: bool = False,
           noise: float = 1.0) -> tuple[nn.Sequential, Tensor, Tensor]:
    net = models.mlp(widths, activation=act, seed=seed, dtype=F64)
    X = torch.randn(n, widths[0], generator=_gen(seed + 100), dtype=F64)
    Y = net(X).detach()
    if not interp:
        Y = Y + noise * torch.randn(Y.shape, generator=_gen(seed + 200), dtype=F64)
    return net, X, Y


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small products: intra-op threads only add contention on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def medium() -> tuple[nn.Sequential, Tensor, Tensor, Tensor]:
    """P ≈ 1.6k MLP away from interpolation (indefinite H) and its exact spectrum."""
    net, X, Y = _setup([8, 36, 36, 3], 48, seed=11, noise=0.5)
    H = curvature.dense_hessian(net, "squared", X, Y)
    return net, X, Y, torch.linalg.eigvalsh(H).flip(0)


@pytest.fixture(scope="module")
def small_interp() -> tuple[nn.Sequential, Tensor, Tensor, Tensor]:
    """P = 101 MLP at an exact interpolating point and its dense Hessian."""
    net, X, Y = _setup([4, 10, 5], 30, seed=5, interp=True)
    return net, X, Y, curvature.dense_hessian(net, "squared", X, Y)


# ------------------------------------------------------------------------------ HVPs


@pytest.mark.parametrize("backend", ["revrev", "fwdrev"])
def test_hvp_matches_dense_hessian_for_any_chunking_and_batching(small_interp,
                                                                 backend: str) -> None:
    net, X, Y, H = small_interp
    V = torch.randn(5, H.shape[0], generator=_gen(1), dtype=F64)
    for chunk in (None, 7, 30, 1000):  # 7 does not divide n = 30
        op = curvature.hvp_operator(net, "squared", X, Y, chunk=chunk, backend=backend)
        assert torch.allclose(op(V[0]), H @ V[0], rtol=1e-12, atol=1e-13)
        assert torch.allclose(op(V), V @ H, rtol=1e-12, atol=1e-13)
        assert op.n_hvp == 6
    A = op.as_linear_operator()
    x = V[1].numpy()
    assert abs(A.matvec(x) - (H @ V[1]).numpy()).max() < 1e-12


def test_hvp_cross_entropy_matches_dense() -> None:
    net, X, _ = _setup([4, 6, 3], 25, seed=2)
    Yc = torch.randint(0, 3, (25,), generator=_gen(3))
    H = curvature.dense_hessian(net, "cross_entropy", X, Yc)
    v = torch.randn(H.shape[0], generator=_gen(4), dtype=F64)
    for backend in ("revrev", "fwdrev"):
        op = curvature.hvp_operator(net, "cross_entropy", X, Yc, chunk=8, backend=backend)
        assert torch.allclose(op(v), H @ v, rtol=1e-11, atol=1e-13)


def test_model_measured_in_eval_mode_and_flags_restored() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.Tanh(), nn.Linear(8, 2)).double()
    net.train()
    X = torch.randn(20, 3, generator=_gen(0), dtype=F64)
    Y = torch.randn(20, 2, generator=_gen(1), dtype=F64)
    r = curvature.sharpness(net, "squared", X, Y)  # would fail the probe in train mode
    assert net.training and net[1].training
    net.eval()
    H = curvature.dense_hessian(net, "squared", X, Y)
    assert r.values[0] == pytest.approx(torch.linalg.eigvalsh(H)[-1].item(), rel=1e-5)


# ------------------------------------------------------------------------------ sharpness


@pytest.mark.parametrize("solver", ["lanczos", "eigsh"])
def test_top3_match_dense_spectrum_tight_tol(medium, solver: str) -> None:
    net, X, Y, ev = medium
    assert ev[-1] < 0  # indefinite: the test also checks "largest algebraic"
    r = curvature.sharpness(net, "squared", X, Y, k=3, tol=1e-10, solver=solver,
                            backend="fwdrev" if solver == "eigsh" else "revrev")
    rel = ((r.values - ev[:3]).abs() / ev[:3].abs()).max().item()
    assert rel <= 1e-6, rel
    assert r.converged and r.values.shape == (3,) and r.residuals.shape == (3,)
    assert (r.residuals <= 1e-8 * ev[0]).all()
    assert bool((r.values[:-1] >= r.values[1:]).all())
    # eigen-residual bound: |λ − λ_true| ≤ ‖Hv − λv‖
    assert ((r.values - ev[:3]).abs() <= r.residuals + 1e-12).all()


def test_lambda_max_default_tol_and_hvp_count(medium) -> None:
    net, X, Y, ev = medium
    r = curvature.sharpness(net, "squared", X, Y)
    assert abs(r.lambda_max - ev[0].item()) <= 1e-4 * ev[0].item()
    assert r.converged and r.residuals[0] <= 1e-6 * abs(r.lambda_max) * 1.01
    assert r.n_hvp < 80  # Lanczos, not power iteration
    assert r.vectors.shape == (sum(p.numel() for p in net.parameters()), 1)


def test_sharpness_p2000_interpolation() -> None:
    net, X, Y = _setup([10, 40, 40, 3], 40, seed=21, interp=True)
    op = curvature.hvp_operator(net, "squared", X, Y)
    P = op.P
    assert P > 2000
    H = torch.cat([op(torch.eye(P, dtype=F64)[i : i + 512]) for i in range(0, P, 512)])
    ev = torch.linalg.eigvalsh(0.5 * (H + H.T)).flip(0)
    r = curvature.sharpness(net, "squared", X, Y, k=3, tol=1e-10)
    assert ((r.values - ev[:3]).abs() / ev[:3]).max() <= 1e-6
    r1 = curvature.sharpness(net, "squared", X, Y)
    assert abs(r1.lambda_max - ev[0].item()) <= 1e-4 * ev[0].item()


def test_largest_algebraic_not_largest_magnitude(small_interp) -> None:
    # loss −L: the spectrum is −spec(H) (≤ 0); its largest algebraic eigenvalues are ≈ 0
    net, X, Y, H = small_interp

    def neg(out: Tensor, tgt: Tensor) -> Tensor:
        return -losses.squared(out, tgt) + 0.05 * losses.squared(out, 0 * tgt)

    Hn = curvature.dense_hessian(net, neg, X, Y)
    ev = torch.linalg.eigvalsh(Hn).flip(0)
    assert ev[0].abs() < ev[-1].abs()
    r = curvature.sharpness(net, neg, X, Y, k=2, tol=1e-10)
    assert torch.allclose(r.values, ev[:2], rtol=1e-6, atol=1e-9 * ev.abs().max())


def test_repeated_eigenvalues_are_not_missed() -> None:
    # f = W x (no bias), squared loss: H = I_k ⊗ XᵀX/n — every eigenvalue has multiplicity k.
    # A single-vector Krylov space holds one copy of each; the deflation check finds the rest.
    net = models.mlp([30, 4], bias=False, seed=0, dtype=F64)
    X = torch.randn(60, 30, generator=_gen(0), dtype=F64) * torch.linspace(3, 0.5, 30, dtype=F64)
    Y = torch.randn(60, 4, generator=_gen(1), dtype=F64)
    mu = torch.linalg.eigvalsh(X.T @ X / 60).flip(0)
    r = curvature.sharpness(net, "squared", X, Y, k=6, tol=1e-10)
    want = torch.cat([mu[:1].repeat(4), mu[1:2].repeat(2)])
    assert torch.allclose(r.values, want, rtol=1e-8), (r.values, want)
    # the check is what fixes it: at tol 1e-6 single-vector Lanczos stops with one copy of
    # each eigenvalue (at tight tolerances rounding lets it find some copies, not reliably)
    for seed in range(3):
        r_off = curvature.sharpness(net, "squared", X, Y, k=6, tol=1e-6, verify=False,
                                    seed=seed)
        assert torch.allclose(r_off.values[:3], mu[:3], rtol=1e-5), r_off.values
        r_on = curvature.sharpness(net, "squared", X, Y, k=6, tol=1e-6, seed=seed)
        assert torch.allclose(r_on.values, want, rtol=1e-5), r_on.values


def test_restarted_lanczos_and_full_spectrum(small_interp) -> None:
    net, X, Y, H = small_interp
    ev = torch.linalg.eigvalsh(H).flip(0)
    r = curvature.sharpness(net, "squared", X, Y, k=3, tol=1e-9, ncv=8)  # forces restarts
    assert r.converged
    assert torch.allclose(r.values, ev[:3], rtol=1e-7)
    P = H.shape[0]
    r_all = curvature.sharpness(net, "squared", X, Y, k=P, verify=False)  # k = P: whole space
    assert torch.allclose(r_all.values, ev, atol=1e-9 * ev[0])


def test_sharpness_same_seed_bit_identical_and_seed_independent(medium) -> None:
    net, X, Y, ev = medium
    a = curvature.sharpness(net, "squared", X, Y, k=2, seed=3)
    b = curvature.sharpness(net, "squared", X, Y, k=2, seed=3)
    c = curvature.sharpness(net, "squared", X, Y, k=2, seed=4)
    assert torch.equal(a.values, b.values) and torch.equal(a.residuals, b.residuals)
    assert a.n_hvp == b.n_hvp
    assert ((a.values - c.values).abs() <= a.residuals + c.residuals).all()


@pytest.mark.parametrize("tol", [1e-4, 1e-6])
def test_float32_model_keeps_a_float32_basis_and_converges(tol: float) -> None:
    # a float32 model: Krylov basis and products in float32; λ_max against the float64 twin
    net64, X64, Y64 = _setup([12, 40, 40, 4], 160, seed=31, act="relu", noise=0.3)
    lam = curvature.sharpness(net64, "squared", X64, Y64, tol=1e-11).lambda_max  # float64
    net32 = models.mlp([12, 40, 40, 4], activation="relu", seed=31, dtype=torch.float32)
    net32.load_state_dict({k: v.float() for k, v in net64.state_dict().items()})
    r = curvature.sharpness(net32, "squared", X64.float(), Y64.float(), tol=tol)
    assert r.converged and r.vectors.dtype == F64
    # |λ − λ_true| ≤ residual ≤ tol·λ (plus float32 rounding of H itself, ~1e-6·λ)
    assert abs(r.lambda_max - lam) <= max(tol, 2e-6) * lam, (r.lambda_max, lam)
    assert float(r.residuals[0]) <= 1.05 * tol * abs(r.lambda_max) + 2e-6 * lam
    v = r.vectors[:, 0]
    H64 = curvature.hvp_operator(net64, "squared", X64, Y64)
    true = float((H64(v) - r.values[0] * v).norm())
    assert true <= 1.05 * tol * lam + 2e-6 * lam, (true, r.residuals)


def test_max_hvp_cap_reports_not_converged(medium) -> None:
    net, X, Y, ev = medium
    with pytest.warns(RuntimeWarning, match="did not reach"):
        r = curvature.sharpness(net, "squared", X, Y, k=1, tol=1e-14, max_hvp=5)
    assert not r.converged and r.n_hvp == 5  # the residual comes from the stored products
    assert r.values[0] <= ev[0] + 1e-12  # a Ritz value never overshoots λ_max
    # the reported residual is the true ‖Hv − λv‖ of the returned vector, even unconverged
    op = curvature.hvp_operator(net, "squared", X, Y)
    v = r.vectors[:, 0]
    true = (op(v) - r.values[0] * v).norm()
    assert abs(float(true) - float(r.residuals[0])) <= 1e-9 * float(ev[0]), (true, r.residuals)
    assert float(true) > 1e-6 * float(ev[0])  # and it is not trivially small


# ------------------------------------------------------------------------------ trace


def test_trace_gn_equals_dense_trace_at_interpolation(small_interp) -> None:
    net, X, Y, H = small_interp
    r = curvature.trace(net, "squared", X, Y, method="gn")
    assert r.stderr == 0.0 and r.n_hvp == 0 and r.method == "gn"
    assert abs(r.value - torch.trace(H).item()) <= 1e-8 * torch.trace(H).item()
    for chunk in (7, None):  # chunking (7 does not divide n = 30) changes nothing
        rc = curvature.trace(net, "squared", X, Y, method="gn", chunk=chunk)
        assert rc.value == pytest.approx(r.value, rel=1e-13)
    G = curvature.gauss_newton_matrix(net, X)
    assert torch.allclose(G, H, atol=1e-12 * H.abs().max())


def test_trace_gn_is_gauss_newton_away_from_interpolation(medium) -> None:
    net, X, Y, ev = medium
    r = curvature.trace(net, "squared", X, Y, method="gn")
    G = curvature.gauss_newton_matrix(net, X)
    assert r.value == pytest.approx(torch.trace(G).item(), rel=1e-10)
    assert abs(r.value - ev.sum().item()) > 1e-3 * abs(r.value)  # not tr H here


def test_trace_gn_cross_entropy_is_ggn_trace_exact_for_linear_model() -> None:
    # for f = W x + b the GGN equals H for any loss (∇²_θ f = 0)
    net = models.mlp([5, 4], seed=1, dtype=F64)
    X = torch.randn(40, 5, generator=_gen(0), dtype=F64)
    Yc = torch.randint(0, 4, (40,), generator=_gen(1))
    H = curvature.dense_hessian(net, "cross_entropy", X, Yc)
    r = curvature.trace(net, "cross_entropy", X, Yc, method="gn")
    assert r.value == pytest.approx(torch.trace(H).item(), rel=1e-10)
    # probability targets and a generic callable loss (Λ_i by autodiff) agree
    onehot = torch.nn.functional.one_hot(Yc, 4).to(F64)
    r2 = curvature.trace(net, "cross_entropy", X, onehot, method="gn")
    r3 = curvature.trace(net, lambda o, t: nn.functional.cross_entropy(o, t), X, Yc,
                         method="gn")
    assert r2.value == pytest.approx(r.value, rel=1e-12)
    assert r3.value == pytest.approx(r.value, rel=1e-12)
    # and for a deep net, the GGN matrix of cross-entropy matches the dense GGN trace
    deep = models.mlp([5, 6, 4], seed=2, dtype=F64)
    G = curvature.gauss_newton_matrix(deep, X, "cross_entropy", Yc)
    assert torch.allclose(G, G.T, atol=1e-14) and torch.linalg.eigvalsh(G)[0] > -1e-12
    assert curvature.trace(deep, "cross_entropy", X, Yc).value == pytest.approx(
        torch.trace(G).item(), rel=1e-10)


def test_jacobian_sqnorms_closed_form_for_linear_layer() -> None:
    # f = W x + b ∈ R^k: ‖∇_W f(x)‖_F² = k‖x‖², ‖∇_b f(x)‖² = k
    net = models.mlp([6, 3], seed=0, dtype=F64)
    X = torch.randn(9, 6, generator=_gen(0), dtype=F64)
    sq = curvature.jacobian_sqnorms(net, X, chunk=4)
    assert torch.allclose(sq["0.weight"], 3 * X.pow(2).sum(1), rtol=1e-13)
    assert torch.allclose(sq["0.bias"], torch.full((9,), 3.0, dtype=F64))
    assert torch.allclose(curvature.jacobian_sqnorms(net, X, chunk=None)["0.weight"],
                          sq["0.weight"])


@pytest.mark.parametrize("method", ["hutchinson", "hutchpp"])
def test_stochastic_trace_unbiased_and_stderr_covers(small_interp, method: str) -> None:
    net, X, Y, H = small_interp
    Y = Y + 0.3 * torch.randn(Y.shape, generator=_gen(9), dtype=F64)  # full H, not just GN
    truth = torch.trace(curvature.dense_hessian(net, "squared", X, Y)).item()
    vals, errs = [], []
    for seed in range(40):
        r = curvature.trace(net, "squared", X, Y, method=method, n_hvp=30, seed=seed,
                            check=False)
        assert r.n_hvp == 30 and r.method == method and r.stderr > 0
        vals.append(r.value)
        errs.append(r.stderr)
    v, e = torch.tensor(vals), torch.tensor(errs)
    covered = ((v - truth).abs() <= 1.96 * e).float().mean().item()
    assert 0.8 <= covered <= 1.0, covered
    # unbiased: the mean over seeds is within 4 standard errors of the mean
    assert abs(v.mean().item() - truth) <= 4 * v.std().item() / math.sqrt(40)


def test_hutchpp_beats_hutchinson_on_low_rank_hessian(small_interp) -> None:
    net, X, Y, H = small_interp  # at interpolation H = GN, rank ≤ n·k = 150 … but decays fast
    truth = torch.trace(H).item()
    err = {}
    for m in ("hutchinson", "hutchpp"):
        v = torch.tensor([curvature.trace(net, "squared", X, Y, method=m, n_hvp=60, seed=s,
                                          check=False).value for s in range(10)])
        err[m] = (v - truth).pow(2).mean().sqrt().item()
    assert err["hutchpp"] < 0.5 * err["hutchinson"], err


def test_trace_same_seed_bit_identical_different_seeds_agree(medium) -> None:
    net, X, Y, ev = medium
    for m in ("hutchinson", "hutchpp"):
        a = curvature.trace(net, "squared", X, Y, method=m, n_hvp=24, seed=1)
        b = curvature.trace(net, "squared", X, Y, method=m, n_hvp=24, seed=1)
        c = curvature.trace(net, "squared", X, Y, method=m, n_hvp=24, seed=2)
        assert a.value == b.value and a.stderr == b.stderr
        assert torch.equal(a.samples, b.samples)
        assert abs(a.value - c.value) <= 4 * math.hypot(a.stderr, c.stderr)


# ------------------------------------------------------------------------------ probe & errors


class _Noisy(nn.Module):
    """Adds fresh Gaussian noise on every call, also in eval mode."""

    def forward(self, x: Tensor) -> Tensor:
        return x + 0.1 * torch.randn_like(x)


class _AlwaysDropout(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.dropout(x, 0.3, training=True)


@pytest.mark.parametrize("bad", [_Noisy, _AlwaysDropout])
def test_determinism_probe_catches_stochastic_module(bad: type[nn.Module]) -> None:
    net = nn.Sequential(nn.Linear(3, 5), bad(), nn.Tanh(), nn.Linear(5, 2)).double()
    X = torch.randn(10, 3, generator=_gen(0), dtype=F64)
    Y = torch.zeros(10, 2, dtype=F64)
    with pytest.raises(curvature.NondeterminismError, match="dropout.*BatchNorm.*shuffl"):
        curvature.sharpness(net, "squared", X, Y)
    with pytest.raises(curvature.NondeterminismError):
        curvature.trace(net, "squared", X, Y, method="gn")


def test_determinism_probe_catches_shuffling_loss() -> None:
    net, X, Y = _setup([3, 4, 2], 12, seed=0)

    def shuffled(out: Tensor, tgt: Tensor) -> Tensor:
        return losses.squared(out, tgt[torch.randperm(tgt.shape[0])])

    with pytest.raises(curvature.NondeterminismError, match="shuffl"):
        curvature.trace(net, shuffled, X, Y, method="hutchinson", n_hvp=4)


def test_train_mode_batchnorm_is_measured_in_eval_mode() -> None:
    net = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2)).double()
    net.train()
    X = torch.randn(16, 3, generator=_gen(0), dtype=F64)
    Y = torch.randn(16, 2, generator=_gen(1), dtype=F64)
    before = net[1].running_mean.clone()
    r = curvature.sharpness(net, "squared", X, Y)
    assert torch.equal(net[1].running_mean, before) and net.training  # nothing was updated
    net.eval()
    ev = torch.linalg.eigvalsh(curvature.dense_hessian(net, "squared", X, Y))
    assert r.lambda_max == pytest.approx(ev[-1].item(), rel=1e-5)


def _tiny() -> tuple[nn.Sequential, Tensor, Tensor]:
    return _setup([3, 4, 2], 6, seed=0)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"k": 0}, ValueError, "k must be"),
        ({"k": 27}, ValueError, "too large"),
        ({"k": 26, "solver": "eigsh"}, ValueError, "too large"),
        ({"tol": 0.0}, ValueError, "tol"),
        ({"solver": "power"}, ValueError, "allowed"),
        ({"seed": -1}, ValueError, "seed"),
        ({"chunk": 0}, ValueError, "chunk"),
        ({"max_hvp": 0}, ValueError, "max_hvp"),
        ({"backend": "jax"}, ValueError, "allowed"),
    ],
)
def test_sharpness_rejects_bad_arguments(kwargs: dict, exc: type, match: str) -> None:
    net, X, Y = _tiny()  # P = 3·4 + 4 + 4·2 + 2 = 26
    with pytest.raises(exc, match=match):
        curvature.sharpness(net, "squared", X, Y, **kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"method": "exact"}, "allowed"),
        ({"method": "hutchinson", "n_hvp": 0}, "n_hvp"),
        ({"method": "hutchinson", "n_hvp": 1}, "n_hvp"),
        ({"method": "hutchpp", "n_hvp": 3}, "n_hvp"),
        ({"method": "hutchpp", "block": 0}, "block"),
    ],
)
def test_trace_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    net, X, Y = _tiny()
    with pytest.raises(ValueError, match=match):
        curvature.trace(net, "squared", X, Y, **kwargs)


def test_bad_data_and_parameters_are_rejected() -> None:
    net, X, Y = _tiny()
    with pytest.raises(ValueError, match="same number of samples"):
        curvature.sharpness(net, "squared", X, Y[:4])
    with pytest.raises(ValueError, match="shape"):
        curvature.sharpness(net, "squared", X, Y[:, :1])
    with pytest.raises(ValueError, match="empty"):
        curvature.trace(net, "squared", X[:0], Y[:0])
    with pytest.raises(ValueError, match="unknown loss"):
        curvature.hvp_operator(net, "mse", X, Y)
    with pytest.raises(ValueError, match="loss is not finite"):
        curvature.sharpness(net, "squared", X, Y * float("inf"))
    with pytest.raises(ValueError, match=r"shape \[P\]"):
        curvature.hvp_operator(net, "squared", X, Y)(torch.zeros(5, dtype=F64))
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        curvature.jacobian_sqnorms(net, X)
    outside = curvature.trace(net, "squared", X, Y).value
    with torch.no_grad():  # no_grad is fine: same numbers
        assert curvature.trace(net, "squared", X, Y).value == outside
        net[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite.*0.weight"):
        curvature.trace(net, "squared", X, Y)
    with pytest.raises(ValueError, match="non-finite"):
        curvature.dense_hessian(net, "squared", X, Y)


# ------------------------------------------------------------------------------ ghost norms


class _Tokens(nn.Module):
    """Token-wise dense layers (a Linear on [b, T, d]), a LayerNorm and a weight that is also
    used outside its module's forward (tied): every case the fast path must get right or hand
    over to jacrev."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.ln, self.l2 = nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.l2(self.ln(torch.tanh(self.l1(x)))).mean(1)
        return h + nn.functional.linear(x.mean(1), self.l1.weight[:3])


class _Twice(nn.Module):
    """One Linear applied twice (shared weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.l, self.o = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.o(torch.tanh(self.l(torch.tanh(self.l(x)))))


@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda: models.mlp([5, 7, 6, 3], activation="gelu", seed=0, dtype=F64), (40, 5)),
        (lambda: nn.Sequential(_Tokens()).double(), (12, 5, 4)),
        (lambda: nn.Sequential(_Twice()).double(), (9, 4)),
        (lambda: nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(),
                               nn.Linear(48, 4)).double(), (7, 1, 6, 6)),
    ],
    ids=["mlp", "tokens+tied", "shared", "conv"],
)
def test_ghost_norms_equal_jacrev(make, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    net = make()
    X = torch.randn(shape, generator=_gen(0), dtype=F64)
    fast = curvature.jacobian_sqnorms(net, X, chunk=16)
    ref = curvature.jacobian_sqnorms(net, X, chunk=16, method="jacrev")
    assert fast.keys() == ref.keys() == dict(net.named_parameters()).keys()
    for name in ref:
        assert torch.allclose(fast[name], ref[name], rtol=1e-12, atol=1e-14), name
    with pytest.raises(ValueError, match="allowed"):
        curvature.jacobian_sqnorms(net, X, method="loop")


def test_batched_grad_row_fallback_equals_vectorised(monkeypatch) -> None:
    # an op without a batching rule makes _vmap raise: batched_grad then takes one scalar
    # backward per cotangent row, with the same numbers (and None / zeros for unused inputs)
    import torch._vmap_internals as vi

    from flatbook._functional import batched_grad

    g = _gen(3)
    a = torch.randn(5, 4, generator=g, dtype=F64, requires_grad=True)
    b = torch.randn(4, 3, generator=g, dtype=F64, requires_grad=True)
    unused = torch.randn(2, dtype=F64, requires_grad=True)
    out = torch.tanh(a @ b)
    C = torch.randn(6, 5, 3, generator=g, dtype=F64)
    ref = batched_grad(out, [a, b, unused], C)
    assert ref[2] is None
    want = [torch.stack([torch.autograd.grad(out, x, c, retain_graph=True)[0] for c in C])
            for x in (a, b)]

    def no_batching(*args, **kwargs):
        raise RuntimeError("no batching rule")

    monkeypatch.setattr(vi, "_vmap", no_batching)
    rows = batched_grad(out, [a, b, unused], C, materialize=True)
    for r, v, w in zip(rows[:2], ref[:2], want, strict=True):
        assert torch.allclose(r, v, rtol=1e-12, atol=1e-14) and torch.allclose(r, w, rtol=1e-12)
    assert torch.equal(rows[2], torch.zeros(6, 2, dtype=F64))
