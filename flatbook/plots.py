"""Figures shared by the book's chapters (matplotlib; each function draws on a given Axes).

Conventions: log axes for positive quantities spanning decades, the identity line dashed black,
symbols in axis labels as in the paper (λ_max, tr H, LVR, MLS, LD).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from numpy.typing import ArrayLike


def lhs_rhs_scatter(
    ax: Axes,
    lhs: ArrayLike,
    rhs: ArrayLike,
    label: str | None = None,
    xlabel: str = "right-hand side (bound)",
    ylabel: str = "left-hand side",
    **kw: object,
) -> Axes:
    """Scatter lhs against rhs on log–log axes with the identity line y = x.

    An inequality lhs ≤ rhs holds for every point on or below the dashed line.
    """
    lhs_a, rhs_a = np.asarray(lhs, dtype=float), np.asarray(rhs, dtype=float)
    ax.scatter(rhs_a, lhs_a, s=kw.pop("s", 16), alpha=kw.pop("alpha", 0.8), label=label, **kw)
    pos = np.concatenate([lhs_a[lhs_a > 0], rhs_a[rhs_a > 0]])
    if pos.size:
        lo, hi = pos.min() / 2, pos.max() * 2
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="lhs = rhs")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return ax


def slack_hist(
    ax: Axes, slack: ArrayLike, label: str | None = None, bins: int = 30, **kw: object
) -> Axes:
    """Histogram of log10(rhs / lhs): 0 means tight, every value ≥ 0 means the bound holds."""
    s = np.log10(np.asarray(slack, dtype=float))
    ax.hist(s[np.isfinite(s)], bins=bins, alpha=0.7, label=label, **kw)
    ax.axvline(0.0, color="k", ls="--", lw=1)
    ax.set_xlabel(r"slack $\log_{10}(\mathrm{rhs}/\mathrm{lhs})$")
    ax.set_ylabel("count")
    return ax


def trajectory(
    ax: Axes,
    steps: ArrayLike,
    values: ArrayLike,
    ceiling: float | None = None,
    label: str | None = None,
    ceiling_label: str | None = None,
    logy: bool = False,
    **kw: object,
) -> Axes:
    """A quantity along training (x: step), with an optional horizontal ceiling (e.g. 2/η)."""
    (line,) = ax.plot(np.asarray(steps), np.asarray(values), label=label, **kw)
    if ceiling is not None:
        ax.axhline(ceiling, color=line.get_color(), ls=":", lw=1.2, label=ceiling_label)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    return ax


def grid(n: int, ncols: int = 3, size: float = 3.2) -> tuple[plt.Figure, Sequence[Axes]]:
    """A figure with n panels on a grid of ``ncols`` columns; returns (fig, flat list of axes)."""
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, min(n, ncols), figsize=(size * min(n, ncols), size * nrows),
                             squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def grouped_bars(
    ax: Axes,
    groups: Sequence[str],
    series: dict[str, ArrayLike],
    total: float | None = None,
    total_label: str | None = None,
    logy: bool = True,
) -> Axes:
    """Grouped bar chart: one group per entry of ``groups`` (e.g. the dense layers l1, l2, …),
    one bar per series (e.g. a layer's NMLS term, NVR term and weight-gradient block), and an
    optional dashed horizontal line at ``total`` (e.g. tr H, which bounds every sum)."""
    x = np.arange(len(groups))
    w = 0.8 / max(1, len(series))
    for j, (name, vals) in enumerate(series.items()):
        ax.bar(x + (j - (len(series) - 1) / 2) * w, np.asarray(vals, dtype=float), w, label=name)
    if total is not None:
        ax.axhline(total, color="k", ls="--", lw=1, label=total_label)
    ax.set_xticks(x, list(groups))
    if logy:
        ax.set_yscale("log")
    return ax


def slack_budget(
    ax: Axes,
    labels: Sequence[str],
    factors: dict[str, ArrayLike],
    total: ArrayLike | None = None,
    ylabel: str = r"slack $\log_{10}(\mathrm{rhs}/\mathrm{lhs})$",
) -> Axes:
    """Where a bound's slack comes from: one stacked bar per case (e.g. per network).

    ``factors`` maps the name of each step of a proof to its slack factor ≥ 1 per case
    (rhs/lhs of that step alone); the bound's slack is their product, so the stacked heights
    log10(factor) add up to log10(total slack). ``total`` (optional, per case) is marked with a
    black tick to show that the decomposition is exact.
    """
    x = np.arange(len(labels))
    bottom = np.zeros(len(labels))
    for name, f in factors.items():
        h = np.log10(np.asarray(f, dtype=float))
        ax.bar(x, h, 0.7, bottom=bottom, label=name)
        bottom = bottom + h
    if total is not None:
        ax.plot(x, np.log10(np.asarray(total, dtype=float)), "k_", ms=14, mew=2,
                label="total slack")
    ax.set_xticks(x, list(labels), rotation=45 if len(labels) > 6 else 0,
                  ha="right" if len(labels) > 6 else "center")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_ylabel(ylabel)
    return ax
