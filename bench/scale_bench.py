"""Costs at the scale researchers use, in units of one full-data gradient (issue 14).

Run by hand (never in tests)::

    .venv/bin/python bench/scale_bench.py                 # all rows, ~5–10 min on 2 cores
    .venv/bin/python bench/scale_bench.py --only lenet    # one problem

Every cost is a ratio: the wall time of a measurement divided by the median wall time of one
full-data gradient (forward + backward of the mean loss over the same n samples, same model,
same process, same thread count), so the numbers survive a machine shared with other jobs far
better than absolute times. Models are default-initialised (``flatbook.models.build``,
float32), inputs standard normal, targets one-hot of uniform random classes. Peak memory is the
resident set size sampled every 2 ms by a thread, minus the RSS just before the call.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import flatbook
from flatbook import curvature, losses, models


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Context manager: peak RSS above the RSS at entry (bytes), sampled every 2 ms."""

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.start = rss_bytes()
        self.peak = self.start
        self._stop = False

        def loop() -> None:
            while not self._stop:
                self.peak = max(self.peak, rss_bytes())
                time.sleep(0.002)

        self._t = threading.Thread(target=loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def above(self) -> int:
        return self.peak - self.start


def timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[Any, float]:
    ts, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return out, statistics.median(ts)


def problem(name: str, shape: tuple[int, ...], n: int, k: int = 10, seed: int = 0,
            **kw: Any) -> tuple[nn.Module, Tensor, Tensor]:
    net = models.build(name, shape, k, seed=seed, **kw)
    g = torch.Generator().manual_seed(seed + 1)
    X = torch.randn(n, *shape, generator=g)
    Y = nn.functional.one_hot(torch.randint(0, k, (n,), generator=g), k).to(X.dtype)
    return net, X, Y


def gradient_time(net: nn.Module, X: Tensor, Y: Tensor, repeats: int = 7) -> float:
    params = [p for p in net.parameters() if p.requires_grad]

    def one() -> None:
        torch.autograd.grad(losses.squared(net(X), Y), params)

    one()
    return timed(one, repeats)[1]


ROWS: list[dict[str, Any]] = []
UNIT: dict[str, Callable[[], float]] = {}


def measured(problem_name: str, fn: Callable[[], Any], repeats: int = 1) -> tuple[Any, float,
                                                                                   float]:
    """(result, seconds, unit): the gradient unit is timed just before and just after ``fn``
    (median of 3 each, mean of the two), so a load change on a shared machine moves both."""
    u0 = UNIT[problem_name]()
    out, t = timed(fn, repeats)
    u1 = UNIT[problem_name]()
    return out, t, 0.5 * (u0 + u1)


def row(problem_name: str, what: str, seconds: float, unit: float, extra: str = "") -> None:
    r = {"problem": problem_name, "what": what, "s": seconds, "grads": seconds / unit,
         "extra": extra}
    ROWS.append(r)
    print(f"  {what:<44} {seconds:8.3f} s  {seconds / unit:7.1f} gradients  {extra}",
          flush=True)


def run_lenet() -> None:
    name = "LeNet-5 3×32×32, n=256"
    net, X, Y = problem("lenet5", (3, 32, 32), 256)
    P = sum(p.numel() for p in net.parameters())
    print(f"{name}, P={P}", flush=True)
    unit = gradient_time(net, X, Y)
    UNIT[name] = lambda: gradient_time(net, X, Y, repeats=3)
    row(name, "one gradient (unit)", unit, unit)
    tr, t, unit = measured(name, lambda: curvature.trace(net, "squared", X, Y, method="gn"), 3)
    row(name, "exact GN trace trace(method='gn')", t, unit, f"tr G = {tr.value:.6g}")
    op = curvature.hvp_operator(net, "squared", X, Y, check=False)
    v = torch.randn(op.P, dtype=op.dtype)
    op(v)
    _, t, unit = measured(name, lambda: op(v), 5)
    row(name, "one HVP", t, unit)
    rep, t, unit = measured(name, lambda: flatbook.report(net, X, Y, tol=1e-4))
    row(name, "report(tol=1e-4)", t, unit,
        f"λ_max {rep.scalars['lambda_max']:.5g} ({int(rep.scalars['lambda_max_n_hvp'])} HVPs)")


def run_mlp(hutch: bool = True) -> None:
    name = "MLP 784-1024-1024-10, n=1024"
    net, X, Y = problem("mlp", (784,), 1024, hidden=[1024, 1024])
    P = sum(p.numel() for p in net.parameters())
    print(f"{name}, P={P}", flush=True)
    unit = gradient_time(net, X, Y)
    UNIT[name] = lambda: gradient_time(net, X, Y, repeats=3)
    row(name, "one gradient (unit)", unit, unit)
    # first: the report as a user's first call in a fresh process (imports, first touches)
    rep, t, unit = measured(name, lambda: flatbook.report(net, X, Y, tol=1e-4))
    row(name, "report(tol=1e-4), first call in the process", t, unit,
        f"{int(rep.scalars['lambda_max_n_hvp'])} HVPs")
    op = curvature.hvp_operator(net, "squared", X, Y, check=False)
    v = torch.randn(op.P, dtype=op.dtype)
    op(v)
    _, t, unit = measured(name, lambda: op(v), 5)
    row(name, "one HVP", t, unit)
    s, t, unit = measured(name, lambda: curvature.sharpness(net, "squared", X, Y, tol=1e-4))
    row(name, "λ_max sharpness(tol=1e-4)", t, unit, f"{s.n_hvp} HVPs")
    tr, t, unit = measured(name, lambda: curvature.trace(net, "squared", X, Y, method="gn"), 3)
    row(name, "exact GN trace trace(method='gn')", t, unit, f"tr G = {tr.value:.6g}")
    rep, t, unit = measured(name, lambda: flatbook.report(net, X, Y, tol=1e-4), 3)
    row(name, "report(tol=1e-4), median of 3", t, unit,
        f"{int(rep.scalars['lambda_max_n_hvp'])} HVPs, λ_max {rep.scalars['lambda_max']:.6g}")
    if hutch:
        for method in ("hutchinson", "hutchpp"):
            u0 = UNIT[name]()
            with PeakRSS() as mem:
                h, t = timed(lambda m=method: curvature.trace(net, "squared", X, Y, method=m,
                                                              n_hvp=100))
            unit = 0.5 * (u0 + UNIT[name]())
            row(name, f"{method}(100) trace(method={method!r})", t, unit,
                f"{h.value:.5g} ± {h.stderr:.2g}, peak RSS +{mem.above / 2**20:.0f} MiB")


def run_vgg() -> None:
    name = "VGG-11 3×32×32, n=64"
    net, X, Y = problem("vgg11", (3, 32, 32), 64)
    P = sum(p.numel() for p in net.parameters())
    print(f"{name}, P={P}", flush=True)
    unit = gradient_time(net, X, Y, repeats=3)
    UNIT[name] = lambda: gradient_time(net, X, Y, repeats=3)
    row(name, "one gradient (unit)", unit, unit)
    with PeakRSS() as mem:
        tr, t, unit = measured(name, lambda: curvature.trace(net, "squared", X, Y, method="gn"))
    row(name, "exact GN trace trace(method='gn')", t, unit,
        f"tr G = {tr.value:.6g}, peak RSS +{mem.above / 2**20:.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["lenet", "mlp", "vgg"], action="append")
    ap.add_argument("--no-hutchinson", action="store_true")
    args = ap.parse_args()
    which = args.only or ["lenet", "mlp", "vgg"]
    print(f"flatbook {flatbook.__version__}, torch {torch.__version__}, "
          f"python {platform.python_version()}, threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}, "
          f"cuda {torch.cuda.is_available()}", flush=True)
    if "lenet" in which:
        run_lenet()
    if "mlp" in which:
        run_mlp(hutch=not args.no_hutchinson)
    if "vgg" in which:
        run_vgg()
    print(f"load after {os.getloadavg()[0]:.1f}")
    print("\n| problem | measurement | gradients | seconds | note |\n|---|---|---|---|---|")
    for r in ROWS:
        print(f"| {r['problem']} | {r['what']} | {r['grads']:.1f} | {r['s']:.3f} | "
              f"{r['extra']} |")


if __name__ == "__main__":
    main()
