"""How the jobs of a sweep run: :class:`ExecutorOptions` (checked on construction), the
executor's private folder outside the result store (:func:`default_folder`), the ownership
check before a job's result pickle is loaded (:func:`trusted_pickle`), and the submitit
executor built from the options (:func:`make_executor`). Re-exported by
:mod:`flatbook.executors`, which describes the whole job machinery.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flatbook._validate import check_choice, check_positive_float, check_positive_int

EXECUTORS = ("inline", "local", "slurm")
"""``inline``: :func:`flatbook.experiment.sweep` in this process (no submitit); ``local``:
one subprocess per config on this machine; ``slurm``: one Slurm array task per config."""

DEFAULT_LOCAL_TIME_MIN = 7 * 24 * 60
"""Local jobs: submitit's timeout (minutes); effectively none."""

DEFAULT_SLURM_TIME_MIN = 240
"""Slurm jobs: the time limit (minutes) when ``time_min`` is not given; a run that needs longer
is checkpointed and requeued (``max_requeue``)."""

ACTIVE_LOCAL = "RUNNING"
"""The state submitit reports for a local job that is still running."""


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
        check_choice(self.kind, "executor", EXECUTORS)
        check_positive_int(self.time_min, "time_min", allow_none=True)
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or self.gpus < 0:
            raise ValueError(f"gpus must be an integer ≥ 0; got {self.gpus!r}")
        check_positive_int(self.cpus, "cpus")
        if self.mem_gb is not None:
            check_positive_float(self.mem_gb, "mem_gb")
        check_positive_int(self.parallelism, "parallelism", allow_none=True)
        check_positive_int(self.signal_delay_s, "signal_delay_s")
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
        """The time limit per job in minutes: ``time_min``, else :data:`DEFAULT_SLURM_TIME_MIN`
        (Slurm) or :data:`DEFAULT_LOCAL_TIME_MIN` (local and inline)."""
        if self.time_min is not None:
            return int(self.time_min)
        return DEFAULT_SLURM_TIME_MIN if self.kind == "slurm" else DEFAULT_LOCAL_TIME_MIN


def default_folder(results_dir: str | Path) -> Path:
    """The executor's folder for a store, outside it: ``$FLATBOOK_EXECUTOR_DIR`` (or
    ``$XDG_CACHE_HOME/flatbook/submitit``, or ``~/.cache/flatbook/submitit``) ``/
    <store name>-<hash of its absolute path>``, created with mode 0700 (its pickles cannot be
    planted by a user who can write the store)."""
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
    folder = options.resolved_folder(results_dir) / "%j"
    if options.kind == "inline":
        raise ValueError("executor='inline' runs in this process: there is no submitit executor")
    if options.kind == "local":
        return _local_executor(options, folder)
    if shutil.which("srun") is None or shutil.which("sbatch") is None:
        raise RuntimeError(
            "executor='slurm' needs the Slurm commands srun and sbatch on PATH (run the sweep "
            "on a cluster login node), or use executor='local'"
        )
    return _slurm_executor(options, folder)


def _local_executor(options: ExecutorOptions, folder: Path) -> Any:
    """``submitit.LocalExecutor`` logging to ``folder``: timeout, USR2 delay, GPUs, setup."""
    import submitit

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


def _slurm_executor(options: ExecutorOptions, folder: Path) -> Any:
    """``submitit.SlurmExecutor`` logging to ``folder``, one node and one task per job; the
    options left unset are left to the cluster's defaults."""
    import submitit

    ex = submitit.SlurmExecutor(folder, max_num_timeout=options.max_requeue)
    params: dict[str, Any] = {
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
    """sbatch's ``--mem`` for ``gb`` GB: whole GB as ``"16GB"``, else rounded up to MB."""
    return f"{int(gb)}GB" if float(gb) == int(gb) else f"{int(math.ceil(gb * 1024))}MB"
