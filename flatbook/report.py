"""One call, everything: sharpness, trace, every measure per layer, every bound with its slack.

>>> rep = flatbook.report(model, X, Y)          # doctest: +SKIP
>>> print(rep)                                   # a readable table
>>> rep.as_dict()["t3_weighted_slack"]           # flat {str: float}, recorded by flatbook.train

``Report.as_dict()`` keys (all values are floats; NaN where a quantity does not apply):

Data and fit
    ``n``, ``d``, ``k`` (samples, input entries, outputs), ``n_params`` (P), ``n_dense``
    (number of dense layers), ``first_layer_dense`` (1.0 if T1–T3 apply), ``loss`` (value of
    the requested loss), ``max_residual`` (max |f(x_i) − y_i|, squared loss only; 0 at
    interpolation), ``interpolating`` (1.0 if max_residual ≤ 1e-8·max(1, max |y|)).
Curvature
    ``lambda_max`` (λ_max(H), Lanczos, :func:`flatbook.curvature.sharpness`),
    ``lambda_max_residual``, ``lambda_max_n_hvp``, ``lambda_max_converged`` (1.0/0.0),
    ``trace_gn`` (GN trace of the squared loss, (1/n) Σ‖J_i‖_F² — tr H at interpolation,
    paper.md L1; the bounds' quantity for every loss), ``trace_ggn`` (loss other than squared
    only: the loss's own Gauss–Newton trace (1/n) Σ tr(J_iᵀ Λ_i J_i), for cross-entropy the
    Fisher/GN trace with Λ_i = diag p_i − p_i p_iᵀ; :mod:`flatbook.gn`), ``trace_hessian``
    and ``trace_hessian_stderr`` (only with ``hessian_trace=True``: Hutch++ estimate of tr H
    of the requested loss and its standard error),
    ``adaptive_sharpness`` (only with ``adaptive=True``: Σ_j θ_j² H_jj, GN diagonal).
Output-level measures of x ↦ f (J_x ∈ R^{k×d}, r = min(k, d))
    ``log_lvr_mean``, ``log_lvr_median``, ``mls_mean``, ``mls_median``, ``ld_mean``,
    ``ld_median``, ``frob_sq_mean`` (‖J_x‖_F²), ``log_lvr_finite_frac`` (fraction of samples
    whose J_x has full numerical rank; the others have log LVR = −inf, which makes
    ``log_lvr_mean`` −inf: use the median), ``r``, ``pr_output`` (global participation
    ratio of f over the data), ``nmls`` and ``nvr`` (T4 left-hand sides; our normalisation),
    ``log_frob_sq_mean`` (mean over samples of log ‖J_x‖_F²; −inf where some J_x = 0).
Per dense layer (prefix ``"{layer}_"``; layers keyed ``l1``, ``l2``, … for top-level items of an
``nn.Sequential``, else by qualified module name, e.g. ``"block.fc_mls_mean"``; see
:mod:`flatbook.probe`). The measures are those of the *path* Jacobian J_l = ∂f/∂δ = G_l W_l (δ
added to the layer's input), which is the paper's ∂f/∂h_{l−1} whenever h_{l−1} reaches f only
through layer l (every ``nn.Sequential`` model):
    ``index`` (item in the Sequential; NaN otherwise), ``width_in`` (p = dim h_{l−1}), ``r``,
    ``mls_mean``, ``mls_median``, ``log_lvr_mean``, ``log_lvr_median``, ``ld_mean``,
    ``ld_median``, ``frob_sq_mean``, ``log_lvr_finite_frac``, ``h_sqnorm_mean`` (‖h_{l−1}‖²),
    ``weight_norm`` (‖W_l‖₂),
    ``grad_w_sqnorm_mean`` (‖∇_{W_l} f‖_F²), ``kappa`` (κ_l by the T5 identity),
    ``pr`` (global participation ratio of h_{l−1}). E.g. ``"l1_mls_mean"``, ``"l2_kappa"``.
    Layers that are not ``nn.Sequential`` items also have ``total_mls_mean``,
    ``total_log_lvr_mean``, ``total_ld_mean`` (of the total ∂f/∂h_{l−1}, where h_{l−1} is a
    module's output or x; NaN otherwise) and ``skip`` (1.0 if the total differs from the path
    Jacobian — a skip connection —, 0.0 if equal, NaN if not measured).
Named representations (``representations=[...]``; the map x ↦ h, prefix ``"rep_{name}_"``)
    ``log_lvr_mean``, ``log_lvr_finite_frac``, ``mls_mean``, ``ld_mean``, ``pr``.
Bounds (``flatbook.bounds.all_bounds``; prefix = bound name)
    aggregated bounds: ``"{name}_lhs"``, ``"{name}_rhs"``, ``"{name}_slack"`` (rhs/lhs),
    ``"{name}_holds"`` (1.0/0.0 at rtol 1e-9) for ``t1_weighted``, ``t1_min``, ``t2_min``,
    ``t2_gm``, ``t3_weighted``, ``t3_min``, ``t3_gm`` (NaN when the first layer is not dense),
    ``t4_nmls``, ``t4_nvr``, ``t5_mls_{layer}``, ``t5_lvr_{layer}`` and, given ``lr``,
    ``t7_gd`` (needs λ_max) and, given ``lr`` and ``batch_size``, ``t7_sgd``.
    Per-sample bounds: ``"{name}_slack_min"``, ``"{name}_slack_median"``, ``"{name}_holds"``
    for ``t1_per_sample``, ``t2_per_sample`` (NaN when not applicable), ``lem3`` (lemma L3) and
    ``lem2_{layer}`` (lemma L2).

Numerical rank: log LVR counts singular values ≤ eps·max(N, d)·σ_1 as zero (−inf), the
``torch.linalg.matrix_rank`` convention (``rtol`` overrides it). In float32 that floor is
≈ 1e-4·σ_1 for d = 784: wide hidden maps (``representations=``) are then often −inf — a
statement about float32, not about the network; measure in float64 or pass ``rtol=0``.

Bounds that are empty (``lem3``, ``t4_nmls``, ``t4_nvr`` of a network without dense layers) are
*not applicable*: every key NaN, "n/a" in the table, :meth:`flatbook.bounds.Bound.holds` False.

The bounds are proven for dense layers (paper.md §2); for CNNs and ViTs the report gives the
output-level measures, the dense layers present (T4 then sums over those only — still a valid
bound by L3) and no T1–T3 (their W_1 must be a dense layer acting on the input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from flatbook import bounds as _bounds
from flatbook import curvature, gn, pipeline
from flatbook.pipeline import ReportOptions

__all__ = ["Report", "ReportOptions", "report"]

FIRST_LAYER_BOUNDS = ("t1_weighted", "t1_min", "t2_min", "t2_gm", "t3_weighted", "t3_min", "t3_gm")
FIRST_LAYER_PER_SAMPLE = ("t1_per_sample", "t2_per_sample")


@dataclass
class Report:
    """Result of :func:`report`.

    Attributes:
        scalars: global keys of :meth:`as_dict` (data, fit, curvature, output measures).
        layers: ``{"l1": {key: float}, …}`` per dense layer (keys without the prefix).
        representations: ``{name: {key: float}}`` for requested named representations.
        bounds: ``{name: Bound}`` (see :mod:`flatbook.bounds`).
        quantities: the :class:`flatbook.bounds.Quantities` everything was computed from.
        sharpness: the :class:`flatbook.curvature.SharpnessResult` (or ``None``).
        notes: caveats that apply to this model / data (interpolation, loss, architecture).
        aliases: ``{qualified module name: key in layers}`` (see :meth:`layer`).
        loss: the measured loss (``"squared"``, ``"cross_entropy"`` or the callable): it
            decides the label of each printed trace (``flatbook.gn.trace_label``).
    """

    scalars: dict[str, float]
    layers: dict[str, dict[str, float]]
    representations: dict[str, dict[str, float]]
    bounds: dict[str, _bounds.Bound]
    quantities: _bounds.Quantities
    sharpness: curvature.SharpnessResult | None = None
    notes: list[str] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    loss: object = "squared"

    def layer(self, name: str) -> dict[str, float]:
        """The entry of :attr:`layers` for ``name``: its key (``"l1"``, ``"block.fc"``) or the
        qualified module name of the ``nn.Linear`` (``"4"`` for item 4 of an ``nn.Sequential``).
        """
        key = name if name in self.layers else self.aliases.get(name)
        if key is None:
            raise ValueError(f"unknown dense layer {name!r}; layers: {list(self.layers)} "
                             f"(module names {list(self.aliases)})")
        return self.layers[key]

    def as_dict(self) -> dict[str, float]:
        """Flat ``{str: float}`` with the stable keys listed in the module docstring."""
        out = dict(self.scalars)
        for lname, vals in self.layers.items():
            for key, v in vals.items():
                out[f"{lname}_{key}"] = v
        for rname, vals in self.representations.items():
            for key, v in vals.items():
                out[f"rep_{rname}_{key}"] = v
        for name in FIRST_LAYER_BOUNDS:
            for s in ("lhs", "rhs", "slack", "holds"):
                out[f"{name}_{s}"] = math.nan
        for name in FIRST_LAYER_PER_SAMPLE:
            for s in ("slack_min", "slack_median", "holds"):
                out[f"{name}_{s}"] = math.nan
        for name, b in self.bounds.items():
            if not b.applicable:  # an empty bound: never "holds"
                keys = (("slack_min", "slack_median") if isinstance(b.lhs, Tensor)
                        else ("lhs", "rhs", "slack"))
                for s_ in (*keys, "holds"):
                    out[f"{name}_{s_}"] = math.nan
                continue
            if isinstance(b.slack, Tensor):
                s = b.slack.to(torch.float64)
                out[f"{name}_slack_min"] = float(torch.nan_to_num(s, nan=math.inf).min())
                out[f"{name}_slack_median"] = float(s.median())
            else:
                out[f"{name}_lhs"] = float(b.lhs)  # type: ignore[arg-type]
                out[f"{name}_rhs"] = float(b.rhs)  # type: ignore[arg-type]
                out[f"{name}_slack"] = float(b.slack)  # type: ignore[arg-type]
            out[f"{name}_holds"] = 1.0 if b.holds(1e-9) else 0.0
        return out

    def __str__(self) -> str:
        """The readable table: data and fit, curvature, output measures, per-layer measures,
        bounds with slack, notes."""
        s = self.scalars
        lines = [
            f"flatbook report: n={int(s['n'])}, d={int(s['d'])}, k={int(s['k'])}, "
            f"P={int(s['n_params'])}, dense layers={int(s['n_dense'])}",
            f"  loss {s['loss']:.4g}   max |f−y| {s['max_residual']:.3g}   "
            f"interpolating: {'yes' if s['interpolating'] == 1.0 else 'no'}",
        ]
        lines += self._curvature_lines()
        if "adaptive_sharpness" in s:
            lines.append(f"  adaptive sharpness Σθ²H_jj {s['adaptive_sharpness']:.6g}")
        lines.append("")
        lines.append(f"Output map x ↦ f (r = {int(s['r'])}):        mean      median")
        for key, label in (("log_lvr", "log LVR"), ("mls", "MLS"), ("ld", "LD")):
            lines.append(f"  {label:<32}{s[key + '_mean']:>10.4g}  {s[key + '_median']:>10.4g}")
        lines.append(f"  global PR of f                  {s['pr_output']:>10.4g}")
        if self.layers:
            lines.append("")
            lines.append("Dense layers (map h_{l−1} ↦ f; means over samples):")
            w = max(6, *(len(n) + 1 for n in self.layers))
            hdr = (
                f"  {'layer':<{w}}{'item':>4}{'p':>5}{'MLS_l':>10}{'log LVR_l':>10}{'LD_l':>6}"
                f"{'‖h‖²':>10}{'‖W‖₂':>9}{'κ_l':>10}{'PR(h)':>7}"
            )
            lines.append(hdr)
            for name, v in self.layers.items():
                item = "—" if math.isnan(v["index"]) else str(int(v["index"]))
                lines.append(
                    f"  {name:<{w}}{item:>4}{int(v['width_in']):>5}"
                    f"{v['mls_mean']:>10.4g}{v['log_lvr_mean']:>10.4g}{v['ld_mean']:>6.3g}"
                    f"{v['h_sqnorm_mean']:>10.4g}{v['weight_norm']:>9.4g}{v['kappa']:>10.4g}"
                    f"{v['pr']:>7.3g}"
                )
            for name, v in self.layers.items():
                if v.get("skip") == 1.0:
                    lines.append(
                        f"  {name}: skip connection around the layer — path MLS_l "
                        f"{v['mls_mean']:.4g}, total ‖∂f/∂h_(l−1)‖₂ {v['total_mls_mean']:.4g}"
                    )
        if self.representations:
            lines.append("")
            lines.append("Named representations (map x ↦ h):")
            for name, v in self.representations.items():
                lines.append(
                    f"  {name:<8} log LVR {v['log_lvr_mean']:.4g}  MLS {v['mls_mean']:.4g}  "
                    f"LD {v['ld_mean']:.3g}  PR {v['pr']:.3g}"
                )
        lines += self._bound_lines()
        if self.notes:
            lines.append("")
            lines += [f"Note: {n}" for n in self.notes]
        return "\n".join(_wrap(line) for line in lines)

    def _bound_lines(self) -> list[str]:
        """The bounds table: lhs, rhs, slack, holds and source of each bound ("n/a" rows for
        bounds that do not apply)."""
        lines = [""]
        lines.append("Bounds (lhs ≤ rhs; per-sample bounds at their tightest sample):")
        lines.append(f"  {'bound':<13}{'lhs':>9}{'rhs':>9}{'slack':>9}  ok?  source")
        for name, b in self.bounds.items():
            if not b.applicable:
                lines.append(f"  {name:<13}{'—':>9}{'—':>9}{'—':>9}  n/a  {b.note}")
                continue
            lhs, rhs, slack = b.worst()
            lines.append(
                f"  {name:<13} {lhs:>8.3g} {rhs:>8.3g} {slack:>8.3g}  "
                f"{'yes' if b.holds(1e-9) else 'NO ':<3}  {b.source}"
            )
        return lines

    def _curvature_lines(self) -> list[str]:
        """λ_max with its certified residual bound, then each trace labelled by its matrix."""
        s, lines = self.scalars, []
        lm = s["lambda_max"]
        if not math.isnan(lm):
            lines.append(
                f"  λ_max {lm:.6g} ± {s['lambda_max_residual']:.2g} (residual bound, "
                f"{int(s['lambda_max_n_hvp'])} HVPs, "
                f"{'converged' if s['lambda_max_converged'] == 1.0 else 'NOT converged'})"
            )
        for key in ("trace_gn", "trace_ggn"):
            if key in s:
                lines += _labelled_value(gn.trace_label(key, self.loss), f"{s[key]:.6g}")
        if "trace_hessian" in s:
            label = gn.trace_label("trace_hessian", self.loss)
            lines.append(f"  {label}  {s['trace_hessian']:.6g} "
                         f"± {s['trace_hessian_stderr']:.2g} (1 s.e.)")
        return lines

    def _repr_pretty_(self, p, cycle: bool) -> None:  # noqa: ANN001 - IPython hook
        p.text(str(self) if not cycle else "Report(...)")


PRINT_WIDTH = 80
"""Characters per line of :meth:`Report.__str__` (a book page's code width); longer lines
(notes, long layer names) wrap with a hanging indent."""


def _labelled_value(label: str, value: str) -> list[str]:
    """``label  value`` on one line; a label too long for :data:`PRINT_WIDTH` keeps its name
    (up to its formula, which starts at " (1/n)") on the value's line and its formula on a
    continuation line below, so the number never wraps away from its name."""
    line = f"  {label}  {value}"
    cut = label.find(" (1/n)")
    if len(line) <= PRINT_WIDTH or cut < 0:
        return [line]
    return [f"  {label[:cut]}  {value}", f"        = {label[cut + 1:]}"]


def _wrap(line: str) -> str:
    """``line`` wrapped at :data:`PRINT_WIDTH`, continuation lines indented by 6 spaces."""
    if len(line) <= PRINT_WIDTH:
        return line
    import textwrap

    lead = len(line) - len(line.lstrip(" "))
    return textwrap.fill(line.strip(), PRINT_WIDTH, initial_indent=" " * lead,
                         subsequent_indent=" " * (lead + 6), break_on_hyphens=False)


def report(model: nn.Module, X: object, Y: Tensor | None = None, loss: object = "squared", *,
           options: ReportOptions | None = None, **flags: Any) -> Report:
    """Measure everything for ``model`` on (X, Y): curvature, measures, bounds with slack.

    ``flatbook.report(model, X, Y)`` with tensors, or ``flatbook.report(model, data)`` with a
    ``DataLoader`` / iterable of ``(x, y)`` batches / ``Dataset`` (a fixed evaluation set; a
    shuffling loader is refused). Model and data are resolved once by a
    :class:`flatbook.probe.Probe`: eval mode, determinism check, dense layers found by hooks,
    dtype/device policy (floating inputs are cast to the model's dtype and device).

    Options: ``options=ReportOptions(probe=…, curvature=…, stability=…, what=…)`` (the records
    of ``flatbook.pipeline``), or the same fields as keywords (the keyword form, e.g.
    ``report(model, X, Y, tol=1e-4, lr=0.1)``), listed below.

    Args:
        model: any ``nn.Module`` whose output (after ``output``) is f ∈ R^{[n, k]} ([n] is read
            as [n, 1]). Dense layers are the ``nn.Linear`` modules applied once per sample
            (:mod:`flatbook.probe`); they are keyed by qualified module name, and top-level
            ``nn.Linear`` items of an ``nn.Sequential`` keep the aliases ``"l1"``, ``"l2"``, ….
            Measured in eval mode (flags restored).
        X: inputs [n, …], or the data as a loader / iterable / dataset (then ``Y=None``).
        Y: targets ([n, k] for the squared loss, one-hot for classes; [n] class indices or
            [n, k] for cross-entropy; [n] real values for a 1-output regression).
            ``None`` (with tensors): Y = f(X), an exact interpolating minimum.
        loss: ``"squared"`` (the loss of the bounds, (1/2n) Σ‖f−y‖²), ``"cross_entropy"``,
            ``nn.MSELoss()`` / ``nn.CrossEntropyLoss()`` (recognised, the factor to your
            normalisation is noted; :func:`flatbook.losses.resolve`) or a callable; used for
            the loss value and λ_max. The bounds always use the Gauss–Newton trace
            (1/n) Σ‖J_i‖_F² (see :mod:`flatbook.bounds`).
        output: selects f from a tuple/dict output: an index, a key or a callable.
        forward: how to call the model, ``forward(model, x)``; for dict inputs (a dict of
            tensors, or batches ``({name: tensor}, y)``), e.g. ``lambda model, x: model(**x)``.
        layers: restrict the dense layers measured: names, an ``nn.Module`` subclass or a
            predicate ``(name, module) -> bool`` (see :class:`flatbook.probe.Probe`).
        lr, batch_size: step size η and batch B of the run, for the T7 bounds.
        n_train: size n of the training set that SGD samples from, for p = (n−B)/(B(n−1)) of
            the SGD bound ``t7_sgd`` (default: the rows of X — wrong when X is an evaluation
            subset, so the training engine passes it).
        sharpness: compute λ_max (Lanczos: ``k``, ``tol``, ``seed``).
        hessian_trace: also estimate tr H itself by Hutch++ with ``n_hvp`` products.
        adaptive: also compute the elementwise adaptive sharpness Σ_j θ_j² H_jj (GN diagonal).
        representations: representations whose map x ↦ h to measure (log LVR, MLS, LD,
            global PR): for an ``nn.Sequential`` the names of
            :func:`flatbook.layers.representations`, otherwise qualified module names (h is
            that module's output).
        chunk: samples per vectorised call (``None``: automatic, bounding each Jacobian
            block to ~2^24 entries; lower it for large CNNs); rtol: rank tolerance of log LVR.
    """
    if options is not None and flags:
        raise TypeError("pass options=ReportOptions(...) or keywords, not both (got "
                        f"{sorted(flags)})")
    opts = options if options is not None else ReportOptions.from_flags(**flags)
    return Report(**pipeline.run(model, X, Y, loss, opts))
