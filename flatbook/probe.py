"""One probe per measurement: a model and a fixed data set, resolved once (issue 13).

:class:`Probe` takes **any** ``torch.nn.Module`` and the data as you hold it — tensors, a
``DataLoader`` or any iterable of ``(x, y)`` batches, or a ``Dataset`` — and resolves, once:

- **the data**: a fixed evaluation set X [n, …], Y [n, k] (or class indices [n]), held on the
  model's device and streamed through the model in chunks of ``chunk`` samples. A shuffling
  ``DataLoader`` is refused; any other iterable is read twice and refused if the two passes
  differ (random augmentation), as curvlinops does (``check_deterministic``).
- **the dtype/device policy**: floating inputs and targets are cast to the dtype of the model's
  parameters (float32 or float64; half precision is refused) and moved to its device; integer
  inputs (token ids) are kept (then no input Jacobian: output-level measures are NaN).
- **the output**: ``output=`` selects a tensor from tuple/dict outputs (index, key or
  callable); a 1-D output [n] (regression) is read as [n, 1], an output [n, …] is flattened.
- **eval mode and determinism**: the model is measured in eval mode, with the math kernel of
  scaled-dot-product attention and without the fused ``nn.MultiheadAttention`` /
  ``nn.TransformerEncoderLayer`` fast path (fused CPU attention has no double backward); two
  forward passes must agree (else :class:`flatbook.curvature.NondeterminismError`). All of it
  is restored on exit (use the probe as a context manager).
- **the dense layers**: found from one forward pass with hooks on every ``nn.Linear``
  (:meth:`Probe.layers`). A *dense layer* is an ``nn.Linear`` called exactly once per forward,
  on one vector per sample ([b, p]), whose weight W_l is trainable, belongs to no other module
  (parameter identity: no tied weights) and reaches f only through that call (the gradient
  rebuilt from the hooked input and output gradient must equal autograd's). Token-wise
  (input [b, T, p]) or repeated calls and tied weights are listed as *shared weights*;
  ``nn.Linear`` modules never called although their weight is used (``MultiheadAttention``'s
  ``out_proj``) or frozen as *not measured* — none is skipped silently
  (``Probe.skipped``).

Names: layers are named by qualified module name (``model.named_modules()``, e.g.
``"block.fc"``); in an ``nn.Sequential`` a top-level ``nn.Linear`` item keeps the alias
``"l{l}"`` (l = 1, 2, … counting the top-level dense items), so every flatbook model keeps its
keys ``l1``, ``l2``, ….

Per-layer path sensitivity
--------------------------
A forward-pre-hook adds δ to the input of dense layer l: z = W_l (h_{l−1} + δ) + b_l. Then

    J_l(x) = ∂f/∂δ at δ = 0 = G_l W_l ∈ R^{k×p},   G_l = ∂f/∂z_l,

exactly, for any architecture, so L2 (‖h‖ ‖J_l‖_F ≤ ‖W_l‖₂ ‖∇_{W_l} f‖_F), L3, T4 and T5 hold
with it. MLS_l, LVR_l, LD_l are computed from J_l. J_l equals the paper's ∂f/∂h_{l−1} when
h_{l−1} reaches f only through layer l (every ``nn.Sequential`` model). Where h_{l−1} is the
output of a module (or the input x), the *total* sensitivity ∂f/∂h_{l−1} is measured too, by a
forward hook adding ε to that module's output; where the two differ, a skip connection carries
h_{l−1} around the layer (``LayerResult.skip``). All Jacobians of a chunk — J_x, every J_l
and every total — come from **one** ``vmap(jacrev)`` call, i.e. k reverse passes per chunk
(the shape issue 14 builds on to share them with the parameter-Jacobian norms).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import jacrev, vmap

from flatbook import checks, curvature, losses
from flatbook._functional import batched_grad, grad_of_sum
from flatbook.probe_data import DataSet, Fields, resolve_data, unpack

__all__ = ["DataSet", "LayerResult", "Probe", "ProbedLayer", "resolve_data", "select_output"]

OutputSelector = int | str | Callable[[Any], Tensor] | None


# ----------------------------------------------------------------------------- output


def select_output(out: Any, output: OutputSelector) -> Tensor:
    """Pick the tensor f from a model output: ``output`` = ``None`` (the output is a tensor),
    an index (tuple/list outputs), a key (dict outputs) or a callable ``out ↦ tensor``."""
    if output is None:
        sel = out
    elif callable(output):
        sel = output(out)
    elif isinstance(output, int) and not isinstance(output, bool):
        if not isinstance(out, tuple | list):
            raise TypeError(f"output={output!r} indexes a tuple/list output; the model returned "
                            f"{type(out).__name__}")
        sel = out[output]
    elif isinstance(output, str):
        if not isinstance(out, Mapping):
            raise TypeError(f"output={output!r} is a key of a dict output; the model returned "
                            f"{type(out).__name__}")
        sel = out[output]
    else:
        raise TypeError(f"output must be None, an int index, a str key or a callable; got "
                        f"{type(output).__name__}")
    if not isinstance(sel, Tensor):
        raise TypeError(
            f"the model output is a {type(sel).__name__}, not a tensor: pass output=0 (a "
            "tuple's first item), output='logits' (a dict key) or a callable output=lambda out: …"
        )
    return sel


class _Call(nn.Module):
    """x ↦ ``forward(model, x)``, x unpacked from the packed dict tensor when ``fields``."""

    def __init__(self, model: nn.Module, forward: Callable[[nn.Module, Any], Any] | None,
                 fields: Fields | None, float_dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self._forward = forward
        self._fields = fields
        self._float = float_dtype

    def forward(self, x: Tensor) -> Any:
        inp: Any = x if self._fields is None else unpack(x, self._fields, self._float)
        if self._forward is None:
            return self.model(inp)
        return self._forward(self.model, inp)


class _Output(nn.Module):
    """f(x) = select(model(x)) reshaped to [b, k] (the module every estimator differentiates)."""

    def __init__(self, model: nn.Module, output: OutputSelector) -> None:
        super().__init__()
        self.model = model
        self._select = output

    def forward(self, x: Tensor) -> Tensor:
        f = select_output(self.model(x), self._select)
        b = x.shape[0]
        return f.reshape(b, -1)


# ----------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class ProbedLayer:
    """A dense layer z = W_l h_{l−1} + b_l found by :class:`Probe` (applied once per sample).

    Attributes:
        name: key in ``Report.layers`` (``"l{l}"`` for a top-level item of an
            ``nn.Sequential``, else the qualified module name).
        qualname: qualified module name in ``model.named_modules()``.
        module: the ``nn.Linear`` (W_l ∈ R^{m×p}).
        weight_name: name of W_l in ``model.named_parameters()``.
        l: 1-based position among the dense layers, in forward order.
        index: item index for a top-level item of an ``nn.Sequential``, else ``None``.
        producer: qualified name of the module whose output is h_{l−1}, ``"input"`` if
            h_{l−1} is the model input x itself, ``None`` if h_{l−1} comes from a functional op
            or from a module called more than once per forward (e.g. a reused ``nn.ReLU``).
    """

    name: str
    qualname: str
    module: nn.Linear
    weight_name: str
    l: int
    index: int | None
    producer: str | None

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
        """m = dim z_l."""
        return self.module.out_features

    @property
    def input_name(self) -> str | None:
        """Alias of ``producer`` (the name of h_{l−1})."""
        return self.producer


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


measurement_context = curvature.eval_mode
"""Eval mode, math SDPA kernel and no fused MHA fast path (:func:`flatbook.curvature.eval_mode`)."""


def _param_dtype(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    ps = [p for p in model.parameters() if p.is_floating_point()]
    if not ps:
        raise ValueError("model has no floating-point parameters: nothing to measure")
    dts = {p.dtype for p in ps}
    if len(dts) > 1:
        raise TypeError(f"model mixes parameter dtypes {sorted(map(str, dts))}: cast it with "
                        "model.double() (or model.float()) before measuring")
    dt = ps[0].dtype
    if dt not in (torch.float32, torch.float64):
        raise TypeError(
            f"model parameters are {dt}: curvature and singular values need float32 or float64; "
            "measure a copy in float64 (copy.deepcopy(model).double())"
        )
    return dt, ps[0].device


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


class Probe:
    """A model and a fixed data set, resolved once (see the module docstring).

    Use as a context manager: ``with Probe(model, X, Y) as p: …`` (eval mode, attention
    kernel and hooks are set on entry and restored on exit); every method needs it entered.

    Args:
        model: any ``nn.Module`` (its output, after ``output``, must be [n, k], [n] or [n, …]).
        X: inputs: a tensor [n, …], a ``DataLoader`` / iterable of ``(x, y)`` batches or a
            ``Dataset`` (see :func:`resolve_data`).
        Y: targets [n, k] (one-hot / real), [n] (class indices, or 1-D regression targets,
            read as [n, 1]), or ``None``: Y = f(X) (an exact interpolating minimum).
        loss: ``"squared"``, ``"cross_entropy"``, an ``nn.MSELoss`` / ``nn.CrossEntropyLoss``
            instance (recognised with its normalisation, :func:`flatbook.losses.resolve`) or a
            callable ``loss(f, y)`` averaging over samples.
        output: selector of f for tuple/dict outputs (index, key or callable).
        forward: how to call the model, ``forward(model, x) -> output`` (default
            ``model(x)``); needed for dict inputs, e.g. ``lambda model, x: model(**x)``: x is then
            the dict of the batch's fields (packed into one tensor for chunking and unpacked,
            dtypes restored, before the call).
        layers: which dense layers to measure: ``None`` (all), names (qualified module names or
            the ``"l{l}"`` aliases), an ``nn.Module`` subclass, or a predicate
            ``(name, module) -> bool``. Unselected dense layers are listed in ``skipped``.
        chunk: samples per vectorised Jacobian call (``None``: automatic, ≲ 2^24 entries).
        check: run the forward determinism probe.

    Attributes:
        fn: (after entering) the module every estimator differentiates, x ↦ f of shape
            [b, k] (``model`` itself when its output is already a [b, k] tensor).
        X: the resolved inputs [n, …]; ``Y``: the targets (f(X) when not given).
        F: (after entering) f(X), [n, k]; ``n``, ``k``, ``d``: samples, outputs, input entries.
        loss: the resolved loss (name or callable); ``loss_notes``: notes on its normalisation.
        fields: for dict inputs, the packed fields ``((name, shape, dtype), …)``, else ``None``.
        notes: the caveats found (dtype casts, shared weights, not-measured layers, …).
    """

    def __init__(
        self,
        model: nn.Module,
        X: object,
        Y: object = None,
        loss: object = "squared",
        *,
        output: OutputSelector = None,
        layers: object = None,
        forward: Callable[[nn.Module, Any], Any] | None = None,
        chunk: int | None = None,
        check: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int)
                                  or chunk < 1):
            raise ValueError(f"chunk must be a positive integer or None; got {chunk!r}")
        self.model = model
        self._output = output
        self._select = layers
        self._chunk = chunk
        self._check = check
        self.notes: list[str] = checks.mode_notes(model)
        self.dtype, self.device = _param_dtype(model)
        checks.check_finite_weights(model)
        data = resolve_data(X, Y)
        self.source = data.source
        self.fields = data.fields
        if forward is not None and not callable(forward):
            raise TypeError(f"forward must be a callable forward(model, x) -> output; got "
                            f"{type(forward).__name__}")
        if self.fields is not None and forward is None:
            raise TypeError(
                f"X holds dict inputs (fields {[f[0] for f in self.fields]}): pass "
                "forward=lambda model, x: model(**x) (or any callable (model, x) -> output)"
            )
        checks.check_finite(data.X, "X")  # before the cast: a cast may overflow to inf
        if data.Y is not None:
            checks.check_finite(data.Y, "Y")
        if self.fields is None:
            checks.check_input_scale(data.X, self.dtype)
        self.X = self._cast_x(data.X)
        self._Y_given = data.Y
        self.loss, self.loss_notes = losses.resolve(loss)
        self._ctx: contextlib.ExitStack | None = None
        self._layers: list[ProbedLayer] | None = None
        self.measured: Measured | None = None  # the last sweep of :meth:`measure`
        self.skipped: dict[str, str] = {}
        self._base: nn.Module = (
            model if forward is None and self.fields is None
            else _Call(model, forward, self.fields, self.dtype))
        self.fn: nn.Module = self._base

    # -------------------------------------------------------------- resolution

    def _cast_x(self, X: Tensor) -> Tensor:
        if X.ndim < 1 or X.shape[0] == 0:
            raise ValueError(f"X must have shape [n, …] with n ≥ 1; got {tuple(X.shape)}")
        if self.fields is not None:  # packed dict inputs: float64, unpacked by the model call
            return X.to(self.device)
        if X.is_floating_point():
            if X.dtype != self.dtype:
                self.notes.append(f"inputs cast from {X.dtype} to the model's {self.dtype}")
            X = X.to(self.dtype)
        elif X.is_complex():
            raise TypeError("X is complex: flatbook measures real-valued inputs")
        return X.to(self.device)

    def _cast_y(self, Y: Tensor | None, F: Tensor) -> Tensor:
        n, k = F.shape
        if Y is None:
            return F.detach().clone()
        if Y.shape[0] != n:
            raise ValueError(f"Y must have n = {n} rows like X; got shape {tuple(Y.shape)}")
        Y = Y.to(self.device)
        if self.loss == "cross_entropy":
            if Y.ndim == 1 or (Y.ndim == 2 and Y.shape[1] == 1 and k > 1
                               and not Y.is_floating_point()):
                return Y.reshape(n).long()
            return Y.reshape(n, -1).to(self.dtype)
        if not isinstance(self.loss, str):  # a callable loss gets Y as given (dtype policy only)
            return Y.to(self.dtype) if Y.is_floating_point() else Y
        if not Y.is_floating_point():
            if Y.ndim == 1 and k > 1:
                raise ValueError(
                    "Y holds integer class labels [n] but loss='squared' needs targets [n, k]: "
                    "pass one-hot targets (torch.nn.functional.one_hot(Y, k).double()) or "
                    "loss='cross_entropy'"
                )
        Y = Y.to(self.dtype).reshape(n, -1)
        if Y.shape[1] != k:
            raise ValueError(f"Y must have k = {k} entries per sample like the output f; got "
                             f"shape {tuple(Y.shape)}")
        return Y

    def __enter__(self) -> Probe:
        stack = contextlib.ExitStack()
        stack.enter_context(measurement_context(self.model))
        self._ctx = stack
        try:
            self._resolve()
        except BaseException:
            stack.close()
            self._ctx = None
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None

    def _resolve(self) -> None:
        x1 = self.X[:2]  # two samples: a model with batch statistics fails on one
        try:
            with torch.no_grad():
                out = self._base(x1)
        except (RuntimeError, TypeError) as e:
            if self.X.is_floating_point():
                raise
            raise TypeError(
                f"X holds integers ({self.X.dtype}) and the model fails on them ({e}). Integer "
                "inputs are kept as they are (token ids for an embedding); for pixel or feature "
                f"values pass floating inputs, e.g. X.to({self.dtype})"
            ) from e
        if isinstance(out, Tensor) and self._output is None and out.ndim == 2:
            self.fn = self._base
        else:
            select_output(out, self._output)  # raises a clear error for tuple/dict outputs
            self.fn = _Output(self._base, self._output)
        self.F = self.forward(self.X)
        checks.check_finite(self.F, "the model output f(X)", hint=(
            "inputs and weights are finite, so the forward pass overflows or divides by zero; "
            "rescale the inputs or measure a float64 copy"))
        checks.check_samples_independent(self.fn, self.X, self.F)
        if self._check:
            F2 = self.forward(self.X)
            eps = torch.finfo(self.dtype).eps
            if not torch.allclose(self.F, F2, rtol=64 * eps, atol=64 * eps * float(
                    self.F.abs().max().clamp_min(1e-30))):
                raise curvature.NondeterminismError(
                    "the model output differs between two identical passes in eval mode "
                    f"(max |Δf| = {float((self.F - F2).abs().max()):.3g}): dropout called with "
                    "training=True, noise injection or batch statistics inside forward. "
                    "Curvature and the bounds need a deterministic x ↦ f"
                )
        self.n, self.k = self.F.shape
        self.d = int(math.prod(self.X.shape[1:]))
        self.Y = self._cast_y(self._Y_given, self.F)
        if self.F.shape[0] != self.X.shape[0]:
            raise ValueError(f"the output has {self.F.shape[0]} rows for {self.X.shape[0]} "
                             "inputs: f must map [n, …] to [n, k]")
        self._discover()

    def forward(self, X: Tensor) -> Tensor:
        """f(X) in chunks, [n, k], no gradient."""
        c = self.chunk_size()
        with torch.no_grad():
            return torch.cat([self.fn(X[s : s + c]) for s in range(0, X.shape[0], c)])

    def chunk_size(self, width: int | None = None) -> int:
        """Samples per vectorised call: ``chunk`` if given, else ≲ 2^24 / (k · width) (≤ 256)."""
        if self._chunk is not None:
            return self._chunk
        if width is None:
            return 1024
        k = getattr(self, "k", 1)
        return max(1, min(256, (1 << 24) // max(1, k * width)))

    @property
    def is_sequential(self) -> bool:
        """Whether the model is a plain ``nn.Sequential`` (the ``l{l}`` naming applies)."""
        m = self.model
        return (self._base is m and isinstance(m, nn.Sequential)
                and type(m).forward is nn.Sequential.forward)

    @property
    def float_input(self) -> bool:
        """Whether X is floating point (else there is no input Jacobian); for dict inputs,
        whether every field is."""
        if self.fields is not None:
            return all(dt.is_floating_point for _, _, dt in self.fields)
        return self.X.is_floating_point()

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
            tol = 1e3 * torch.finfo(F.dtype).eps * max(float(gw.norm()), 1e-300)
            if float((rebuilt - gw).norm()) <= tol:
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
            out.append(ProbedLayer(name=alias.get(id(m), qn), qualname=qn, module=m,
                                   weight_name=wname, l=l, index=top.get(id(m)), producer=prod))
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
