"""Checks of a measurement's model and data: each failure named, before anything is computed.

A measurement (:class:`flatbook.probe.Probe`, :func:`flatbook.report`) needs a fixed,
finite data set and a model x ↦ f(x) that maps each sample on its own. What goes wrong
otherwise is named here instead of surfacing as NaN, −∞ or an unrelated torch error:

- non-finite inputs, targets, weights or outputs → :class:`BadDataError` ("bad data: …", naming
  which tensor and the first bad sample);
- inputs so large that ‖x‖² overflows the model's dtype → :class:`BadDataError`;
- a model whose output for one sample depends on the other samples of the batch (batch
  statistics, ``x − x.mean(0)``) → :class:`SampleMixingError`: per-sample Jacobians J_i =
  ∂f(x_i)/∂x_i and ∂f(x_i)/∂θ are then not defined by the sample alone;
- the mode switches a measurement makes (train → eval, fused attention → math kernel) →
  notes for the report (:func:`mode_notes`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import Tensor, nn

from flatbook._validate import BadDataError

__all__ = [
    "BadDataError",
    "SampleMixingError",
    "check_finite",
    "check_finite_weights",
    "check_input_scale",
    "check_samples_independent",
    "check_tol",
    "mode_notes",
]


class SampleMixingError(ValueError):
    """The model's output for one sample depends on the other samples in the batch."""


def check_finite(T: Tensor, name: str,
                 hint: str = "clean or drop them before measuring") -> None:
    """Raise :class:`BadDataError` if the floating tensor ``T`` [n, …] has NaN or ±inf entries,
    naming ``name``, how many of the n samples are affected, the first one, and ``hint``."""
    if not (T.is_floating_point() or T.is_complex()) or T.numel() == 0:
        return
    bad = ~torch.isfinite(T.reshape(T.shape[0], -1) if T.ndim else T.reshape(1, 1)).all(1)
    if bool(bad.any()):
        idx = bad.nonzero()[:, 0].tolist()
        raise BadDataError(
            f"bad data: {name} has non-finite values (NaN or inf) in {len(idx)} of "
            f"{bad.shape[0]} samples (first: sample {idx[0]}); {hint}"
        )


def check_finite_weights(model: nn.Module) -> None:
    """Raise :class:`BadDataError` naming every parameter of ``model`` with NaN/inf entries."""
    bad = [n for n, p in model.named_parameters()
           if p.is_floating_point() and not bool(torch.isfinite(p).all())]
    if bad:
        raise BadDataError(f"bad data: the model's weights are not finite (NaN or inf) in {bad}: "
                           "a diverged or corrupted model cannot be measured")


def check_input_scale(X: Tensor, dtype: torch.dtype | None = None, name: str = "X") -> None:
    """Raise :class:`BadDataError` when ‖x_i‖² overflows ``dtype`` (the model's; default X's
    own), as every bound uses ‖x‖² and ‖h‖²: max |x| · √d > √(finfo.max), e.g. |x| ≈ 1e30 in
    float32."""
    if not X.is_floating_point() or X.numel() == 0:
        return
    dt = X.dtype if dtype is None else dtype
    d = max(1, X[0].numel())
    big = float(X.abs().max())
    limit = math.sqrt(torch.finfo(dt).max / d)
    if big > limit:
        raise BadDataError(
            f"bad data: {name} has entries of magnitude {big:.3g}: squared norms ‖x‖² overflow "
            f"{dt} (largest {torch.finfo(dt).max:.3g}), so traces and volumes would "
            "be NaN/−∞. Rescale the inputs, or measure a float64 copy (model.double(), "
            "X.double())"
        )


def _split_outputs(fn: Callable[[Tensor], Tensor], X: Tensor, h: int) -> Tensor:
    """f on X[:h] and X[h:] as two separate batches, concatenated."""
    with torch.no_grad():
        return torch.cat([fn(X[:h]).reshape(h, -1), fn(X[h:]).reshape(X.shape[0] - h, -1)])


MIXING_CAUSES = (
    "per-sample Jacobians are then not defined by the sample alone (each would be taken at a "
    "batch of one). Typical causes: BatchNorm using batch statistics (track_running_stats="
    "False, or training=True forced inside forward), x − x.mean(0) or other batch-axis "
    "reductions, attention across the batch axis. Use running statistics (model.eval() with "
    "track_running_stats=True), LayerNorm/GroupNorm, or per-sample normalisation")
"""Why sample mixing is refused and the way out (also used by the probe's Jacobian sweep,
which refuses a chunk whose ∂f(x_0)/∂x_j ≠ 0 for j ≠ 0)."""


def check_samples_independent(fn: Callable[[Tensor], Tensor], X: Tensor, F: Tensor) -> None:
    """Raise :class:`SampleMixingError` if f(x_i) depends on the other samples of its batch.

    Two batch splits of the first m = min(n, 8) samples must give the same outputs to
    √ε·max|f|: ``F`` [≥ m, k] = f computed in the caller's batches (e.g. chunks of 1024),
    against f on X[:h] and X[h:m] as two batches (h = 2, or 1 when m < 4) — two small forward
    passes. Mixing that leaves the outputs unchanged but not the Jacobian is caught by the
    Jacobian sweep itself (:meth:`flatbook.probe.Probe.measure`).
    """
    n = X.shape[0]
    if n < 2:
        return
    m = min(n, 8)
    h = 2 if m >= 4 else 1
    F = F[:m].reshape(m, -1)
    try:
        F2 = _split_outputs(fn, X[:m], h)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SampleMixingError(
            f"the model runs on a batch of {min(n, 1024)} samples but fails on a batch of {h} "
            f"({first}): its output depends on the batch, and {MIXING_CAUSES}") from None
    eps = torch.finfo(F.dtype).eps
    scale = max(float(F.abs().max()), 1e-300)
    diff = float((F - F2).abs().max())
    if diff > math.sqrt(eps) * scale:
        raise SampleMixingError(
            f"the model's output for a sample depends on the other samples in its batch "
            f"(f(X[:{m}]) in one batch vs in batches of {h} and {m - h}: max |Δf| = {diff:.3g}); "
            f"{MIXING_CAUSES}")


def check_tol(tol: object, name: str = "tol") -> float:
    """``tol`` as a float in (0, 1) (a relative residual tolerance), else ``ValueError``."""
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not math.isfinite(tol) \
            or not 0 < tol < 1:
        raise ValueError(
            f"{name} must be a relative tolerance in (0, 1), e.g. 1e-6 (λ_max to about "
            f"six digits) or 1e-3 (faster); got {tol!r}. A tolerance ≥ 1 accepts any Ritz "
            "value as converged")
    return float(tol)


_NOISY = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


def _few(names: list[str]) -> str:
    """At most six of ``names``, comma-separated (… if more)."""
    return ", ".join(names[:6]) + (" …" if len(names) > 6 else "")


def mode_notes(model: nn.Module) -> list[str]:
    """Notes naming the mode switches a measurement makes (:func:`flatbook.curvature.eval_mode`)
    that can change f: dropout / BatchNorm modules (and modules of your own, which may read
    ``self.training``) in training mode are measured in eval mode; attention is computed by the
    math kernel without the fused fast path. Switching a module without mode-dependent
    behaviour (``nn.Linear``, ``nn.Tanh``) changes nothing and is not noted."""
    notes: list[str] = []
    training = [(n or "model", m) for n, m in model.named_modules() if m.training]
    changed = [f"{type(m).__name__} {n!r}" for n, m in training if isinstance(m, _NOISY)]
    custom = [f"{type(m).__name__} {n!r}" for n, m in training
              if not type(m).__module__.startswith("torch.")]
    if changed or custom:
        what = []
        if changed:
            what.append(f"{_few(changed)} change behaviour (dropout off, BatchNorm with running "
                        "statistics)")
        if custom:
            what.append(f"modules of your own ({_few(custom)}) may read self.training")
        notes.append(f"model was in training mode; measured in eval mode: {'; '.join(what)}. "
                     "The flags are restored afterwards")
    if any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        notes.append("attention measured with the math scaled-dot-product kernel and the fused "
                     "nn.MultiheadAttention fast path off (the same function, with a double "
                     "backward); restored afterwards")
    return notes


def measurement_notes(scalars: dict[str, float], frob_sq: Tensor) -> list[str]:
    """Notes on numbers that are right but look broken: a non-finite trace or λ_max (overflow
    of the model's dtype), and input Jacobians J_x that vanish exactly (‖J_x‖_F = 0: MLS 0,
    log LVR −∞ — saturated units, or f does not depend on x).

    Args:
        scalars: the report's global keys (``trace_gn``, ``lambda_max``, …).
        frob_sq: ‖J_x(x_i)‖_F² per sample, [n] (NaN for integer inputs).
    """
    notes: list[str] = []
    skipped = math.isnan(scalars.get("lambda_max", 0.0))  # NaN λ_max: not computed
    bad = [k for k in ("trace_gn", "trace_ggn", "lambda_max") if k in scalars
           and not math.isfinite(scalars[k]) and not (k == "lambda_max" and skipped)]
    if bad:
        notes.append(f"{bad} not finite although data and weights are: the computation "
                     "overflowed the model's dtype; measure a float64 copy or rescale the inputs")
    zero = int((frob_sq == 0).sum())
    if zero:
        notes.append(f"the input Jacobian J_x is exactly 0 for {zero} of {frob_sq.shape[0]} "
                     "samples (MLS 0, log LVR −∞ there): saturated units, or f does not depend "
                     "on x")
    return notes
