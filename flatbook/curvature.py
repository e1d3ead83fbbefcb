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
- Per-sample Jacobian norms: for ``nn.Linear`` and ``nn.Conv1d/2d`` (groups = 1, zero padding)
  from the layer inputs and the k output gradients, per layer the cheaper of "ghost norms"
  (∝ T² positions) and instantiated per-sample gradients (∝ p·d) — the mixed rule of Bu et al.
  (:func:`gram_costs`); validated against autograd, exact; ``vmap(jacrev)`` for everything
  else. 20–60× faster than ``vmap(jacrev)`` alone on MLPs; exact tr G of LeNet-5 in ≈ 7–10
  gradients (bench/scale_bench.py), at or ahead of BackPACK's exact GGN diagonal.
- Memory: HVPs chunk the data (``chunk``); stochastic traces draw, apply and reduce their probes
  ``block`` at a time (default ≤ 2^22 entries per block), never an [n_hvp, P] array.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, hessian, jacrev, jvp, vmap

from flatbook import losses
from flatbook._functional import (
    batched_grad,
    flatten,
    forward_fn,
    grad_of_sum,
    named_params,
    unflatten,
)
from flatbook.checks import check_tol

if TYPE_CHECKING:
    from scipy.sparse.linalg import LinearOperator

LossLike = str | Callable[[Tensor, Tensor], Tensor]

TRACE_METHODS = ("gn", "hutchpp", "hutchinson")
SOLVERS = ("lanczos", "eigsh")
HVP_BACKENDS = ("revrev", "fwdrev")
JACOBIAN_METHODS = ("auto", "jacrev")

__all__ = [
    "HVPOperator",
    "NondeterminismError",
    "SharpnessResult",
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


class NondeterminismError(RuntimeError):
    """Two identical evaluations of the loss or its gradient differed (curvature undefined)."""


# --------------------------------------------------------------------------------------------
# input checks and eval mode
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` (every submodule) in eval mode; restore each submodule's flag on exit.

    For the body, scaled-dot-product attention also uses its math kernel
    (``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``) and the fused
    ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` fast path is off
    (``torch.backends.mha.set_fastpath_enabled(False)``): the fused CPU kernels have no double
    backward, the math kernel computes the same function with one. Both are restored on exit.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    flags = [(m, m.training) for m in model.modules()]
    fast = torch.backends.mha.get_fastpath_enabled()
    model.eval()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield model
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
        for m, t in flags:
            m.training = t


def _from_numpy_hint(value: object, name: str) -> str:
    """' (convert it with torch.from_numpy(name))' for a numpy array, else ''."""
    return (f" (convert it with torch.from_numpy({name}))"
            if isinstance(value, np.ndarray) else "")


def _check_data(X: Tensor, Y: Tensor | None = None) -> int:
    if not isinstance(X, Tensor):
        raise TypeError(f"X must be a torch.Tensor of shape [n, ...]; got {type(X).__name__}"
                        f"{_from_numpy_hint(X, 'X')}")
    if X.ndim == 0:
        raise ValueError("X must have shape [n, ...] (a leading sample axis); got a scalar")
    n = X.shape[0]
    if n == 0:
        raise ValueError("X is empty (n = 0 samples): curvature needs at least one sample")
    if Y is not None:
        if not isinstance(Y, Tensor):
            raise TypeError(f"Y must be a torch.Tensor; got {type(Y).__name__}"
                            f"{_from_numpy_hint(Y, 'Y')}")
        if Y.ndim == 0 or Y.shape[0] != n:
            raise ValueError(
                f"X and Y must have the same number of samples; got X {tuple(X.shape)}, "
                f"Y {tuple(Y.shape)}"
            )
    return int(n)


def _check_params(params: Mapping[str, Tensor]) -> None:
    if torch.is_inference_mode_enabled():
        raise RuntimeError("curvature needs autograd: do not call it inside torch.inference_mode() "
                           "(torch.no_grad() is fine)")
    if not params:
        raise ValueError("model has no trainable parameters (P = 0)")
    bad = [n for n, p in params.items() if not torch.isfinite(p).all()]
    if bad:
        raise ValueError(f"model has non-finite (nan/inf) parameters in {bad}")


def _check_chunk(chunk: int | None, n: int) -> int:
    if chunk is None:
        return n
    if int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk must be a positive integer (samples per pass) or None; "
                         f"got {chunk!r}")
    return min(int(chunk), n)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    return int(seed)


# --------------------------------------------------------------------------------------------
# the loss as a function of the flat parameter vector, chunked over the data
# --------------------------------------------------------------------------------------------


class _FlatLoss:
    """L(θ) = Σ_c (n_c/n) L_c(θ) over fixed chunks c of the data; θ a flat vector [P].

    Valid for any loss that averages over samples (``losses.squared``, ``losses.cross_entropy``
    and any callable with mean reduction): the chunk-size weights then reproduce the full-data
    mean exactly (up to rounding).

    Two interchangeable HVP backends (same products up to rounding; tests check both):

    - ``"fwdrev"``: forward-over-reverse, ``torch.func.jvp(torch.func.grad(L_c))``, recomputed
      for every product; batched products by ``vmap`` over the tangents.
    - ``"revrev"``: reverse-over-reverse (Pearlmutter's double backward with ``torch.autograd``):
      ∇L_c is built once with ``create_graph=True`` and Hv = ∂(∇L_c · v)/∂θ. With a single chunk
      the graph is kept between products (memory: one chunk's double-backward graph), with
      several chunks it is rebuilt chunk by chunk, so memory stays bounded by one chunk either
      way. On CPU with torch 2.13 it is 2–8× faster per product (bench/README.md).
    """

    def __init__(self, model: nn.Module, loss: LossLike, X: Tensor, Y: Tensor,
                 chunk: int | None, backend: str = "revrev") -> None:
        if backend not in HVP_BACKENDS:
            raise ValueError(f"unknown HVP backend {backend!r}; allowed: {list(HVP_BACKENDS)}")
        self.backend = backend
        self.n = _check_data(X, Y)
        self.loss_fn = losses.get(loss)
        self.model = model
        self.params = named_params(model)
        _check_params(self.params)
        self.theta = flatten(self.params)
        self.P = self.theta.numel()
        self.buffers = dict(model.named_buffers())
        c = _check_chunk(chunk, self.n)
        self.chunks = [(X[s : s + c], Y[s : s + c]) for s in range(0, self.n, c)]
        self.weights = [xc.shape[0] / self.n for xc, _ in self.chunks]
        self._graph: tuple[tuple[Tensor, ...], Tensor] | None = None  # (leaves, ∇L_c)
        self.grad: Tensor | None = None  # ∇L(θ) [P] once some pass has computed it

    def chunk_loss(self, Xc: Tensor, Yc: Tensor) -> Callable[[Tensor], Tensor]:
        model, params, buffers, loss_fn = self.model, self.params, self.buffers, self.loss_fn

        def L(theta: Tensor) -> Tensor:
            out = functional_call(model, (unflatten(theta, params), buffers), (Xc,))
            return loss_fn(out, Yc)

        return L

    def _grad_graph(self, Xc: Tensor, Yc: Tensor, create_graph: bool
                    ) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
        """(per-parameter leaves, L_c, flat ∇L_c [P]) with plain autograd (model in eval mode).

        One leaf per parameter tensor, not slices of one flat leaf: the backward of a slice
        writes a zero-filled [P] tensor per parameter, which cost ≈ 20% of an HVP at P ≈ 1e6.
        """
        leaves = tuple(t.detach().requires_grad_(True)
                       for t in unflatten(self.theta, self.params).values())
        with torch.enable_grad():
            out = functional_call(self.model, (dict(zip(self.params, leaves, strict=True)),
                                               self.buffers), (Xc,))
            lc = self.loss_fn(out, Yc)
            gs = torch.autograd.grad(lc, leaves, create_graph=create_graph, allow_unused=True,
                                     materialize_grads=True)
            gc = torch.cat([g.reshape(-1) for g in gs])
        return leaves, lc, gc

    def value_and_grad(self, create_graph: bool = False) -> tuple[Tensor, Tensor]:
        """(L(θ), ∇L(θ)) over the whole data, shapes [] and [P].

        With ``create_graph`` and a single chunk the double-backward graph is kept for
        ``"revrev"`` products (the determinism probe's first pass builds it for free).
        """
        value = torch.zeros((), dtype=self.theta.dtype, device=self.theta.device)
        g = torch.zeros_like(self.theta)
        keep = create_graph and self.backend == "revrev" and len(self.chunks) == 1
        with eval_mode(self.model):
            for (Xc, Yc), w in zip(self.chunks, self.weights, strict=True):
                leaves, lc, gc = self._grad_graph(Xc, Yc, create_graph=keep)
                if keep:
                    self._graph = (leaves, gc)
                value = value + w * lc.detach()
                g = g + w * gc.detach()
        return value, g

    def _revrev(self, V: Tensor, batched: bool) -> Tensor:
        out = torch.zeros_like(V)

        def dd(gc: Tensor, leaves: tuple[Tensor, ...], v: Tensor, batched: bool) -> Tensor:
            if batched:
                hs = batched_grad(gc, leaves, v, materialize=True)
            else:  # Hv = ∇(∇L·v): a scalar output (grad_outputs=v makes torch import sympy,
                # ~0.7 s on the first call of a process)
                hs = torch.autograd.grad((gc * v).sum(), leaves, retain_graph=True,
                                         allow_unused=True, materialize_grads=True)
            if batched:
                return torch.cat([h.reshape(h.shape[0], -1) for h in hs], dim=1)
            return torch.cat([h.reshape(-1) for h in hs])

        with eval_mode(self.model):
            for (Xc, Yc), w in zip(self.chunks, self.weights, strict=True):
                if len(self.chunks) == 1:
                    if self._graph is None:
                        leaves, _, gc = self._grad_graph(Xc, Yc, create_graph=True)
                        self._graph = (leaves, gc)
                    leaves, gc = self._graph
                else:
                    leaves, _, gc = self._grad_graph(Xc, Yc, create_graph=True)
                with torch.enable_grad():
                    hv = dd(gc, leaves, V, batched)
                if len(self.chunks) == 1 and w == 1.0:
                    out = hv.detach()
                else:
                    out.add_(hv.detach(), alpha=w)
        return out

    def hvp(self, v: Tensor) -> Tensor:
        """Hv, v shape [P] → [P]."""
        if self.backend == "revrev":
            return self._revrev(v, batched=False)
        out = torch.zeros_like(self.theta)
        with eval_mode(self.model), torch.no_grad():
            for (Xc, Yc), w in zip(self.chunks, self.weights, strict=True):
                _, hv = jvp(grad(self.chunk_loss(Xc, Yc)), (self.theta,), (v,))
                out = out + w * hv.detach()
        return out

    def hvp_batch(self, V: Tensor) -> Tensor:
        """H V for a block of vectors, V shape [m, P] → [m, P] (batched over the vectors)."""
        if self.backend == "revrev":
            return self._revrev(V, batched=True)
        out = torch.zeros_like(V)
        theta = self.theta
        with eval_mode(self.model), torch.no_grad():
            for (Xc, Yc), w in zip(self.chunks, self.weights, strict=True):
                g = grad(self.chunk_loss(Xc, Yc))

                def one(v: Tensor, g: Callable[[Tensor], Tensor] = g) -> Tensor:
                    return jvp(g, (theta,), (v,))[1]

                out = out + w * vmap(one)(V).detach()
        return out


def _nondeterminism_message(diff: str) -> str:
    return ("the loss is not a deterministic function of the parameters: two identical passes "
            "(model in eval mode) gave " + diff + ". Likely causes: a "
            "module that stays stochastic in eval mode (dropout called with training=True, "
            "noise injection), BatchNorm/statistics computed from the batch (train-mode "
            "BatchNorm), or a loss/data pipeline that shuffles, subsamples or augments on every "
            "call; on GPUs also non-deterministic kernels (see "
            "torch.use_deterministic_algorithms). Curvature needs a fixed data set and a "
            "deterministic θ ↦ L(θ); pass check=False only if the difference is rounding.")


def _probe_determinism(fl: _FlatLoss) -> tuple[Tensor, Tensor]:
    """Two passes over the same data must give the same loss and gradient (else raise)."""
    l1, g1 = fl.value_and_grad(create_graph=True)
    l2, g2 = fl.value_and_grad()
    if not torch.isfinite(l1):
        raise ValueError(f"loss is not finite at the current parameters (L = {l1.item()})")
    if not torch.isfinite(g1).all():
        raise ValueError("gradient of the loss is not finite at the current parameters")
    eps = torch.finfo(l1.dtype).eps
    dl = (l1 - l2).abs().item()
    dg = (g1 - g2).norm().item()
    if dl > 64 * eps * max(abs(l1.item()), 1e-30) or dg > 64 * eps * max(g1.norm().item(), 1e-30):
        raise NondeterminismError(_nondeterminism_message(
            f"|ΔL| = {dl:.3g}, ‖Δ∇L‖ = {dg:.3g}"))
    return l1, g1


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
        return self._fl.theta.dtype

    @property
    def device(self) -> torch.device:
        return self._fl.theta.device

    @property
    def theta(self) -> Tensor:
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
    if isinstance(block, bool) or int(block) != block or block < 1:
        raise ValueError(f"block must be a positive integer; got {block!r}")
    fl = _FlatLoss(model, loss, X, Y, chunk=None, backend="revrev")
    P = fl.P
    eye = torch.eye(P, dtype=fl.theta.dtype, device=fl.theta.device)
    cols = [fl.hvp_batch(eye[s : s + int(block)]) for s in range(0, P, int(block))]
    fl._graph = None
    return torch.cat(cols).T.contiguous().detach()


def _auto_chunk(model: nn.Module, X: Tensor, n_params: int) -> int:
    """Samples per chunk so that a [b, k, P] Jacobian block has ≲ 2^24 entries."""
    with torch.no_grad(), eval_mode(model):
        k = model(X[:1]).numel()
    return max(1, min(X.shape[0], (1 << 24) // max(1, k * n_params)))


def per_sample_jacobians(model: nn.Module, X: Tensor, chunk: int | None = None,
                         names: list[str] | None = None) -> Iterator[dict[str, Tensor]]:
    """Yield per-sample parameter Jacobians J_i = ∂f(x_i)/∂θ chunk by chunk:
    ``{name: Tensor[b, k, *param_shape]}`` for the b samples of each chunk of X [n, …].

    ``vmap(jacrev)`` over samples, in eval mode; ``names`` restricts the Jacobian to those
    parameters (the others are held fixed); ``chunk=None`` sizes chunks automatically.
    Memory per chunk is b·k·P: for whole-network Gram/NTK quantities on small models.
    """
    params = named_params(model)
    _check_params(params)
    f = forward_fn(model)
    sub = list(params) if names is None else list(names)
    fixed = {n: p for n, p in params.items() if n not in sub}

    def f1(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return f({**fixed, **p}, x.unsqueeze(0)).squeeze(0)

    jac = vmap(jacrev(f1), in_dims=(None, 0))
    n = X.shape[0]
    if chunk is None:
        chunk = _auto_chunk(model, X, sum(params[m].numel() for m in sub))
    c = _check_chunk(chunk, n)
    psub = {m: params[m] for m in sub}
    with eval_mode(model):
        for start in range(0, n, c):
            yield {name: J.detach() for name, J in jac(psub, X[start : start + c]).items()}


_CONV_TYPES = (nn.Conv1d, nn.Conv2d)
#: entries of the largest intermediate per sub-batch when forming per-sample Gram blocks
GRAM_BLOCK_ENTRIES = 1 << 24


def _ghost_supported(m: nn.Module) -> bool:
    """Layers whose per-sample weight gradient is Σ_t δ_t u_tᵀ with u_t from ``unfold``."""
    if isinstance(m, nn.Linear):
        return True
    if isinstance(m, _CONV_TYPES):
        return (m.groups == 1 and m.padding_mode == "zeros"
                and _conv_padding(m) is not None)
    return False


def _conv_padding(m: nn.Module) -> tuple[int, ...] | None:
    """Symmetric zero padding per spatial axis (``"same"`` only when it is symmetric)."""
    if not isinstance(m.padding, str):
        return tuple(m.padding)
    if m.padding == "valid":
        return (0,) * len(m.kernel_size)
    tot = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size, strict=True)]
    return None if any(t % 2 for t in tot) else tuple(t // 2 for t in tot)


def _patches(m: nn.Module, h: Tensor, b: int) -> Tensor:
    """The layer input as [b, T, d]: rows u_t with z_t = W u_t (+ bias) at each of T positions.

    ``nn.Linear``: u_t = h_t (T = token positions × leading axes, d = in_features).
    ``nn.Conv1d/2d`` (groups = 1, zero padding): u_t = the receptive field at output position
    t (what ``torch.nn.functional.unfold`` gives; d = C_in·∏kernel, T = ∏ output spatial
    size), in the order of ``W.reshape(C_out, -1)``.
    """
    if isinstance(m, nn.Linear):
        return h.reshape(b, -1, h.shape[-1])
    nd = len(m.kernel_size)
    pad = _conv_padding(m)
    assert pad is not None
    x = h.reshape(b, *h.shape[-(nd + 1):])
    if any(pad):
        x = nn.functional.pad(x, [q for pp in reversed(pad) for q in (pp, pp)])
    C, sp = x.shape[1], x.shape[2:]
    ks, st, dl = m.kernel_size, m.stride, m.dilation
    out = [(sp[i] - dl[i] * (ks[i] - 1) - 1) // st[i] + 1 for i in range(nd)]
    sb, sc, *ss = x.stride()
    # a strided view [b, *out, C, *kernel] (no copy; ``unfold``/im2col is ~6× slower on CPU)
    view = x.as_strided((b, *out, C, *ks),
                        (sb, *(ss[i] * st[i] for i in range(nd)), sc,
                         *(ss[i] * dl[i] for i in range(nd))))
    return view.reshape(b, math.prod(out), C * math.prod(ks))  # [b, T, d]


def _output_grads(m: nn.Module, d: Tensor, k: int, b: int) -> Tensor:
    """δ = ∂f_c/∂z as [k, b, T, p] (p = out_features / out_channels)."""
    if isinstance(m, nn.Linear):
        return d.reshape(k, b, -1, d.shape[-1])
    return d.reshape(k, b, d.shape[2], -1).transpose(2, 3)


def gram_costs(T: int, d: int, p: int, k: int) -> tuple[int, int]:
    """Multiply-adds per sample of the two ways to get K = J^(W) J^(W)ᵀ [k, k] of one layer.

    With z_t = W u_t at T positions (W [p, d]) and δ_{c,t} = ∂f_c/∂z_t ∈ R^p,
    ∂f_c/∂W = Σ_t δ_{c,t} u_tᵀ and K_{cc'} = Σ_{t,s} (δ_{c,t}·δ_{c',s}) (u_t·u_s):

    - ghost norms (Goodfellow; Li et al.; Bu et al.): A = U Uᵀ [T, T], then K from A and δ:
      T²·d + k·T²·p + k²·T·p — grows as T²;
    - instantiation: G_c = Σ_t δ_{c,t} u_tᵀ [p, d] for every c, then K = ⟨G_c, G_c'⟩:
      k·T·p·d + k²·p·d — grows as p·d.

    The mixed rule (Bu et al. 2022) takes the cheaper, per layer (for k = 1 it is ghost iff
    T²(d + p) < T·p·d, essentially their 2T² < p·d). Returns (ghost, instantiate).
    """
    return T * T * d + k * T * T * p + k * k * T * p, k * T * p * d + k * k * p * d


def _layer_gram(D: Tensor, U: Tensor) -> Tensor:
    """K_b = Σ over positions of the per-sample weight-gradient Gram, [b, k, k].

    D [k, b, T, p] output gradients, U [b, T, d] patches; the cheaper of ghost norms and
    instantiated per-sample gradients (:func:`gram_costs`), in sub-batches of samples so that
    no intermediate exceeds ``GRAM_BLOCK_ENTRIES`` entries.
    """
    k, b, T, p = D.shape
    d = U.shape[2]
    if T == 1:
        return (torch.einsum("cbm,ebm->bce", D[:, :, 0], D[:, :, 0])
                * U[:, 0].pow(2).sum(1)[:, None, None])
    ghost, inst = gram_costs(T, d, p, k)
    per = max(T * T + k * T * p, 1) if ghost < inst else max(k * p * d, 1)
    sb = max(1, min(b, GRAM_BLOCK_ENTRIES // per))
    out = []
    for s in range(0, b, sb):
        Dc, Uc = D[:, s : s + sb], U[s : s + sb]
        if ghost < inst:
            A = Uc @ Uc.transpose(1, 2)  # [b, T, T]
            AD = torch.einsum("bts,ebsm->ebtm", A, Dc)
            out.append(torch.einsum("cbtm,ebtm->bce", Dc, AD))
        else:
            G = torch.einsum("cbtm,btd->cbmd", Dc, Uc)  # per-sample gradients [k, b, p, d]
            out.append(torch.einsum("cbmd,ebmd->bce", G, G))
    return torch.cat(out)


def _linear_grams(model: nn.Module, Xc: Tensor, params: Mapping[str, Tensor]
                  ) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-sample Gram blocks K_i^(name) = J_i^(name) J_i^(name)ᵀ [b, k, k] for dense and
    convolutional layers (``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` with groups = 1 and zero
    padding).

    For z_t = W u_t + b at positions t (token positions / repeated calls for a Linear, output
    pixels for a conv, u_t its unfolded receptive field), ∂f_c(x_i)/∂W = Σ_t δ_{c,t} u_tᵀ with
    δ = ∂f_c/∂z, so K^(W)_{cc'} = Σ_{t,t'} (δ_{c,t}·δ_{c',t'}) (u_t·u_{t'}) and K^(b)_{cc'} =
    (Σ_t δ_{c,t})·(Σ_t δ_{c',t}) without the [b, k, P] Jacobian (paper.md L2: for one position,
    ‖∇_W f_c‖_F = ‖δ_c‖ ‖h‖). Per layer the cheaper of ghost norms and instantiated per-sample
    gradients is used (:func:`gram_costs`, the mixed rule of Bu et al.). Costs k backward
    passes of the chunk (to the layer outputs only). Every parameter is validated: the total
    gradient of Σ_i r_iᵀ f(x_i) (random r) rebuilt from (δ, u) must match autograd's; a
    parameter that fails (e.g. a weight also used outside its module's forward) is left out and
    handled by the exact ``jacrev`` path. Returns (outputs [b, k], {name: K}).
    """
    by_id = {id(p): n for n, p in model.named_parameters() if n in params}
    calls: dict[nn.Module, list[tuple[Tensor, Tensor]]] = {}

    def hook(mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        calls.setdefault(mod, []).append((inp[0].detach(), out))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if _ghost_supported(m) and id(m.weight) in by_id]
    try:
        with torch.enable_grad():
            F = model(Xc)
    finally:
        for h in handles:
            h.remove()
    if F.ndim != 2 or not calls:
        return F.detach(), {}
    b, k = F.shape
    mods = list(calls)
    zs = [z for m in mods for _, z in calls[m]]
    eye = torch.eye(k, dtype=F.dtype, device=F.device).unsqueeze(1).expand(k, b, k)
    deltas = batched_grad(F, zs, eye)
    r = torch.randn(b, k, generator=torch.Generator().manual_seed(0), dtype=F.dtype).to(F.device)
    targets = [p for m in mods for p in (m.weight, m.bias) if p is not None and id(p) in by_id]
    true_grads = dict(zip(map(id, targets),
                          grad_of_sum(F, r, targets), strict=True))
    out: dict[str, Tensor] = {}
    i = 0
    tol = 1e3 * torch.finfo(F.dtype).eps
    for m in mods:
        hs, ds = [], []
        ok = True
        for h, _ in calls[m]:
            if deltas[i] is None:
                ok = False
            else:
                hs.append(_patches(m, h, b))
                ds.append(_output_grads(m, deltas[i], k, b))
            i += 1
        if not ok:
            continue
        H_ = hs[0] if len(hs) == 1 else torch.cat(hs, dim=1)  # [b, T, d]
        D = ds[0] if len(ds) == 1 else torch.cat(ds, dim=2)  # [k, b, T, p]
        W_name = by_id[id(m.weight)]
        tg = true_grads[id(m.weight)]
        if tg is not None:
            gW = torch.einsum("bc,cbtm,btd->md", r, D, H_)
            tg = tg.reshape(tg.shape[0], -1)
            if (gW - tg).norm() <= tol * max(gW.norm().item(), 1e-300):
                out[W_name] = _layer_gram(D, H_)
        if m.bias is not None and id(m.bias) in by_id and true_grads[id(m.bias)] is not None:
            Ds = D.sum(2)  # [k, b, p]
            gb = torch.einsum("bc,cbm->m", r, Ds)
            if (gb - true_grads[id(m.bias)]).norm() <= tol * max(gb.norm().item(), 1e-300):
                out[by_id[id(m.bias)]] = torch.einsum("cbm,ebm->bce", Ds, Ds)
    return F.detach(), {n: K.detach() for n, K in out.items()}


def _per_sample_grams(model: nn.Module, X: Tensor, chunk: int | None, method: str = "auto"
                      ) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
    """Yield (outputs [b, k], {name: K [b, k, k]}) per chunk, K = J^(name) J^(name)ᵀ per sample.

    ``method="auto"``: dense layers by :func:`_linear_grams`, every other parameter by
    ``vmap(jacrev)``; ``"jacrev"``: everything by ``vmap(jacrev)``.
    """
    if method not in JACOBIAN_METHODS:
        raise ValueError(f"unknown Jacobian method {method!r}; allowed: {list(JACOBIAN_METHODS)}")
    params = named_params(model)
    _check_params(params)
    n = X.shape[0]
    c = _check_chunk(chunk, n) if chunk is not None else None
    if c is None:  # ghost norms need no [b, k, P] block; the jacrev rest sizes its own
        P = sum(p.numel() for p in params.values())
        c = min(1024, n if method == "auto" else _auto_chunk(model, X, P))
    with eval_mode(model):
        for start in range(0, n, c):
            Xc = X[start : start + c]
            if method == "auto":
                F, K = _linear_grams(model, Xc, params)
            else:
                with torch.no_grad():
                    F = model(Xc)
                K = {}
            rest = [name for name in params if name not in K]
            if rest:
                parts: dict[str, list[Tensor]] = {name: [] for name in rest}
                for J in per_sample_jacobians(model, Xc, None, rest):
                    for name, Jn in J.items():
                        Jf = Jn.reshape(Jn.shape[0], Jn.shape[1], -1)
                        parts[name].append(Jf @ Jf.transpose(1, 2))
                K.update({name: torch.cat(v) for name, v in parts.items()})
            yield F, {name: K[name] for name in params}


def jacobian_sqnorms(model: nn.Module, X: Tensor, chunk: int | None = 256, *,
                     method: str = "auto") -> dict[str, Tensor]:
    """Per-sample squared Frobenius norms of the parameter Jacobian, per parameter tensor.

    Returns ``{name: Tensor[n]}`` with entry i = ‖∂f(x_i)/∂θ_name‖_F²; summed over names it is
    ‖J_i‖_F², and for a dense layer's weight it is ‖∇_{W_l} f(x_i)‖_F² (paper.md L2, L3).
    Model in eval mode, chunks of ``chunk`` samples (``None``: automatic).

    Args:
        model: network x ↦ f(x) ∈ R^k (output shape [b, k] for a batch).
        X: inputs, shape [n, ...].
        method: ``"auto"`` — ``nn.Linear`` parameters by per-sample "ghost norms"
            (‖Σ_t δ_t h_tᵀ‖_F² from the layer's input h and output gradient δ, k backward
            passes, validated against autograd), all others by ``vmap(jacrev)``; or
            ``"jacrev"`` — every parameter by ``vmap(jacrev)`` (the reference). They agree to
            rounding.
    """
    _check_data(X)
    out: dict[str, list[Tensor]] = {}
    for _, K in _per_sample_grams(model, X, chunk, method):
        for name, Kn in K.items():
            out.setdefault(name, []).append(torch.diagonal(Kn, dim1=1, dim2=2).sum(1))
    return {n: torch.cat(v) for n, v in out.items()}


def gn_trace(model: nn.Module, X: Tensor, chunk: int | None = 256) -> Tensor:
    """Exact Gauss–Newton trace (1/n) Σ_i ‖J_i‖_F² (= tr H at interpolation, squared loss).

    Returns a 0-d tensor (paper.md L1: tr H = (1/n) Σ_i ‖J_i‖_F² when f(x_i) = y_i ∀i).
    """
    sq = jacobian_sqnorms(model, X, chunk)
    return torch.stack(list(sq.values())).sum(0).mean()


def _output_hessians(loss_fn: Callable[[Tensor, Tensor], Tensor], F: Tensor, Y: Tensor
                     ) -> Tensor | None:
    """Λ_i = ∇²_f ℓ(f_i, y_i), shape [n, k, k]; ``None`` means Λ_i = I (squared loss)."""
    if loss_fn is losses.squared:
        return None
    if loss_fn is losses.cross_entropy:
        p = torch.softmax(F, dim=1)
        s = torch.ones_like(p[:, :1]) if Y.ndim == 1 else Y.sum(1, keepdim=True)
        lam = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
        return s.unsqueeze(2) * lam

    def ell(f: Tensor, y: Tensor) -> Tensor:  # per-sample loss of a mean-reduced loss
        return loss_fn(f.unsqueeze(0), y.unsqueeze(0))

    return vmap(hessian(ell))(F, Y).detach()


def _forward_check(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], X: Tensor,
                   Y: Tensor, chunk: int | None) -> Tensor:
    """The determinism probe of the exact GN trace, which depends on θ only through f and J:
    outputs f(X) [n, k] of one plain forward (compared by the caller with the Gram pass's),
    the loss evaluated twice on them (a shuffling / subsampling loss differs) and finite."""
    c = _check_chunk(chunk, X.shape[0]) if chunk is not None else min(1024, X.shape[0])
    with torch.no_grad(), eval_mode(model):
        F = torch.cat([model(X[s : s + c]) for s in range(0, X.shape[0], c)])
    check_loss_on_outputs(loss_fn, F, Y)
    return F.detach()


def check_loss_on_outputs(loss_fn: Callable[[Tensor, Tensor], Tensor], F: Tensor, Y: Tensor
                          ) -> float:
    """L(F, Y) evaluated twice on the same outputs F [n, k]: finite (else ``ValueError``) and
    the same to 64 ulp (else :class:`NondeterminismError`: a loss that shuffles, subsamples or
    is random). Returns L. The determinism check of everything whose θ-dependence goes
    through f alone, once f itself has been checked (the GN trace, ``flatbook.report``)."""
    with torch.no_grad():
        l1, l2 = loss_fn(F, Y), loss_fn(F, Y)
    if not torch.isfinite(l1):
        raise ValueError(f"loss is not finite at the current parameters (L = {l1.item()})")
    dl = (l1 - l2).abs().item()
    if dl > 64 * torch.finfo(l1.dtype).eps * max(abs(l1.item()), 1e-30):
        raise NondeterminismError(_nondeterminism_message(f"|ΔL| = {dl:.3g}"))
    return float(l1)


def _ggn_trace_terms(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor],
                     X: Tensor, Y: Tensor, chunk: int | None, with_outputs: bool = False
                     ) -> Tensor | tuple[Tensor, Tensor]:
    """Per-sample tr(J_iᵀ Λ_i J_i) = tr(Λ_i J_i J_iᵀ), shape [n] (and the outputs f [n, k])."""
    terms: list[Tensor] = []
    outs: list[Tensor] = []
    start = 0
    for F, Ks in _per_sample_grams(model, X, chunk):
        b = F.shape[0]
        K = sum(Ks.values())  # [b, k, k] per-sample NTK block J_i J_iᵀ
        lam = _output_hessians(loss_fn, F, Y[start : start + b])
        if lam is None:
            terms.append(torch.diagonal(K, dim1=1, dim2=2).sum(1))
        else:
            terms.append((lam * K).sum((1, 2)))
        outs.append(F)
        start += b
    if with_outputs:
        return torch.cat(terms), torch.cat(outs)
    return torch.cat(terms)


def gauss_newton_matrix(model: nn.Module, X: Tensor, loss: LossLike = "squared",
                        Y: Tensor | None = None) -> Tensor:
    """Dense (generalised) Gauss–Newton matrix G = (1/n) Σ_i J_iᵀ Λ_i J_i, shape [P, P].

    Λ_i = I for the squared loss (then Y is not needed and G = H at interpolation, paper.md L1);
    for cross-entropy Λ_i = diag(p_i) − p_i p_iᵀ (p_i = softmax f(x_i)); for a callable loss
    Λ_i = ∇²_f ℓ(f(x_i), y_i) by autodiff. Small models only (memory P², n·k·P).
    """
    n = _check_data(X, Y)
    loss_fn = losses.get(loss)
    if loss_fn is not losses.squared and Y is None:
        raise ValueError("gauss_newton_matrix needs targets Y for a loss other than 'squared'")
    start = 0
    G: Tensor | None = None
    for J in per_sample_jacobians(model, X, None):
        b = next(iter(J.values())).shape[0]
        Jf = torch.cat([Jn.reshape(b, Jn.shape[1], -1) for Jn in J.values()], dim=2)  # [b,k,P]
        if loss_fn is losses.squared:
            Gc = torch.einsum("bkp,bkq->pq", Jf, Jf)
        else:
            with torch.no_grad(), eval_mode(model):
                F = model(X[start : start + b])
            assert Y is not None
            lam = _output_hessians(loss_fn, F, Y[start : start + b])
            Gc = torch.einsum("bkp,bkl,blq->pq", Jf, lam, Jf)
        G = Gc if G is None else G + Gc
        start += b
    assert G is not None
    return G / n


# --------------------------------------------------------------------------------------------
# sharpness: top-k eigenvalues by Lanczos
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SharpnessResult:
    """Top-k eigenpairs of H (paper.md §1: sharpness λ_max(H) = ``values[0]``).

    Attributes:
        values: eigenvalues λ_1 ≥ … ≥ λ_k (largest algebraic), float64 tensor [k].
        residuals: ‖H v_j − λ_j v_j‖ for the unit Ritz vectors v_j, float64 tensor [k],
            computed from Hessian-vector products, not from the recurrence's estimate: Lanczos
            forms H v_j = Σ_i s_ij H q_i from the products it stored; eigsh (and vectors the
            deflation check swapped in) take k more products. |λ_j − λ_true| ≤ residual_j.
        vectors: Ritz vectors, float64 tensor [P, k] (unit norm).
        n_hvp: Hessian-vector products used in total (including any residual products).
        converged: the solver's criterion ‖H v_j − λ_j v_j‖ ≤ tol·|λ_j| held for all j.
        solver: ``"lanczos"`` or ``"eigsh"``.
        tol: the relative tolerance requested.
    """

    values: Tensor
    residuals: Tensor
    vectors: Tensor
    n_hvp: int
    converged: bool
    solver: str
    tol: float

    @property
    def lambda_max(self) -> float:
        """λ_max(H) = ``values[0]`` as a float."""
        return float(self.values[0])

    @property
    def error_bound(self) -> float:
        """The certified error of λ_max: r = ``residuals[0]`` = ‖H v − λ v‖ for the unit Ritz
        vector v, so some eigenvalue of the symmetric H lies in [λ − r, λ + r] (Weyl /
        Bauer–Fike), and λ_max(H) ≥ λ (a Ritz value never exceeds λ_max). When converged,
        r ≤ tol·|λ|."""
        return float(self.residuals[0])


_COLS = 1 << 16  # columns of Q per block in the Gram–Schmidt products (cache-sized)


def _project(Q: Tensor, w: Tensor) -> Tensor:
    """c = Q w for Q [m, P] (rows orthonormal) and w [P], in column blocks: on CPU this runs at
    memory bandwidth, about twice as fast as one [m, P] @ [P] call at P ≈ 1e6."""
    c = Q[:, :_COLS] @ w[:_COLS]
    for s in range(_COLS, w.shape[0], _COLS):
        c += Q[:, s : s + _COLS] @ w[s : s + _COLS]
    return c


def _subtract(Q: Tensor, c: Tensor, w: Tensor) -> None:
    """w ← w − Qᵀc in place (Q [m, P], c [m], w [P]), in column blocks like :func:`_project`."""
    for s in range(0, w.shape[0], _COLS):
        w[s : s + _COLS].sub_(c @ Q[:, s : s + _COLS])


def _lanczos(op: Callable[[Tensor], Tensor], P: int, k: int, tol: float, v0: Tensor,
             ncv: int, max_hvp: int, gen: torch.Generator, dtype: torch.dtype = torch.float64
             ) -> tuple[Tensor, Tensor, Tensor, bool, int]:
    """Thick-restart Lanczos with full reorthogonalisation (largest algebraic eigenvalues).

    Keeps an orthonormal basis Q ∈ R^{P×m} (m ≤ ncv, rows of ``Q`` in ``dtype``), the products
    W = HQ it has computed, and the projected matrix T = QᵀHQ (float64) built from the
    orthogonalisation coefficients. Ritz pairs (θ_j, Q s_j) have residual norm β |s_j[-1]|;
    stop when it is ≤ tol·max(|θ_j|, ε^{2/3}·|θ_1|) for the top k (ARPACK's criterion). When m
    reaches ncv, restart with the top max(k, ncv//2) Ritz vectors (Krylov–Schur / thick
    restart, Wu & Simon 2000).

    Each step w = H q_m first subtracts the couplings to earlier vectors that are known exactly
    (β_{m−1} q_{m−1}, or after a restart the kept Ritz vectors' b), then α q_m, then makes one
    classical Gram–Schmidt pass against all of Q, and a second one only when that pass removed
    more than 1 − 1/√2 of ‖w‖ (the DGKS criterion ARPACK uses, η = 0.717); if a second pass does
    so again, w is in span Q to working precision (an invariant subspace) and the iteration goes
    on from a fresh random direction ⟂ Q. So a step reads Q twice, not four times.

    The residuals ‖H y_j − θ_j y_j‖ of the returned Ritz vectors y_j = Q s_j are computed from
    the stored products (H y_j = W s_j by linearity), with no extra Hessian-vector product.

    Returns (θ [k] descending float64, Y [P, k] Ritz vectors in ``dtype``, residuals [k]
    float64, converged, n_hvp).
    """
    f64 = torch.float64
    dev = v0.device
    eps23 = torch.finfo(f64).eps ** (2 / 3)
    Q = torch.empty(ncv + 1, P, dtype=dtype, device=dev)  # rows are basis vectors
    W = torch.empty(ncv, P, dtype=dtype, device=dev)  # W[j] = H Q[j]
    T = torch.zeros(ncv, ncv, dtype=f64)
    q = v0.to(dtype)
    Q[0] = q / q.norm()
    m = 0  # basis vectors whose product with H is in T
    n_hvp = 0
    coupling = torch.zeros(0, dtype=f64)  # q_mᵀ H Q[:m], known when q_m is formed
    theta = torch.zeros(0, dtype=f64)
    S = torch.zeros(0, 0, dtype=f64)
    converged = False
    while True:
        w = op(Q[m]).to(dtype)
        n_hvp += 1
        W[m].copy_(w)
        h = torch.zeros(m + 1, dtype=f64)
        nz = torch.nonzero(coupling).flatten()
        if nz.numel() == 1:  # plain Lanczos step: only β_{m−1} q_{m−1}
            j = int(nz[0])
            w.add_(Q[j], alpha=-float(coupling[j]))
        elif nz.numel() > 1:  # first step after a restart: the kept Ritz vectors' couplings
            _subtract(Q[:m], coupling.to(dtype=dtype, device=dev), w)
        h[:m] = coupling
        alpha = float(torch.dot(Q[m], w))
        w.add_(Q[m], alpha=-alpha)
        h[m] += alpha
        invariant = False
        for npass in range(2):
            w_norm = float(w.norm())
            c = _project(Q[: m + 1], w)
            _subtract(Q[: m + 1], c, w)
            h += c.to(f64).cpu()
            beta = float(w.norm())
            if beta >= 0.717 * w_norm:
                break
            invariant = npass == 1
        T[m, : m + 1] = h
        T[: m + 1, m] = h
        m += 1
        Tm = 0.5 * (T[:m, :m] + T[:m, :m].T)
        theta, S = torch.linalg.eigh(Tm)
        theta, S = theta.flip(0), S.flip(1)
        kk = min(k, m)
        scale = max(float(theta.abs().max()), 1e-300)
        res = beta * S[-1, :kk].abs()
        thr = tol * torch.clamp(theta[:kk].abs(), min=eps23 * scale)
        if m >= k and bool((res <= thr).all()):
            converged = True
            break
        if m == P:  # Krylov space is the whole space: T is H in an orthonormal basis
            converged = True
            break
        if n_hvp >= max_hvp:
            break
        fresh = invariant or beta <= eps23 * scale * 1e-3
        coupling = torch.zeros(m, dtype=f64)
        if fresh:
            # invariant subspace found: continue with a fresh random direction ⟂ Q; its
            # coupling to Q is zero (H Q = Q T exactly)
            w = torch.randn(P, generator=gen, dtype=f64).to(dtype=dtype, device=dev)
            for _ in range(2):
                _subtract(Q[:m], _project(Q[:m], w), w)
            beta = float(w.norm())
        else:
            coupling[m - 1] = beta
        if m == ncv:  # thick restart with the leading Ritz vectors
            keep = max(k, ncv // 2)
            Sk = S[:, :keep].to(dtype=dtype, device=dev)
            Q[:keep] = Sk.T @ Q[:m]  # [keep, P]
            W[:keep] = Sk.T @ W[:m]
            T.zero_()
            T[:keep, :keep] = torch.diag(theta[:keep])
            # H Y = Y diag(θ) + q bᵀ with b = β S[-1, :keep]
            coupling = torch.zeros(keep, dtype=f64) if fresh else beta * S[-1, :keep]
            Q[keep] = w / beta
            m = keep
            continue
        Q[m] = w / beta
    kk = min(k, m)
    Sk = S[:, :kk].to(dtype=dtype, device=dev)
    Yv = Sk.T @ Q[:m]  # [kk, P]
    HY = Sk.T @ W[:m]
    norms = Yv.norm(dim=1, keepdim=True)
    Yv.div_(norms)
    HY.div_(norms)
    HY.sub_(theta[:kk].to(dtype=dtype, device=dev).unsqueeze(1) * Yv)
    residuals = HY.norm(dim=1).to(f64).cpu()
    return theta[:kk].clone(), Yv.T, residuals, converged, n_hvp


def _deflation_check(op: HVPOperator, vals: Tensor, vecs: Tensor, tol: float, ncv: int,
                     max_hvp: int, gen: torch.Generator, dtype: torch.dtype = torch.float64
                     ) -> tuple[Tensor, Tensor, bool, bool]:
    """Look for eigenvalues missed by single-vector Krylov (exact multiplicities).

    A Krylov space from one start vector holds one direction per eigenspace, so a repeated
    eigenvalue is returned once. Run Lanczos on the deflated operator (I − VVᵀ) H (I − VVᵀ)
    from a fresh random vector ⟂ V; if its top eigenvalue exceeds the k-th found one, swap it in
    and repeat (at most k times). Costs one extra Lanczos run (k > 1 only).

    Returns (values, vectors [P, k], converged, swapped): ``swapped`` says a vector was
    replaced (its residual must then be recomputed against H itself).
    """
    P = op.P
    converged = True
    swapped = False
    for _ in range(vals.numel()):
        V = vecs.to(device=op.device, dtype=dtype)

        def op_d(v: Tensor, V: Tensor = V) -> Tensor:
            w = v.to(dtype)
            w = w - V @ (V.T @ w)
            hw = op(w).to(dtype)
            return hw - V @ (V.T @ hw)

        v0 = torch.randn(P, generator=gen, dtype=torch.float64).to(device=op.device,
                                                                   dtype=dtype)
        v0 = v0 - V @ (V.T @ v0)
        budget = max_hvp - op.n_hvp
        if budget < 2:
            return vals, vecs, False, swapped
        th, y, _, ok, _ = _lanczos(op_d, P, 1, tol, v0, min(ncv, P - V.shape[1]), budget, gen,
                                   dtype)
        converged = converged and ok
        kth = float(vals[-1])
        if float(th[0]) <= kth + tol * max(abs(kth), 1e-300):
            break
        swapped = True
        vals = torch.cat([vals[:-1], th.to(vals.device)])
        vecs = torch.cat([vecs[:, :-1], y.to(device=vecs.device, dtype=vecs.dtype)], dim=1)
        order = torch.argsort(vals, descending=True)
        vals, vecs = vals[order], vecs[:, order]
    return vals, vecs, converged, swapped


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


def sharpness(
    model: nn.Module,
    loss: LossLike,
    X: Tensor,
    Y: Tensor,
    k: int = 1,
    tol: float = 1e-6,
    seed: int = 0,
    *,
    solver: str = "lanczos",
    chunk: int | None = 1024,
    ncv: int | None = None,
    max_hvp: int = 2000,
    verify: bool | None = None,
    check: bool = True,
    backend: str = "revrev",
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
        k: number of top eigenvalues, 1 ≤ k ≤ P (k < P for ``solver="eigsh"``).
        tol: relative residual tolerance in (0, 1) (``ValueError`` otherwise); the result
            carries the bound it certifies (:attr:`SharpnessResult.error_bound`).
        seed: seeds the start vector (same seed → bit-identical result).
        solver: ``"lanczos"`` (own thick-restart Lanczos with full reorthogonalisation, default)
            or ``"eigsh"`` (ARPACK via ``scipy.sparse.linalg.eigsh``, which='LA').
        chunk: samples per pass (memory bound).
        ncv: Krylov basis size before a restart (memory ncv·P floats). Default for
            ``"lanczos"``: min(P, max(2k + 1, min(64, 2^27 / P))); for ``"eigsh"``: scipy's
            min(P, max(2k + 1, 20)).
        max_hvp: cap on Hessian-vector products (then ``converged=False`` and a warning).
        verify: after convergence, search the deflated complement for eigenvalues that a
            single-vector Krylov space misses (exactly repeated eigenvalues, e.g. the
            Kronecker-structured Hessian of a linear layer). Default: on iff k > 1 (λ_max
            itself is never missed). Costs one more Lanczos run.
        check: run the determinism probe and finiteness checks.
        backend: HVP backend, ``"revrev"`` or ``"fwdrev"`` (see :func:`hvp_operator`).

    Returns:
        :class:`SharpnessResult` (``.values``, ``.residuals``, ``.n_hvp``, ``.converged``,
        ``.lambda_max``).
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; allowed: {list(SOLVERS)}")
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer (number of eigenvalues); got {k!r}")
    tol = check_tol(tol)
    if int(max_hvp) != max_hvp or max_hvp < 1:
        raise ValueError(f"max_hvp must be a positive integer; got {max_hvp!r}")
    seed = _check_seed(seed)
    k = int(k)
    op = hvp_operator(model, loss, X, Y, chunk=chunk, check=check, backend=backend)
    P = op.P
    if k > P or (solver == "eigsh" and k >= P):
        limit = f"k < P = {P}" if solver == "eigsh" else f"k ≤ P = {P}"
        raise ValueError(f"k = {k} too large for solver {solver!r}: need {limit} "
                         "(use dense_hessian for the full spectrum of a tiny model)")
    if ncv is None:  # Lanczos: ≤ 64 basis vectors and ≲ 2^27 stored entries; eigsh: scipy's
        ncv = min(P, max(2 * k + 1, min(64, (1 << 27) // P) if solver == "lanczos" else 20))
    elif int(ncv) != ncv or not (k < ncv <= P or (ncv == P >= k)):
        raise ValueError(f"ncv must be an integer with k < ncv ≤ P (k = {k}, P = {P}); got {ncv}")
    ncv = int(ncv)
    gen = torch.Generator().manual_seed(seed)
    # the Krylov basis is kept in the parameters' precision (float32 models: float32, half the
    # memory traffic of the reorthogonalisation; the products are float32 anyway), never below
    bt = op.dtype if op.dtype in (torch.float32, torch.float64) else torch.float32
    residuals: Tensor | None = None

    v0 = _start_vector(op, gen, bt if solver == "lanczos" else torch.float64)
    if solver == "lanczos":
        vals, vecs, residuals, converged, _ = _lanczos(op, P, k, tol, v0, ncv, int(max_hvp),
                                                       gen, bt)
    else:
        from scipy.sparse.linalg import ArpackNoConvergence, eigsh

        A = op.as_linear_operator()
        ncv_e = min(P, max(ncv, 2 * k + 1))
        try:
            w, V = eigsh(A, k=k, which="LA", tol=tol, v0=v0.cpu().numpy(), ncv=ncv_e,
                         maxiter=max(1, int(max_hvp) // max(1, ncv_e - k)))
            converged = True
        except ArpackNoConvergence as e:
            w, V = e.eigenvalues, e.eigenvectors
            converged = False
        order = np.argsort(w)[::-1]
        vals = torch.from_numpy(np.ascontiguousarray(w[order]))
        vecs = torch.from_numpy(np.ascontiguousarray(V[:, order])).to(op.device)
        if vals.numel() < k:
            converged = False

    if verify is None:
        verify = k > 1
    if verify and k < P and vals.numel() == k:
        vals, vecs, ok, swapped = _deflation_check(op, vals, vecs, tol, ncv, int(max_hvp), gen,
                                                   bt)
        converged = converged and ok
        if swapped:
            residuals = None

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
            f"sharpness: {solver} did not reach tol={tol:g} within max_hvp={max_hvp}; "
            f"residuals {residuals.tolist()}", RuntimeWarning, stacklevel=2)
    return SharpnessResult(values=vals, residuals=residuals, vectors=vecs.cpu(),
                           n_hvp=op.n_hvp, converged=bool(converged), solver=solver,
                           tol=float(tol))


# --------------------------------------------------------------------------------------------
# trace
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceResult:
    """An estimate of tr H (or, for ``method="gn"``, of tr G, the Gauss–Newton trace).

    Attributes:
        value: the estimate (float).
        stderr: its standard error (0.0 for the exact ``"gn"`` value). For Hutchinson it is
            sample std / √m of the m probe values; for Hutch++ the same for the residual
            Hutchinson part (the low-rank part is exact given its sketch).
        n_hvp: Hessian-vector products used (0 for ``"gn"``, which uses per-sample Jacobians).
        method: ``"gn"``, ``"hutchpp"`` or ``"hutchinson"``.
        samples: the per-probe values of the stochastic part (empty for ``"gn"``).
    """

    value: float
    stderr: float
    n_hvp: int
    method: str
    samples: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))


def _rademacher(m: int, P: int, gen: torch.Generator) -> Tensor:
    return (torch.randint(0, 2, (m, P), generator=gen, dtype=torch.int8).to(torch.float64)
            * 2 - 1)


#: largest probe block (entries of one [block, P] float64 array) that :func:`trace` forms by
#: default: 2^22 entries = 32 MiB, so Hutchinson(100) at P ≈ 2e6 never holds a P × 100 array.
PROBE_BLOCK_ENTRIES = 1 << 22


def _probe_block(block: int | None, P: int) -> int:
    """Probes per block: ``block`` if given, else ⌊2^22 / P⌋ clipped to [1, 16]."""
    if block is None:
        return max(1, min(16, PROBE_BLOCK_ENTRIES // max(1, P)))
    if isinstance(block, bool) or int(block) != block or block < 1:
        raise ValueError(f"block must be a positive integer (probes per batched product) or "
                         f"None (automatic); got {block!r}")
    return int(block)


def _hutchinson_blocks(op: HVPOperator, m: int, block: int, gen: torch.Generator,
                       project: Tensor | None = None) -> Tensor:
    """z_jᵀ H z_j for m Rademacher probes (projected by I − QQᵀ if ``project`` = Q [P, s]),
    generated and applied ``block`` at a time: memory O(block · P), never [m, P]. Returns [m].
    """
    vals: list[Tensor] = []
    P = op.P
    for start in range(0, m, block):
        b = min(block, m - start)
        Z = _rademacher(b, P, gen).to(op.device)
        if project is not None:
            Z = Z - (Z @ project) @ project.T
        HZ = op(Z).to(torch.float64)
        vals.append((Z * HZ).sum(1).cpu())
        del Z, HZ
    return torch.cat(vals)


def trace(
    model: nn.Module,
    loss: LossLike,
    X: Tensor,
    Y: Tensor,
    method: str = "gn",
    n_hvp: int = 100,
    seed: int = 0,
    *,
    chunk: int | None = 1024,
    block: int | None = None,
    check: bool = True,
    backend: str = "revrev",
) -> TraceResult:
    """Trace of the loss Hessian, tr H (paper.md §1; L1: = (1/n) Σ‖J_i‖_F² at interpolation).

    Methods:
        ``"gn"``: exact tr G = (1/n) Σ_i tr(Λ_i J_i J_iᵀ) from per-sample parameter Jacobians
            (``vmap(jacrev)``), Λ_i = ∇²_f ℓ. For the squared loss this is (1/n) Σ_i ‖J_i‖_F²,
            which **equals tr H only at interpolation** (f(x_i) = y_i); for cross-entropy it is
            the GGN (= Fisher) trace, never exactly tr H. ``stderr = 0``, ``n_hvp = 0``.
        ``"hutchinson"``: (1/m) Σ_j z_jᵀ H z_j, z_j Rademacher, m = ``n_hvp``;
            stderr = std(z_jᵀHz_j)/√m.
        ``"hutchpp"``: Hutch++ (Meyer, Musco, Musco & Woodruff 2021): sketch S (m/3 Rademacher
            columns), Q = orth(H S), value = tr(QᵀHQ) + Hutchinson on (I−QQᵀ)H(I−QQᵀ) with the
            remaining probes; unbiased, stderr from the residual probes. Uses exactly ``n_hvp``
            products (n_hvp ≥ 4).

    Args:
        model, loss, X, Y: as in :func:`hvp_operator`.
        method: one of ``"gn"``, ``"hutchpp"``, ``"hutchinson"``.
        n_hvp: product budget of the stochastic methods (ignored by ``"gn"``).
        seed: seeds the probes (same seed → bit-identical result).
        chunk: samples per pass (HVPs) / per Jacobian block (``"gn"``; ``None``: automatic).
        block: probes per batched product and the memory bound of the stochastic methods:
            probes are drawn, applied and reduced ``block`` at a time, so no array larger than
            [block, P] of probes is formed (Hutch++ also keeps its sketch basis Q [P, m/3],
            which the method needs). ``None`` (default): ⌊2^22 / P⌋ clipped to [1, 16]
            (≤ 32 MiB per float64 block).
        check: run the determinism probe and finiteness checks.
        backend: HVP backend, ``"revrev"`` or ``"fwdrev"`` (see :func:`hvp_operator`).
    """
    if method not in TRACE_METHODS:
        raise ValueError(f"unknown trace method {method!r}; allowed: {list(TRACE_METHODS)}")
    if isinstance(n_hvp, bool) or int(n_hvp) != n_hvp or n_hvp < 1:
        raise ValueError(f"n_hvp must be a positive integer; got {n_hvp!r}")
    _probe_block(block, 1)  # validate early
    seed = _check_seed(seed)
    n_hvp = int(n_hvp)
    if method == "gn":
        n = _check_data(X, Y)
        loss_fn = losses.get(loss)
        _check_params(named_params(model))
        gchunk = None if chunk is None or chunk >= n else chunk
        F1 = _forward_check(model, loss_fn, X, Y, gchunk) if check else None
        terms, F2 = _ggn_trace_terms(model, loss_fn, X, Y, gchunk, with_outputs=True)
        if F1 is not None:
            eps = torch.finfo(F2.dtype).eps
            df = float((F1 - F2).norm())
            if df > 64 * eps * max(float(F1.norm()), 1e-30):
                raise NondeterminismError(_nondeterminism_message(f"‖Δf‖ = {df:.3g}"))
        return TraceResult(value=float(terms.sum() / n), stderr=0.0, n_hvp=0, method="gn")

    if method == "hutchinson" and n_hvp < 2:
        raise ValueError(f"n_hvp must be ≥ 2 for hutchinson (a standard error needs two "
                         f"probes); got {n_hvp}")
    if method == "hutchpp" and n_hvp < 4:
        raise ValueError(f"n_hvp must be ≥ 4 for hutchpp (sketch, projection and ≥ 2 residual "
                         f"probes); got {n_hvp}")
    op = hvp_operator(model, loss, X, Y, chunk=chunk, check=check, backend=backend)
    P = op.P
    blk = _probe_block(block, P)
    gen = torch.Generator().manual_seed(seed)
    dev = op.device
    if method == "hutchinson":
        s = _hutchinson_blocks(op, n_hvp, blk, gen)
        return TraceResult(value=float(s.mean()), stderr=float(s.std() / math.sqrt(n_hvp)),
                           n_hvp=op.n_hvp, method="hutchinson", samples=s)

    # Hutch++: sketch s = ⌊m/3⌋ (≤ P), then s products for QᵀHQ, the rest for the residual.
    # The sketch H S [P, s] and its basis Q are the method's own memory; probes come in blocks.
    s_cols = min(max(1, n_hvp // 3), P, (n_hvp - 2) // 2)
    g_cols = n_hvp - 2 * s_cols
    HS = torch.empty(P, s_cols, dtype=torch.float64, device=dev)
    for start in range(0, s_cols, blk):
        b = min(blk, s_cols - start)
        S = _rademacher(b, P, gen).to(dev)
        HS[:, start : start + b] = op(S).to(torch.float64).T
        del S
    Qm, _ = torch.linalg.qr(HS)  # [P, s], orthonormal columns
    del HS
    t_low = 0.0
    for start in range(0, s_cols, blk):
        Qb = Qm[:, start : start + blk].T.contiguous()
        t_low += float((Qb * op(Qb).to(torch.float64)).sum())
        del Qb
    r = _hutchinson_blocks(op, g_cols, blk, gen, project=Qm)
    return TraceResult(value=t_low + float(r.mean()), stderr=float(r.std() / math.sqrt(g_cols)),
                       n_hvp=op.n_hvp, method="hutchpp", samples=r)
