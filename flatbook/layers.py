"""Naming representations of an ``nn.Sequential`` network and splitting it there.

Every flatbook model is an ``nn.Sequential`` (DESIGN.md, "Models are nn.Sequential"). A
*boundary* b ∈ {0, …, L} (L = number of items) is the point between item b−1 and item b:

- ``head_b = model[:b]`` maps x ↦ h_b (the representation entering item b),
- ``tail_b = model[b:]`` maps h_b ↦ f (the rest of the network),

so that f = tail_b(head_b(x)) for every b. Boundaries are *named*:

=============  ============  ======================================
name           boundary b    representation
=============  ============  ======================================
``"input"``    0             x itself
``"j"``        j + 1         the output of item j (``model[j]``)
``"output"``   L             f(x) (alias of ``str(L − 1)``)
=============  ============  ======================================

A *dense layer* (paper.md §0) is a top-level ``nn.Linear`` item at index i: z = W_l h_{l−1} + b_l
with h_{l−1} = head_i(x) and f = g(z); its weight W_l is the parameter named ``f"{i}.weight"``.
Dense layers are numbered l = 1, 2, … in order (name ``"l1"``, ``"l2"``, …), as in the paper.

Only dense layers whose input is one vector per sample satisfy the multiplicative identity
(paper.md L2). A top-level ``nn.Linear`` applied to tokens ([n, T, p], as in a token-wise
projection) shares its weight across positions; :func:`dense_layers` excludes such layers when
given example inputs ``X`` (see its docstring).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "DenseLayer",
    "boundary",
    "check_sequential",
    "dense_layers",
    "representation",
    "representations",
    "split",
]


def check_sequential(model: object) -> nn.Sequential:
    """Return ``model`` if it is a plain ``nn.Sequential``; otherwise raise a TypeError.

    A subclass of ``nn.Sequential`` that overrides ``forward`` is rejected too: splitting it
    into ``model[:i]`` and ``model[i:]`` would not reproduce its output.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            "flatbook.layers supports models that are torch.nn.Sequential (every flatbook model "
            "is one: items may be composite modules such as a ViT block, dense layers are "
            f"top-level nn.Linear items); got {type(model).__name__}. Wrap your network as "
            "nn.Sequential(item0, item1, …) so that its layer boundaries can be named."
        )
    if type(model).forward is not nn.Sequential.forward:
        raise TypeError(
            f"{type(model).__name__} subclasses nn.Sequential but overrides forward(); "
            "only plain nn.Sequential composition (f = item_{L-1} ∘ … ∘ item_0) is supported"
        )
    return model


def representations(model: nn.Sequential) -> list[str]:
    """Names of all layer boundaries, in order: ``["input", "0", "1", …, str(L−2), "output"]``.

    ``"j"`` names the output of item j; ``"output"`` is the output of the last item (so
    ``str(L−1)`` is not listed separately, although :func:`split` accepts it).
    """
    model = check_sequential(model)
    L = len(model)
    return ["input", *[str(j) for j in range(L - 1)], "output"]


def boundary(model: nn.Sequential, name: str) -> int:
    """Boundary index b ∈ {0, …, L} of a representation name (see the module docstring)."""
    model = check_sequential(model)
    L = len(model)
    if name == "input":
        return 0
    if name == "output":
        return L
    if isinstance(name, str) and name.isdigit() and int(name) < L:
        return int(name) + 1
    raise ValueError(
        f"unknown representation name {name!r}; allowed: 'input', 'output' or the index of an "
        f"item '0' … '{L - 1}' (its output) — see flatbook.layers.representations(model)"
    )


def split(
    model: nn.Sequential, name: str
) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """Split ``model`` at the representation ``name``: returns ``(head, tail)`` with
    head: x ↦ h (``model[:b]``) and tail: h ↦ f (``model[b:]``), both acting on batches.

    ``tail(head(X)) == model(X)`` for every name. At ``"input"`` the head is the identity, at
    ``"output"`` the tail is.
    """
    b = boundary(model, name)
    return model[:b], model[b:]


def representation(model: nn.Sequential, X: Tensor, name: str) -> Tensor:
    """The representation h = head(X) at boundary ``name``, shape [n, …] (no gradient)."""
    head, _ = split(model, name)
    with torch.no_grad():
        return head(X)


@dataclass(frozen=True)
class DenseLayer:
    """A dense layer z = W_l h_{l−1} + b_l applied once per sample (paper.md §0) — the one
    layer type of flatbook, found by :func:`dense_layers` (top-level items of an
    ``nn.Sequential``) or by :class:`flatbook.probe.Probe` (any ``nn.Module``).

    Attributes:
        name: ``"l{l}"`` for a top-level item of an ``nn.Sequential``, else the qualified
            module name (the key in ``Report.layers``).
        index: position i of the ``nn.Linear`` item in the Sequential, else ``None``.
        module: the ``nn.Linear`` itself (weight W_l ∈ R^{m×p}).
        weight_name: name of W_l in ``model.named_parameters()`` (``f"{index}.weight"``).
        head: ``model[:index]``, x ↦ h_{l−1} (batched); ``None`` outside a Sequential.
        tail: ``model[index:]``, h_{l−1} ↦ f (batched), starting with this layer; or ``None``.
        input_name: name of h_{l−1}: ``"input"`` (x itself), the producing item / module's
            qualified name, or ``None`` when h_{l−1} comes from a functional op or a module
            called more than once per forward.
        l: the paper's layer index (1-based, forward order).
        qualname: qualified module name in ``model.named_modules()`` (``str(index)`` by
            default).
    """

    name: str
    index: int | None
    module: nn.Linear
    weight_name: str
    head: Callable[[Tensor], Tensor] | None
    tail: Callable[[Tensor], Tensor] | None
    input_name: str | None
    l: int
    qualname: str = ""

    def __post_init__(self) -> None:
        if not self.qualname and self.index is not None:
            object.__setattr__(self, "qualname", str(self.index))

    @property
    def producer(self) -> str | None:
        """Alias of ``input_name`` (the module whose output is h_{l−1})."""
        return self.input_name

    @property
    def weight(self) -> Tensor:
        """W_l, shape [m, p] (the live parameter)."""
        return self.module.weight

    @property
    def in_features(self) -> int:
        """p = dim h_{l−1}."""
        return self.module.in_features

    @property
    def out_features(self) -> int:
        """m = dim z."""
        return self.module.out_features


def dense_layers(model: nn.Sequential, X: Tensor | None = None) -> list[DenseLayer]:
    """All dense layers (top-level ``nn.Linear`` items) of ``model``, in order.

    Args:
        model: an ``nn.Sequential``.
        X: optional example inputs [n, …]. If given, a top-level ``nn.Linear`` whose input has
            more than one feature dimension per sample (tokens [n, T, p]: one weight shared
            across positions) is *not* a dense layer in the sense of paper.md L2 and is left
            out. Without ``X`` every top-level ``nn.Linear`` is listed.

    Raises:
        TypeError: ``model`` is not a plain ``nn.Sequential``.
        ValueError: the same ``nn.Linear`` object appears twice (tied weights break L2).
    """
    model = check_sequential(model)
    seen: set[int] = set()
    idx: list[int] = []
    for i, item in enumerate(model):
        if isinstance(item, nn.Linear):
            if id(item) in seen:
                raise ValueError(
                    f"model item {i} reuses an nn.Linear that appears earlier (tied weights); "
                    "dense-layer identities (paper.md L2) need one weight per layer"
                )
            seen.add(id(item))
            idx.append(i)
    if X is not None and idx:
        keep = []
        with torch.no_grad():
            h = X[:1]
            prev = 0
            for i in idx:
                h = model[prev:i](h)
                prev = i
                if h.ndim == 2:
                    keep.append(i)
        idx = keep
    out = []
    for l, i in enumerate(idx, start=1):
        out.append(
            DenseLayer(
                name=f"l{l}",
                index=i,
                module=model[i],
                weight_name=f"{i}.weight",
                head=model[:i],
                tail=model[i:],
                input_name="input" if i == 0 else str(i - 1),
                l=l,
            )
        )
    return out
