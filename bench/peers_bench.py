"""flatbook against its real peers at the scale researchers use (issue 14), side by side.

Run by hand (never in tests); the peers are not flatbook dependencies::

    .venv/bin/pip install --no-deps --target /tmp/pyh curvlinops-for-pytorch unfoldNd \\
        backpack-for-pytorch einops einconv linear_operator opt-einsum jaxtyping wadler_lindig
    .venv/bin/python bench/peers_bench.py --extra-path /tmp/pyh            # ~10 min, 2 cores
    .venv/bin/python bench/peers_bench.py --extra-path /tmp/pyh --only mlp

For each problem, in one process, on the same default-initialised float32 model and data:

- λ_max: ``flatbook.curvature.sharpness(tol=1e-4)`` against curvlinops 3
  ``HessianLinearOperator`` + scipy ``eigsh(k=1, which="LA", tol=1e-4)`` (ARPACK), both from a
  seeded random start; each row gives its products, its λ_max and the relative difference of
  the two λ_max.
- exact Gauss–Newton trace tr G = (1/n) Σ_i ‖J_i‖_F²: ``trace(method="gn")`` against BackPACK 1.7
  ``DiagGGNExact`` (the exact GGN diagonal, summed; ``MSELoss(reduction="mean")`` over n·k
  entries gives 2/(nk) Σ J_iᵀJ_i, so tr G = k/2 · Σ diag). Where BackPACK cannot take the model
  (attention written with tensor ops, residual additions) the row says so.

Every time is also given in units of one full-data gradient (forward + backward of the mean
loss, timed just before and after the row, median of 3 each), so the ratios survive a shared
machine better than the seconds; the last column is the peer's time over flatbook's.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.metadata
import os
import platform
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import flatbook
from flatbook import curvature

sys.path.insert(0, os.path.dirname(__file__))
from curvature_bench import curvlinops_lambda_max  # noqa: E402
from scale_bench import gradient_time, problem, timed  # noqa: E402

ROWS: list[dict[str, Any]] = []


class BasicBlock(nn.Module):
    """ResNet basic block: conv3×3 → BN → ReLU → conv3×3 → BN, + identity/1×1 shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.b1(self.c1(x)))
        return torch.relu(self.b2(self.c2(h)) + self.short(x))


def resnet18(width: int = 16, k: int = 10, seed: int = 0) -> nn.Module:
    """ResNet-18 layout for 3×32×32 (stem conv, 4 stages × 2 basic blocks, global pool)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                               nn.ReLU()]
    cin = width
    for i, mult in enumerate((1, 2, 4, 8)):
        for j in range(2):
            layers.append(BasicBlock(cin, width * mult, 2 if (j == 0 and i > 0) else 1))
            cin = width * mult
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, k)]
    net = nn.Sequential(*layers)
    net.eval()
    return net


def unit_of(net: nn.Module, X: Tensor, Y: Tensor) -> Callable[[], float]:
    return lambda: gradient_time(net, X, Y, repeats=3)


def add(problem_name: str, what: str, method: str, value: float, products: str, s: float,
        unit: float, ratio: str = "") -> None:
    r = {"problem": problem_name, "what": what, "method": method, "value": value,
         "products": products, "s": s, "grads": s / unit, "ratio": ratio}
    ROWS.append(r)
    print(f"  {what:<8} {method:<34} {value:>12.6g}  {products:>8}  {s:8.2f} s "
          f"{s / unit:7.1f} grads  {ratio}", flush=True)


def backpack_gn_trace(net: nn.Module, X: Tensor, Y: Tensor) -> float:
    """tr G from BackPACK's exact GGN diagonal (DiagGGNExact), rescaled to (1/n) Σ‖J_i‖_F²."""
    from backpack import backpack, extend
    from backpack.extensions import DiagGGNExact

    net = copy.deepcopy(net)  # extend() registers hooks on the model: keep flatbook's clean
    model = extend(net, use_converter=not isinstance(net, nn.Sequential) or any(
        isinstance(m, BasicBlock) for m in net.modules()))
    lossf = extend(nn.MSELoss(reduction="mean"))
    loss = lossf(model(X), Y)
    with backpack(DiagGGNExact()):
        loss.backward()
    total = sum(float(p.diag_ggn_exact.sum()) for p in model.parameters() if p.requires_grad)
    for p in model.parameters():
        p.grad = None
    return total * Y.shape[1] / 2


def run(name: str, net: nn.Module, X: Tensor, Y: Tensor, have: dict[str, bool],
        gn: bool = True) -> None:
    P = sum(p.numel() for p in net.parameters())
    print(f"{name}, P = {P:,}", flush=True)
    unit = unit_of(net, X, Y)
    u = unit()
    add(name, "unit", "one full-data gradient", float("nan"), "", u, u)
    # λ_max
    s, t = timed(lambda: curvature.sharpness(net, "squared", X, Y, tol=1e-4))
    u = 0.5 * (u + unit())
    add(name, "λ_max", "flatbook sharpness(tol=1e-4)", s.lambda_max, f"{s.n_hvp} HVP", t, u)
    t_fb = t
    if have["curvlinops"]:
        (lam, nmv), t = timed(lambda: curvlinops_lambda_max(net, X, Y, 1e-4))
        u = 0.5 * (u + unit())
        rel = abs(lam - s.lambda_max) / abs(s.lambda_max)
        add(name, "λ_max", "curvlinops + eigsh(tol=1e-4)", lam, f"{nmv} HVP", t, u,
            f"{t / t_fb:.2f}× flatbook's time; |Δλ|/λ = {rel:.1e}")
    if not gn:
        return
    tr, t = timed(lambda: curvature.trace(net, "squared", X, Y, method="gn"))
    u = 0.5 * (u + unit())
    add(name, "tr G", "flatbook trace(method='gn')", tr.value, "exact", t, u)
    t_fb = t
    if have["backpack"]:
        try:
            val, t = timed(lambda: backpack_gn_trace(net, X, Y))
        except Exception as e:  # noqa: BLE001 - a peer that cannot take the model
            add(name, "tr G", f"BackPACK DiagGGNExact: cannot ({type(e).__name__})",
                float("nan"), "", float("nan"), u)
            return
        u = 0.5 * (u + unit())
        rel = abs(val - tr.value) / abs(tr.value)
        add(name, "tr G", "BackPACK DiagGGNExact (summed)", val, "exact", t, u,
            f"{t / t_fb:.2f}× flatbook's time; |Δ|/tr = {rel:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--extra-path", help="folder with curvlinops / backpack (pip --target)")
    ap.add_argument("--only", action="append",
                    choices=["mlp", "lenet", "vgg", "vit", "resnet"])
    args = ap.parse_args()
    if args.extra_path:
        sys.path.insert(0, args.extra_path)
    have = {}
    versions = []
    for mod, dist in (("curvlinops", "curvlinops-for-pytorch"),
                      ("backpack", "backpack-for-pytorch")):
        try:
            importlib.import_module(mod)
            have[mod] = True
            versions.append(f"{mod} {importlib.metadata.version(dist)}")
        except ImportError:
            have[mod] = False
            versions.append(f"{mod} missing")
    print(f"flatbook {flatbook.__version__}, torch {torch.__version__}, python "
          f"{platform.python_version()}, threads {torch.get_num_threads()}, cpus "
          f"{os.cpu_count()}, load {os.getloadavg()[0]:.1f}; " + ", ".join(versions), flush=True)
    which = args.only or ["mlp", "lenet", "vgg", "vit", "resnet"]
    if "mlp" in which:
        run("MLP 784-1024-1024-10, n=1024", *problem("mlp", (784,), 1024, hidden=[1024, 1024]),
            have)
    if "lenet" in which:
        run("LeNet-5 3×32×32, n=256", *problem("lenet5", (3, 32, 32), 256), have)
    if "vgg" in which:
        run("VGG-11 3×32×32, n=64", *problem("vgg11", (3, 32, 32), 64), have)
    if "vit" in which:
        run("ViT (small) 3×32×32, n=128", *problem("vit", (3, 32, 32), 128), have)
    if "resnet" in which:
        g = torch.Generator().manual_seed(1)
        X = torch.randn(64, 3, 32, 32, generator=g)
        Y = nn.functional.one_hot(torch.randint(0, 10, (64,), generator=g), 10).float()
        run("ResNet-18-style (width 16) 3×32×32, n=64", resnet18(16), X, Y, have)
    print(f"load after {os.getloadavg()[0]:.1f}")
    print("\n| problem | quantity | method | value | products | s | gradients | peer / flatbook |"
          "\n|---|---|---|---|---|---|---|---|")
    for r in ROWS:
        if r["what"] == "unit":
            print(f"| {r['problem']} | unit | {r['method']} | | | {r['s']:.3f} | 1 | |")
            continue
        print(f"| {r['problem']} | {r['what']} | {r['method']} | {r['value']:.6g} | "
              f"{r['products']} | {r['s']:.2f} | {r['grads']:.1f} | {r['ratio']} |")


if __name__ == "__main__":
    main()
