"""Curvature of the training loss: Hessian, sharpness λ_max(H) and tr H (paper.md §2 L1, §4).

Notation: L(θ) = (1/n) Σ_i ℓ(f(x_i; θ), y_i), H = ∇²L ∈ R^{P×P}, J_i = ∂f(x_i)/∂θ ∈ R^{k×P}.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import hessian, jacrev, vmap

from flatbook import losses
from flatbook._functional import flatten, forward_fn, named_params, unflatten

LossLike = str | Callable[[Tensor, Tensor], Tensor]


def dense_hessian(model: nn.Module, loss: LossLike, X: Tensor, Y: Tensor) -> Tensor:
    """Exact Hessian H = ∇²_θ L(θ) of the full-data loss, shape [P, P].

    For small models only (memory P²): the exact reference every estimator is checked against.

    Args:
        model: any module; its trainable parameters define θ (flattened in
            ``named_parameters`` order).
        loss: ``"squared"``, ``"cross_entropy"`` or a callable ``loss(output, target)``.
        X: inputs, shape [n, ...].
        Y: targets, shape [n, k] (or [n] class indices for cross-entropy).
    """
    loss_fn = losses.get(loss)
    params = named_params(model)
    f = forward_fn(model)
    theta0 = flatten(params)

    def L(theta: Tensor) -> Tensor:
        return loss_fn(f(unflatten(theta, params), X), Y)

    return hessian(L)(theta0).detach()


def jacobian_sqnorms(model: nn.Module, X: Tensor, chunk: int = 256) -> dict[str, Tensor]:
    """Per-sample squared Frobenius norms of the parameter Jacobian, per parameter tensor.

    Returns ``{name: Tensor[n]}`` with entry i = ‖∂f(x_i)/∂θ_name‖_F²; summed over names it is
    ‖J_i‖_F², and for a dense layer's weight it is ‖∇_{W_l} f(x_i)‖_F² (paper.md L2, L3).
    Computed with ``vmap(jacrev)`` over chunks of ``chunk`` samples.

    Args:
        X: inputs, shape [n, ...].
    """
    params = named_params(model)
    f = forward_fn(model)

    def f1(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return f(p, x.unsqueeze(0)).squeeze(0)

    jac = vmap(jacrev(f1), in_dims=(None, 0))
    out: dict[str, list[Tensor]] = {n: [] for n in params}
    for start in range(0, X.shape[0], chunk):
        J = jac(params, X[start : start + chunk])  # name -> [b, k, *shape]
        for n, Jn in J.items():
            out[n].append(Jn.reshape(Jn.shape[0], -1).pow(2).sum(1).detach())
    return {n: torch.cat(v) for n, v in out.items()}


def gn_trace(model: nn.Module, X: Tensor, chunk: int = 256) -> Tensor:
    """Exact Gauss–Newton trace (1/n) Σ_i ‖J_i‖_F² (= tr H at interpolation, squared loss)."""
    sq = jacobian_sqnorms(model, X, chunk)
    return torch.stack(list(sq.values())).sum(0).mean()
