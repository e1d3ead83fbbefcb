"""Models. Every flatbook model is an ``nn.Sequential`` so that any layer boundary can be
named and the network split there (``flatbook.geometry`` uses this for per-layer measures).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "linear": nn.Identity,
}


def mlp(
    widths: Sequence[int],
    activation: str = "relu",
    bias: bool = True,
    seed: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> nn.Sequential:
    """Multilayer perceptron d → widths[1] → … → k as ``Sequential(Linear, act, …, Linear)``.

    Args:
        widths: layer sizes including input and output, e.g. ``[64, 32, 32, 10]``.
        activation: one of ``ACTIVATIONS``.
        seed: if given, parameters are initialised from ``torch.manual_seed(seed)``
            (PyTorch's default init), independently of the global RNG state.
    """
    widths = list(widths)
    if len(widths) < 2 or any(int(w) < 1 for w in widths):
        raise ValueError(f"widths must list ≥ 2 positive sizes (input … output); got {widths}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; allowed: {sorted(ACTIVATIONS)}")
    gen_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1):
            layers.append(nn.Linear(widths[i], widths[i + 1], bias=bias))
            if i < len(widths) - 2:
                layers.append(ACTIVATIONS[activation]())
        return nn.Sequential(*layers).to(dtype)
    finally:
        if seed is not None:
            torch.random.set_rng_state(gen_state)
