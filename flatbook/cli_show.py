"""The ``show`` and ``plot`` commands: a store's runs as a table, CSV or JSON (with
``--filter KEY OP VALUE`` and ``--sort [-]KEY``), and their record trajectories as a PNG.
Called by :func:`flatbook.__main__.main`, which also re-exports the column constants.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import operator
import re
import sys
from collections.abc import Sequence
from typing import Any

from flatbook import gn as _gn
from flatbook.store import printable, stale_runs

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
    """Whether ``row`` passes the filter ``(key, op, value)``: numbers compare as numbers,
    anything else only by (in)equality or ``~`` (contains); a missing key never passes."""
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
    """The rows of the runs ``infos`` that every filter keeps, sorted by ``sort`` (``-KEY``
    descending; missing values last); ``ValueError`` naming an unknown key."""
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


def show_command(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``show``: every run of the store ``ns.results_dir`` that ``--filter`` keeps, sorted by
    ``--sort``, as an aligned table (with the count per status and the runs moved aside),
    CSV (:data:`CSV_COLUMNS`) or JSON (every key); exit 2 naming a bad store, filter or key."""
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


def plot_command(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``plot``: one panel per record key of ``--keys``, one line per selected run (the record's
    value against its step), written to ``--out`` as a PNG (120 dpi); exit 2 when no run has
    records or a key is in none, 1 when the file cannot be written."""
    runs, keys = _plot_runs(ns, parser)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = _draw(plt, runs, keys, ns.logy)
    try:
        ns.out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(ns.out, dpi=120)
    except OSError as e:
        parser.exit(1, f"flatbook plot: error: cannot write {ns.out}: {e}\n")
    finally:
        plt.close(fig)
    print(f"{printable(ns.out)}: {len(runs)} runs, keys {printable(keys)}")
    return 0


def _plot_runs(ns: argparse.Namespace,
               parser: argparse.ArgumentParser) -> tuple[list[Any], list[str]]:
    """The runs ``plot`` draws (those ``--filter`` keeps that have records) and its keys
    (aliases resolved); exit 2 naming the problem when there is nothing to draw."""
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
    return runs, keys


def _draw(plt: Any, runs: list[Any], keys: list[str], logy: bool) -> Any:
    """The figure: a row of panels, one per key, each run's (step, value) points joined;
    a legend of run ids when there are at most 8 runs."""
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
        if logy:
            ax.set_yscale("log")
    if len(runs) <= 8:
        axes[0][0].legend(fontsize=6, frameon=False)
    fig.tight_layout()
    return fig
