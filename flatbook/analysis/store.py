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
    process).

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
        n_workers = resolve_workers(workers, len(todo))
        if n_workers == 1:
            for i, c, stale in todo:
                out[i] = _compute(c, setting, store, stale)
        else:
            _compute_parallel(todo, setting, store, n_workers)
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


def _compute(config: object, setting: object, store: Path, stale: bool) -> object:
    """Train and measure one run into ``store`` (the unit of :func:`obtain`)."""
    from flatbook import experiment as E

    ds = E.prepare(config)[0]  # type: ignore[arg-type]
    m = make_measure(config, ds.X_test, ds.Y_test,
                     min(setting.test_size, ds.n_test),  # type: ignore[attr-defined]
                     setting.representations, n_train=ds.n_train)  # type: ignore[attr-defined]
    return E.run(config, store, overwrite=stale, measure=m)  # type: ignore[arg-type]


def _worker(config: dict, setting: object, store: str, stale: bool) -> str:
    """Process-pool entry point (picklable arguments only): one run of :func:`_compute`."""
    from flatbook import experiment as E

    cfg = E.RunConfig.from_dict(config)
    res = _compute(cfg, setting, Path(store), stale)
    return str(res.status)  # type: ignore[attr-defined]


def _compute_parallel(todo: Sequence[tuple[int, object, bool]], setting: object, store: Path,
                      n_workers: int) -> None:
    """Run the missing runs on ``n_workers`` spawned processes (fresh interpreters: no
    forked torch state), with a progress bar over finished runs. Results land in the store
    atomically, so an interrupted sweep resumes where it stopped."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm import tqdm

    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
        futs = [pool.submit(_worker, c.to_dict(), setting, str(store), stale)  # type: ignore[attr-defined]
                for _, c, stale in todo]
        for f in tqdm(as_completed(futs), total=len(futs), desc=f"runs ({n_workers} workers)",
                      unit="run"):
            f.result()


