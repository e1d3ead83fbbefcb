"""The inequalities computed from :class:`flatbook.bounds_quantities.Quantities` alone: L2 and
L3, T1–T3 (first dense layer on the input), T4 (every dense layer), T5 (κ_l by its identity),
and :func:`all_bounds`, every bound computable from ``q`` (with T7 where η, B are given).

Each returns a :class:`flatbook.bounds_types.Bound`; see :mod:`flatbook.bounds` for where the
trace comes from and whose statement is whose.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flatbook import geometry as _geometry
from flatbook.bounds_quantities import Quantities
from flatbook.bounds_stability import t7_gd, t7_sgd
from flatbook.bounds_types import Bound, Number

__all__ = [
    "all_bounds",
    "kappa",
    "l2_bound",
    "l3_bound",
    "t1_min",
    "t1_per_sample",
    "t1_weighted",
    "t2_gm",
    "t2_min",
    "t2_per_sample",
    "t3_gm",
    "t3_min",
    "t3_weighted",
    "t4_nmls",
    "t4_nvr",
    "t5_lvr",
    "t5_mls",
]


def _first(q: Quantities) -> tuple[_geometry.LayerMeasures, Tensor]:
    """(the measures of W_1, ‖∇_{W_1} f(x_i)‖_F² [n]) of the dense layer on the input that
    T1–T3 need; ``ValueError`` when the network does not start with one."""
    if q.first is None:
        raise ValueError(
            "T1–T3 need a network whose first layer is dense on the (flattened) input "
            "(Sequential([Flatten,] Linear, …)); this one starts with another layer. Use the "
            "network-wide bounds t4_nmls / t4_nvr / t5_* (dense layers anywhere) instead."
        )
    return q.layers[q.first], q.grad_w_sqnorm[q.first]


def _gm(x: Tensor) -> Tensor:
    """Geometric mean exp(mean log x) (0 if any entry is 0)."""
    return torch.exp(torch.log(x).mean())


# ----------------------------------------------------------------------------- L2, L3


def l2_bound(q: Quantities, layer: str) -> Bound:
    """L2 (Ma & Ying), per sample:
    ‖h_{l−1}(x_i)‖ · ‖∂f/∂h_{l−1}(x_i)‖_F ≤ ‖W_l‖₂ ‖∇_{W_l} f(x_i)‖_F.

    From ∂f/∂h = G W and ‖∇_W f‖_F = ‖G‖_F ‖h‖ (G = ∂f/∂z). lhs, rhs: Tensor[n].
    """
    lm = q.layers[layer]
    return Bound(
        f"lem2_{layer}",
        (lm.h_sqnorm * lm.measures.frob_sq).sqrt(),
        lm.weight_norm * q.grad_w_sqnorm[layer].sqrt(),
        "‖h‖ ‖∂f/∂h‖_F ≤ ‖W‖₂ ‖∇_W f‖_F",
        "paper (Ma & Ying 2021)",
    )


_EMPTY = "not applicable: no dense layer (an empty sum says nothing)"


def l3_bound(q: Quantities) -> Bound:
    """L3, per sample: Σ_l ‖∇_{W_l} f(x_i)‖_F² ≤ ‖J_θ(x_i)‖_F² (dense layers only). [n].

    Without dense layers the sum is empty: lhs NaN, ``note`` set (not applicable).
    """
    if not q.grad_w_sqnorm:
        return Bound("lem3", torch.full_like(q.jac_sqnorm, math.nan), q.jac_sqnorm,
                     "Σ_l ‖∇_{W_l} f‖_F² ≤ ‖J_θ‖_F²", "paper", note=_EMPTY)
    lhs = torch.stack(list(q.grad_w_sqnorm.values())).sum(0)
    return Bound("lem3", lhs, q.jac_sqnorm, "Σ_l ‖∇_{W_l} f‖_F² ≤ ‖J_θ‖_F²", "paper")


# ----------------------------------------------------------------------------- T1


def t1_per_sample(q: Quantities) -> Bound:
    """T1 per sample (ours): ‖x_i‖² ‖J_x(x_i)‖_F² ≤ ‖W_1‖₂² ‖∇_{W_1} f(x_i)‖_F². [n]."""
    lm, gw = _first(q)
    return Bound(
        "t1_per_sample",
        q.x_sqnorm * q.output.frob_sq,
        lm.weight_norm**2 * gw,
        "‖x_i‖² ‖J_x(x_i)‖_F² ≤ ‖W_1‖₂² ‖∇_{W_1} f(x_i)‖_F²",
        "ours (L2 at the first layer)",
    )


def t1_weighted(q: Quantities) -> Bound:
    """T1 weighted form: (1/n) Σ_i ‖x_i‖² ‖J_x(x_i)‖_F² ≤ ‖W_1‖₂² tr H."""
    lm, _ = _first(q)
    return Bound(
        "t1_weighted",
        (q.x_sqnorm * q.output.frob_sq).mean(),
        lm.weight_norm**2 * q.trace,
        "(1/n) Σ ‖x_i‖² ‖J_x(x_i)‖_F² ≤ ‖W_1‖₂² tr H",
        "ours (weighted form of Ma & Ying)",
    )


def t1_min(q: Quantities) -> Bound:
    """T1 min form (Ma & Ying; paper v1 Eq. 6):
    (1/n) Σ ‖J_x(x_i)‖_F² ≤ ‖W_1‖₂² tr H / min_i ‖x_i‖²."""
    lm, _ = _first(q)
    return Bound(
        "t1_min",
        q.output.frob_sq.mean(),
        lm.weight_norm**2 * q.trace / q.x_sqnorm.min(),
        "(1/n) Σ ‖J_x(x_i)‖_F² ≤ ‖W_1‖₂² tr H / min_i ‖x_i‖²",
        "paper (v1 Eq. 6; Ma & Ying 2021)",
    )


# ----------------------------------------------------------------------------- T2


def t2_per_sample(q: Quantities) -> Bound:
    """T2 per sample: LVR(x_i) ≤ (‖W_1‖₂² ‖∇_{W_1} f(x_i)‖_F² / (r ‖x_i‖²))^{r/2}, r = min(k, d).

    L4 (AM–GM: LVR^{2/r} ≤ ‖J_x‖_F²/r) composed with T1 per sample. lhs, rhs: Tensor[n]
    (0 where J_x is rank-deficient). The lhs is computed as (LVR^{2/r})^{r/2}, through the
    squared scale on which the rhs is computed (‖∇_{W_1} f‖_F² is a sum of squares), so that
    an LVR too small for its square to be represented (< ~1e-154 per singular value in float64,
    e.g. a saturated unit) underflows to 0 on both sides alike rather than on one.
    """
    lm, gw = _first(q)
    r = q.output.r
    return Bound(
        "t2_per_sample",
        q.output.lvr_pow.pow(r / 2),
        (lm.weight_norm**2 * gw / (r * q.x_sqnorm)).pow(r / 2),
        "LVR(x_i) ≤ (‖W_1‖₂² ‖∇_{W_1} f(x_i)‖_F² / (r ‖x_i‖²))^{r/2}",
        "paper",
    )


def t2_min(q: Quantities) -> Bound:
    """T2, v1 min form: Σ_i LVR(x_i)² ≤ (n ‖W_1‖₂² tr H / (r min_i ‖x_i‖²))^r.

    Uses Σ c_i^r ≤ (Σ c_i)^r for c_i ≥ 0. (Large powers: rhs may overflow to +inf, which is
    still a true, vacuous bound.)
    """
    lm, _ = _first(q)
    r = q.output.r
    return Bound(
        "t2_min",
        torch.exp(2 * q.output.log_lvr).sum(),
        (q.n * lm.weight_norm**2 * q.trace / (r * q.x_sqnorm.min())).pow(r),
        "Σ_i LVR(x_i)² ≤ (n ‖W_1‖₂² tr H / (r min_i ‖x_i‖²))^r",
        "paper v1",
    )


def t2_gm(q: Quantities) -> Bound:
    """T2, v3+ geometric-mean form: GM_i(LVR(x_i)^{2/r}) ≤ ‖W_1‖₂² tr H / (r · GM_i ‖x_i‖²).

    GM computed in log space: GM(LVR^{2/r}) = exp((2/r) · mean_i log LVR(x_i)).
    """
    lm, _ = _first(q)
    r = q.output.r
    return Bound(
        "t2_gm",
        torch.exp(2.0 / r * q.output.log_lvr.mean()),
        lm.weight_norm**2 * q.trace / (r * _gm(q.x_sqnorm)),
        "GM_i LVR(x_i)^{2/r} ≤ ‖W_1‖₂² tr H / (r GM_i ‖x_i‖²)",
        "paper v3+",
    )


# ----------------------------------------------------------------------------- T3


def t3_weighted(q: Quantities) -> Bound:
    """T3 (MLS), weighted form: (1/n) Σ ‖x_i‖² MLS(x_i)² ≤ ‖W_1‖₂² tr H."""
    lm, _ = _first(q)
    return Bound(
        "t3_weighted",
        (q.x_sqnorm * q.output.mls**2).mean(),
        lm.weight_norm**2 * q.trace,
        "(1/n) Σ ‖x_i‖² MLS(x_i)² ≤ ‖W_1‖₂² tr H",
        "paper v3+",
    )


def t3_min(q: Quantities) -> Bound:
    """T3 min form: (1/n) Σ MLS(x_i)² ≤ ‖W_1‖₂² tr H / min_i ‖x_i‖²."""
    lm, _ = _first(q)
    return Bound(
        "t3_min",
        (q.output.mls**2).mean(),
        lm.weight_norm**2 * q.trace / q.x_sqnorm.min(),
        "(1/n) Σ MLS(x_i)² ≤ ‖W_1‖₂² tr H / min_i ‖x_i‖²",
        "paper v3+",
    )


def t3_gm(q: Quantities) -> Bound:
    """T3 geometric-mean form: GM_i MLS(x_i)² ≤ ‖W_1‖₂² tr H / GM_i ‖x_i‖²."""
    lm, _ = _first(q)
    return Bound(
        "t3_gm",
        _gm(q.output.mls**2),
        lm.weight_norm**2 * q.trace / _gm(q.x_sqnorm),
        "GM_i MLS(x_i)² ≤ ‖W_1‖₂² tr H / GM_i ‖x_i‖²",
        "paper v3+",
    )


# ----------------------------------------------------------------------------- T4


def t4_nmls(q: Quantities) -> Bound:
    """T4: NMLS = (1/n) Σ_i Σ_l ‖h_{l−1}(x_i)‖² MLS_l(x_i)² / ‖W_l‖₂² ≤ tr H.

    The sum runs over the dense layers of the model (all layers for an MLP). The
    normalisation by ‖W_l‖₂² (and so the name NMLS for the lhs) is ours (paper v5 states the
    network-wide bound; paper.md T4).
    """
    lhs = sum(
        ((lm.h_sqnorm * lm.measures.mls**2) / lm.weight_norm**2).mean() for lm in q.layers.values()
    )
    return Bound(
        "t4_nmls",
        torch.as_tensor(lhs if q.layers else math.nan, dtype=q.trace.dtype),
        q.trace,
        "NMLS = (1/n) Σ_i Σ_l ‖h_{l−1}‖² MLS_l² / ‖W_l‖₂² ≤ tr H",
        "paper v5 (normalisation ours)",
        note="" if q.layers else _EMPTY,
    )


def t4_nvr(q: Quantities) -> Bound:
    """T4: NVR = (1/n) Σ_i Σ_l r_l ‖h_{l−1}(x_i)‖² LVR_l(x_i)^{2/r_l} / ‖W_l‖₂² ≤ tr H,
    r_l = min(k, dim h_{l−1}). Normalisation ours (see :func:`t4_nmls`).
    """
    lhs = sum(
        (lm.measures.r * lm.h_sqnorm * lm.measures.lvr_pow / lm.weight_norm**2).mean()
        for lm in q.layers.values()
    )
    return Bound(
        "t4_nvr",
        torch.as_tensor(lhs if q.layers else math.nan, dtype=q.trace.dtype),
        q.trace,
        "NVR = (1/n) Σ_i Σ_l r_l ‖h_{l−1}‖² LVR_l^{2/r_l} / ‖W_l‖₂² ≤ tr H",
        "paper v5 (normalisation ours)",
        note="" if q.layers else _EMPTY,
    )


# ----------------------------------------------------------------------------- T5


def kappa(q: Quantities, layer: str) -> Tensor:
    """κ_l by the T5 identity (ours): (1/n) Σ_i ‖h_{l−1}(x_i)‖² ‖∂f/∂h_{l−1}(x_i)‖_F².

    Equal to the relative flatness κ_l (definition: :func:`relative_flatness`) at an
    interpolating point of the squared loss (checked by :func:`t5_identity`).
    """
    lm = q.layers[layer]
    return (lm.h_sqnorm * lm.measures.frob_sq).mean()


def t5_mls(q: Quantities, layer: str, kappa_l: Number | None = None) -> Bound:
    """T5 (MLS form): (1/n) Σ_i ‖h_{l−1}(x_i)‖² MLS_l(x_i)² ≤ κ_l.

    Both sides are invariant under W_l → aW_l, b_l → a b_l, W_{l+1} → W_{l+1}/a (ReLU).
    ``kappa_l`` defaults to the identity form :func:`kappa`; pass the Hessian-block value of
    :func:`relative_flatness` to check the bound against the definition.
    """
    lm = q.layers[layer]
    k = kappa(q, layer) if kappa_l is None else kappa_l
    return Bound(
        f"t5_mls_{layer}",
        (lm.h_sqnorm * lm.measures.mls**2).mean(),
        k,
        "(1/n) Σ ‖h_{l−1}‖² MLS_l² ≤ κ_l",
        "paper v4+ (κ_l: Petzka et al. 2021)",
    )


def t5_lvr(q: Quantities, layer: str, kappa_l: Number | None = None) -> Bound:
    """T5 (volume form): (1/n) Σ_i r_l ‖h_{l−1}(x_i)‖² LVR_l(x_i)^{2/r_l} ≤ κ_l."""
    lm = q.layers[layer]
    k = kappa(q, layer) if kappa_l is None else kappa_l
    return Bound(
        f"t5_lvr_{layer}",
        (lm.measures.r * lm.h_sqnorm * lm.measures.lvr_pow).mean(),
        k,
        "(1/n) Σ r_l ‖h_{l−1}‖² LVR_l^{2/r_l} ≤ κ_l",
        "paper v4+ (κ_l: Petzka et al. 2021)",
    )


# ----------------------------------------------------------------------------- all


def all_bounds(
    q: Quantities,
    lambda_max: Number | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    n_train: int | None = None,
) -> dict[str, Bound]:
    """Every bound computable from ``q``, keyed by name.

    Always: ``lem3``, ``t4_nmls``, ``t4_nvr``, per dense layer ``lem2_{l}``, ``t5_mls_{l}``,
    ``t5_lvr_{l}``. If the first layer is dense on the input: ``t1_per_sample``,
    ``t1_weighted``, ``t1_min``, ``t2_per_sample``, ``t2_min``, ``t2_gm``, ``t3_weighted``,
    ``t3_min``, ``t3_gm``. With ``lambda_max`` and ``lr``: ``t7_gd``; with ``lr`` and
    ``batch_size``: ``t7_sgd`` (with n = ``n_train``, the training-set size, when given;
    else the rows of X).
    """
    out: dict[str, Bound] = {}
    if q.first is not None:
        for fn in (
            t1_per_sample,
            t1_weighted,
            t1_min,
            t2_per_sample,
            t2_min,
            t2_gm,
            t3_weighted,
            t3_min,
            t3_gm,
        ):
            b = fn(q)
            out[b.name] = b
    out["lem3"] = l3_bound(q)
    out["t4_nmls"] = t4_nmls(q)
    out["t4_nvr"] = t4_nvr(q)
    for name in q.layers:
        for b in (l2_bound(q, name), t5_mls(q, name), t5_lvr(q, name)):
            out[b.name] = b
    if lr is not None and lambda_max is not None:
        out["t7_gd"] = t7_gd(lambda_max, lr)
    if lr is not None and batch_size is not None:
        n_sgd = q.n if n_train is None else int(n_train)  # p depends on the training-set size
        out["t7_sgd"] = t7_sgd(q.trace, lr, batch_size, n_sgd, q.k)
    return out
