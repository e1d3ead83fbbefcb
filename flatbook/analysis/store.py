"""Loading a study: the measurement recorded at every step of a run, and the result store
that holds the runs (read back, or computed when missing)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from flatbook import store as move_store
from flatbook.analysis.settings import Setting, default_results_dir

MEASURE_VERSION = 2
"""Bump when :func:`make_measure` changes what it records (a new store folder is used)."""
TEST_TRACE_HVPS = 30
"""Hessian-vector products of the Hutch++ estimate of the test-loss Hessian trace."""


def hidden_representations(model: object) -> list[str]:
    """Names (``flatbook.layers.representations``) of the outputs of the activation items of
    an ``nn.Sequential`` — the hidden-layer representations h_l = model[:i+1](x)."""
    from torch import nn

    from flatbook import layers, models

    acts = tuple(models.ACTIVATIONS[a] for a in models.ACTIVATIONS if a != "linear")
    names = set(layers.representations(model))  # type: ignore[arg-type]
    return [str(i) for i, m in enumerate(model) if isinstance(m, acts)  # type: ignore[arg-type]
            and str(i) in names and not isinstance(m, nn.Identity)]


def make_measure(config: object, X_test: object, Y_test: object, test_size: int,
                 representations: str, n_train: int | None = None) -> Callable:
    """Measurement function for :func:`flatbook.experiment.run`: one
    ``flatbook.report(...).as_dict()`` on the evaluation subset of the training set (λ_max,
    tr H, every measure and bound, with η and B for T7; hidden representations if asked)
    and, if ``test_size`` > 0, one on the first ``test_size`` held-out samples with keys
    prefixed ``test_`` (there also a Hutch++ estimate ``test_trace_hessian`` of the test-loss
    Hessian trace, since away from interpolation tr H ≠ the Gauss–Newton trace)."""
    import warnings

    from flatbook.report import report

    if representations not in ("hidden", "none"):
        raise ValueError(f"representations must be 'hidden' or 'none'; got {representations!r}")
    cfg = config
    B = None if cfg.batch_size == "full" else int(cfg.batch_size)  # type: ignore[attr-defined]
    opts = {"tol": cfg.sharpness_tol, "lr": cfg.lr, "batch_size": B,  # type: ignore[attr-defined]
            "n_train": n_train}  # T7's p uses the training-set size, not the eval subset
    Xt = X_test[:test_size] if test_size else None  # type: ignore[index]
    Yt = Y_test[:test_size] if test_size else None  # type: ignore[index]

    def measure(model, X, Y, loss, seed):  # noqa: ANN001, ANN202 - train.MeasureFn
        reps = hidden_representations(model) if representations == "hidden" else []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out = report(model, X, Y, loss=loss, seed=seed, representations=reps,
                         **opts).as_dict()
            if Xt is not None:
                dev = next(model.parameters()).device
                te = report(model, Xt.to(dev), Yt.to(dev), loss=loss, seed=seed,
                            hessian_trace=True, n_hvp=TEST_TRACE_HVPS, **opts).as_dict()
                out |= {f"test_{k}": v for k, v in te.items()}
        return {k: float(v) for k, v in out.items()}

    return measure


def make_curvature_measure(config: object) -> Callable:
    """The light measurement profile (``Setting.profile == "curvature"``): λ_max by Lanczos
    (relative tolerance ``config.sharpness_tol``) and the exact Gauss–Newton trace tr H on
    the evaluation subset — :func:`flatbook.train.curvature_measure`, the same keys
    (``lambda_max``, ``lambda_max_residual``, ``lambda_max_n_hvp``, ``lambda_max_converged``,
    ``trace_gn``) and meaning as the full report's, without the geometry measures."""
    from flatbook import train

    tol = float(config.sharpness_tol)  # type: ignore[attr-defined]

    def measure(model, X, Y, loss, seed):  # noqa: ANN001, ANN202 - train.MeasureFn
        return train.curvature_measure(model, X, Y, loss, seed, tol=tol)

    return measure


def store_for(results_dir: str | Path | None, setting: Setting) -> Path:
    """Folder of the result store for runs measured by :func:`make_measure` with this
    setting's measurement options: ``results_dir / "measure-<hash>"``. The hash covers the
    options, :data:`MEASURE_VERSION` and the source of :func:`make_measure`, so results
    recorded by another measurement never pass as these (the engine's store checks the run
    config and the numeric code; this adds the measurement)."""
    import hashlib
    import inspect
    import json

    spec = {"version": MEASURE_VERSION, "test_size": setting.test_size,
            "representations": setting.representations,
            "source": inspect.getsource(make_measure)}
    if setting.profile != "report":   # (the report profile's hash predates profiles)
        spec |= {"profile": setting.profile,
                 "profile_source": inspect.getsource(make_curvature_measure)}
    if setting.hidden_every and setting.representations == "hidden":
        spec |= {"hidden_every": setting.hidden_every,
                 "hidden_source": inspect.getsource(sparse_hidden)}
    h = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    root = Path(results_dir) if results_dir else default_results_dir()
    return root / f"measure-{h}"


def obtain(
    configs: Sequence[object],
    setting: Setting,
    results_dir: str | Path | None = None,
    *,
    compute_missing: bool = True,
    workers: int | None = None,
    engine: str | None = None,
) -> list[object]:
    """Load each run's results from the store, or compute them (in order).

    Stored results are accepted only if their config hash equals the requested one, the
    flatbook major.minor version matches and the numeric code hash matches
    (``load_results(check="code")``). A missing or refused run is computed when
    ``compute_missing`` is True, else the error is raised — use that to *only* read results
    produced elsewhere (e.g. on a GPU machine). A refused run is never deleted: it is moved to
    ``<store>/stale/<run_id>-<reason>/`` first (:func:`flatbook.store.move_aside`), and the
    moved runs are printed (id, reason, new folder: the chapter shows them).

    Missing runs are computed on ``workers`` processes (:func:`resolve_workers`; 1 = in this
    process) by ``engine`` (:func:`resolve_engine`): ``"ensemble"`` (default) trains the
    compatible ones as ensembles (:mod:`flatbook.ensemble_runs`: one batched SGD step for
    many runs, each member measured and stored as its solo run), one ensemble per worker at
    least; ``"solo"`` trains each run by itself. A plain script that calls this at top level
    without an ``if __name__ == "__main__":`` guard cannot start worker processes: the runs
    are then computed in this process (a note says how to use the workers).

    Returns ``flatbook.experiment.Results`` in the order of ``configs``.
    """
    from flatbook import experiment as E

    store = store_for(results_dir, setting)
    out: list[object] = []
    todo: list[tuple[int, object, bool]] = []
    moved: list[move_store.MovedRun] = []
    for i, c in enumerate(configs):
        try:
            out.append(E.load_results(store, c, check="code"))
        except FileNotFoundError:
            if not compute_missing:
                raise
            out.append(None)
            todo.append((i, c, False))
        except E.StaleResultsError as e:
            if not compute_missing:
                raise
            moved.append(_move_stale(store, c, e.reason))
            out.append(None)
            todo.append((i, c, False))
    if moved:
        print("flatbook: " + move_store.moved_message(moved), flush=True)
    if todo:
        E.validate([c for _, c, _ in todo])   # data present, B ≤ n, … before any training
        engine = resolve_engine(engine, out)
        jobs = _jobs(todo, engine, resolve_workers(workers, len(todo)))
        n_workers = resolve_workers(workers, len(jobs))
        if n_workers > 1 and not _can_spawn():
            n_workers = 1
        if n_workers == 1:
            for job in jobs:
                for i, res in zip([i for i, _, _ in job], _compute_job(job, setting, store, engine),
                                  strict=True):
                    out[i] = res
        else:
            _compute_parallel(jobs, setting, store, n_workers, engine)
            for i, c, _ in todo:
                out[i] = E.load_results(store, c, check="code")
    E.check_numerics(out)  # one study, one numerics fingerprint (device, threads, dtype, torch)
    return out


def _move_stale(store: Path, config: object, reason: str) -> object:
    """Move a refused run aside under its lock (:func:`flatbook.store.move_aside`)."""
    from flatbook import experiment as E

    run_id = config.run_id  # type: ignore[attr-defined]
    with E.run_lock(store, run_id):
        to = move_store.move_aside(store, run_id, reason)
    return move_store.MovedRun(run_id, reason, to)


def resolve_workers(workers: int | None, n_jobs: int) -> int:
    """Worker processes for the missing runs: ``workers``, else ``$FLATBOOK_WORKERS``, else
    the number of CPU cores this process may use (``os.sched_getaffinity``) — each run is
    single-threaded and the sweep is embarrassingly parallel; never more than the jobs."""
    if workers is None:
        env = os.environ.get("FLATBOOK_WORKERS")
        if env is not None:
            try:
                workers = int(env)
            except ValueError:
                raise ValueError(f"FLATBOOK_WORKERS must be a positive integer; got {env!r}"
                                 ) from None
        else:
            try:
                workers = len(os.sched_getaffinity(0))
            except AttributeError:  # pragma: no cover - not Linux
                workers = os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer; got {workers!r}")
    return max(1, min(int(workers), int(n_jobs)))


ENGINES = ("ensemble", "solo")


def resolve_engine(engine: str | None, stored: Sequence[object] = ()) -> str:
    """The training engine of :func:`obtain`: ``engine``, else ``$FLATBOOK_ENGINE``, else the
    one engine that computed the ``stored`` results of the study (so that missing runs join
    a study computed before without mixing engines), else ``"ensemble"``; ValueError naming
    the allowed values."""
    value = engine if engine is not None else os.environ.get("FLATBOOK_ENGINE")
    if value is None:
        used = {r.numerics.get("engine", "solo") for r in stored  # type: ignore[attr-defined]
                if r is not None and r.numerics}  # type: ignore[attr-defined]
        value = used.pop() if len(used) == 1 else "ensemble"
    if value not in ENGINES:
        raise ValueError(f"engine must be one of {list(ENGINES)}; got {value!r}")
    return value


Job = list[tuple[int, object, bool]]
"""Runs computed together: one solo run, or the members of one ensemble (index in the
requested configs, config, stale)."""


SHARE_MIN = 4
"""Fewest members of an ensemble split off to share one kind of run among the workers."""


def _jobs(todo: Sequence[tuple[int, object, bool]], engine: str, workers: int) -> list[Job]:
    """The missing runs as jobs: with the ensemble engine, compatible runs grouped
    (:func:`flatbook.ensemble_runs.plan_groups`, size by memory, ≥ one group per worker),
    each group split into up to ``workers`` interleaved ensembles of ≥ :data:`SHARE_MIN`
    members (so that every worker gets a share of the slow kinds of run, e.g. the larger
    batch size), the others (and every run with ``engine="solo"``) one job each; largest
    and slowest jobs first, for the pool to balance (longest processing time first)."""
    if engine == "solo":
        return [[t] for t in todo]
    from flatbook import ensemble_runs as R

    configs = [c for _, c, _ in todo]
    groups = []
    for g in R.plan_groups(configs, size=_group_size, min_groups=workers):  # type: ignore[arg-type]
        k = max(1, min(workers, len(g) // SHARE_MIN))
        groups += [g[j::k] for j in range(k)]
    grouped = {i for g in groups for i in g}
    jobs = ([[todo[i] for i in g] for g in groups]
            + [[t] for j, t in enumerate(todo) if j not in grouped])
    return sorted(jobs, key=_job_cost, reverse=True)


def _job_cost(job: Job) -> tuple[int, int]:
    """Sort key of a job's cost: (runs, steps × batch size of its first run)."""
    c = job[0][1]
    B = c.batch_size if isinstance(c.batch_size, int) else (c.n_train or 60_000)  # type: ignore[attr-defined]
    return len(job), int(c.steps or 0) * int(B)  # type: ignore[attr-defined]


def _group_size(config: object) -> int:
    """Members per ensemble for runs like ``config``
    (:func:`flatbook.ensemble_runs.max_members`; a data set of unknown shape counts as
    3 × 32 × 32 inputs, an unknown size as 60 000 samples)."""
    import math

    from flatbook import data
    from flatbook import ensemble_runs as R

    spec = data.DATASETS.get(config.dataset)  # type: ignore[attr-defined]
    n_in = math.prod(spec.input_shape) if spec is not None else 3 * 32 * 32
    n = int(config.n_train or 60_000)  # type: ignore[attr-defined]
    return R.max_members(R.member_bytes(config, n, n_in, 10))  # type: ignore[arg-type]


def _measure_for(setting: object) -> Callable:
    """``measure_for(config, dataset)``: the chapters' measurement of one run (the setting's
    ``profile``: the full report, or :func:`make_curvature_measure`)."""
    def measure_for(config: object, ds: object) -> Callable:
        if getattr(setting, "profile", "report") == "curvature":
            return make_curvature_measure(config)
        args = (config, ds.X_test, ds.Y_test,  # type: ignore[attr-defined]
                min(setting.test_size, ds.n_test))  # type: ignore[attr-defined]
        reps = setting.representations  # type: ignore[attr-defined]
        every = getattr(setting, "hidden_every", 0)
        full = make_measure(*args, reps, n_train=ds.n_train)  # type: ignore[attr-defined]
        if reps != "hidden" or not every:
            return full
        return sparse_hidden(full, make_measure(*args, "none", n_train=ds.n_train),  # type: ignore[attr-defined]
                             every)
    return measure_for


def sparse_hidden(full: Callable, light: Callable, every: int) -> Callable:
    """A measure that calls ``full`` (with the hidden representations) at the records whose
    step is a multiple of ``every`` and ``light`` (without them) at the others — the same
    keys and values at every record, the hidden layers' only where measured."""
    def measure(model, X, Y, loss, seed, step):  # noqa: ANN001, ANN202 - train.MeasureFn
        return (full if step % every == 0 else light)(model, X, Y, loss, seed)

    measure.takes_step = True  # type: ignore[attr-defined]
    return measure


def _compute_job(job: Job, setting: object, store: Path, engine: str = "ensemble"
                 ) -> list[object]:
    """Train and measure one job into ``store`` (the unit of :func:`obtain`): one run by
    the solo loop (``engine="solo"``, or a run the ensemble engine cannot train), else the
    job's runs as one ensemble."""
    if len(job) == 1 and (engine == "solo" or _solo(job[0][1])):
        return [_compute(job[0][1], setting, store, job[0][2])]
    from flatbook import ensemble_runs as R

    return R.run_ensemble([c for _, c, _ in job], store,  # type: ignore[misc]
                          measure_for=_measure_for(setting), overwrite=[s for _, _, s in job])


def _solo(config: object) -> bool:
    from flatbook import ensemble_runs as R

    return R.unsupported(config) is not None  # type: ignore[arg-type]


def _compute(config: object, setting: object, store: Path, stale: bool) -> object:
    """Train and measure one run into ``store`` by the solo loop."""
    from flatbook import experiment as E

    ds = E.prepare(config)[0]  # type: ignore[arg-type]
    m = _measure_for(setting)(config, ds)
    return E.run(config, store, overwrite=stale, measure=m)  # type: ignore[arg-type]


def _worker(job: list[tuple[int, dict, bool]], setting: object, store: str,
            where: tuple[dict[str, str], str] | None = None, engine: str = "ensemble"
            ) -> list[str]:
    """Process-pool entry point (picklable arguments only): one job of :func:`_compute_job`,
    in the submitting process's environment variables and working directory ``where`` (a
    worker forked from the fork server started with those of an earlier moment)."""
    from flatbook import experiment as E

    if where is not None:
        env, cwd = where
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
    runs = [(i, E.RunConfig.from_dict(c), stale) for i, c, stale in job]
    return [str(r.status) for r in _compute_job(runs, setting, Path(store), engine)]  # type: ignore[attr-defined]


def _can_spawn() -> bool:
    """Whether worker processes can start: False when this call runs at the top level of a
    plain script without an ``if __name__ == "__main__":`` guard around it (a spawned worker
    would run the script again and die: BrokenProcessPool). Then says so in one line."""
    import ast
    import sys

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_globals.get("__name__") == "__main__"
                                     and frame.f_code.co_name == "<module>"):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None or not path or not str(path).endswith(".py"):
        return True
    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError):
        return True
    line = frame.f_lineno
    for node in ast.walk(tree):
        if (isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
                and "__name__" in ast.unparse(node.test)
                and node.lineno <= line <= (node.end_lineno or node.lineno)):
            return True
    print(f"flatbook: {path} computes the study at its top level, without an "
          f"`if __name__ == \"__main__\":` guard — running in this process (put the call "
          f"under that guard to use several worker processes)", file=sys.stderr)
    return False


def _worker_context() -> object:
    """Where workers come from: forked from a fork server (a fresh interpreter that has
    only imported this module and the ensemble engine, no torch computation: nothing of this
    process's torch state is forked), which starts once per process and serves every later
    sweep without the ~2–3 s of imports per worker; ``spawn`` where there is no fork
    server (Windows)."""
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["flatbook.analysis.store", "flatbook.ensemble_runs"])
    return ctx


def _compute_parallel(jobs: Sequence[Job], setting: object, store: Path,
                      n_workers: int, engine: str = "ensemble") -> None:
    """Run the jobs on ``n_workers`` worker processes (:func:`_worker_context`), with a
    progress bar over finished runs. Results land in the store atomically, so an interrupted
    sweep resumes where it stopped."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm import tqdm

    ctx = _worker_context()
    with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
        where = (dict(os.environ), os.getcwd())
        futs = {pool.submit(_worker, [(i, c.to_dict(), s) for i, c, s in job],  # type: ignore[attr-defined]
                            setting, str(store), where, engine): len(job) for job in jobs}
        with tqdm(total=sum(futs.values()), desc=f"runs ({n_workers} workers)",
                  unit="run") as bar:
            for f in as_completed(futs):
                f.result()
                bar.update(futs[f])


