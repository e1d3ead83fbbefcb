"""The quantities the bounds are made of, computed once per (model, data): :class:`Quantities`.

:func:`quantities` resolves the model and data with a :class:`flatbook.probe.Probe` and
:func:`probe_quantities` turns the probe's one Jacobian sweep into the inputs of every
statement of :mod:`flatbook.bounds`, in short stages: the output-level measures of J_x
(``_output_stage``), the per-sample parameter-Jacobian norms ‖J_i‖_F² (``_param_sqnorms``),
the per-layer measures (``_layer_stage``) and the caveats (``_notes``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from flatbook import curvature
from flatbook import geometry as _geometry
from flatbook import layers as _layers

if TYPE_CHECKING:
    from flatbook.probe import Probe
    from flatbook.probe_sweep import LayerResult, Measured

__all__ = ["Quantities", "probe_quantities", "quantities"]



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


def _shared_sqnorms(p: Probe, meas: Measured) -> dict[str, Tensor] | None:
    """‖∂f(x_i)/∂θ_name‖_F² from the probe's own sweep, when every trainable parameter is the
    weight or bias of a measured dense layer: ‖∇_W f‖_F² = ‖G_l‖_F² ‖h_{l−1}‖² and
    ‖∇_b f‖_F² = ‖G_l‖_F² (G_l = ∂f/∂z_l, paper.md L2), so the GN trace costs no further
    backward passes. ``None`` otherwise (then :func:`flatbook.curvature.jacobian_sqnorms`)."""
    names = {id(t): n for n, t in p.fn.named_parameters() if t.requires_grad}
    out: dict[str, Tensor] = {}
    for res in meas.layers.values():
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


def probe_quantities(p: Probe, rtol: float | None = None) -> Quantities:
    """:class:`Quantities` from an entered :class:`flatbook.probe.Probe` ``p``.

    Stages, from the probe's one sweep ``p.measure()``: ‖x_i‖² and the measures of
    J_x [n, k, d] (``_output_stage``); ‖J_i‖_F² per parameter [n] (``_param_sqnorms``),
    whose mean over samples is the Gauss–Newton trace (1/n) Σ_i ‖J_i‖_F²; per dense layer
    ‖h_{l−1}‖², the measures of ∂f/∂h_{l−1}, ‖W_l‖₂ and ‖∇_{W_l} f‖_F² (``_layer_stage``);
    the caveats (``_notes``).

    Raises:
        TypeError: ``p`` is not a :class:`flatbook.probe.Probe` (build one with
            ``with Probe(model, X) as p``, or call :func:`quantities`).
    """
    from flatbook.probe import Probe

    if not isinstance(p, Probe):
        raise TypeError(f"p must be an entered flatbook.probe.Probe; got {type(p).__name__} "
                        "(or call bounds.quantities(model, X))")
    meas = p.measure()
    x_sq, out = _output_stage(p, meas, rtol)
    sq = _param_sqnorms(p, meas)
    jac_sq = torch.stack(list(sq.values())).sum(0)
    parts = _layer_stage(p, meas, out, sq, rtol)
    return Quantities(
        n=p.n,
        k=out.N,
        d=out.d,
        x_sqnorm=x_sq,
        output=out,
        layers=parts.layers,
        grad_w_sqnorm=parts.grad_w_sqnorm,
        jac_sqnorm=jac_sq,
        trace=jac_sq.mean(),
        first=parts.first,
        notes=_notes(p, meas, parts),
        total=parts.total,
        skip=parts.skip,
        inputs=parts.inputs,
    )


def _output_stage(p: Probe, meas: Measured, rtol: float | None
                  ) -> tuple[Tensor, _geometry.Measures]:
    """(‖x_i‖² [n] of the flattened inputs, the measures of J_x(x_i) = ∂f/∂x [n, k, d]).

    Integer inputs have no input Jacobian: then both are NaN (r = min(k, d) columns of σ).
    """
    n = p.n
    if meas.J_x is not None:
        return p.X.detach().reshape(n, -1).pow(2).sum(1), _geometry.measures(meas.J_x, rtol)
    nan = torch.full((n,), math.nan, dtype=p.dtype, device=p.device)
    r0 = min(p.k, p.d)
    out = _geometry.Measures(sigma=torch.full((n, r0), math.nan, dtype=p.dtype), log_lvr=nan,
                             mls=nan, ld=nan, frob_sq=nan, r=r0, N=p.k, d=p.d)
    return nan, out


def _param_sqnorms(p: Probe, meas: Measured) -> dict[str, Tensor]:
    """``{parameter name: ‖∂f(x_i)/∂θ_name‖_F² [n]}`` over the trainable parameters, from the
    probe's sweep when it suffices (``_shared_sqnorms``), else by
    :func:`flatbook.curvature.jacobian_sqnorms`."""
    sq = _shared_sqnorms(p, meas)
    if sq is None:
        sq = curvature.jacobian_sqnorms(p.fn, p.X, p._chunk)
    return sq


@dataclass
class _LayerParts:
    """The per-layer fields of :class:`Quantities`, filled by ``_layer_stage``."""

    layers: dict[str, _geometry.LayerMeasures] = field(default_factory=dict)
    grad_w_sqnorm: dict[str, Tensor] = field(default_factory=dict)
    total: dict[str, _geometry.Measures] = field(default_factory=dict)
    skip: dict[str, bool | None] = field(default_factory=dict)
    inputs: dict[str, Tensor] = field(default_factory=dict)
    first: str | None = None


def _layer_view(p: Probe, meas: Measured, name: str, res: LayerResult) -> tuple[object, bool]:
    """(the layer object kept in :class:`flatbook.geometry.LayerMeasures`, whether the layer's
    input h_{l−1} is the flattened input x).

    An ``nn.Sequential`` item i is split there (:class:`flatbook.layers.DenseLayer` with
    head = model[:i], tail = model[i:]); its input is x when every item before it only
    reshapes (``nn.Flatten``, ``nn.Identity``). Any other dense layer keeps the probe's layer;
    its input is x when h_{l−1} equals flatten(x) and its path Jacobian J_l equals J_x to
    √eps relative (so x reaches f only through this layer).
    """
    L = res.layer
    if p.is_sequential and L.index is not None:
        i = L.index
        model = p.model
        layer = _layers.DenseLayer(
            name=name, index=i, module=L.module, weight_name=f"{i}.weight",
            head=model[:i], tail=model[i:], input_name="input" if i == 0 else str(i - 1),
            l=int(name[1:]),
        )
        return layer, all(isinstance(m, _RESHAPE_ONLY) for m in model[:i])
    eps = torch.finfo(p.dtype).eps
    reshape_only = (
        meas.J_x is not None and res.H.shape[1] == p.d
        and torch.equal(res.H, p.X.reshape(p.n, -1))
        and float((meas.J_x - res.J).norm())
        <= math.sqrt(eps) * max(float(meas.J_x.norm()), 1e-300)
    )
    return L, reshape_only


def _layer_stage(p: Probe, meas: Measured, out: _geometry.Measures, sq: dict[str, Tensor],
                 rtol: float | None) -> _LayerParts:
    """Per dense layer l: ‖h_{l−1}(x_i)‖² [n], the measures of ∂f/∂h_{l−1} [n, k, p] (MLS_l,
    LVR_l, LD_l; those of J_x for the first layer on the input, ``first``), ‖W_l‖₂,
    ‖∇_{W_l} f(x_i)‖_F² [n] (from ``sq``), and where measured the total ∂f/∂h_{l−1}."""
    parts = _LayerParts()
    for name, res in meas.layers.items():
        layer, reshape_only = _layer_view(p, meas, name, res)
        if reshape_only and meas.J_x is not None and parts.first is None:
            # h_0 = flatten(x), reaching f only through this layer: ∂f/∂h_0 = J_x
            parts.first = name
            m = out
        else:
            m = _geometry.measures(res.J, rtol)
        parts.layers[name] = _geometry.LayerMeasures(
            layer=layer,  # type: ignore[arg-type]
            h_sqnorm=res.H.pow(2).sum(1),
            measures=m,
            weight_norm=_geometry.spectral_norm(res.layer.weight),
        )
        parts.grad_w_sqnorm[name] = sq[res.layer.weight_name]
        parts.inputs[name] = res.H
        parts.skip[name] = res.skip
        if res.J_total is not None:
            parts.total[name] = _geometry.measures(res.J_total, rtol)
    return parts


def _notes(p: Probe, meas: Measured, parts: _LayerParts) -> list[str]:
    """The probe's notes and the caveats of the bounds: T1–T3 not applicable (no dense first
    layer), parameters outside dense layers, no dense layer, skip connections, integer inputs."""
    notes = list(p.notes)
    if parts.first is None:
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
    for name, s_ in parts.skip.items():
        if s_:
            notes.append(
                f"dense layer {name}: h_{{l−1}} also reaches f around the layer (skip "
                "connection): its mls/log_lvr/ld are the path sensitivity ∂f/∂δ = G_l W_l; "
                "the total ∂f/∂h_{l−1} is reported as total_mls/total_log_lvr/total_ld"
            )
    if meas.J_x is None:
        notes.append("integer inputs: no input Jacobian, output-level measures are NaN")
    return notes
