"""A run folder's life under its lock: opening a run before training (:func:`open_run`, both
training engines) and moving a run aside before it is started over (:func:`restart_aside`).
Re-exported by :mod:`flatbook.experiment`.

Concurrency and storage: one process trains a run id at a time — exclusive ``flock`` s on
``results_dir/.locks/<run_id>.lock`` and on the run folder (:mod:`flatbook.locks`), released by
the kernel when the holder dies (so kill −9 leaves nothing to clean up); a second start raises
:class:`~flatbook.locks.RunLockedError` saying who holds it. Nothing is deleted: a run started
over (``overwrite=True``) is first moved to ``results_dir/stale/<run_id>-<reason>/``
(:func:`flatbook.store.move_aside`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flatbook import store as _store
from flatbook._io import DamagedFileError, load_checkpoint, previous_checkpoint, write_json
from flatbook.locks import run_lock
from flatbook.run_config import RunConfig, run_dir_for
from flatbook.run_numerics import numerics_diff
from flatbook.run_results import (
    FINISHED,
    RESTART,
    STATUSES,
    NumericsMismatchError,
    Results,
    StaleResultsError,
    _config_doc,
    _load_finished,
    _read_results,
    _unsealed,
    load_results,
    read_config_file,
)

STALE_TMP_S = 600
"""Temporary files older than this (seconds) in a run folder are leftovers of a killed write."""


def open_run(config: RunConfig, results_dir: str | Path,
             fp: Mapping[str, Any]) -> Results | None:
    """What a run does inside its lock before training (both engines:
    :func:`flatbook.experiment.run` and :mod:`flatbook.ensemble_runs`): the finished results
    if another process finished the run meanwhile, else ``None`` after dropping a failed
    attempt and stale temporary files, refusing a config file of another config or a
    checkpoint of other numerics (``fp``, :func:`flatbook.run_numerics.numerics_fingerprint`),
    and writing ``config.json``."""
    rd = run_dir_for(config, results_dir)
    res_path, cfg_path = rd / "results.json", rd / "config.json"
    if res_path.is_file():
        _, doc = _read_results(rd)
        if doc.get("status") in FINISHED:
            return _load_finished(config, results_dir)
        res_path.unlink()  # a failed attempt: try again
    for tmp in rd.glob(".*.tmp"):  # left by a process killed mid-write (SIGKILL, power loss)
        if time.time() - tmp.stat().st_mtime > STALE_TMP_S:
            tmp.unlink(missing_ok=True)
    cfg_doc = _config_doc(config, fp)
    _check_resumable(config, rd, fp)
    if not cfg_path.is_file() or read_config_file(cfg_path) != _unsealed(cfg_doc):
        write_json(cfg_path, cfg_doc)
    return None


def _check_resumable(config: RunConfig, rd: Path, fp: Mapping[str, Any]) -> None:
    """Refuse to go on with the run folder ``rd`` when its ``config.json`` describes another
    config (:class:`~flatbook._io.DamagedFileError`) or its checkpoint was written under
    other numerics than ``fp`` (:class:`NumericsMismatchError`); the checkpoint's own
    fingerprint decides when ``config.json`` was moved aside."""
    cfg_path, ckpt = rd / "config.json", rd / "checkpoint.pt"
    prev = previous_checkpoint(ckpt)
    if cfg_path.is_file():
        stored = read_config_file(cfg_path)
        if stored["config_hash"] != config.config_hash:
            raise DamagedFileError(cfg_path, "describes another config than this run's",
                                   f"move it aside and run the same command again, "
                                   f"or {RESTART}")
        diff = numerics_diff(stored.get("numerics"), fp)
        if diff and (ckpt.is_file() or prev.is_file()):
            raise NumericsMismatchError(
                f"run {config.run_id} was started under other numerics ({'; '.join(diff)}; "
                f"{cfg_path}): resuming here would mix numbers — resume it with the same "
                f"settings (engine, --threads {stored['numerics'].get('threads')}, --device as "
                f"before), or {RESTART}"
            )
    elif ckpt.is_file() or prev.is_file():
        state = load_checkpoint(ckpt, "cpu", restart=RESTART)
        stored_fp = ((state or {}).get("meta") or {}).get("numerics")
        diff = numerics_diff(stored_fp, fp)
        if diff:
            raise NumericsMismatchError(
                f"{ckpt} was written under other numerics ({'; '.join(diff)}): resuming "
                f"here would mix numbers — resume it with the same settings (engine, "
                f"--threads {(stored_fp or {}).get('threads')}), or {RESTART}"
            )


def restart_aside(config: RunConfig, results_dir: str | Path) -> list[_store.MovedRun]:
    """Move the stored run of ``config`` aside before it is started over (under its lock):
    ``stale/<run_id>-<reason>/``, the reason being why it could not be reused (damaged, newer
    format or flatbook, other code, failed) or ``restart``. Returns what moved (nothing when
    the run has no files)."""
    rd = run_dir_for(config, results_dir)
    with run_lock(results_dir, config.run_id):
        if not any((rd / n).exists() for n in _store.RUN_FILES):
            return []
        reason = _restart_reason(config, results_dir)
        to = _store.move_aside(results_dir, config.run_id, reason)
    return [_store.MovedRun(config.run_id, reason, to)]


def _restart_reason(config: RunConfig, results_dir: str | Path) -> str:
    """Why a stored run is started over (a key of :data:`flatbook.store.REASONS`): what is
    wrong with it (damaged, stale, failed), else ``restart`` (asked for)."""
    rd = run_dir_for(config, results_dir)
    try:
        try:
            load_results(results_dir, config, check="code", status=STATUSES, numerics="ignore")
        except FileNotFoundError:  # an interrupted run: are its config and checkpoint sound?
            if (rd / "config.json").is_file():
                read_config_file(rd / "config.json")
            load_checkpoint(rd / "checkpoint.pt", "cpu", restart=RESTART)
    except StaleResultsError as e:
        return e.reason
    except (DamagedFileError, _store.StoreFaultError, OSError):
        return "damaged"
    return "restart"


__all__ = ["STALE_TMP_S", "open_run", "restart_aside"]
