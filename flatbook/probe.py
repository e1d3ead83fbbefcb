"""One probe per measurement: a model and a fixed data set, resolved once.

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
  (``Probe.layers``). A *dense layer* is an ``nn.Linear`` called exactly once per forward,
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
and every total — come from **one** batched backward of k cotangents per chunk
(``flatbook.probe_sweep``; ``vmap(jacrev)`` where autograd cannot batch), and the output-side
G_l = ∂f/∂z_l of the same pass give the dense layers' parameter-Jacobian norms
(``flatbook.gn.probe_grams``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from flatbook import checks, curvature, losses
from flatbook._validate import check_positive_int
from flatbook.keyword_form import resolve
from flatbook.layers import DenseLayer
from flatbook.probe_data import DataSet, Fields, resolve_data, unpack
from flatbook.probe_layers import LayerDiscovery
from flatbook.probe_options import ProbeOptions
from flatbook.probe_sweep import LayerResult, Measured, Sweep

__all__ = ["DataSet", "LayerResult", "Measured", "Probe", "ProbeOptions", "ProbedLayer",
           "resolve_data", "select_output"]

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
        """The model on x (dict inputs unpacked first), called by ``forward`` if given."""
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
        """f(x) [b, k]: the selected output, one row per sample."""
        f = select_output(self.model(x), self._select)
        b = x.shape[0]
        return f.reshape(b, -1)


# ----------------------------------------------------------------------------- layers


#: the dense-layer type of a probe is :class:`flatbook.layers.DenseLayer` (one layer model)
ProbedLayer = DenseLayer


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


class Probe(LayerDiscovery, Sweep):
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
        options: a :class:`flatbook.probe_options.ProbeOptions` (``output``, ``forward``,
            ``layers``, ``chunk`` below); the same four may be given as keywords
            (``Probe(model, X, chunk=8)``), over ``options``; another keyword is a
            ``TypeError`` naming it.
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
        options: ProbeOptions | None = None,
        check: bool = True,
        **flags: Any,
    ) -> None:
        """Validate and store the arguments (see the class docstring; ``options`` or the
        keywords ``output``, ``layers``, ``forward``, ``chunk``: :class:`ProbeOptions`);
        nothing runs before ``with`` enters the probe."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        opts = resolve(ProbeOptions, "Probe", options, flags)
        output, layers, forward, chunk = opts.output, opts.layers, opts.forward, opts.chunk
        check_positive_int(chunk, "chunk", allow_none=True)
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
        """Resolve model and data once: cast X, wrap the output selector, compute F = f(X)
        [n, k], check finiteness, sample independence and determinism (two passes), cast Y,
        then discover the dense layers."""
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
            if not checks.passes_agree(self.F, F2):
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
