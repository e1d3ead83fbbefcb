"""The empirical risk L(θ) = (1/n) Σ_i ℓ(f(x_i; θ), y_i) as a function of the flat parameter
vector θ [P] — the base every curvature operator is built on (curvlinops' ``_EmpiricalRisk``).

It owns the data loop (chunks of ``chunk`` samples, one graph per chunk), eval mode
(:func:`eval_mode`, the one eval mode of flatbook), the input checks, and the determinism check
(:func:`_probe_determinism`: two identical passes agree to
:data:`flatbook.checks.DETERMINISM_ULPS`, else :class:`NondeterminismError`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

from flatbook import losses
from flatbook._functional import (
    batched_grad,
    flatten,
    named_params,
    unflatten,
)
from flatbook._validate import check_positive_int, check_seed
from flatbook.checks import passes_agree

LossLike = str | Callable[[Tensor, Tensor], Tensor]
HVP_BACKENDS = ("revrev", "fwdrev")

__all__ = ["LossLike", "NondeterminismError", "eval_mode"]


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
    """Samples per pass: ``chunk`` (a positive int, :func:`flatbook._validate.check_positive_int`)
    capped at n, or n for ``None``."""
    c = check_positive_int(chunk, "chunk (samples per pass)", allow_none=True)
    return n if c is None else min(c, n)


def _check_seed(seed: int) -> int:
    """``seed`` checked by :func:`flatbook._validate.check_seed` (an integer in 0..2**63−1)."""
    return check_seed(seed)


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
        """θ ↦ ℓ̄(θ) = loss of the chunk (Xc, Yc) at flat parameters θ [P] (a scalar)."""
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
    dl = (l1 - l2).abs().item()
    dg = (g1 - g2).norm().item()
    if not (passes_agree(l1, l2) and passes_agree(g1, g2)):
        raise NondeterminismError(_nondeterminism_message(
            f"|ΔL| = {dl:.3g}, ‖Δ∇L‖ = {dg:.3g}"))
    return l1, g1
