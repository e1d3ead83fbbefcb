"""What a training record measures: full-set loss/accuracy and the measure on the evaluation subset.

A record of :func:`flatbook.train.train` holds :func:`evaluate`'s (mean loss, accuracy) on the
training and test sets, then ``measure(model, X_eval, Y_eval, loss, seed)`` on the fixed
evaluation subset. :func:`make_measure` builds that function from names in
:data:`flatbook.runspec.MEASURES`: the whole ``flatbook.report(...).as_dict()``
(:func:`report_measure`), or λ_max(H) by Lanczos and the exact Gauss–Newton trace alone
(:func:`curvature_measure`).
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from flatbook import losses
from flatbook._validate import check_choice, check_positive_float, check_positive_int
from flatbook.curvature import eval_mode
from flatbook.runspec import MEASURES

MeasureFn = Callable[[nn.Module, Tensor, Tensor, str, int], Mapping[str, float]]
"""``measure(model, X_eval, Y_eval, loss, seed) -> {name: float}`` (model in eval mode)."""


@dataclass(frozen=True)
class CurvatureMeasureOptions:
    """What :func:`curvature_measure` computes.

    Attributes:
        sharpness: λ_max(H) by Lanczos (keys ``lambda_max*``).
        trace: the exact Gauss–Newton trace (key ``trace_gn``).
        tol: Lanczos relative tolerance on λ_max.
        max_hvp: most Hessian-vector products Lanczos may use.
    """

    sharpness: bool = True
    trace: bool = True
    tol: float = 1e-3
    max_hvp: int = 500

    @classmethod
    def from_flags(
        cls, base: CurvatureMeasureOptions | None = None, **flags: Any
    ) -> CurvatureMeasureOptions:
        """``base`` (default: all defaults) with ``flags`` changed; ``TypeError`` naming an
        unknown keyword and listing the allowed ones."""
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(flags) - set(allowed))
        if unknown:
            raise TypeError(f"curvature_measure() got unknown keyword(s) {unknown}; allowed: "
                            f"{allowed}, or options=CurvatureMeasureOptions(...)")  # fmt: skip
        if base is None:
            return cls(**flags)
        if not isinstance(base, CurvatureMeasureOptions):
            raise TypeError(f"options must be a CurvatureMeasureOptions; got "
                            f"{type(base).__name__}")  # fmt: skip
        return replace(base, **flags) if flags else base


def curvature_measure(
    model: nn.Module,
    X: Tensor,
    Y: Tensor,
    loss: str,
    seed: int,
    *,
    options: CurvatureMeasureOptions | None = None,
    **flags: Any,
) -> dict[str, float]:
    """λ_max(H) by Lanczos and the exact Gauss–Newton trace on (X, Y) ([n, ...], [n, k] or [n]).

    What is computed: ``options`` (a :class:`CurvatureMeasureOptions`) or its fields as
    keywords (``sharpness=``, ``trace=``, ``tol=``, ``max_hvp=``; keywords override ``options``).
    Keys: ``lambda_max``, ``lambda_max_residual`` (‖Hv − λv‖), ``lambda_max_n_hvp``,
    ``lambda_max_converged`` (1.0/0.0); ``trace_gn`` = (1/n) Σ_i tr(Λ_i J_i J_iᵀ) (= tr H at
    interpolation for the squared loss, paper.md L1; the GGN trace for cross-entropy).
    """
    from flatbook import curvature

    o = CurvatureMeasureOptions.from_flags(options, **flags)
    out: dict[str, float] = {}
    if o.sharpness:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # non-convergence is recorded
            s = curvature.sharpness(model, loss, X, Y, k=1, tol=o.tol, seed=seed,
                                    max_hvp=o.max_hvp)  # fmt: skip
        out["lambda_max"] = float(s.values[0])
        out["lambda_max_residual"] = float(s.residuals[0])
        out["lambda_max_n_hvp"] = float(s.n_hvp)
        out["lambda_max_converged"] = float(s.converged)
    if o.trace:
        out["trace_gn"] = float(curvature.trace(model, loss, X, Y, method="gn", seed=seed).value)
    return out


def call_measure(measure: MeasureFn, model: nn.Module, X: Tensor, Y: Tensor, loss: str,
                 seed: int, step: int) -> Mapping[str, float]:
    """``measure(model, X, Y, loss, seed)``; a measure with ``takes_step = True`` also gets
    ``step=`` (the record's step: e.g. a profile that measures some quantities at some
    records only)."""
    if getattr(measure, "takes_step", False):
        return measure(model, X, Y, loss, seed, step=step)  # type: ignore[call-arg]
    return measure(model, X, Y, loss, seed)


def report_available() -> bool:
    """True when ``flatbook.report`` (geometry measures and bounds in one call) is installed."""
    return importlib.util.find_spec("flatbook.report") is not None


def report_measure(
    model: nn.Module, X: Tensor, Y: Tensor, loss: str, seed: int, **options: Any
) -> dict[str, float]:
    """``flatbook.report(model, X, Y, loss=loss, seed=seed, **options).as_dict()`` — sharpness,
    Gauss–Newton trace, geometry measures per layer and every bound with its slack."""
    mod = importlib.import_module("flatbook.report")
    rep = mod.report(model, X, Y, loss=loss, seed=seed, **options)
    return {str(k): float(v) for k, v in rep.as_dict().items()}


def make_measure(
    names: Sequence[str] = MEASURES,
    *,
    tol: float = 1e-3,
    max_hvp: int = 500,
    lr: float | None = None,
    batch_size: int | None = None,
    n_train: int | None = None,
) -> MeasureFn:
    """Build a measurement function from names in ``MEASURES``.

    With ``"report"`` (and ``flatbook.report`` installed, see :func:`report_available`) one
    call of :func:`report_measure` gives λ_max (if ``"sharpness"`` is asked for; Lanczos with
    relative tolerance ``tol``), the Gauss–Newton trace and every geometry measure and bound;
    ``lr``, ``batch_size`` and ``n_train`` (training-set size) feed its linear-stability
    bounds (T7). Without the report,
    ``"sharpness"`` / ``"trace"`` use :func:`curvature_measure` (same keys: ``lambda_max``,
    ``lambda_max_residual``, ``lambda_max_n_hvp``, ``lambda_max_converged``, ``trace_gn``).
    """
    names = tuple(names)
    for n in names:
        check_choice(n, "measure", MEASURES)
    check_positive_float(tol, "tol")
    check_positive_int(max_hvp, "max_hvp")
    if lr is not None:
        check_positive_float(lr, "lr")
    check_positive_int(batch_size, "batch_size", allow_none=True)
    want_s, want_t = "sharpness" in names, "trace" in names

    def measure(model: nn.Module, X: Tensor, Y: Tensor, loss: str, seed: int) -> dict[str, float]:
        if "report" in names and report_available():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # non-convergence is recorded
                return report_measure(
                    model, X, Y, loss, seed, sharpness=want_s, tol=tol, lr=lr,
                    batch_size=batch_size, n_train=n_train,
                )  # fmt: skip
        if want_s or want_t:
            return curvature_measure(
                model, X, Y, loss, seed, sharpness=want_s, trace=want_t, tol=tol,
                max_hvp=max_hvp,
            )  # fmt: skip
        return {}

    measure.names = names  # type: ignore[attr-defined]
    return measure


default_measure: MeasureFn = make_measure()
"""λ_max, tr H (GN) and, when available, ``flatbook.report(...).as_dict()``."""


@torch.no_grad()
def evaluate(
    model: nn.Module, X: Tensor, Y: Tensor, loss: str, chunk: int = 4096
) -> tuple[float, float]:
    """(mean loss, accuracy) over (X, Y) in eval mode, in chunks of ``chunk`` samples.

    Both losses are means over samples, so the chunked value Σ_c n_c L_c / n is exact.
    Accuracy: argmax f(x) = label (label = argmax y for one-hot / probability targets).
    """
    fn = losses.get(loss)
    with eval_mode(model):
        total, correct, n = 0.0, 0, X.shape[0]
        for s in range(0, n, chunk):
            out = model(X[s : s + chunk])
            y = Y[s : s + chunk]
            total += float(fn(out, y)) * out.shape[0]
            lab = y.argmax(1) if y.ndim == 2 else y
            correct += int((out.argmax(1) == lab).sum())
    return total / n, correct / n


__all__ = [
    "CurvatureMeasureOptions",
    "MeasureFn",
    "call_measure",
    "curvature_measure",
    "default_measure",
    "evaluate",
    "make_measure",
    "report_available",
    "report_measure",
]
