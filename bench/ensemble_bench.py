"""Ensemble engine vs the solo loop on a setting's study, side by side in one run.

    PYTHONPATH=. python bench/ensemble_bench.py [--setting digits-mlp] [--seed-offset 900000]
        [--runs N] [--steps N] [--workers W] [--train-steps K]

Reports (one table, also as JSON with ``--json``):

- training throughput in member-steps per second: the solo loop (``flatbook.train.train``,
  one run) and the ensemble engine (``flatbook.ensemble.train_ensemble``, the study's runs
  grouped by batch size), both without measurements, K steps, in this process (warm);
- measurement time per record (the setting's ``make_measure``, the same function for both
  engines: members are measured one by one as solo runs), with and without training;
- the whole study's wall time and peak memory (largest process RSS): (i) one fresh Python
  process per run (imports included, ``obtain([config], engine="solo")``), ``--workers`` at
  a time; (ii) one fresh process computing the whole study with the ensemble engine
  (``obtain(configs, engine="ensemble", workers=W)``); and the ratios.

Seeds are offset by ``--seed-offset`` (default 900000: throwaway seeds, never the study's own,
so that no result of the real study is seen before its claims table is frozen). Only losses,
step counts and times are read.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_ONE_RUN = """
import sys, json
from flatbook import analysis as A, experiment as E
from flatbook.analysis import settings as S
if sys.argv[1].startswith("powered-"):
    S.SETTINGS[sys.argv[1]] = S.POWERED_DIGITS[sys.argv[1][len("powered-"):]]
cfg = E.RunConfig.from_dict(json.loads(sys.argv[2]))
A.obtain([cfg], A.get_setting(sys.argv[1]), sys.argv[3], workers=1, engine="solo")
"""

_STUDY = """
import sys, json
from flatbook import analysis as A, experiment as E
from flatbook.analysis import settings as S
if sys.argv[1].startswith("powered-"):
    S.SETTINGS[sys.argv[1]] = S.POWERED_DIGITS[sys.argv[1][len("powered-"):]]
cfgs = [E.RunConfig.from_dict(c) for c in json.loads(open(sys.argv[2]).read())]
A.obtain(cfgs, A.get_setting(sys.argv[1]), sys.argv[3], workers=int(sys.argv[4]),
         engine="ensemble")
"""


def register(args: argparse.Namespace) -> str:
    """The setting to run: ``--setting``, or with ``--powered`` its powered design
    (``POWERED_DIGITS``, registered as ``powered-<name>`` for this process)."""
    from flatbook.analysis import settings as S

    if not args.powered:
        return args.setting
    name = f"powered-{args.setting}"
    S.SETTINGS[name] = S.POWERED_DIGITS[args.setting]
    return name


def study(args: argparse.Namespace) -> list:
    """The setting's configs with throwaway seeds (``--seed-offset``): ``--replicates`` per
    cell, the first ``--runs`` of them."""
    from flatbook import analysis as A

    over: dict = {"steps": args.steps} if args.steps else {}
    if args.replicates:
        over["seeds"] = list(range(args.replicates))
    cfgs = A.study_configs(register(args), **over)
    off = args.seed_offset
    cfgs = [c.replace(seed=c.seed + off, data_seed=c.data_seed + off) for c in cfgs]
    return cfgs[: args.runs] if args.runs else cfgs


def throughput(cfgs: list, k: int) -> dict[str, float]:
    """Member-steps per second of the solo loop (one run per batch size, averaged over the
    study's batch sizes as its runs are) and of the ensemble engine (the study's runs in the
    ensembles ``obtain`` forms for one worker), K steps each, no measurements."""
    import torch

    from flatbook import ensemble as EN
    from flatbook import ensemble_runs as R
    from flatbook import experiment as E
    from flatbook import train as T

    torch.set_num_threads(1)
    solo_s: dict[object, float] = {}
    for c in {c.batch_size: c for c in cfgs}.values():
        for steps in (20, k):   # warm-up (imports torch._dynamo), then timed
            ds, net, _ = E.prepare(c)
            t = time.perf_counter()
            T.train(net, ds.X_train, ds.Y_train, batch_size=c.batch_size, lr=c.lr,
                    steps=steps, measure=None, measure_every=steps, progress=False,
                    eval_size=None)
            solo_s[c.batch_size] = (time.perf_counter() - t) / steps
    solo = len(cfgs) / sum(solo_s[c.batch_size] for c in cfgs)
    t_ens, sizes = 0.0, []
    for g in R.plan_groups(cfgs):
        members = []
        for x in (cfgs[i] for i in g):
            d, n, _ = E.prepare(x)
            members.append(EN.Member(model=n, X_train=d.X_train, Y_train=d.Y_train,
                                     X_test=None, Y_test=None, lr=x.lr, steps=k,
                                     measure_steps=[], measure=None, eval_indices=[],
                                     seed=x.seed, label_noise=x.label_noise))
        t = time.perf_counter()
        EN.train_ensemble(members, EN.EnsembleOptions(loss=x.loss, batch_size=x.batch_size,
                                                      handle_signals=False))
        t_ens += time.perf_counter() - t
        sizes.append(len(g))
    return {"solo_member_steps_per_s": solo, "ensemble_member_steps_per_s":
            k * len(cfgs) / t_ens, "ensemble_sizes": sizes}


def measure_time(cfgs: list, setting: str, n: int = 5) -> float:
    """Seconds per record of the setting's measurement on one run's network."""
    from flatbook import analysis as A
    from flatbook import experiment as E

    s = A.get_setting(setting)
    ds, net, _ = E.prepare(cfgs[0])
    m = A.make_measure(cfgs[0], ds.X_test, ds.Y_test, min(s.test_size, ds.n_test),
                       s.representations, n_train=ds.n_train)
    X, Y = ds.X_train[: cfgs[0].eval_size], ds.Y_train[: cfgs[0].eval_size]
    m(net.eval(), X, Y, cfgs[0].loss, 0)
    t = time.perf_counter()
    for _ in range(n):
        m(net, X, Y, cfgs[0].loss, 0)
    return (time.perf_counter() - t) / n


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "FLATBOOK_WORKERS": "1"}


def solo_study(cfgs: list, setting: str, workers: int) -> dict[str, float]:
    """(i) one fresh process per run, ``workers`` at a time: wall time, peak RSS (MiB)."""
    store = tempfile.mkdtemp(prefix="ens-bench-solo-")
    todo = [json.dumps(c.to_dict()) for c in cfgs]
    running: list[subprocess.Popen] = []
    t = time.perf_counter()
    while todo or running:
        while todo and len(running) < workers:
            running.append(subprocess.Popen([sys.executable, "-c", _ONE_RUN, setting,
                                             todo.pop(0), store], env=_env()))
        for p in list(running):
            if p.poll() is not None:
                if p.returncode:
                    raise RuntimeError(f"a solo run failed (exit {p.returncode})")
                running.remove(p)
        time.sleep(0.05)
    wall = time.perf_counter() - t
    return {"wall_s": wall, "peak_mib": _children_peak_mib(), "store": store}


def ensemble_study(cfgs: list, setting: str, workers: int) -> dict[str, float]:
    """(ii) one fresh process computing every run with the ensemble engine."""
    store = tempfile.mkdtemp(prefix="ens-bench-ens-")
    spec = Path(store) / "configs.json"
    spec.write_text(json.dumps([c.to_dict() for c in cfgs]))
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", _STUDY, setting, str(spec), store, str(workers)],
                   env=_env(), check=True)
    return {"wall_s": time.perf_counter() - t, "peak_mib": _children_peak_mib(),
            "store": store}


def _children_peak_mib() -> float:
    """Largest resident set of any finished child process so far (Linux: KiB → MiB)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _phase(args: argparse.Namespace) -> None:
    """A study phase in its own process, so its peak memory is its own."""
    cfgs = study(args)
    fn = solo_study if args.phase == "solo" else ensemble_study
    print(json.dumps(fn(cfgs, register(args), args.workers)))


def _run_phase(args: argparse.Namespace, phase: str) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--setting", args.setting,
           "--seed-offset", str(args.seed_offset), "--workers", str(args.workers)]
    cmd += ["--runs", str(args.runs)] if args.runs else []
    cmd += ["--steps", str(args.steps)] if args.steps else []
    cmd += ["--replicates", str(args.replicates)] if args.replicates else []
    cmd += ["--powered"] if args.powered else []
    out = subprocess.run(cmd, env=_env(), check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Parse the options, run the three comparisons, print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setting", default="digits-mlp")
    p.add_argument("--seed-offset", type=int, default=900000)
    p.add_argument("--runs", type=int, default=None, help="first N runs only")
    p.add_argument("--replicates", type=int, default=None, help="replicates per (η, B) cell")
    p.add_argument("--powered", action="store_true",
                   help="the setting's powered design (settings.POWERED_DIGITS)")
    p.add_argument("--steps", type=int, default=None, help="override the run length")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--train-steps", type=int, default=2000)
    p.add_argument("--json", default=None)
    p.add_argument("--phase", choices=("solo", "ensemble"), default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        return _phase(args)
    load = os.getloadavg()
    cfgs = study(args)
    reps, args.replicates = args.replicates, None
    tp = throughput(study(args), args.train_steps)   # every run of the study
    args.replicates = reps
    per_record = measure_time(cfgs, register(args))
    ens = _run_phase(args, "ensemble")
    solo = _run_phase(args, "solo")
    load_end = os.getloadavg()
    rows = {
        "runs": len(cfgs), "workers": args.workers,
        "load_avg_start_end": [round(load[0], 2), round(load_end[0], 2)], **tp,
        "train_ratio": tp["ensemble_member_steps_per_s"] / tp["solo_member_steps_per_s"],
        "measure_s_per_record": per_record,
        "study_wall_s_solo_processes": solo["wall_s"], "study_wall_s_ensemble": ens["wall_s"],
        "study_ratio": solo["wall_s"] / ens["wall_s"],
        "peak_mib_solo_process": solo["peak_mib"], "peak_mib_ensemble": ens["peak_mib"],
    }
    for k, v in rows.items():
        print(f"{k:32s} {v:.4g}" if isinstance(v, float) else f"{k:32s} {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
