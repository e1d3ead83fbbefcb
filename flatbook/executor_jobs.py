"""What a job of a sweep runs, and which jobs are still running.

:class:`SweepJob` is the picklable callable a submitit job runs (``run_one`` of a config, or
:func:`run_study_one` for an experiment chapter's run), with submitit's checkpoint/requeue on
the time-limit warning. The ledger ``<folder>/jobs.json`` maps run ids to the jobs submitted
for them; :func:`in_flight` reads it against the process table (local) or ``squeue`` (Slurm)
so that a run is not submitted twice. Re-exported by :mod:`flatbook.executors`.
"""

from __future__ import annotations

import getpass
import os
import signal
import subprocess
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flatbook import experiment as _ex
from flatbook import train as _train
from flatbook._io import read_json, write_json


class SweepJob:
    """The callable a job runs: ``SweepJob(results_dir)(config_dict)`` → the summary of
    :func:`flatbook.experiment.run_one` (``{"run_id", "status", "skipped", "error",
    "final"}``).

    It is *checkpointable* in submitit's sense (a ``checkpoint`` method): when Slurm warns of
    the time limit (``USR2``, ``signal_delay_s`` before it; submitit's ``--signal``), a run
    that is training is asked to stop at the next step boundary (the training loop's SIGTERM
    handling writes ``checkpoint.pt``), and then submitit requeues the same call, which
    resumes from the checkpoint. Outside training the warning requeues at once. A plain
    SIGTERM (``scancel``, preemption) checkpoints and ends the job without results; the run
    resumes when the sweep is submitted again (or when Slurm requeues a preempted job).

    Args:
        results_dir: the result store (on Slurm: a shared file system).
        callback: ``callback(step, model, record_or_None)`` after every training step (passed
            to :func:`flatbook.experiment.run_one`); must be picklable. For monitoring and
            tests.
        setting: name of an experiment setting (``flatbook.analysis.SETTINGS``): run the
            config as the experiment chapters do (:func:`run_study_one`: their measurements,
            in their store ``flatbook.analysis.store_for(results_dir, setting)``) instead of
            :func:`flatbook.experiment.run_one`.
    """

    def __init__(
        self,
        results_dir: str | Path,
        callback: _train.Callback | None = None,
        setting: str | None = None,
    ) -> None:
        if setting is not None and callback is not None:
            raise ValueError("callback is not supported with setting (chapter runs)")
        self.results_dir = str(results_dir)
        self.callback = callback
        self.setting = setting

    def __call__(self, config: Mapping[str, Any]) -> dict:
        warned = {"usr2": False}
        main = threading.current_thread() is threading.main_thread()
        usr_sig = _warning_signal()
        submitit_handler = signal.getsignal(usr_sig) if usr_sig is not None and main else None
        term_outside = signal.getsignal(signal.SIGTERM) if main else None

        def on_warning(signum: int, frame: Any) -> None:
            # Inside training, the loop has replaced SIGTERM's handler with its deferred stop:
            # ask it to checkpoint at the next step boundary, then requeue (below).
            if signal.getsignal(signal.SIGTERM) is not term_outside:
                warned["usr2"] = True
                signal.raise_signal(signal.SIGTERM)
            elif callable(submitit_handler):
                submitit_handler(signum, frame)  # requeue now: nothing to save

        if callable(submitit_handler):
            signal.signal(usr_sig, on_warning)
        try:
            if self.setting is not None:
                return run_study_one(dict(config), self.results_dir, self.setting)
            return _ex.run_one(dict(config), self.results_dir, callback=self.callback)
        except KeyboardInterrupt:
            if warned["usr2"] and callable(submitit_handler):
                # checkpoint written: let submitit call self.checkpoint() and requeue the job
                submitit_handler(usr_sig, None)
            raise
        finally:
            if callable(submitit_handler):
                signal.signal(usr_sig, submitit_handler)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit before a requeue: the same call again (the run itself resumes
        from ``checkpoint.pt``)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    def __repr__(self) -> str:
        extra = f", setting={self.setting!r}" if self.setting is not None else ""
        return f"SweepJob(results_dir={self.results_dir!r}{extra})"


def store_dir(results_dir: str | Path, setting: str | None = None) -> Path:
    """Where the run folders live: ``results_dir`` itself, or for an experiment setting the
    chapters' store ``flatbook.analysis.store_for(results_dir, setting)``."""
    if setting is None:
        return Path(results_dir)
    from flatbook import analysis

    return Path(analysis.store_for(results_dir, analysis.get_setting(setting)))


def run_study_one(config: Mapping[str, Any], results_dir: str | Path, setting: str) -> dict:
    """Job entry point for an experiment chapter's run: ``flatbook.analysis.obtain`` for one
    config (load it if its stored results are current — same config, flatbook version and
    numeric code — else compute it with the chapters' measurement function, after moving stale
    results aside to ``stale/``). Never raises for a failed run; returns the same summary dict as
    :func:`flatbook.experiment.run_one`."""
    from flatbook import analysis

    s = analysis.get_setting(setting)
    cfg = _ex.RunConfig.from_dict(config)
    store = store_dir(results_dir, setting)
    rd = _ex.run_dir_for(cfg, store)
    try:
        (res,) = analysis.obtain([cfg], s, results_dir, compute_missing=True)
        return {"run_id": cfg.run_id, "status": res.status, "skipped": False, "error": None,
                "final": res.final}  # fmt: skip
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - recorded in results.json
        return _ex.failure_outcome(cfg, rd, e)


def _warning_signal() -> signal.Signals | None:
    """The signal submitit uses for time-limit / preemption warnings (``USR2``, or
    ``$SUBMITIT_PREEMPT_SIGNAL``)."""
    name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, name, None)


def _ledger_path(folder: Path) -> Path:
    """The ledger of the executor folder ``folder``: ``{"jobs": {run_id: entry}}``."""
    return folder / "jobs.json"


def _read_ledger(folder: Path) -> dict[str, dict[str, Any]]:
    """``{run_id: {"job_id", "executor", "store", "submitted"}}`` from the ledger; empty when
    it is missing or unreadable (then no job counts as in flight)."""
    p = _ledger_path(folder)
    if not p.is_file():
        return {}
    try:
        doc = read_json(p)
    except (OSError, ValueError):
        return {}
    return dict(doc.get("jobs", {})) if isinstance(doc, dict) else {}


def _write_ledger(folder: Path, entries: Mapping[str, Mapping[str, Any]]) -> None:
    """Add or replace ``entries`` in the ledger (written atomically)."""
    jobs = _read_ledger(folder)
    jobs.update({k: dict(v) for k, v in entries.items()})
    write_json(_ledger_path(folder), {"jobs": jobs})


def _local_alive(job_id: str, folder: Path) -> bool:
    """Is the local submitit controller ``job_id`` (its PID) still running for this folder?"""
    try:
        cmd = Path(f"/proc/{int(job_id)}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return False
    return b"submitit.local._local" in cmd and any(
        str(folder) in c.decode(errors="replace") for c in cmd
    )


def _slurm_active_ids() -> set[str] | None:
    """Job ids (``123``, ``123_4``) of this user's queued or running Slurm jobs, one per array
    task (``squeue -h -r -u USER -o %i``); None if ``squeue`` fails."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return {line.strip() for line in out.splitlines() if line.strip()}


def in_flight(
    run_ids: Iterable[str], folder: str | Path, kind: str, store: str | Path | None = None
) -> tuple[dict[str, str], str | None]:
    """Runs among ``run_ids`` (of the run store ``store``, if given) whose job from an earlier
    submission is still queued or running.

    Returns ``({run_id: job_id}, warning_or_None)``; the warning says when the queue could not
    be read (then nothing counts as in flight)."""
    folder = Path(folder)
    ledger = _read_ledger(folder)
    mine = {
        r: ledger[r] for r in run_ids
        if r in ledger and ledger[r].get("executor") == kind
        and (store is None or ledger[r].get("store") == str(store))
    }  # fmt: skip
    if not mine:
        return {}, None
    if kind == "local":
        jobs = {r: str(e["job_id"]) for r, e in mine.items()}
        return {r: j for r, j in jobs.items() if _local_alive(j, folder)}, None
    active = _slurm_active_ids()
    if active is None:
        return (
            {},
            "could not read the Slurm queue (squeue failed): jobs of an earlier "
            "submission that are still queued may run twice (harmless, but wasteful)",
        )
    out = {}
    for r, e in mine.items():
        j = str(e["job_id"])
        if j in active or j.split("_")[0] in active:
            out[r] = j
    return out, None
