"""The executor half of the ``sweep`` command: its argument group (``--executor``,
``--setting``, the Slurm options) and the steps the command takes from the parsed arguments —
the configs of a setting (:func:`study_configs`), the :class:`ExecutorOptions`
(:func:`options_from_args`), and running them (:func:`obtain_from_args` with the ensemble
engine, else :func:`run_from_args`). Re-exported by :mod:`flatbook.executors`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from flatbook import experiment as _ex
from flatbook.executor_jobs import store_dir
from flatbook.executor_options import DEFAULT_SLURM_TIME_MIN, EXECUTORS, ExecutorOptions
from flatbook.executor_submit import _finished_summary, submit


def _kv(v: str) -> tuple[str, str]:
    """``--slurm-option KEY=VALUE`` → ``(KEY, VALUE)``; argparse's error otherwise."""
    if "=" not in v:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {v!r}")
    k, val = v.split("=", 1)
    return k.strip(), val


def add_arguments(parser: Any) -> None:
    """Add the executor options to the ``sweep`` sub-command's parser: one argument group
    ("executor") holding what runs the configs, the job resources and the submission flags."""
    g = parser.add_argument_group(
        "executor",
        "run each config as its own job via submitit (resubmitting skips finished runs and "
        "resumes interrupted ones)",
    )
    _add_engine_args(g)
    _add_resource_args(g)
    _add_submission_args(g)


def _add_engine_args(g: Any) -> None:
    """``--executor``, ``--setting``, ``--engine``, ``--executor-folder``: what runs the
    configs, and where its job files go."""
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


def _add_resource_args(g: Any) -> None:
    """What one job gets: partition, time limit, GPUs, cores, memory, how many at once, name."""
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


def _add_submission_args(g: Any) -> None:
    """Requeueing, set-up lines, extra sbatch options, and whether to wait or resubmit."""
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
