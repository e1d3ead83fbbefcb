"""Figures of the experiment chapters (late phase, sweeps, correlations, test data, report).

Each function draws on a given matplotlib ``Axes`` (or a list of them) and returns it, so a
chapter composes panels with :func:`flatbook.plots.grid`. Conventions as in
:mod:`flatbook.plots`: symbols as in the paper (λ_max, tr H, LVR, MLS, LD), log axes for
quantities spanning decades, ceilings dotted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from numpy.typing import ArrayLike

PHASE_STYLE = {"color": "0.4", "ls": "--", "lw": 1.0}


def mark_phase(ax: Axes, step: float | None, label: str | None = "interpolation") -> Axes:
    """Vertical dashed line at the step where the interpolation phase starts (no-op if None)."""
    if step is not None and np.isfinite(step):
        ax.axvline(float(step), label=label, **PHASE_STYLE)
    return ax


def time_course(
    ax: Axes,
    steps: ArrayLike,
    values: ArrayLike,
    ylabel: str,
    phase_start: float | None = None,
    logy: bool = False,
    label: str | None = None,
    **kw: object,
) -> Axes:
    """One quantity along training (x: optimizer step) with the interpolation onset marked.

    Non-finite values (e.g. log LVR = −∞ for a rank-deficient Jacobian) are left as gaps.
    """
    s = np.asarray(steps, dtype=float)
    v = np.asarray(values, dtype=float)
    v = np.where(np.isfinite(v), v, np.nan)
    if logy:
        v = np.where(v > 0, v, np.nan)
    ax.plot(s, v, marker=kw.pop("marker", "."), ms=kw.pop("ms", 4), label=label, **kw)
    mark_phase(ax, phase_start, label=None)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    return ax


def sweep_lines(
    ax: Axes,
    x: ArrayLike,
    y: ArrayLike,
    group: ArrayLike,
    group_label: str = "B",
    xlabel: str = r"learning rate $\eta$",
    ylabel: str = "",
    logx: bool = True,
    logy: bool = False,
) -> Axes:
    """Values y (one per run) against x, one line per value of ``group`` through the
    across-seed means at each x, seeds as faint dots. Non-finite y are dropped."""
    xa, ya, ga = (np.asarray(a) for a in (x, y, group))
    xa, ya = xa.astype(float), ya.astype(float)
    keep = np.isfinite(xa) & np.isfinite(ya) & ((ya > 0) if logy else True)
    groups = list(dict.fromkeys(ga.tolist()))
    colors = _cmap(len(groups))
    for g, c in zip(groups, colors, strict=True):
        m = keep & (ga == g)
        if not m.any():
            continue
        ax.plot(xa[m], ya[m], "o", color=c, alpha=0.35, ms=4)
        xs = np.unique(xa[m])
        ax.plot(xs, [ya[m & (xa == v)].mean() for v in xs], "-", color=c,
                label=f"{group_label} = {g}")
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return ax


def ceiling_curve(
    ax: Axes, x: ArrayLike, ceiling: ArrayLike, label: str, color: str = "k", **kw: object
) -> Axes:
    """A stability ceiling as a function of x (e.g. 2/η against η), dotted."""
    xa = np.asarray(x, dtype=float)
    order = np.argsort(xa)
    ax.plot(xa[order], np.asarray(ceiling, dtype=float)[order], ls=kw.pop("ls", ":"),
            color=color, lw=kw.pop("lw", 1.5), label=label, **kw)
    return ax


def heatmap(
    ax: Axes,
    matrix: ArrayLike,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    annotate: bool = True,
    cmap: str = "RdBu_r",
    title: str | None = None,
    marks: ArrayLike | None = None,
) -> Axes:
    """Correlation heat map on [−1, 1] (red positive, blue negative, NaN grey), values
    annotated; ``marks`` (bool, same shape) adds ``*`` where the bootstrap CI excludes 0."""
    m = np.asarray(matrix, dtype=float)
    if m.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"matrix shape {m.shape} does not match labels "
                         f"({len(row_labels)}, {len(col_labels)})")
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, norm=Normalize(-1, 1), aspect="auto")
    im.cmap.set_bad("0.85")
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=45, ha="right")
    ax.set_yticks(range(len(row_labels)), row_labels)
    mk = np.zeros_like(m, dtype=bool) if marks is None else np.asarray(marks, dtype=bool)
    if annotate:
        for (i, j), v in np.ndenumerate(m):
            txt = "–" if not np.isfinite(v) else f"{v:+.2f}" + ("*" if mk[i, j] else "")
            ax.text(j, i, txt, ha="center", va="center", fontsize=8,
                    color="w" if np.isfinite(v) and abs(v) > 0.6 else "k")
    if title:
        ax.set_title(title)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return ax


def forest(
    ax: Axes,
    rows: Sequence[Mapping[str, object]],
    label_keys: Sequence[str] = ("x", "y"),
    xlabel: str = r"Kendall $\tau$ (95% bootstrap CI)",
) -> Axes:
    """Point estimates with their bootstrap intervals, one row each (``rows`` as returned by
    :func:`flatbook.analysis.correlation_table`), a vertical line at 0."""
    est = np.array([float(r["estimate"]) for r in rows])
    lo = np.array([float(r["lo"]) for r in rows])
    hi = np.array([float(r["hi"]) for r in rows])
    y = np.arange(len(rows))[::-1]
    ok = np.isfinite(est) & np.isfinite(lo) & np.isfinite(hi)
    ax.errorbar(est[ok], y[ok], xerr=[np.clip(est[ok] - lo[ok], 0, None),
                                      np.clip(hi[ok] - est[ok], 0, None)],
                fmt="o", ms=4, capsize=2)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, [" vs ".join(str(r[k]) for k in label_keys) for r in rows])
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel(xlabel)
    return ax


def verdict_bar(ax: Axes, labels: Sequence[str], verdicts: Sequence[str]) -> Axes:
    """A one-column chart of claims coloured by verdict (green reproduced, amber partly,
    red not reproduced, grey not tested)."""
    colors = {"reproduced": "tab:green", "partly": "tab:orange",
              "not reproduced": "tab:red", "not tested": "0.7"}
    y = np.arange(len(labels))[::-1]
    ax.barh(y, np.ones(len(labels)), color=[colors.get(v, "0.7") for v in verdicts])
    for yi, v in zip(y, verdicts, strict=True):
        ax.text(0.5, yi, v, ha="center", va="center", fontsize=8)
    ax.set_yticks(y, list(labels))
    ax.set_xticks([])
    ax.set_xlim(0, 1)
    return ax


def _cmap(n: int) -> list[tuple[float, float, float, float]]:
    import matplotlib as mpl

    cm = mpl.colormaps["viridis"]
    return [cm(v) for v in np.linspace(0.05, 0.85, max(n, 1))][:n]
