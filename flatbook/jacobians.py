"""Per-sample parameter Jacobians and exact Gauss–Newton traces.

J_i = ∂f(x_i)/∂θ [k, P] per sample by ``vmap(jacrev)`` (:func:`per_sample_jacobians`), or its
per-parameter Gram blocks J_i J_iᵀ by the per-layer rules of :mod:`flatbook.layer_rules` at ≈ k
backward passes (:func:`jacobian_sqnorms`, :func:`gn_trace`); the generalised Gauss–Newton
trace tr G = (1/n) Σ_i tr(Λ_i J_i J_iᵀ), Λ_i = ∇²_f ℓ (paper.md §0, L1), and the dense G for
small models (:func:`gauss_newton_matrix`). Re-exported by :mod:`flatbook.curvature`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.func import hessian, jacrev, vmap

from flatbook import layer_rules, losses
from flatbook._functional import (
    forward_fn,
    named_params,
)
from flatbook.checks import passes_agree
from flatbook.risk import (
    LossLike,
    NondeterminismError,
    _check_chunk,
    _check_data,
    _check_params,
    _nondeterminism_message,
    eval_mode,
)

JACOBIAN_METHODS = ("auto", "jacrev")

__all__ = ["check_loss_on_outputs", "gauss_newton_matrix", "gn_trace", "jacobian_sqnorms",
           "per_sample_jacobians"]


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
                F, K = layer_rules.layer_grams(model, Xc, params)
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
    if not passes_agree(l1, l2):
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
