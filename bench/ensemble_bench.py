"""Ensemble engine vs the solo loop on a setting's study, side by side in one run.

    PYTHONPATH=. python bench/ensemble_bench.py --full [--workers 2] [--json out.json]
    PYTHONPATH=. python bench/ensemble_bench.py [--setting digits-mlp] [--replicates N]
        [--runs N] [--steps N] [--workers W] [--train-steps K] [--skip-study]

``--full`` times the default study as the book computes it: the setting (``digits-mlp``) and
its label-noise twin (``digits-mlp-label-noise``), every run (36 + 36). Without it, the one
``--setting``. Reports, one row per setting (also as JSON with ``--json``):

- training throughput in member-steps per second: the solo loop (``flatbook.train.train``,
  one run per batch size, with the setting's label noise) and the ensemble engine
  (``flatbook.ensemble.train_ensemble``, the setting's runs grouped as ``plan_groups`` groups
  them), both without measurements, K steps, in this process (warm), CPU-bound on 1 thread;
- measurement time per record: the setting's measurement (``analysis.store._measure_for``,
  the same function for both engines: members are measured one by one as solo runs), on one
  run's network, over the run's record schedule (light and hidden-layer records as stored);
- the study's wall time and peak memory (largest process RSS): (i) one fresh Python process
  per run (imports included, ``obtain([config], engine="solo")``), ``--workers`` at a time;
  (ii) one fresh process computing the study with the ensemble engine
  (``obtain(configs, engine="ensemble", workers=W)``, one call per setting, as
  ``load_study`` calls it); and the ratios. The load average (1 min) is printed before and
  after each phase: numbers taken at a load above ~0.5 measure the other processes too.

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
cfg = E.RunConfig.from_dict(json.loads(sys.argv[2]))
A.obtain([cfg], A.get_setting(sys.argv[1]), sys.argv[3], workers=1, engine="solo")
"""

_STUDY = """
import sys, json, time
from flatbook import analysis as A, experiment as E
spec = json.loads(open(sys.argv[1]).read())
walls = {}
for name, cfgs in spec.items():
    t = time.perf_counter()
    A.obtain([E.RunConfig.from_dict(c) for c in cfgs], A.get_setting(name), sys.argv[2],
             workers=int(sys.argv[3]), engine="ensemble")
    walls[name] = time.perf_counter() - t
print(json.dumps(walls))
"""


def settings(args: argparse.Namespace) -> list[str]:
    """The settings to time: ``--setting``, and with ``--full`` its label-noise twin."""
    from flatbook.analysis import settings as S

    twin = S.label_noise_twin(args.setting) if args.full else None
    return [args.setting, *([twin] if twin else [])]


def study(args: argparse.Namespace, setting: str) -> list:
    """The setting's configs with throwaway seeds (``--seed-offset``): ``--replicates`` per
    cell, the first ``--runs`` of them."""
    from flatbook import analysis as A

    over: dict = {"steps": args.steps} if args.steps else {}
    if args.replicates:
        over["seeds"] = list(range(args.replicates))
    cfgs = A.study_configs(setting, **over)
    off = args.seed_offset
    cfgs = [c.replace(seed=c.seed + off, data_seed=c.data_seed + off) for c in cfgs]
    return cfgs[: args.runs] if args.runs else cfgs


def _solo_seconds_per_step(c: object, k: int) -> float:
    """Seconds (CPU) per step of the solo loop on ``c``'s run, K steps after a warm-up."""
    from flatbook import experiment as E
    from flatbook import train as T

    for steps in (20, k):   # warm-up (imports torch._dynamo), then timed
        ds, net, _ = E.prepare(c)
        t = time.process_time()
        T.train(net, ds.X_train, ds.Y_train, batch_size=c.batch_size, lr=c.lr, steps=steps,
                measure=None, measure_every=steps, progress=False, eval_size=None,
                label_noise=c.label_noise, seed=c.seed)
    return (time.process_time() - t) / k


def throughput(cfgs: list, k: int) -> dict[str, object]:
    """Member-steps per second (CPU) of the solo loop (one run per batch size, weighted by
    the study's runs) and of the ensemble engine (the study's runs in the ensembles
    ``plan_groups`` forms), K steps each, no measurements, one thread."""
    import torch

    from flatbook import ensemble as EN
    from flatbook import ensemble_runs as R
    from flatbook import experiment as E

    torch.set_num_threads(1)
    solo_s = {c.batch_size: _solo_seconds_per_step(c, k)
              for c in {c.batch_size: c for c in cfgs}.values()}
    t_ens, sizes, per_b = 0.0, [], {}
    for g in R.plan_groups(cfgs):
        members = []
        for x in (cfgs[i] for i in g):
            d, n, _ = E.prepare(x)
            members.append(EN.Member(model=n, X_train=d.X_train, Y_train=d.Y_train,
                                     X_test=None, Y_test=None, lr=x.lr, steps=k,
                                     measure_steps=[], measure=None, eval_indices=[],
                                     seed=x.seed, label_noise=x.label_noise))
        t = time.process_time()
        EN.train_ensemble(members, EN.EnsembleOptions(loss=x.loss, batch_size=x.batch_size,
                                                      handle_signals=False))
        dt = time.process_time() - t
        t_ens += dt
        sizes.append(len(g))
        per_b[str(x.batch_size)] = round(1e3 * dt / (k * len(g)), 4)
    solo = len(cfgs) / sum(solo_s[c.batch_size] for c in cfgs)
    ens = k * len(cfgs) / t_ens
    return {"solo_member_steps_per_s": solo, "ensemble_member_steps_per_s": ens,
            "train_ratio": ens / solo, "ensemble_sizes": sizes,
            "solo_ms_per_step_by_B": {str(b): round(1e3 * s, 4) for b, s in solo_s.items()},
            "ensemble_ms_per_member_step_by_B": per_b}


def measure_time(cfgs: list, setting: str) -> float:
    """Seconds (CPU) per record of the setting's measurement on one run's network, over
    the run's record schedule (light and hidden-layer records in the stored proportion)."""
    import torch

    from flatbook import analysis as A
    from flatbook import experiment as E
    from flatbook import train as T
    from flatbook.analysis import store as ST

    torch.set_num_threads(1)
    c = cfgs[0]
    ds, net, steps = E.prepare(c)
    m = ST._measure_for(A.get_setting(setting))(c, ds)
    idx = torch.as_tensor(T.eval_subset(ds.n_train, c.eval_size, c.data_seed))
    X, Y = ds.X_train[idx], ds.Y_train[idx]
    at = T.measurement_steps(steps, c.measure_every, c.schedule)
    with T.eval_mode(net):
        T.call_measure(m, net, X, Y, c.loss, c.seed, at[1])   # warm-up
        t = time.process_time()
        for s in at:
            T.call_measure(m, net, X, Y, c.loss, c.seed, s)
    return (time.process_time() - t) / len(at)


class TreeCPU:
    """CPU seconds (user + system) of every process descended from this one, read from
    ``/proc`` at each :meth:`poll` (a process's last reading counts once it has exited):
    the work of a phase whatever the load of the machine (pool workers forked from a fork
    server are not children this process could wait for, so ``getrusage`` misses them)."""

    def __init__(self, every: float = 0.25) -> None:
        self.seen: dict[int, float] = {}
        self.tick = os.sysconf("SC_CLK_TCK")
        self.every, self.last = every, 0.0

    def poll(self) -> None:
        """Read the CPU time of every live descendant (at most every ``every`` seconds)."""
        if time.perf_counter() - self.last < self.every:
            return
        self.last = time.perf_counter()
        parent, cpu = {}, {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    f = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                parent[int(d)] = int(f[1])
                cpu[int(d)] = (int(f[11]) + int(f[12])) / self.tick
        me = os.getpid()
        for pid in cpu:
            p, hops = pid, 0
            while p in parent and p != me and hops < 64:
                p, hops = parent[p], hops + 1
            if p == me and pid != me:
                self.seen[pid] = cpu[pid]

    def total(self) -> float:
        """CPU seconds of the descendants seen so far."""
        return sum(self.seen.values())


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "FLATBOOK_WORKERS": "1"}


def solo_study(spec: dict[str, list], workers: int) -> dict[str, object]:
    """(i) one fresh process per run, ``workers`` at a time, setting after setting: wall time
    per setting, peak RSS (MiB)."""
    store = tempfile.mkdtemp(prefix="ens-bench-solo-")
    walls, cpu = {}, TreeCPU()
    for name, cfgs in spec.items():
        todo = [json.dumps(c) for c in cfgs]
        running: list[subprocess.Popen] = []
        t = time.perf_counter()
        while todo or running:
            while todo and len(running) < workers:
                running.append(subprocess.Popen([sys.executable, "-c", _ONE_RUN, name,
                                                 todo.pop(0), store], env=_env()))
            for p in list(running):
                if p.poll() is not None:
                    if p.returncode:
                        raise RuntimeError(f"a solo run failed (exit {p.returncode})")
                    running.remove(p)
            cpu.poll()
            time.sleep(0.02)
        walls[name] = time.perf_counter() - t
    return {"walls": walls, "cpu_s": cpu.total(), "peak_mib": _children_peak_mib(),
            "store": store}


def ensemble_study(spec: dict[str, list], workers: int) -> dict[str, object]:
    """(ii) one fresh process computing every setting's runs with the ensemble engine (one
    ``obtain`` per setting); wall time of the process and of each ``obtain`` in it."""
    store = tempfile.mkdtemp(prefix="ens-bench-ens-")
    path = Path(store) / "configs.json"
    path.write_text(json.dumps(spec))
    t, cpu = time.perf_counter(), TreeCPU()
    proc = subprocess.Popen([sys.executable, "-c", _STUDY, str(path), store, str(workers)],
                            env=_env(), stdout=subprocess.PIPE, text=True)
    while proc.poll() is None:
        cpu.poll()
        time.sleep(0.1)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(f"the ensemble study failed (exit {proc.returncode})")
    return {"wall_s": wall, "walls": json.loads(proc.stdout.read().strip().splitlines()[-1]),
            "cpu_s": cpu.total(), "peak_mib": _children_peak_mib(), "store": store}


def _children_peak_mib() -> float:
    """Largest resident set of any finished child process so far (Linux: KiB → MiB)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _phase(args: argparse.Namespace) -> None:
    """A study phase in its own process, so its peak memory is its own."""
    spec = {s: [c.to_dict() for c in study(args, s)] for s in settings(args)}
    fn = solo_study if args.phase == "solo" else ensemble_study
    print(json.dumps(fn(spec, args.workers)))


def _run_phase(args: argparse.Namespace, phase: str) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--setting", args.setting,
           "--seed-offset", str(args.seed_offset), "--workers", str(args.workers)]
    cmd += ["--runs", str(args.runs)] if args.runs else []
    cmd += ["--steps", str(args.steps)] if args.steps else []
    cmd += ["--replicates", str(args.replicates)] if args.replicates else []
    cmd += ["--full"] if args.full else []
    load = os.getloadavg()[0]
    out = subprocess.run(cmd, env=_env(), check=True, capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["load_start_end"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    return res


def _per_setting(args: argparse.Namespace) -> dict[str, dict]:
    """Throughput and measurement rows of every setting (in this process). Throughput
    always trains every run of the setting (the ensembles the whole study forms), whatever
    ``--replicates`` / ``--runs`` select for the study columns."""
    rows = {}
    for s in settings(args):
        cfgs = study(args, s)
        load = os.getloadavg()[0]
        every = study(argparse.Namespace(**{**vars(args), "replicates": None, "runs": None}), s)
        tp = throughput(every, args.train_steps)
        rows[s] = {"runs": len(cfgs), **tp, "measure_s_per_record": measure_time(cfgs, s),
                   "load_start_end": [round(load, 2), round(os.getloadavg()[0], 2)]}
    return rows


def _print(rows: dict) -> None:
    for k, v in rows.items():
        if isinstance(v, dict):
            print(f"{k}:")
            for k2, v2 in v.items():
                print(f"  {k2:36s} {v2:.4g}" if isinstance(v2, float) else f"  {k2:36s} {v2}")
        else:
            print(f"{k:38s} {v:.4g}" if isinstance(v, float) else f"{k:38s} {v}")


def main() -> None:
    """Parse the options, run the comparisons, print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setting", default="digits-mlp")
    p.add_argument("--full", action="store_true",
                   help="the default study: the setting and its label-noise twin, every run")
    p.add_argument("--seed-offset", type=int, default=900000)
    p.add_argument("--runs", type=int, default=None, help="first N runs only")
    p.add_argument("--replicates", type=int, default=None, help="replicates per (η, B) cell")
    p.add_argument("--steps", type=int, default=None, help="override the run length")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--train-steps", type=int, default=2000)
    p.add_argument("--skip-study", action="store_true", help="throughput and records only")
    p.add_argument("--json", default=None)
    p.add_argument("--phase", choices=("solo", "ensemble"), default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        return _phase(args)
    rows: dict = {"workers": args.workers, "settings": settings(args)}
    rows |= _per_setting(args)
    if not args.skip_study:
        ens = _run_phase(args, "ensemble")
        solo = _run_phase(args, "solo")
        for s in settings(args):
            rows[s] |= {"study_wall_s_solo_processes": solo["walls"][s],
                        "study_wall_s_ensemble_obtain": ens["walls"][s],
                        "study_ratio": solo["walls"][s] / ens["walls"][s]}
        total = sum(solo["walls"].values())
        rows |= {"study_wall_s_solo_processes": total,
                 "study_wall_s_ensemble_process": ens["wall_s"],
                 "study_ratio": total / ens["wall_s"],
                 "study_cpu_s_solo_processes": solo["cpu_s"],
                 "study_cpu_s_ensemble": ens["cpu_s"],
                 "study_cpu_ratio": solo["cpu_s"] / ens["cpu_s"],
                 "load_ensemble_phase": ens["load_start_end"],
                 "load_solo_phase": solo["load_start_end"],
                 "peak_mib_solo_process": solo["peak_mib"],
                 "peak_mib_ensemble": ens["peak_mib"]}
    _print(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
