"""The extended study: a second architecture at CPU scale, run on request.

``python scripts/extended_study.py [--results-dir DIR] [--settings digits-lenet mnist1d-mlp]
[--replicates K]`` computes every missing run of each setting into the chapters' result
store through the ensemble engines (LeNet-5 by :mod:`flatbook.ensemble_func`, the MLP by
:mod:`flatbook.ensemble`; resumable: re-run the same command after an interruption; runs go
to every core), then prints, per setting, its wall time and the machine's load, and the
verdict table of ``flatbook.analysis.evaluate_claims`` as Markdown — the table the README
records. ``--replicates K`` computes only the first K replicates of every cell (a part of the
study with the same run ids: the rest is computed by a later full call), to time a part and
extrapolate. The same runs are read by the reproduction report (``book/exp_report.md``,
parameter ``extended``) and by any experiment chapter with ``-p setting digits-lenet``.

After the table it prints the claim ``consistency`` scored across settings
(:func:`flatbook.analysis.evaluate_consistency`: its verdict and each measure's sign per
setting) on the extended settings and, unless ``--no-default``, the default study
``digits-mlp`` read from ``--default-results-dir`` (default: the same store) when all of its
runs are stored there (it is never computed here: the book computes it). ``--read-only``
computes nothing: every study is read from its store as stored (version check only, numerics
fingerprint not compared; a missing run fails), to score runs computed by an earlier code
version.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--settings", nargs="+", default=["digits-lenet", "mnist1d-mlp"],
                    help="settings to run (default: digits-lenet mnist1d-mlp)")
    ap.add_argument("--results-dir", default=None,
                    help="result store (default: the book's _build/exp_results)")
    ap.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (2000)")
    ap.add_argument("--workers", type=int, default=None,
                    help="worker processes (default: every core)")
    ap.add_argument("--replicates", type=int, default=None,
                    help="only the first K replicates of every cell (default: all)")
    ap.add_argument("--no-default", action="store_true",
                    help="leave the default study digits-mlp out of the consistency row")
    ap.add_argument("--default-results-dir", default=None,
                    help="store of the default study (default: --results-dir)")
    ap.add_argument("--read-only", action="store_true",
                    help="compute nothing: read every study as stored (version check only)")
    return ap


def _load() -> str:
    """The machine's 1-, 5- and 15-minute load averages, as ``uptime`` prints them."""
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not POSIX
        return "unknown"


def _read(name: str, results_dir: str | None, seeds: object = None) -> object:
    """The study of setting ``name`` read from its store without computing or moving any run:
    every run must be stored; the flatbook version is checked, the numeric code hash and the
    numerics fingerprint are not (runs of an earlier code version are read as stored)."""
    from flatbook import analysis as A
    from flatbook import experiment as E

    s = A.get_setting(name)
    configs = A.study_configs(name, seeds=seeds)
    store = A.store_for(results_dir, s)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [E.load_results(store, c, check="version", numerics="ignore")
                   for c in configs]
    prov = [r.data.get("provenance", {}) for r in results]
    codes = sorted({str(p.get("code_hash", "?"))[:10] for p in prov})
    commits = sorted({str(p.get("git", {}).get("commit", "?"))[:7] for p in prov})
    print(f"(`{name}`: {len(results)} runs read from {store}, numeric code {codes} of "
          f"commits {commits}; "
          f"{len(caught)} warnings: {str(caught[0].message) if caught else ''})")
    return A.Study(s, configs, results, s.loss_threshold)


def _study(name: str, a: argparse.Namespace) -> tuple[object, str]:
    """(the study of setting ``name``, its line: runs, completed, interpolating, wall time
    and load), computing its missing runs unless ``--read-only``."""
    from flatbook import analysis as A

    s = A.get_setting(name)
    seeds = None if a.replicates is None else s.seeds[:a.replicates]
    load0, t0 = _load(), time.perf_counter()
    if a.read_only:
        st = _read(name, a.results_dir, seeds)
    else:
        configs = A.study_configs(name, seeds=seeds)
        results = A.obtain(configs, s, a.results_dir, workers=a.workers)
        st = A.Study(s, configs, results, s.loss_threshold)
    dt = time.perf_counter() - t0
    return st, (f"- `{name}` ({s.description}): {st.n_runs} runs, {len(st.finished)} "
                f"completed, {len(st.interpolating)} interpolating; {dt / 60:.1f} min "
                f"wall (load {load0} before, {_load()} after)")


def _default_study(a: argparse.Namespace) -> object | None:
    """The default study ``digits-mlp`` read from its store (never computed), or None with a
    printed reason when ``--no-default`` or a run is missing or refused."""
    from flatbook import analysis as A
    from flatbook import experiment as E

    if a.no_default or A.DEFAULT_SETTING in a.settings:
        return None
    where = a.default_results_dir or a.results_dir
    try:
        if a.read_only:
            return _read(A.DEFAULT_SETTING, where)
        return A.load_study(A.DEFAULT_SETTING, results_dir=where, compute_missing=False)
    except (FileNotFoundError, E.StaleResultsError) as e:
        print(f"(the default study `{A.DEFAULT_SETTING}` is left out of the consistency "
              f"row: {type(e).__name__}: {str(e).splitlines()[0]})")
        return None


def _print_consistency(studies: list[object]) -> None:
    """The claim ``consistency`` across the studies' settings: verdict, note, sign table."""
    from flatbook import analysis as A

    c = A.evaluate_consistency(studies)
    print(f"\nconsistency (row signs) across {', '.join(f'`{n}`' for n in c['settings'])}: "
          f"**{c['verdict']}** — {c['note']}\n")
    print(A.markdown_table(c["table"]))


def main(argv: list[str] | None = None) -> int:
    """Compute the missing runs of each setting, then print one line per setting (runs,
    completed, interpolating, wall time, load before and after), the verdict table and the
    row of ``consistency`` across the settings (with the default study, see the module)."""
    from flatbook import analysis as A

    a = _parser().parse_args(argv)
    for name in a.settings:
        A.get_setting(name)          # unknown names fail before any training
    rows: dict[str, dict[str, str]] = {}
    info, studies = [], []
    for name in a.settings:
        st, line = _study(name, a)
        studies.append(st)
        info.append(line)
        print(line, flush=True)
        for c in A.evaluate_claims(st, n_boot=a.n_boot):
            rows.setdefault(c["key"], {})[name] = c["verdict"]
    print("\n".join(info))
    print()
    print("| claim | " + " | ".join(f"`{n}`" for n in a.settings) + " |")
    print("|---|" + "---|" * len(a.settings))
    for key, v in rows.items():
        print(f"| {key} | " + " | ".join(v.get(n, "–") for n in a.settings) + " |")
    default = _default_study(a)
    _print_consistency(([default] if default is not None else []) + studies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
