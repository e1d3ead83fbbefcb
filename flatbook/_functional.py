"""Functional view of a ``torch.nn.Module``: parameters as a dict or a flat vector θ ∈ R^P.

Shared by :mod:`flatbook.curvature` and :mod:`flatbook.geometry`; everything here is a thin
wrapper around :func:`torch.func.functional_call`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call


def named_params(model: nn.Module) -> dict[str, Tensor]:
    """Trainable parameters of ``model`` as ``{name: tensor}`` (detached views)."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def flatten(params: Mapping[str, Tensor]) -> Tensor:
    """Concatenate a parameter dict into a flat vector θ, shape [P]."""
    return torch.cat([p.reshape(-1) for p in params.values()])


def unflatten(theta: Tensor, like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`flatten`: split θ (shape [P]) into tensors shaped like ``like``."""
    out: dict[str, Tensor] = {}
    i = 0
    for name, p in like.items():
        out[name] = theta[i : i + p.numel()].view_as(p)
        i += p.numel()
    if i != theta.numel():
        raise ValueError(f"theta has {theta.numel()} entries, parameters need {i}")
    return out


def n_params(model: nn.Module) -> int:
    """Number P of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def forward_fn(model: nn.Module) -> Callable[[Mapping[str, Tensor], Tensor], Tensor]:
    """Return ``f(params, x) = model(x)`` evaluated with the given parameters (buffers kept)."""
    buffers = {n: b for n, b in model.named_buffers()}

    def f(params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, ({**params}, buffers), (x,))

    return f


def grad_of_sum(output: Tensor, r: Tensor, inputs: Sequence[Tensor], retain_graph: bool = False
                ) -> tuple[Tensor | None, ...]:
    """The vector–Jacobian product ∂⟨r, output⟩/∂inputs as the gradient of the scalar
    (output · r).sum() (``None`` where the output does not depend on an input), under
    ``torch.enable_grad`` so that it also works inside ``torch.no_grad``. The equivalent
    ``torch.autograd.grad(output, inputs, r)`` imports sympy on its first call in a process
    (~0.7 s on CPU: longer than a whole measurement of a small model)."""
    with torch.enable_grad():
        return torch.autograd.grad((output * r).sum(), tuple(inputs), retain_graph=retain_graph,
                                   allow_unused=True)


def _grad_rows(output: Tensor, ins: tuple[Tensor, ...], cotangents: Tensor,
               retain_graph: bool) -> tuple[Tensor | None, ...]:
    """The rows of :func:`batched_grad` one :func:`grad_of_sum` at a time (m backward passes,
    the graph kept until the last unless ``retain_graph``), stacked per input."""
    m = cotangents.shape[0]
    rows = [grad_of_sum(output, cotangents[j], ins, retain_graph or j < m - 1) for j in range(m)]
    return tuple(None if g[0] is None else torch.stack(g) for g in zip(*rows, strict=True))


def batched_grad(output: Tensor, inputs: Sequence[Tensor], cotangents: Tensor,
                 retain_graph: bool = True, materialize: bool = False, vectorize: bool = True
                 ) -> tuple[Tensor | None, ...]:
    """Vector–Jacobian products for a batch of cotangents, one backward per row, vectorised.

    Returns, for each input x, ∂⟨c_j, output⟩/∂x stacked over j ([m, *x.shape]; where the
    output does not depend on x, ``None``, or zeros with ``materialize``): the same as
    ``torch.autograd.grad(output, inputs, cotangents, is_grads_batched=True,
    allow_unused=True)``, whose shape validation imports sympy on its first call in a process
    (see :func:`grad_of_sum`). The cotangents [m, *output.shape] are right by construction here,
    so the engine is called directly (torch's own ``_vmap`` over ``_engine_run_backward``,
    exactly as ``torch.autograd.grad`` does after that check); where those private names are
    missing (another torch version) the public call is used. An op without a batching rule
    falls back to one :func:`grad_of_sum` per row (same numbers, m backward passes), as does
    ``vectorize=False`` (for graphs whose vmapped backward is slower than m plain passes, e.g.
    attention's batched products of two activations; see ``flatbook.layer_rules``).
    """
    if cotangents.shape[1:] != output.shape:
        raise ValueError(f"cotangents must have shape [m, *{tuple(output.shape)}]; got "
                         f"{tuple(cotangents.shape)}")
    ins = tuple(inputs)
    if not vectorize:
        gs = _grad_rows(output, ins, cotangents, retain_graph)
        return _materialized(gs, ins, cotangents.shape[0]) if materialize else gs
    try:
        from torch._vmap_internals import _vmap
        from torch.autograd.graph import _engine_run_backward

        def vjp(c: Tensor) -> tuple[Tensor | None, ...]:
            return _engine_run_backward((output,), (c,), retain_graph, False, ins, True,
                                        accumulate_grad=False)

        with torch.enable_grad():
            gs = _vmap(vjp, 0, 0, allow_none_pass_through=True)(cotangents)
    except ImportError:  # pragma: no cover - other torch versions
        gs = torch.autograd.grad(output, ins, cotangents, retain_graph=retain_graph,
                                 is_grads_batched=True, allow_unused=True)
    except RuntimeError:  # an op without a batching rule: one backward per row
        gs = _grad_rows(output, ins, cotangents, retain_graph)
    return _materialized(gs, ins, cotangents.shape[0]) if materialize else gs


def _materialized(gs: tuple[Tensor | None, ...], ins: tuple[Tensor, ...], m: int
                  ) -> tuple[Tensor, ...]:
    """``gs`` with every ``None`` (an input the output does not depend on) as zeros [m, *x]."""
    return tuple(torch.zeros(m, *t.shape, dtype=t.dtype, device=t.device) if g is None else g
                 for g, t in zip(gs, ins, strict=True))
