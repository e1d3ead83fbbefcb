"""Command line: ``python -m flatbook run|sweep|show|plot`` (also installed as ``flatbook``).

Examples::

    python -m flatbook run                                  # the default digits MLP run
    python -m flatbook run --model lenet5 --lr 0.05 --steps 5000 --no-progress
    python -m flatbook run --dataset cifar10 --classes 3 5 --model vgg11 --device auto
    python -m flatbook sweep --lr 0.05 0.1 0.2 --batch-size 8 32 --seed 0 1
    python -m flatbook sweep --lr 0.05 0.1 --seed 0 1 --executor slurm --partition gpu --gpus 1 \\
        --device auto                                   # one Slurm job per config
    python -m flatbook show results/                      # table: every run, incl. interrupted
    python -m flatbook show results/ --format csv --sort=-lambda_max --filter "lr<0.2"
    python -m flatbook plot results/ --keys lambda_max trace_gn --out trajectories.png

Unspecified options take the defaults of :class:`flatbook.experiment.RunConfig` (or of the
JSON file given with ``--config``). Interrupt a run with Ctrl-C (or SIGTERM): the state is
checkpointed, and the same command resumes it. Finished runs are never recomputed (use
``--restart`` for ``run``). A damaged store file stops the command with one line naming the
file and the way out; exit codes: 0 success, 1 a run failed or a store problem, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from flatbook import runspec
from flatbook.cli_show import ALIASES, CSV_COLUMNS, SHOW_COLUMNS, plot_command, show_command
from flatbook.store import printable

GRID_AXES = runspec.GRID_AXES

__all__ = ["ALIASES", "CSV_COLUMNS", "GRID_AXES", "MAX_CONFIG_BYTES", "SHOW_COLUMNS",
           "build_parser", "main", "read_config_arg"]


def _add_config_args(p: argparse.ArgumentParser, grid: bool) -> None:
    """The run parameters' flags (declared in :data:`flatbook.runspec.PARAMS`), then the
    options of the command itself."""
    g = runspec.add_arguments(p, grid)["execution"]
    g.add_argument("--config", type=Path,
                   help="JSON file with RunConfig fields, e.g. a stored config.json (flags "
                        "override; default: none)")  # fmt: skip
    g.add_argument("--results-dir", dest="results_dir", default="results", type=Path,
                   help="result store (default: ./results)")


def _say_defaults(p: argparse.ArgumentParser) -> None:
    """Append ``(default: …)`` to every option's help that does not state its default yet."""
    for a in p._actions:  # noqa: SLF001 - argparse has no public iterator over actions
        if not a.option_strings or a.help in (None, argparse.SUPPRESS) or "default" in a.help:
            continue
        d = a.default
        if d is argparse.SUPPRESS:
            continue
        if isinstance(a, argparse._StoreTrueAction | argparse._StoreFalseAction):  # noqa: SLF001
            text = "off"
        elif d is None or d == []:
            text = "none"
        else:
            text = str(d)
        a.help = f"{a.help} (default: {text.replace('%', '%%')})"


def build_parser() -> argparse.ArgumentParser:
    """The ``flatbook`` argument parser (sub-commands run, sweep, show, plot)."""
    parser = argparse.ArgumentParser(
        prog="flatbook",
        description="Train networks into the late phase and record sharpness, trace and "
                    "representation geometry (flatbook, Chen et al. arXiv 2310.01770).",
        epilog="Results go to RESULTS_DIR/<run_id>/{config.json,checkpoint.pt,results.json}.",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(sub)
    _add_sweep_parser(sub)
    _add_show_parser(sub)
    _add_plot_parser(sub)
    return parser


def _add_run_parser(sub: Any) -> None:
    """``run``: the run parameters' flags, ``--config``, ``--results-dir``, ``--restart``."""
    p_run = sub.add_parser("run", help="run (or resume) one configuration",
                           description="Run or resume one configuration.")  # fmt: skip
    _add_config_args(p_run, grid=False)
    p_run.add_argument("--restart", "--overwrite", dest="overwrite", action="store_true",
                       help="start the run over: its folder is first moved aside to "
                            "RESULTS_DIR/stale/<run_id>-<reason>/, never deleted (default: "
                            "finish or resume what is stored)")


def _add_sweep_parser(sub: Any) -> None:
    """``sweep``: the run parameters' flags (grid axes take several values), then the
    executor's (:func:`flatbook.executors.add_arguments`); every help states its default."""
    p_sweep = sub.add_parser(
        "sweep", help="run a grid of configurations",
        description="Cartesian grid over " + ", ".join("--" + a.replace("_", "-")
                                                       for a in GRID_AXES)
        + " (several values each); finished runs are skipped, failures do not stop the sweep.",
    )  # fmt: skip
    _add_config_args(p_sweep, grid=True)
    from flatbook.executors import add_arguments as _add_executor_args

    _add_executor_args(p_sweep)  # --executor local|slurm and the Slurm options
    _say_defaults(p_sweep)


def _add_show_parser(sub: Any) -> None:
    """``show``: the store, ``--format``, ``--sort``, ``--filter``, ``--all``."""
    p_show = sub.add_parser(
        "show", help="list stored runs (every status)",
        description="List every run of a store: completed, diverged, failed, interrupted, "
                    "running and damaged (with what is wrong and the way out).",
        epilog="Columns (keys for --sort / --filter): " + ", ".join(
            f"{k} ({h})" for k, h in SHOW_COLUMNS) + "; also any config field (lr, "
        "batch_size, seed, …), record key (train_loss, test_acc, …) or numerics_threads.",
    )  # fmt: skip
    p_show.add_argument("results_dir", nargs="?", default="results", type=Path,
                        help="the result store (default: ./results)")
    p_show.add_argument("--format", choices=("table", "csv", "json"), default="table",
                        help="output format (default: table)")
    p_show.add_argument("--sort", default="run_id", metavar="KEY",
                        help="sort by this key, '-KEY' descending (default: run_id)")
    p_show.add_argument("--filter", action="append", default=[], metavar="EXPR",
                        help="keep runs with KEY OP VALUE, OP one of = != < <= > >= ~ "
                             "(contains); repeatable (default: all runs)")
    p_show.add_argument("--all", action="store_true",
                        help="kept for compatibility: every run is listed anyway")


def _add_plot_parser(sub: Any) -> None:
    """``plot``: the store, ``--keys``, ``--out``, ``--filter``, ``--logy``."""
    p_plot = sub.add_parser(
        "plot", help="plot trajectories of stored runs to a PNG",
        description="One panel per key, one line per run (record value against step).",
    )  # fmt: skip
    p_plot.add_argument("results_dir", type=Path, help="the result store")
    p_plot.add_argument("--keys", nargs="+", default=["train_loss", "lambda_max"],
                        metavar="KEY", help="record keys to plot (default: train_loss "
                                            "lambda_max)")
    p_plot.add_argument("--out", type=Path, default=Path("trajectories.png"),
                        help="PNG file to write (default: ./trajectories.png)")
    p_plot.add_argument("--filter", action="append", default=[], metavar="EXPR",
                        help="as for show (default: all runs)")
    p_plot.add_argument("--logy", action="store_true", help="log-scale y axes (default: "
                                                            "linear)")


def _config_fields(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The run's parameters: ``--config`` (a JSON file) overridden by the flags given."""
    base: dict[str, Any] = {}
    if getattr(ns, "config", None) is not None:
        try:
            base = read_config_arg(ns.config)
        except (OSError, ValueError) as e:
            parser.error(f"--config {printable(ns.config)}: {printable(e)}")
    flags = runspec.given(ns)
    fields = runspec.merge(base, flags)
    try:
        runspec.check_flags(flags, fields)
    except ValueError as e:
        parser.exit(2, f"flatbook {ns.command}: error: {e}\n")
    return fields


def _named(e: BaseException) -> str:
    """An error message led by the flag of the parameter it is about (``--n-train: …``)."""
    flag = runspec.flag_of(getattr(e, "param", None))
    return f"{flag}: {e}" if flag and not str(e).startswith(flag) else str(e)


MAX_CONFIG_BYTES = 1 << 20
"""Largest ``--config`` file read (a config is a few hundred bytes)."""


def read_config_arg(path: Path) -> dict[str, Any]:
    """The RunConfig fields of a ``--config`` file: a JSON object of fields, or a stored
    ``config.json`` (its ``"config"`` object). ``ValueError`` saying what is wrong otherwise
    (not UTF-8 text, not JSON, too large or too deeply nested, not an object)."""
    from flatbook._io import JSONLimitError, loads_limited

    with open(path, "rb") as fh:
        data = fh.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ValueError(f"larger than {MAX_CONFIG_BYTES // 1024} KB: not a config file")
    try:
        doc = loads_limited(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text: expected a JSON object of RunConfig fields") from None
    except JSONLimitError as e:
        raise ValueError(f"{e}: expected a JSON object of RunConfig fields") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e}): expected a JSON object of RunConfig "
                         f"fields") from None  # fmt: skip
    if not isinstance(doc, dict):
        raise ValueError(f"holds a JSON {type(doc).__name__}, not an object of RunConfig "
                         f"fields (e.g. {{\"lr\": 0.1, \"steps\": 1000}})")  # fmt: skip
    if isinstance(doc.get("config"), dict):  # a stored config.json
        doc = doc["config"]
    return doc


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _summary_line(s: dict[str, Any]) -> str:
    f = s.get("final") or {}
    parts = [
        s["run_id"],
        s["status"] + (" (skipped: already finished)" if s.get("skipped") else ""),
    ]
    for k in ("step", "train_loss", "test_acc", "lambda_max", "trace_gn"):
        if k in f:
            parts.append(f"{k}={_fmt(f[k])}")
    if s.get("error"):
        parts.append(f"error: {s['error']}")
    return "  ".join(parts)


def _one_line_warning(message: Any, category: type, *args: Any, **kw: Any) -> str:
    return f"flatbook: {category.__name__}: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m flatbook`` / the ``flatbook`` console script: parse, then
    ``show`` / ``plot`` a store, or run one config / a sweep and print one line per run.
    Exit code 0 success, 1 a run failed or a store problem, 2 bad input, 130 interrupted."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    warnings.formatwarning = _one_line_warning  # "flatbook: NumericsWarning: …"

    if ns.command == "show":
        return show_command(ns, parser)
    if ns.command == "plot":
        return plot_command(ns, parser)
    fields = _config_fields(ns, parser)
    plan = _prepare(ns, parser, fields)
    if isinstance(plan, int):  # ``run``: done
        return plan
    summaries = _execute_sweep(ns, parser, plan)
    if summaries is None:  # --no-wait: submitted; the same command gathers later
        return 0
    return _print_summaries(ns, summaries)


class _SweepPlan(NamedTuple):
    """What ``sweep`` runs: the configs, the first one (its ``progress`` flag), and the
    executor options (None for the plain inline sweep)."""

    configs: list[Any]
    base: Any
    options: Any


def _prepare(ns: argparse.Namespace, parser: argparse.ArgumentParser,
             fields: dict[str, Any]) -> int | _SweepPlan:
    """``run``: run the config and return the exit code; ``sweep``: the checked
    :class:`_SweepPlan`. Errors exit with their code: 1 store problem or failed run, 2 bad
    input, 130 interrupted."""
    from flatbook._io import StoreProblem

    try:
        if ns.command == "run":
            return _run(ns, fields)
        return _plan_sweep(ns, fields)
    except StoreProblem as e:  # damaged file, no space, locked, other numerics, unwritable
        parser.exit(1, f"flatbook {ns.command}: {e}\n")
    except (ValueError, TypeError, FileNotFoundError) as e:
        parser.exit(2, f"flatbook {ns.command}: error: {_named(e)}\n")
    except KeyboardInterrupt as e:
        parser.exit(130, f"flatbook: interrupted ({e}); run the same command again to resume\n")
    except Exception as e:  # noqa: BLE001 - recorded in results.json
        parser.exit(1, f"flatbook {ns.command}: run failed: {type(e).__name__}: {e}\n")


def _run(ns: argparse.Namespace, fields: dict[str, Any]) -> int:
    """``run``: run (or resume) the config of ``fields``; print its summary line, a note when
    the stored numbers came from other numerics, and where the results are."""
    from flatbook import experiment as ex

    cfg = ex.RunConfig.from_dict(fields)
    res = ex.run(cfg, ns.results_dir, overwrite=ns.overwrite)
    print(_summary_line({"run_id": cfg.run_id, "status": res.status,
                         "final": res.final}))  # fmt: skip
    if res.numerics_mismatch:
        print(f"note: stored numbers computed under other numerics "
              f"({'; '.join(res.numerics_mismatch)})")  # fmt: skip
    print(f"results: {res.run_dir / 'results.json'}")
    return 0


def _plan_sweep(ns: argparse.Namespace, fields: dict[str, Any]) -> _SweepPlan:
    """``sweep``'s configs — the grid over the axes given several values, or a setting's sweep
    (``--setting``) — checked against their data and the store before the first run starts."""
    from flatbook import executors
    from flatbook import experiment as ex
    from flatbook._io import check_writable

    axes = {k: fields.pop(k) for k in GRID_AXES if isinstance(fields.get(k), list)}
    if ns.setting:  # an experiment chapter's sweep (flatbook.analysis), its measurements
        configs = executors.study_configs(ns.setting, fields, axes)
        base = configs[0]
    else:
        base = ex.RunConfig.from_dict(fields)
        configs = ex.grid(base, **axes) if axes else [base]
    ex.validate(configs)  # data-dependent checks before the first run starts
    check_writable(executors.store_dir(ns.results_dir, ns.setting), "--results-dir")
    options = None
    if ns.executor != "inline" or ns.setting:
        options = executors.options_from_args(ns)
    return _SweepPlan(configs, base, options)


def _execute_sweep(ns: argparse.Namespace, parser: argparse.ArgumentParser,
                   plan: _SweepPlan) -> list[dict[str, Any]] | None:
    """Run the sweep — the ensemble engine, the executor's jobs, or one run after the other
    here — and return one summary per config (None: submitted without waiting)."""
    from flatbook import executors
    from flatbook import experiment as ex

    try:
        if executors.uses_ensembles(ns):
            return executors.obtain_from_args(plan.configs, ns)
        if ns.executor != "inline" or ns.setting:
            return executors.run_from_args(plan.configs, ns, plan.options)
        return ex.sweep(plan.configs, ns.results_dir, progress=plan.base.progress)
    except KeyboardInterrupt as e:
        parser.exit(130, f"flatbook: interrupted ({e}); run the same command again to resume\n")
    except (ValueError, RuntimeError) as e:  # executor set-up (e.g. no Slurm on this machine)
        parser.exit(2, f"flatbook {ns.command}: error: {e}\n")


def _print_summaries(ns: argparse.Namespace, summaries: list[dict[str, Any]]) -> int:
    """One line per run, then the count per status; exit code 1 if a run did not finish."""
    from flatbook import experiment as ex

    for s in summaries:
        print(_summary_line(s))
    n_failed = sum(s["status"] not in ex.FINISHED for s in summaries)
    extra = sorted({s["status"] for s in summaries} - set(ex.STATUSES))  # interrupted, in_flight
    print(f"{len(summaries)} runs: " + ", ".join(
        f"{st} {sum(s['status'] == st for s in summaries)}" for st in (*ex.STATUSES, *extra)
    ) + f"; results in {ns.results_dir}")  # fmt: skip
    return 1 if n_failed else 0


if __name__ == "__main__":
    sys.exit(main())
