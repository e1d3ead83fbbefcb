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
    """Per-sample quantities of one dense layer over the evaluation set (:meth:`Probe.measure`).

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
    """Everything :meth:`Probe.measure` computes in its one Jacobian sweep.

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

    def _batched_sweep(self, state: _HookState, layers: list[ProbedLayer],
                       producers: dict[str, str], pnames: list[str],
                       prod_shape: dict[str, tuple[int, ...]], c: int, Jx: list[Tensor],
                       Jl: dict[str, list[Tensor]], Jt: dict[str, list[Tensor]],
                       Gl: dict[str, list[Tensor]]) -> bool:
        """The k reverse passes of :meth:`measure` as batched autograd over whole chunks.

        ε_l [b, m] is added to every dense layer's output z_l and δ_l [b, p] to its input:
        G_l = ∂f/∂ε_l and J_l = ∂f/∂δ_l = G_l W_l come out of the same backward pass (autograd
        forms G_l W_l on its way to h_{l−1} anyway). Fills the lists and returns True; returns
        False (lists untouched) if autograd cannot batch the cotangents; raises
        :class:`flatbook.checks.SampleMixingError` if the samples of a chunk interact
        (∂f(x_0)/∂(x_j, ε_j) ≠ 0 for j ≠ 0: per-sample Jacobians are undefined).
        """
        fn, shape, with_x = self.fn, self.X.shape[1:], self.float_input
        if not (with_x or layers or pnames):  # token ids and no dense layer: no Jacobian to take
            return True
        zeta: dict[str, Tensor] = {}

        def post(name: str) -> Callable[..., Any]:
            def hook(mod: nn.Module, inp: Any, out: Tensor) -> Tensor | None:
                e = zeta.get(name)
                return None if e is None else out + e.reshape(out.shape)
            return hook

        res: tuple[list[Tensor], dict[str, list[Tensor]], dict[str, list[Tensor]],
                   dict[str, list[Tensor]]] = ([], {n: [] for n in Gl}, {p: [] for p in pnames},
                                               {n: [] for n in Gl})
        hs = [L.module.register_forward_hook(post(L.name)) for L in layers]
        try:
            with self._hooks(state, layers, producers), torch.enable_grad():
                for s in range(0, self.n, c):
                    xc = self.X[s : s + c]
                    b = xc.shape[0]
                    xf = xc.reshape(b, -1).detach().clone().requires_grad_(with_x)
                    for L in layers:
                        zeta[L.name] = torch.zeros(b, L.out_features, dtype=self.dtype,
                                                   device=self.device, requires_grad=True)
                    eps = {p: torch.zeros(b, math.prod(prod_shape[p]), dtype=self.dtype,
                                          device=self.device, requires_grad=True)
                           for p in pnames}
                    delta = {L.name: torch.zeros(b, L.in_features, dtype=self.dtype,
                                                 device=self.device, requires_grad=True)
                             for L in layers}
                    state.delta, state.eps = delta, eps
                    try:
                        F = fn(xf.reshape(b, *shape) if with_x else xc).reshape(b, -1)
                    finally:
                        state.delta, state.eps = None, None
                    ins = ([xf] if with_x else []) + [zeta[L.name] for L in layers] + [
                        eps[p] for p in pnames] + [delta[L.name] for L in layers]
                    if s == 0 and b > 1:  # samples must not interact (as vmap assumes)
                        g0 = torch.autograd.grad(F[0].sum(), ins, retain_graph=True,
                                                 allow_unused=True)
                        if any(g is not None and bool(g[1:].abs().max() > 0) for g in g0):
                            raise checks.SampleMixingError(
                                "the model's output for sample 0 depends on the inputs or "
                                "activations of other samples in its batch (∂f(x_0)/∂x_j ≠ 0 "
                                f"for j ≠ 0); {checks.MIXING_CAUSES}")
                    k = F.shape[1]
                    eye = torch.eye(k, dtype=F.dtype, device=F.device).unsqueeze(1).expand(
                        k, b, k)
                    try:
                        gs = batched_grad(F, ins, eye, materialize=True)
                    except RuntimeError:
                        return False
                    it = iter(g.detach().transpose(0, 1) for g in gs)  # [b, k, ·]
                    if with_x:
                        res[0].append(next(it))
                    for L in layers:
                        res[1][L.name].append(next(it))
                    for p in pnames:
                        res[2][p].append(next(it))
                    for L in layers:
                        res[3][L.name].append(next(it))
        finally:
            for h in hs:
                h.remove()
            zeta.clear()
        Jx.extend(res[0])
        for L in layers:
            Gl[L.name].extend(res[1][L.name])
            Jl[L.name].extend(res[3][L.name])
        for p in pnames:
            Jt[p].extend(res[2][p])
        return True

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
        layers = self.layers()
        H = self.inputs()
        producers: dict[str, str] = {}
        for L in layers:
            want = (L.index is None) if total is None else total
            if want and L.producer is not None and L.producer != "input":
                producers[L.name] = L.producer
        state = _HookState()
        fn = self.fn
        shape = self.X.shape[1:]
        with_x = self.float_input
        width = (self.d if with_x else 0) + sum(L.in_features for L in layers) + sum(
            H[n].shape[1] for n in producers)
        c = self.chunk_size(width)
        pnames = sorted(set(producers.values()))

        def f1(x: Tensor, delta: dict[str, Tensor], eps: dict[str, Tensor]) -> Tensor:
            state.delta, state.eps = delta, eps
            try:
                return fn(x.reshape(1, *shape)).reshape(-1)
            finally:
                state.delta, state.eps = None, None

        jac = vmap(jacrev(f1, argnums=(0, 1, 2) if with_x else (1, 2)), in_dims=(0, 0, 0))
        prod_shape: dict[str, tuple[int, ...]] = {}
        if pnames:  # the producers' output shapes (per sample)
            outs: dict[str, tuple[int, ...]] = {}

            def shape_hook(pn: str) -> Callable[..., None]:
                def hook(m: nn.Module, i: Any, o: Tensor) -> None:
                    outs.setdefault(pn, tuple(o.shape[1:]))
                return hook

            hs = [self._module(p).register_forward_hook(shape_hook(p)) for p in pnames]
            try:
                with torch.no_grad():
                    fn(self.X[:1])
            finally:
                for h_ in hs:
                    h_.remove()
            prod_shape = outs
        Jx: list[Tensor] = []
        Jl: dict[str, list[Tensor]] = {L.name: [] for L in layers}
        Jt: dict[str, list[Tensor]] = {p: [] for p in pnames}
        Gl: dict[str, list[Tensor]] = {L.name: [] for L in layers}
        batched = self._batched_sweep(state, layers, producers, pnames, prod_shape, c, Jx, Jl,
                                      Jt, Gl)
        with self._hooks(state, layers, producers), torch.no_grad():
            for s in ([] if batched else range(0, self.n, c)):
                xc = self.X[s : s + c]
                b = xc.shape[0]
                xf = xc.reshape(b, -1) if with_x else xc
                delta = {L.name: torch.zeros(b, L.in_features, dtype=self.dtype,
                                             device=self.device) for L in layers}
                eps = {p: torch.zeros(b, math.prod(prod_shape[p]), dtype=self.dtype,
                                      device=self.device) for p in pnames}
                res = jac(xf, delta, eps)
                if with_x:
                    jx, jd, je = res
                    Jx.append(jx.detach())
                else:
                    jd, je = res
                for name in Jl:
                    Jl[name].append(jd[name].detach())
                for p in pnames:
                    Jt[p].append(je[p].detach())
        out = Measured(F=self.F, J_x=torch.cat(Jx) if with_x else None)
        eps_ = torch.finfo(self.dtype).eps
        for L in layers:
            J = torch.cat(Jl[L.name])
            JT = None
            skip = None
            if L.name in producers:
                JT = torch.cat(Jt[producers[L.name]])
                if JT.shape != J.shape:  # the producer's output is not h_{l−1} itself
                    JT = None
                else:
                    scale = max(float(JT.norm()), 1e-300)
                    skip = float((JT - J).norm()) > math.sqrt(eps_) * scale
            elif L.producer == "input" and with_x and L.index is None:
                jx = out.J_x
                if jx is not None and jx.shape == J.shape:
                    JT = jx
                    skip = float((jx - J).norm()) > math.sqrt(eps_) * max(float(jx.norm()),
                                                                          1e-300)
            out.layers[L.name] = LayerResult(layer=L, H=H[L.name].reshape(self.n, -1), J=J,
                                             J_total=JT, skip=skip,
                                             G=torch.cat(Gl[L.name]) if batched else None)
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
