"""Both sides of every inequality of the derivation chain (paper.md §2: L1–L4, T1–T7).

Each bound is returned as a :class:`Bound` — ``lhs``, ``rhs``, ``slack = rhs/lhs`` and
``holds(rtol)`` (lhs ≤ rhs·(1 + rtol)) — so that a chapter can print, plot and assert it.
Identities (L1, L2, the T5 identity) are returned as :class:`Identity` with their error.

Where the trace comes from
--------------------------
The bounds are stated with tr H at an interpolating minimum of the squared loss, where
tr H = (1/n) Σ_i ‖J_i‖_F² (L1). We always use this Gauss–Newton trace ``q.trace`` =
(1/n) Σ_i ‖J_i‖_F² (computed exactly from per-sample parameter Jacobians with
:func:`flatbook.curvature.jacobian_sqnorms`). The inequalities T1–T5 hold with it **at any θ**
(their proofs use only L2 and L3, which are statements about J); they hold with tr H itself
only where tr H = tr H_GN (the Gauss–Newton trace), i.e. at interpolation (L1). Bias
parameters enter tr H but not the left sides: they only loosen the bounds.

Which statement is whose
------------------------
- T1 min form (Ma & Ying 2021 for a scalar output; the paper's extension to k outputs, v1
  "Eq. 6"), T2 v1 (sum of LVR²) and v3+ (geometric mean) forms, T3 (MLS) and T5's relative
  flatness κ_l (Petzka et al. 2021, used in paper v4+) are the paper's (in our notation; its
  printed constants are not available to us, see paper.md).
- T7: linear stability of GD and SGD is Wu, Ma & E 2018 and Ma & Ying 2021; the mean-square
  condition in trace form, :func:`t7_sgd_mean_square`, is Mulayoff & Michaeli 2023, Prop. 3
  (a *necessary* condition for mean-square stability); the trace ceiling with k outputs and
  batch factor p, :func:`t7_sgd`, is ours (its case k = B = 1, tr H ≤ 2/η, is Wu & Su 2023).
- The T1 weighted form, the per-sample forms, the T5 identity κ_l = (1/n) Σ ‖h‖²‖∂f/∂h‖_F²,
  the T6 construction and the shared-weight terms (:func:`shared_weight_terms`: convolutions,
  patch embeddings, token-wise linear maps) are ours. NMLS and NVR in T4 are defined as the
  left-hand sides below: **the normalisation by ‖W_l‖₂² is ours**.

All functions work in the dtype of the model: use float64 for checks at 1e-9.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import hessian, vmap

from flatbook import curvature, losses
from flatbook import geometry as _geometry
from flatbook import layers as _layers
from flatbook import models as _models
from flatbook._functional import flatten, forward_fn, named_params, unflatten
from flatbook._validate import check_positive_float

__all__ = [
    "Bound",
    "Identity",
    "Quantities",
    "SharedWeightTerms",
    "T6Network",
    "adaptive_sharpness",
    "all_bounds",
    "kappa",
    "l1_identity",
    "l2_bound",
    "l2_identity",
    "l3_bound",
    "mean_square_lr",
    "quantities",
    "relative_flatness",
    "sgd_p",
    "shared_weight_terms",
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
    "t5_identity",
    "t5_lvr",
    "t5_mls",
    "t6_construction",
    "t7_gd",
    "t7_sgd",
    "t7_sgd_mean_square",
]

Number = float | Tensor


# ----------------------------------------------------------------------------- result types


def _as_value(x: Number) -> Number:
    if isinstance(x, Tensor):
        x = x.detach()
        return float(x) if x.ndim == 0 else x
    return float(x)


@dataclass(frozen=True)
class Bound:
    """Both sides of an inequality lhs ≤ rhs.

    Attributes:
        name: short key, e.g. ``"t1_weighted"``.
        lhs, rhs: floats for aggregated statements, tensors [n] for per-sample ones.
        statement: the inequality in words/symbols.
        source: whose statement it is (``"paper …"`` or ``"ours"``).
    """

    name: str
    lhs: Number
    rhs: Number
    statement: str = ""
    source: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "lhs", _as_value(self.lhs))
        object.__setattr__(self, "rhs", _as_value(self.rhs))

    @property
    def applicable(self) -> bool:
        """False for an empty bound (e.g. T4 of a network without dense layers): then lhs is
        NaN, ``note`` says why, :meth:`holds` is False and a report prints "n/a"."""
        if self.note:
            return False
        lhs = torch.as_tensor(self.lhs, dtype=torch.float64)
        return not bool(torch.isnan(lhs).all())

    @property
    def slack(self) -> Number:
        """rhs / lhs (≥ 1 when the bound holds; +inf when lhs = 0 < rhs)."""
        if isinstance(self.lhs, Tensor) or isinstance(self.rhs, Tensor):
            lhs = torch.as_tensor(self.lhs, dtype=torch.float64)
            rhs = torch.as_tensor(self.rhs, dtype=torch.float64)
            return rhs / lhs
        if self.lhs == 0:
            return math.inf if self.rhs > 0 else math.nan
        return self.rhs / self.lhs

    def holds(self, rtol: float = 1e-9) -> bool:
        """lhs ≤ rhs·(1 + rtol) (for every sample of a per-sample bound).

        NaN on either side counts as a failure; a bound that is not :attr:`applicable`
        never holds.
        """
        if self.note:
            return False
        if isinstance(self.lhs, Tensor) or isinstance(self.rhs, Tensor):
            lhs = torch.as_tensor(self.lhs, dtype=torch.float64)
            rhs = torch.as_tensor(self.rhs, dtype=torch.float64)
            return bool((lhs <= rhs * (1 + rtol)).all())
        return bool(self.lhs <= self.rhs * (1 + rtol))

    def worst(self) -> tuple[float, float, float]:
        """(lhs, rhs, slack) at the tightest sample (per-sample bounds) or the values."""
        if isinstance(self.slack, Tensor):
            i = int(torch.nan_to_num(self.slack, nan=-math.inf).argmin())
            return float(self.lhs[i]), float(self.rhs[i]), float(self.slack[i])  # type: ignore[index]
        return float(self.lhs), float(self.rhs), float(self.slack)  # type: ignore[arg-type]

    def __str__(self) -> str:
        lhs, rhs, s = self.worst()
        return f"{self.name}: {lhs:.4g} ≤ {rhs:.4g} (slack {s:.3g})"


@dataclass(frozen=True)
class Identity:
    """Both sides of an identity lhs = rhs (scalars or tensors of equal shape).

    ``rel_err`` = max |lhs − rhs| / max |rhs| (normwise, robust to zero entries).
    """

    name: str
    lhs: Number
    rhs: Number
    statement: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "lhs", _as_value(self.lhs))
        object.__setattr__(self, "rhs", _as_value(self.rhs))

    @property
    def abs_err(self) -> float:
        """max |lhs − rhs|."""
        d = torch.as_tensor(self.lhs, dtype=torch.float64) - torch.as_tensor(
            self.rhs, dtype=torch.float64
        )
        return float(d.abs().max())

    @property
    def rel_err(self) -> float:
        """max |lhs − rhs| / max |rhs| (0 when both are exactly 0)."""
        scale = float(torch.as_tensor(self.rhs, dtype=torch.float64).abs().max())
        err = self.abs_err
        if scale == 0:
            return 0.0 if err == 0 else math.inf
        return err / scale

    def holds(self, tol: float = 1e-8) -> bool:
        """rel_err ≤ tol."""
        return self.rel_err <= tol

    def __str__(self) -> str:
        return f"{self.name}: relative error {self.rel_err:.2e}"


# ----------------------------------------------------------------------------- quantities


_RESHAPE_ONLY = (nn.Flatten, nn.Identity)


@dataclass(frozen=True)
class Quantities:
    """Everything the bounds need, computed once (:func:`quantities`).

    Attributes:
        n, k, d: samples, outputs, input dimension (entries of one input).
        x_sqnorm: ‖x_i‖² (flattened inputs), [n].
        output: :class:`flatbook.geometry.Measures` of J_x(x_i) = ∂f/∂x ∈ R^{k×d}
            (r = min(k, d)); LVR, MLS, LD of paper.md §1.
        layers: ``{"l1": LayerMeasures, …}`` for every dense layer: ‖h_{l−1}‖², measures of
            ∂f/∂h_{l−1} (MLS_l, LVR_l, LD_l), ‖W_l‖₂.
        grad_w_sqnorm: ``{"l1": Tensor[n], …}``, ‖∇_{W_l} f(x_i)‖_F².
        jac_sqnorm: ‖J_i‖_F² over all trainable parameters, [n].
        trace: (1/n) Σ_i ‖J_i‖_F² (the Gauss–Newton trace; = tr H at interpolation, L1).
        first: name of the dense layer whose input is the (flattened) input x — the W_1 of
            T1–T3 — or ``None`` when the network does not start with a dense layer (CNN, ViT).
        notes: caveats (shared weights, layers not measured, skip connections, …).
        total: ``{layer: Measures}`` of the *total* ∂f/∂h_{l−1}, for the layers where it was
            measured (not ``nn.Sequential`` items; h_{l−1} a module's output or x; see
            :mod:`flatbook.probe`).
        skip: ``{layer: True/False/None}``: whether a skip connection carries h_{l−1} around
            layer l (``None``: not measured; always ``None`` for ``nn.Sequential`` items).
        inputs: ``{layer: Tensor[n, p]}``, h_{l−1}(x_i) (flattened).
    """

    n: int
    k: int
    d: int
    x_sqnorm: Tensor
    output: _geometry.Measures
    layers: dict[str, _geometry.LayerMeasures]
    grad_w_sqnorm: dict[str, Tensor]
    jac_sqnorm: Tensor
    trace: Tensor
    first: str | None = None
    notes: list[str] = field(default_factory=list)
    total: dict[str, _geometry.Measures] = field(default_factory=dict)
    skip: dict[str, bool | None] = field(default_factory=dict)
    inputs: dict[str, Tensor] = field(default_factory=dict)


def quantities(
    model: nn.Module, X: object, chunk: int | None = None, rtol: float | None = None,
    *, output: object = None,
) -> Quantities:
    """Compute :class:`Quantities` for any ``nn.Module`` on inputs X [n, …].

    The model and data are resolved once by a :class:`flatbook.probe.Probe` (eval mode, dense
    layers found by hooks, see :mod:`flatbook.probe`): one Jacobian sweep gives J_x and every
    dense layer's path Jacobian J_l = ∂f/∂δ = G_l W_l (δ added to the layer's input; = the
    paper's ∂f/∂h_{l−1} for ``nn.Sequential`` models), and per-sample parameter-Jacobian norms
    come from :func:`flatbook.curvature.jacobian_sqnorms`.

    Args:
        X: inputs [n, …] (or a ``DataLoader`` / iterable of batches / ``Dataset``, as
            :func:`flatbook.probe.resolve_data` reads them).
        chunk: samples per vectorised call (``None``: automatic, bounding the size of each
            Jacobian block).
        rtol: rank tolerance of log LVR (see :func:`flatbook.geometry.log_lvr`).
        output: selector of f for tuple/dict outputs (see :class:`flatbook.probe.Probe`).
    """
    from flatbook.probe import Probe

    if isinstance(X, Tensor) and (X.ndim < 2 or X.shape[0] == 0):
        raise ValueError(f"X must have shape [n, …] with n ≥ 1; got {tuple(X.shape)}")
    with Probe(model, X, output=output, chunk=chunk) as p:  # type: ignore[arg-type]
        return probe_quantities(p, rtol)


def _shared_sqnorms(p: object, meas: object) -> dict[str, Tensor] | None:
    """‖∂f(x_i)/∂θ_name‖_F² from the probe's own sweep, when every trainable parameter is the
    weight or bias of a measured dense layer: ‖∇_W f‖_F² = ‖G_l‖_F² ‖h_{l−1}‖² and
    ‖∇_b f‖_F² = ‖G_l‖_F² (G_l = ∂f/∂z_l, paper.md L2), so the GN trace costs no further
    backward passes. ``None`` otherwise (then :func:`flatbook.curvature.jacobian_sqnorms`)."""
    names = {id(t): n for n, t in p.fn.named_parameters() if t.requires_grad}  # type: ignore[attr-defined]
    out: dict[str, Tensor] = {}
    for res in meas.layers.values():  # type: ignore[attr-defined]
        if res.G is None:
            return None
        g2 = res.G.pow(2).sum((1, 2))
        mod = res.layer.module
        if id(mod.weight) in names:
            out[names[id(mod.weight)]] = g2 * res.H.pow(2).sum(1)
        if mod.bias is not None and id(mod.bias) in names:
            out[names[id(mod.bias)]] = g2
    if not out or set(out) != set(names.values()):
        return None
    return {n: out[n] for n in names.values()}


def probe_quantities(p: object, rtol: float | None = None) -> Quantities:
    """:class:`Quantities` from an entered :class:`flatbook.probe.Probe` ``p``."""
    from flatbook.probe import Probe

    assert isinstance(p, Probe)
    n = p.n
    X = p.X
    meas = p.measure()
    nan = torch.full((n,), math.nan, dtype=p.dtype, device=p.device)
    if meas.J_x is not None:
        x_sq = X.detach().reshape(n, -1).pow(2).sum(1)
        out = _geometry.measures(meas.J_x, rtol)
    else:  # integer inputs: no input Jacobian
        x_sq = nan
        r0 = min(p.k, p.d)
        out = _geometry.Measures(sigma=torch.full((n, r0), math.nan, dtype=p.dtype), log_lvr=nan,
                                 mls=nan, ld=nan, frob_sq=nan, r=r0, N=p.k, d=p.d)
    sq = _shared_sqnorms(p, meas)
    if sq is None:
        sq = curvature.jacobian_sqnorms(p.fn, X, p._chunk)
    jac_sq = torch.stack(list(sq.values())).sum(0)
    lm: dict[str, _geometry.LayerMeasures] = {}
    gw: dict[str, Tensor] = {}
    total: dict[str, _geometry.Measures] = {}
    skip: dict[str, bool | None] = {}
    H_in: dict[str, Tensor] = {}
    first: str | None = None
    seq = p.is_sequential
    eps = torch.finfo(p.dtype).eps
    for name, res in meas.layers.items():
        L = res.layer
        layer: object = L
        if seq and L.index is not None:
            i = L.index
            model = p.model
            layer = _layers.DenseLayer(
                name=name, index=i, module=L.module, weight_name=f"{i}.weight",
                head=model[:i], tail=model[i:], input_name="input" if i == 0 else str(i - 1),
                l=int(name[1:]),
            )
            reshape_only = all(isinstance(m, _RESHAPE_ONLY) for m in model[:i])
        else:
            reshape_only = (
                meas.J_x is not None and res.H.shape[1] == p.d
                and torch.equal(res.H, X.reshape(n, -1))
                and float((meas.J_x - res.J).norm())
                <= math.sqrt(eps) * max(float(meas.J_x.norm()), 1e-300)
            )
        if reshape_only and meas.J_x is not None and first is None:
            first = name  # h_0 = flatten(x), reaching f only through this layer: ∂f/∂h_0 = J_x
            m = out
        else:
            m = _geometry.measures(res.J, rtol)
        lm[name] = _geometry.LayerMeasures(
            layer=layer,  # type: ignore[arg-type]
            h_sqnorm=res.H.pow(2).sum(1),
            measures=m,
            weight_norm=_geometry.spectral_norm(L.weight),
        )
        gw[name] = sq[L.weight_name]
        H_in[name] = res.H
        skip[name] = res.skip
        if res.J_total is not None:
            total[name] = _geometry.measures(res.J_total, rtol)
    notes = list(p.notes)
    if first is None:
        notes.append(
            "T1–T3 not applicable: the network does not start with a dense layer on the input"
        )
    dense_ids = {id(r.layer.weight) for r in meas.layers.values()}
    others = [n_ for n_, q_ in p.fn.named_parameters() if q_.requires_grad
              and id(q_) not in dense_ids and not n_.endswith("bias")]
    if others:
        notes.append(
            "parameters outside dense layers (conv / attention / norm / shared weights): T4 "
            "sums over dense layers only (still a valid bound, by L3); L2 is not exact for "
            "shared weights"
        )
    if not meas.layers:
        notes.append("no dense layer found: lem3, t4_nmls and t4_nvr are not applicable "
                     "(empty sums), reported as NaN")
    for name, s_ in skip.items():
        if s_:
            notes.append(
                f"dense layer {name}: h_{{l−1}} also reaches f around the layer (skip "
                "connection): its mls/log_lvr/ld are the path sensitivity ∂f/∂δ = G_l W_l; "
                "the total ∂f/∂h_{l−1} is reported as total_mls/total_log_lvr/total_ld"
            )
    if meas.J_x is None:
        notes.append("integer inputs: no input Jacobian, output-level measures are NaN")
    return Quantities(
        n=n,
        k=out.N,
        d=out.d,
        x_sqnorm=x_sq,
        output=out,
        layers=lm,
        grad_w_sqnorm=gw,
        jac_sqnorm=jac_sq,
        trace=jac_sq.mean(),
        first=first,
        notes=notes,
        total=total,
        skip=skip,
        inputs=H_in,
    )


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def _first(q: Quantities) -> tuple[_geometry.LayerMeasures, Tensor]:
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


def _dense(model: nn.Sequential, X: Tensor, layer: str | int) -> _layers.DenseLayer:
    dl = _layers.dense_layers(model, X)
    for d in dl:
        if (isinstance(layer, str) and layer == d.name) or (
            isinstance(layer, int) and not isinstance(layer, bool) and layer == d.index
        ):
            return d
    raise ValueError(
        f"unknown dense layer {layer!r}; allowed names {[d.name for d in dl]} "
        f"or item indices {[d.index for d in dl]}"
    )


KAPPA_METHODS = ("hessian", "laplacian", "gn")


def relative_flatness(
    model: nn.Sequential,
    X: Tensor,
    layer: str | int,
    Y: Tensor | None = None,
    loss: str | Callable[[Tensor, Tensor], Tensor] = "squared",
    method: str = "hessian",
    hessian_matrix: Tensor | None = None,
) -> Tensor:
    """Relative flatness κ_l = Σ_{s,s'} ⟨w_s, w_{s'}⟩ tr(H_{s,s'}) of dense layer l (T5).

    w_s ∈ R^p are the rows of W_l ∈ R^{m×p}, H_{s,s'} = ∂²L/∂w_s∂w_{s'} ∈ R^{p×p} the Hessian
    blocks of the loss L = (1/n) Σ ℓ(f(x_i), y_i). Methods:

    - ``"hessian"`` — the definition: the exact Hessian of L with respect to W_l alone
      ([mp, mp], small layers only), κ = Σ_{s,s'} (W Wᵀ)_{ss'} Σ_a H[(s,a),(s',a)].
    - ``"laplacian"`` — an exact equivalent at any θ (ours): since L depends on W_l only via
      z = W h + b, tr H_{s,s'} = (1/n) Σ_i ‖h_i‖² (∇²_z ℓ_i)_{ss'} and so
      κ_l = (1/n) Σ_i ‖h_{l−1}(x_i)‖² tr ∇²_h ℓ(f, y_i) (per-sample p×p Hessians in h).
    - ``"gn"`` — the T5 identity, exact at interpolation for the squared loss:
      κ_l = (1/n) Σ_i ‖h_{l−1}‖² ‖∂f/∂h_{l−1}‖_F² (no targets needed).

    Args:
        layer: dense-layer name (``"l1"``) or item index.
        Y: targets [n, k]; default f(X) (exact interpolation).
        loss: ``"squared"`` (the bounds' loss), ``"cross_entropy"`` or a callable.
        hessian_matrix: optional precomputed dense Hessian [P, P] of the same loss and data
            (``named_parameters`` order, e.g. ``l1_identity(...).lhs``) for ``"hessian"``: its
            W_l block is used instead of differentiating again.
    """
    if method not in KAPPA_METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {list(KAPPA_METHODS)}")
    model = _layers.check_sequential(model)
    dl = _dense(model, X, layer)
    loss_fn = losses.get(loss)
    with curvature.eval_mode(model):
        with torch.no_grad():
            H = dl.head(X)
            if Y is None:
                Y = model(X)
        h_sq = H.reshape(H.shape[0], -1).pow(2).sum(1)
        if method == "gn":
            J = _geometry.input_jacobian(dl.tail, H)
            return (h_sq * J.pow(2).sum((1, 2))).mean().detach()
        if method == "laplacian":
            tail = dl.tail

            def ell(h: Tensor, y: Tensor) -> Tensor:
                return loss_fn(tail(h.unsqueeze(0)), y.unsqueeze(0))

            with torch.no_grad():
                Hh = vmap(hessian(ell))(H, Y)  # [n, p, p]
            return (h_sq * torch.diagonal(Hh, dim1=1, dim2=2).sum(1)).mean().detach()
        # definition: Hessian with respect to W_l only
        params = named_params(model)
        W = params[dl.weight_name]
        m, p = W.shape
        if hessian_matrix is not None:
            P = sum(v.numel() for v in params.values())
            if tuple(hessian_matrix.shape) != (P, P):
                raise ValueError(
                    f"hessian_matrix must have shape [P, P] = [{P}, {P}]; "
                    f"got {tuple(hessian_matrix.shape)}"
                )
            start = 0
            for name, v in params.items():
                if name == dl.weight_name:
                    break
                start += v.numel()
            sl = slice(start, start + m * p)
            Hw = hessian_matrix[sl, sl].reshape(m, p, m, p)
        else:
            f = forward_fn(model)

            def L(w: Tensor) -> Tensor:
                return loss_fn(f({**params, dl.weight_name: w}, X), Y)

            with torch.no_grad():
                Hw = hessian(L)(W).reshape(m, p, m, p)
        T = torch.einsum("sata->st", Hw)
        return ((W @ W.T) * T).sum().detach()


def t5_identity(
    model: nn.Sequential, X: Tensor, layer: str | int, Y: Tensor | None = None
) -> Identity:
    """T5 identity (ours): κ_l (Hessian blocks) = (1/n) Σ ‖h_{l−1}‖² ‖∂f/∂h_{l−1}‖_F² at
    interpolation (Y = f(X), the default), squared loss."""
    return Identity(
        f"t5_identity_{_dense(model, X, layer).name}",
        relative_flatness(model, X, layer, Y, method="hessian"),
        relative_flatness(model, X, layer, Y, method="gn"),
        "Σ_{s,s'} ⟨w_s, w_s'⟩ tr H_{s,s'} = (1/n) Σ ‖h_{l−1}‖² ‖∂f/∂h_{l−1}‖_F²",
        "ours",
    )


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


# ----------------------------------------------------------------------------- identities


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


def l2_identity(
    model: nn.Sequential, X: Tensor, q: Quantities | None = None, method: str = "auto"
) -> dict[str, Identity]:
    """L2 per dense layer and sample: ‖∇_{W_l} f(x_i)‖_F = ‖G_i‖_F ‖h_{l−1}(x_i)‖.

    lhs from the parameter Jacobian (:func:`flatbook.curvature.jacobian_sqnorms`), rhs from an
    input Jacobian G = ∂f/∂z of the rest of the network at z = W h + b.
    Returns ``{"l1": Identity, …}`` with tensors [n]. ``q`` (of the same model and X) reuses
    its parameter-Jacobian norms. ``method`` is passed to ``jacobian_sqnorms`` when ``q`` is
    None: its default ``"auto"`` computes dense-layer norms by ghost norms, i.e. as
    ‖δ‖²‖h‖² — L2 itself — so for an *independent* check of the identity use
    ``method="jacrev"`` (per-sample autograd Jacobians of every parameter).
    """
    model = _layers.check_sequential(model)
    out = {}
    with curvature.eval_mode(model):
        if q is None:
            sq = curvature.jacobian_sqnorms(model, X, method=method)
        else:
            sq = {d.layer.weight_name: q.grad_w_sqnorm[k] for k, d in q.layers.items()}
        for d in _layers.dense_layers(model, X):
            with torch.no_grad():
                H = d.head(X)
                Z = model[d.index](H)
            G = _geometry.input_jacobian(model[d.index + 1 :], Z)
            out[d.name] = Identity(
                f"lem2_{d.name}",
                sq[d.weight_name].sqrt(),
                G.pow(2).sum((1, 2)).sqrt() * H.reshape(H.shape[0], -1).norm(dim=1),
                "‖∇_W f‖_F = ‖G‖_F ‖h‖",
                "paper (Ma & Ying 2021)",
            )
    return out


# ----------------------------------------------------------------------------- shared weights


@dataclass(frozen=True)
class SharedWeightTerms:
    """The terms of a shared-weight layer z_t = W h_t + b, t = 1…T (book ``lem-shared``; ours,
    not the paper's), per sample. Computed by :func:`shared_weight_terms`.

    Attributes:
        tied: [n] ‖∇_W f(x_i)‖_F² from the parameter Jacobian (the block of J_i that the
            Hessian of the tied network sees).
        from_terms: [n] the same from G_t and h_t: ‖Σ_t G_tᵀ h_tᵀ‖_F² =
            Σ_{t,t'} ⟨G_t, G_{t'}⟩_F ⟨h_t, h_{t'}⟩ (eq. ``eq-shared-grad``; equals ``tied``).
        untied: [n] U = Σ_t ‖G_t‖_F² ‖h_t‖² (the squared gradient norm of the *untied* network,
            one copy W_t = W per position).
        sensitivity: [n] Σ_t ‖h_t‖² ‖G_t W‖_F² (position-wise input sensitivity).
        weight_sqnorm: 0-d ‖W‖₂² (W reshaped to [m, p]).
        T: number of positions.
        weight_name: the parameter name of W (``named_parameters``).
        patches: [n, p, T] the patches h_t (columns), in the order of the layer's outputs.
        G: [n, k, m, T] the sensitivities G_t = ∂f/∂z_t.
    """

    tied: Tensor
    from_terms: Tensor
    untied: Tensor
    sensitivity: Tensor
    weight_sqnorm: Tensor
    T: int
    weight_name: str
    patches: Tensor = field(repr=False)
    G: Tensor = field(repr=False)

    def grad_identity(self) -> Identity:
        """``eq-shared-grad``: ‖∇_W f‖_F² (parameter Jacobian) = Σ_{t,t'}⟨G_t,G_t'⟩⟨h_t,h_t'⟩."""
        return Identity(
            "shared_grad", self.tied, self.from_terms,
            "‖∇_W f‖_F² = Σ_{t,t'} ⟨G_t, G_t'⟩_F ⟨h_t, h_t'⟩", "ours",
        )

    def position_wise(self) -> Bound:
        """``eq-shared-untied``, left: Σ_t ‖h_t‖² ‖G_t W‖_F² ≤ ‖W‖₂² U, per sample."""
        return Bound(
            "shared_position_wise", self.sensitivity, self.weight_sqnorm * self.untied,
            "Σ_t ‖h_t‖² ‖G_t W‖_F² ≤ ‖W‖₂² Σ_t ‖G_t‖_F² ‖h_t‖²", "ours",
        )

    def tied_le_untied(self) -> Bound:
        """``eq-shared-untied``, right: ‖∇_W f‖_F² ≤ T U, per sample."""
        return Bound(
            "shared_tied", self.tied, self.T * self.untied,
            "‖∇_W f‖_F² ≤ T Σ_t ‖G_t‖_F² ‖h_t‖²", "ours",
        )


_SHARED_KINDS = (
    "nn.Conv1d, nn.Conv2d (groups=1, zero padding), flatbook.models.PatchEmbed, nn.Linear"
)


def _shared_layer(item: nn.Module) -> tuple[nn.Conv1d | nn.Conv2d | nn.Linear, bool]:
    """(the module holding W, whether the item's output is tokens [n, T', m] ending in z_t)."""
    if isinstance(item, _models.PatchEmbed):
        return item.proj, True
    if isinstance(item, (nn.Conv1d, nn.Conv2d)):
        if item.groups != 1 or item.padding_mode != "zeros" or isinstance(item.padding, str):
            raise ValueError(
                f"shared_weight_terms supports convolutions with groups=1, "
                f"padding_mode='zeros' and integer padding; got groups={item.groups}, "
                f"padding_mode={item.padding_mode!r}, padding={item.padding!r}"
            )
        return item, False
    if isinstance(item, nn.Linear):
        return item, True
    raise ValueError(f"item must be one of {_SHARED_KINDS}; got {type(item).__name__}")


def shared_weight_terms(
    model: nn.Sequential, X: Tensor, item: int = 0, chunk: int | None = 256
) -> SharedWeightTerms:
    """Tied and untied gradient terms of the shared-weight layer ``model[item]`` (ours).

    A shared-weight layer computes z_t = W h_t + b at positions t = 1…T, where h_t = P_t h ∈ R^p
    is a linear read-out of the item's input h = ``model[:item](x)`` (a patch of a convolution,
    as ``F.unfold`` extracts it; a token of a token-wise ``nn.Linear``; a patch of a ViT patch
    embedding), W ∈ R^{m×p} and G_t = ∂f/∂z_t ∈ R^{k×m}. Then (book ``lem-shared``)

        ∇_W f_c = Σ_t (G_t)_{c,:}ᵀ h_tᵀ,     ‖∇_W f‖_F² = Σ_{t,t'} ⟨G_t, G_{t'}⟩_F ⟨h_t, h_{t'}⟩,
        Σ_t ‖h_t‖² ‖G_t W‖_F² ≤ ‖W‖₂² U,     ‖∇_W f‖_F² ≤ T U,     U = Σ_t ‖G_t‖_F² ‖h_t‖².

    For T = 1 (a dense layer, or a convolution whose kernel covers its whole input) U is the
    tied norm and this is the multiplicative identity L2. **This analysis is ours, not the
    paper's**: the paper proves its bounds for dense layers only (paper.md "Shared weights");
    the cross terms can cancel, so the *tied* norm — what the Hessian sees — does not bound
    sensitivity in general (book ``thm-shared-counterexample``).

    Args:
        model: an ``nn.Sequential`` with output [n, k]; the network must depend on the layer only
            through its output (true for every flatbook model).
        X: inputs [n, …].
        item: index of the layer in ``model``: an ``nn.Conv1d``/``nn.Conv2d`` (groups = 1, zero
            integer padding; any stride and dilation), a :class:`flatbook.models.PatchEmbed`
            (its ``proj``; z_t are the last T tokens, a class token and the position embedding
            are additive), or an ``nn.Linear`` (on [n, p]: T = 1; on [n, …, p]: one position per
            token). Its weight must be trainable.
        chunk: samples per vectorised call (``None``: automatic) of the input Jacobian G and the
            parameter Jacobian (:func:`flatbook.geometry.input_jacobian`,
            :func:`flatbook.curvature.jacobian_sqnorms`).

    Returns:
        :class:`SharedWeightTerms` (tensors [n]; ``.grad_identity()``, ``.position_wise()``,
        ``.tied_le_untied()`` give both sides as :class:`Identity` / :class:`Bound`).
    """
    model = _layers.check_sequential(model)
    if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item < len(model):
        raise ValueError(f"item must be an index 0 … {len(model) - 1} of model; got {item!r}")
    layer, tokens = _shared_layer(model[item])
    wname = next((k for k, v in model.named_parameters() if v is layer.weight), None)
    if wname is None or not layer.weight.requires_grad:
        raise ValueError(f"the weight of model[{item}] must be a trainable parameter")
    n, m = X.shape[0], layer.weight.shape[0]
    with curvature.eval_mode(model):
        with torch.no_grad():
            H = model[:item](X)
            Z = model[item](H)  # conv: [n, m, *spatial]; tokens: [n, …, m]
        if isinstance(layer, nn.Linear):
            h = H.reshape(n, -1, H.shape[-1]).transpose(1, 2)  # [n, p, T]
        elif isinstance(layer, nn.Conv1d):
            h = F.unfold(H.unsqueeze(2), (1, *layer.kernel_size), dilation=(1, *layer.dilation),
                         padding=(0, *layer.padding), stride=(1, *layer.stride))
        else:
            h = F.unfold(H, layer.kernel_size, dilation=layer.dilation, padding=layer.padding,
                         stride=layer.stride)
        T, Wm = h.shape[2], layer.weight.detach().reshape(m, -1)  # W: [m, p]
        G = _geometry.input_jacobian(model[item + 1 :], Z, chunk=chunk)
        G = G.reshape(n, -1, *Z.shape[1:])
        if tokens:
            G = G.reshape(n, G.shape[1], -1, m)[:, :, -T:].transpose(2, 3)  # [n, k, m, T]
        else:
            G = G.flatten(3)
        tied = curvature.jacobian_sqnorms(model, X, chunk)[wname]
    from_terms = torch.einsum("nkmt,npt->nkmp", G, h).pow(2).sum((1, 2, 3))
    hsq, gsq = h.pow(2).sum(1), G.pow(2).sum((1, 2))  # [n, T]
    sens = (hsq * torch.einsum("nkmt,mp->nktp", G, Wm).pow(2).sum((1, 3))).sum(1)
    return SharedWeightTerms(
        tied=tied,
        from_terms=from_terms,
        untied=(gsq * hsq).sum(1),
        sensitivity=sens,
        weight_sqnorm=torch.linalg.matrix_norm(Wm, ord=2) ** 2,
        T=int(T),
        weight_name=wname,
        patches=h,
        G=G,
    )


# ----------------------------------------------------------------------------- T6


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


def t6_construction(
    trace: float,
    ld: float,
    d: int = 6,
    k: int = 4,
    depth: int = 2,
    width: int | None = None,
    n: int = 16,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> T6Network:
    """T6 (ours): a zero-loss network with any prescribed tr H > 0 and LD ∈ [1, r], r = min(k, d).

    Construction: a bias-free deep linear network whose input–output map A = W_L ⋯ W_1 = U S Vᵀ
    has singular values σ² = (1, t, …, t) with t ∈ [0, 1] solving (Σσ²)²/Σσ⁴ = LD
    (W_1 = Q_1 S_1 Vᵀ, W_j = Q_j Q_{j−1}ᵀ, W_L = U [I_r 0] Q_{L−1}ᵀ with random orthogonal
    U, V, Q_j); targets Y = f(X), so L = 0 and tr H = (1/n) Σ ‖J_i‖_F² (L1). J_θ(x) is linear in
    x, so tr H scales as s² under X → sX: X is rescaled to hit the target trace exactly. LD of
    J_x = A does not depend on X: sharpness does not control LD.
    """
    r = min(int(k), int(d))
    if not (isinstance(trace, int | float) and math.isfinite(trace) and trace > 0):
        raise ValueError(f"trace must be a finite number > 0; got {trace!r}")
    if not (1.0 <= ld <= r):
        raise ValueError(f"ld must lie in [1, r] with r = min(k, d) = {r}; got {ld!r}")
    if int(depth) < 1:
        raise ValueError(f"depth must be ≥ 1; got {depth!r}")
    width = int(width) if width is not None else max(int(d), int(k))
    if depth > 1 and width < r:
        raise ValueError(f"width must be ≥ r = {r}; got {width}")
    if int(n) < 1:
        raise ValueError(f"n must be ≥ 1; got {n!r}")
    sigma = _spectrum_with_ld(float(ld), r)
    g = torch.Generator().manual_seed(int(seed))

    def orth(m: int) -> Tensor:
        Q, R = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
        return Q * torch.sign(torch.diagonal(R))

    def diag(rows: int, cols: int, s: Tensor) -> Tensor:
        S = torch.zeros(rows, cols, dtype=torch.float64)
        S[range(len(s)), range(len(s))] = s
        return S

    U, V = orth(k), orth(d)
    if depth == 1:
        Ws = [U @ diag(k, d, sigma) @ V.T]
    else:
        Qs = [orth(width) for _ in range(depth - 1)]
        Ws = [Qs[0] @ diag(width, d, sigma) @ V.T]
        for j in range(1, depth - 1):
            Ws.append(Qs[j] @ Qs[j - 1].T)
        Ws.append(U @ diag(k, width, torch.ones(r, dtype=torch.float64)) @ Qs[-1].T)
    mods = []
    for W in Ws:
        lin = nn.Linear(W.shape[1], W.shape[0], bias=False).to(torch.float64)
        with torch.no_grad():
            lin.weight.copy_(W)
        mods.append(lin)
    model = nn.Sequential(*mods)
    X = torch.randn(int(n), int(d), generator=g, dtype=torch.float64)
    t0 = float(curvature.gn_trace(model, X))
    X = X * math.sqrt(trace / t0)
    model = model.to(dtype)
    X = X.to(dtype)
    with torch.no_grad():
        Y = model(X)
    return T6Network(model=model, X=X, Y=Y, sigma=sigma, trace=float(trace), ld=float(ld))


# ----------------------------------------------------------------------------- T7


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


def _ntk_terms(model: nn.Module, X: Tensor, chunk: int = 256) -> tuple[Tensor, Tensor, Tensor]:
    """(tr H, ‖H‖_F², Σ_i ‖H_i‖_F²) for H = (1/n) Σ J_iᵀJ_i via the Gram matrix K = J Jᵀ."""
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
    trH, fro2, sum_i = _ntk_terms(model, X, chunk)
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
