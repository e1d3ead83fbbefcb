"""Statements about the loss Hessian of the whole model (any ``nn.Module``): L1, H = the
Gauss–Newton matrix at interpolation (:func:`l1_identity`), and the elementwise adaptive
sharpness Σ_j θ_j² H_jj (:func:`adaptive_sharpness`), a rescaling-invariant sharpness that the
book sets beside κ_l of T5.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.func import hessian

from flatbook import curvature, losses
from flatbook._functional import flatten, forward_fn, named_params, unflatten
from flatbook.bounds_types import Identity

__all__ = ["adaptive_sharpness", "l1_identity"]


def _select_params(
    params: Mapping[str, Tensor], names: str | Iterable[str] | None, argname: str = "params"
) -> dict[str, Tensor]:
    """The entries of ``params`` named in ``names`` (all of them for ``None``), in model order."""
    if names is None:
        return dict(params)
    wanted = {names} if isinstance(names, str) else set(names)
    unknown = sorted(w for w in wanted if w not in params)
    if unknown or not wanted:
        raise ValueError(
            f"{argname} must name at least one trainable parameter; "
            f"{'unknown ' + str(unknown) if unknown else 'got none'}; allowed: {list(params)}"
        )
    return {n: v for n, v in params.items() if n in wanted}


def adaptive_sharpness(
    model: nn.Module,
    X: Tensor,
    Y: Tensor | None = None,
    loss: str | Callable[[Tensor, Tensor], Tensor] = "squared",
    method: str = "gn",
    chunk: int = 256,
    params: str | Iterable[str] | None = None,
) -> Tensor:
    """Elementwise adaptive sharpness Σ_j θ_j² H_jj (Kwon et al. 2021; Andriushchenko et al.
    2023, the second-order term of elementwise-adaptive worst-case sharpness with |θ| scaling).

    Methods: ``"gn"`` — H_jj = (1/n) Σ_i Σ_c (∂f_c(x_i)/∂θ_j)², the exact diagonal at an
    interpolating point of the squared loss (per-sample Jacobians, ``vmap``; ``Y`` unused);
    ``"hessian"`` — the diagonal of the exact dense Hessian (small models; ``Y`` defaults to
    f(X)). Like κ_l it is unchanged by the ReLU rescaling W_l → aW_l, b_l → ab_l,
    W_{l+1} → W_{l+1}/a (each θ_j² H_jj is). No Hutchinson estimate is provided.

    Args:
        params: names (``named_parameters``) of the parameters j to sum over, e.g.
            ``["2.weight"]`` for S_ad(W_l) of the layer at item 2 (book eq. ``eq-adaptive``); a
            single name may be given as a string. ``None`` (default): every trainable
            parameter. Since H_jj involves only θ_j, this equals the adaptive sharpness of the
            network in which only these parameters are trainable (the others held fixed).

    Returns a 0-d tensor in the model's dtype.
    """
    if method not in ("gn", "hessian"):
        raise ValueError(f"unknown method {method!r}; allowed: ['gn', 'hessian']")
    everything = named_params(model)
    sel = _select_params(everything, params)
    with curvature.eval_mode(model):
        if method == "hessian":
            if Y is None:
                with torch.no_grad():
                    Y = model(X)
            if params is None:
                Hd = torch.diagonal(curvature.dense_hessian(model, loss, X, Y))
            else:  # Hessian with respect to the selected parameters only
                loss_fn, fh = losses.get(loss), forward_fn(model)

                def L(theta: Tensor) -> Tensor:
                    return loss_fn(fh({**everything, **unflatten(theta, sel)}, X), Y)

                Hd = torch.diagonal(hessian(L)(flatten(sel)).detach())
            theta = torch.cat([p.reshape(-1) for p in sel.values()])
            return (theta**2 * Hd).sum()
        total = torch.zeros((), dtype=next(iter(sel.values())).dtype)
        with torch.no_grad():
            for J in curvature.per_sample_jacobians(model, X, chunk, names=list(sel)):
                for name, Jn in J.items():
                    diag = Jn.pow(2).sum((0, 1))  # Σ_i Σ_c over the chunk, shape of θ_name
                    total = total + (sel[name] ** 2 * diag).sum()
        return total / X.shape[0]


def l1_identity(model: nn.Module, X: Tensor, Y: Tensor | None = None) -> Identity:
    """L1: at interpolation (Y = f(X), the default) the dense Hessian of the squared loss equals
    the Gauss–Newton matrix (1/n) Σ_i J_iᵀ J_i (both [P, P]; small models)."""
    if Y is None:
        with torch.no_grad(), curvature.eval_mode(model):
            Y = model(X)
    with curvature.eval_mode(model):
        H = curvature.dense_hessian(model, "squared", X, Y)
        Gm = curvature.gauss_newton_matrix(model, X)
    return Identity("lem1", H, Gm, "∇²L = (1/n) Σ J_iᵀ J_i at f(x_i) = y_i", "paper")
