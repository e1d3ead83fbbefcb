"""Ensemble engine: many independent SGD runs of one MLP architecture advanced as one batch.

M networks of the same shape are held as stacked parameters and stepped together by
:func:`flatbook.ensemble_step.batched_step` (batched products over the member axis, the
gradient written by hand: no autograd graph, optimizer object or ``torch._dynamo`` import on
the training path). Each member follows :func:`flatbook.train.train` on the same config:
same initialisation, same batches (``train._epoch_perm``), same label noise
(:func:`flatbook.label_noise.xi`), same measurement steps and divergence rule; the two agree
to rounding (the batched products slice per member, so a member's numbers do not depend on
how many members share its batch).

Each member keeps its own step counter, data order, label noise σ, learning rate η, weight
decay, schedule, checkpoint and divergence status: a member that diverges is frozen (its
parameters zeroed, its learning rate 0) while the others go on. At each of a member's
measurement steps its weights are copied into an ordinary ``nn.Module`` and measured exactly
as a solo run (:func:`flatbook.train.evaluate` and the member's ``measure``), so its records
have the same keys and meaning. Checkpoints are per member, in the solo loop's format.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flatbook import _io
from flatbook import label_noise as _noise
from flatbook import train as _train
from flatbook.ensemble_step import ACTIVATIONS, LOSSES, Stack, batched_step, mlp_layout

_Stack = Stack   # the stacked MLP parameters under the name the torch.func engine's tests use

SYNC_EVERY = 25
"""Steps between checks of the members' minibatch losses (as the solo loop)."""

EnsembleCallback = Callable[[list[int]], None]
"""``callback(steps)`` after every batched step with each member's step count; raising
KeyboardInterrupt there checkpoints every member and stops (used to simulate a kill)."""


@dataclass
class Member:
    """One run of an ensemble: its network (initial weights), data and training options.

    Attributes:
        model: the member's ``nn.Sequential`` MLP (initialised as the solo run would be); it
            receives the trained weights and is the module every measurement sees.
        X_train, Y_train: training inputs [n, d] and targets [n, k] (one-hot / real).
        X_test, Y_test: test set for the records' ``test_loss`` / ``test_acc`` (or None).
        lr, weight_decay: η and λ of θ ← θ − η(∇L_B + λθ).
        steps: optimizer steps; ``measure_steps``: steps at which records are taken.
        measure: ``measure(model, X_eval, Y_eval, loss, seed)`` or None.
        eval_indices: training-set indices of the evaluation subset ``measure`` sees.
        seed: batch-order / label-noise seed (and the seed passed to ``measure``).
        label_noise: σ of label-noise SGD (targets y + σξ, squared loss).
        target_loss, divergence_threshold: as :func:`flatbook.train.train`.
        checkpoint_path, checkpoint_every, checkpoint_meta: the member's resumable state (the
            solo loop's checkpoint format; resumed when present and its meta matches).
    """

    model: nn.Module
    X_train: Tensor
    Y_train: Tensor
    X_test: Tensor | None
    Y_test: Tensor | None
    lr: float
    steps: int
    measure_steps: Sequence[int]
    measure: _train.MeasureFn | None
    eval_indices: Sequence[int]
    seed: int
    weight_decay: float = 0.0
    label_noise: float = 0.0
    target_loss: float | None = 1e-3
    divergence_threshold: float = 1e6
    checkpoint_path: Path | None = None
    checkpoint_every: int | None = None
    checkpoint_meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class _State:
    """Mutable progress of one member."""

    step: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    target_step: int | None = None
    resumed_from: int | None = None
    status: str = "running"          # running | completed | diverged
    diverged_at: int | None = None
    first_pending: int = 0
    perm_epoch: int = -1


# ------------------------------------------------------------------------------ records


def take_record(member: Member, st: _State, t: int, spe: int, loss: str,
                chunk: int = 4096) -> dict[str, Any]:
    """The record of a member at step t, as the solo loop takes it: step, epoch, train (and
    test) loss / accuracy on the full sets, then ``measure`` on the evaluation subset."""
    model = member.model
    rec: dict[str, Any] = {"step": t, "epoch": t / spe}
    rec["train_loss"], rec["train_acc"] = _train.evaluate(model, member.X_train,
                                                          member.Y_train, loss, chunk)
    if member.X_test is not None and member.Y_test is not None:
        rec["test_loss"], rec["test_acc"] = _train.evaluate(model, member.X_test,
                                                            member.Y_test, loss, chunk)
    if member.measure is not None and math.isfinite(rec["train_loss"]):
        idx = torch.as_tensor(list(member.eval_indices), device=member.X_train.device)
        with _train.eval_mode(model):
            extra = _train.call_measure(member.measure, model, member.X_train[idx],
                                        member.Y_train[idx], loss, member.seed, t)
        for k, v in extra.items():
            if k not in rec:
                try:
                    rec[k] = float(v)
                except (TypeError, ValueError):
                    raise TypeError(f"measure returned {k}={v!r}; values must be floats"
                                    ) from None
    if (member.target_loss is not None and st.target_step is None
            and rec["train_loss"] < member.target_loss):
        st.target_step = t
    st.records.append(rec)
    return rec


def _sgd_state(member: Member) -> dict[str, Any]:
    """The state dict ``torch.optim.SGD`` (plain, no momentum) would save for the member."""
    n = len(list(member.model.parameters()))
    return {"state": {}, "param_groups": [{
        "lr": member.lr, "momentum": 0, "dampening": 0, "weight_decay": member.weight_decay,
        "nesterov": False, "maximize": False, "foreach": None, "differentiable": False,
        "fused": None, "params": list(range(n))}]}


def save_member(member: Member, st: _State) -> None:
    """Checkpoint one member (its weights must be in ``member.model``), solo format."""
    if member.checkpoint_path is None:
        return
    state = {"format": _train.CHECKPOINT_FORMAT, "meta": member.checkpoint_meta,
             "step": st.step, "model": member.model.state_dict(),
             "optimizer": _sgd_state(member), "records": st.records,
             "target_step": st.target_step, "torch_rng": torch.random.get_rng_state()}
    _io.save_checkpoint(member.checkpoint_path, state)


def _resume(member: Member) -> _State:
    """The member's state from its checkpoint (weights into ``member.model``), or fresh."""
    st = _State()
    if member.checkpoint_path is None:
        return st
    state = _io.load_checkpoint(member.checkpoint_path, member.X_train.device)
    if state is None:
        return st
    stored = state.get("meta")
    differ = _train._meta_differences(stored, member.checkpoint_meta)
    if state.get("format") != _train.CHECKPOINT_FORMAT or differ:
        raise _train.CheckpointMismatchError(
            f"checkpoint {member.checkpoint_path} was written for a different run (differs in "
            f"{differ}: stored {stored} ≠ {member.checkpoint_meta}); delete it or use another "
            f"path", differ, stored)
    member.model.load_state_dict(state["model"])
    st.records = list(state["records"])
    st.step = st.first_pending = st.resumed_from = int(state["step"])
    st.target_step = state["target_step"]
    return st


# ------------------------------------------------------------------------------ the loop


@dataclass(frozen=True)
class EnsembleOptions:
    """Options shared by every member of an ensemble.

    Attributes:
        loss: ``"squared"`` or ``"cross_entropy"`` (one loss per ensemble).
        batch_size: B (one per ensemble: minibatches are stacked [M, B, d]) or ``"full"``.
        callback: :data:`EnsembleCallback` after every batched step (None: none).
        handle_signals: defer SIGINT/SIGTERM to the next step boundary (main thread only).
        progress: show a tqdm bar over the steps; ``desc`` its label.
        chunk: samples per forward pass when evaluating full-set loss / accuracy.
    """

    loss: str = "squared"
    batch_size: int | str = 32
    callback: EnsembleCallback | None = None
    handle_signals: bool = True
    progress: bool = False
    desc: str | None = None
    chunk: int = 4096


def _check_members(members: Sequence[Member], opts: EnsembleOptions) -> tuple[int, int, bool]:
    """Validate the members against each other; returns (n, B, full_batch)."""
    if not members:
        raise ValueError("members must hold at least one Member")
    _train.check_choice(opts.loss, "loss", LOSSES)
    shapes = {(tuple(m.X_train.shape), tuple(m.Y_train.shape), m.X_train.dtype,
               m.X_train.device) for m in members}
    if len(shapes) != 1:
        raise ValueError(f"every member needs training data of one shape, dtype and device "
                         f"(an ensemble stacks them); got {sorted(map(str, shapes))}")
    for m in members:
        _train.check_positive_float(m.lr, "lr")
        _train.check_label_noise(m.label_noise, opts.loss)
        _train.check_positive_int(m.steps, "steps")
        _train.check_data(m.X_train, m.Y_train, "train", opts.loss, m.model)
        if m.Y_train.ndim != 2:
            raise ValueError("the ensemble engine needs targets [n, k] (one-hot or real)")
    n = int(members[0].X_train.shape[0])
    B = _train.resolve_batch_size(opts.batch_size, n)
    return n, B, B == n and opts.batch_size in (None, "full")


class _Loop:
    """The batched SGD loop over members (see :func:`train_ensemble`).

    The running members' indices, their learning rates and label-noise σ (zero for frozen
    members) and the number of steps until the next flush are kept up to date when a member
    stops (:meth:`refresh`) or after a flush (:meth:`schedule`), not recomputed every step.
    """

    def __init__(self, members: Sequence[Member], opts: EnsembleOptions) -> None:
        self.members, self.opts = list(members), opts
        self.n, self.B, self.full = _check_members(members, opts)
        self.spe = max(1, self.n // self.B)
        self.states = [_resume(m) for m in self.members]
        self.stack = Stack([m.model for m in self.members])
        dev, dt = members[0].X_train.device, members[0].X_train.dtype
        M, self.d = len(self.members), int(members[0].X_train.shape[1])
        # inputs and targets side by side, [M·n, d + k]: one gather per minibatch or epoch
        self.XY = torch.stack([torch.cat([m.X_train, m.Y_train], 1) for m in self.members]
                              ).reshape(M * self.n, -1)
        self.offset = torch.arange(M, device=dev).unsqueeze(1) * self.n
        self.lr = torch.tensor([m.lr for m in self.members], dtype=dt, device=dev)
        self.wd = torch.tensor([m.weight_decay for m in self.members], dtype=dt, device=dev)
        self.pending: list[Tensor] = []
        self.perms = torch.zeros(M, self.n, dtype=torch.long, device=dev)
        self.arange_b = torch.arange(self.B, device=dev)
        self.no_noise = torch.zeros(self.B, int(members[0].Y_train.shape[1]), dtype=dt,
                                    device=dev)

    def running(self) -> list[int]:
        """Indices of the members still training (recomputed; the loop keeps ``run``)."""
        return [i for i, st in enumerate(self.states) if st.status == "running"]

    def refresh(self) -> None:
        """Running members, η (0 for frozen members), σ of the noisy running members, and
        whether the running members are in step (then they share one minibatch position);
        recomputed only when the set of running members changed."""
        run = [i for i, st in enumerate(self.states) if st.status == "running"]
        if run == getattr(self, "run", None):
            return
        self.run = run
        on = torch.zeros_like(self.lr)
        on[run] = 1
        self.lr_run = self.lr * on
        self.noisy = [i for i in run if self.members[i].label_noise]
        sigma = [self.members[i].label_noise if i in self.noisy else 0.0
                 for i in range(len(self.members))]
        self.sigma = self.lr.new_tensor(sigma).view(-1, 1, 1)
        self.aligned = len({self.states[i].step for i in run}) <= 1
        self.data_epoch = -1   # lay out the epoch's rows again at the next batch
        self.noise_block = -1   # and stack the members' blocks of noise again

    def schedule(self) -> None:
        """Steps until the next step at which a running member records, ends or checkpoints
        (every running member advances one step per batched step)."""
        until = []
        for i in self.run:
            m, s, ev = self.members[i], self.states[i].step, self.events[i]
            j = bisect.bisect_right(ev, s)
            nxt = min(ev[j], m.steps) if j < len(ev) else m.steps
            if m.checkpoint_every:
                nxt = min(nxt, (s // m.checkpoint_every + 1) * m.checkpoint_every)
            until.append(nxt - s)
        # members in the loop advance together: watch the first running member's step
        self.due_member = self.run[0] if self.run else 0
        self.due_step = self.states[self.due_member].step + min(until, default=1)

    def start(self) -> None:
        """Record step 0 of fresh members; mark members already at their last step done;
        set up the schedule of flushes (also for subclasses with their own ``__init__``)."""
        self.events = [sorted({int(s) for s in m.measure_steps} | {0, m.steps})
                       for m in self.members]
        for i, (m, st) in enumerate(zip(self.members, self.states, strict=True)):
            if st.step == 0 and not st.records:
                rec = take_record(m, st, 0, self.spe, self.opts.loss, self.opts.chunk)
                if not math.isfinite(rec["train_loss"]):
                    self._diverge(i, 0)
            if st.status == "running" and st.step >= m.steps:
                st.status = "completed"
                save_member(m, st)
        self.refresh()
        self.schedule()

    def _diverge(self, i: int, at: int) -> None:
        st = self.states[i]
        st.status, st.diverged_at = "diverged", at
        self.stack.zero(i)

    def _epoch_rows(self, i: int, epoch: int) -> None:
        """Member i's permutation of epoch ``epoch`` (``train._epoch_perm``) into ``perms``."""
        st = self.states[i]
        if st.perm_epoch != epoch:
            self.perms[i] = _train._epoch_perm(self.members[i].seed, epoch, self.n)
            st.perm_epoch = epoch

    def batch(self) -> Tensor:
        """Each member's minibatch at its own step, inputs and targets side by side
        [M, B, d + k] (one gather). Members in step share the position in their epoch: the
        rows of every position of the epoch are laid out once, [steps per epoch, M·B]."""
        M, B = len(self.members), self.B
        if self.full:
            return self.XY.view(M, self.n, -1)
        if self.aligned and self.run:
            epoch, p = divmod(self.states[self.run[0]].step, self.spe)
            if epoch != self.data_epoch:
                for i in self.run:
                    self._epoch_rows(i, epoch)
                rows = (self.perms[:, :self.spe * B] + self.offset).view(M, self.spe, B)
                self.epoch_rows = rows.transpose(0, 1).reshape(self.spe, M * B)
                self.data_epoch = epoch
            idx = self.epoch_rows[p]
        else:
            pos = []
            for i, st in enumerate(self.states):
                epoch, p = divmod(st.step, self.spe)
                self._epoch_rows(i, epoch)
                pos.append(p)
            start = torch.tensor(pos, device=self.XY.device).unsqueeze(1) * B
            idx = (self.perms.gather(1, start + self.arange_b) + self.offset).reshape(-1)
        return self.XY.index_select(0, idx).view(M, B, -1)

    def noise(self) -> Tensor:
        """ξ(seed_m, step_m) of every member [M, B, k] (zeros for members without noise):
        rows of the members' blocks of ξ (:mod:`flatbook.label_noise`); members in step
        share the row, and their blocks are stacked once per block, [M, S, B, k]."""
        M, shape = len(self.members), tuple(self.no_noise.shape)
        S = _noise.block_steps(shape)
        dt, dev = self.no_noise.dtype, self.no_noise.device

        def block_of(i: int, step: int) -> Tensor:
            if i not in self.noisy:
                return self.no_noise.expand(S, *shape)
            return _noise.block(self.members[i].seed, step, shape, dt, dev)
        if not self.aligned:
            return torch.stack([_noise.xi(self.members[i].seed, self.states[i].step, shape,
                                          dt, dev) if i in self.noisy else self.no_noise
                                for i in range(M)])
        block, row = divmod(self.states[self.run[0]].step, S)
        if block != self.noise_block:
            step = self.states[self.run[0]].step
            self.noise_blocks = torch.stack([block_of(i, step) for i in range(M)])
            self.noise_block = block
        return self.noise_blocks[:, row]

    def step(self) -> None:
        """One batched step of every running member (frozen members: η = 0)."""
        xy = self.batch()
        xb, yb = xy[..., :self.d], xy[..., self.d:]
        if self.noisy:   # y + σξ with each member's own ξ(seed, step), as the solo loop draws it
            yb = yb + self.sigma * self.noise()   # σ = 0 for the others: y + 0 = y exactly
        self.pending.append(batched_step(self.stack, xb, yb, self.lr_run, self.wd,
                                         self.opts.loss))
        for i in self.run:
            self.states[i].step += 1

    def flush(self) -> None:
        """Check the pending minibatch losses and the parameters of every running member;
        a member with a non-finite or exploding value diverges at its first bad step."""
        if self.pending:
            vals = torch.stack(self.pending).detach().double().cpu()
            self.pending.clear()
            for i in self.run:
                thr = self.members[i].divergence_threshold
                bad = ~torch.isfinite(vals[:, i]) | (vals[:, i].abs() > thr)
                if bool(bad.any()):
                    self._diverge(i, self.states[i].first_pending + int(bad.nonzero()[0, 0]))
        finite = self.stack.finite()
        for i in self.run:
            if self.states[i].status != "running":
                continue
            if not bool(finite[i]):
                self._diverge(i, self.states[i].step)
            self.states[i].first_pending = self.states[i].step

    def due(self, stop: bool) -> bool:
        """Whether this step needs a flush (a record, an end, a checkpoint, a stop, a sync)."""
        return (stop or self.states[self.due_member].step >= self.due_step
                or len(self.pending) >= SYNC_EVERY or self.opts.callback is not None)

    def after_flush(self) -> None:
        """Records at measurement steps, checkpoints due, members that reached their end."""
        for i in self.run:
            m, st = self.members[i], self.states[i]
            if st.status != "running":   # diverged in this flush
                continue
            if st.step in self.events[i]:
                self.stack.load_into(i, m.model)
                rec = take_record(m, st, st.step, self.spe, self.opts.loss, self.opts.chunk)
                if not math.isfinite(rec["train_loss"]):
                    self._diverge(i, st.step)
                    continue
            if st.step >= m.steps:
                st.status = "completed"
                self.save(i)
            elif m.checkpoint_every and st.step % m.checkpoint_every == 0:
                self.save(i)
        self.refresh()
        self.schedule()

    def save(self, i: int) -> None:
        """Checkpoint member i (its current weights, solo format)."""
        self.stack.load_into(i, self.members[i].model)
        save_member(self.members[i], self.states[i])

    def results(self) -> list[_train.TrainResult]:
        """One :class:`flatbook.train.TrainResult` per member, trained weights in its model."""
        out = []
        for i, (m, st) in enumerate(zip(self.members, self.states, strict=True)):
            if st.status == "completed":
                self.stack.load_into(i, m.model)
            done = st.step if st.status == "completed" else int(st.diverged_at or 0)
            out.append(_train.TrainResult(
                records=st.records, status=st.status, steps_done=done, steps=m.steps,
                diverged_at=st.diverged_at, target_step=st.target_step,
                steps_per_epoch=self.spe, eval_indices=[int(j) for j in m.eval_indices],
                resumed_from=st.resumed_from, model=m.model))
        return out


def train_ensemble(members: Sequence[Member],
                   options: EnsembleOptions | None = None) -> list[_train.TrainResult]:
    """Train every member together, one batched SGD step for all per iteration
    (:func:`batched_step`), each with its own data order, label noise, η, schedule,
    checkpoint and divergence status; returns one :class:`flatbook.train.TrainResult` per
    member, in order, as :func:`flatbook.train.train` would for that member alone.

    Interrupts (SIGINT / SIGTERM, or KeyboardInterrupt from the callback) checkpoint every
    running member at the step boundary and propagate.
    """
    opts = options or EnsembleOptions()
    return run_loop(_Loop(members, opts), opts)


def run_loop(loop: _Loop, opts: EnsembleOptions) -> list[_train.TrainResult]:
    """Drive ``loop`` (this engine's :class:`_Loop` or a subclass, e.g. the ``torch.func``
    engine's) to the end: initial records, then batched steps with flushes (divergence
    checks, records, checkpoints) when due; an interrupt checkpoints every running member at
    a step boundary and propagates."""
    consistent = True
    total = max(m.steps for m in loop.members)
    bar = _train._progress(total, min(st.step for st in loop.states), opts.desc, opts.progress)
    try:
        with _train._DeferredStop(opts.handle_signals) as stop:
            loop.start()
            while loop.run:
                consistent = False
                loop.step()
                bar.update(1)
                if loop.due(stop.requested is not None):
                    loop.flush()
                    loop.after_flush()
                consistent = True
                if opts.callback is not None:
                    opts.callback([st.step for st in loop.states])
                if stop.requested is not None:
                    raise KeyboardInterrupt(f"{stop.requested} at ensemble steps "
                                            f"{sorted({st.step for st in loop.states})}")
    except KeyboardInterrupt:
        if consistent:
            for i in loop.run:
                loop.save(i)
        raise
    finally:
        bar.close()
    return loop.results()


__all__ = ["ACTIVATIONS", "LOSSES", "EnsembleOptions", "Member", "batched_step", "mlp_layout",
           "run_loop", "take_record", "train_ensemble"]
