"""The probe's measurement sweep: layer inputs, path Jacobians J_l = G_l W_l, the output
Jacobian J_x and total sensitivities from one batched k-cotangent autograd sweep per chunk (the
half of :class:`flatbook.probe.Probe` that measures; results in :class:`Measured`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import jacrev, vmap

from flatbook import checks
from flatbook._functional import batched_grad
from flatbook.layers import DenseLayer

ProbedLayer = DenseLayer


@dataclass
class LayerResult:
    """Per-sample quantities of one dense layer over the evaluation set (``Probe.measure``).

    Attributes:
        layer: the :class:`ProbedLayer`.
        H: h_{l−1}(x_i), [n, p].
        J: path Jacobians J_l = ∂f/∂δ = G_l W_l, [n, k, p].
        J_total: total Jacobians ∂f/∂h_{l−1} (ε on the producer's output), [n, k, p], or
            ``None`` when not measured (no producer module, or an ``nn.Sequential`` item, where
            it equals J).
        skip: ``True`` if J_total ≠ J (a skip connection carries h_{l−1} around the layer),
            ``False`` if equal, ``None`` if not measured.
        G: output-side Jacobians G_l = ∂f/∂z_l (ε on the layer's output), [n, k, m], so that
            J = G W_l and ‖∇_{W_l} f_c‖_F = ‖G_{l,c}‖ ‖h_{l−1}‖ (paper.md L2); ``None`` when the
            sweep fell back to ``vmap(jacrev)``.
    """

    layer: ProbedLayer
    H: Tensor
    J: Tensor
    J_total: Tensor | None = None
    skip: bool | None = None
    G: Tensor | None = None


@dataclass
class Measured:
    """Everything ``Probe.measure`` computes in its one Jacobian sweep.

    Attributes:
        F: outputs f(x_i), [n, k].
        J_x: input Jacobians ∂f/∂x, [n, k, d] (``None`` for integer inputs).
        layers: ``{name: LayerResult}`` for every dense layer.
    """

    F: Tensor
    J_x: Tensor | None
    layers: dict[str, LayerResult] = field(default_factory=dict)


class _HookState:
    """Perturbations read by the hooks while a probed function runs (else hooks pass through)."""

    def __init__(self) -> None:
        self.delta: dict[str, Tensor] | None = None  # layer name → δ added to its input
        self.eps: dict[str, Tensor] | None = None  # producer name → ε added to its output
        self.capture: dict[str, Tensor] | None = None  # layer name → captured input


@dataclass
class _Plan:
    """What one sweep measures (:meth:`Sweep._plan`)."""

    layers: list[DenseLayer]
    producers: dict[str, str]  # layer name → module whose output is h_{l−1}
    pnames: list[str]  # the producers, sorted
    prod_shape: dict[str, tuple[int, ...]]  # producer → per-sample output shape
    chunk: int
    with_x: bool  # floating inputs: J_x is measured


@dataclass
class _Columns:
    """Jacobian blocks [b, k, ·] collected chunk by chunk."""

    Jx: list[Tensor]
    Jl: dict[str, list[Tensor]]
    Jt: dict[str, list[Tensor]]
    Gl: dict[str, list[Tensor]]


class Sweep:
    """Mixin of :class:`flatbook.probe.Probe`: the hooks, the batched sweep and
    :meth:`measure` (uses the probe's resolved ``fn``, ``X``, ``F``, ``layers()``)."""

    @contextlib.contextmanager
    def _hooks(self, state: _HookState, layers: list[ProbedLayer],
               producers: dict[str, str]) -> Iterator[None]:
        handles = []

        def pre(name: str) -> Callable[..., Any]:
            def hook(mod: nn.Module, inp: tuple[Any, ...]) -> Any:
                x = inp[0]
                if state.capture is not None:
                    state.capture[name] = x.detach()
                if state.delta is not None and name in state.delta:
                    return (x + state.delta[name].reshape(x.shape), *inp[1:])
                return None
            return hook

        def post(pname: str) -> Callable[..., Any]:
            def hook(mod: nn.Module, inp: tuple[Any, ...], out: Tensor) -> Any:
                if state.eps is not None and pname in state.eps:
                    return out + state.eps[pname].reshape(out.shape)
                return None
            return hook

        for L in layers:
            handles.append(L.module.register_forward_pre_hook(pre(L.name)))
        for pname in sorted(set(producers.values())):
            handles.append(self._module(pname).register_forward_hook(post(pname)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def inputs(self) -> dict[str, Tensor]:
        """h_{l−1}(x_i) of every dense layer, ``{name: [n, p]}`` (one hooked forward pass)."""
        layers = self.layers()
        state = _HookState()
        cap: dict[str, list[Tensor]] = {L.name: [] for L in layers}
        c = self.chunk_size()
        with self._hooks(state, layers, {}), torch.no_grad():
            for s in range(0, self.n, c):
                state.capture = {}
                self.fn(self.X[s : s + c])
                for name in cap:
                    cap[name].append(state.capture[name])
        state.capture = None
        return {name: torch.cat(v) for name, v in cap.items()}

    def _zeros(self, b: int, width: int, grad: bool) -> Tensor:
        """A [b, width] zero perturbation in the probe's dtype/device."""
        return torch.zeros(b, width, dtype=self.dtype, device=self.device, requires_grad=grad)

    def _perturbations(self, plan: _Plan, b: int, grad: bool
                       ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Zero δ_l [b, p] on every dense layer's input and ε [b, ·] on every producer's output."""
        delta = {L.name: self._zeros(b, L.in_features, grad) for L in plan.layers}
        eps = {q: self._zeros(b, math.prod(plan.prod_shape[q]), grad) for q in plan.pnames}
        return delta, eps

    def _chunk_sweep(self, state: _HookState, plan: _Plan, zeta: dict[str, Tensor], s: int
                     ) -> list[Tensor] | None:
        """The k reverse passes of chunk s as one batched backward: ∂f/∂(x, ε_z, ε_p, δ) per
        input, each [b, k, ·] (``None``: autograd cannot batch the cotangents). Raises
        :class:`flatbook.checks.SampleMixingError` when the first chunk's samples interact."""
        xc = self.X[s : s + plan.chunk]
        b = xc.shape[0]
        xf = xc.reshape(b, -1).detach().clone().requires_grad_(plan.with_x)
        for L in plan.layers:
            zeta[L.name] = self._zeros(b, L.out_features, True)
        delta, eps = self._perturbations(plan, b, True)
        state.delta, state.eps = delta, eps
        try:
            F = self.fn(xf.reshape(b, *self.X.shape[1:]) if plan.with_x else xc).reshape(b, -1)
        finally:
            state.delta, state.eps = None, None
        ins = ([xf] if plan.with_x else []) + [zeta[L.name] for L in plan.layers] + [
            eps[q] for q in plan.pnames] + [delta[L.name] for L in plan.layers]
        if s == 0 and b > 1:  # samples must not interact (as vmap assumes)
            g0 = torch.autograd.grad(F[0].sum(), ins, retain_graph=True, allow_unused=True)
            if any(g is not None and bool(g[1:].abs().max() > 0) for g in g0):
                raise checks.SampleMixingError(
                    "the model's output for sample 0 depends on the inputs or activations of "
                    "other samples in its batch (∂f(x_0)/∂x_j ≠ 0 for j ≠ 0); "
                    f"{checks.MIXING_CAUSES}")
        k = F.shape[1]
        eye = torch.eye(k, dtype=F.dtype, device=F.device).unsqueeze(1).expand(k, b, k)
        try:
            gs = batched_grad(F, ins, eye, materialize=True)
        except RuntimeError:
            return None
        return [g.detach().transpose(0, 1) for g in gs]  # [b, k, ·]

    def _batched_sweep(self, state: _HookState, plan: _Plan, cols: _Columns) -> bool:
        """The k reverse passes of :meth:`measure` as batched autograd over whole chunks.

        ε_l [b, m] is added to every dense layer's output z_l and δ_l [b, p] to its input:
        G_l = ∂f/∂ε_l and J_l = ∂f/∂δ_l = G_l W_l come out of the same backward pass (autograd
        forms G_l W_l on its way to h_{l−1} anyway). Fills ``cols`` and returns True; returns
        False (``cols`` untouched) if autograd cannot batch the cotangents.
        """
        if not (plan.with_x or plan.layers or plan.pnames):  # token ids, no dense layer
            return True
        zeta: dict[str, Tensor] = {}

        def post(name: str) -> Callable[..., Any]:
            def hook(mod: nn.Module, inp: Any, out: Tensor) -> Tensor | None:
                e = zeta.get(name)
                return None if e is None else out + e.reshape(out.shape)
            return hook

        chunks: list[list[Tensor]] = []
        hs = [L.module.register_forward_hook(post(L.name)) for L in plan.layers]
        try:
            with self._hooks(state, plan.layers, plan.producers), torch.enable_grad():
                for s in range(0, self.n, plan.chunk):
                    gs = self._chunk_sweep(state, plan, zeta, s)
                    if gs is None:
                        return False
                    chunks.append(gs)
        finally:
            for h in hs:
                h.remove()
            zeta.clear()
        for gs in chunks:
            it = iter(gs)
            if plan.with_x:
                cols.Jx.append(next(it))
            for L in plan.layers:
                cols.Gl[L.name].append(next(it))
            for q in plan.pnames:
                cols.Jt[q].append(next(it))
            for L in plan.layers:
                cols.Jl[L.name].append(next(it))
        return True

    def _vmap_sweep(self, state: _HookState, plan: _Plan, cols: _Columns) -> None:
        """The same Jacobians by one ``vmap(jacrev)`` per chunk (ops without a batching rule)."""
        fn, shape = self.fn, self.X.shape[1:]

        def f1(x: Tensor, delta: dict[str, Tensor], eps: dict[str, Tensor]) -> Tensor:
            state.delta, state.eps = delta, eps
            try:
                return fn(x.reshape(1, *shape)).reshape(-1)
            finally:
                state.delta, state.eps = None, None

        jac = vmap(jacrev(f1, argnums=(0, 1, 2) if plan.with_x else (1, 2)), in_dims=(0, 0, 0))
        with self._hooks(state, plan.layers, plan.producers), torch.no_grad():
            for s in range(0, self.n, plan.chunk):
                xc = self.X[s : s + plan.chunk]
                b = xc.shape[0]
                res = jac(xc.reshape(b, -1) if plan.with_x else xc,
                          *self._perturbations(plan, b, False))
                if plan.with_x:
                    cols.Jx.append(res[0].detach())
                jd, je = res[-2], res[-1]
                for name in cols.Jl:
                    cols.Jl[name].append(jd[name].detach())
                for q in plan.pnames:
                    cols.Jt[q].append(je[q].detach())

    def _producer_shapes(self, pnames: list[str]) -> dict[str, tuple[int, ...]]:
        """Per-sample output shape of each producer module (one forward of one sample)."""
        outs: dict[str, tuple[int, ...]] = {}

        def shape_hook(pn: str) -> Callable[..., None]:
            def hook(m: nn.Module, i: Any, o: Tensor) -> None:
                outs.setdefault(pn, tuple(o.shape[1:]))
            return hook

        hs = [self._module(q).register_forward_hook(shape_hook(q)) for q in pnames]
        try:
            with torch.no_grad():
                self.fn(self.X[:1])
        finally:
            for h_ in hs:
                h_.remove()
        return outs

    def _plan(self, total: bool | None, H: dict[str, Tensor]) -> _Plan:
        """What one sweep measures: the layers, the producers of their inputs whose total
        sensitivity is wanted, and the chunk size for the Jacobian width."""
        layers = self.layers()
        producers: dict[str, str] = {}
        for L in layers:
            want = (L.index is None) if total is None else total
            if want and L.producer is not None and L.producer != "input":
                producers[L.name] = L.producer
        with_x = self.float_input
        width = (self.d if with_x else 0) + sum(L.in_features for L in layers) + sum(
            H[n].shape[1] for n in producers)
        pnames = sorted(set(producers.values()))
        return _Plan(layers=layers, producers=producers, pnames=pnames,
                     prod_shape=self._producer_shapes(pnames) if pnames else {},
                     chunk=self.chunk_size(width), with_x=with_x)

    def _total(self, L: DenseLayer, plan: _Plan, cols: _Columns, J: Tensor, J_x: Tensor | None
               ) -> tuple[Tensor | None, bool | None]:
        """(J_total, skip) of layer L: the producer's total ∂f/∂h_{l−1} (or J_x when h_{l−1}
        is the input), and whether it differs from the path Jacobian J beyond √ε."""
        JT: Tensor | None = None
        if L.name in plan.producers:
            JT = torch.cat(cols.Jt[plan.producers[L.name]])
        elif L.producer == "input" and plan.with_x and L.index is None:
            JT = J_x
        if JT is None or JT.shape != J.shape:  # the producer's output is not h_{l−1} itself
            return None, None
        tol = math.sqrt(torch.finfo(self.dtype).eps) * max(float(JT.norm()), 1e-300)
        return JT, float((JT - J).norm()) > tol

    def measure(self, total: bool | None = None) -> Measured:
        """One Jacobian sweep over the data: J_x, every path Jacobian J_l = G_l W_l (with
        G_l = ∂f/∂z_l) and every total Jacobian ∂f/∂h_{l−1}, all from the same k reverse
        passes per chunk: one batched backward (``flatbook._functional.batched_grad``,
        identity cotangents) of the chunk's outputs, checked once for samples that do not
        interact (else, and for ops without a batching rule, one ``vmap(jacrev)`` per chunk).

        Args:
            total: measure the total sensitivity at the producer of h_{l−1}; default: for
                every layer that is not a top-level item of an ``nn.Sequential`` (where it is J_l
                by construction).
        """
        H = self.inputs()
        plan = self._plan(total, H)
        state = _HookState()
        cols = _Columns(Jx=[], Jl={L.name: [] for L in plan.layers},
                        Jt={q: [] for q in plan.pnames}, Gl={L.name: [] for L in plan.layers})
        batched = self._batched_sweep(state, plan, cols)
        if not batched:
            self._vmap_sweep(state, plan, cols)
        out = Measured(F=self.F, J_x=torch.cat(cols.Jx) if plan.with_x else None)
        for L in plan.layers:
            J = torch.cat(cols.Jl[L.name])
            JT, skip = self._total(L, plan, cols, J, out.J_x)
            out.layers[L.name] = LayerResult(layer=L, H=H[L.name].reshape(self.n, -1), J=J,
                                             J_total=JT, skip=skip,
                                             G=torch.cat(cols.Gl[L.name]) if batched else None)
        self.measured = out
        return out

    def representation_jacobian(self, qualname: str) -> tuple[Tensor, Tensor]:
        """(h(x_i) [n, N], ∂h/∂x [n, N, d]) for the output h of module ``qualname``."""
        if not self.float_input:
            raise ValueError("representations need floating inputs (an input Jacobian)")
        try:
            mod = self._module(qualname)
        except AttributeError:
            names = [n for n, _ in self.model.named_modules() if n][:12]
            raise ValueError(f"unknown representation {qualname!r}: give a qualified module "
                             f"name of model.named_modules(), e.g. {names}") from None
        box: dict[str, Tensor] = {}

        class _Stop(Exception):
            pass

        def hook(m: nn.Module, i: Any, o: Any) -> None:
            if not isinstance(o, Tensor):
                raise TypeError(f"module {qualname!r} returns {type(o).__name__}, not a tensor")
            box["h"] = o
            raise _Stop

        shape = self.X.shape[1:]
        model = self._base

        def h1(x: Tensor) -> Tensor:
            try:
                model(x.reshape(1, *shape))
            except _Stop:
                pass
            return box.pop("h").reshape(-1)

        handle = mod.register_forward_hook(hook)
        try:
            with torch.no_grad():
                Hs = torch.stack([h1(x) for x in self.X.reshape(self.n, -1)])
                c = self.chunk_size(self.d + Hs.shape[1])
                J = torch.cat([vmap(jacrev(h1))(self.X.reshape(self.n, -1)[s : s + c]).detach()
                               for s in range(0, self.n, c)])
        finally:
            handle.remove()
        return Hs, J
