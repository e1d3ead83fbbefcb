"""Experiments: run configurations, a result store on disk, resumable runs and sweeps.

This module runs configs (:func:`run`, :func:`run_one`, :func:`sweep`) and is the one import
for everything about experiments; the concepts live in their own modules, whose names it
re-exports (``from flatbook.experiment import X`` works for each of them):

- :mod:`flatbook.run_config` — :class:`RunConfig` (fields declared in
  :data:`flatbook.runspec.PARAMS`), its config hash and run id, :func:`run_dir_for`,
  :func:`grid`;
- :mod:`flatbook.run_numerics` — the numerics fingerprint (device, threads, dtype, torch,
  engine) that decides a run's numbers besides its config;
- :mod:`flatbook.run_results` — the store's layout and documents, their verification
  (seals, store format, damaged files), :class:`Results`, :func:`load_results` and its version
  policy, :func:`check_numerics`;
- :mod:`flatbook.run_inspect` — :func:`inspect_store` / :class:`RunInfo` (``show``, ``plot``);
- :mod:`flatbook.run_folder` — the steps under a run's lock (:func:`open_run`,
  :func:`restart_aside`); the lock itself is :mod:`flatbook.locks`.

A run (:func:`run`) goes through named stages: reuse finished results; plan (device, data,
model, step count, threads, fingerprint: every data-dependent check before anything is
written); move the old run aside when started over; prove the folder writable; under the lock,
open the run, train (resuming from ``checkpoint.pt``) and write ``results.json``.

Parallel execution: :func:`sweep` calls :func:`run_one` (plain dict in, plain dict out) once
per config — the unit a job scheduler can submit; :mod:`flatbook.executors` submits it as one
submitit job per config (local processes or Slurm).
"""

from __future__ import annotations

import contextlib
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flatbook import data as _data
from flatbook import models as _models
from flatbook import runspec
from flatbook import store as _store
from flatbook import train as _train
from flatbook._io import RESTART_DEFAULT as _io_RESTART_DEFAULT
from flatbook._io import (
    DamagedFileError,
    StoreProblem,
    check_writable,
    previous_checkpoint,
    provenance,
    seal,
    stable_hash,
    write_json,
)
from flatbook._io import code_hash as code_hash
from flatbook._io import load_checkpoint as load_checkpoint
from flatbook._io import read_sealed as read_sealed

# The concepts' own modules: their public names are this module's API (see __all__), the
# private ones are shared with the ensemble engine (flatbook.ensemble_runs).
from flatbook.locks import (
    FOLDER_LOCK,
    LOCK_TRIES,
    RunLockedError,
    lock_holder,
    lock_path,
    run_lock,
)
from flatbook.run_config import (
    DEFAULT_RESULTS_DIR,
    DEFAULT_STEPS,
    DEVICES,
    MODEL_OPTION_KINDS,
    OPERATIONAL,
    RunConfig,
    grid,
    run_dir_for,
)
from flatbook.run_folder import STALE_TMP_S, open_run, restart_aside
from flatbook.run_folder import _restart_reason as _restart_reason
from flatbook.run_inspect import SHOW_STATUSES, RunInfo, inspect_run, inspect_store
from flatbook.run_inspect import _inspect_finished as _inspect_finished
from flatbook.run_inspect import _inspect_partial as _inspect_partial
from flatbook.run_numerics import (
    ENGINES,
    NUMERICS,
    SMALL_MODEL,
    expected_numerics,
    numerics_diff,
    numerics_fingerprint,
    resolve_threads,
)
from flatbook.run_numerics import _device_name as _device_name
from flatbook.run_numerics import _resolve_device as _resolve_device
from flatbook.run_results import (
    CHECKS,
    FINISHED,
    NUMERICS_POLICIES,
    RESTART,
    STATUSES,
    STORE_FORMAT,
    NumericsMismatchError,
    NumericsWarning,
    Results,
    StaleResultsError,
    check_numerics,
    load_results,
    read_config_file,
)
from flatbook.run_results import _base_doc as _base_doc
from flatbook.run_results import _check_format as _check_format
from flatbook.run_results import _check_version as _check_version
from flatbook.run_results import _config_doc as _config_doc
from flatbook.run_results import _flag_numerics as _flag_numerics
from flatbook.run_results import _load_finished as _load_finished
from flatbook.run_results import _major_minor as _major_minor
from flatbook.run_results import _migrate_results as _migrate_results
from flatbook.run_results import _read_results as _read_results
from flatbook.run_results import _results_way_out as _results_way_out
from flatbook.run_results import _sealed_format as _sealed_format
from flatbook.run_results import _unsealed as _unsealed
from flatbook.run_results import _version_key as _version_key

# ------------------------------------------------------------------------------ preparing

def _data_options(config: RunConfig) -> dict[str, Any]:
    """The arguments of ``flatbook.data.load`` for ``config`` (also the key under which
    :func:`validate` loads each distinct data set once)."""
    return {"name": config.dataset, "classes": config.classes, "n_train": config.n_train,
            "n_test": config.n_test, "seed": config.data_seed, "standardize": config.standardize,
            "one_hot": True, "flatten": config.model == "mlp", "dtype": config.dtype,
            "data_dir": config.data_dir}  # fmt: skip


def _data_key(config: RunConfig) -> str:
    """Hash of :func:`_data_options`: configs with the same key load the same data set."""
    return stable_hash(_data_options(config))


def _load_data(config: RunConfig) -> _data.Dataset:
    """The data set of ``config`` (:func:`flatbook.data.load`)."""
    return _data.load(**_data_options(config))


def _resolve_steps(config: RunConfig, ds: _data.Dataset) -> int:
    """The run's step count (``steps``, or ``epochs`` × ⌊n_train / B⌋), after checking
    ``eval_size`` and the batch size against the training set and the schedule against it."""
    if config.eval_size > ds.n_train:
        raise ValueError(
            f"eval_size={config.eval_size} exceeds the training set (n_train={ds.n_train}); "
            f"use eval_size ≤ {ds.n_train} (--eval-size {ds.n_train})"
        )
    B = _train.resolve_batch_size(config.batch_size, ds.n_train)
    spe = max(1, ds.n_train // B)
    steps = config.steps if config.steps is not None else int(config.epochs) * spe
    _train.measurement_steps(steps, config.measure_every, config.schedule)
    return int(steps)


def _build_model(config: RunConfig, ds: _data.Dataset) -> torch.nn.Module:
    """The untrained network of ``config`` for the inputs of ``ds`` (seeded); a model option
    torch rejects is a ValueError naming the options allowed."""
    try:
        return _models.build(
            config.model, ds.input_shape, ds.n_classes, seed=config.seed,
            dtype=_data.as_dtype(config.dtype), **config.model_kw,
        )  # fmt: skip
    except (RuntimeError, TypeError) as e:  # torch's own errors: name the options instead
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"model_kw {dict(config.model_kw)} cannot build model {config.model!r} for inputs "
            f"{tuple(ds.input_shape)} ({first}); allowed options: "
            f"{list(_models.MODEL_OPTIONS[config.model])}"
        ) from None


def prepare(config: RunConfig) -> tuple[_data.Dataset, torch.nn.Module, int]:
    """Load the data and build the model for ``config`` and resolve the step count; runs the
    data-dependent checks (batch size vs. training-set size, schedule vs. steps, model vs.
    input shape) before any training.

    Returns ``(dataset, model, steps)``.
    """
    ds = _load_data(config)
    steps = _resolve_steps(config, ds)
    return ds, _build_model(config, ds), steps


def validate(configs: Iterable[RunConfig]) -> None:
    """Run the data-dependent checks of :func:`prepare` for many configs, loading each distinct
    data set and building each distinct architecture once (a sweep fails before its first run
    instead of part-way through)."""
    datasets: dict[tuple, _data.Dataset] = {}
    archs: set[str] = set()
    for c in configs:
        key = _data_key(c)
        if key not in datasets:
            datasets[key] = _load_data(c)
        ds = datasets[key]
        _resolve_steps(c, ds)
        arch = stable_hash([c.model, c.model_kw, list(ds.input_shape), ds.n_classes, c.dtype])
        if arch not in archs:
            _build_model(c, ds)
            archs.add(arch)


# ------------------------------------------------------------------------------ run


def run(
    config: RunConfig,
    results_dir: str | Path = DEFAULT_RESULTS_DIR,
    *,
    overwrite: bool = False,
    callback: _train.Callback | None = None,
    measure: _train.MeasureFn | None = None,
) -> Results:
    """Run ``config`` (or resume it, or return its finished results) and store the results.

    - finished results for this config exist (and ``overwrite`` is False): they are verified,
      loaded and returned (no training; another numerics fingerprint is flagged);
    - a checkpoint exists: training resumes from it (refused under another numerics
      fingerprint: :class:`NumericsMismatchError`);
    - a store file is damaged: :class:`~flatbook._io.DamagedFileError` naming it and the way
      out, before any training and without recording anything;
    - the run diverges: ``status="diverged"`` with ``diverged_at`` (no exception);
    - any other error: ``results.json`` records ``status="failed"`` and the error, then the
      exception propagates. KeyboardInterrupt / SIGTERM: the checkpoint is kept, no
      ``results.json`` is written, the interrupt propagates. A full disk:
      :class:`~flatbook._io.NoSpaceError`, the previous checkpoint kept.

    One process trains a run id at a time (:func:`run_lock`); the run folder is proven
    writable before any training.

    Store faults (a symbolic link for the run folder, ``.locks`` or a run file; a folder where
    a file should be) raise :class:`flatbook.store.StoreFaultError` before anything is loaded.

    Args:
        overwrite: start over (the CLI's ``--restart``): the run's folder is first moved aside
            to ``results_dir/stale/<run_id>-<reason>/`` (nothing is deleted; a
            :class:`flatbook.store.MovedAsideWarning` names it and the reason).
        measure: override the measurement function (default: built from ``config.measures``).
    """
    if not isinstance(config, RunConfig):
        raise TypeError(f"config must be a RunConfig; got {type(config).__name__}")
    rd = run_dir_for(config, results_dir)
    _store.check_run_folder(results_dir, config.run_id, files=not overwrite)
    if not overwrite:
        finished = _reuse_finished(config, results_dir)
        if finished is not None:
            return finished
    plan = _plan_run(config)  # data-dependent checks: before anything is written
    if overwrite:
        _store.say_moved(restart_aside(config, results_dir))
    check_writable(rd, "run folder")
    with run_lock(results_dir, config.run_id):
        finished = open_run(config, results_dir, plan.fp)
        if finished is not None:  # finished by another process meanwhile
            return finished
        result = _train_locked(config, plan, rd, callback, measure)
        _write_finished(config, plan, rd, result)
    return Results(rd, config, _read_results(rd)[1])


@dataclass
class _RunPlan:
    """What a run is computed with, resolved before anything is written (:func:`_plan_run`).

    Attributes:
        device: the torch device; ``t0``: ``time.perf_counter()`` when planning began (the
            run's ``elapsed_s`` counts from it).
        ds, net, steps: the data set, the network (moved to ``device`` by the training
            stage) and the step count (:func:`prepare`).
        threads: intra-op threads (:func:`resolve_threads`); ``fp``: the numerics fingerprint.
    """

    device: torch.device
    t0: float
    ds: _data.Dataset
    net: torch.nn.Module
    steps: int
    threads: int
    fp: dict[str, Any]


def _reuse_finished(config: RunConfig, results_dir: str | Path) -> Results | None:
    """The stored results of ``config`` if it finished (completed or diverged), verified —
    a damaged ``results.json`` or ``config.json`` is named, never reused; a ``config.json``
    moved aside is rewritten from the results (best effort: the store may be read-only).
    ``None`` when there is nothing finished to reuse."""
    rd = run_dir_for(config, results_dir)
    res_path, cfg_path = rd / "results.json", rd / "config.json"
    if not res_path.is_file():
        return None
    _, doc = _read_results(rd)
    if doc.get("status") not in FINISHED:
        return None
    if cfg_path.is_file():
        read_config_file(cfg_path)
    else:
        with contextlib.suppress(OSError):
            write_json(cfg_path, _config_doc(config, doc.get("numerics")))
    return _load_finished(config, results_dir)


def _plan_run(config: RunConfig) -> _RunPlan:
    """Resolve the device, load the data, build the model, count the steps and parameters
    and fix the threads and the numerics fingerprint of a run of ``config`` (a thread count
    above the cores available is capped with a warning)."""
    device = _resolve_device(config.device)
    t0 = time.perf_counter()
    ds, net, steps = prepare(config)
    n_params = sum(p.numel() for p in net.parameters())
    threads = resolve_threads(config, device, n_params, note=True)
    fp = numerics_fingerprint(device, threads, config.dtype)
    return _RunPlan(device, t0, ds, net, steps, threads, fp)


def _train_locked(config: RunConfig, plan: _RunPlan, rd: Path,
                  callback: _train.Callback | None,
                  measure: _train.MeasureFn | None) -> _train.TrainResult:  # fmt: skip
    """Train (or resume) the run under its lock with the plan's threads (restored after).

    A checkpoint of other numerics raises :class:`NumericsMismatchError`; a damaged
    checkpoint names the store's way out; store problems, bad data and interrupts propagate
    unrecorded; any other error is recorded as ``status="failed"`` and propagates."""
    old_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(plan.threads)
        return _train_solo(config, plan, rd, callback, measure)
    except KeyboardInterrupt:
        raise
    except _train.CheckpointMismatchError as e:
        if e.differ == ["numerics"]:
            diff = numerics_diff((e.stored or {}).get("numerics"), plan.fp)
            raise NumericsMismatchError(
                f"{rd / 'checkpoint.pt'} was written under other numerics ({'; '.join(diff)}): "
                f"resuming here would mix numbers — resume it with the same settings, or {RESTART}"
            ) from None
        raise
    except DamagedFileError as e:  # a checkpoint: name the store's way out
        raise DamagedFileError(e.path, e.problem,
                               e.way_out.replace(_io_RESTART_DEFAULT, RESTART)) from None
    except (StoreProblem, _train.BadDataError):
        raise  # nothing to record: the store or the data, not the run, is at fault
    except Exception as e:
        _record_failure(config, plan, rd, e)
        raise
    finally:
        torch.set_num_threads(old_threads)


def _train_solo(config: RunConfig, plan: _RunPlan, rd: Path,
                callback: _train.Callback | None,
                measure: _train.MeasureFn | None) -> _train.TrainResult:  # fmt: skip
    """One call of :func:`flatbook.train.train` for the run: the network on the plan's
    device, the measurement from ``config.measures`` unless ``measure`` is given, and
    ``checkpoint.pt`` tagged with the run id, config hash and fingerprint."""
    device = plan.device
    plan.net = plan.net.to(device)
    if measure is None:
        measure = default_measure(config, plan.ds)
    ds = plan.ds
    return _train.train(
        plan.net, ds.X_train.to(device), ds.Y_train.to(device), ds.X_test.to(device),
        ds.Y_test.to(device), options=runspec.train_options(config, steps=plan.steps),
        measure=measure, checkpoint_path=rd / "checkpoint.pt", callback=callback,
        checkpoint_meta={"run_id": config.run_id, "config_hash": config.config_hash,
                         "numerics": plan.fp},
        desc=config.run_id[: config.run_id.rfind("-")],
    )  # fmt: skip


def _record_failure(config: RunConfig, plan: _RunPlan, rd: Path, e: Exception) -> None:
    """Write ``results.json`` with ``status="failed"``, the error and its traceback (call
    inside the ``except`` block; best effort: a store that cannot be written keeps the
    original error)."""
    doc = _base_doc(config, plan.ds, plan.net, plan.fp)
    doc.update(status="failed", error=f"{type(e).__name__}: {e}",
               traceback=traceback.format_exc(limit=20))  # fmt: skip
    doc["provenance"] = {**provenance(), "elapsed_s": time.perf_counter() - plan.t0,
                         "device": str(plan.device), "threads": plan.threads}  # fmt: skip
    with contextlib.suppress(OSError):
        write_json(rd / "results.json", seal(doc))


def _write_finished(config: RunConfig, plan: _RunPlan, rd: Path,
                    result: _train.TrainResult) -> None:  # fmt: skip
    """Write the finished run's sealed ``results.json`` (``result.summary()`` and the
    provenance) and drop ``checkpoint.prev.pt``: ``checkpoint.pt`` is the trained model."""
    doc = _base_doc(config, plan.ds, plan.net, plan.fp)
    doc.update(result.summary())
    doc["provenance"] = {
        **provenance(),
        "elapsed_s": time.perf_counter() - plan.t0,
        "resumed_from": result.resumed_from,
        "device": str(plan.device),
        "threads": plan.threads,
    }
    write_json(rd / "results.json", seal(doc))
    previous_checkpoint(rd / "checkpoint.pt").unlink(missing_ok=True)


def default_measure(config: RunConfig, ds: _data.Dataset) -> _train.MeasureFn | None:
    """The measurement a run takes from ``config.measures`` when none is given (``None`` for
    no measures): :func:`flatbook.train.make_measure` with the run's tolerance, η, B and the
    training-set size (T7's p = B/n)."""
    if not config.measures:
        return None
    B = _train.resolve_batch_size(config.batch_size, ds.n_train)
    return _train.make_measure(config.measures, tol=config.sharpness_tol, lr=config.lr,
                               batch_size=None if config.batch_size == "full" else B,
                               n_train=ds.n_train)


# ------------------------------------------------------------------------------ jobs, sweeps


def run_one(
    config: Mapping[str, Any],
    results_dir: str | Path = DEFAULT_RESULTS_DIR,
    *,
    callback: _train.Callback | None = None,
) -> dict:
    """Job entry point: run one config given as a plain dict; never raises for a failed run
    (the failure is recorded in ``results.json`` with ``status="failed"`` and the error).

    Returns ``{"run_id", "status", "skipped", "error", "final"}`` (plain JSON-able dict), so a
    scheduler (e.g. submitit, see :mod:`flatbook.executors`) can pickle the call and its result.
    A store problem (damaged file, full disk, run locked by another process, other numerics)
    is returned with status ``"damaged"`` / ``"interrupted"`` / ``"running"`` / ``"failed"``
    and its message, and not recorded (the run is not at fault).
    ``callback`` is passed to :func:`run` (monitoring; raising KeyboardInterrupt in it
    checkpoints and stops the run).
    """
    cfg = RunConfig.from_dict(config)
    rd = run_dir_for(cfg, results_dir)
    skipped = False
    if (rd / "results.json").is_file():
        try:
            skipped = _read_results(rd)[1].get("status") in FINISHED
        except (OSError, ValueError):
            skipped = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NumericsWarning)  # summarised in the outcome
            res = run(cfg, results_dir, callback=callback)
        return {"run_id": cfg.run_id, "status": res.status, "skipped": skipped, "error": None,
                "final": res.final}  # fmt: skip
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - recorded in results.json
        return failure_outcome(cfg, rd, e)


def failure_outcome(cfg: RunConfig, rd: Path, e: BaseException) -> dict[str, Any]:
    """Record a run that raised (call inside the ``except`` block) and return its outcome.

    A run that failed before training (e.g. data missing) has no ``results.json`` yet: one is
    written atomically with ``status="failed"``, the error and its traceback, so a sweep can go
    on and the failure is not lost. A store problem (:class:`~flatbook._io.StoreProblem`:
    damaged file, full disk, locked run, other numerics) and bad data are not failures of the
    run: nothing is written, the outcome carries the problem's status. Returns the
    ``run_one`` outcome dict.
    """
    error = f"{type(e).__name__}: {e}"
    if isinstance(e, StoreProblem):
        return {"run_id": cfg.run_id, "status": e.status, "skipped": False, "error": error,
                "final": {}}  # fmt: skip
    if not (rd / "results.json").is_file():
        doc = _base_doc(cfg, None, None)
        doc.update(status="failed", error=error, traceback=traceback.format_exc(limit=20))
        doc["provenance"] = provenance()
        with contextlib.suppress(OSError):
            write_json(rd / "results.json", seal(doc))
    return {"run_id": cfg.run_id, "status": "failed", "skipped": False, "error": error,
            "final": {}}  # fmt: skip


def sweep(
    configs: Iterable[RunConfig],
    results_dir: str | Path = DEFAULT_RESULTS_DIR,
    *,
    runner: Callable[[Mapping[str, Any], str | Path], dict] = run_one,
    progress: bool = True,
) -> list[dict]:
    """Run every config (skipping finished ones; continuing after a diverged or failed run).

    Each config goes through ``runner(config.to_dict(), results_dir)`` (default
    :func:`run_one`, the unit a job scheduler can submit). Returns the runner's summaries in
    order. Duplicate configs (same run id) are run once.
    """
    configs = list(configs)
    for c in configs:
        if not isinstance(c, RunConfig):
            raise TypeError(f"sweep needs RunConfig objects; got {type(c).__name__}")
    if configs:
        check_writable(results_dir)  # before the first run, not once per run
    seen: dict[str, dict] = {}
    out: list[dict] = []
    from tqdm.auto import tqdm

    for c in tqdm(configs, desc="sweep", unit="run", disable=not progress or len(configs) < 2):
        if c.run_id not in seen:
            seen[c.run_id] = runner(c.to_dict(), str(results_dir))
        out.append(seen[c.run_id])
    return out


__all__ = [  # this module's runs, then the names of the concepts' modules it re-exports
    "DEFAULT_RESULTS_DIR", "DEFAULT_STEPS", "OPERATIONAL", "default_measure", "failure_outcome",
    "prepare", "run", "run_one", "sweep", "validate",
    # run configs (flatbook.run_config)
    "DEVICES", "MODEL_OPTION_KINDS", "RunConfig", "grid", "run_dir_for",
    # numerics fingerprints (flatbook.run_numerics)
    "ENGINES", "NUMERICS", "SMALL_MODEL", "expected_numerics", "numerics_diff",
    "numerics_fingerprint", "resolve_threads",
    # the store's documents (flatbook.run_results)
    "CHECKS", "FINISHED", "NUMERICS_POLICIES", "RESTART", "STATUSES", "STORE_FORMAT",
    "NumericsMismatchError", "NumericsWarning", "Results", "StaleResultsError",
    "check_numerics", "load_results", "read_config_file",
    # store inspection (flatbook.run_inspect)
    "SHOW_STATUSES", "RunInfo", "inspect_run", "inspect_store",
    # under a run's lock (flatbook.run_folder, flatbook.locks)
    "FOLDER_LOCK", "LOCK_TRIES", "STALE_TMP_S", "RunLockedError", "lock_holder", "lock_path",
    "open_run", "restart_aside", "run_lock",
]  # fmt: skip
