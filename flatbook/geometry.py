"""Geometry of representations: input Jacobians and the measures built on them (paper.md §1).

For a representation map φ: R^d → R^N (the network output f, a hidden layer x ↦ h, or the rest
of the network h_{l−1} ↦ f) and an input x, let J = ∂φ/∂x ∈ R^{N×d} with singular values
σ_1 ≥ … ≥ σ_r, r = min(N, d). Inputs with several feature dimensions (images [C, H, W]) and
representations with several dimensions (tokens [T, D]) are flattened: d and N are the numbers
of entries of one sample.

================================  ===============================  ==========================
paper symbol                      function                         formula
================================  ===============================  ==========================
log LVR(x)                        :func:`log_lvr`                  Σ_{j≤r} log σ_j
MLS(x)                            :func:`mls`                      σ_1 = ‖J‖₂
LD(x)                             :func:`local_dim`                (Σ σ_j²)² / Σ σ_j⁴
‖J‖_F²                            :func:`frob_sq`                  Σ σ_j²
Gaussian-ball estimates           :func:`gaussian_ball`            ½ log det C − (r/2) log α, PR(C)
global dimensionality             :func:`participation_ratio`      (Σλ)² / Σλ² of Cov(φ(x_i))
MLS_l, LVR_l, LD_l (per layer)    :func:`layer_measures`           the map h_{l−1} ↦ f
================================  ===============================  ==========================

All measures are batched over samples: Jacobians [n, N, d] → Tensor[n].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import jacfwd, jacrev, vmap

from flatbook import layers as _layers
from flatbook._validate import check_positive_int

__all__ = [
    "BallEstimate",
    "LayerMeasures",
    "Measures",
    "frob_sq",
    "gaussian_ball",
    "input_jacobian",
    "layer_measures",
    "local_dim",
    "log_lvr",
    "measures",
    "mls",
    "output_measures",
    "participation_ratio",
    "representation_measures",
    "singular_values",
    "spectral_norm",
]

JACOBIAN_MODES = ("auto", "rev", "fwd", "loop")


# ----------------------------------------------------------------------------- Jacobians


def input_jacobian(
    fn: Callable[[Tensor], Tensor], X: Tensor, chunk: int | None = 256, mode: str = "auto"
) -> Tensor:
    """Per-sample input Jacobians J_i = ∂ vec φ(x_i) / ∂ vec x_i, shape [n, N, d].

    Args:
        fn: the representation map φ acting on a *batch* (``fn(X[b:e])`` has shape [b, …]);
            e.g. a model, ``layers.split(model, name)[0]`` or a dense layer's ``tail``.
            Each sample is pushed through ``fn`` as a batch of one (so modules that expect a
            batch dimension work); ``fn`` must act on samples independently (eval mode).
        X: inputs [n, …]; d = ``X[0].numel()``.
        chunk: number of samples per vectorised call (memory ∝ chunk · N · d, plus the
            activations of chunk · min(N, d) virtual samples); ``None``: automatic, at most
            256 and at most 2^24 / (N · d) samples (for large CNNs pass a small value).
        mode: ``"rev"`` = ``vmap(jacrev)`` (N reverse passes), ``"fwd"`` = ``vmap(jacfwd)``
            (d forward passes), ``"auto"`` = ``"fwd"`` when d < N else ``"rev"`` (and falls
            back to ``"rev"``, then ``"loop"``, if a transform is unsupported by some op),
            ``"loop"`` = one ``torch.autograd.functional.jacobian`` per sample (reference).

    Returns:
        Detached tensor [n, N, d] in the dtype of ``fn``'s output.
    """
    if mode not in JACOBIAN_MODES:
        raise ValueError(f"unknown mode {mode!r}; allowed: {list(JACOBIAN_MODES)}")
    check_positive_int(chunk, "chunk", allow_none=True)
    if X.ndim < 1 or X.shape[0] == 0:
        raise ValueError(f"X must have shape [n, …] with n ≥ 1; got {tuple(X.shape)}")
    n = X.shape[0]
    sample_shape = X.shape[1:]
    d = math.prod(sample_shape)
    Xf = X.detach().reshape(n, d)

    def f1(x: Tensor) -> Tensor:
        return fn(x.reshape(1, *sample_shape)).reshape(-1)

    if mode == "loop":
        return _jacobian_loop(f1, Xf)
    with torch.no_grad():
        N = fn(X[:1].detach()).reshape(-1).numel()
    chunk = int(chunk) if chunk is not None else max(1, min(256, (1 << 24) // max(1, N * d)))
    if mode == "auto":
        order = ["fwd", "rev"] if d < N else ["rev"]
        for m in order:
            try:
                return _jacobian_vmap(f1, Xf, chunk, m)
            except (RuntimeError, NotImplementedError):
                continue
        return _jacobian_loop(f1, Xf)
    return _jacobian_vmap(f1, Xf, chunk, mode)


def _jacobian_vmap(f1: Callable[[Tensor], Tensor], Xf: Tensor, chunk: int, mode: str) -> Tensor:
    jac = vmap(jacrev(f1) if mode == "rev" else jacfwd(f1))
    out = []
    with torch.no_grad():  # torch.func transforms ignore the outer no_grad; saves the graph
        for s in range(0, Xf.shape[0], chunk):
            out.append(jac(Xf[s : s + chunk]).detach())
    return torch.cat(out)


def _jacobian_loop(f1: Callable[[Tensor], Tensor], Xf: Tensor) -> Tensor:
    out = []
    for x in Xf:
        out.append(torch.autograd.functional.jacobian(f1, x).detach())
    return torch.stack(out)


# ----------------------------------------------------------------------------- measures


def _check_jac(J: Tensor) -> Tensor:
    if J.ndim != 3:
        raise ValueError(f"J must be a batch of Jacobians [n, N, d]; got shape {tuple(J.shape)}")
    return J


def singular_values(J: Tensor) -> Tensor:
    """Singular values σ_1 ≥ … ≥ σ_r of each J_i (batched ``torch.linalg.svdvals``), [n, r].

    For a wide or tall J_i (max(N, d) ≥ 4·min(N, d)) the values are those of the triangular
    factor R [r, r] of a Householder QR of J_iᵀ (or J_i): the same singular values, backward
    stable, and ~8× faster batched on CPU than the SVD of the full [N, d] block.
    """
    J = _check_jac(J)
    N, d = J.shape[1], J.shape[2]
    if min(N, d) >= 1 and max(N, d) >= 4 * min(N, d):
        A = J.transpose(1, 2) if N < d else J
        R = torch.linalg.qr(A, mode="r")[1]
        return torch.linalg.svdvals(R)
    return torch.linalg.svdvals(J)


def spectral_norm(W: Tensor) -> Tensor:
    """‖W‖₂ = σ_max(W) = √λ_max(W Wᵀ) (Gram of the smaller side; the top eigenvalue of a Gram
    matrix is perfectly conditioned, relative error ~eps), 0-d tensor; ~6× faster on CPU than
    ``torch.linalg.matrix_norm(W, ord=2)``, which computes every singular value."""
    W = W.detach()
    if W.ndim != 2:
        raise ValueError(f"W must be a matrix [m, p]; got shape {tuple(W.shape)}")
    A = W @ W.T if W.shape[0] <= W.shape[1] else W.T @ W
    return torch.linalg.eigvalsh(A)[-1].clamp(min=0).sqrt()


def _rank_tol(sigma: Tensor, shape: tuple[int, int], rtol: float | None) -> Tensor:
    """Per-sample threshold below which a singular value counts as 0 ([n, 1])."""
    if rtol is None:
        rtol = torch.finfo(sigma.dtype).eps * max(shape)
    if rtol < 0:
        raise ValueError(f"rtol must be ≥ 0 or None; got {rtol!r}")
    return rtol * sigma[:, :1]


def _log_lvr_from_sigma(sigma: Tensor, shape: tuple[int, int], rtol: float | None) -> Tensor:
    tol = _rank_tol(sigma, shape, rtol)
    s = torch.where(sigma > tol, sigma, torch.zeros_like(sigma))
    return torch.log(s).sum(-1)


def log_lvr(J: Tensor, rtol: float | None = None) -> Tensor:
    """log LVR(x_i) = Σ_{j=1}^{r} log σ_j(J_i), r = min(N, d) (paper.md §1), shape [n].

    LVR is the factor by which φ scales an r-dimensional volume element at x. A rank-deficient
    J_i gives −inf (no error): singular values ≤ ``rtol``·σ_1 count as exact zeros, with the
    default ``rtol`` = eps·max(N, d) of ``torch.linalg.matrix_rank``; ``rtol=0`` keeps every
    computed σ_j (then only exactly zero ones give −inf).
    """
    J = _check_jac(J)
    return _log_lvr_from_sigma(singular_values(J), tuple(J.shape[1:]), rtol)


def mls(J: Tensor) -> Tensor:
    """Maximum local sensitivity MLS(x_i) = σ_1(J_i) = ‖J_i‖₂ (paper.md §1), shape [n]."""
    return singular_values(J)[:, 0]


def _ld_from_sigma(sigma: Tensor) -> Tensor:
    s2 = sigma.pow(2)
    return s2.sum(-1).pow(2) / s2.pow(2).sum(-1)


def local_dim(J: Tensor) -> Tensor:
    """Local dimensionality LD(x_i) = (Σ σ_j²)² / Σ σ_j⁴ ∈ [1, r] (paper.md §1), shape [n].

    The participation ratio of the covariance α J Jᵀ of φ(x + δ), δ ~ N(0, αI), as α → 0.
    Invariant to J → cJ. A zero Jacobian gives NaN (0/0).
    """
    return _ld_from_sigma(singular_values(J))


def frob_sq(J: Tensor) -> Tensor:
    """‖J_i‖_F² = Σ_j σ_j² (sum of squared entries), shape [n]."""
    return _check_jac(J).pow(2).sum((1, 2))


@dataclass(frozen=True)
class Measures:
    """All Jacobian measures of one representation map, per sample (from one SVD).

    Attributes:
        sigma: singular values [n, r], descending.
        log_lvr: Σ_j log σ_j, [n] (−inf where rank-deficient).
        mls: σ_1, [n].
        ld: (Σσ²)²/Σσ⁴, [n].
        frob_sq: ‖J‖_F² = Σσ², [n].
        r: min(N, d).
        N, d: output and input dimension of the map.
    """

    sigma: Tensor
    log_lvr: Tensor
    mls: Tensor
    ld: Tensor
    frob_sq: Tensor
    r: int
    N: int
    d: int

    @property
    def lvr_pow(self) -> Tensor:
        """LVR^{2/r} = exp((2/r) log LVR), [n] — the quantity bounded in T2/T4/T5."""
        return torch.exp(2.0 * self.log_lvr / self.r)


def measures(J: Tensor, rtol: float | None = None) -> Measures:
    """:class:`Measures` (σ, log LVR, MLS, LD, ‖J‖_F²) of a batch of Jacobians [n, N, d]."""
    J = _check_jac(J)
    sigma = singular_values(J)
    N, d = J.shape[1], J.shape[2]
    return Measures(
        sigma=sigma,
        log_lvr=_log_lvr_from_sigma(sigma, (N, d), rtol),
        mls=sigma[:, 0],
        ld=_ld_from_sigma(sigma),
        frob_sq=sigma.pow(2).sum(-1),
        r=min(N, d),
        N=N,
        d=d,
    )


# ----------------------------------------------------------------------------- Gaussian ball


@dataclass(frozen=True)
class BallEstimate:
    """Gaussian-ball estimates at each x_i (paper.md §1), each of shape [n].

    Attributes:
        log_volume: ½ Σ_{j≤r} log λ_j(C) − (r/2) log α → log LVR(x) as α → 0.
        pr: participation ratio (Σ λ_j)² / Σ λ_j² of C → LD(x) as α → 0.
        entropy: Gaussian entropy ½ log det(2πe C) over the top-r eigen-directions
            (= log_volume + (r/2) log(2πe α)): the volume bound is an entropy bound.
        r: min(N, d); alpha, n_samples: the settings used.
    """

    log_volume: Tensor
    pr: Tensor
    entropy: Tensor
    r: int
    alpha: float
    n_samples: int


def gaussian_ball(
    fn: Callable[[Tensor], Tensor],
    X: Tensor,
    alpha: float,
    n_samples: int = 2000,
    seed: int = 0,
) -> BallEstimate:
    """Estimate log LVR and LD at each x_i from the spread of φ(x_i + δ), δ ~ N(0, αI_d).

    For each x_i: draw ``n_samples`` perturbations (α is the *variance* of each coordinate),
    take the empirical covariance C ∈ R^{N×N} of φ(x_i + δ) (unbiased, centred at the sample
    mean) and its eigenvalues λ_1 ≥ … ≥ λ_N. Then

        log_volume = ½ Σ_{j≤r} log λ_j − (r/2) log α,   pr = (Σ_j λ_j)² / Σ_j λ_j².

    As α → 0, C → α J Jᵀ (J = ∂φ/∂x) whose non-zero eigenvalues are α σ_j², so log_volume →
    Σ log σ_j = log LVR and pr → LD (paper.md §1). Two errors remain: curvature of φ (shrinks
    with α) and sampling (the log-det of an empirical covariance is biased by ≈ −r(r+1)/(4m)
    with m = ``n_samples`` and fluctuates by ≈ √(r/(2m))): use m ≫ r².

    Args:
        fn: batched map φ, as in :func:`input_jacobian`.
        X: points [n, …].
        alpha: variance α > 0 of the Gaussian ball.
        n_samples: m > r perturbations per point.
        seed: seed of the perturbations (a private ``torch.Generator``).
    """
    if not alpha > 0:
        raise ValueError(f"alpha (variance of the ball) must be > 0; got {alpha!r}")
    if int(n_samples) < 2:
        raise ValueError(f"n_samples must be ≥ 2; got {n_samples!r}")
    n = X.shape[0]
    sample_shape = X.shape[1:]
    d = math.prod(sample_shape)
    gen = torch.Generator().manual_seed(int(seed))
    logv, prs, r_out = [], [], 0
    with torch.no_grad():
        for i in range(n):
            delta = torch.randn(int(n_samples), d, generator=gen, dtype=X.dtype).to(X.device)
            xp = X[i].reshape(1, d) + math.sqrt(alpha) * delta
            Z = fn(xp.reshape(-1, *sample_shape)).reshape(int(n_samples), -1)
            N = Z.shape[1]
            r_out = min(N, d)
            lam = _cov_eigvals(Z)  # descending
            top = lam[:r_out].clamp_min(0.0)
            logv.append(0.5 * torch.log(top).sum() - 0.5 * r_out * math.log(alpha))
            prs.append(lam.sum().pow(2) / lam.pow(2).sum())
    log_volume = torch.stack(logv)
    entropy = log_volume + 0.5 * r_out * math.log(2 * math.pi * math.e * alpha)
    return BallEstimate(
        log_volume=log_volume,
        pr=torch.stack(prs),
        entropy=entropy,
        r=r_out,
        alpha=float(alpha),
        n_samples=int(n_samples),
    )


def _cov_eigvals(Z: Tensor) -> Tensor:
    """Eigenvalues (descending, length N) of the unbiased covariance of rows of Z [m, N]."""
    m, N = Z.shape
    Zc = Z - Z.mean(0, keepdim=True)
    if m >= N:
        lam = torch.linalg.eigvalsh(Zc.T @ Zc / (m - 1))
    else:  # same non-zero spectrum from the m×m Gram matrix
        lam = torch.linalg.eigvalsh(Zc @ Zc.T / (m - 1))
        lam = torch.cat([lam, lam.new_zeros(N - m)])
    return lam.flip(0)


def participation_ratio(Z: Tensor) -> Tensor:
    """Global dimensionality: PR = (Σ λ)² / Σ λ² = (tr C)² / tr(C²), C = Cov(z) over the set.

    Args:
        Z: representations [n, …] of n samples (flattened to [n, N]).

    Returns:
        0-d tensor in [1, min(n − 1, N)]; = N for isotropic data (up to sampling error
        ≈ N²/n). Computed from the smaller of the N×N covariance and the n×n Gram matrix.
    """
    if Z.ndim < 2 or Z.shape[0] < 2:
        raise ValueError(f"Z must have shape [n, …] with n ≥ 2 samples; got {tuple(Z.shape)}")
    Z = Z.reshape(Z.shape[0], -1)
    Zc = Z - Z.mean(0, keepdim=True)
    M = Zc.T @ Zc if Zc.shape[1] <= Zc.shape[0] else Zc @ Zc.T
    return torch.diagonal(M).sum().pow(2) / M.pow(2).sum()


# ----------------------------------------------------------------------------- per layer


def output_measures(
    model: nn.Module, X: Tensor, chunk: int | None = 256, rtol: float | None = None
) -> Measures:
    """Measures of the input–output map x ↦ f(x) (J = J_x(x_i) ∈ R^{k×d}) at each x_i."""
    return measures(input_jacobian(model, X, chunk=chunk), rtol)


def representation_measures(
    model: nn.Sequential,
    X: Tensor,
    name: str,
    direction: str = "from_input",
    chunk: int | None = 256,
    rtol: float | None = None,
) -> Measures:
    """Measures of a named representation h (``layers.representations(model)``).

    Args:
        direction: ``"from_input"`` — the map x ↦ h (how the network has compressed the input
            by this layer); ``"to_output"`` — the map h ↦ f at h(x_i) (the sensitivity of the
            output to this representation; for a dense layer's input this is MLS_l / LVR_l).

    For a model that is not a plain ``nn.Sequential``, ``name`` is a qualified module name
    (h = that module's output, captured by a hook) and only ``"from_input"`` is available.
    """
    if not (isinstance(model, nn.Sequential) and type(model).forward is nn.Sequential.forward):
        if direction != "from_input":
            raise ValueError("direction='to_output' needs an nn.Sequential (a split point); for "
                             "other models use the dense layers' path sensitivity "
                             "(layer_measures / flatbook.report)")
        from flatbook.probe import Probe

        with Probe(model, X, chunk=chunk) as p:
            _, Jr = p.representation_jacobian(name)
        return measures(Jr, rtol)
    head, tail = _layers.split(model, name)
    if direction == "from_input":
        return measures(input_jacobian(head, X, chunk=chunk), rtol)
    if direction == "to_output":
        with torch.no_grad():
            H = head(X)
        return measures(input_jacobian(tail, H, chunk=chunk), rtol)
    raise ValueError(f"unknown direction {direction!r}; allowed: ['from_input', 'to_output']")


@dataclass(frozen=True)
class LayerMeasures:
    """Per-sample measures of the map h_{l−1} ↦ f for one dense layer l (paper.md §1, v3+).

    Attributes:
        layer: the :class:`flatbook.layers.DenseLayer`.
        h_sqnorm: ‖h_{l−1}(x_i)‖², [n].
        measures: :class:`Measures` of J = ∂f/∂h_{l−1} ∈ R^{k×p}: ``mls`` = MLS_l,
            ``log_lvr`` = log LVR_l, ``ld`` = LD_l, ``frob_sq`` = ‖∂f/∂h_{l−1}‖_F²;
            r = r_l = min(k, p).
        weight_norm: ‖W_l‖₂ (spectral norm), 0-d tensor.
    """

    layer: _layers.DenseLayer
    h_sqnorm: Tensor
    measures: Measures
    weight_norm: Tensor


def layer_measures(
    model: nn.Sequential, X: Tensor, chunk: int | None = 256, rtol: float | None = None
) -> dict[str, LayerMeasures]:
    """MLS_l, LVR_l, LD_l of the map h_{l−1} ↦ f for every dense layer, keyed ``"l1"``, ….

    h_{l−1}(x_i) = ``layer.head(x_i)`` (flattened per sample) and J = ∂f/∂h_{l−1} at it.
    Dense layers are those of :func:`flatbook.layers.dense_layers` (with ``X``, so token-wise
    linear maps are excluded).

    Any other ``nn.Module`` is measured through a :class:`flatbook.probe.Probe`: layers keyed
    by qualified module name, J the path Jacobian ∂f/∂δ = G_l W_l (δ added to the layer's
    input; see :mod:`flatbook.probe`).
    """
    if not (isinstance(model, nn.Sequential) and type(model).forward is nn.Sequential.forward):
        from flatbook.probe import Probe

        res: dict[str, LayerMeasures] = {}
        with Probe(model, X, chunk=chunk) as p:
            for name, r in p.measure(total=False).layers.items():
                res[name] = LayerMeasures(
                    layer=r.layer,  # type: ignore[arg-type]
                    h_sqnorm=r.H.pow(2).sum(1),
                    measures=measures(r.J, rtol),
                    weight_norm=spectral_norm(r.layer.weight),
                )
        return res
    out: dict[str, LayerMeasures] = {}
    for layer in _layers.dense_layers(model, X):
        with torch.no_grad():
            H = layer.head(X)
        J = input_jacobian(layer.tail, H, chunk=chunk)
        with torch.no_grad():
            wn = spectral_norm(layer.weight)
        out[layer.name] = LayerMeasures(
            layer=layer,
            h_sqnorm=H.reshape(H.shape[0], -1).pow(2).sum(1),
            measures=measures(J, rtol),
            weight_norm=wn,
        )
    return out
