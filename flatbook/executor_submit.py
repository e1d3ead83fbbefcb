"""Submitting a sweep's configs as jobs and gathering their outcome from the result store.

:func:`submit` hands every unfinished config to the executor of :class:`ExecutorOptions`
(runs already finished, or still queued or running from an earlier submission, are left
out) and returns a :class:`Submission`, whose :meth:`Submission.wait` returns one summary per
config read from the result store. :func:`sweep` is submit-then-wait, its options in one
:class:`SweepOptions` record. Re-exported by :mod:`flatbook.executors`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flatbook import experiment as _ex
from flatbook import train as _train
from flatbook._io import read_json
from flatbook.executor_jobs import SweepJob, _write_ledger, in_flight, store_dir
from flatbook.executor_options import ExecutorOptions, make_executor, trusted_pickle


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
        """The job callable of this submission (raises for a callback with a setting)."""
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
        """Start pending local jobs while fewer than ``parallelism`` are running; ledger them."""
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
    """submitit's ``(outcome, value)`` result pickle at ``path`` (check it first)."""
    from submitit.core.utils import pickle_load

    return pickle_load(path)


def _job_dict(cfg: _ex.RunConfig) -> dict[str, Any]:
    """The config a job receives, as a dict: progress bars off (in job logs they are noise;
    ``progress`` is operational, not part of the run id)."""
    return cfg.replace(progress=False).to_dict()


def _ledger_entry(job: Any, kind: str, store: Path) -> dict[str, Any]:
    """The ledger's entry for a job just submitted: its id, executor kind, store and time."""
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
    distinct = _distinct(configs)
    results_dir = Path(results_dir)
    folder = options.resolved_folder(results_dir)
    sub = Submission(distinct, results_dir, folder, options, setting=setting,
                     callback=callback)  # fmt: skip
    sub._job()  # validates setting / callback
    todo = _unfinished(sub)
    if todo and options.kind == "inline":
        _run_inline(sub, todo)
    elif todo:
        _submit_jobs(sub, todo, force)
    return sub


def _distinct(configs: Iterable[_ex.RunConfig]) -> list[_ex.RunConfig]:
    """The configs with one per run id (the first), in order; ``TypeError`` for a non-config."""
    distinct: dict[str, _ex.RunConfig] = {}
    for c in configs:
        if not isinstance(c, _ex.RunConfig):
            raise TypeError(f"submit needs RunConfig objects; got {type(c).__name__}")
        distinct.setdefault(c.run_id, c)
    return list(distinct.values())


def _unfinished(sub: Submission) -> list[_ex.RunConfig]:
    """The configs of ``sub`` without a finished result in its store; the others' run ids go
    to ``sub.skipped``. With a setting a result must also be current (the chapters' check)."""
    todo = []
    for cfg in sub.configs:
        if _finished_summary(cfg, sub.store, current=sub.setting is not None) is not None:
            sub.skipped.append(cfg.run_id)
        else:
            todo.append(cfg)
    return todo


def _run_inline(sub: Submission, todo: list[_ex.RunConfig]) -> None:
    """Run every config of ``todo`` here, one after the other; each job's error (or None) goes
    to ``sub.ran_inline``."""
    job = sub._job()
    for cfg in todo:
        out = job(_job_dict(cfg))
        sub.ran_inline[cfg.run_id] = out.get("error")


def _submit_jobs(sub: Submission, todo: list[_ex.RunConfig], force: bool) -> None:
    """Hand ``todo`` to ``sub``'s submitit executor, less the runs still in flight from an
    earlier submission (unless ``force``): local jobs become ``sub.pending`` (the first
    ``parallelism`` start now), Slurm jobs go in one array now; both are written to the ledger."""
    kind = sub.options.kind
    if not force:
        flying, warning = in_flight([c.run_id for c in todo], sub.folder, kind, sub.store)
        if warning:
            sub.warnings.append(warning)
        sub.in_flight = flying
        todo = [c for c in todo if c.run_id not in flying]
    if not todo:
        return
    sub._executor = make_executor(sub.options, sub.results_dir)
    if kind == "local":
        sub.pending = todo
        sub._start_local()  # the first ``parallelism`` jobs now, the rest in ``wait()``
        return
    job_fn = sub._job()
    with sub._executor.batch():
        delayed = [sub._executor.submit(job_fn, _job_dict(c)) for c in todo]
    sub.jobs = {c.run_id: j for c, j in zip(todo, delayed, strict=True)}
    _write_ledger(sub.folder,
                  {rid: _ledger_entry(j, "slurm", sub.store) for rid, j in sub.jobs.items()})


@dataclass(frozen=True)
class SweepOptions:
    """What :func:`sweep` does besides submitting (the ``ExecutorOptions`` say how jobs run).

    Args:
        wait: wait for the jobs and gather their summaries; ``False`` (Slurm only) returns
            once they are submitted.
        callback: ``callback(step, model, record_or_None)`` after every training step (see
            :class:`SweepJob`); must be picklable.
        force: submit runs even if a job of an earlier submission still runs them.
        setting: an experiment chapter's setting (``flatbook.analysis.SETTINGS``): run the
            configs with the chapters' measurements into their store.
        progress: a progress bar over the jobs while waiting.
        poll_s: seconds between checks while waiting (default 0.2 local, 30 Slurm).
    """

    wait: bool = True
    callback: _train.Callback | None = None
    force: bool = False
    setting: str | None = None
    progress: bool = False
    poll_s: float | None = None

    @classmethod
    def from_flags(cls, **flags: Any) -> SweepOptions:
        """The record from :func:`sweep`'s keyword form (``wait=False, setting=…``);
        ``TypeError`` naming an unknown keyword and listing the allowed ones."""
        allowed = [f.name for f in fields(cls)]
        for key in flags:
            if key not in allowed:
                raise TypeError(f"sweep() got an unexpected keyword {key!r}; allowed: "
                                f"{allowed}, or sweep_options=SweepOptions(...)")
        return cls(**flags)


def sweep(
    configs: Iterable[_ex.RunConfig],
    results_dir: str | Path = _ex.DEFAULT_RESULTS_DIR,
    options: ExecutorOptions | None = None,
    *,
    sweep_options: SweepOptions | None = None,
    **flags: Any,
) -> Submission:
    """:func:`submit`, then (``wait=True``) wait for the jobs. ``wait=False`` is allowed for
    Slurm only (local jobs are started by the waiting process). The summaries are
    ``submission.summaries()`` (or the return value of ``submission.wait()``).

    The options are ``sweep_options=SweepOptions(...)`` or, equivalently, its fields as
    keywords (``wait=``, ``callback=``, ``force=``, ``setting=``, ``progress=``,
    ``poll_s=``); not both."""
    if sweep_options is not None and flags:
        raise TypeError(f"sweep() takes sweep_options or its keywords {sorted(flags)}, "
                        "not both")
    how = sweep_options if sweep_options is not None else SweepOptions.from_flags(**flags)
    options = options or ExecutorOptions()
    if not how.wait and options.kind == "local":
        raise ValueError("wait=False needs executor='slurm' (local jobs are started by the "
                         "waiting process)")  # fmt: skip
    sub = submit(configs, results_dir, options, callback=how.callback, force=how.force,
                 setting=how.setting)  # fmt: skip
    if how.wait:
        sub.wait(poll_s=how.poll_s, progress=how.progress)
    return sub
