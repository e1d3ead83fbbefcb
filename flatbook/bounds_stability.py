"""T7, linear stability of GD and SGD near an interpolating minimum: λ_max(H) ≤ 2/η
(:func:`t7_gd`), the trace ceiling tr H ≤ 2k/(pη) (:func:`t7_sgd`), and the mean-square
condition η ≤ η*(B) (:func:`mean_square_lr`, :func:`t7_sgd_mean_square`), with the SGD
sampling factor p = (n − B)/(B(n − 1)) (:func:`sgd_p`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from flatbook import curvature
from flatbook._validate import check_positive_float
from flatbook.bounds_types import Bound, Number

__all__ = ["mean_square_lr", "ntk_terms", "sgd_p", "t7_gd", "t7_sgd", "t7_sgd_mean_square"]


def sgd_p(n: int, batch_size: int) -> float:
    """p = (n − B) / (B (n − 1)): the sampling factor of SGD with batch B drawn without
    replacement from n samples (p = 0 for full batch, p = 1 for B = 1)."""
    if int(n) < 2:
        raise ValueError(f"n must be ≥ 2 for SGD stability; got {n!r}")
    if not 1 <= int(batch_size) <= int(n):
        raise ValueError(f"batch_size must be in [1, n = {n}]; got {batch_size!r}")
    return (n - batch_size) / (batch_size * (n - 1))


def t7_gd(lambda_max: Number, lr: float) -> Bound:
    """T7 (GD linear stability): λ_max(H) ≤ 2/η near an interpolating minimum."""
    lr = check_positive_float(lr, "lr")
    return Bound("t7_gd", lambda_max, 2.0 / lr, "λ_max(H) ≤ 2/η", "paper (Wu, Ma & E 2018)")


def t7_sgd(trace: Number, lr: float, batch_size: int, n: int, k: int) -> Bound:
    """T7 (SGD): the mean-square condition (necessary for mean-square linear stability)
    implies tr H ≤ 2k / (p η), p = (n − B)/(B(n − 1)) (+inf for full batch, p = 0).
    The ceiling with k outputs is ours; k = B = 1 gives Wu & Su 2023's tr H ≤ 2/η.

    From Σ_i ‖H_i‖_F² ≥ Σ_i (tr H_i)²/k ≥ n (tr H)²/k (H_i = J_iᵀJ_i has rank ≤ k) in the
    mean-square condition of :func:`t7_sgd_mean_square`.
    """
    lr = check_positive_float(lr, "lr")
    p = sgd_p(n, batch_size)
    rhs = math.inf if p == 0 else 2.0 * k / (p * lr)
    return Bound("t7_sgd", trace, rhs, "tr H ≤ 2k / (p η)",
                 "ours (k outputs; k = B = 1: Wu & Su 2023)")


def ntk_terms(model: nn.Module, X: Tensor, chunk: int = 256) -> tuple[Tensor, Tensor, Tensor]:
    """(tr H, ‖H‖_F², Σ_i ‖H_i‖_F²) of the Gauss–Newton matrix H = (1/n) Σ_i J_iᵀJ_i and
    H_i = J_iᵀJ_i (J_i [k, P] per-sample parameter Jacobians), via the Gram matrix
    K = J Jᵀ [nk, nk]: tr H = tr K / n, ‖H‖_F² = ‖K‖_F² / n², ‖H_i‖_F² = ‖K_ii‖_F²
    (memory n·k·P; small models). 0-d tensors."""
    rows = []
    with torch.no_grad():
        for J in curvature.per_sample_jacobians(model, X, chunk):
            b = next(iter(J.values())).shape[0]
            rows.append(torch.cat([Jn.reshape(b, Jn.shape[1], -1) for Jn in J.values()], 2))
    Jall = torch.cat(rows)  # [n, k, P]
    n, k, _ = Jall.shape
    Jf = Jall.reshape(n * k, -1)
    K = Jf @ Jf.T  # [nk, nk]
    Kb = K.reshape(n, k, n, k)
    Kii = torch.einsum("iaib->iab", Kb)
    trH = torch.diagonal(K).sum() / n
    return trH, K.pow(2).sum() / n**2, Kii.pow(2).sum()


def mean_square_lr(model: nn.Module, X: Tensor, batch_size: int, chunk: int = 256) -> float:
    """The step at which the mean-square condition of T7 holds with equality:
    η* = 2 tr H / [(1 − p) ‖H‖_F² + (p/n) Σ_i ‖H_i‖_F²], H = (1/n) Σ J_iᵀJ_i, H_i = J_iᵀJ_i
    (the Gauss–Newton matrices; = the Hessian's at an interpolating minimum).

    The condition is *necessary* for mean-square linear stability (Mulayoff & Michaeli 2023,
    Prop. 3), not sufficient: η > η* proves an interpolating minimum unstable for SGD with
    step η and batch B; η ≤ η* does not prove it stable (H = diag(1, ½): η* = 2.4 for GD,
    which diverges at η = 2.2 > 2/λ_max).

    Computed from the n k × n k Gram matrix J Jᵀ (needs the per-sample parameter Jacobians:
    memory n·k·P; small models). For B = n (p = 0) this is 2 tr H/‖H‖_F² ≥ 2/λ_max (the
    mean-square condition is necessary, not sufficient). +inf when H = 0.
    """
    n = X.shape[0]
    p = sgd_p(n, batch_size)
    trH, fro2, sum_i = ntk_terms(model, X, chunk)
    denom = (1 - p) * fro2 + p / n * sum_i
    if denom == 0:  # H = 0: the condition holds for every step
        return math.inf
    return float(2 * trH / denom)


def t7_sgd_mean_square(model: nn.Module, X: Tensor, lr: float, batch_size: int) -> Bound:
    """T7's mean-square condition, necessary for mean-square linear stability:
    η ≤ 2 tr H / [(1 − p)‖H‖_F² + (p/n) Σ_i ‖H_i‖_F²] (lhs η, rhs η* of :func:`mean_square_lr`).
    A failure proves instability; holding does not prove stability."""
    lr = check_positive_float(lr, "lr")
    return Bound(
        "t7_sgd_mean_square",
        lr,
        mean_square_lr(model, X, batch_size),
        "η ≤ 2 tr H / [(1−p)‖H‖_F² + (p/n) Σ ‖H_i‖_F²]",
        "Mulayoff & Michaeli 2023, Prop. 3 (necessary); Ma & Ying 2021",
    )
