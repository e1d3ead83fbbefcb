"""Sweeps as cluster jobs: one submitit job per run config (Slurm, or local processes).

:func:`flatbook.experiment.sweep` runs configs one after the other in the calling process.
:func:`sweep` here submits each unfinished config as its own job through `submitit
<https://github.com/facebookincubator/submitit>`_ (pinned 1.5.4) and gathers the outcome from
the engine's result store (``results/<run_id>/results.json``), so the jobs and the book read the
same files::

    python -m flatbook sweep --lr 0.05 0.1 --seed 0 1 --executor local
    python -m flatbook sweep --lr 0.05 0.1 --seed 0 1 --executor slurm \\
        --partition gpu --time 240 --gpus 1 --cpus 4 --mem 16 --device auto

What a job does: ``SweepJob(results_dir)(config_dict)`` calls
:func:`flatbook.experiment.run_one` — it trains (or resumes from ``checkpoint.pt``) and writes
``results.json`` atomically; a failed run is recorded as ``status="failed"``. With
``setting=NAME`` (CLI ``--setting``) the configs are an experiment chapter's sweep
(``flatbook.analysis.study_configs``) and each job runs :func:`run_study_one` — the chapters'
measurement function, into the chapters' store ``flatbook.analysis.store_for(results_dir,
NAME)`` — so that the chapters read the cluster's runs with ``compute_missing=False``.

Guarantees (tested with the local executor in ``tests/test_executors.py``):

- **resubmission skips finished runs**: configs whose ``results.json`` says ``completed`` or
  ``diverged`` are not submitted again (0 new jobs when everything is done);
- **a killed job resumes**: a job killed mid-way (SIGKILL, node failure) leaves its last
  periodic checkpoint (``checkpoint_every`` steps); submitting the sweep again runs that config
  from the checkpoint, and resumption is bit-exact (same batches, same RNG state), so the final
  numbers equal those of an uninterrupted run;
- **time limits and preemption requeue the job**: Slurm signals ``USR2`` ``signal_delay_s``
  seconds before the time limit (submitit's ``--signal``); the job then stops at the next step
  boundary, checkpoints, and is requeued by submitit (at most ``max_requeue`` times); the
  requeued job resumes from that checkpoint. A SIGTERM (preemption) checkpoints and stops
  likewise; the run then resumes when Slurm requeues it or when the sweep is resubmitted;
- **no duplicate jobs**: a config whose job from an earlier submission is still queued or
  running (ledger ``<folder>/jobs.json``, checked against ``squeue`` for Slurm and the process
  table for local jobs) is reported *in flight* and not submitted again. Even a duplicate would
  be harmless to the numbers: a run is deterministic and every file is replaced atomically.

Not verified here: the Slurm executor is tested without a cluster (fake ``srun``/``sbatch``/
``squeue`` commands; the generated sbatch script is inspected and the pickled jobs are executed
in-process as Slurm would). It has not been run against a real Slurm installation in this
project's CI.

Files: ``<folder>`` holds one sub-folder per job (``%j``: submitted pickle, stdout/stderr
logs, result pickle) and ``jobs.json``. It is kept *outside* the result store by default
(:func:`default_folder`: ``$FLATBOOK_EXECUTOR_DIR`` or ``~/.cache/flatbook/submitit``, one
sub-folder per store, created private to the user): pickles run code when loaded, and a store
may be shared with other users. A result pickle is loaded only if :func:`trusted_pickle` finds
it owned by this user and writable by nobody else (an untrusted one is named, not loaded). On
Slurm both ``results_dir`` and ``folder`` must be on a file system shared by the compute nodes
(home folders usually are; else pass ``--executor-folder``).
"""

from __future__ import annotations

import contextlib
import getpass
import math
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flatbook import experiment as _ex
from flatbook import train as _train
from flatbook._io import read_json, write_json

EXECUTORS = ("inline", "local", "slurm")
"""``inline``: :func:`flatbook.experiment.sweep` in this process (no submitit); ``local``:
one subprocess per config on this machine; ``slurm``: one Slurm array task per config."""

DEFAULT_LOCAL_TIME_MIN = 7 * 24 * 60
"""Local jobs: submitit's timeout (minutes); effectively none."""

DEFAULT_SLURM_TIME_MIN = 240
"""Slurm jobs: the time limit (minutes) when ``time_min`` is not given; a run that needs longer
is checkpointed and requeued (``max_requeue``)."""

ACTIVE_LOCAL = "RUNNING"


# ------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class ExecutorOptions:
    """How to run the jobs of a sweep.

    Args:
        kind: ``"local"`` (subprocesses on this machine), ``"slurm"``, or ``"inline"``
            (one after the other in this process; no submitit).
        folder: submitit's folder (logs, pickles, ``jobs.json``); default
            :func:`default_folder` (outside the store). One sub-folder per job.
        time_min: time limit per job in minutes (Slurm ``--time``; local: submitit timeout).
            Default :data:`DEFAULT_SLURM_TIME_MIN` (Slurm), :data:`DEFAULT_LOCAL_TIME_MIN`
            (local).
        partition: Slurm partition (``--partition``); None: the cluster's default.
        gpus: GPUs per job (``--gpus-per-node``); use with ``device="auto"`` or ``"cuda"`` in
            the run config.
        cpus: CPU cores per job (``--cpus-per-task``).
        mem_gb: memory per job in GB (``--mem``); None: the partition's default.
        parallelism: at most this many jobs at once (Slurm array ``%N``; local: concurrent
            processes, default the number of CPU cores).
        job_name: Slurm job name.
        signal_delay_s: seconds between the ``USR2`` warning and the time limit (Slurm
            ``--signal=USR2@N``); should exceed the time of one measurement.
        max_requeue: how often a timed-out / preempted job is requeued (submitit
            ``max_num_timeout``).
        setup: shell lines run before the job (e.g. ``module load cuda``,
            ``source .venv/bin/activate``).
        slurm_extra: further sbatch options, e.g. ``{"account": "abc", "qos": "high"}``
            (submitit ``additional_parameters``).
    """

    kind: str = "local"
    folder: str | Path | None = None
    time_min: int | None = None
    partition: str | None = None
    gpus: int = 0
    cpus: int = 1
    mem_gb: float | None = None
    parallelism: int | None = None
    job_name: str = "flatbook"
    signal_delay_s: int = 180
    max_requeue: int = 3
    setup: tuple[str, ...] = ()
    slurm_extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _train.check_choice(self.kind, "executor", EXECUTORS)
        _train.check_positive_int(self.time_min, "time_min", allow_none=True)
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or self.gpus < 0:
            raise ValueError(f"gpus must be an integer ≥ 0; got {self.gpus!r}")
        _train.check_positive_int(self.cpus, "cpus")
        if self.mem_gb is not None:
            _train.check_positive_float(self.mem_gb, "mem_gb")
        _train.check_positive_int(self.parallelism, "parallelism", allow_none=True)
        _train.check_positive_int(self.signal_delay_s, "signal_delay_s")
        if (
            isinstance(self.max_requeue, bool)
            or not isinstance(self.max_requeue, int)
            or (self.max_requeue < 0)
        ):
            raise ValueError(f"max_requeue must be an integer ≥ 0; got {self.max_requeue!r}")
        if isinstance(self.setup, str):
            raise ValueError(f"setup must be a list of shell lines; got {self.setup!r}")
        object.__setattr__(self, "setup", tuple(str(s) for s in self.setup))
        if not isinstance(self.slurm_extra, Mapping):
            raise ValueError(f"slurm_extra must be a mapping of sbatch options; got "
                             f"{self.slurm_extra!r}")  # fmt: skip
        if self.kind != "slurm" and (self.partition or self.slurm_extra or self.mem_gb):
            raise ValueError(
                "partition, mem_gb and slurm_extra are Slurm options; they are not used by "
                f"executor={self.kind!r} (use executor='slurm')"
            )

    def resolved_folder(self, results_dir: str | Path) -> Path:
        """``folder``, or :func:`default_folder` of ``results_dir`` (outside the store)."""
        return Path(self.folder) if self.folder is not None else default_folder(results_dir)

    @property
    def resolved_time_min(self) -> int:
        if self.time_min is not None:
            return int(self.time_min)
        return DEFAULT_SLURM_TIME_MIN if self.kind == "slurm" else DEFAULT_LOCAL_TIME_MIN


def default_folder(results_dir: str | Path) -> Path:
    """The executor's folder for a store, outside it: ``$FLATBOOK_EXECUTOR_DIR`` (or
    ``$XDG_CACHE_HOME/flatbook/submitit``, or ``~/.cache/flatbook/submitit``) ``/
    <store name>-<hash of its absolute path>``, created with mode 0700 (its pickles cannot be
    planted by a user who can write the store)."""
    import hashlib

    base = os.environ.get("FLATBOOK_EXECUTOR_DIR")
    if not base:
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = str(Path(cache) / "flatbook" / "submitit")
    store = Path(results_dir).resolve()
    key = hashlib.sha256(str(store).encode()).hexdigest()[:12]
    folder = Path(base) / f"{store.name or 'store'}-{key}"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def trusted_pickle(path: str | Path, folder: str | Path) -> str | None:
    """Why the pickle ``path`` (inside the executor folder ``folder``) must not be loaded, or
    None if it may: it must be a regular file (not a link) owned by this user, and it and
    every folder from it up to ``folder`` must be writable by no other user — unless
    ``folder`` itself is closed to others (mode ``0o077`` clear), as :func:`default_folder`
    makes it."""
    import stat

    p, top = Path(path), Path(folder)
    try:
        st = os.lstat(p)
        top_st = os.stat(top)
    except OSError as e:
        return f"{p}: cannot be checked ({e.strerror or e})"
    uid = os.getuid()
    if not stat.S_ISREG(st.st_mode):
        return f"{p} is not a regular file"
    if st.st_uid != uid:
        return f"{p} is owned by uid {st.st_uid}, not by this user"
    if top_st.st_uid == uid and not top_st.st_mode & 0o077:
        return None  # a private folder: nobody else can reach what is inside
    node = p
    while True:
        nst = os.lstat(node)
        if nst.st_uid != uid or nst.st_mode & 0o022:
            return f"{node} can be written by another user"
        if node == top or node.parent == node:
            return None
        node = node.parent


def make_executor(options: ExecutorOptions, results_dir: str | Path) -> Any:
    """The submitit executor for ``options`` (``submitit.LocalExecutor`` or
    ``submitit.SlurmExecutor``), logging to ``<folder>/%j``.

    Slurm parameters (submitit names → sbatch): ``time`` → ``--time``, ``partition``,
    ``gpus_per_node``, ``cpus_per_task``, ``mem``, ``array_parallelism`` → ``--array=…%N``,
    ``signal_delay_s`` → ``--signal=USR2@N``, ``setup`` (lines before ``srun``),
    ``additional_parameters``.

    Raises:
        RuntimeError: ``kind="slurm"`` but ``srun`` is not on ``PATH`` (not a Slurm cluster).
    """
    import submitit

    folder = options.resolved_folder(results_dir) / "%j"
    if options.kind == "inline":
        raise ValueError("executor='inline' runs in this process: there is no submitit executor")
    if options.kind == "local":
        ex = submitit.LocalExecutor(folder, max_num_timeout=options.max_requeue)
        params: dict[str, Any] = {
            "timeout_min": options.resolved_time_min,
            "signal_delay_s": options.signal_delay_s,
            "gpus_per_node": options.gpus,
            "stderr_to_stdout": False,
        }
        if options.setup:
            params["setup"] = list(options.setup)
        ex.update_parameters(**params)
        return ex
    if shutil.which("srun") is None or shutil.which("sbatch") is None:
        raise RuntimeError(
            "executor='slurm' needs the Slurm commands srun and sbatch on PATH (run the sweep "
            "on a cluster login node), or use executor='local'"
        )
    ex = submitit.SlurmExecutor(folder, max_num_timeout=options.max_requeue)
    params = {
        "job_name": options.job_name,
        "time": options.resolved_time_min,
        "cpus_per_task": options.cpus,
        "signal_delay_s": options.signal_delay_s,
        "nodes": 1,
        "ntasks_per_node": 1,
    }
    if options.partition:
        params["partition"] = options.partition
    if options.gpus:
        params["gpus_per_node"] = options.gpus
    if options.mem_gb is not None:
        params["mem"] = _mem(options.mem_gb)
    if options.parallelism is not None:
        params["array_parallelism"] = options.parallelism
    if options.setup:
        params["setup"] = list(options.setup)
    if options.slurm_extra:
        params["additional_parameters"] = dict(options.slurm_extra)
    ex.update_parameters(**params)
    return ex


def _mem(gb: float) -> str:
    return f"{int(gb)}GB" if float(gb) == int(gb) else f"{int(math.ceil(gb * 1024))}MB"


# ------------------------------------------------------------------------------ the job


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


# ------------------------------------------------------------------------------ ledger


def _ledger_path(folder: Path) -> Path:
    return folder / "jobs.json"


def _read_ledger(folder: Path) -> dict[str, dict[str, Any]]:
    p = _ledger_path(folder)
    if not p.is_file():
        return {}
    try:
        doc = read_json(p)
    except (OSError, ValueError):
        return {}
    return dict(doc.get("jobs", {})) if isinstance(doc, dict) else {}


def _write_ledger(folder: Path, entries: Mapping[str, Mapping[str, Any]]) -> None:
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


# ------------------------------------------------------------------------------ submission


def _finished_summary(cfg: _ex.RunConfig, store: str | Path, current: bool = False) -> dict | None:
    """The run_one-style summary of a finished run in the store, or None. ``current``: also
    require the flatbook version and numeric code that the chapters require
    (``load_results(check="code")``); otherwise, like :func:`flatbook.experiment.run`, any
    finished result of this config counts."""
    p = _ex.run_dir_for(cfg, store) / "results.json"
    if not p.is_file():
        return None
    try:
        doc = read_json(p)
    except (OSError, ValueError):
        return None
    if doc.get("status") not in _ex.FINISHED or doc.get("config_hash") != cfg.config_hash:
        return None
    if current:
        try:
            _ex.load_results(store, cfg, check="code")
        except (ValueError, OSError):  # StaleResultsError is a ValueError
            return None
    return {"run_id": cfg.run_id, "status": doc["status"], "skipped": True, "error": None,
            "final": dict(doc.get("final") or {})}  # fmt: skip


def _store_summary(cfg: _ex.RunConfig, results_dir: str | Path, job_error: str | None) -> dict:
    """Summary of a run after its job ended, read from the result store."""
    p = _ex.run_dir_for(cfg, results_dir) / "results.json"
    doc: dict[str, Any] = {}
    if p.is_file():
        with contextlib.suppress(OSError, ValueError):
            doc = read_json(p)
    if doc.get("status") in _ex.STATUSES:
        return {"run_id": cfg.run_id, "status": doc["status"], "skipped": False,
                "error": doc.get("error"), "final": dict(doc.get("final") or {})}  # fmt: skip
    ckpt = _ex.run_dir_for(cfg, results_dir) / "checkpoint.pt"
    why = job_error or "the job ended without results"
    why += "; checkpoint kept: submit the sweep again to resume" if ckpt.is_file() else ""
    return {"run_id": cfg.run_id, "status": "interrupted", "skipped": False, "error": why,
            "final": {}}  # fmt: skip


@dataclass
class Submission:
    """A sweep handed to an executor.

    Attributes:
        configs: the distinct configs, in sweep order.
        results_dir, folder, options: where results and job files go, and how jobs run.
        skipped: run ids already finished in the store (not submitted).
        in_flight: ``{run_id: job_id}`` still queued/running from an earlier submission (not
            submitted again).
        jobs: ``{run_id: submitit.Job}`` submitted by this call (local: at most
            ``parallelism`` running at a time; :meth:`wait` starts the others).
        pending: configs not yet started (local executor only).
    """

    configs: list[_ex.RunConfig]
    results_dir: Path
    folder: Path
    options: ExecutorOptions
    setting: str | None = None
    skipped: list[str] = field(default_factory=list)
    in_flight: dict[str, str] = field(default_factory=dict)
    jobs: dict[str, Any] = field(default_factory=dict)
    pending: list[_ex.RunConfig] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    callback: _train.Callback | None = None
    ran_inline: dict[str, str | None] = field(default_factory=dict)
    _executor: Any = None

    @property
    def store(self) -> Path:
        """Where the run folders are (``results_dir``, or a setting's chapter store)."""
        return store_dir(self.results_dir, self.setting)

    def _job(self) -> SweepJob:
        return SweepJob(self.results_dir, self.callback, self.setting)

    @property
    def parallelism(self) -> int:
        """At most this many jobs at once (local: ``options.parallelism`` or the core count)."""
        return self.options.parallelism or os.cpu_count() or 1

    @property
    def n_submitted(self) -> int:
        """Jobs submitted (or to be started, for local) by this submission."""
        return len(self.jobs) + len(self.pending)

    def _start_local(self) -> None:
        started: dict[str, Any] = {}
        while self.pending and sum(not _ended(j) for j in self.jobs.values()) < self.parallelism:
            cfg = self.pending.pop(0)
            job = self._executor.submit(self._job(), _job_dict(cfg))
            self.jobs[cfg.run_id] = job
            started[cfg.run_id] = _ledger_entry(job, "local", self.store)
        if started:
            _write_ledger(self.folder, started)

    def wait(self, poll_s: float | None = None, progress: bool = False) -> list[dict]:
        """Wait for every job (starting pending local jobs as slots free up) and return one
        summary per config, in order: ``{"run_id", "status", "skipped", "error", "final"}``
        with ``status`` in ``completed``, ``diverged``, ``failed`` (read from the result
        store), ``interrupted`` (the job ended without results — killed; a checkpoint is kept
        and resubmitting resumes it) or ``in_flight`` (an earlier job still runs)."""
        poll = poll_s if poll_s is not None else (0.2 if self.options.kind == "local" else 30.0)
        from tqdm.auto import tqdm

        total = self.n_submitted
        bar = tqdm(total=total, desc="jobs", unit="job", disable=not progress or total < 2)
        done: set[str] = set()
        try:
            while True:
                if self.options.kind == "local":
                    self._start_local()
                for rid, job in self.jobs.items():
                    if rid not in done and _ended(job):
                        done.add(rid)
                        bar.update(1)
                if len(done) == len(self.jobs) and not self.pending:
                    break
                time.sleep(poll)
        finally:
            bar.close()
            with contextlib.suppress(OSError):  # empty folder left by submitit's local controller
                (self.folder / "%j").rmdir()
        return self.summaries()

    def summaries(self) -> list[dict]:
        """One summary per config from the result store (jobs that have not ended yet:
        ``status="in_flight"``)."""
        out = []
        for cfg in self.configs:
            rid = cfg.run_id
            if rid in self.in_flight:
                out.append({"run_id": rid, "status": "in_flight", "skipped": True,
                            "error": f"job {self.in_flight[rid]} of an earlier submission is "
                                     "still queued or running", "final": {}})  # fmt: skip
                continue
            if rid in self.skipped:
                out.append(_finished_summary(cfg, self.store)
                           or _store_summary(cfg, self.store, None))  # fmt: skip
                continue
            if rid in self.ran_inline:
                out.append(_store_summary(cfg, self.store, self.ran_inline[rid]))
                continue
            job = self.jobs.get(rid)
            if job is None or not _ended(job):
                out.append({"run_id": rid, "status": "in_flight", "skipped": False,
                            "error": None, "final": {}})  # fmt: skip
                continue
            out.append(_store_summary(cfg, self.store, _job_error(job, self.folder)))
        return out

    def describe(self) -> str:
        """One line: how many jobs were submitted, skipped, in flight; where the logs are."""
        ids = sorted({str(j.job_id).split("_")[0] for j in self.jobs.values()})
        return (
            f"{self.options.kind} executor: {self.n_submitted + len(self.ran_inline)} "
            "job(s) submitted"
            + (f" (job id {', '.join(ids)})" if ids and self.options.kind == "slurm" else "")
            + f", {len(self.skipped)} finished run(s) skipped"
            + (f", {len(self.in_flight)} still in flight" if self.in_flight else "")
            + f"; logs in {self.folder}"
        )


def _ended(job: Any) -> bool:
    """The job has produced its result pickle (its process may still be shutting down) or has
    stopped without one."""
    return job.paths.result_pickle.exists() or job.done()


def _job_error(job: Any, folder: Path | None = None) -> str | None:
    """The job's own error (from its result pickle), or None when it succeeded or left none.
    The pickle is loaded only if :func:`trusted_pickle` allows it (``folder``: the executor
    folder; default the job's parent's parent)."""
    if not job.paths.result_pickle.exists():
        return f"job {job.job_id} ended without a result (killed?); log: {job.paths.stderr}"
    why = trusted_pickle(job.paths.result_pickle,
                         folder if folder is not None else job.paths.folder.parent)
    if why is not None:
        return f"job {job.job_id}: result file not loaded ({why}); log: {job.paths.stderr}"
    try:
        outcome, value = _load_pickle(job.paths.result_pickle)
    except Exception as e:  # noqa: BLE001 - a broken pickle is reported, not raised
        return f"job {job.job_id}: unreadable result ({type(e).__name__}: {e})"
    if outcome == "success":
        return None
    last = str(value).strip().splitlines()[-1] if str(value).strip() else "error"
    return f"job {job.job_id} failed: {last}; log: {job.paths.stderr}"


def _load_pickle(path: Path) -> Any:
    from submitit.core.utils import pickle_load

    return pickle_load(path)


def _job_dict(cfg: _ex.RunConfig) -> dict[str, Any]:
    # progress bars in job logs are noise; ``progress`` is operational (not in the run id)
    return cfg.replace(progress=False).to_dict()


def _ledger_entry(job: Any, kind: str, store: Path) -> dict[str, Any]:
    return {"job_id": str(job.job_id), "executor": kind, "store": str(store),
            "submitted": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip


def submit(
    configs: Iterable[_ex.RunConfig],
    results_dir: str | Path = _ex.DEFAULT_RESULTS_DIR,
    options: ExecutorOptions | None = None,
    *,
    callback: _train.Callback | None = None,
    force: bool = False,
    setting: str | None = None,
) -> Submission:
    """Submit one job per unfinished config; finished runs and runs whose earlier job is still
    queued or running are not submitted (``force=True`` resubmits the latter).

    Slurm: all jobs go in one array (``--array=0-{n-1}%parallelism``), submitted now. Local:
    the first ``parallelism`` jobs start now, the others in :meth:`Submission.wait` as slots
    free up. Inline: every job runs now, here, one after the other.

    ``setting``: the configs are an experiment chapter's runs (``flatbook.analysis``); they are
    run with the chapters' measurements into the chapters' store, and a stored result counts
    as finished only if the chapters would accept it (same flatbook version and numeric code).

    Returns a :class:`Submission` (call ``.wait()`` for the summaries).
    """
    options = options or ExecutorOptions()
    if not isinstance(options, ExecutorOptions):
        raise TypeError(f"options must be ExecutorOptions; got {type(options).__name__}")
    distinct: dict[str, _ex.RunConfig] = {}
    for c in configs:
        if not isinstance(c, _ex.RunConfig):
            raise TypeError(f"submit needs RunConfig objects; got {type(c).__name__}")
        distinct.setdefault(c.run_id, c)
    results_dir = Path(results_dir)
    folder = options.resolved_folder(results_dir)
    sub = Submission(list(distinct.values()), results_dir, folder, options, setting=setting,
                     callback=callback)  # fmt: skip
    sub._job()  # validates setting / callback
    store = sub.store
    todo = []
    for cfg in sub.configs:
        if _finished_summary(cfg, store, current=setting is not None) is not None:
            sub.skipped.append(cfg.run_id)
        else:
            todo.append(cfg)
    if not todo:
        return sub
    if options.kind == "inline":
        job = sub._job()
        for cfg in todo:
            out = job(_job_dict(cfg))
            sub.ran_inline[cfg.run_id] = out.get("error")
        return sub
    if not force:
        flying, warning = in_flight([c.run_id for c in todo], folder, options.kind, store)
        if warning:
            sub.warnings.append(warning)
        sub.in_flight = flying
        todo = [c for c in todo if c.run_id not in flying]
    if not todo:
        return sub
    sub._executor = make_executor(options, results_dir)
    if options.kind == "local":
        sub.pending = todo
        sub._start_local()  # the first ``parallelism`` jobs now, the rest in ``wait()``
        return sub
    job_fn = sub._job()
    with sub._executor.batch():
        delayed = [sub._executor.submit(job_fn, _job_dict(c)) for c in todo]
    sub.jobs = {c.run_id: j for c, j in zip(todo, delayed, strict=True)}
    _write_ledger(folder, {rid: _ledger_entry(j, "slurm", store) for rid, j in sub.jobs.items()})
    return sub


def sweep(
    configs: Iterable[_ex.RunConfig],
    results_dir: str | Path = _ex.DEFAULT_RESULTS_DIR,
    options: ExecutorOptions | None = None,
    *,
    wait: bool = True,
    callback: _train.Callback | None = None,
    force: bool = False,
    setting: str | None = None,
    progress: bool = False,
    poll_s: float | None = None,
) -> Submission:
    """:func:`submit`, then (``wait=True``) wait for the jobs. ``wait=False`` is allowed for
    Slurm only (local jobs are started by the waiting process). The summaries are
    ``submission.summaries()`` (or the return value of ``submission.wait()``)."""
    options = options or ExecutorOptions()
    if not wait and options.kind == "local":
        raise ValueError("wait=False needs executor='slurm' (local jobs are started by the "
                         "waiting process)")  # fmt: skip
    sub = submit(configs, results_dir, options, callback=callback, force=force, setting=setting)
    if wait:
        sub.wait(poll_s=poll_s, progress=progress)
    return sub


# ------------------------------------------------------------------------------ CLI


def _kv(v: str) -> tuple[str, str]:
    import argparse

    if "=" not in v:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {v!r}")
    k, val = v.split("=", 1)
    return k.strip(), val


def add_arguments(parser: Any) -> None:
    """Add the executor options to the ``sweep`` sub-command's parser."""
    g = parser.add_argument_group(
        "executor",
        "run each config as its own job via submitit (resubmitting skips finished runs and "
        "resumes interrupted ones)",
    )
    g.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="inline",
        help="inline: one run after the other in this process (default); local: one process "
        "per config on this machine; slurm: one array task per config",
    )
    g.add_argument(
        "--setting",
        default=None,
        help="run the sweep of an experiment chapter's setting (flatbook.analysis.SETTINGS, e.g. "
        "fashion-mlp) with the chapters' measurements into their store under RESULTS_DIR; "
        "--lr/--batch-size/--seed and other options override the setting's",
    )
    g.add_argument(
        "--engine",
        choices=("ensemble", "solo"),
        default="ensemble",
        help="with --setting and --executor inline|local: ensemble (default) trains compatible "
        "runs together, one batched SGD step for all (flatbook.ensemble_runs; each run is "
        "measured and stored as its solo run); solo: one run at a time",
    )
    g.add_argument(
        "--executor-folder",
        dest="executor_folder",
        type=Path,
        default=None,
        help="job logs and pickles (default: outside the store, $FLATBOOK_EXECUTOR_DIR or "
        "~/.cache/flatbook/submitit/<store>-<hash>, private to you)",
    )
    g.add_argument("--partition", default=None, help="Slurm partition")
    g.add_argument(
        "--time",
        dest="time_min",
        type=int,
        default=None,
        help=f"time limit per job in minutes (Slurm default {DEFAULT_SLURM_TIME_MIN}; a run "
        "that needs longer is checkpointed and requeued)",
    )
    g.add_argument("--gpus", type=int, default=0, help="GPUs per job (use with --device auto)")
    g.add_argument("--cpus", type=int, default=1, help="CPU cores per job")
    g.add_argument("--mem", dest="mem_gb", type=float, default=None, help="memory per job, GB")
    g.add_argument(
        "--array-parallelism",
        dest="parallelism",
        type=int,
        default=None,
        help="at most this many jobs at once (local default: number of cores)",
    )
    g.add_argument("--job-name", dest="job_name", default="flatbook", help="Slurm job name")
    g.add_argument(
        "--signal-delay",
        dest="signal_delay_s",
        type=int,
        default=180,
        help="seconds between the USR2 warning and the time limit",
    )
    g.add_argument(
        "--max-requeue",
        dest="max_requeue",
        type=int,
        default=3,
        help="requeues after a time limit or preemption",
    )
    g.add_argument(
        "--setup",
        action="append",
        default=[],
        metavar="SHELL_LINE",
        help="shell line run before each job (repeatable), e.g. 'source .venv/bin/activate'",
    )
    g.add_argument(
        "--slurm-option",
        dest="slurm_extra",
        action="append",
        type=_kv,
        default=[],
        metavar="KEY=VALUE",
        help="extra sbatch option (repeatable), e.g. account=abc",
    )
    g.add_argument(
        "--no-wait",
        dest="wait",
        action="store_false",
        help="Slurm: submit and exit (gather later with the same command, or "
        "`python -m flatbook show`)",
    )
    g.add_argument(
        "--force-resubmit",
        dest="force",
        action="store_true",
        help="submit runs even if a job of an earlier submission still runs them",
    )


def study_configs(
    setting: str, fields: Mapping[str, Any], axes: Mapping[str, Sequence[Any]]
) -> list[_ex.RunConfig]:
    """The configs of ``sweep --setting NAME``: the setting's grid
    (``flatbook.analysis.study_configs``) with ``--lr``/``--batch-size``/``--seed`` replacing
    its axes and every other given option (``fields``) overriding its base config."""
    from flatbook import analysis

    axes = dict(axes)
    over = dict(fields)
    lrs, bss, seeds = axes.pop("lr", None), axes.pop("batch_size", None), axes.pop("seed", None)
    for k, v in axes.items():  # other grid axes: one value each
        if len(v) != 1:
            raise ValueError(
                f"--{k.replace('_', '-')} takes one value with --setting (the setting's sweep "
                f"axes are --lr, --batch-size, --seed); got {list(v)}"
            )
        over[k] = v[0]
    return analysis.study_configs(setting, lrs=lrs, batch_sizes=bss, seeds=seeds, **over)


def options_from_args(ns: Any) -> ExecutorOptions:
    """:class:`ExecutorOptions` from the parsed ``sweep`` arguments."""
    return ExecutorOptions(
        kind=ns.executor, folder=ns.executor_folder, time_min=ns.time_min,
        partition=ns.partition, gpus=ns.gpus, cpus=ns.cpus, mem_gb=ns.mem_gb,
        parallelism=ns.parallelism, job_name=ns.job_name, signal_delay_s=ns.signal_delay_s,
        max_requeue=ns.max_requeue, setup=tuple(ns.setup), slurm_extra=dict(ns.slurm_extra),
    )  # fmt: skip


def uses_ensembles(ns: Any) -> bool:
    """Whether a parsed ``sweep`` runs through :func:`obtain_from_args` (a ``--setting`` with
    ``--engine ensemble`` on the inline or local executor)."""
    return bool(ns.setting) and getattr(ns, "engine", "solo") == "ensemble" and \
        ns.executor in ("inline", "local")


def obtain_from_args(configs: Sequence[_ex.RunConfig], ns: Any,
                     out: Callable[[str], None] = print) -> list[dict]:
    """The ``sweep --setting S --engine ensemble`` command: ``flatbook.analysis.obtain`` of the
    configs (compatible missing runs trained as ensembles; ``--executor local`` on
    ``--array-parallelism`` workers, default every core; inline: this process). Returns the
    ``run_one`` summaries."""
    from flatbook import analysis

    s = analysis.get_setting(ns.setting)
    store = store_dir(ns.results_dir, ns.setting)
    before = {c.run_id for c in configs
              if _finished_summary(c, store, current=True) is not None}
    workers = 1 if ns.executor == "inline" else ns.parallelism
    n_todo = len({c.run_id for c in configs} - before)
    out(f"{ns.executor} executor: {n_todo} job(s) submitted, {len(before)} finished run(s) "
        f"skipped; ensemble engine (compatible runs trained together, each stored as its "
        f"solo run)")
    results = analysis.obtain(configs, s, ns.results_dir, workers=workers, engine="ensemble")
    return [{"run_id": c.run_id, "status": r.status, "skipped": c.run_id in before,
             "error": None, "final": r.final} for c, r in zip(configs, results, strict=True)]


def run_from_args(
    configs: Sequence[_ex.RunConfig],
    ns: Any,
    options: ExecutorOptions | None = None,
    out: Callable[[str], None] = print,
) -> list[dict] | None:
    """The ``sweep --executor local|slurm`` command: submit, report, wait (unless
    ``--no-wait``). Returns the summaries, or None when not waiting."""
    options = options or options_from_args(ns)
    if not ns.wait and options.kind != "slurm":
        raise ValueError("--no-wait needs --executor slurm (local jobs are started by this "
                         "process)")  # fmt: skip
    sub = submit(configs, ns.results_dir, options, force=ns.force, setting=ns.setting)
    for w in sub.warnings:
        out(f"warning: {w}")
    out(sub.describe())
    if not ns.wait:
        return None
    return sub.wait(progress=bool(getattr(ns, "progress", True)))


__all__ = [
    "EXECUTORS",
    "ExecutorOptions",
    "Submission",
    "SweepJob",
    "add_arguments",
    "in_flight",
    "make_executor",
    "options_from_args",
    "run_from_args",
    "submit",
    "sweep",
]
