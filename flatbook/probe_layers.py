"""Dense layers of any model, found and checked in one place (the half of
:class:`flatbook.probe.Probe` that discovers them).

One traced forward pass records every module call; an ``nn.Linear`` is a dense layer when it
is called once per forward on one vector per sample (:func:`_skip_reason` says why not
otherwise) and its weight reaches f only through that call (the rebuilt-gradient check,
:func:`flatbook.layer_rules.rebuilt_matches`). Layers are :class:`flatbook.layers.DenseLayer`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from flatbook import layer_rules
from flatbook._functional import grad_of_sum
from flatbook.layers import DenseLayer

ProbedLayer = DenseLayer


@dataclass
class _Trace:
    """What one hooked forward pass saw (:meth:`Probe._trace_forward`): module names and the
    modules owning each parameter (by id), each ``nn.Linear``'s (input, output) per call, the
    first module producing each tensor, call counts, the output F and the tensors kept alive
    (their ids key ``produced``)."""

    names: dict[int, str]
    owners: dict[int, set[int]]
    calls: dict[int, list[tuple[Tensor, Tensor]]]
    produced: dict[int, str]
    counts: dict[int, int]
    F: Tensor | None = None
    keep: list[Tensor] = field(default_factory=list)


def _skip_reason(m: nn.Linear, tr: _Trace) -> str | None:
    """Why the ``nn.Linear`` ``m`` is not a dense layer (frozen, tied, never called, called
    more than once, token-wise), or ``None`` if it is one so far."""
    c = tr.calls[id(m)]
    w = m.weight
    if not w.requires_grad:
        return "not measured: frozen weight"
    if len(tr.owners.get(id(w), ())) > 1:
        return "shared weights: W is tied to another module's parameter"
    if not c:
        return ("not measured: never called in forward (its weight is used functionally, e.g. "
                "MultiheadAttention.out_proj)" if tr.counts.get(id(m), 0) == 0
                else "not measured")
    if len(c) > 1:
        return f"shared weights: called {len(c)} times per forward"
    if c[0][0].ndim != 2:
        return (f"shared weights: token-wise (input {tuple(c[0][0].shape)}, one weight at "
                "every position)")
    return None


def _sequential_aliases(model: nn.Module, calls: Mapping[int, list[tuple[Tensor, Tensor]]]
                        ) -> dict[int, str]:
    """``{id(item): "l{j}"}`` for the top-level ``nn.Linear`` items of an ``nn.Sequential``
    applied to one vector per sample ([b, p] input), j counting them in item order — frozen,
    tied or unselected ones included, so that a key names the same item whatever is measured
    (the numbering of :func:`flatbook.layers.dense_layers`). ``calls``: id(module) → its
    hooked (input, output) pairs of one forward pass."""
    alias: dict[int, str] = {}
    for item in model:
        c = calls.get(id(item), [])
        if isinstance(item, nn.Linear) and id(item) not in alias and c and c[0][0].ndim == 2:
            alias[id(item)] = f"l{len(alias) + 1}"
    return alias


class LayerDiscovery:
    """Mixin of :class:`flatbook.probe.Probe`: finds, checks, filters and names dense layers
    (uses the probe's ``model``, ``fn``, ``X``, ``skipped``, ``notes``)."""

    def _trace_forward(self) -> _Trace:
        """One forward pass on two samples with a hook on every module: each ``nn.Linear``'s
        (input, output), the first module producing each tensor, and call counts."""
        model = self.model
        names = {id(m): (n or "model") for n, m in model.named_modules()}
        owners: dict[int, set[int]] = {}
        for mod in model.modules():
            for p in mod.parameters(recurse=False):
                owners.setdefault(id(p), set()).add(id(mod))
        calls: dict[int, list[tuple[Tensor, Tensor]]] = {
            id(m): [] for m in model.modules() if isinstance(m, nn.Linear)}
        tr = _Trace(names=names, owners=owners, calls=calls, produced={}, counts={})

        def any_hook(mod: nn.Module, inp: tuple[Any, ...], out: Any) -> None:
            tr.counts[id(mod)] = tr.counts.get(id(mod), 0) + 1
            if isinstance(out, Tensor):
                tr.keep.append(out)
                tr.produced.setdefault(id(out), names.get(id(mod), "?"))
            if id(mod) in calls and inp and isinstance(inp[0], Tensor):
                calls[id(mod)].append((inp[0], out))

        x = self.X[:2].clone()
        if self.float_input:
            x.requires_grad_(True)
        tr.produced[id(x)] = "input"
        tr.keep.append(x)
        handles = [m.register_forward_hook(any_hook) for m in model.modules()]
        try:
            with torch.enable_grad():
                tr.F = self.fn(x)
        finally:
            for h in handles:
                h.remove()
        return tr

    def _reach_only_through_call(self, order: list[nn.Linear], tr: _Trace) -> list[nn.Linear]:
        """The layers whose W reaches f only through the hooked call: the gradient of r·f
        (random r) rebuilt from that call, ∇_W = Σ_b g_bᵀ h_b, must equal autograd's."""
        F = tr.F
        if not order or F is None or not F.requires_grad:
            return order
        g = torch.Generator().manual_seed(0)
        r = torch.randn(F.shape, generator=g, dtype=F.dtype).to(F.device)
        zs = [tr.calls[id(m)][0][1] for m in order]
        grads = grad_of_sum(F, r, zs + [m.weight for m in order])
        ok = []
        for i, m in enumerate(order):
            gz, gw = grads[i], grads[len(order) + i]
            if gz is None or gw is None:
                self.skipped[tr.names[id(m)]] = "not measured: f does not depend on it"
                continue
            rebuilt = gz.T @ tr.calls[id(m)][0][0].detach()
            if layer_rules.rebuilt_matches(rebuilt, gw):
                ok.append(m)
            else:
                self.skipped[tr.names[id(m)]] = ("shared weights: W is also used outside the "
                                                 "module's forward call")
        return ok

    def _discover(self) -> None:
        """Find the dense layers (see the module docstring): every ``nn.Linear`` is classified
        by :func:`_skip_reason`, checked by :meth:`_reach_only_through_call`, and named by
        qualified module name or its ``nn.Sequential`` alias (:func:`_sequential_aliases`)."""
        model = self.model
        tr = self._trace_forward()
        order: list[nn.Linear] = []
        for m in model.modules():
            if isinstance(m, nn.Linear):
                why = _skip_reason(m, tr)
                if why is None:
                    order.append(m)
                else:
                    self.skipped[tr.names[id(m)]] = why
        order = self._reach_only_through_call(order, tr)
        top = {id(m): i for i, m in enumerate(model)} if self.is_sequential else {}
        alias = _sequential_aliases(model, tr.calls) if top else {}
        out: list[ProbedLayer] = []
        for l, m in enumerate(order, start=1):
            qn = tr.names[id(m)]
            wname = next(n for n, p in self.fn.named_parameters() if p is m.weight)
            prod = tr.produced.get(id(tr.calls[id(m)][0][0]))
            if prod not in (None, "input") and tr.counts.get(id(self._module(prod)), 0) != 1:
                prod = None  # a module called several times (a reused nn.ReLU): no single output
            i = top.get(id(m))
            out.append(DenseLayer(
                name=alias.get(id(m), qn), index=i, module=m, weight_name=wname,
                head=None if i is None else model[:i], tail=None if i is None else model[i:],
                input_name=prod, l=l, qualname=qn))
        self._layers = self._filter(out)
        for qn, why in self.skipped.items():
            self.notes.append(f"nn.Linear {qn!r}: {why}")

    def _filter(self, found: list[ProbedLayer]) -> list[ProbedLayer]:
        sel = self._select
        if sel is None:
            return found
        if isinstance(sel, type) and issubclass(sel, nn.Module):
            keep = [L for L in found if isinstance(L.module, sel)]
        elif callable(sel):
            keep = [L for L in found if sel(L.name, L.module)]
        elif isinstance(sel, str) or not isinstance(sel, Iterable):
            raise TypeError("layers must be None, a list of names, an nn.Module subclass or a "
                            f"predicate (name, module) -> bool; got {sel!r}")
        else:
            names = set(sel)
            known = {L.name for L in found} | {L.qualname for L in found}
            unknown = names - known
            if unknown:
                raise ValueError(f"layers: unknown dense layer(s) {sorted(unknown)}; dense layers "
                                 f"of this model: {[L.name for L in found]}")
            keep = [L for L in found if L.name in names or L.qualname in names]
        for L in found:
            if L not in keep:
                self.skipped[L.qualname] = "dense layer not selected (layers=)"
        return keep

    # -------------------------------------------------------------- layers & Jacobians

    def layers(self) -> list[ProbedLayer]:
        """The dense layers, in forward order (see the module docstring)."""
        if self._layers is None:
            raise RuntimeError("enter the probe first: `with Probe(model, X, Y) as p: …`")
        return list(self._layers)

    def _module(self, qualname: str) -> nn.Module:
        return self.model if qualname == "model" else self.model.get_submodule(qualname)
