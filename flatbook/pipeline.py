"""The measurement pipeline behind :func:`flatbook.report`, as small stages that return results.

    (model, data) ─Probe─▶ p ─probe_quantities─▶ q ─fit_stage / curvature_stage / output_stage
    / layer_stage / representation_stage / bounds_stage─▶ Report

Options come in four records instead of twenty flags:

- :class:`ProbeOptions` — which output, which layers, how to call the model, chunk size;
- :class:`CurvatureOptions` — λ_max (k, tol, seed), Hutch++ tr H (n_hvp), adaptive sharpness;
- :class:`StabilityInputs` — η (``lr``), B (``batch_size``) and n (``n_train``) of the T7 bounds;
- :class:`WhatToReport` — named representations and the rank tolerance of log LVR;

bundled in :class:`ReportOptions` (``ReportOptions.from_flags(**old_keywords)`` maps the keyword
form of :func:`flatbook.report`). Every stage adds keys to one ordered ``scalars`` dict (the
order of ``Report.as_dict()``) and returns its notes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from flatbook import bounds as _bounds
from flatbook import checks, curvature, gn, losses
from flatbook import geometry as _geometry
from flatbook import layers as _layers
from flatbook.probe_options import ProbeOptions

__all__ = ["CurvatureOptions", "ProbeOptions", "ReportOptions", "StabilityInputs",
           "WhatToReport", "run"]


@dataclass(frozen=True)
class CurvatureOptions:
    """λ_max by Lanczos (``sharpness``, ``k``, ``tol`` ∈ (0, 1), ``seed``); tr H by Hutch++
    with ``n_hvp`` products (``hessian_trace``); Σ_j θ_j² H_jj (``adaptive``)."""

    sharpness: bool = True
    k: int = 1
    tol: float = 1e-6
    seed: int = 0
    hessian_trace: bool = False
    n_hvp: int = 100
    adaptive: bool = False


@dataclass(frozen=True)
class StabilityInputs:
    """Step size η (``lr``), batch B (``batch_size``) and training-set size n (``n_train``,
    default: the rows of X) of the run, for the T7 bounds."""

    lr: float | None = None
    batch_size: int | None = None
    n_train: int | None = None


@dataclass(frozen=True)
class WhatToReport:
    """Named representations whose map x ↦ h to measure, and the rank tolerance of log LVR."""

    representations: Sequence[str] = ()
    rtol: float | None = None


@dataclass(frozen=True)
class ReportOptions:
    """The four option records of :func:`flatbook.report`."""

    probe: ProbeOptions = field(default_factory=ProbeOptions)
    curvature: CurvatureOptions = field(default_factory=CurvatureOptions)
    stability: StabilityInputs = field(default_factory=StabilityInputs)
    what: WhatToReport = field(default_factory=WhatToReport)

    @classmethod
    def from_flags(cls, **flags: Any) -> ReportOptions:
        """Records from the keyword form (``tol=1e-4, lr=0.1, …``); ``TypeError`` naming an
        unknown keyword."""
        groups = [ProbeOptions, CurvatureOptions, StabilityInputs, WhatToReport]
        parts: list[dict[str, Any]] = [{} for _ in groups]
        for key, value in flags.items():
            i = next((i for i, g in enumerate(groups) if key in {f.name for f in fields(g)}),
                     None)
            if i is None:
                allowed = sorted(f.name for g in groups for f in fields(g))
                raise TypeError(f"report() got an unexpected keyword {key!r}; allowed: "
                                f"{allowed}, or options=ReportOptions(...)")
            parts[i][key] = value
        return cls(*(g(**kw) for g, kw in zip(groups, parts, strict=True)))


def _f(x: object) -> float:
    """A float from a tensor or a number."""
    return float(x.detach()) if isinstance(x, Tensor) else float(x)  # type: ignore[arg-type]


def _finite_frac(v: Tensor) -> float:
    """Fraction of finite entries of ``v``."""
    return float(torch.isfinite(v).to(torch.float64).mean())


def _stats(name: str, v: Tensor, out: dict[str, float]) -> None:
    """``{name}_mean`` and ``{name}_median`` of ``v`` into ``out``."""
    v = v.detach().to(torch.float64)
    out[f"{name}_mean"] = float(v.mean())
    out[f"{name}_median"] = float(v.median())


def fit_stage(p: Any, q: _bounds.Quantities, scalars: dict[str, float]) -> list[str]:
    """Data sizes, P, dense layers, the loss value and the interpolation residual
    max|f(x_i) − y_i| into ``scalars``; returns the notes on loss and interpolation."""
    loss_fn = losses.get(p.loss)
    with torch.no_grad():
        loss_val = float(loss_fn(p.F, p.Y))
    scalars.update(
        n=float(q.n), d=float(q.d), k=float(q.k),
        n_params=float(sum(t.numel() for t in p.fn.parameters() if t.requires_grad)),
        n_dense=float(len(q.layers)), first_layer_dense=1.0 if q.first is not None else 0.0,
        loss=loss_val)
    if p.Y.shape == p.F.shape:
        res = float((p.F - p.Y).abs().max())
        scalars["max_residual"] = res
        scalars["interpolating"] = 1.0 if res <= 1e-8 * max(1.0, float(p.Y.abs().max())) else 0.0
    else:
        scalars.update(max_residual=math.nan, interpolating=0.0)
    if loss_fn is not losses.squared:
        return ["loss is not the squared loss: the bounds concern the Gauss–Newton trace "
                "(1/n) Σ‖J_i‖_F² of the squared loss (trace_gn), not tr H of this loss; its own "
                "Gauss–Newton trace is trace_ggn (cross-entropy: the Fisher trace); λ_max and "
                "the Hutch++ tr H are those of the requested loss"]
    if scalars["interpolating"] != 1.0:
        return ["not at interpolation: tr H ≠ (1/n) Σ‖J_i‖_F² in general; the bounds hold "
                "with the Gauss–Newton trace reported here (their proofs use only L2, L3)"]
    return []


def curvature_stage(p: Any, q: _bounds.Quantities, opts: CurvatureOptions,
                    scalars: dict[str, float]) -> curvature.SharpnessResult | None:
    """λ_max (with residual, products, convergence), the GN traces, optionally Hutch++ tr H
    and adaptive sharpness into ``scalars``; returns the sharpness result (or ``None``).

    The probe has checked that f is deterministic; the loss is checked here on its outputs
    (twice, finite), so ``sharpness`` skips its gradient-level determinism probe."""
    loss_fn = losses.get(p.loss)
    sharp = None
    scalars.update(lambda_max=math.nan, lambda_max_residual=math.nan,
                   lambda_max_n_hvp=math.nan, lambda_max_converged=math.nan)
    if opts.sharpness:
        curvature.check_loss_on_outputs(loss_fn, p.F, p.Y)
        sharp = curvature.sharpness(p.fn, p.loss, p.X, p.Y, k=opts.k, tol=opts.tol,
                                    seed=opts.seed, check=False)
        scalars.update(lambda_max=sharp.lambda_max,
                       lambda_max_residual=float(sharp.residuals[0]),
                       lambda_max_n_hvp=float(sharp.n_hvp),
                       lambda_max_converged=1.0 if sharp.converged else 0.0)
    scalars["trace_gn"] = _f(q.trace)
    if loss_fn is not losses.squared:
        scalars["trace_ggn"] = gn.ggn_trace(p, getattr(p, "measured", None))
    if opts.hessian_trace:
        tr = curvature.trace(p.fn, p.loss, p.X, p.Y, method="hutchpp", n_hvp=opts.n_hvp,
                             seed=opts.seed)
        scalars["trace_hessian"] = float(tr.value)
        scalars["trace_hessian_stderr"] = float(tr.stderr)
    if opts.adaptive:
        scalars["adaptive_sharpness"] = _f(_bounds.adaptive_sharpness(p.fn, p.X))
    return sharp


def output_stage(p: Any, q: _bounds.Quantities, scalars: dict[str, float]) -> list[str]:
    """Measures of x ↦ f (log LVR, MLS, LD, ‖J_x‖_F², r, participation ratio) into
    ``scalars``; returns the notes on numbers that look broken."""
    o = q.output
    for key, v in (("log_lvr", o.log_lvr), ("mls", o.mls), ("ld", o.ld)):
        _stats(key, v, scalars)
    notes = checks.measurement_notes(scalars, o.frob_sq)
    scalars["frob_sq_mean"] = _f(o.frob_sq.mean())
    scalars["log_frob_sq_mean"] = _f(o.frob_sq.double().log().mean())  # mean_i log‖J_i‖_F²
    scalars["log_lvr_finite_frac"] = _finite_frac(o.log_lvr)
    scalars["r"] = float(o.r)
    scalars["pr_output"] = _f(_geometry.participation_ratio(p.F)) if q.n > 1 else math.nan
    return notes


def layer_stage(q: _bounds.Quantities, name: str) -> dict[str, float]:
    """The per-layer keys of dense layer ``name`` (see :mod:`flatbook.report`)."""
    lm = q.layers[name]
    m = lm.measures
    index = getattr(lm.layer, "index", None)
    v: dict[str, float] = {"index": math.nan if index is None else float(index),
                           "width_in": float(lm.layer.in_features), "r": float(m.r)}
    for key, t in (("mls", m.mls), ("log_lvr", m.log_lvr), ("ld", m.ld)):
        _stats(key, t, v)
    v.update(frob_sq_mean=_f(m.frob_sq.mean()), log_lvr_finite_frac=_finite_frac(m.log_lvr),
             h_sqnorm_mean=_f(lm.h_sqnorm.mean()), weight_norm=_f(lm.weight_norm),
             grad_w_sqnorm_mean=_f(q.grad_w_sqnorm[name].mean()),
             kappa=_f(_bounds.kappa(q, name)))
    v["pr"] = _f(_geometry.participation_ratio(q.inputs[name])) if q.n > 1 else math.nan
    if index is None:  # not an nn.Sequential item: the total sensitivity, if measured
        tm = q.total.get(name)
        for key in ("mls", "log_lvr", "ld"):
            v[f"total_{key}_mean"] = math.nan if tm is None else _f(getattr(tm, key).mean())
        sk = q.skip.get(name)
        v["skip"] = math.nan if sk is None else float(sk)
    return v


def representation_stage(p: Any, q: _bounds.Quantities, what: WhatToReport, chunk: int | None
                         ) -> dict[str, dict[str, float]]:
    """Measures of the maps x ↦ h for the named representations (``rep_{name}_`` keys)."""
    out: dict[str, dict[str, float]] = {}
    for rname in what.representations:
        if p.is_sequential:
            m = _geometry.representation_measures(p.fn, p.X, rname, chunk=chunk, rtol=what.rtol)
            with torch.no_grad():
                H = _layers.representation(p.fn, p.X, rname)
        else:
            H, Jr = p.representation_jacobian(rname)
            m = _geometry.measures(Jr, what.rtol)
        out[rname] = {"log_lvr_mean": _f(m.log_lvr.mean()),
                      "log_lvr_finite_frac": _finite_frac(m.log_lvr),
                      "mls_mean": _f(m.mls.mean()), "ld_mean": _f(m.ld.mean()),
                      "pr": _f(_geometry.participation_ratio(H)) if q.n > 1 else math.nan}
    return out


def bounds_stage(q: _bounds.Quantities, st: StabilityInputs, scalars: dict[str, float]
                 ) -> tuple[dict[str, _bounds.Bound], list[str]]:
    """Every bound of :func:`flatbook.bounds.all_bounds` (T7 with λ_max from ``scalars``);
    the T4 left-hand sides into ``scalars``. Returns (bounds, notes)."""
    lam = scalars["lambda_max"]
    bl = _bounds.all_bounds(q, lambda_max=None if math.isnan(lam) else lam, lr=st.lr,
                            batch_size=st.batch_size, n_train=st.n_train)
    if "t4_nmls" in bl:
        scalars["nmls"] = float(bl["t4_nmls"].lhs)  # type: ignore[arg-type]
        scalars["nvr"] = float(bl["t4_nvr"].lhs)  # type: ignore[arg-type]
    notes = ["t7_gd needs λ_max: call with sharpness=True"] if (
        st.lr is not None and math.isnan(lam)) else []
    return bl, notes


def run(model: nn.Module, X: object, Y: Tensor | None, loss: object, opts: ReportOptions
        ) -> dict[str, Any]:
    """All stages on one :class:`flatbook.probe.Probe`; returns the fields of a
    :class:`flatbook.report.Report`."""
    from flatbook.probe import Probe

    checks.check_tol(opts.curvature.tol)
    po = opts.probe
    with Probe(model, X, Y, loss, output=po.output, layers=po.layers, forward=po.forward,
               chunk=po.chunk) as p:  # type: ignore[arg-type]
        q = _bounds.probe_quantities(p, opts.what.rtol)
        scalars: dict[str, float] = {}
        notes = [*p.loss_notes, *q.notes, *fit_stage(p, q, scalars)]
        sharp = curvature_stage(p, q, opts.curvature, scalars)
        notes += output_stage(p, q, scalars)
        layer_vals = {name: layer_stage(q, name) for name in q.layers}
        reps = representation_stage(p, q, opts.what, po.chunk)
        bl, bnotes = bounds_stage(q, opts.stability, scalars)
    return dict(scalars=scalars, layers=layer_vals, representations=reps, bounds=bl,
                quantities=q, sharpness=sharp, notes=notes + bnotes,
                aliases={r.qualname: r.name for r in p.layers()}, loss=p.loss)
