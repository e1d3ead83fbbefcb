"""The batched SGD step of the ensemble engine: M MLPs of one shape as stacked parameters.

M networks d → h₁ → … → k (the ``flatbook.models.mlp`` layout) are held as W_l [M, out, in],
b_l [M, out]. One step of all members is

    z_l = b_l + h_{l-1} W_lᵀ        (torch.baddbmm over the member axis, h₀ = x_B [M, B, d])
    θ_m ← θ_m − η_m (∇_θ L_{B_m}(θ_m) + λ_m θ_m)     for every member m (η_m = 0: frozen)

with the gradient written by hand (no autograd graph, optimizer object or ``torch._dynamo``
import on the training path). Every operation is either elementwise or one matrix product per
member, so a member's numbers do not depend on how many members share the step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

ACTIVATIONS = ("relu", "tanh", "sigmoid", "linear")
"""Hidden activations the batched MLP step implements (others: use the solo engine)."""
LOSSES = ("squared", "cross_entropy")
"""Losses the batched step implements (one per ensemble)."""

_ACT_TYPES: dict[type, str] = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
                               nn.Identity: "linear"}


def mlp_layout(model: nn.Module) -> tuple[list[str], str, bool]:
    """The dense layers of an MLP ``nn.Sequential`` (Linear, act, …, Linear; an optional
    leading Flatten): (item names of the Linear layers, activation name, has bias).

    Raises ValueError naming what the batched step does not implement (then train the run
    with the solo engine: ``engine="solo"``).
    """
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"the ensemble engine trains nn.Sequential MLPs; got "
                         f"{type(model).__name__} (use engine='solo')")
    items = list(model.named_children())
    if items and isinstance(items[0][1], nn.Flatten):
        items = items[1:]
    linears = [n for n, m in items[0::2] if isinstance(m, nn.Linear)]
    acts = {_ACT_TYPES.get(type(m)) for _, m in items[1::2]}
    if len(linears) != (len(items) + 1) // 2 or len(items) % 2 == 0:
        raise ValueError("the ensemble engine needs a Linear, activation, …, Linear MLP "
                         "(use engine='solo')")
    if None in acts or len(acts) > 1:
        raise ValueError(f"the ensemble engine implements the activations {list(ACTIVATIONS)} "
                         f"(one per network); got {[type(m).__name__ for _, m in items[1::2]]} "
                         f"(use engine='solo')")
    bias = {getattr(model, n).bias is not None for n in linears}
    if len(bias) > 1:
        raise ValueError("the ensemble engine needs bias on every layer or on none")
    return linears, (acts.pop() if acts else "linear"), bias.pop()


class Stack:
    """Stacked parameters of M MLPs: ``W[l]`` [M, out, in], ``b[l]`` [M, out] (or None)."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        layouts = {(tuple(mlp_layout(m)[0]), *mlp_layout(m)[1:]) for m in models}
        if len(layouts) != 1:
            raise ValueError("every member of an ensemble needs the same architecture")
        names, self.act, self.bias = layouts.pop()
        self.names = list(names)
        shapes = {tuple(tuple(p.shape) for p in m.parameters()) for m in models}
        if len(shapes) != 1:
            raise ValueError("every member of an ensemble needs the same layer widths")
        with torch.no_grad():
            self.W = [torch.stack([getattr(m, n).weight.detach() for m in models]).clone()
                      for n in self.names]
            self.b = [torch.stack([getattr(m, n).bias.detach() for m in models]).clone()
                      if self.bias else None for n in self.names]

    def tensors(self) -> list[Tensor]:
        """Every stacked parameter tensor (weights, then biases)."""
        return [*self.W, *(b for b in self.b if b is not None)]

    def load_into(self, m: int, model: nn.Module) -> None:
        """Copy member m's parameters into ``model`` (same layout)."""
        with torch.no_grad():
            for layer, n in enumerate(self.names):
                getattr(model, n).weight.copy_(self.W[layer][m])
                if self.b[layer] is not None:
                    getattr(model, n).bias.copy_(self.b[layer][m])

    def zero(self, m: int) -> None:
        """Zero member m's parameters (a diverged member: no inf/NaN arithmetic)."""
        for t in self.tensors():
            t[m].zero_()

    def finite(self) -> Tensor:
        """[M] bool: every parameter of member m is finite."""
        ok = torch.ones(self.W[0].shape[0], dtype=torch.bool, device=self.W[0].device)
        for t in self.tensors():
            ok &= torch.isfinite(t).flatten(1).all(1)
        return ok


def _act(name: str, z: Tensor) -> Tensor:
    """σ(z) for the hidden activation ``name``."""
    if name == "relu":
        return torch.relu(z)
    if name == "tanh":
        return torch.tanh(z)
    if name == "sigmoid":
        return torch.sigmoid(z)
    return z


def _act_grad(name: str, g: Tensor, h: Tensor) -> Tensor:
    """g · σ'(z) written through the activation's output h = σ(z) (as autograd does)."""
    if name == "relu":
        return torch.ops.aten.threshold_backward(g, h, 0)   # autograd's ReLU backward
    if name == "tanh":
        return g * (1 - h * h)
    if name == "sigmoid":
        return g * (h * (1 - h))
    return g


def _forward(stack: Stack, xb: Tensor) -> list[Tensor]:
    """[h₀ = x_B, h₁, …, h_{L−1}, f]: the activations of every layer, [M, B, width]."""
    hs, h = [xb], xb
    last = len(stack.W) - 1
    for layer, (W, b) in enumerate(zip(stack.W, stack.b, strict=True)):
        z = (torch.baddbmm(b.unsqueeze(1), h, W.transpose(1, 2)) if b is not None
             else torch.bmm(h, W.transpose(1, 2)))
        h = _act(stack.act, z) if layer < last else z
        hs.append(h)
    return hs


def _output_grad(f: Tensor, yb: Tensor, scale: Tensor, loss: str) -> tuple[Tensor, Tensor]:
    """(η_m ∂L/∂f [M, B, k], minibatch losses [M]) for the squared loss
    L = (1/2B) Σ_i ‖f_i − y_i‖² (∂L/∂f = (f − y)/B) or cross-entropy
    L = −(1/B) Σ_i y_iᵀ log softmax f_i (∂L/∂f = (softmax f · Σ_k y − y)/B);
    ``scale`` [M, 1, 1] = η_m / B."""
    B = f.shape[1]
    if loss == "squared":
        r = f - yb
        rf = r.flatten(1)
        return r * scale, torch.linalg.vecdot(rf, rf).mul_(0.5 / B)
    logp = torch.log_softmax(f, dim=2)
    losses = -(yb * logp).sum((1, 2)) / B
    return (logp.exp() * yb.sum(2, keepdim=True) - yb) * scale, losses


def batched_step(stack: Stack, xb: Tensor, yb: Tensor, lr: Tensor, weight_decay: Tensor,
                 loss: str) -> Tensor:
    """One SGD step of every member in place; returns the minibatch losses [M].

    ``xb`` [M, B, d], ``yb`` [M, B, k]; ``lr``, ``weight_decay`` [M] (η_m = 0 freezes member
    m). Backward with the learning rate folded into the output gradient, g_L = η ∂L/∂f:
    W_l ← W_l − g_lᵀ h_{l−1} (one fused ``baddbmm_``), b_l ← b_l − Σ_i g_l,
    g_{l−1} = (g_l W_l) ⊙ σ'(z_{l−1}) with the weights before their update; weight decay
    first scales θ by 1 − ηλ. Mathematically θ ← θ − η(∂L/∂θ + λθ) (``torch.optim.SGD``);
    the rounding differs from the solo loop's (agreement to rounding, not bit for bit).
    """
    hs = _forward(stack, xb)
    f = hs.pop()
    g, losses = _output_grad(f, yb, (lr / xb.shape[1]).view(-1, 1, 1), loss)
    keep = (1 - lr * weight_decay) if bool(weight_decay.any()) else None
    for layer in reversed(range(len(stack.W))):
        W, b, h = stack.W[layer], stack.b[layer], hs[layer]
        back = torch.bmm(g, W) if layer > 0 else None
        if keep is not None:
            W.mul_(keep.view(-1, 1, 1))
            if b is not None:
                b.mul_(keep.view(-1, 1))
        W.baddbmm_(g.transpose(1, 2), h, alpha=-1)
        if b is not None:
            b.sub_(g.sum(1))
        if back is not None:
            g = _act_grad(stack.act, back, h)
    return losses


__all__ = ["ACTIVATIONS", "LOSSES", "Stack", "batched_step", "mlp_layout"]
