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

Modules: :mod:`flatbook.executor_options` (:class:`ExecutorOptions`, the executor folder,
:func:`trusted_pickle`, :func:`make_executor`), :mod:`flatbook.executor_jobs` (:class:`SweepJob`,
:func:`run_study_one`, the ledger and :func:`in_flight`), :mod:`flatbook.executor_submit`
(:func:`submit`, :class:`Submission`, :func:`sweep` and its :class:`SweepOptions`),
:mod:`flatbook.executor_cli` (the ``sweep`` command's executor arguments and steps). Every
public name is importable from here.
"""

from __future__ import annotations

from flatbook.executor_cli import add_arguments as add_arguments
from flatbook.executor_cli import obtain_from_args as obtain_from_args
from flatbook.executor_cli import options_from_args as options_from_args
from flatbook.executor_cli import run_from_args as run_from_args
from flatbook.executor_cli import study_configs as study_configs
from flatbook.executor_cli import uses_ensembles as uses_ensembles
from flatbook.executor_jobs import SweepJob as SweepJob
from flatbook.executor_jobs import in_flight as in_flight
from flatbook.executor_jobs import run_study_one as run_study_one
from flatbook.executor_jobs import store_dir as store_dir
from flatbook.executor_options import ACTIVE_LOCAL as ACTIVE_LOCAL
from flatbook.executor_options import DEFAULT_LOCAL_TIME_MIN as DEFAULT_LOCAL_TIME_MIN
from flatbook.executor_options import DEFAULT_SLURM_TIME_MIN as DEFAULT_SLURM_TIME_MIN
from flatbook.executor_options import EXECUTORS as EXECUTORS
from flatbook.executor_options import ExecutorOptions as ExecutorOptions
from flatbook.executor_options import default_folder as default_folder
from flatbook.executor_options import make_executor as make_executor
from flatbook.executor_options import trusted_pickle as trusted_pickle
from flatbook.executor_submit import Submission as Submission
from flatbook.executor_submit import SweepOptions as SweepOptions
from flatbook.executor_submit import _finished_summary as _finished_summary
from flatbook.executor_submit import _job_error as _job_error
from flatbook.executor_submit import _store_summary as _store_summary
from flatbook.executor_submit import submit as submit
from flatbook.executor_submit import sweep as sweep

__all__ = [
    "ACTIVE_LOCAL",
    "DEFAULT_LOCAL_TIME_MIN",
    "DEFAULT_SLURM_TIME_MIN",
    "EXECUTORS",
    "ExecutorOptions",
    "Submission",
    "SweepJob",
    "SweepOptions",
    "add_arguments",
    "default_folder",
    "in_flight",
    "make_executor",
    "obtain_from_args",
    "options_from_args",
    "run_from_args",
    "run_study_one",
    "store_dir",
    "study_configs",
    "submit",
    "sweep",
    "trusted_pickle",
    "uses_ensembles",
]
