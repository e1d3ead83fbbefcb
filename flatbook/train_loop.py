"""The training loop's stages: resume, one step, the divergence test, records, checkpoints.

:class:`TrainLoop` runs θ_{t+1} = θ_t − η ∇_θ L_{B_t}(θ_t) (or Adam) from step 0 or from a
checkpoint to ``steps`` on a :class:`LoopSetup` prepared by :func:`flatbook.train.train`:

1. set-up: optimizer, resume from a matching checkpoint (:meth:`TrainLoop.resume`);
2. one step (:meth:`TrainLoop.take_step`): the batch of step t (:func:`epoch_perm`), targets
   y + σξ under label noise (:func:`label_noise_sample`), the update, the minibatch loss queued;
3. at a step boundary (:meth:`TrainLoop.after_step`): the divergence test on the queued losses
   and the parameters (:meth:`TrainLoop.flush`, at most every ``SYNC_EVERY`` steps: one device
   sync for many steps), the record when due (:meth:`TrainLoop.record`), the callback, a
   periodic checkpoint (:meth:`TrainLoop.save`) and a deferred Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from flatbook import _io, losses
from flatbook import label_noise as _noise
from flatbook._validate import _fail, check_positive_int
from flatbook.curvature import eval_mode
from flatbook.runspec import TrainOptions
from flatbook.train_checkpoint import DeferredStop, checkpoint_state, load_matching
from flatbook.train_measure import MeasureFn, call_measure, default_measure, evaluate

SYNC_EVERY = 25
"""Most steps between two divergence tests (each test reads the losses back: a device sync)."""

Callback = Callable[[int, nn.Module, "dict[str, Any] | None"], None]
"""``callback(step, model, record_or_None)``, called after every step (at a step boundary)."""


@dataclass(frozen=True)
class LoopControls:
    """How :func:`flatbook.train.train` runs its loop (what it trains is the ``TrainOptions``).

    Attributes:
        measure: ``measure(model, X_eval, Y_eval, loss, seed) -> {name: float}`` at each
            record, or None (records hold only losses/accuracies).
        measure_at: explicit record steps instead of ``measure_every``/``schedule`` (0 and
            ``steps`` are always added).
        checkpoint_path: where to keep the resumable state (``.pt``); an existing file whose
            meta matches ``checkpoint_meta`` is resumed from.
        checkpoint_meta: JSON-able identity stored in the checkpoint, required to match.
        callback: ``callback(step, model, record_or_None)`` after every step.
        desc: the progress bar's label.
        chunk: samples per forward pass when evaluating full-set loss/accuracy.
        handle_signals: defer SIGINT/SIGTERM to the next step boundary (main thread only).
    """

    measure: MeasureFn | None = default_measure
    measure_at: Sequence[int] | None = None
    checkpoint_path: str | Path | None = None
    checkpoint_meta: Mapping[str, Any] | None = None
    callback: Callback | None = None
    desc: str | None = None
    chunk: int = 4096
    handle_signals: bool = True

    def __post_init__(self) -> None:
        at = self.measure_at
        if at is not None and (isinstance(at, str) or not isinstance(at, Sequence)):
            _fail("measure_at", at, "a list of integer steps")
        check_positive_int(self.chunk, "chunk")

    @classmethod
    def from_flags(cls, base: LoopControls | None = None, **flags: Any) -> LoopControls:
        """``base`` (default: all defaults) with ``flags`` changed; ``TypeError`` naming an
        unknown keyword and listing the allowed ones."""
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(flags) - set(allowed))
        if unknown:
            raise TypeError(f"unknown loop control(s) {unknown}; allowed: {allowed}")
        if base is None:
            return cls(**flags)
        if not isinstance(base, LoopControls):
            raise TypeError(f"loop must be a LoopControls; got {type(base).__name__}")
        return replace(base, **flags) if flags else base


LOOP_CONTROLS = tuple(f.name for f in fields(LoopControls))
"""The keywords of :func:`flatbook.train.train` that set a :class:`LoopControls` field."""


@dataclass(frozen=True)
class LoopSetup:
    """What the loop reads and never changes (validated by :func:`flatbook.train.train`).

    Attributes:
        options: the loop's parameters.
        controls: how the loop runs.
        data: (X_train [n, ...], Y_train [n, k] or [n], X_test, Y_test); the test pair is
            (None, None) without a test set.
        batch_size: B (n for gradient descent).
        full_batch: gradient descent on the whole set in its fixed order.
        steps_per_epoch: ⌊n/B⌋ (at least 1).
        record_steps: the steps at which a record is taken.
        eval_indices: training-set indices of the fixed evaluation subset (sorted).
        eval_data: (X_eval, Y_eval), the fixed evaluation subset ``measure`` runs on.
    """

    options: TrainOptions
    controls: LoopControls
    data: tuple[Tensor, Tensor, Tensor | None, Tensor | None]
    batch_size: int
    full_batch: bool
    steps_per_epoch: int
    record_steps: frozenset[int]
    eval_indices: np.ndarray
    eval_data: tuple[Tensor, Tensor]


def epoch_perm(seed: int, epoch: int, n: int) -> Tensor:
    """The sample order of ``epoch``: ``randperm(n)`` [n] of a CPU generator seeded by
    (seed, epoch) through ``numpy.random.SeedSequence``, so the batch of step t is a pure
    function of (seed, t) on every device and after a resume."""
    state = np.random.SeedSequence([int(seed), int(epoch), 0x5EED]).generate_state(2)
    g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    return torch.randperm(n, generator=g)


def label_noise_sample(yb: Tensor, seed: int, step: int) -> Tensor:
    """ξ(seed, step) ~ N(0, I) of the shape of the minibatch targets [B, k]
    (:func:`flatbook.label_noise.xi`: drawn in blocks of steps; the same noise on every
    device, in both engines and after a resume)."""
    return _noise.xi(seed, step, tuple(yb.shape), yb.dtype, yb.device)


def make_optimizer(o: TrainOptions, params: Any) -> torch.optim.Optimizer:
    """``torch.optim.SGD`` (momentum, weight decay, Nesterov) or ``torch.optim.Adam`` with
    β = (0.9, 0.999) (``momentum`` is an SGD option: refused with Adam by the options)."""
    if o.optimizer == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum,
                               weight_decay=o.weight_decay, nesterov=o.nesterov)  # fmt: skip
    return torch.optim.Adam(params, lr=o.lr, betas=(0.9, 0.999), weight_decay=o.weight_decay)


def progress_bar(total: int, initial: int, desc: str | None, enabled: bool) -> Any:
    """A tqdm text bar of ``total`` steps starting at ``initial`` (disabled: a no-op bar)."""
    from tqdm import tqdm  # text bar: tqdm.auto warns (IProgress) in kernels without ipywidgets

    return tqdm(
        total=total, initial=initial, desc=desc or "train", disable=not enabled,
        mininterval=0.5, dynamic_ncols=True, unit="step",
    )  # fmt: skip


def add_measures(rec: dict[str, Any], extra: Mapping[str, Any]) -> None:
    """Add a measure's values to ``rec`` as floats (keys already in ``rec`` are kept);
    ``TypeError`` naming a value that is not a number."""
    for k, v in extra.items():
        if k in rec:
            continue
        try:
            rec[k] = float(v)
        except (TypeError, ValueError):
            raise TypeError(f"measure returned {k}={v!r}; values must be floats") from None


class TrainLoop:
    """One run of the loop: trains ``model`` in place from step 0 or from its checkpoint.

    After :meth:`run`: ``records``, ``status`` (``"completed"`` / ``"diverged"``), ``step``,
    ``diverged_at``, ``target_step`` and ``resumed_from`` describe the outcome.
    """

    def __init__(self, setup: LoopSetup, model: nn.Module) -> None:
        o, c = setup.options, setup.controls
        self.setup, self.model, self.o = setup, model, o
        self.loss_fn = losses.get(o.loss)
        self.opt = make_optimizer(o, [p for p in model.parameters() if p.requires_grad])
        self.records: list[dict[str, Any]] = []
        self.step = 0
        self.target_step: int | None = None
        self.resumed_from: int | None = None
        self.ckpt = Path(c.checkpoint_path) if c.checkpoint_path is not None else None
        self.meta = dict(c.checkpoint_meta or {})
        self.resume()
        self.status = "completed"
        self.diverged_at: int | None = None
        self.pending: list[Tensor] = []  # minibatch losses not yet tested (one sync for many)
        self.first_pending = self.step
        self.consistent = True  # the last step is fully processed: a checkpoint now is exact
        self.bar = progress_bar(o.steps, self.step, c.desc, o.progress)
        self.postfix: dict[str, str] = {}
        self.perm_epoch, self.perm = -1, torch.empty(0, dtype=torch.long)

    def resume(self) -> None:
        """Load the model, optimizer, records, step, ``target_step`` and RNG state from the
        checkpoint when one matching this run's meta exists (:func:`load_matching`)."""
        state = load_matching(self.ckpt, self.meta, self.setup.data[0].device)
        if state is None:
            return
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.records = list(state["records"])
        self.step = int(state["step"])
        self.target_step = state["target_step"]
        torch.random.set_rng_state(state["torch_rng"].cpu())
        self.resumed_from = self.step

    def save(self) -> None:
        """Write the checkpoint (verified on disk; the one before is kept), if there is a path."""
        if self.ckpt is None:
            return
        state = checkpoint_state(self.meta, self.step, self.model, self.opt, self.records,
                                 self.target_step)  # fmt: skip
        _io.save_checkpoint(self.ckpt, state)

    def run(self) -> None:
        """Record step 0 (fresh start), then step until ``steps`` or divergence and checkpoint
        at the end; on KeyboardInterrupt checkpoint (when the last step is fully processed)
        and re-raise."""
        self.model.train()
        try:
            with DeferredStop(self.setup.controls.handle_signals) as stop:
                if self.step == 0 and not self.records:
                    rec = self.record(0)
                    if not math.isfinite(rec["train_loss"]):
                        self.status, self.diverged_at = "diverged", 0
                while self.status == "completed" and self.step < self.o.steps:
                    self.consistent = False
                    self.take_step()
                    self.after_step(stop)
                if self.status == "completed":
                    self.save()
        except KeyboardInterrupt:
            if self.consistent:
                self.save()
            raise
        finally:
            self.bar.close()

    def batch(self) -> tuple[Tensor, Tensor]:
        """(X_B, Y_B) of the current step: the whole set for gradient descent, else the
        ``pos``-th block of B samples of the epoch's permutation (step = epoch·⌊n/B⌋ + pos)."""
        s = self.setup
        X, Y = s.data[0], s.data[1]
        if s.full_batch:
            return X, Y
        epoch, pos = divmod(self.step, s.steps_per_epoch)
        if epoch != self.perm_epoch:
            self.perm = epoch_perm(self.o.seed, epoch, int(X.shape[0])).to(X.device)
            self.perm_epoch = epoch
        idx = self.perm[pos * s.batch_size : (pos + 1) * s.batch_size]
        return X[idx], Y[idx]

    def take_step(self) -> None:
        """One optimizer step on L_B(θ) = mean ℓ(f(x_i; θ), y_i + σξ_i) over the step's batch
        (σ = ``label_noise``, ξ from :func:`label_noise_sample`); the loss is queued for the
        divergence test."""
        xb, yb = self.batch()
        if self.o.label_noise:
            yb = yb + self.o.label_noise * label_noise_sample(yb, self.o.seed, self.step)
        self.opt.zero_grad(set_to_none=True)
        lb = self.loss_fn(self.model(xb), yb)
        lb.backward()
        self.opt.step()
        self.pending.append(lb.detach())
        self.step += 1
        self.bar.update(1)

    def after_step(self, stop: DeferredStop) -> None:
        """At the boundary after a step: when anything reads the state, the divergence test
        and the record if due (a diverged run stops here); then the callback, a periodic
        checkpoint and a deferred signal (checkpoint, then KeyboardInterrupt)."""
        t, c, o = self.step, self.setup.controls, self.o
        rec = None
        ckpt_due = o.checkpoint_every is not None and t % o.checkpoint_every == 0
        if (t in self.setup.record_steps or t == o.steps or len(self.pending) >= SYNC_EVERY
                or ckpt_due or stop.requested is not None or c.callback is not None):
            if self.flush():
                self.status = "diverged"
                return
            if t in self.setup.record_steps:
                rec = self.record(t)
                if not math.isfinite(rec["train_loss"]):
                    self.status, self.diverged_at = "diverged", t
                    return
                self.show(rec)
        self.consistent = True
        if c.callback is not None:
            c.callback(t, self.model, rec)
        if ckpt_due:
            self.save()
        if stop.requested is not None:
            self.save()
            raise KeyboardInterrupt(
                f"{stop.requested} at step {t}; checkpoint: {self.ckpt or 'none'}"
            )

    def flush(self) -> bool:
        """Test the queued minibatch losses (non-finite, or |L| > ``divergence_threshold``) and
        the parameters (non-finite); True, with ``diverged_at`` set, when the run diverged."""
        if self.pending:
            vals = torch.stack(self.pending).detach().double().cpu()
            bad = ~torch.isfinite(vals) | (vals.abs() > self.o.divergence_threshold)
            self.pending.clear()
            if bool(bad.any()):
                self.diverged_at = self.first_pending + int(bad.nonzero()[0, 0])
                return True
            self.postfix["loss"] = f"{float(vals[-1]):.3g}"
            self.bar.set_postfix(self.postfix, refresh=False)
        self.first_pending = self.step
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            self.diverged_at = self.step
            return True
        return False

    def record(self, t: int) -> dict[str, Any]:
        """The record of step t: epoch t/⌊n/B⌋, train (and test) mean loss and accuracy
        (:func:`evaluate`), then ``measure`` on the evaluation subset (model in eval mode; not
        when the loss is non-finite); sets ``target_step`` at the first loss below
        ``target_loss``."""
        s, o, m = self.setup, self.o, self.model
        X, Y, X_test, Y_test = s.data
        chunk, measure = s.controls.chunk, s.controls.measure
        rec: dict[str, Any] = {"step": t, "epoch": t / s.steps_per_epoch}
        rec["train_loss"], rec["train_acc"] = evaluate(m, X, Y, o.loss, chunk)
        if X_test is not None and Y_test is not None:
            rec["test_loss"], rec["test_acc"] = evaluate(m, X_test, Y_test, o.loss, chunk)
        if measure is not None and math.isfinite(rec["train_loss"]):
            with eval_mode(m):
                extra = call_measure(measure, m, *s.eval_data, o.loss, o.seed, t)
            add_measures(rec, extra)
        if o.target_loss is not None and self.target_step is None \
                and rec["train_loss"] < o.target_loss:
            self.target_step = t
        self.records.append(rec)
        return rec

    def show(self, rec: dict[str, Any]) -> None:
        """The record's loss (and λ_max) on the progress bar."""
        self.postfix["loss"] = f"{rec['train_loss']:.3g}"
        if "lambda_max" in rec:
            self.postfix["lmax"] = f"{rec['lambda_max']:.3g}"
        self.bar.set_postfix(self.postfix, refresh=False)


__all__ = [
    "LOOP_CONTROLS",
    "SYNC_EVERY",
    "Callback",
    "LoopControls",
    "LoopSetup",
    "TrainLoop",
    "add_measures",
    "epoch_perm",
    "label_noise_sample",
    "make_optimizer",
    "progress_bar",
]
