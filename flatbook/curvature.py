"""Curvature of the training loss: Hessian, sharpness λ_max(H) and tr H (paper.md §2 L1, T7; §4).

Notation (paper.md §0): L(θ) = (1/n) Σ_i ℓ(f(x_i; θ), y_i) over a fixed data set (the full
training set or a fixed subset — never a fresh minibatch per product), θ ∈ R^P the trainable
parameters flattened in ``named_parameters`` order, H = ∇²_θ L ∈ R^{P×P},
J_i = ∂f(x_i)/∂θ ∈ R^{k×P}, Λ_i = ∇²_f ℓ(f(x_i), y_i) ∈ R^{k×k} (= I for the squared loss).
The Gauss–Newton / generalised Gauss–Newton matrix is G = (1/n) Σ_i J_iᵀ Λ_i J_i; at an
interpolating point of the squared loss G = H (paper.md L1).

Everything here measures the model **in eval mode** (restored afterwards) and, by default,
first runs a determinism probe: two identical passes must give the same loss and gradient,
otherwise curvature is not defined and a :class:`NondeterminismError` names the likely cause.

Public API
----------
- :func:`dense_hessian` — exact H (small models; the reference every estimator is checked against)
- :func:`hvp_operator` — θ-space operator v ↦ Hv, chunked over the data (memory: one chunk)
- :func:`sharpness` — top-k eigenvalues of H by Lanczos, with residuals and HVP count
- :func:`trace` — tr H (exact Gauss–Newton, Hutch++, Hutchinson) with a standard error
- :func:`jacobian_sqnorms`, :func:`gn_trace`, :func:`gauss_newton_matrix` — Gauss–Newton helpers
- :func:`eval_mode` — context manager used by every measurement (flags restored on exit)

Choices (measured in ``bench/curvature_bench.py``, recorded in ``bench/README.md``)
-----------------------------------------------------------------------------------
- λ_max: our own thick-restart Lanczos with full reorthogonalisation (default) beats
  ``scipy.sparse.linalg.eigsh`` (kept as ``solver="eigsh"``) in HVPs at loose tolerances, stays
  in torch (any device) and allows k = P; both ≥ 6× fewer HVPs than PyHessian's power iteration
  at equal accuracy, and 2.3–3.4× faster than curvlinops + ``eigsh`` at P = 1e5–1e7
  (``bench/peers_bench.py``). The Krylov basis is kept in the model's precision, reorthogonalised
  with one blocked Gram–Schmidt pass per step (a second only by the DGKS criterion), and the
  start vector adds the gradient's direction to a seeded Gaussian. For k > 1 a deflation pass
  catches eigenvalues that a single-vector Krylov space misses (exact multiplicities).
- HVPs: reverse-over-reverse (double backward, graph kept for a single chunk) by default; it is
  2–4× faster per product on CPU than ``torch.func.jvp(grad(L))`` (``backend="fwdrev"``). Both
  agree to rounding (tests).
- Per-sample Jacobian norms: by the per-layer rules of ``flatbook.layer_rules`` (``nn.Linear``,
  conv, LayerNorm/BatchNorm affine, Embedding, ViT patch/position embeddings) from the layer
  inputs and the k output gradients — ghost norms or instantiated per-sample gradients, the
  mixed rule of Bu et al. (:func:`gram_costs`), each checked against autograd; ``vmap(jacrev)``
  for every parameter no rule covers. The exact GN trace costs ≈ k gradients on MLPs, CNNs,
  ResNets and ViTs (bench/scale_bench.py, bench/peers_bench.py).
- Memory: HVPs chunk the data (``chunk``); stochastic traces draw, apply and reduce their probes
  ``block`` at a time (default ≤ 2^22 entries per block), never an [n_hvp, P] array.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from flatbook import losses
from flatbook._functional import (
    named_params,
)
from flatbook._validate import check_positive_int
from flatbook.checks import check_tol, passes_agree
from flatbook.curvature_options import SharpnessOptions, TraceOptions
from flatbook.estimators import (  # noqa: F401  (re-exported: the estimators of this module)
    PROBE_BLOCK_ENTRIES,
    TraceResult,
    _probe_block,
    _rademacher,
    hutchinson_trace,
    hutchpp_trace,
)
from flatbook.jacobians import (  # noqa: F401  (re-exported)
    JACOBIAN_METHODS,
    _forward_check,
    _ggn_trace_terms,
    _output_hessians,
    _per_sample_grams,
    check_loss_on_outputs,
    gauss_newton_matrix,
    gn_trace,
    jacobian_sqnorms,
    per_sample_jacobians,
)
from flatbook.keyword_form import resolve, with_positional
from flatbook.lanczos import SharpnessResult, _deflation_check, _lanczos  # noqa: F401
from flatbook.layer_rules import GRAM_BLOCK_ENTRIES, gram_costs  # noqa: F401  (public re-export)
from flatbook.risk import (  # noqa: F401  (re-exported)
    HVP_BACKENDS,
    LossLike,
    NondeterminismError,
    _check_chunk,
    _check_data,
    _check_params,
    _check_seed,
    _FlatLoss,
    _from_numpy_hint,
    _nondeterminism_message,
    _probe_determinism,
    eval_mode,
)

if TYPE_CHECKING:
    from scipy.sparse.linalg import LinearOperator

TRACE_METHODS = ("gn", "hutchpp", "hutchinson")
SOLVERS = ("lanczos", "eigsh")

__all__ = [
    "HVPOperator",
    "NondeterminismError",
    "SharpnessOptions",
    "SharpnessResult",
    "TraceOptions",
    "TraceResult",
    "dense_hessian",
    "eval_mode",
    "gauss_newton_matrix",
    "gn_trace",
    "hvp_operator",
    "jacobian_sqnorms",
    "sharpness",
    "trace",
]


# --------------------------------------------------------------------------------------------
# Hessian-vector products
# --------------------------------------------------------------------------------------------


@dataclass
class HVPOperator:
    """The Hessian H = ∇²L(θ) as an operator on flat parameter vectors (shape [P]).

    ``op(v)`` returns Hv for v of shape [P] (or the rows of V Hᵀ = (HVᵀ)ᵀ for V of shape
    [m, P], batched); every product is counted in ``n_hvp`` (a block of m counts m). Products are
    summed over fixed data chunks weighted by chunk size, so memory is bounded by one chunk
    (backends: see :func:`hvp_operator`). The model is put in eval mode for each call.
    H is taken at the θ the operator was made with (θ is copied; later changes to the model's
    parameters do not affect it).

    Attributes:
        P: number of parameters.
        n: number of samples.
        dtype, device: those of the parameters (products are computed in this dtype).
        theta: the flat parameter vector θ, shape [P] (a copy; the model is not modified).
        n_hvp: Hessian-vector products computed so far.
    """

    _fl: _FlatLoss
    n_hvp: int = 0
    P: int = field(init=False)
    n: int = field(init=False)

    def __post_init__(self) -> None:
        self.P = self._fl.P
        self.n = self._fl.n

    @property
    def dtype(self) -> torch.dtype:
        """dtype of θ and of the products."""
        return self._fl.theta.dtype

    @property
    def device(self) -> torch.device:
        """device of θ and of the products."""
        return self._fl.theta.device

    @property
    def theta(self) -> Tensor:
        """The flat parameter vector θ [P] the Hessian is taken at."""
        return self._fl.theta

    def __call__(self, v: Tensor) -> Tensor:
        v = torch.as_tensor(v)
        if v.ndim == 1 and v.shape[0] == self.P:
            out = self._fl.hvp(v.to(self.dtype))
            self.n_hvp += 1
            return out
        if v.ndim == 2 and v.shape[1] == self.P:
            if v.shape[0] == 0:
                return v.to(self.dtype).clone()
            out = self._fl.hvp_batch(v.to(self.dtype))
            self.n_hvp += v.shape[0]
            return out
        raise ValueError(f"HVP operand must have shape [P] or [m, P] with P = {self.P}; "
                         f"got {tuple(v.shape)}")

    def loss_and_grad(self) -> tuple[Tensor, Tensor]:
        """(L(θ), ∇L(θ)), shapes [] and [P]."""
        return self._fl.value_and_grad()

    def as_linear_operator(self) -> LinearOperator:
        """A ``scipy.sparse.linalg.LinearOperator`` (float64, numpy) for ``eigsh`` & co."""
        from scipy.sparse.linalg import LinearOperator

        def mv(x: np.ndarray) -> np.ndarray:
            v = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
            return self(v.to(self.device)).to(torch.float64).cpu().numpy()

        def mm(x: np.ndarray) -> np.ndarray:
            V = torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.float64).T))
            return self(V.to(self.device)).to(torch.float64).cpu().numpy().T

        return LinearOperator((self.P, self.P), matvec=mv, rmatvec=mv, matmat=mm,
                              dtype=np.float64)


def hvp_operator(
    model: nn.Module,
    loss: LossLike,
    X: Tensor,
    Y: Tensor,
    chunk: int | None = 1024,
    check: bool = True,
    backend: str = "revrev",
) -> HVPOperator:
    """Hessian-vector product operator v ↦ Hv of the full-data (or fixed-subset) loss.

    H = ∇²_θ L(θ), L(θ) = (1/n) Σ_i ℓ(f(x_i; θ), y_i), θ flat ([P], ``named_parameters``
    order), chunk by chunk (L = Σ_c (n_c/n) L_c, so memory is bounded by one chunk).

    Args:
        model: any ``nn.Module``; measured in eval mode (its flags are restored).
        loss: ``"squared"``, ``"cross_entropy"`` or a callable ``loss(output, target)`` that
            averages over samples.
        X: inputs, shape [n, ...].
        Y: targets, shape [n, k] (or [n] class indices for cross-entropy).
        chunk: samples per forward/backward pass (bounds memory); ``None`` = all at once.
        check: run the determinism probe and the finiteness checks first.
        backend: ``"revrev"`` (double backward, graph kept for a single chunk; default, the
            fastest on CPU) or ``"fwdrev"`` (``torch.func.jvp(grad(L))``, forward-over-reverse).
            Both give H v to rounding.

    Returns:
        :class:`HVPOperator`: ``op(v)`` for v [P] or V [m, P], ``op.n_hvp`` counts products,
        ``op.as_linear_operator()`` gives a scipy ``LinearOperator``.
    """
    fl = _FlatLoss(model, loss, X, Y, chunk, backend)
    if check:
        fl.grad = _probe_determinism(fl)[1]
    return HVPOperator(fl)


# --------------------------------------------------------------------------------------------
# dense references
# --------------------------------------------------------------------------------------------


def dense_hessian(model: nn.Module, loss: LossLike, X: Tensor, Y: Tensor,
                  block: int = 64) -> Tensor:
    """Exact Hessian H = ∇²_θ L(θ) of the full-data loss, shape [P, P].

    For small models only (memory P²): the exact reference every estimator is checked against.
    Built column by column from double-backward Hessian-vector products, H e_j =
    ∂(∇L · e_j)/∂θ (Pearlmutter; ``block`` columns per batched product). Not
    ``torch.func.hessian``: its second derivatives through ``F.layer_norm`` with learned
    weights are wrong in torch 2.x (tests compare against finite differences off
    interpolation), double backward is right. Attention uses the math SDPA kernel
    (:func:`eval_mode`).

    Args:
        model: any module; its trainable parameters define θ (flattened in
            ``named_parameters`` order). Evaluated in eval mode.
        loss: ``"squared"``, ``"cross_entropy"`` or a callable ``loss(output, target)``.
        X: inputs, shape [n, ...].
        Y: targets, shape [n, k] (or [n] class indices for cross-entropy).
        block: columns per batched double-backward product.
    """
    _check_data(X, Y)
    check_positive_int(block, "block")
    fl = _FlatLoss(model, loss, X, Y, chunk=None, backend="revrev")
    P = fl.P
    eye = torch.eye(P, dtype=fl.theta.dtype, device=fl.theta.device)
    cols = [fl.hvp_batch(eye[s : s + int(block)]) for s in range(0, P, int(block))]
    fl._graph = None
    return torch.cat(cols).T.contiguous().detach()


# --------------------------------------------------------------------------------------------
# sharpness: top-k eigenvalues by Lanczos
# --------------------------------------------------------------------------------------------


def _start_vector(op: HVPOperator, gen: torch.Generator, dtype: torch.dtype) -> Tensor:
    """Krylov start vector u/‖u‖ + g/‖g‖: a seeded Gaussian u [P] plus the loss gradient's
    direction g = ∇L(θ) when it is non-zero.

    The gradient lies mostly in the span of the top Hessian eigenvectors (Gur-Ari, Roberts &
    Dyer 2018, "Gradient descent happens in a tiny subspace"), so it starts Lanczos closer to
    λ_max's eigenvector: on default-initialised networks (bench/README.md) it saves about one
    product in ten and makes the count nearly seed-independent. The Gaussian half keeps every
    eigendirection in the start with probability 1, so no eigenvalue can be missed for it. The
    gradient costs nothing extra: the determinism probe computes it, or else the pass that
    builds the double-backward graph for the first product does (several chunks: one pass).
    """
    u = torch.randn(op.P, generator=gen, dtype=dtype).to(op.device)
    fl = op._fl
    if fl.grad is None:
        fl.grad = fl.value_and_grad(create_graph=True)[1]
    g = fl.grad.to(dtype)
    gn = float(g.norm())
    u = u / u.norm()
    if math.isfinite(gn) and gn > 0:
        u = u + g / gn
    return u


def _eigsh(op: HVPOperator, k: int, tol: float, v0: Tensor, ncv: int, max_hvp: int
           ) -> tuple[Tensor, Tensor, bool]:
    """Top-k eigenpairs by ARPACK (``scipy.sparse.linalg.eigsh``, which='LA') from ``v0``:
    (values [k] descending, vectors [P, k] on the operator's device, converged)."""
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    P = op.P
    ncv_e = min(P, max(ncv, 2 * k + 1))
    try:
        w, V = eigsh(op.as_linear_operator(), k=k, which="LA", tol=tol, v0=v0.cpu().numpy(),
                     ncv=ncv_e, maxiter=max(1, max_hvp // max(1, ncv_e - k)))
        converged = True
    except ArpackNoConvergence as e:
        w, V = e.eigenvalues, e.eigenvectors
        converged = False
    order = np.argsort(w)[::-1]
    vals = torch.from_numpy(np.ascontiguousarray(w[order]))
    vecs = torch.from_numpy(np.ascontiguousarray(V[:, order])).to(op.device)
    return vals, vecs, converged and vals.numel() >= k


def sharpness(
    model: nn.Module,
    loss: LossLike,
    X: Tensor,
    Y: Tensor,
    *args: Any,
    options: SharpnessOptions | None = None,
    **flags: Any,
) -> SharpnessResult:
    """Top-k eigenvalues λ_1 ≥ … ≥ λ_k of the loss Hessian H (sharpness, paper.md §1, T7).

    Krylov (Lanczos) iteration on v ↦ Hv (:func:`hvp_operator`) from a seeded Gaussian start
    vector plus the gradient's direction (``_start_vector``), stopped when every Ritz pair
    satisfies ‖Hv − λv‖ ≤ tol·|λ| (then |λ − λ_true| ≤ tol·|λ|, and typically
    ≤ (tol·λ)²/gap). The residuals reported are then
    computed from Hessian-vector products (see :class:`SharpnessResult`). The Krylov basis is
    kept in the parameters' precision (float32 for a float32 model, float64 for float64; the
    projected matrix and its eigenproblem are always float64). Eigenvalues are the largest
    *algebraic* ones: away from a minimum H may be indefinite and negative eigenvalues are not
    "sharp".

    Args:
        model, loss, X, Y: as in :func:`hvp_operator` (X [n, ...], Y [n, k] or [n]).
        *args: ``k``, ``tol``, ``seed`` given positionally (optional).
        options: a :class:`SharpnessOptions` (``k``, ``tol``, ``seed``, ``solver``, ``chunk``,
            ``ncv``, ``max_hvp``, ``verify``, ``check``, ``backend``: see there).
        **flags: the same options as keywords (``tol=1e-4``), over ``options``; an unknown
            keyword is a ``TypeError`` naming it.

    Returns:
        :class:`SharpnessResult` (``.values`` [k], ``.residuals`` [k], ``.vectors`` [P, k],
        ``.n_hvp``, ``.converged``, ``.lambda_max``).
    """
    o = resolve(SharpnessOptions, "sharpness", options,
                with_positional("sharpness", ("k", "tol", "seed"), args, flags))
    k, tol, seed = _check_sharpness_options(o)
    op = hvp_operator(model, loss, X, Y, chunk=o.chunk, check=o.check, backend=o.backend)
    P = op.P
    ncv = _krylov_size(o, k, P)
    max_hvp = int(o.max_hvp)
    gen = torch.Generator().manual_seed(seed)
    # the Krylov basis is kept in the parameters' precision (float32 models: float32, half the
    # memory traffic of the reorthogonalisation; the products are float32 anyway), never below
    bt = op.dtype if op.dtype in (torch.float32, torch.float64) else torch.float32
    residuals: Tensor | None = None

    v0 = _start_vector(op, gen, bt if o.solver == "lanczos" else torch.float64)
    if o.solver == "lanczos":
        vals, vecs, residuals, converged, _ = _lanczos(op, P, k, tol, v0, ncv, max_hvp, gen)
    else:
        vals, vecs, converged = _eigsh(op, k, tol, v0, ncv, max_hvp)

    verify = k > 1 if o.verify is None else o.verify
    if verify and k < P and vals.numel() == k:
        vals, vecs, ok, swapped = _deflation_check(op, vals, vecs, tol, ncv, max_hvp, gen, bt)
        converged = converged and ok
        if swapped:
            residuals = None
    return _sharpness_result(op, vals, vecs, residuals, bool(converged), o, tol)


def _check_sharpness_options(o: SharpnessOptions) -> tuple[int, float, int]:
    """(k, tol, seed) of ``o``, validated before any model call (``ValueError`` naming the
    bad option: solver, k, tol, max_hvp or seed)."""
    if o.solver not in SOLVERS:
        raise ValueError(f"unknown solver {o.solver!r}; allowed: {list(SOLVERS)}")
    k = check_positive_int(o.k, "k")
    tol = check_tol(o.tol)
    check_positive_int(o.max_hvp, "max_hvp")
    seed = _check_seed(o.seed)
    return int(k), tol, seed


def _krylov_size(o: SharpnessOptions, k: int, P: int) -> int:
    """The Krylov basis size ncv for k eigenvalues of a P × P Hessian: ``o.ncv`` checked
    (k < ncv ≤ P, or ncv = P ≥ k), else the solver's default; ``ValueError`` when k does not
    fit the solver (k ≤ P for Lanczos, k < P for eigsh)."""
    if k > P or (o.solver == "eigsh" and k >= P):
        limit = f"k < P = {P}" if o.solver == "eigsh" else f"k ≤ P = {P}"
        raise ValueError(f"k = {k} too large for solver {o.solver!r}: need {limit} "
                         "(use dense_hessian for the full spectrum of a tiny model)")
    ncv = o.ncv
    if ncv is None:  # Lanczos: ≤ 64 basis vectors and ≲ 2^27 stored entries; eigsh: scipy's
        return min(P, max(2 * k + 1, min(64, (1 << 27) // P) if o.solver == "lanczos" else 20))
    if int(ncv) != ncv or not (k < ncv <= P or (ncv == P >= k)):
        raise ValueError(f"ncv must be an integer with k < ncv ≤ P (k = {k}, P = {P}); got {ncv}")
    return int(ncv)


def _sharpness_result(op: HVPOperator, vals: Tensor, vecs: Tensor, residuals: Tensor | None,
                      converged: bool, o: SharpnessOptions, tol: float) -> SharpnessResult:
    """The :class:`SharpnessResult` of eigenvalues ``vals`` [k] with vectors ``vecs`` [P, k]
    (normalised, float64): residuals ‖Hv − λv‖ from k more products unless the solver gave
    them; a ``RuntimeWarning`` when it did not converge."""
    vecs = vecs.to(torch.float64)
    vecs = vecs / vecs.norm(dim=0, keepdim=True)
    if residuals is None:
        # residuals with k explicit products: ‖Hv − λv‖ for unit v (eigsh, or vectors swapped
        # in by the deflation check); Lanczos computes them from its stored products
        HV = op(vecs.T.contiguous()).to(torch.float64)  # [k, P]
        residuals = (HV - vals.to(HV.device).unsqueeze(1) * vecs.T).norm(dim=1).cpu()
    vals = vals.cpu()
    if not converged:
        warnings.warn(
            f"sharpness: {o.solver} did not reach tol={tol:g} within max_hvp={o.max_hvp}; "
            f"residuals {residuals.tolist()}", RuntimeWarning, stacklevel=3)
    return SharpnessResult(values=vals, residuals=residuals, vectors=vecs.cpu(),
                           n_hvp=op.n_hvp, converged=converged, solver=o.solver,
                           tol=float(tol))


# --------------------------------------------------------------------------------------------
# trace
# --------------------------------------------------------------------------------------------


def trace(
    model: nn.Module,
    loss: LossLike,
    X: Tensor,
    Y: Tensor,
    *args: Any,
    options: TraceOptions | None = None,
    **flags: Any,
) -> TraceResult:
    """Trace of the loss Hessian, tr H (paper.md §1; L1: = (1/n) Σ‖J_i‖_F² at interpolation).

    Methods:
        ``"gn"``: exact tr G = (1/n) Σ_i tr(Λ_i J_i J_iᵀ) from per-sample parameter Jacobians
            J_i [k, P] (per-layer rules, ``vmap(jacrev)`` for the rest), Λ_i = ∇²_f ℓ [k, k].
            For the squared loss this is (1/n) Σ_i ‖J_i‖_F², which **equals tr H only at
            interpolation** (f(x_i) = y_i); for cross-entropy it is the GGN (= Fisher) trace,
            never exactly tr H. ``stderr = 0``, ``n_hvp = 0``.
        ``"hutchinson"``: (1/m) Σ_j z_jᵀ H z_j, z_j Rademacher, m = ``n_hvp``;
            stderr = std(z_jᵀHz_j)/√m.
        ``"hutchpp"``: Hutch++ (Meyer, Musco, Musco & Woodruff 2021): sketch S (m/3 Rademacher
            columns), Q = orth(H S), value = tr(QᵀHQ) + Hutchinson on (I−QQᵀ)H(I−QQᵀ) with the
            remaining probes; unbiased, stderr from the residual probes. Uses exactly ``n_hvp``
            products (n_hvp ≥ 4).

    Args:
        model, loss, X, Y: as in :func:`hvp_operator`.
        *args: ``method``, ``n_hvp``, ``seed`` given positionally (optional).
        options: a :class:`TraceOptions` (``method``, ``n_hvp``, ``seed``, ``chunk``,
            ``block``, ``check``, ``backend``: see there).
        **flags: the same options as keywords (``method="hutchpp"``), over ``options``; an
            unknown keyword is a ``TypeError`` naming it.
    """
    o = resolve(TraceOptions, "trace", options,
                with_positional("trace", ("method", "n_hvp", "seed"), args, flags))
    if o.method not in TRACE_METHODS:
        raise ValueError(f"unknown trace method {o.method!r}; allowed: {list(TRACE_METHODS)}")
    n_hvp = check_positive_int(o.n_hvp, "n_hvp")
    _probe_block(o.block, 1)  # validate early
    seed = _check_seed(o.seed)
    n_hvp = int(n_hvp)
    if o.method == "gn":
        return _exact_gn_trace(model, loss, X, Y, o)
    if o.method == "hutchinson" and n_hvp < 2:
        raise ValueError(f"n_hvp must be ≥ 2 for hutchinson (a standard error needs two "
                         f"probes); got {n_hvp}")
    if o.method == "hutchpp" and n_hvp < 4:
        raise ValueError(f"n_hvp must be ≥ 4 for hutchpp (sketch, projection and ≥ 2 residual "
                         f"probes); got {n_hvp}")
    op = hvp_operator(model, loss, X, Y, chunk=o.chunk, check=o.check, backend=o.backend)
    estimate = hutchinson_trace if o.method == "hutchinson" else hutchpp_trace
    return estimate(op, n_hvp, seed, o.block)


def _exact_gn_trace(model: nn.Module, loss: LossLike, X: Tensor, Y: Tensor,
                    o: TraceOptions) -> TraceResult:
    """tr G = (1/n) Σ_i tr(Λ_i J_i J_iᵀ) exactly (``method="gn"`` of :func:`trace`); with
    ``o.check`` the outputs f(X) [n, k] of a separate forward pass must equal those of the
    Jacobian pass (else :class:`NondeterminismError`)."""
    n = _check_data(X, Y)
    loss_fn = losses.get(loss)
    _check_params(named_params(model))
    gchunk = None if o.chunk is None or o.chunk >= n else o.chunk
    F1 = _forward_check(model, loss_fn, X, Y, gchunk) if o.check else None
    terms, F2 = _ggn_trace_terms(model, loss_fn, X, Y, gchunk, with_outputs=True)
    if F1 is not None:
        if not passes_agree(F1, F2):
            df = float((F1 - F2).norm())
            raise NondeterminismError(_nondeterminism_message(f"‖Δf‖ = {df:.3g}"))
    return TraceResult(value=float(terms.sum() / n), stderr=0.0, n_hvp=0, method="gn")
