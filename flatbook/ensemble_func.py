"""Ensemble engine for any ``nn.Sequential`` model of :mod:`flatbook.models` (LeNet-5, VGG
without BatchNorm, the ViT, MLPs with any activation): many independent SGD runs of one
architecture advanced as one batched computation by ``torch.func``.

The M members' parameters are stacked along a leading member axis
(``torch.func.stack_module_state``: every parameter θ^(p) of shape s becomes [M, *s]); one step
of all members is

    (g_m, L_m) = ∇_θ, L of  L_{B_m}(θ_m) = loss(f(x_{B_m}; θ_m), y_{B_m})    for every m
                 (``vmap(grad_and_value(loss ∘ functional_call))`` over the member axis)
    θ_m ← θ_m − η_m (g_m + λ_m θ_m)

with the loss of :mod:`flatbook.losses` (the solo loop's own function), so a member's
arithmetic is that of :func:`flatbook.train.train` on its config: same initialisation, same
batches (``train._epoch_perm``), same label noise ξ(seed, step) (``train._label_noise``), same
measurement steps, divergence rule and checkpoint format. The two agree to rounding (the
vmapped convolutions and the update are different kernels than the solo loop's), and a
member's numbers do not depend on how many members share its step.

Each member keeps its own step counter, data order, label noise σ, η, weight decay λ,
checkpoint and divergence status; a member that diverges is frozen (parameters zeroed, η = 0)
while the others go on. Records are taken by :func:`flatbook.ensemble.take_record` (the member's
weights copied into its own ``nn.Module``, measured as a solo run). The hand-batched MLP step of
:mod:`flatbook.ensemble` stays the engine for the MLPs it implements (it is faster);
:mod:`flatbook.ensemble_runs` chooses (``step_engine``).

Not implemented (use the solo engine): momentum, Nesterov and Adam; models with buffers
(BatchNorm) or random layers (Dropout), whose batched step would differ from the solo loop's.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from flatbook import ensemble as _ens
from flatbook import losses as _losses
from flatbook import train as _train

STEP_NAME = "vmap"
"""How this engine computes a step, as recorded in the numerics fingerprint
(``"ensemble_step"``; the hand-batched MLP step records ``"mlp"``)."""

_RANDOM_OR_STATEFUL = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd,
                       nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d)


def func_problem(model: nn.Module) -> str | None:
    """Why the batched ``torch.func`` step cannot train ``model`` like the solo loop (None:
    it can): it must be an ``nn.Sequential`` without buffers (BatchNorm running statistics)
    or random layers (Dropout), every parameter trainable."""
    if not isinstance(model, nn.Sequential):
        return f"model {type(model).__name__} is not an nn.Sequential"
    bad = sorted({type(m).__name__ for m in model.modules()
                  if isinstance(m, _RANDOM_OR_STATEFUL)})
    if bad:
        return f"layers with batch statistics or randomness ({', '.join(bad)})"
    if any(True for _ in model.buffers()):
        return "a model with buffers (their in-place updates are not batched over members)"
    if not all(p.requires_grad for p in model.parameters()):
        return "frozen parameters (the ensemble step trains every parameter)"
    return None


class FuncStack:
    """Stacked parameters of M models of one architecture: ``params[name]`` [M, *shape]."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        for m in models:
            why = func_problem(m)
            if why is not None:
                raise ValueError(f"the ensemble engine cannot train {why}; use engine='solo'")
        shapes = {tuple((n, tuple(p.shape)) for n, p in m.named_parameters()) for m in models}
        if len(shapes) != 1:
            raise ValueError("every member of an ensemble needs the same architecture")
        params, _ = stack_module_state(list(models))
        self.params = {k: v.detach().clone() for k, v in params.items()}
        self.base = copy.deepcopy(models[0]).to("meta").train()

    def load_into(self, m: int, model: nn.Module) -> None:
        """Copy member m's parameters into ``model`` (same architecture)."""
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(self.params[name][m])

    def zero(self, m: int) -> None:
        """Zero member m's parameters (a diverged member: no inf/NaN arithmetic)."""
        for t in self.params.values():
            t[m].zero_()

    def finite(self) -> Tensor:
        """[M] bool: every parameter of member m is finite."""
        first = next(iter(self.params.values()))
        ok = torch.ones(first.shape[0], dtype=torch.bool, device=first.device)
        for t in self.params.values():
            ok &= torch.isfinite(t).flatten(1).all(1)
        return ok


def activation_bytes(model: nn.Module, input_shape: Sequence[int], batch: int,
                     n_train: int) -> int:
    """Memory of one member of the ``torch.func`` step, in bytes: its training data
    n·(∏ input_shape + k), its parameters, their gradients and update temporaries (4 × P) and
    the activations of a minibatch of B = ``batch``, 3 × B × Σ (every leaf module's output
    size) (forward values, their gradients, the batched step's temporaries). The output
    sizes come from one forward pass of one zero input [1, *input_shape]."""
    sizes: list[int] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(int(out[0].numel())))
             for m in leaves]
    p0 = next(model.parameters())
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_shape, dtype=p0.dtype, device=p0.device))
    finally:
        for h in hooks:
            h.remove()
    n_params = sum(p.numel() for p in model.parameters())
    per_sample = math.prod(input_shape) + int(out[0].numel())
    return p0.element_size() * (n_train * per_sample + 4 * n_params + 3 * batch * sum(sizes))


def make_step(stack: FuncStack, loss: str) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
    """The batched SGD step of every member: ``step(xb, yb, lr, weight_decay)`` updates
    ``stack.params`` in place and returns the minibatch losses [M].

    ``xb`` [M, B, *input], ``yb`` [M, B, k]; ``lr``, ``weight_decay`` [M] (η_m = 0 freezes
    member m). Per member: (g, L) = (∇_θ L_B, L_B) with L_B = ``flatbook.losses`` ``loss`` of
    f(x_B; θ) (``functional_call`` of the member's parameters on the shared architecture), then
    θ ← θ − η (g + λθ) as ``torch.optim.SGD`` without momentum.
    """
    loss_fn = _losses.get(loss)
    base = stack.base

    def member_loss(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(functional_call(base, params, (x,)), y)

    grad_fn = vmap(grad_and_value(member_loss))

    def step(xb: Tensor, yb: Tensor, lr: Tensor, weight_decay: Tensor) -> Tensor:
        grads, losses = grad_fn(stack.params, xb, yb)
        decay = bool(weight_decay.any())
        with torch.no_grad():
            for name, p in stack.params.items():
                g = grads[name]
                shape = (-1,) + (1,) * (p.ndim - 1)
                if decay:
                    g = g + weight_decay.view(shape) * p
                p.sub_(lr.view(shape) * g)
        return losses.detach()

    return step


class _FuncLoop(_ens._Loop):
    """The batched SGD loop of :mod:`flatbook.ensemble` (records, checkpoints, divergence,
    members at their own steps) with the ``torch.func`` stack and step: the member
    bookkeeping is the MLP engine's, only the parameters, the minibatches and the step
    differ."""

    def __init__(self, members: Sequence[_ens.Member], opts: _ens.EnsembleOptions) -> None:
        self.members, self.opts = list(members), opts
        self.n, self.B, self.full = _ens._check_members(members, opts)
        self.spe = max(1, self.n // self.B)
        self.states = [_ens._resume(m) for m in self.members]
        self.stack = FuncStack([m.model for m in self.members])   # type: ignore[assignment]
        self.step_fn = make_step(self.stack, opts.loss)
        dev, dt = members[0].X_train.device, members[0].X_train.dtype
        self.X = torch.stack([m.X_train for m in self.members])   # [M, n, *input]
        self.Y = torch.stack([m.Y_train for m in self.members])   # [M, n, k]
        self.member_rows = torch.arange(len(self.members), device=dev).unsqueeze(1)
        self.lr = torch.tensor([m.lr for m in self.members], dtype=dt, device=dev)
        self.wd = torch.tensor([m.weight_decay for m in self.members], dtype=dt, device=dev)
        self.to_measure = [set(int(s) for s in m.measure_steps) | {0, m.steps}
                           for m in self.members]
        self.pending: list[Tensor] = []
        self.member_perms: list[Tensor | None] = [None] * len(self.members)

    def batch(self) -> tuple[Tensor, Tensor]:
        """Each member's minibatch at its own step (``train._epoch_perm`` of its seed and
        epoch, rows p·B … (p+1)·B − 1): ([M, B, *input], [M, B, k])."""
        if self.full:
            return self.X, self.Y
        rows = []
        for i, (m, st) in enumerate(zip(self.members, self.states, strict=True)):
            epoch, p = divmod(st.step, self.spe)
            if epoch != st.perm_epoch or self.member_perms[i] is None:
                self.member_perms[i] = _train._epoch_perm(m.seed, epoch, self.n).to(
                    self.X.device)
                st.perm_epoch = epoch
            rows.append(self.member_perms[i][p * self.B:(p + 1) * self.B])  # type: ignore[index]
        idx = torch.stack(rows)
        return self.X[self.member_rows, idx], self.Y[self.member_rows, idx]

    def step(self) -> None:
        """One batched step of every running member (frozen and finished members: η = 0)."""
        xb, yb = self.batch()
        run = self.running()
        noisy = [i for i in run if self.members[i].label_noise]
        if noisy:   # y + σξ with each member's own ξ(seed, step), as the solo loop draws it
            yb = yb.clone()
            for i in noisy:
                yb[i] = yb[i] + self.members[i].label_noise * _train._label_noise(
                    yb[i], self.members[i].seed, self.states[i].step)
        mask = torch.zeros_like(self.lr)
        mask[run] = 1
        self.pending.append(self.step_fn(xb, yb, self.lr * mask, self.wd))
        for i in run:
            self.states[i].step += 1


def train_func_ensemble(members: Sequence[_ens.Member], options: _ens.EnsembleOptions | None
                        = None) -> list[_train.TrainResult]:
    """Train every member together, one ``torch.func`` batched SGD step for all per iteration
    (:func:`make_step`), each with its own data order, label noise, η, schedule, checkpoint
    and divergence status; returns one :class:`flatbook.train.TrainResult` per member, in
    order, as :func:`flatbook.train.train` would for that member alone (to rounding).

    ``members`` are :class:`flatbook.ensemble.Member` of one architecture (any model that
    :func:`func_problem` accepts), ``options`` :class:`flatbook.ensemble.EnsembleOptions`.
    Interrupts (SIGINT / SIGTERM, or KeyboardInterrupt from the callback) checkpoint every
    running member at the step boundary and propagate.
    """
    opts = options or _ens.EnsembleOptions()
    return _ens.run_loop(_FuncLoop(members, opts), opts)


__all__ = ["STEP_NAME", "FuncStack", "activation_bytes", "func_problem", "make_step",
           "train_func_ensemble"]
