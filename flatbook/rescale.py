"""The layer rescaling of book ``lem-rescale`` (Dinh et al. 2017): W_l → a W_l, W_{l+1} → W_{l+1}/a,
the same function f for positively homogeneous activations, a different tr H.

Re-exported by :mod:`flatbook.models` (``models.rescale_layers``).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["POSITIVELY_HOMOGENEOUS", "rescale_layers"]

POSITIVELY_HOMOGENEOUS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Identity)
"""Elementwise activations φ with φ(a u) = a φ(u) for every a > 0."""


def rescale_layers(
    model: nn.Sequential, layer_index: int, a: float, *, strict: bool = True
) -> nn.Sequential:
    """The layer rescaling of book ``lem-rescale`` (Dinh et al. 2017): a rescaled deep copy.

    With ``model[layer_index]`` the dense layer l (``nn.Linear``, z = W_l h + b_l) and the next
    ``nn.Linear`` item the layer l + 1, the copy has W_l → a W_l, b_l → a b_l and
    W_{l+1} → W_{l+1}/a (b_{l+1} unchanged). If every item between them is positively homogeneous
    (:data:`POSITIVELY_HOMOGENEOUS`: ReLU, LeakyReLU, PReLU, Identity), φ(a u) = a φ(u) and the
    copy computes the same function f for every a > 0; its Hessian trace changes
    (tr H(a) = A/a² + B a² + C), relative flatness κ_j and adaptive sharpness do not.

    Args:
        model: an ``nn.Sequential`` (left unchanged).
        layer_index: item index of layer l in ``model`` (an ``nn.Linear``; e.g. 0 for the first
            layer of :func:`mlp`, whose item 2j is its j-th dense layer).
        a: the factor, a finite float > 0.
        strict: refuse (default) when an item between the two layers is not positively
            homogeneous; ``strict=False`` rescales anyway (the function then changes: for
            demonstrating exactly that, e.g. with GELU).

    Raises:
        ValueError: bad ``a`` or ``layer_index``, no later ``nn.Linear``, or (``strict``) an item
            between the two layers that is not positively homogeneous (the function would
            change).
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model must be an nn.Sequential; got {type(model).__name__}")
    a = float(a)
    if not (math.isfinite(a) and a > 0):
        raise ValueError(f"a must be a finite number > 0; got {a!r}")
    i = layer_index
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(model):
        raise ValueError(f"layer_index must be an item index 0 … {len(model) - 1}; got {i!r}")
    if not isinstance(model[i], nn.Linear):
        raise ValueError(f"layer_index {i} must name an nn.Linear item; got "
                         f"{type(model[i]).__name__}")
    j = next((j for j in range(i + 1, len(model)) if isinstance(model[j], nn.Linear)), None)
    if j is None:
        raise ValueError(f"layer_index {i}: no nn.Linear follows it, nothing to compensate with")
    allowed = [c.__name__ for c in POSITIVELY_HOMOGENEOUS]
    for k in range(i + 1, j):
        if strict and not isinstance(model[k], POSITIVELY_HOMOGENEOUS):
            raise ValueError(
                f"item {k} ({type(model[k]).__name__}) between layers {i} and {j} is not "
                f"positively homogeneous, so rescaling would change the function; allowed: "
                f"{allowed} (or pass strict=False)"
            )
    out = copy.deepcopy(model)
    with torch.no_grad():
        out[i].weight.mul_(a)
        if out[i].bias is not None:
            out[i].bias.mul_(a)
        out[j].weight.div_(a)
    return out
