"""Per-layer rules: per-sample gradient Gram blocks without per-sample Jacobians (ghost norms).

For a network f(x; θ) ∈ R^k and a parameter tensor θ_m owned by module m, the per-sample Gram
block K_i^(m) = J_i^(m) J_i^(m)ᵀ [k, k] (J_i^(m) = ∂f(x_i)/∂θ_m) follows from what a forward hook
sees (the module's input h and output z) and the k output gradients δ_c = ∂f_c/∂z (one batched
backward pass of k cotangents):

======================  ==================================  =======================================
module                  parameter                           per-sample gradient ∂f_c/∂θ
======================  ==================================  =======================================
``nn.Linear``, conv     W [p, d], b [p]                     Σ_t δ_{c,t} u_tᵀ, Σ_t δ_{c,t}
                                                            (u_t = input / unfolded patch at t)
``nn.LayerNorm``        γ, β (elementwise)                  Σ_t δ_{c,t} ⊙ x̂_t, Σ_t δ_{c,t}
``nn.BatchNorm1d/2d/3d``  γ, β per channel (running stats)  Σ_{t} δ_{c,·,t} x̂_{·,t}, Σ_t δ_{c,·,t}
``nn.Embedding``        E [V, p]                            Σ_t e_{idx_t} δ_{c,t}ᵀ
``models.PatchEmbed``   class token, position embedding     δ_{c,0}, δ_c (all positions)
======================  ==================================  =======================================

Each rule returns, per parameter, a :class:`Factor` — a per-sample gradient in factored form —
that knows its Gram ``K`` [b, k, k] and its contraction with weights r [b, k] (the total
gradient of Σ_i r_iᵀ f(x_i), checked against autograd before it is trusted: one rebuilt-gradient
check, relative tolerance :data:`REBUILD_RTOL`). ``nn.Linear`` and conv weights take the cheaper
of ghost norms (Li et al. 2022; Bu et al. 2023: ‖Σ_t δ_t u_tᵀ‖_F² = Σ_{t,s} (u_t·u_s)(δ_t·δ_s))
and instantiated per-sample gradients (:func:`gram_costs`).

A new layer type is one function decorated with ``@rule(ModuleType)`` (the Opacus/BackPACK
registry shape). Parameters no rule covers, or whose rebuilt gradient fails the check (a weight
also used outside its module's forward, say), are left to the caller's exact ``vmap(jacrev)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flatbook import models
from flatbook._functional import batched_grad, grad_of_sum

__all__ = ["GRAM_BLOCK_ENTRIES", "REBUILD_RTOL", "RULES", "Factor", "gram_costs", "layer_grams",
           "rebuilt_matches", "rule", "rule_for"]

#: entries of the largest intermediate per sub-batch when forming per-sample Gram blocks
GRAM_BLOCK_ENTRIES = 1 << 24
#: relative tolerance, in units of the dtype's machine epsilon, of the rebuilt-gradient check
REBUILD_RTOL = 1e3


def gram_costs(T: int, d: int, p: int, k: int) -> tuple[int, int]:
    """Multiply-adds per sample of the two ways to get K = J^(W) J^(W)ᵀ [k, k] of one layer.

    With z_t = W u_t at T positions (W [p, d]) and δ_{c,t} = ∂f_c/∂z_t ∈ R^p,
    ∂f_c/∂W = Σ_t δ_{c,t} u_tᵀ and K_{cc'} = Σ_{t,s} (δ_{c,t}·δ_{c',s}) (u_t·u_s):

    - ghost norms (Goodfellow; Li et al.; Bu et al.): A = U Uᵀ [T, T], then K from A and δ:
      T²·d + k·T²·p + k²·T·p — grows as T²;
    - instantiation: G_c = Σ_t δ_{c,t} u_tᵀ [p, d] for every c, then K = ⟨G_c, G_c'⟩:
      k·T·p·d + k²·p·d — grows as p·d.

    The mixed rule (Bu et al. 2022) takes the cheaper, per layer (for k = 1 it is ghost iff
    T²(d + p) < T·p·d, essentially their 2T² < p·d). Returns (ghost, instantiate).
    """
    return T * T * d + k * T * T * p + k * k * T * p, k * T * p * d + k * k * p * d


def _ghost_gram(D: Tensor, A: Tensor) -> Tensor:
    """K_b = Σ_{t,s} A_{b,t,s} (δ_{c,b,t}·δ_{e,b,s}), [b, k, k]; D [k, b, T, p], A [b, T, T]."""
    # Σ_s A_{b,t,s} δ_{e,b,s}: one bmm per output e (no [k, b, T, T] copy of A, no permuted
    # copy of D as einsum makes)
    AD = torch.stack([A @ D[e] for e in range(D.shape[0])])
    return torch.einsum("cbq,ebq->bce", D.flatten(2), AD.flatten(2))


def _outer_gram(D: Tensor, U: Tensor) -> Tensor:
    """Gram [b, k, k] of the per-sample gradients Σ_t δ_{c,b,t} u_{b,t}ᵀ (D [k, b, T, p],
    U [b, T, d]): the cheaper of ghost norms and instantiation (:func:`gram_costs`), in
    sub-batches of samples so that no intermediate exceeds ``GRAM_BLOCK_ENTRIES`` entries."""
    k, b, T, p = D.shape
    d = U.shape[2]
    if T == 1:
        return (torch.einsum("cbm,ebm->bce", D[:, :, 0], D[:, :, 0])
                * U[:, 0].pow(2).sum(1)[:, None, None])
    ghost, inst = gram_costs(T, d, p, k)
    per = max(T * T + k * T * p, 1) if ghost < inst else max(k * p * d, 1)
    sb = max(1, min(b, GRAM_BLOCK_ENTRIES // per))
    out = []
    for s in range(0, b, sb):
        Dc, Uc = D[:, s : s + sb], U[s : s + sb]
        if ghost < inst:
            out.append(_ghost_gram(Dc, Uc @ Uc.transpose(1, 2)))
        else:
            # per-sample gradients [k, b, p, d]: one bmm per output c (BLAS reads the transposed
            # D in place; einsum copies D into a [b, k·p, T] layout, a broadcast matmul copies U
            # k times)
            G = torch.stack([Dc[c].transpose(1, 2) @ Uc for c in range(k)]).flatten(2)
            out.append(torch.einsum("cbq,ebq->bce", G, G))
    return torch.cat(out)


@dataclass(frozen=True)
class Factor:
    """A per-sample gradient ∂f_c(x_b)/∂θ in factored form, one of three kinds:

    - ``"outer"``: Σ_t D[c, b, t] ⊗ U[b, t] (D [k, b, T, p], U [b, T, d]; θ [p, d]);
    - ``"dense"``: D[c, b] itself (D [k, b, P], instantiated; U unused);
    - ``"index"``: Σ_t e_{U[b, t]} ⊗ D[c, b, t] (D [k, b, T, p], U [b, T] integer rows of
      θ [V, p]; rows equal to ``pad`` get no gradient).
    """

    kind: str
    D: Tensor
    U: Tensor | None = None
    rows: int = 0
    pad: int | None = None

    def gram(self) -> Tensor:
        """K [b, k, k] with K_{b,c,e} = ⟨∂f_c(x_b)/∂θ, ∂f_e(x_b)/∂θ⟩."""
        if self.kind == "dense":
            return torch.einsum("cbp,ebp->bce", self.D, self.D)
        if self.kind == "outer":
            assert self.U is not None
            return _outer_gram(self.D, self.U)
        idx = self._index()
        A = (idx[:, :, None] == idx[:, None, :]).to(self.D.dtype)
        if self.pad is not None:
            keep = (idx != self.pad).to(self.D.dtype)
            A = A * keep[:, :, None] * keep[:, None, :]
        return _ghost_gram(self.D, A)

    def contract(self, r: Tensor) -> Tensor:
        """Σ_{b,c} r[b, c] ∂f_c(x_b)/∂θ, flattened [P] (the gradient of Σ_b r_bᵀ f(x_b))."""
        if self.kind == "dense":
            return torch.einsum("bc,cbp->p", r, self.D)
        if self.kind == "outer":
            assert self.U is not None
            Dr = torch.einsum("bc,cbtm->btm", r, self.D)
            return (Dr.reshape(-1, Dr.shape[-1]).T @ self.U.reshape(-1, self.U.shape[-1])
                    ).reshape(-1)
        idx = self._index()
        rows = torch.einsum("bc,cbtm->btm", r, self.D).reshape(-1, self.D.shape[-1])
        out = self.D.new_zeros(self.rows, self.D.shape[-1]).index_add_(0, idx.reshape(-1), rows)
        if self.pad is not None:
            out[self.pad] = 0
        return out.reshape(-1)

    def _index(self) -> Tensor:
        assert self.U is not None
        return self.U

    @staticmethod
    def merge(parts: list[Factor]) -> Factor:
        """One factor for a module called several times in one forward (shared parameter):
        positions are concatenated (``outer``/``index``), instantiated gradients summed."""
        first = parts[0]
        if len(parts) == 1:
            return first
        if first.kind == "dense":
            return Factor("dense", sum((f.D for f in parts[1:]), first.D))
        D = torch.cat([f.D for f in parts], dim=2)
        U = torch.cat([f.U for f in parts if f.U is not None], dim=1)
        return Factor(first.kind, D, U, first.rows, first.pad)


#: signature of a rule: (module, input h, output z, δ [k, *z.shape]) → {parameter name: Factor}
Rule = Callable[[nn.Module, Tensor, Tensor, Tensor], "dict[str, Factor] | None"]
#: the registry, module type → rule (looked up along the type's MRO by :func:`rule_for`)
RULES: dict[type, Rule] = {}


def rule(*types: type) -> Callable[[Rule], Rule]:
    """Register the decorated function as the per-sample-gradient rule of ``types``.

    The function gets (module, input h, output z, δ = ∂f/∂z as [k, *z.shape]) and returns
    ``{name: Factor}`` for the module's own parameters (``module.weight`` → ``"weight"``), or
    ``None`` when it cannot handle this module's configuration."""
    def register(fn: Rule) -> Rule:
        for t in types:
            RULES[t] = fn
        return fn
    return register


def rule_for(module: nn.Module) -> Rule | None:
    """The registered rule of ``type(module)`` or of its nearest registered base class."""
    for t in type(module).__mro__:
        if t in RULES:
            return RULES[t]
    return None


def _with_bias(m: nn.Module, out: dict[str, Factor], D: Tensor) -> dict[str, Factor]:
    """Add the bias factor Σ_t δ_t (D [k, b, T, p]) when ``m`` has a bias."""
    if getattr(m, "bias", None) is not None:
        out["bias"] = Factor("dense", D.sum(2))
    return out


@rule(nn.Linear)
def _linear(m: nn.Module, h: Tensor, z: Tensor, d: Tensor) -> dict[str, Factor]:
    """z_t = W h_t + b at every leading position t: U = h [b, T, d], D = δ [k, b, T, p]."""
    b = z.shape[0]
    D = d.reshape(d.shape[0], b, -1, d.shape[-1])
    return _with_bias(m, {"weight": Factor("outer", D, h.reshape(b, -1, h.shape[-1]))}, D)


def _conv_padding(m: nn.Module) -> tuple[int, ...] | None:
    """Symmetric zero padding per spatial axis (``"same"`` only when it is symmetric)."""
    if not isinstance(m.padding, str):
        return tuple(m.padding)
    if m.padding == "valid":
        return (0,) * len(m.kernel_size)
    tot = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size, strict=True)]
    return None if any(t % 2 for t in tot) else tuple(t // 2 for t in tot)


def _patches(m: nn.Module, h: Tensor, b: int, pad: tuple[int, ...]) -> Tensor:
    """Receptive fields u_t of a conv as [b, T, d] (d = C_in·∏kernel, T = ∏ output size), in
    the order of ``W.reshape(C_out, -1)``: a strided view (no copy; ``unfold`` is ~6× slower
    on CPU), then one reshape."""
    nd = len(m.kernel_size)
    x = h.reshape(b, *h.shape[-(nd + 1):])
    if any(pad):
        x = nn.functional.pad(x, [q for pp in reversed(pad) for q in (pp, pp)])
    C, sp = x.shape[1], x.shape[2:]
    ks, st, dl = m.kernel_size, m.stride, m.dilation
    out = [(sp[i] - dl[i] * (ks[i] - 1) - 1) // st[i] + 1 for i in range(nd)]
    sb, sc, *ss = x.stride()
    view = x.as_strided((b, *out, C, *ks),
                        (sb, *(ss[i] * st[i] for i in range(nd)), sc,
                         *(ss[i] * dl[i] for i in range(nd))))
    return view.reshape(b, math.prod(out), C * math.prod(ks))


@rule(nn.Conv1d, nn.Conv2d)
def _conv(m: nn.Module, h: Tensor, z: Tensor, d: Tensor) -> dict[str, Factor] | None:
    """z_t = W u_t + b at output positions t (groups = 1, zero padding): U = patches."""
    pad = _conv_padding(m)
    if m.groups != 1 or m.padding_mode != "zeros" or pad is None:
        return None
    b, k = z.shape[0], d.shape[0]
    D = d.reshape(k, b, d.shape[2], -1).transpose(2, 3)  # [k, b, T, C_out]
    return _with_bias(m, {"weight": Factor("outer", D, _patches(m, h, b, pad))}, D)


def _affine(m: nn.Module, D: Tensor, xhat: Tensor) -> dict[str, Factor]:
    """γ, β of z = γ ⊙ x̂ + β with D [k, b, T, C] and x̂ [b, T, C]: Σ_t δ ⊙ x̂ and Σ_t δ."""
    out: dict[str, Factor] = {}
    if m.weight is not None:
        out["weight"] = Factor("dense", (D * xhat).sum(2))  # Σ_t δ ⊙ x̂ (einsum copies D first)
    return _with_bias(m, out, D)


@rule(nn.LayerNorm)
def _layer_norm(m: nn.Module, h: Tensor, z: Tensor, d: Tensor) -> dict[str, Factor] | None:
    """x̂ = (x − mean)/√(var + ε) over the normalised trailing axes (C = their product)."""
    if not m.elementwise_affine:
        return None
    b, C = z.shape[0], math.prod(m.normalized_shape)
    xhat = nn.functional.layer_norm(h, m.normalized_shape, None, None, m.eps)
    return _affine(m, d.reshape(d.shape[0], b, -1, C), xhat.reshape(b, -1, C))


@rule(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
def _batch_norm(m: nn.Module, h: Tensor, z: Tensor, d: Tensor) -> dict[str, Factor] | None:
    """x̂ = (x − running mean)/√(running var + ε) per channel (axis 1). Declines batch
    statistics (training mode or no running stats): then samples are mixed."""
    if not m.affine or m.training or m.running_mean is None:
        return None
    b, C = h.shape[0], h.shape[1]
    shape = (1, C) + (1,) * (h.ndim - 2)
    xhat = (h - m.running_mean.view(shape)) / torch.sqrt(m.running_var.view(shape) + m.eps)
    D = d.reshape(d.shape[0], b, C, -1).transpose(2, 3)  # [k, b, T, C]
    return _affine(m, D, xhat.reshape(b, C, -1).transpose(1, 2))


@rule(nn.Embedding)
def _embedding(m: nn.Module, h: Tensor, z: Tensor, d: Tensor) -> dict[str, Factor] | None:
    """z_t = E[idx_t]: ghost norms with A_{ts} = [idx_t = idx_s] (no one-hot, no [V, p] per
    sample). Declines ``max_norm`` (the forward rewrites E)."""
    if m.max_norm is not None:
        return None
    b = z.shape[0]
    D = d.reshape(d.shape[0], b, -1, d.shape[-1])
    return {"weight": Factor("index", D, h.reshape(b, -1), m.num_embeddings, m.padding_idx)}


@rule(models.PatchEmbed)
def _patch_embed(m: nn.Module, h: Tensor, z: Tensor, d: Tensor) -> dict[str, Factor]:
    """z = [cls; proj(x)] + pos: ∂f_c/∂pos = δ_c (all T positions), ∂f_c/∂cls = δ_{c,0}.
    (``proj`` has its own conv rule.)"""
    k, b = d.shape[0], z.shape[0]
    out = {"pos": Factor("dense", d.reshape(k, b, -1))}
    if m.cls is not None:
        out["cls"] = Factor("dense", d[:, :, 0].reshape(k, b, -1))
    return out


def _sites(model: nn.Module, by_id: Mapping[int, str]) -> list[nn.Module]:
    """Modules that have a rule and own at least one parameter of ``by_id``."""
    return [m for m in model.modules() if rule_for(m) is not None
            and any(id(p) in by_id for p in m.parameters(recurse=False))]


def _record(model: nn.Module, sites: list[nn.Module], X: Tensor
            ) -> tuple[Tensor, dict[nn.Module, list[tuple[Tensor, Tensor]]]]:
    """One forward pass with grad, keeping each call's (detached input, output) per site."""
    calls: dict[nn.Module, list[tuple[Tensor, Tensor]]] = {}

    def hook(mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        calls.setdefault(mod, []).append((inp[0].detach(), out))

    handles = [m.register_forward_hook(hook) for m in sites]
    try:
        with torch.enable_grad():
            F = model(X)
    finally:
        for h in handles:
            h.remove()
    return F, calls


def _factors(calls: Mapping[nn.Module, list[tuple[Tensor, Tensor]]], deltas: list[Tensor | None]
             ) -> dict[nn.Module, dict[str, Factor]]:
    """Apply each site's rule to each of its calls and merge the calls per parameter."""
    out: dict[nn.Module, dict[str, Factor]] = {}
    i = 0
    for m, cs in calls.items():
        parts: list[dict[str, Factor] | None] = []
        for h, z in cs:
            d = deltas[i]
            i += 1
            parts.append(None if d is None else rule_for(m)(m, h, z.detach(), d))  # type: ignore[misc]
        if any(p is None for p in parts):
            continue
        names = set.intersection(*(set(p) for p in parts))  # type: ignore[arg-type]
        out[m] = {nm: Factor.merge([p[nm] for p in parts]) for nm in names}  # type: ignore[index]
    return out


def rebuilt_matches(rebuilt: Tensor, true: Tensor) -> bool:
    """The one rebuilt-gradient check: a gradient rebuilt from hooked factors equals
    autograd's, ‖rebuilt − true‖₂ ≤ ``REBUILD_RTOL`` · ε · ‖rebuilt‖₂ (any shapes, flattened)."""
    rebuilt, true = rebuilt.reshape(-1), true.reshape(-1)
    tol = REBUILD_RTOL * torch.finfo(rebuilt.dtype).eps * max(float(rebuilt.norm()), 1e-300)
    return float((rebuilt - true).norm()) <= tol


_ATTENTION = (models.Attention, nn.MultiheadAttention)


def layer_grams(model: nn.Module, X: Tensor, params: Mapping[str, Tensor]
                ) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-sample Gram blocks K_b^(name) = J_b^(name) J_b^(name)ᵀ [b, k, k] of every parameter
    of ``params`` that a registered rule covers (see the module docstring), at the cost of one
    forward pass and k backward passes to the layer outputs.

    Every factor passes the rebuilt-gradient check first: its contraction with a fixed random
    r [b, k] must equal autograd's gradient of Σ_b r_bᵀ f(x_b) to ``REBUILD_RTOL``·ε
    (relative); a parameter that fails is left out (the caller computes it exactly).
    Returns (outputs F [b, k] detached, {name: K}).
    """
    by_id = {id(p): n for n, p in model.named_parameters() if n in params}
    F, calls = _record(model, _sites(model, by_id), X)
    if F.ndim != 2 or not calls:
        return F.detach(), {}
    b, k = F.shape
    zs = [z for cs in calls.values() for _, z in cs]
    eye = torch.eye(k, dtype=F.dtype, device=F.device).unsqueeze(1).expand(k, b, k)
    # one vmapped backward, except through attention: there the vmapped backward of the batched
    # products of two activations measured 1.3–5× slower on CPU than k plain passes (same
    # numbers), while conv nets are faster vmapped (bench/README.md)
    vectorize = not any(isinstance(m, _ATTENTION) for m in model.modules())
    factors = _factors(calls, batched_grad(F, zs, eye, vectorize=vectorize))
    owned = [(by_id[id(p)], p, fac) for m, fs in factors.items() for nm, fac in fs.items()
             if id(p := getattr(m, nm)) in by_id]
    r = torch.randn(b, k, generator=torch.Generator().manual_seed(0), dtype=F.dtype).to(F.device)
    true = grad_of_sum(F, r, [p for _, p, _ in owned])
    out: dict[str, Tensor] = {}
    for (name, _, fac), tg in zip(owned, true, strict=True):
        if tg is not None and rebuilt_matches(fac.contract(r), tg):
            out[name] = fac.gram().detach()
    return F.detach(), out
