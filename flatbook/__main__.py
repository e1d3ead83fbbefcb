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
import csv
import json
import math
import operator
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flatbook import gn as _gn
from flatbook import runspec
from flatbook.store import printable, stale_runs

GRID_AXES = runspec.GRID_AXES


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
    """The ``flatbook`` argument parser (sub-commands run, sweep, show)."""
    parser = argparse.ArgumentParser(
        prog="flatbook",
        description="Train networks into the late phase and record sharpness, trace and "
                    "representation geometry (flatbook, Chen et al. arXiv 2310.01770).",
        epilog="Results go to RESULTS_DIR/<run_id>/{config.json,checkpoint.pt,results.json}.",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run (or resume) one configuration",
                           description="Run or resume one configuration.")  # fmt: skip
    _add_config_args(p_run, grid=False)
    p_run.add_argument("--restart", "--overwrite", dest="overwrite", action="store_true",
                       help="start the run over: its folder is first moved aside to "
                            "RESULTS_DIR/stale/<run_id>-<reason>/, never deleted (default: "
                            "finish or resume what is stored)")
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
    return parser


SHOW_COLUMNS = (("run_id", "run id"), ("status", "status"), ("step", "step"),
                ("loss", "loss"), ("train_loss", "train loss"), ("test_acc", "accuracy"),
                ("lambda_max", "λ_max"), ("trace_gn", _gn.show_label("trace_gn")),
                ("log_lvr_median", "log LVR"),
                ("note", "note"))  # fmt: skip
"""Columns of ``show``'s table: (key, header)."""

CSV_COLUMNS = ("run_id", "status", "step", "steps", "loss", "train_loss", "test_loss", "train_acc",
               "test_acc", "lambda_max", "trace_gn", "log_lvr_median", "model", "dataset", "lr",
               "batch_size", "seed", "dtype", "numerics_device", "numerics_threads",
               "numerics_dtype", "numerics_torch", "note")  # fmt: skip
"""Columns of ``show --format csv`` (``--format json`` gives every key)."""

ALIASES = {"accuracy": "test_acc", "acc": "test_acc",
           "log_lvr": "log_lvr_median", "trace": "trace_gn", "lmax": "lambda_max",
           "id": "run_id"}  # fmt: skip

_OPS: dict[str, Any] = {"<=": operator.le, ">=": operator.ge, "!=": operator.ne,
                        "==": operator.eq, "=": operator.eq, "<": operator.lt, ">": operator.gt,
                        "~": lambda a, b: str(b) in str(a)}  # fmt: skip


def _parse_filter(expr: str) -> tuple[str, str, Any]:
    """``KEY OP VALUE`` → ``(key, op, value)``, strictly: ``<``/``<=``/``>``/``>=`` need a
    number, and no value may start with an operator character (``lr<<0.2`` is an error, not
    a filter that matches nothing). ``config.KEY`` names a config field even where a record
    key of the same name exists."""
    m = re.fullmatch(r"\s*([A-Za-z_][\w.]*)\s*(<=|>=|!=|==|=|<|>|~)\s*(.*?)\s*", expr)
    shown = printable(repr(expr))
    if not m:
        raise ValueError(f"--filter {shown}: expected KEY OP VALUE with OP one of "
                         f"{list(_OPS)}, e.g. status=completed or lr<0.2")  # fmt: skip
    key, op, raw = m.groups()
    if not raw or raw[0] in "<>=!~":
        raise ValueError(f"--filter {shown}: the value after {op!r} is "
                         f"{printable(repr(raw))}; expected KEY OP VALUE, e.g. lr<0.2 or "
                         f"status=completed")  # fmt: skip
    try:
        val: Any = float(raw)
    except ValueError:
        if op in ("<", "<=", ">", ">="):
            raise ValueError(f"--filter {shown}: {op!r} compares numbers; "
                             f"{printable(repr(raw))} is not a number") from None
        val = raw
    return ALIASES.get(key, key), op, val


def _keep(row: dict[str, Any], flt: tuple[str, str, Any]) -> bool:
    key, op, val = flt
    v = row.get(key)
    if v is None:
        return False
    if isinstance(val, float) and not isinstance(v, bool) and isinstance(v, int | float):
        return bool(_OPS[op](float(v), val))
    if op not in ("=", "==", "!=", "~"):
        return False
    return bool(_OPS[op](str(v), str(val) if not isinstance(val, float) else f"{val:g}")) or (
        op in ("=", "==") and str(v) == str(val))


def _select(infos: list[Any], filters: Sequence[str], sort: str | None) -> list[dict[str, Any]]:
    pairs = [(i.row(), {f"config.{k}": v for k, v in (i.config or {}).items()}) for i in infos]
    keys = set().union(*(r.keys() | c.keys() for r, c in pairs)) if pairs else set()
    for expr in filters:
        flt = _parse_filter(expr)
        if pairs and flt[0] not in keys:
            raise ValueError(f"--filter {printable(repr(expr))}: unknown key "
                             f"{printable(repr(flt[0]))}; known: "
                             f"{printable(sorted(keys))}")  # fmt: skip
        pairs = [(r, c) for r, c in pairs if _keep({**r, **c}, flt)]
    rows = [r for r, _ in pairs]
    if sort:
        desc = sort.startswith("-")
        key = ALIASES.get(sort.lstrip("-"), sort.lstrip("-"))
        if rows and key not in keys:
            raise ValueError(f"--sort {printable(repr(sort))}: unknown key "
                             f"{printable(repr(key))}; known: {printable(sorted(keys))}")

        def k(r: dict[str, Any]) -> tuple:
            v = r.get(key)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return (1, 0, "")  # missing: last either way
            if isinstance(v, int | float) and not isinstance(v, bool):
                return (0, -v if desc else v, "")
            return (0, 0, str(v))

        rows.sort(key=k, reverse=False)
        if desc and rows and not isinstance(rows[0].get(key), int | float):
            rows.sort(key=lambda r: str(r.get(key, "")), reverse=True)
    return rows


def _cell(v: Any) -> str:
    """One table cell: ``—`` for none, 4 significant digits for floats, any other value
    printed without control characters and cut at 60 characters."""
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v) if abs(v) < 10**30 else f"{float(v):.4g}"
    text = printable(v)
    return text if len(text) <= 60 else text[:59] + "…"


def _table(rows: list[dict[str, Any]]) -> str:
    """An aligned text table of ``SHOW_COLUMNS`` (numbers right-aligned)."""
    heads = [h for _, h in SHOW_COLUMNS]
    cells = []
    for r in rows:
        line = []
        for k, _ in SHOW_COLUMNS:
            if k == "step" and r.get("steps") is not None and r.get("step") is not None:
                line.append(f"{r['step']}/{r['steps']}")
            elif k == "note":
                line.append(printable(r.get("note") or ""))
            else:
                line.append(_cell(r.get(k)))
        cells.append(line)
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]
    widths[-1] = len(heads[-1])  # the note (last, free text) is not padded
    numeric = [k not in ("run_id", "status", "note") for k, _ in SHOW_COLUMNS]

    def fmt(line: list[str]) -> str:
        parts = [c.rjust(w) if num else c.ljust(w)
                 for c, w, num in zip(line, widths, numeric, strict=True)]  # fmt: skip
        return "  ".join(parts).rstrip()

    out = [fmt(heads), fmt(["-" * w for w in widths])]
    out += [fmt(c) for c in cells]
    return "\n".join(out)


def _show(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from flatbook import experiment as ex

    try:
        infos = ex.inspect_store(ns.results_dir)
        rows = _select(infos, ns.filter, ns.sort)
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        parser.exit(2, f"flatbook show: error: {printable(e)}\n")
    if ns.format == "json":
        from flatbook._io import to_jsonable

        print(json.dumps(to_jsonable(rows), indent=1, allow_nan=False))
    elif ns.format == "csv":
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for r in rows:
            w.writerow(["" if r.get(k) is None else _csv_cell(r.get(k)) for k in CSV_COLUMNS])
    else:
        aside = stale_runs(ns.results_dir)
        if not infos:
            print(f"no runs in {printable(ns.results_dir)}")
        else:
            print(_table(rows))
            counts = {st: sum(r["status"] == st for r in rows) for st in ex.SHOW_STATUSES}
            print(f"{len(rows)} of {len(infos)} runs: "
                  + ", ".join(f"{st} {n}" for st, n in counts.items() if n))  # fmt: skip
        if aside:
            print(f"{len(aside)} earlier run(s) moved aside (kept, not listed): "
                  f"{printable(', '.join(str(p) for p in aside[:5]))}"
                  + (", …" if len(aside) > 5 else ""))  # fmt: skip
    return 0


def _csv_cell(v: Any) -> Any:
    """A CSV cell: numbers as they are, any other value without control characters."""
    return v if isinstance(v, int | float) else printable(v)


def _plot(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from flatbook import experiment as ex

    try:
        infos = ex.inspect_store(ns.results_dir)
        keep = {r["run_id"] for r in _select(infos, ns.filter, None)}
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        parser.exit(2, f"flatbook plot: error: {printable(e)}\n")
    runs = [i for i in infos if i.run_id in keep and i.records]
    keys = [ALIASES.get(k, k) for k in ns.keys]
    have = set().union(*(r.keys() for i in runs for r in i.records)) if runs else set()
    missing = [k for k in keys if k not in have]
    if not runs:
        parser.exit(2, f"flatbook plot: error: no run with records in "
                       f"{printable(ns.results_dir)}\n")  # fmt: skip
    if missing:
        parser.exit(2, f"flatbook plot: error: --keys {printable(missing)} are in no run's "
                       f"records; known: {printable(sorted(have))}\n")  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for i in runs:
            pts = [(r["step"], r[key]) for r in i.records
                   if r.get(key) is not None and r.get("step") is not None]
            if pts:
                x, y = zip(*pts, strict=True)
                ax.plot(x, y, ".-", ms=3, lw=1,
                        label=printable(i.run_id) if len(runs) <= 8 else None)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        if ns.logy:
            ax.set_yscale("log")
    if len(runs) <= 8:
        axes[0][0].legend(fontsize=6, frameon=False)
    fig.tight_layout()
    try:
        ns.out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(ns.out, dpi=120)
    except OSError as e:
        parser.exit(1, f"flatbook plot: error: cannot write {ns.out}: {e}\n")
    finally:
        plt.close(fig)
    print(f"{printable(ns.out)}: {len(runs)} runs, keys {printable(keys)}")
    return 0


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
    """Entry point of ``python -m flatbook`` / the ``flatbook`` console script."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    from flatbook import experiment as ex

    warnings.formatwarning = _one_line_warning  # "flatbook: NumericsWarning: …"

    if ns.command == "show":
        return _show(ns, parser)
    if ns.command == "plot":
        return _plot(ns, parser)
    from flatbook._io import StoreProblem, check_writable

    fields = _config_fields(ns, parser)
    try:
        if ns.command == "run":
            cfg = ex.RunConfig.from_dict(fields)
            res = ex.run(cfg, ns.results_dir, overwrite=ns.overwrite)
            print(_summary_line({"run_id": cfg.run_id, "status": res.status,
                                 "final": res.final}))  # fmt: skip
            if res.numerics_mismatch:
                print(f"note: stored numbers computed under other numerics "
                      f"({'; '.join(res.numerics_mismatch)})")  # fmt: skip
            print(f"results: {res.run_dir / 'results.json'}")
            return 0
        axes = {k: fields.pop(k) for k in GRID_AXES if isinstance(fields.get(k), list)}
        from flatbook import executors

        if ns.setting:  # an experiment chapter's sweep (flatbook.analysis), its measurements
            configs = executors.study_configs(ns.setting, fields, axes)
            base = configs[0]
        else:
            base = ex.RunConfig.from_dict(fields)
            configs = ex.grid(base, **axes) if axes else [base]
        ex.validate(configs)  # data-dependent checks before the first run starts
        check_writable(executors.store_dir(ns.results_dir, ns.setting), "--results-dir")
        if ns.executor != "inline" or ns.setting:
            ex_options = executors.options_from_args(ns)
    except StoreProblem as e:  # damaged file, no space, locked, other numerics, unwritable
        parser.exit(1, f"flatbook {ns.command}: {e}\n")
    except (ValueError, TypeError, FileNotFoundError) as e:
        parser.exit(2, f"flatbook {ns.command}: error: {_named(e)}\n")
    except KeyboardInterrupt as e:
        parser.exit(130, f"flatbook: interrupted ({e}); run the same command again to resume\n")
    except Exception as e:  # noqa: BLE001 - recorded in results.json
        parser.exit(1, f"flatbook {ns.command}: run failed: {type(e).__name__}: {e}\n")
    try:
        if executors.uses_ensembles(ns):
            summaries = executors.obtain_from_args(configs, ns)
        elif ns.executor != "inline" or ns.setting:
            summaries = executors.run_from_args(configs, ns, ex_options)
            if summaries is None:  # --no-wait: submitted; the same command gathers later
                return 0
        else:
            summaries = ex.sweep(configs, ns.results_dir, progress=base.progress)
    except KeyboardInterrupt as e:
        parser.exit(130, f"flatbook: interrupted ({e}); run the same command again to resume\n")
    except (ValueError, RuntimeError) as e:  # executor set-up (e.g. no Slurm on this machine)
        parser.exit(2, f"flatbook {ns.command}: error: {e}\n")
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
