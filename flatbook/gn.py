"""Gauss–Newton traces for the loss that is measured, and the labels that say which matrix.

For L(θ) = (1/n) Σ_i ℓ(f(x_i; θ), y_i) with per-sample parameter Jacobians J_i = ∂f(x_i)/∂θ
[k, P] and output Hessians Λ_i = ∇²_f ℓ(f(x_i), y_i) [k, k] (paper.md §0), the generalised
Gauss–Newton matrix is G = (1/n) Σ_i J_iᵀ Λ_i J_i and

    tr G = (1/n) Σ_i tr(Λ_i K_i),   K_i = J_i J_iᵀ [k, k] (the per-sample NTK block).

- squared loss (1/2n) Σ‖f − y‖²: Λ_i = I, tr G = (1/n) Σ_i ‖J_i‖_F² — the **GN trace (squared
  loss)** that every bound of the book uses (``Report`` key ``trace_gn``); = tr H at
  interpolation (paper.md L1);
- cross-entropy: Λ_i = diag p_i − p_i p_iᵀ, p_i = softmax f(x_i) (times Σ_c y_ic for soft
  targets), which is also the Fisher information of the softmax likelihood, so tr G is the
  **Fisher/GN trace (cross-entropy)** (key ``trace_ggn``); it is never tr H exactly (the
  residual term Σ_c ∂ℓ/∂f_c ∇²f_c remains);
- tr H itself: Hutch++ with its standard error (key ``trace_hessian``).

K_i costs the same k reverse passes as the squared-loss trace (per-layer ghost norms, or the
probe's own sweep for networks of dense layers): with Λ_i = A_iᵀ A_i, tr(Λ_i K_i) =
‖A_i J_i‖_F², the k-pass rule with the rows of A_i as cotangents, here contracted after the
passes instead of before them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from flatbook import curvature, losses

__all__ = ["SHOW_LABELS", "TRACE_LABELS", "ggn_trace", "probe_grams", "show_label",
           "trace_label"]

#: printed label of each trace key of ``Report.as_dict()`` (which matrix it is the trace of)
TRACE_LABELS = {
    "trace_gn": "GN trace (squared loss) (1/n)Σ‖J_i‖²_F, = tr H at interpolation",
    "trace_ggn": "Fisher/GN trace (cross-entropy) (1/n)Σ tr(J_iᵀ(diag p_i − p_i p_iᵀ)J_i)",
    "trace_hessian": "tr H (Hutch++)",
}

#: short column headers of the same keys, for tables (``python -m flatbook show``)
SHOW_LABELS = {"trace_gn": "GN tr (sq)", "trace_ggn": "Fisher tr", "trace_hessian": "tr H"}


def trace_label(key: str, loss: object = "squared") -> str:
    """The printed label of trace key ``key`` (``"trace_gn"``, ``"trace_ggn"``,
    ``"trace_hessian"``) for a report of ``loss`` (a name or a callable): the squared-loss GN
    trace of a cross-entropy report says it is the bounds' quantity, not tr H of that loss; the
    GGN trace of a callable loss is labelled for that loss."""
    if key not in TRACE_LABELS:
        raise ValueError(f"unknown trace key {key!r}; allowed: {sorted(TRACE_LABELS)}")
    if key == "trace_gn" and loss != "squared":
        return "GN trace (squared loss) (1/n)Σ‖J_i‖²_F, the bounds' quantity (≠ Hessian trace)"
    if key == "trace_ggn" and loss != "cross_entropy":
        return "GGN trace (this loss) (1/n)Σ tr(J_iᵀ Λ_i J_i), Λ_i = ∇²_f ℓ"
    return TRACE_LABELS[key]


def show_label(key: str) -> str:
    """Short column header of ``key`` for tables (the key itself when it has none)."""
    return SHOW_LABELS.get(key, key)


def probe_grams(p: object, meas: object) -> Tensor | None:
    """K_i = J_i J_iᵀ [n, k, k] from the probe's own sweep (no further backward pass), when
    every trainable parameter is the weight or bias of a measured dense layer: with
    G_l = ∂f/∂z_l [n, k, m] and h = h_{l−1} [n, p], ∂f_c/∂W_l = G_{l,c} hᵀ, so
    K_i = Σ_l G_l G_lᵀ (‖h_i‖² + [bias]) (paper.md L2). ``None`` otherwise.

    Args:
        p: an entered :class:`flatbook.probe.Probe`.
        meas: its :class:`flatbook.probe.Measured` (``p.measure()``).
    """
    names = {id(t): n for n, t in p.fn.named_parameters() if t.requires_grad}  # type: ignore[attr-defined]
    seen: set[int] = set()
    K: Tensor | None = None
    for res in meas.layers.values():  # type: ignore[attr-defined]
        if res.G is None:
            return None
        mod = res.layer.module
        GG = res.G @ res.G.transpose(1, 2)  # [n, k, k]
        scale = torch.zeros_like(res.H[:, 0])
        if id(mod.weight) in names:
            scale = scale + res.H.pow(2).sum(1)
            seen.add(id(mod.weight))
        if mod.bias is not None and id(mod.bias) in names:
            scale = scale + 1.0
            seen.add(id(mod.bias))
        term = GG * scale[:, None, None]
        K = term if K is None else K + term
    if K is None or seen != set(names):
        return None
    return K


def ggn_trace(p: object, meas: object | None = None) -> float:
    """tr G = (1/n) Σ_i tr(Λ_i K_i) of the probe's loss (see the module docstring).

    K_i from :func:`probe_grams` when ``meas`` allows it, else from the exact per-layer Gram
    pass of :func:`flatbook.curvature.trace` (``method="gn"``: ghost norms for ``nn.Linear`` /
    conv layers, ``vmap(jacrev)`` for the rest, k reverse passes per chunk). For the squared
    loss this is (1/n) Σ‖J_i‖_F²; for cross-entropy the Fisher/GN trace.

    Args:
        p: an entered :class:`flatbook.probe.Probe` (``p.loss``, ``p.F`` [n, k], ``p.Y``).
        meas: its :class:`flatbook.probe.Measured`, or ``None``.
    """
    loss_fn: Callable[[Tensor, Tensor], Tensor] = losses.get(p.loss)  # type: ignore[attr-defined]
    K = None if meas is None else probe_grams(p, meas)
    if K is None:
        tr = curvature.trace(p.fn, p.loss, p.X, p.Y, method="gn", check=False,  # type: ignore[attr-defined]
                             chunk=p._chunk)  # type: ignore[attr-defined]
        return tr.value
    lam = curvature._output_hessians(loss_fn, p.F, p.Y)  # type: ignore[attr-defined]
    terms = torch.diagonal(K, dim1=1, dim2=2).sum(1) if lam is None else (lam * K).sum((1, 2))
    return float(terms.mean())
