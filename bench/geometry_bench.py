"""Batched Jacobian measures (flatbook.geometry) vs a per-sample autograd loop, side by side.

For n inputs, both paths compute the input Jacobian J_i = ∂f(x_i)/∂x_i and from it log LVR,
MLS and LD:

- flatbook: ``geometry.measures(geometry.input_jacobian(model, X))`` — ``vmap(jacrev)`` over
  chunks of samples, one batched ``torch.linalg.svdvals``;
- reference: a Python loop over samples, ``torch.autograd.functional.jacobian`` (one backward
  pass per output) and ``torch.linalg.svdvals`` per sample.

Run by hand (never in tests)::

    .venv/bin/python bench/geometry_bench.py            # n = 512, 2 threads

and record the printed table in bench/README.md (section "geometry").
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from torch import Tensor, nn

from flatbook import geometry, models


def loop_measures(model: nn.Module, X: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample reference: (log LVR, MLS, LD), each [n]."""
    shape = X.shape[1:]
    lv, ml, ld = [], [], []
    for x in X:

        def f(v: Tensor) -> Tensor:
            return model(v.reshape(1, *shape)).reshape(-1)

        J = torch.autograd.functional.jacobian(f, x.reshape(-1))
        s = torch.linalg.svdvals(J)
        lv.append(torch.log(s).sum())
        ml.append(s[0])
        ld.append(s.pow(2).sum() ** 2 / s.pow(4).sum())
    return torch.stack(lv), torch.stack(ml), torch.stack(ld)


def batched_measures(model: nn.Module, X: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    m = geometry.measures(geometry.input_jacobian(model, X, chunk=256))
    return m.log_lvr, m.mls, m.ld


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=512, help="number of inputs")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats of the batched path")
    ap.add_argument("--loop-repeats", type=int, default=1, help="timed repeats of the loop")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--models", default="mlp,lenet,vit", help="comma-separated subset")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    cases = {
        "mlp": ("MLP 64-256-256-10", models.mlp([64, 256, 256, 10], "relu", seed=0),
                torch.randn(args.n, 64, generator=g)),
        "lenet": ("LeNet-5 1×8×8→10", models.lenet5((1, 8, 8), 10, seed=0),
                  torch.randn(args.n, 1, 8, 8, generator=g)),
        "vit": ("ViT 8×8, patch 2, dim 32, depth 2", models.vit((1, 8, 8), 10, patch=2, dim=32,
                                                               depth=2, heads=4, seed=0),
                torch.randn(args.n, 1, 8, 8, generator=g)),
    }  # fmt: skip
    load0 = os.getloadavg()[0]
    print(
        f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} cores, threads {torch.get_num_threads()}, n = {args.n}, float32, "
        f"median of {args.repeats} (batched) / {args.loop_repeats} (loop) interleaved runs"
    )
    print()
    print(
        "| model | batched (s) | per-sample loop (s) | speed-up "
        "| max rel. diff (log LVR, MLS, LD) |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for key in args.models.split(","):
        name, model, X = cases[key]
        model.eval()
        batched_measures(model, X[:8])  # warm-up
        tb, tl = [], []
        for r in range(max(args.repeats, args.loop_repeats)):  # interleaved: same load
            if r < args.repeats:
                t = time.perf_counter()
                lb, mb, db = batched_measures(model, X)
                tb.append(time.perf_counter() - t)
            if r < args.loop_repeats:
                t = time.perf_counter()
                ll, ml, dl = loop_measures(model, X)
                tl.append(time.perf_counter() - t)
        diff = max(
            float(((a - b).abs() / b.abs().clamp_min(1e-12)).max())
            for a, b in ((lb, ll), (mb, ml), (db, dl))
        )
        b, lo = statistics.median(tb), statistics.median(tl)
        print(f"| {name} | {b:.3f} | {lo:.3f} | {lo / b:.1f}× | {diff:.1e} |", flush=True)
    print()
    print(f"load average (1 min) before / after: {load0:.1f} / {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
