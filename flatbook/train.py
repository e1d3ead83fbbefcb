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

Modules: this one validates the arguments and prepares the run (:func:`train`,
:func:`check_train_args`, :func:`measurement_steps`, :func:`eval_subset`, :class:`TrainResult`);
:mod:`flatbook.train_loop` runs the loop's stages (:class:`~flatbook.train_loop.LoopControls`:
measure, checkpointing, callback, progress, signals); :mod:`flatbook.train_measure` holds what a
record measures (:func:`evaluate`, :func:`make_measure`, :func:`curvature_measure`);
:mod:`flatbook.train_checkpoint` the resumable state. Every name is importable from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from flatbook import _validate, losses
from flatbook._validate import (
    BadDataError,
    _fail,
    check_choice,
    check_data,
    check_positive_float,
    check_positive_int,
    check_seed,
)
from flatbook.curvature import eval_mode  # the one implementation
from flatbook.runspec import (
    LOSS_NAMES,
    MEASURES,
    OPTIMIZERS,
    SCHEDULES,
    TRAIN_PARAMS,
    TrainOptions,
)
from flatbook.train_checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointMismatchError,
    DeferredStop,
    checkpoint_state,
    load_matching,
    meta_differences,
)
from flatbook.train_loop import (
    LOOP_CONTROLS,
    Callback,
    LoopControls,
    LoopSetup,
    TrainLoop,
    epoch_perm,
    label_noise_sample,
    make_optimizer,
    progress_bar,
)
from flatbook.train_measure import (
    CurvatureMeasureOptions,
    MeasureFn,
    call_measure,
    curvature_measure,
    default_measure,
    evaluate,
    make_measure,
    report_available,
    report_measure,
)

# The private names the ensemble engine and the tests use, kept under their known names.
_epoch_perm = epoch_perm
_label_noise = label_noise_sample
_make_optimizer = make_optimizer
_progress = progress_bar
_DeferredStop = DeferredStop
_meta_differences = meta_differences


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


def eval_subset(n: int, size: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of a fixed evaluation subset of ``size`` training samples (all if None
    or ≥ n), drawn by ``numpy.random.default_rng(seed)``."""
    if size is None or size >= n:
        return np.arange(n)
    check_positive_int(size, "eval_size")
    return np.sort(np.random.default_rng(seed).permutation(n)[:size])


def check_train_args(options: TrainOptions | None = None, **params: Any) -> TrainOptions:
    """The validated :class:`~flatbook.runspec.TrainOptions`: ``options`` (default: all
    defaults) with ``params`` changed; an unknown keyword is a TypeError listing the allowed
    ones, a bad value a one-line ValueError naming the parameter."""
    allowed = [p.name for p in TRAIN_PARAMS]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise TypeError(f"train() got unknown parameter(s) {unknown}; allowed: {allowed} "
                        f"(and model, data, options, loop, {', '.join(LOOP_CONTROLS)})")
    if options is None:
        return TrainOptions(**params)
    if not isinstance(options, TrainOptions):
        raise TypeError(f"options must be a TrainOptions; got {type(options).__name__}")
    return options.replace(**params) if params else options


def check_label_noise(label_noise: float, loss: str) -> float:
    """Validate σ of label-noise SGD: a finite number ≥ 0, and only with the squared loss
    (the noise is added to the one-hot / real targets)."""
    return _validate.label_noise(label_noise, "label_noise", {"loss": loss})


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


# ------------------------------------------------------------------------------ train


def train(
    model: nn.Module,
    X_train: Tensor,
    Y_train: Tensor,
    X_test: Tensor | None = None,
    Y_test: Tensor | None = None,
    *,
    options: TrainOptions | None = None,
    loop: LoopControls | None = None,
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
        loop: how the loop runs, as a :class:`~flatbook.train_loop.LoopControls` record
            (``measure`` … ``handle_signals`` below); the keywords below override it.
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
        **params: the loop's parameters as keywords (see above), and the loop controls
            ``measure`` … ``handle_signals`` as keywords (an unknown keyword is a TypeError
            listing the allowed ones).

    Returns:
        :class:`TrainResult`. Raises KeyboardInterrupt (after checkpointing) when interrupted.
    """
    c_flags = {k: params.pop(k) for k in LOOP_CONTROLS if k in params}
    c = LoopControls.from_flags(loop, **c_flags)
    if c.measure_at is not None:  # explicit steps: measure_every / schedule are not used
        params.setdefault("measure_every", 1)
        params.setdefault("schedule", "linear")
    o = check_train_args(options, **params)
    run = TrainLoop(prepare(model, (X_train, Y_train, X_test, Y_test), o, c), model)
    run.run()
    return TrainResult(
        records=run.records,
        status=run.status,
        steps_done=run.step if run.status == "completed" else int(run.diverged_at or 0),
        steps=o.steps,
        diverged_at=run.diverged_at,
        target_step=run.target_step,
        steps_per_epoch=run.setup.steps_per_epoch,
        eval_indices=[int(i) for i in run.setup.eval_indices],
        resumed_from=run.resumed_from,
        model=model,
    )


def prepare(
    model: nn.Module,
    data: tuple[Tensor, Tensor, Tensor | None, Tensor | None],
    o: TrainOptions,
    c: LoopControls,
) -> LoopSetup:
    """The validated set-up of a run: the data checked (:class:`BadDataError` before any
    step), B = :func:`resolve_batch_size`, ⌊n/B⌋ steps per epoch, the record steps
    (``measure_at`` ∪ {0, steps}, or :func:`measurement_steps`) and the evaluation subset
    X[eval_subset(n, eval_size, eval_seed)] on which ``measure`` runs."""
    X_train, Y_train, X_test, Y_test = data
    check_data(X_train, Y_train, "train", o.loss, model)
    has_test = X_test is not None and Y_test is not None
    if has_test:
        check_data(X_test, Y_test, "test", o.loss, model)  # type: ignore[arg-type]
    n = int(X_train.shape[0])
    B = resolve_batch_size(o.batch_size, n)
    if c.measure_at is not None:
        bad = [s for s in c.measure_at
               if not isinstance(s, int | np.integer) or not 0 <= s <= o.steps]  # fmt: skip
        if bad:
            raise ValueError(f"measure_at entries must be integers in 0..{o.steps}; got {bad}")
        schedule_pts = sorted(set(int(s) for s in c.measure_at) | {0, o.steps})
    else:
        schedule_pts = measurement_steps(o.steps, o.measure_every, o.schedule)
    eval_idx = eval_subset(n, o.eval_size, o.eval_seed)
    eval_t = torch.as_tensor(eval_idx, device=X_train.device)
    return LoopSetup(
        options=o, controls=c,
        data=(X_train, Y_train, X_test, Y_test) if has_test else (X_train, Y_train, None, None),
        batch_size=B,
        full_batch=B == n and (o.batch_size is None or o.batch_size == "full"),
        steps_per_epoch=max(1, n // B),
        record_steps=frozenset(schedule_pts),
        eval_indices=eval_idx,
        eval_data=(X_train[eval_t], Y_train[eval_t]),
    )


__all__ = [  # every name other modules, chapters and tests use from flatbook.train
    "BadDataError",
    "CHECKPOINT_FORMAT",
    "Callback",
    "CheckpointMismatchError",
    "CurvatureMeasureOptions",
    "DeferredStop",
    "LOOP_CONTROLS",
    "LOSS_NAMES",
    "LoopControls",
    "LoopSetup",
    "MEASURES",
    "MeasureFn",
    "OPTIMIZERS",
    "SCHEDULES",
    "TrainLoop",
    "TrainOptions",
    "TrainResult",
    "call_measure",
    "check_choice",
    "check_data",
    "check_label_noise",
    "check_positive_float",
    "check_positive_int",
    "check_seed",
    "check_train_args",
    "checkpoint_state",
    "curvature_measure",
    "default_measure",
    "epoch_perm",
    "eval_mode",
    "eval_subset",
    "evaluate",
    "label_noise_sample",
    "load_matching",
    "losses",
    "make_measure",
    "make_optimizer",
    "measurement_steps",
    "meta_differences",
    "prepare",
    "progress_bar",
    "report_available",
    "report_measure",
    "resolve_batch_size",
    "train",
]
