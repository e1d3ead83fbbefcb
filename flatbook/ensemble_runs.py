"""Ensemble runs in the result store: many configs trained by :mod:`flatbook.ensemble` (MLPs)
or :mod:`flatbook.ensemble_func` (any other model, :func:`step_engine`), each
written as its own run folder, exactly as :func:`flatbook.experiment.run` writes it.

Every member keeps the solo run's guarantees: same run id and folder (``config.json``,
``checkpoint.pt``, ``results.json``, sealed), its own lock (``experiment.run_lock``), resumable
from its own checkpoint after kill −9 with the same numbers, a damaged file named with its way
out. Its numerics fingerprint carries ``"engine": "ensemble"`` (the batched step agrees with
the solo loop to rounding, not bit for bit; a member's numbers do not depend on how many
members share its batch, so the member count is not part of it), and ``"ensemble_step":
"vmap"`` when the ``torch.func`` step trained it.

Grouping (:func:`plan_groups`): configs that can share one batched step — same architecture,
data set and size, dtype, device, threads, loss and batch size; plain SGD (no momentum) —
form ensembles of at most :func:`max_members` (chosen by memory).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from flatbook import _io
from flatbook import ensemble as _ens
from flatbook import ensemble_func as _func
from flatbook import experiment as E
from flatbook import models as _models
from flatbook import store as _store
from flatbook import train as _train

MAX_MEMBERS = 64
"""Most members in one ensemble (measurement, not memory, bounds the gain beyond this)."""
MEMORY_FRACTION = 0.25
"""Share of the available memory one ensemble may use (:func:`max_members`)."""

MeasureFor = Callable[[E.RunConfig, Any], "_train.MeasureFn | None"]
"""``measure_for(config, dataset) -> measure``: the measurement function of one member."""


def step_engine(config: E.RunConfig) -> str:
    """Which batched step trains ``config``'s members: ``"mlp"`` (the hand-batched MLP step of
    :mod:`flatbook.ensemble`, for the MLPs and activations it implements) or ``"vmap"``
    (:mod:`flatbook.ensemble_func`: ``torch.func`` over any other ``nn.Sequential`` model).
    Recorded in the members' numerics fingerprint as ``"ensemble_step"`` (``"vmap"`` only:
    a fingerprint without it is the MLP step's)."""
    act = config.model_kw.get("activation", "relu")
    return "mlp" if config.model == "mlp" and act in _ens.ACTIVATIONS else _func.STEP_NAME


def unsupported(config: E.RunConfig) -> str | None:
    """Why ``config`` cannot be an ensemble member (None: it can): the ensemble engines train
    the models of :mod:`flatbook.models` without BatchNorm (:func:`step_engine` says which
    step) with plain SGD (no momentum, Nesterov or Adam) and the squared or cross-entropy
    loss."""
    if config.optimizer != "sgd" or config.momentum or config.nesterov:
        return "an optimizer other than plain SGD"
    if config.loss not in _ens.LOSSES:
        return f"loss {config.loss!r}"
    name = _models.ALIASES.get(config.model, config.model)
    if name not in _models.MODELS:
        return f"model {config.model!r} (the ensemble engines train {sorted(_models.MODELS)})"
    if config.model_kw.get("batch_norm"):
        return "BatchNorm (its batch statistics are not batched over members)"
    return None


def group_key(config: E.RunConfig) -> tuple:
    """What members of one ensemble share: architecture, data (set, size, standardisation),
    dtype, device, threads, loss and batch size (their minibatches are stacked)."""
    return (config.model, E.stable_hash(config.model_kw), config.dataset, str(config.classes),
            config.n_train, config.standardize, config.dtype, config.device, config.threads,
            config.loss, str(config.batch_size), config.data_dir)


def member_bytes(config: E.RunConfig, n_train: int, n_in: int, n_out: int) -> int:
    """Memory of one member, in bytes: its data (n·(d + k)), parameters, their gradients and
    update temporaries (4 × params) and the activations of a minibatch (3 × B × widths; for
    the ``torch.func`` step, :func:`flatbook.ensemble_func.activation_bytes` of the model
    built for the data set's input shape)."""
    if step_engine(config) != "mlp":
        return _func_member_bytes(config, n_train, n_in, n_out)
    widths = [n_in, *list(config.model_kw.get("hidden", [])), n_out]
    params = sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:], strict=True))
    B = n_train if config.batch_size == "full" else int(config.batch_size)
    item = torch.tensor([], dtype=getattr(torch, config.dtype)).element_size()
    return item * (n_train * (n_in + n_out) + 4 * params + 3 * B * sum(widths))


def _func_member_bytes(config: E.RunConfig, n_train: int, n_in: int, n_out: int) -> int:
    """:func:`member_bytes` of a member of the ``torch.func`` step: the model of ``config``
    built for the input shape of its data set (its registry entry, else the shape of the
    loaded data, else (n_in,))."""
    from flatbook import data as _data

    spec = _data.DATASETS.get(config.dataset)
    if spec is not None:
        shape: tuple[int, ...] = tuple(spec.input_shape)
    else:
        try:
            shape = tuple(E._load_data(config).input_shape)
        except (OSError, ValueError, ImportError):
            shape = (int(n_in),)
    net = _models.build(config.model, shape, n_out, seed=0,
                        dtype=getattr(torch, config.dtype), **config.model_kw)
    B = n_train if config.batch_size == "full" else int(config.batch_size)
    return _func.activation_bytes(net, shape, B, n_train)


def max_members(per_member: int, available: int | None = None) -> int:
    """Members per ensemble: ``MEMORY_FRACTION`` of the available memory (``available``
    bytes, else the machine's free memory) over ``per_member`` bytes, in 1..MAX_MEMBERS."""
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
            available = 1 << 30
    return max(1, min(MAX_MEMBERS, int(MEMORY_FRACTION * available) // max(1, per_member)))


def plan_groups(configs: Sequence[E.RunConfig], *, size: int | Callable[[E.RunConfig], int]
                = MAX_MEMBERS, min_groups: int = 1) -> list[list[int]]:
    """Indices of ``configs`` grouped into ensembles: compatible configs (:func:`group_key`)
    in order of appearance, split into balanced groups of at most ``size`` (an int or
    ``size(config)``), and split further while there are fewer than ``min_groups`` (one
    per worker). Configs that :func:`unsupported` rejects are left out."""
    keyed: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        if unsupported(c) is None:
            keyed.setdefault(group_key(c), []).append(i)
    groups: list[list[int]] = []
    for idx in keyed.values():
        cap = size(configs[idx[0]]) if callable(size) else int(size)
        k = math.ceil(len(idx) / max(1, cap))
        groups += [idx[j::k] for j in range(k)]
    while len(groups) < min_groups and max(map(len, groups), default=0) > 1:
        big = max(groups, key=len)
        groups.remove(big)
        groups += [big[0::2], big[1::2]]
    return [sorted(g) for g in groups]


def _member(config: E.RunConfig, ds: Any, net: torch.nn.Module, steps: int, fp: dict,
            rd: Path, measure: _train.MeasureFn | None, device: torch.device) -> _ens.Member:
    return _ens.Member(
        model=net.to(device), X_train=ds.X_train.to(device), Y_train=ds.Y_train.to(device),
        X_test=ds.X_test.to(device), Y_test=ds.Y_test.to(device), lr=config.lr, steps=steps,
        measure_steps=_train.measurement_steps(steps, config.measure_every, config.schedule),
        measure=measure, seed=config.seed,
        eval_indices=_train.eval_subset(ds.n_train, config.eval_size, config.data_seed),
        weight_decay=config.weight_decay, label_noise=config.label_noise,
        target_loss=config.target_loss, divergence_threshold=config.divergence_threshold,
        checkpoint_path=rd / "checkpoint.pt", checkpoint_every=config.checkpoint_every,
        checkpoint_meta={"run_id": config.run_id, "config_hash": config.config_hash,
                         "numerics": fp})


def _prepared(configs: Sequence[E.RunConfig]) -> list[tuple[Any, torch.nn.Module, int]]:
    """``experiment.prepare`` for each config, loading each distinct data set once."""
    cache: dict[tuple, Any] = {}
    out = []
    for c in configs:
        key = E._data_key(c)
        if key not in cache:
            cache[key] = E._load_data(c)
        ds = cache[key]
        out.append((ds, E._build_model(c, ds), E._resolve_steps(c, ds)))
    return out


def run_ensemble(configs: Sequence[E.RunConfig], results_dir: str | Path =
                 E.DEFAULT_RESULTS_DIR, *, measure_for: MeasureFor | None = None,
                 overwrite: bool | Sequence[bool] = False,
                 callback: _ens.EnsembleCallback | None = None) -> list[E.Results]:
    """Run (or resume, or load) ``configs`` as one ensemble; every member is stored as
    :func:`flatbook.experiment.run` stores the solo run of its config.

    Args:
        configs: compatible configs (one :func:`group_key`; none :func:`unsupported`).
        results_dir: the result store.
        measure_for: ``measure_for(config, dataset)`` → the member's measurement function
            (default: built from ``config.measures``, as ``experiment.run`` does).
        overwrite: start over (one flag, or one per config).
        callback: :data:`flatbook.ensemble.EnsembleCallback` (monitoring; KeyboardInterrupt
            raised there checkpoints every member and stops).

    Returns ``Results`` in the order of ``configs``. Raises as ``experiment.run`` does (store
    problems before training; a failed ensemble records ``status="failed"`` in every
    member's ``results.json`` and propagates).
    """
    configs = list(configs)
    for c in configs:
        if not isinstance(c, E.RunConfig):
            raise TypeError(f"configs must be RunConfig objects; got {type(c).__name__}")
        why = unsupported(c)
        if why is not None:
            raise ValueError(f"run {c.run_id} cannot join an ensemble: {why}; use engine='solo'")
    if len({group_key(c) for c in configs}) > 1:
        raise ValueError("configs of one ensemble must share architecture, data, dtype, device, "
                         "threads, loss and batch size (flatbook.ensemble_runs.plan_groups)")
    flags = [overwrite] * len(configs) if isinstance(overwrite, bool) else list(overwrite)
    out: list[E.Results | None] = [None] * len(configs)
    for i, c in enumerate(configs):
        rd = E.run_dir_for(c, results_dir)
        if not flags[i] and (rd / "results.json").is_file():
            _, doc = E._read_results(rd)
            if doc.get("status") in E.FINISHED:
                out[i] = E._load_finished(c, results_dir)
    todo = [i for i in range(len(configs)) if out[i] is None]
    if todo:
        for i, res in zip(todo, _train_group([configs[i] for i in todo], Path(results_dir),
                                             measure_for or E.default_measure,
                                             [flags[i] for i in todo], callback), strict=True):
            out[i] = res
    return out  # type: ignore[return-value]


def _train_group(configs: list[E.RunConfig], root: Path, measure_for: MeasureFor,
                 flags: list[bool], callback: _ens.EnsembleCallback | None) -> list[E.Results]:
    """Lock, open, train and write the members that are not finished."""
    t0 = time.perf_counter()
    device = E._resolve_device(configs[0].device)
    prepared = _prepared(configs)
    n_params = sum(p.numel() for p in prepared[0][1].parameters())
    threads = E.resolve_threads(configs[0], device, n_params)
    fp = E.numerics_fingerprint(device, threads, configs[0].dtype, engine="ensemble")
    if step_engine(configs[0]) != "mlp":
        fp["ensemble_step"] = step_engine(configs[0])
    rds = [E.run_dir_for(c, root) for c in configs]
    for c, again in zip(configs, flags, strict=True):
        _store.check_run_folder(root, c.run_id, files=not again)
        if again:  # never deleted: moved to stale/<run_id>-<reason>/, and said so
            _store.say_moved(E.restart_aside(c, root))
    for rd in rds:
        _io.check_writable(rd, "run folder")
    done: dict[int, E.Results] = {}
    with contextlib.ExitStack() as locks:
        for c in configs:
            locks.enter_context(E.run_lock(root, c.run_id))
        for i, c in enumerate(configs):
            res = E.open_run(c, root, fp)  # a started-over run was moved aside above
            if res is not None:
                done[i] = res
        live = [i for i in range(len(configs)) if i not in done]
        members = [_member(configs[i], *prepared[i], fp, rds[i],
                           measure_for(configs[i], prepared[i][0]), device) for i in live]
        results = _train_members([configs[i] for i in live], members, [prepared[i] for i in live],
                                 fp, callback)
        prov = {**_io.provenance(), "elapsed_s": time.perf_counter() - t0,
                "device": str(device), "threads": threads, "ensemble_members": len(live)}
        for i, r in zip(live, results, strict=True):
            ds, net, _ = prepared[i]
            doc = E._base_doc(configs[i], ds, net, fp)
            doc.update(r.summary())
            doc["provenance"] = {**prov, "resumed_from": r.resumed_from}
            _io.write_json(rds[i] / "results.json", _io.seal(doc))
            _io.previous_checkpoint(rds[i] / "checkpoint.pt").unlink(missing_ok=True)
            done[i] = E.Results(rds[i], configs[i], E._read_results(rds[i])[1])
    return [done[i] for i in range(len(configs))]


def _train_members(configs: list[E.RunConfig], members: list[_ens.Member],
                   prepared: list[tuple[Any, torch.nn.Module, int]], fp: dict,
                   callback: _ens.EnsembleCallback | None) -> list[_train.TrainResult]:
    """:func:`flatbook.ensemble.train_ensemble` with the store's error policy: store problems
    and bad data propagate untouched, any other error is recorded in every member's
    ``results.json`` as ``status="failed"``."""
    if not members:
        return []
    old = torch.get_num_threads()
    c0 = configs[0]
    try:
        torch.set_num_threads(int(fp["threads"]))
        opts = _ens.EnsembleOptions(loss=c0.loss, batch_size=c0.batch_size, callback=callback,
                                    progress=c0.progress, desc=f"ensemble of {len(members)}")
        if step_engine(c0) == "mlp":
            return _ens.train_ensemble(members, opts)
        return _func.train_func_ensemble(members, opts)
    except KeyboardInterrupt:
        raise
    except _train.CheckpointMismatchError as e:
        if e.differ == ["numerics"]:
            raise E.NumericsMismatchError(
                f"a member's checkpoint was written under other numerics "
                f"({'; '.join(E.numerics_diff((e.stored or {}).get('numerics'), fp))}): "
                f"resume it with the same settings, or {E.RESTART}") from None
        raise
    except _io.DamagedFileError as e:
        raise _io.DamagedFileError(e.path, e.problem, e.way_out.replace(
            _io.RESTART_DEFAULT, E.RESTART)) from None
    except (_io.StoreProblem, _train.BadDataError):
        raise
    except Exception as e:
        for c, m, (ds, net, _) in zip(configs, members, prepared, strict=True):
            doc = E._base_doc(c, ds, net, fp)
            doc.update(status="failed", error=f"{type(e).__name__}: {e}",
                       traceback=traceback.format_exc(limit=20), provenance=_io.provenance())
            with contextlib.suppress(OSError):
                _io.write_json(m.checkpoint_path.parent / "results.json", _io.seal(doc))
        raise
    finally:
        torch.set_num_threads(old)


__all__ = ["MAX_MEMBERS", "group_key", "max_members", "member_bytes", "plan_groups",
           "run_ensemble", "step_engine", "unsupported"]
