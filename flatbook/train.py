"""Training loop with a measurement schedule: SGD / full-batch GD into and through the late phase.

The paper's evidence is dynamics (paper.md §3): train to ~zero loss, keep going, and watch
sharpness λ_max(H), tr H, volume, MLS and local dimensionality. :func:`train` runs

    θ_{t+1} = θ_t − η ∇_θ L_{B_t}(θ_t)        (plain SGD; momentum / weight decay optional)

with L_B(θ) = (1/|B|) Σ_{i∈B} ℓ(f(x_i; θ), y_i), the squared loss ℓ = ½‖f − y‖² with one-hot y
by default (the bounds need it) or cross-entropy. Batches B_t of size B are drawn without
replacement: epoch e uses the permutation ``randperm(n)`` of a generator seeded by
(seed, e), and the incomplete last batch of an epoch is dropped, so steps per epoch = ⌊n/B⌋.
The batch of step t is therefore a pure function of (seed, t) — a resumed run sees the same
batches. ``batch_size="full"`` gives full-batch gradient descent (B = n, fixed order).

At each measurement step (:func:`measurement_steps`) a record is taken: step, epoch, train and
test loss/accuracy (full sets, eval mode), and ``measure(model, X_eval, Y_eval, loss, seed)`` on
a fixed evaluation subset of the training set — by default λ_max
(:func:`flatbook.curvature.sharpness`), tr H (:func:`flatbook.curvature.trace`, exact
Gauss–Newton) and every geometry measure and bound of ``flatbook.report(...).as_dict()``.

Robustness: arguments are validated up front (one-line ValueErrors naming the parameter and the
allowed values); so is the data — NaN/inf in X or Y, a wrong dtype or shape raise
:class:`BadDataError` ("bad data: …", naming the tensor) before any step, so that bad data is
never reported as a diverging run; a non-finite (or exploding) loss or parameter ends the run with
``status="diverged"`` and the step; the complete state (parameters, optimizer buffers, records,
RNG state) is checkpointed atomically every ``checkpoint_every`` steps, at the end, and when the
run is interrupted (with a digest, verified on disk before it replaces the previous checkpoint,
which is kept as ``<name>.prev.pt``: :func:`flatbook._io.save_checkpoint`; a damaged file is
named, never loaded unsafely; Ctrl-C / SIGTERM are deferred to the next step boundary);
re-running with the same checkpoint path resumes bit-identically.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import signal
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from flatbook import _io, _validate, losses
from flatbook import label_noise as _noise
from flatbook._validate import (  # noqa: F401 - re-exported (experiment, executors)
    BadDataError,
    _fail,
    check_choice,
    check_data,
    check_positive_float,
    check_positive_int,
    check_seed,
)
from flatbook.curvature import eval_mode  # the one implementation (train.eval_mode: alias)
from flatbook.runspec import (  # noqa: F401 - re-exported: the names users know
    LOSS_NAMES,
    MEASURES,
    OPTIMIZERS,
    SCHEDULES,
    TRAIN_PARAMS,
    TrainOptions,
)

CHECKPOINT_FORMAT = 1

MeasureFn = Callable[[nn.Module, Tensor, Tensor, str, int], Mapping[str, float]]
"""``measure(model, X_eval, Y_eval, loss, seed) -> {name: float}`` (model in eval mode)."""

Callback = Callable[[int, nn.Module, "dict[str, Any] | None"], None]
"""``callback(step, model, record_or_None)``, called after every step (at a step boundary)."""


# ------------------------------------------------------------------------------ validation


def resolve_batch_size(batch_size: int | str | None, n: int) -> int:
    """Batch size B for n samples: ``"full"`` (or None) → n; an int must satisfy 1 ≤ B ≤ n."""
    if batch_size is None or batch_size == "full":
        return n
    if isinstance(batch_size, str):
        _fail("batch_size", batch_size, "a positive integer or 'full'")
    b = check_positive_int(batch_size, "batch_size")
    assert b is not None
    if b > n:
        raise ValueError(
            f"batch_size={b} is larger than the training set (n_train={n}); use ≤ {n} or 'full'"
        )
    return b


def measurement_steps(
    steps: int,
    every: int,
    schedule: str = "linear",
    late_start: float = 0.5,
    late_density: int = 4,
) -> list[int]:
    """Steps at which a record is taken (always including 0 and ``steps``).

    - ``"linear"``: 0, K, 2K, …, steps (K = ``every``).
    - ``"late"``: every K steps before ``late_start``·steps, then every max(1, K/late_density)
      steps — denser in the late phase, where the paper's effects (sharpness and volume
      drifting at ~zero loss) unfold.
    - ``"log"``: about steps/K + 1 points log-spaced in [1, steps] (early dynamics resolved).
    """
    steps = check_positive_int(steps, "steps")  # type: ignore[assignment]
    every = check_positive_int(every, "measure_every")  # type: ignore[assignment]
    check_choice(schedule, "schedule", SCHEDULES)
    if every > steps:
        raise ValueError(f"measure_every={every} exceeds steps={steps}; use 1..{steps}")
    if not 0.0 <= late_start <= 1.0:
        _fail("late_start", late_start, "in [0, 1]")
    check_positive_int(late_density, "late_density")
    if schedule == "linear":
        pts = set(range(0, steps + 1, every))
    elif schedule == "late":
        cut = int(round(late_start * steps))
        pts = set(range(0, cut, every))
        pts |= set(range(cut, steps + 1, max(1, every // late_density)))
    else:
        n = max(2, steps // every + 1)
        pts = {int(round(v)) for v in np.geomspace(1, steps, n)} | {0}
    pts.add(steps)
    return sorted(pts)


# ------------------------------------------------------------------------------ measurements


def curvature_measure(
    model: nn.Module,
    X: Tensor,
    Y: Tensor,
    loss: str,
    seed: int,
    *,
    sharpness: bool = True,
    trace: bool = True,
    tol: float = 1e-3,
    max_hvp: int = 500,
) -> dict[str, float]:
    """λ_max(H) by Lanczos and the exact Gauss–Newton trace on (X, Y).

    Keys: ``lambda_max``, ``lambda_max_residual`` (‖Hv − λv‖), ``lambda_max_n_hvp``,
    ``lambda_max_converged`` (1.0/0.0); ``trace_gn`` = (1/n) Σ_i tr(Λ_i J_i J_iᵀ) (= tr H at
    interpolation for the squared loss, paper.md L1; the GGN trace for cross-entropy).
    """
    from flatbook import curvature

    out: dict[str, float] = {}
    if sharpness:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # non-convergence is recorded
            s = curvature.sharpness(model, loss, X, Y, k=1, tol=tol, seed=seed, max_hvp=max_hvp)
        out["lambda_max"] = float(s.values[0])
        out["lambda_max_residual"] = float(s.residuals[0])
        out["lambda_max_n_hvp"] = float(s.n_hvp)
        out["lambda_max_converged"] = float(s.converged)
    if trace:
        out["trace_gn"] = float(curvature.trace(model, loss, X, Y, method="gn", seed=seed).value)
    return out


def call_measure(measure: MeasureFn, model: nn.Module, X: Tensor, Y: Tensor, loss: str,
                 seed: int, step: int) -> Mapping[str, float]:
    """``measure(model, X, Y, loss, seed)``; a measure with ``takes_step = True`` also gets
    ``step=`` (the record's step: e.g. a profile that measures some quantities at some
    records only)."""
    if getattr(measure, "takes_step", False):
        return measure(model, X, Y, loss, seed, step=step)  # type: ignore[call-arg]
    return measure(model, X, Y, loss, seed)


def report_available() -> bool:
    """True when ``flatbook.report`` (geometry measures and bounds in one call) is installed."""
    return importlib.util.find_spec("flatbook.report") is not None


def report_measure(
    model: nn.Module, X: Tensor, Y: Tensor, loss: str, seed: int, **options: Any
) -> dict[str, float]:
    """``flatbook.report(model, X, Y, loss=loss, seed=seed, **options).as_dict()`` — sharpness,
    Gauss–Newton trace, geometry measures per layer and every bound with its slack."""
    mod = importlib.import_module("flatbook.report")
    rep = mod.report(model, X, Y, loss=loss, seed=seed, **options)
    return {str(k): float(v) for k, v in rep.as_dict().items()}


def make_measure(
    names: Sequence[str] = MEASURES,
    *,
    tol: float = 1e-3,
    max_hvp: int = 500,
    lr: float | None = None,
    batch_size: int | None = None,
    n_train: int | None = None,
) -> MeasureFn:
    """Build a measurement function from names in ``MEASURES``.

    With ``"report"`` (and ``flatbook.report`` installed, see :func:`report_available`) one
    call of :func:`report_measure` gives λ_max (if ``"sharpness"`` is asked for; Lanczos with
    relative tolerance ``tol``), the Gauss–Newton trace and every geometry measure and bound;
    ``lr``, ``batch_size`` and ``n_train`` (training-set size) feed its linear-stability
    bounds (T7). Without the report,
    ``"sharpness"`` / ``"trace"`` use :func:`curvature_measure` (same keys: ``lambda_max``,
    ``lambda_max_residual``, ``lambda_max_n_hvp``, ``lambda_max_converged``, ``trace_gn``).
    """
    names = tuple(names)
    for n in names:
        check_choice(n, "measure", MEASURES)
    check_positive_float(tol, "tol")
    check_positive_int(max_hvp, "max_hvp")
    if lr is not None:
        check_positive_float(lr, "lr")
    check_positive_int(batch_size, "batch_size", allow_none=True)
    want_s, want_t = "sharpness" in names, "trace" in names

    def measure(model: nn.Module, X: Tensor, Y: Tensor, loss: str, seed: int) -> dict[str, float]:
        if "report" in names and report_available():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # non-convergence is recorded
                return report_measure(
                    model, X, Y, loss, seed, sharpness=want_s, tol=tol, lr=lr,
                    batch_size=batch_size, n_train=n_train,
                )  # fmt: skip
        if want_s or want_t:
            return curvature_measure(
                model, X, Y, loss, seed, sharpness=want_s, trace=want_t, tol=tol,
                max_hvp=max_hvp,
            )  # fmt: skip
        return {}

    measure.names = names  # type: ignore[attr-defined]
    return measure


default_measure: MeasureFn = make_measure()
"""λ_max, tr H (GN) and, when available, ``flatbook.report(...).as_dict()``."""


@torch.no_grad()
def evaluate(
    model: nn.Module, X: Tensor, Y: Tensor, loss: str, chunk: int = 4096
) -> tuple[float, float]:
    """(mean loss, accuracy) over (X, Y) in eval mode, in chunks of ``chunk`` samples.

    Both losses are means over samples, so the chunked value Σ_c n_c L_c / n is exact.
    Accuracy: argmax f(x) = label (label = argmax y for one-hot / probability targets).
    """
    fn = losses.get(loss)
    with eval_mode(model):
        total, correct, n = 0.0, 0, X.shape[0]
        for s in range(0, n, chunk):
            out = model(X[s : s + chunk])
            y = Y[s : s + chunk]
            total += float(fn(out, y)) * out.shape[0]
            lab = y.argmax(1) if y.ndim == 2 else y
            correct += int((out.argmax(1) == lab).sum())
    return total / n, correct / n


# ------------------------------------------------------------------------------ result


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        records: one dict per measurement (keys: step, epoch, train_loss, train_acc,
            test_loss, test_acc, then the measure's keys), in step order.
        status: ``"completed"`` or ``"diverged"``.
        steps_done: optimizer steps completed (== steps unless diverged).
        diverged_at: step at which a non-finite / exploding loss or parameter was seen.
        target_step: first measured step with train_loss < target_loss (None if never).
        steps_per_epoch: ⌊n/B⌋.
        eval_indices: training-set indices of the fixed evaluation subset.
        resumed_from: step of the checkpoint this call resumed from (None: fresh start).
        model: the trained model (final parameters).
    """

    records: list[dict[str, Any]]
    status: str
    steps_done: int
    steps: int
    diverged_at: int | None
    target_step: int | None
    steps_per_epoch: int
    eval_indices: list[int]
    resumed_from: int | None
    model: nn.Module = field(repr=False)

    @property
    def final(self) -> dict[str, Any]:
        """The last record (the final state unless the run diverged)."""
        return self.records[-1] if self.records else {}

    def summary(self) -> dict[str, Any]:
        """Everything but the model (JSON-able): status, steps, records, …"""
        return {
            "status": self.status,
            "steps": self.steps,
            "steps_done": self.steps_done,
            "diverged_at": self.diverged_at,
            "target_step": self.target_step,
            "steps_per_epoch": self.steps_per_epoch,
            "eval_indices": list(self.eval_indices),
            "final": self.final,
            "records": self.records,
        }


# ------------------------------------------------------------------------------ signals


class _DeferredStop:
    """While active (main thread only), SIGINT/SIGTERM set a flag instead of raising; the loop
    stops cleanly at the next step boundary. A second SIGINT raises immediately."""

    def __init__(self, enabled: bool) -> None:
        self.requested: str | None = None
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> _DeferredStop:
        if self.enabled:
            for s in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._old[s] = signal.signal(s, self._handler)
                except (ValueError, OSError):  # pragma: no cover - unusual platforms
                    pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


# ------------------------------------------------------------------------------ train


def _epoch_perm(seed: int, epoch: int, n: int) -> Tensor:
    state = np.random.SeedSequence([int(seed), int(epoch), 0x5EED]).generate_state(2)
    g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    return torch.randperm(n, generator=g)


def eval_subset(n: int, size: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of a fixed evaluation subset of ``size`` training samples (all if None
    or ≥ n), drawn by ``numpy.random.default_rng(seed)``."""
    if size is None or size >= n:
        return np.arange(n)
    check_positive_int(size, "eval_size")
    return np.sort(np.random.default_rng(seed).permutation(n)[:size])


def _make_optimizer(o: TrainOptions, params: Any) -> torch.optim.Optimizer:
    """``torch.optim.SGD`` (momentum, weight decay, Nesterov) or ``torch.optim.Adam`` with
    β = (0.9, 0.999) (``momentum`` is an SGD option: refused with Adam by the options)."""
    if o.optimizer == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum,
                               weight_decay=o.weight_decay, nesterov=o.nesterov)  # fmt: skip
    return torch.optim.Adam(params, lr=o.lr, betas=(0.9, 0.999), weight_decay=o.weight_decay)


def check_train_args(options: TrainOptions | None = None, **params: Any) -> TrainOptions:
    """The validated :class:`~flatbook.runspec.TrainOptions`: ``options`` (default: all
    defaults) with ``params`` changed; an unknown keyword is a TypeError listing the allowed
    ones, a bad value a one-line ValueError naming the parameter."""
    allowed = [p.name for p in TRAIN_PARAMS]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise TypeError(f"train() got unknown parameter(s) {unknown}; allowed: {allowed} "
                        "(and model, data, options, measure, measure_at, checkpoint_path, "
                        "checkpoint_meta, callback, desc, chunk, handle_signals)")  # fmt: skip
    if options is None:
        return TrainOptions(**params)
    if not isinstance(options, TrainOptions):
        raise TypeError(f"options must be a TrainOptions; got {type(options).__name__}")
    return options.replace(**params) if params else options


def check_label_noise(label_noise: float, loss: str) -> float:
    """Validate σ of label-noise SGD: a finite number ≥ 0, and only with the squared loss
    (the noise is added to the one-hot / real targets)."""
    return _validate.label_noise(label_noise, "label_noise", {"loss": loss})


def _label_noise(yb: Tensor, seed: int, step: int) -> Tensor:
    """ξ(seed, step) ~ N(0, I) of the shape of the minibatch targets [B, k]
    (:func:`flatbook.label_noise.xi`: the same noise on every device, in both engines and
    after a resume)."""
    return _noise.xi(seed, step, tuple(yb.shape), yb.dtype, yb.device)


def _meta_differences(stored: Any, meta: Mapping[str, Any]) -> list[str]:
    """Keys on which a checkpoint's stored meta and the requested one disagree (a key the
    stored meta lacks — written by an older version — is not a difference)."""
    if not isinstance(stored, Mapping):
        return sorted(meta) or ["meta"]
    keys = set(stored) | set(meta)
    return sorted(k for k in keys if k in stored and stored.get(k) != meta.get(k))


class CheckpointMismatchError(ValueError):
    """The checkpoint at ``checkpoint_path`` belongs to another run (its meta differs in
    ``differ``; ``stored`` is its meta)."""

    def __init__(self, message: str, differ: list[str], stored: Any) -> None:
        super().__init__(message)
        self.differ, self.stored = differ, stored


def _check_data(X: Tensor, Y: Tensor, which: str, loss: str,
                model: nn.Module | None = None) -> None:  # fmt: skip
    check_data(X, Y, which, loss, model)


def train(
    model: nn.Module,
    X_train: Tensor,
    Y_train: Tensor,
    X_test: Tensor | None = None,
    Y_test: Tensor | None = None,
    *,
    options: TrainOptions | None = None,
    measure: MeasureFn | None = default_measure,
    measure_at: Sequence[int] | None = None,
    checkpoint_path: str | Path | None = None,
    checkpoint_meta: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
    desc: str | None = None,
    chunk: int = 4096,
    handle_signals: bool = True,
    **params: Any,
) -> TrainResult:
    """Train ``model`` in place and record measurements along the way.

    The loop's parameters — loss, optimizer, η, batch size, steps, measurement schedule,
    evaluation subset, seed, label noise, … — are the :class:`~flatbook.runspec.TrainOptions`
    declared in :data:`flatbook.runspec.PARAMS` (listed below with this function's defaults):
    give them as keywords (``train(net, X, Y, lr=0.1, steps=500)``) or as ``options=`` (a
    ``TrainOptions``, e.g. :func:`flatbook.runspec.train_options` of a run config; keywords
    override it). Their meaning in the loop: ``optimizer="sgd"`` follows ``torch.optim.SGD``
    (``momentum``, ``weight_decay``, ``nesterov``), ``"adam"`` is ``torch.optim.Adam`` with
    β = (0.9, 0.999); ``batch_size="full"`` (or None) is gradient descent; ``measure_every`` and
    ``schedule`` place the records (:func:`measurement_steps`); ``eval_size``/``eval_seed``
    pick the fixed evaluation subset (:func:`eval_subset`) on which ``measure`` runs; ``seed``
    orders the batches and seeds ``measure``; ``label_noise`` σ trains each minibatch on
    y + σξ (ξ ~ N(0, I) from a generator seeded by (seed, step), so a resumed run draws the
    same noise; records use the clean y); ``target_loss`` sets ``target_step``; a minibatch
    loss above ``divergence_threshold`` (or any non-finite loss or parameter) ends the run as
    ``"diverged"``; ``checkpoint_every`` also checkpoints every this many steps (None: at
    the end and on interrupt only); ``progress`` shows a tqdm bar.

    Args:
        model: the network (its dtype/device must match the data).
        X_train, Y_train: training inputs [n, ...] and targets ([n, k] one-hot / probabilities;
            [n] labels allowed for cross-entropy).
        X_test, Y_test: optional test set (test_loss / test_acc in each record).
        options: the loop's parameters as a record (see above).
        measure: ``measure(model, X_eval, Y_eval, loss, seed) -> {name: float}`` or None
            (then records hold only losses/accuracies). Default :data:`default_measure`.
        measure_at: explicit record steps, instead of ``measure_every``/``schedule`` (0 and
            ``steps`` are always added).
        checkpoint_path: where to keep the resumable state (``.pt``); if the file exists and
            matches ``checkpoint_meta``, training resumes from it.
        checkpoint_meta: JSON-able identity (e.g. the config hash) stored in the checkpoint and
            required to match on resume.
        callback: ``callback(step, model, record_or_None)`` after every step; raising
            KeyboardInterrupt there checkpoints and stops (used to simulate a kill).
        desc: the progress bar's label.
        chunk: samples per forward pass when evaluating full-set loss/accuracy.
        handle_signals: defer SIGINT/SIGTERM to the next step boundary (main thread only).
        **params: the loop's parameters as keywords (see above).

    Returns:
        :class:`TrainResult`. Raises KeyboardInterrupt (after checkpointing) when interrupted.
    """
    if measure_at is not None:  # explicit steps: measure_every / schedule are not used
        if isinstance(measure_at, str) or not isinstance(measure_at, Sequence):
            _fail("measure_at", measure_at, "a list of integer steps")
        params.setdefault("measure_every", 1)
        params.setdefault("schedule", "linear")
    o = check_train_args(options, **params)
    check_positive_int(chunk, "chunk")
    _check_data(X_train, Y_train, "train", o.loss, model)
    has_test = X_test is not None and Y_test is not None
    if has_test:
        _check_data(X_test, Y_test, "test", o.loss, model)  # type: ignore[arg-type]
    n = int(X_train.shape[0])
    B = resolve_batch_size(o.batch_size, n)
    full_batch = B == n and (o.batch_size is None or o.batch_size == "full")
    spe = max(1, n // B)
    if measure_at is not None:
        bad = [s for s in measure_at
               if not isinstance(s, int | np.integer) or not 0 <= s <= o.steps]  # fmt: skip
        if bad:
            raise ValueError(f"measure_at entries must be integers in 0..{o.steps}; got {bad}")
        schedule_pts = sorted(set(int(s) for s in measure_at) | {0, o.steps})
    else:
        schedule_pts = measurement_steps(o.steps, o.measure_every, o.schedule)
    to_measure = set(schedule_pts)
    eval_idx = eval_subset(n, o.eval_size, o.eval_seed)
    eval_t = torch.as_tensor(eval_idx, device=X_train.device)
    X_eval, Y_eval = X_train[eval_t], Y_train[eval_t]
    loss_fn = losses.get(o.loss)
    opt = _make_optimizer(o, [p for p in model.parameters() if p.requires_grad])

    records: list[dict[str, Any]] = []
    step = 0
    target_step: int | None = None
    resumed_from: int | None = None
    ckpt = Path(checkpoint_path) if checkpoint_path is not None else None
    meta = dict(checkpoint_meta or {})

    def save_checkpoint() -> None:
        if ckpt is None:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "meta": meta,
            "step": step,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "records": records,
            "target_step": target_step,
            "torch_rng": torch.random.get_rng_state(),
        }
        _io.save_checkpoint(ckpt, state)  # verified on disk; the one before is kept

    state = None if ckpt is None else _io.load_checkpoint(ckpt, X_train.device)
    if state is not None:
        stored = state.get("meta")
        differ = _meta_differences(stored, meta)
        if state.get("format") != CHECKPOINT_FORMAT or differ:
            raise CheckpointMismatchError(
                f"checkpoint {ckpt} was written for a different run (differs in {differ}: "
                f"stored {stored} ≠ {meta}); delete it or use another path",
                differ, stored,
            )  # fmt: skip
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        records = list(state["records"])
        step = int(state["step"])
        target_step = state["target_step"]
        torch.random.set_rng_state(state["torch_rng"].cpu())
        resumed_from = step

    def take_record(t: int) -> dict[str, Any]:
        nonlocal target_step
        rec: dict[str, Any] = {"step": t, "epoch": t / spe}
        rec["train_loss"], rec["train_acc"] = evaluate(model, X_train, Y_train, o.loss, chunk)
        if has_test:
            rec["test_loss"], rec["test_acc"] = evaluate(model, X_test, Y_test, o.loss, chunk)  # type: ignore[arg-type]
        if measure is not None and math.isfinite(rec["train_loss"]):
            with eval_mode(model):
                extra = call_measure(measure, model, X_eval, Y_eval, o.loss, o.seed, t)
            for k, v in extra.items():
                if k in rec:
                    continue
                try:
                    rec[k] = float(v)
                except (TypeError, ValueError):
                    raise TypeError(f"measure returned {k}={v!r}; values must be floats") from None
        if o.target_loss is not None and target_step is None and rec["train_loss"] < o.target_loss:
            target_step = t
        records.append(rec)
        return rec

    def params_finite() -> bool:
        return all(bool(torch.isfinite(p).all()) for p in model.parameters())

    status = "completed"
    diverged_at: int | None = None
    pending: list[Tensor] = []  # minibatch losses not yet checked (avoids a sync per step)
    first_pending = step
    consistent = True
    bar = _progress(o.steps, step, desc, o.progress)
    postfix: dict[str, str] = {}
    perm_epoch, perm = -1, torch.empty(0, dtype=torch.long)
    sync_every = 25

    def flush() -> bool:
        """Check pending losses; return True if the run diverged."""
        nonlocal diverged_at, first_pending
        if pending:
            vals = torch.stack(pending).detach().double().cpu()
            bad = ~torch.isfinite(vals) | (vals.abs() > o.divergence_threshold)
            pending.clear()
            if bool(bad.any()):
                diverged_at = first_pending + int(bad.nonzero()[0, 0])
                return True
            postfix["loss"] = f"{float(vals[-1]):.3g}"
            bar.set_postfix(postfix, refresh=False)
        first_pending = step
        if not params_finite():
            diverged_at = step
            return True
        return False

    model.train()
    try:
        with _DeferredStop(handle_signals) as stop:
            if step == 0 and not records:
                rec = take_record(0)
                if not math.isfinite(rec["train_loss"]):
                    status, diverged_at = "diverged", 0
            while status == "completed" and step < o.steps:
                consistent = False
                if full_batch:
                    xb, yb = X_train, Y_train
                else:
                    epoch, pos = divmod(step, spe)
                    if epoch != perm_epoch:
                        perm = _epoch_perm(o.seed, epoch, n).to(X_train.device)
                        perm_epoch = epoch
                    idx = perm[pos * B : (pos + 1) * B]
                    xb, yb = X_train[idx], Y_train[idx]
                if o.label_noise:
                    yb = yb + o.label_noise * _label_noise(yb, o.seed, step)
                opt.zero_grad(set_to_none=True)
                lb = loss_fn(model(xb), yb)
                lb.backward()
                opt.step()
                pending.append(lb.detach())
                step += 1
                bar.update(1)
                rec = None
                ckpt_due = o.checkpoint_every is not None and step % o.checkpoint_every == 0
                if (
                    step in to_measure
                    or step == o.steps
                    or len(pending) >= sync_every
                    or ckpt_due
                    or stop.requested is not None
                    or callback is not None
                ):
                    if flush():
                        status = "diverged"
                        break
                    if step in to_measure:
                        rec = take_record(step)
                        if not math.isfinite(rec["train_loss"]):
                            status, diverged_at = "diverged", step
                            break
                        postfix["loss"] = f"{rec['train_loss']:.3g}"
                        if "lambda_max" in rec:
                            postfix["lmax"] = f"{rec['lambda_max']:.3g}"
                        bar.set_postfix(postfix, refresh=False)
                consistent = True  # step t fully processed: a checkpoint now is exact
                if callback is not None:
                    callback(step, model, rec)
                if ckpt_due:
                    save_checkpoint()
                if stop.requested is not None:
                    save_checkpoint()
                    raise KeyboardInterrupt(
                        f"{stop.requested} at step {step}; checkpoint: {ckpt or 'none'}"
                    )
            if status == "completed":
                save_checkpoint()
    except KeyboardInterrupt:
        if consistent:
            save_checkpoint()
        raise
    finally:
        bar.close()
    return TrainResult(
        records=records,
        status=status,
        steps_done=step if status == "completed" else int(diverged_at or 0),
        steps=o.steps,
        diverged_at=diverged_at,
        target_step=target_step,
        steps_per_epoch=spe,
        eval_indices=[int(i) for i in eval_idx],
        resumed_from=resumed_from,
        model=model,
    )


def _progress(total: int, initial: int, desc: str | None, enabled: bool) -> Any:
    from tqdm import tqdm  # text bar: tqdm.auto warns (IProgress) in kernels without ipywidgets

    return tqdm(
        total=total, initial=initial, desc=desc or "train", disable=not enabled,
        mininterval=0.5, dynamic_ncols=True, unit="step",
    )  # fmt: skip


__all__ = [
    "BadDataError",
    "CheckpointMismatchError",
    "LOSS_NAMES",
    "MEASURES",
    "OPTIMIZERS",
    "SCHEDULES",
    "TrainResult",
    "curvature_measure",
    "default_measure",
    "eval_subset",
    "evaluate",
    "make_measure",
    "measurement_steps",
    "report_available",
    "report_measure",
    "resolve_batch_size",
    "train",
]
