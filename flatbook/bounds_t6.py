"""T6 (ours): sharpness does not control the local dimension. :func:`t6_construction` builds
a zero-loss deep linear network with any prescribed tr H > 0 and any LD ∈ [1, r]; its shape
and sampling are grouped in :class:`T6Options`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from flatbook import curvature
from flatbook.keyword_form import resolve, with_positional

__all__ = ["T6Network", "T6Options", "t6_construction"]


@dataclass(frozen=True)
class T6Options:
    """Shape and sampling of the T6 network (:func:`t6_construction`).

    Attributes:
        d, k: input and output dimensions (r = min(k, d)).
        depth: number of linear layers L ≥ 1.
        width: hidden width, ≥ r when depth > 1 (``None``: max(d, k)).
        n: number of inputs X [n, d].
        seed: seed of the random orthogonal factors U, V, Q_j and of X.
        dtype: dtype of the returned model and data (the construction runs in float64).
    """

    d: int = 6
    k: int = 4
    depth: int = 2
    width: int | None = None
    n: int = 16
    seed: int = 0
    dtype: torch.dtype = torch.float64


@dataclass(frozen=True)
class T6Network:
    """A zero-loss network with prescribed tr H and LD (:func:`t6_construction`).

    Attributes:
        model: bias-free deep linear ``nn.Sequential`` d → width → … → k.
        X: inputs [n, d]; Y = model(X) (so L = 0: an interpolating minimum).
        sigma: singular values of the input–output map A = W_L ⋯ W_1 ([r]).
        trace: the prescribed tr H; ld: the prescribed LD (of J_x = A, at every x).
    """

    model: nn.Sequential
    X: Tensor
    Y: Tensor
    sigma: Tensor
    trace: float
    ld: float


def _spectrum_with_ld(ld: float, r: int) -> Tensor:
    """σ with σ² = (1, t, …, t), t ∈ [0, 1] chosen by bisection so that LD(σ) = ld."""
    if r == 1:
        return torch.ones(1, dtype=torch.float64)
    a = r - 1

    def f(t: float) -> float:  # increasing on [0, 1] from 1 to r
        return (1 + a * t) ** 2 / (1 + a * t * t)

    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if f(mid) < ld:
            lo = mid
        else:
            hi = mid
    t = 0.5 * (lo + hi)
    s2 = torch.full((r,), t, dtype=torch.float64)
    s2[0] = 1.0
    return s2.sqrt()


#: the order of the options in the positional form t6_construction(trace, ld, d, k, …)
_T6_FIELDS = ("d", "k", "depth", "width", "n", "seed", "dtype")


def _check(trace: float, ld: float, o: T6Options) -> tuple[int, int]:
    """(r = min(k, d), the hidden width) after checking the arguments of
    :func:`t6_construction` (``ValueError`` naming the one that is out of range)."""
    r = min(int(o.k), int(o.d))
    if not (isinstance(trace, int | float) and math.isfinite(trace) and trace > 0):
        raise ValueError(f"trace must be a finite number > 0; got {trace!r}")
    if not (1.0 <= ld <= r):
        raise ValueError(f"ld must lie in [1, r] with r = min(k, d) = {r}; got {ld!r}")
    if int(o.depth) < 1:
        raise ValueError(f"depth must be ≥ 1; got {o.depth!r}")
    width = int(o.width) if o.width is not None else max(int(o.d), int(o.k))
    if o.depth > 1 and width < r:
        raise ValueError(f"width must be ≥ r = {r}; got {width}")
    if int(o.n) < 1:
        raise ValueError(f"n must be ≥ 1; got {o.n!r}")
    return r, width


def _orth(m: int, g: torch.Generator) -> Tensor:
    """A random orthogonal [m, m] matrix (QR of a Gaussian, signs fixed by diag R; float64)."""
    Q, R = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    return Q * torch.sign(torch.diagonal(R))


def _rect_diag(rows: int, cols: int, s: Tensor) -> Tensor:
    """The [rows, cols] float64 matrix with ``s`` on its leading diagonal, zeros elsewhere."""
    S = torch.zeros(rows, cols, dtype=torch.float64)
    S[range(len(s)), range(len(s))] = s
    return S


def _weights(sigma: Tensor, r: int, width: int, o: T6Options, g: torch.Generator
             ) -> list[Tensor]:
    """W_1, …, W_L with W_L ⋯ W_1 = U S Vᵀ, S = diag(σ) [k, d]: W_1 = Q_1 S_1 Vᵀ,
    W_j = Q_j Q_{j−1}ᵀ, W_L = U [I_r 0] Q_{L−1}ᵀ (U, V, Q_j random orthogonal, drawn from
    ``g`` in this order); for L = 1, W_1 = U S Vᵀ."""
    U, V = _orth(o.k, g), _orth(o.d, g)
    if o.depth == 1:
        return [U @ _rect_diag(o.k, o.d, sigma) @ V.T]
    Qs = [_orth(width, g) for _ in range(o.depth - 1)]
    Ws = [Qs[0] @ _rect_diag(width, o.d, sigma) @ V.T]
    for j in range(1, o.depth - 1):
        Ws.append(Qs[j] @ Qs[j - 1].T)
    Ws.append(U @ _rect_diag(o.k, width, torch.ones(r, dtype=torch.float64)) @ Qs[-1].T)
    return Ws


def _linear_net(Ws: list[Tensor]) -> nn.Sequential:
    """The bias-free float64 ``nn.Sequential`` of ``nn.Linear`` layers with weights ``Ws``."""
    mods = []
    for W in Ws:
        lin = nn.Linear(W.shape[1], W.shape[0], bias=False).to(torch.float64)
        with torch.no_grad():
            lin.weight.copy_(W)
        mods.append(lin)
    return nn.Sequential(*mods)


def t6_construction(trace: float, ld: float, *args: Any, options: T6Options | None = None,
                    **flags: Any) -> T6Network:
    """T6 (ours): a zero-loss network with any prescribed tr H > 0 and LD ∈ [1, r], r = min(k, d).

    Construction: a bias-free deep linear network whose input–output map A = W_L ⋯ W_1 = U S Vᵀ
    has singular values σ² = (1, t, …, t) with t ∈ [0, 1] solving (Σσ²)²/Σσ⁴ = LD
    (W_1 = Q_1 S_1 Vᵀ, W_j = Q_j Q_{j−1}ᵀ, W_L = U [I_r 0] Q_{L−1}ᵀ with random orthogonal
    U, V, Q_j); targets Y = f(X), so L = 0 and tr H = (1/n) Σ ‖J_i‖_F² (L1). J_θ(x) is linear in
    x, so tr H scales as s² under X → sX: X is rescaled to hit the target trace exactly. LD of
    J_x = A does not depend on X: sharpness does not control LD.

    Options: ``options=T6Options(d=6, k=4, depth=2, width=None, n=16, seed=0,
    dtype=torch.float64)``, or the same fields as keywords (``t6_construction(1.0, 2.0, d=6,
    k=4)``; they replace those of ``options``) or positionally in that order; an unknown
    keyword is a ``TypeError`` naming it.
    """
    o = resolve(T6Options, "t6_construction", options,
                with_positional("t6_construction", _T6_FIELDS, args, flags))
    r, width = _check(trace, ld, o)
    sigma = _spectrum_with_ld(float(ld), r)
    g = torch.Generator().manual_seed(int(o.seed))
    model = _linear_net(_weights(sigma, r, width, o, g))
    X = torch.randn(int(o.n), int(o.d), generator=g, dtype=torch.float64)
    t0 = float(curvature.gn_trace(model, X))
    X = X * math.sqrt(trace / t0)
    model = model.to(o.dtype)
    X = X.to(o.dtype)
    with torch.no_grad():
        Y = model(X)
    return T6Network(model=model, X=X, Y=Y, sigma=sigma, trace=float(trace), ld=float(ld))
