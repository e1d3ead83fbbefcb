"""Losses, with the normalisation the paper's bounds use.

The bounds are stated for the squared loss

.. math:: L(\\theta) = \\frac{1}{2n} \\sum_{i=1}^n \\lVert f(x_i;\\theta) - y_i \\rVert^2

(sum over the k outputs, mean over the n samples). ``torch.nn.MSELoss()`` divides by n·k
instead, which rescales every curvature quantity by 1/k: never mix the two silently.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

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


def get(name: str | LossFn) -> LossFn:
    """Look a loss up by name ("squared" or "cross_entropy"); callables pass through."""
    if callable(name):
        return name
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; allowed: {sorted(LOSSES)}") from None
