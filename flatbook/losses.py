"""Losses, with the normalisation the paper's bounds use.

The bounds are stated for the squared loss

.. math:: L(\\theta) = \\frac{1}{2n} \\sum_{i=1}^n \\lVert f(x_i;\\theta) - y_i \\rVert^2

(sum over the k outputs, mean over the n samples). ``torch.nn.MSELoss()`` divides by n·k
instead, which rescales every curvature quantity by 1/k: never mix the two silently.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

LossFn = Callable[[Tensor, Tensor], Tensor]


def _check(output: Tensor, target: Tensor) -> None:
    if output.ndim != 2:
        raise ValueError(f"output must have shape [n, k]; got {tuple(output.shape)}")
    if output.shape[0] == 0:
        raise ValueError("output is empty (n = 0 samples)")
    if target.shape[0] != output.shape[0]:
        raise ValueError(
            f"target has {target.shape[0]} samples but output has {output.shape[0]}"
        )


def squared(output: Tensor, target: Tensor) -> Tensor:
    """Squared loss L = (1/2n) Σ_i ‖f(x_i) − y_i‖².

    Args:
        output: network outputs f(x_i), shape [n, k].
        target: targets y_i (one-hot for classification), shape [n, k].

    Returns:
        Scalar tensor.
    """
    _check(output, target)
    if target.shape != output.shape:
        raise ValueError(
            f"squared loss needs target of shape {tuple(output.shape)} (one-hot for classes); "
            f"got {tuple(target.shape)}"
        )
    return 0.5 * (output - target).pow(2).sum() / output.shape[0]


def cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy L = (1/n) Σ_i −log softmax(f(x_i))_{y_i}.

    Args:
        output: logits, shape [n, k].
        target: class indices (shape [n], integer) or class probabilities / one-hot
            (shape [n, k]).
    """
    _check(output, target)
    if target.ndim == 1:
        return torch.nn.functional.cross_entropy(output, target.long())
    if target.shape != output.shape:
        raise ValueError(
            f"cross_entropy target must be [n] indices or [n, k] probabilities; "
            f"got {tuple(target.shape)} for output {tuple(output.shape)}"
        )
    return -(target * torch.log_softmax(output, dim=1)).sum() / output.shape[0]


LOSSES: dict[str, LossFn] = {"squared": squared, "cross_entropy": cross_entropy}


def resolve(loss: object) -> tuple[str | LossFn, list[str]]:
    """Recognise a loss given as a name, a ``torch.nn`` loss instance or a callable.

    Returns ``(spec, notes)`` with ``spec`` ``"squared"``, ``"cross_entropy"`` or the callable,
    and the notes that say how a ``torch.nn`` instance relates to it:

    - ``nn.MSELoss(reduction="mean")`` is (1/(nk)) Σ_i ‖f_i − y_i‖² = (2/k)·L_squared and
      ``nn.MSELoss(reduction="sum")`` is Σ_i ‖f_i − y_i‖² = 2n·L_squared: both are measured as
      flatbook's ``"squared"`` loss (1/2n) Σ‖f − y‖² — the loss of the bounds — and the note
      gives the factor by which λ_max and tr H of *your* loss differ.
    - ``nn.CrossEntropyLoss()`` with its defaults (mean reduction, no class weights, no label
      smoothing) is ``"cross_entropy"``.
    - every other ``nn`` loss instance, or these with other options, is refused (TypeError):
      flatbook's curvature is that of a sample mean with a stated normalisation.
    """
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; allowed: {sorted(LOSSES)}, an "
                             "nn.MSELoss / nn.CrossEntropyLoss instance or a callable")
        return loss, []
    if isinstance(loss, nn.MSELoss):
        if loss.reduction == "mean":
            return "squared", ["loss nn.MSELoss() = (1/(nk)) Σ‖f−y‖² = (2/k)·L with flatbook's "
                               "L = (1/2n) Σ‖f−y‖²: everything is reported for L; multiply "
                               "λ_max and tr H by 2/k for nn.MSELoss()"]
        if loss.reduction == "sum":
            return "squared", ["loss nn.MSELoss(reduction='sum') = Σ‖f−y‖² = 2n·L with "
                               "flatbook's L = (1/2n) Σ‖f−y‖²: everything is reported for L; "
                               "multiply λ_max and tr H by 2n for your loss"]
        raise TypeError("loss nn.MSELoss(reduction='none') is not a scalar loss: pass "
                        "loss='squared' (flatbook's (1/2n) Σ‖f−y‖²)")
    if isinstance(loss, nn.CrossEntropyLoss):
        plain = (loss.reduction == "mean" and loss.weight is None
                 and loss.label_smoothing == 0.0)
        if plain:
            return "cross_entropy", []
        raise TypeError("loss nn.CrossEntropyLoss with class weights, label smoothing or a "
                        "reduction other than 'mean' is not supported: pass "
                        "loss='cross_entropy' (mean over samples) or a callable")
    if isinstance(loss, nn.Module):
        raise TypeError(f"loss {type(loss).__name__}() is not recognised: pass 'squared', "
                        "'cross_entropy', nn.MSELoss(), nn.CrossEntropyLoss() or a callable "
                        "loss(f, y) that averages over samples")
    if callable(loss):
        return loss, []  # type: ignore[return-value]
    raise TypeError(f"loss must be 'squared', 'cross_entropy', an nn loss instance or a "
                    f"callable; got {type(loss).__name__}")


def get(name: str | LossFn) -> LossFn:
    """Look a loss up by name ("squared" or "cross_entropy"); callables pass through.

    ``torch.nn`` loss instances go through :func:`resolve` (``nn.MSELoss()`` is mapped to
    ``"squared"`` only there, with its factor stated; here it is refused, never silently
    rescaled).
    """
    if isinstance(name, nn.Module):
        raise TypeError(
            f"loss is a {type(name).__name__} instance: flatbook's losses have a stated "
            "normalisation (squared: (1/2n) Σ‖f−y‖², nn.MSELoss() is (2/k) times it). Pass "
            "loss='squared' or 'cross_entropy' (flatbook.report also accepts nn.MSELoss() / "
            "nn.CrossEntropyLoss() and states the factor)"
        )
    if callable(name):
        return name
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; allowed: {sorted(LOSSES)}") from None
