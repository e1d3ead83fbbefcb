"""Figures of the experiment chapters (late phase, sweeps, correlations, test data, report).

Each function draws on a given matplotlib ``Axes`` (or a list of them) and returns it, so a
chapter composes panels with :func:`flatbook.plots.grid`. Conventions as in
:mod:`flatbook.plots`: symbols as in the paper (λ_max, tr H, LVR, MLS, LD), log axes for
quantities spanning decades, ceilings dotted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from numpy.typing import ArrayLike

from flatbook import plots as _plots  # noqa: F401  (applies the book's one figure style)
from flatbook.keyword_form import resolve

FIG_WIDTH_IN = 7.5
"""Width (inches) of every multi-panel figure: at most the book's content width
(:data:`flatbook.plots.CONTENT_WIDTH_IN`), so nothing is scaled down and text keeps the
style's 9 pt as rendered."""

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


@dataclass(frozen=True)
class SweepStyle:
    """Labels and scales of :func:`sweep_lines`: the legend reads ``{group_label} = {g}``;
    axis labels ``xlabel``, ``ylabel``; log axes ``logx``, ``logy`` (with ``logy``, y ≤ 0 are
    dropped)."""

    group_label: str = "B"
    xlabel: str = r"learning rate $\eta$"
    ylabel: str = ""
    logx: bool = True
    logy: bool = False


def sweep_lines(ax: Axes, x: ArrayLike, y: ArrayLike, group: ArrayLike, *,
                options: SweepStyle | None = None, **flags: object) -> Axes:
    """Values y [runs] against x [runs], one line per value of ``group`` [runs] through the
    across-seed means at each x, seeds as faint dots. Non-finite y are dropped. Labels and
    scales: ``options`` (:class:`SweepStyle`) or its fields as keywords."""
    st = resolve(SweepStyle, "sweep_lines", options, flags)
    group_label, xlabel, ylabel, logx, logy = (st.group_label, st.xlabel, st.ylabel, st.logx,
                                               st.logy)
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
    import matplotlib as mpl

    cm = mpl.colormaps[cmap].with_extremes(bad="0.85")
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cm, norm=Normalize(-1, 1), aspect="auto")
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=45, ha="right")
    ax.set_yticks(range(len(row_labels)), row_labels)
    mk = np.zeros_like(m, dtype=bool) if marks is None else np.asarray(marks, dtype=bool)
    if annotate:
        for (i, j), v in np.ndenumerate(m):
            txt = "–" if not np.isfinite(v) else f"{v:+.2f}" + ("*" if mk[i, j] else "")
            ax.text(j, i, txt, ha="center", va="center",
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


VERDICT_COLORS = {"reproduced": "tab:green", "contradicted": "tab:red",
                  "inconclusive": "tab:orange", "not tested": "0.7"}
"""Colour of each verdict word in the report figures."""


def verdict_bar(ax: Axes, labels: Sequence[str], verdicts: Sequence[str]) -> Axes:
    """A one-column chart of claims coloured by verdict (green reproduced, red contradicted,
    amber inconclusive, grey not tested)."""
    y = np.arange(len(labels))[::-1]
    ax.barh(y, np.ones(len(labels)), color=[VERDICT_COLORS.get(v, "0.7") for v in verdicts])
    for yi, v in zip(y, verdicts, strict=True):
        ax.text(0.5, yi, v, ha="center", va="center")
    ax.set_yticks(y, list(labels))
    ax.set_xticks([])
    ax.set_xlim(0, 1)
    return ax


def claims_forest(ax: Axes, claims: Sequence[Mapping[str, object]],
                  fmt: str = "{:+.3g} [{:+.3g}, {:+.3g}]") -> Axes:
    """Forest plot of every tested part of every claim (rows of
    :func:`flatbook.analysis.evaluate_claims`): the effect and its 95% interval divided by the
    part's minimum detectable effect (so parts in different units share one axis; |x| = 1 is
    the MDE, dotted), signed so that the claimed direction is to the right, coloured by the
    part's verdict; the numbers in their own units are written at the right."""
    rows = []
    for c in claims:
        for p in c["parts"]:  # type: ignore[union-attr]
            if not np.isfinite(p["effect"]) or not np.isfinite(p.get("mde", np.nan)):
                continue
            rows.append((f"{c['key']}: {p['name']}" + ("" if p["essential"] else " (n.e.)"), p))
    y = np.arange(len(rows))[::-1]
    xmax = 1.0
    for yi, (_, p) in zip(y, rows, strict=True):
        sign = float(p.get("expected", 1) or 1)
        scale = float(p["mde"]) if p["mde"] > 0 else 1.0
        e, lo, hi = (sign * float(p[k]) / scale for k in ("effect", "lo", "hi"))
        lo, hi = min(lo, hi), max(lo, hi)
        col = VERDICT_COLORS.get(str(p["verdict"]), "0.5")
        ax.plot([lo, hi], [yi, yi], color=col, lw=2)
        ax.plot([e], [yi], "o", color=col, ms=5)
        xmax = max(xmax, abs(lo), abs(hi), abs(e))
        ax.text(1.02, yi, fmt.format(float(p["effect"]), float(p["lo"]), float(p["hi"])),
                transform=ax.get_yaxis_transform(), va="center")
    ax.axvline(0, color="k", lw=0.8)
    for v in (-1, 1):
        ax.axvline(v, color="0.5", ls=":", lw=0.8)
    ax.set_yticks(y, [r[0] for r in rows])
    ax.set_xlim(-1.1 * xmax, 1.1 * xmax)
    ax.set_xlabel("effect / MDE (claimed direction →)")
    return ax


def late_comparison_figure(
    groups: Mapping[str, Sequence[Mapping[str, ArrayLike]]],
    keys: Sequence[str],
    labels: Sequence[str],
    log: Sequence[bool],
    size: float = 2.6,
) -> object:
    """The interpolation phase only, every run: for each key a panel of the change since the
    onset (log ratio for positive quantities, difference otherwise) against the steps since
    the onset, one colour per group (e.g. plain vs label-noise SGD), thin lines per run and
    the group mean bold. The y-range is the late phase's own. ``groups[name]`` holds the
    late-phase trajectories (:meth:`flatbook.analysis.Study.late_trajectories`). Panels in
    two columns, :data:`FIG_WIDTH_IN` wide, ``size`` inches high per row."""
    import matplotlib.pyplot as plt

    ncols = min(len(keys), 2)
    nrows = -(-len(keys) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(FIG_WIDTH_IN, size * nrows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[len(keys):]:
        ax.set_visible(False)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:purple"]
    for ax, k, lab, lg in zip(flat, keys, labels, log, strict=False):
        for (name, trajs), col in zip(groups.items(), colors, strict=False):
            curves = []
            for t in trajs:
                if k not in t or np.asarray(t["step"]).size < 2:
                    continue
                st = np.asarray(t["step"], dtype=float)
                v = np.asarray(t[k], dtype=float)
                with np.errstate(divide="ignore", invalid="ignore"):
                    d = np.log(v / v[0]) if lg else v - v[0]
                ax.plot(st - st[0], d, color=col, lw=0.6, alpha=0.5)
                curves.append((st - st[0], d))
            if curves:
                n = min(c[0].size for c in curves)
                mean = np.nanmean([c[1][:n] for c in curves], axis=0)
                ax.plot(curves[0][0][:n], mean, color=col, lw=2.2,
                        label=f"{name} (mean of {len(curves)})")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xlabel("steps since the onset")
        ax.set_ylabel((r"$\Delta\log$ " if lg else r"$\Delta$ ") + lab)
    flat[0].legend(frameon=False)
    fig.tight_layout()
    return fig


def _lr_ticks(ax: Axes, xs: ArrayLike, fmt: str = "{:g}") -> None:
    """Major ticks exactly at the swept values (plain numbers), no minor tick labels."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    v = np.unique(np.asarray(xs, dtype=float))
    v = v[np.isfinite(v)]
    if v.size:
        ax.xaxis.set_major_locator(FixedLocator(v))
        ax.set_xticklabels([fmt.format(t) for t in v])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())


def _cmap(n: int) -> list[tuple[float, float, float, float]]:
    import matplotlib as mpl

    cm = mpl.colormaps["viridis"]
    return [cm(v) for v in np.linspace(0.05, 0.85, max(n, 1))][:n]


BOUND_PAIRS = (("t2_gm", "T2 volume (GM)"), ("t3_weighted", "T3 MLS"), ("t4_nmls", "T4 NMLS"))
"""Bounds drawn in the late-phase figure: (report key prefix, legend label)."""


def bounds_panel(ax: Axes, traj: Mapping[str, ArrayLike], phase_start: float | None = None,
                 legend: bool = True) -> Axes:
    """Both sides of the aggregated bounds along training: right-hand side solid, left-hand
    side dashed, same colour per bound (log y); ``legend=False`` leaves the legend to the
    caller (the handles carry the bounds' names)."""
    steps = np.asarray(traj["step"], dtype=float)
    for (key, name), c in zip(BOUND_PAIRS, ("tab:blue", "tab:orange", "tab:green"), strict=True):
        if f"{key}_rhs" not in traj:
            continue
        for side, ls in (("rhs", "-"), ("lhs", "--")):
            v = np.asarray(traj[f"{key}_{side}"], dtype=float)
            v = np.where(np.isfinite(v) & (v > 0), v, np.nan)
            ax.plot(steps, v, ls=ls, color=c, label=name if side == "rhs" else None)
    mark_phase(ax, phase_start, label=None)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("bounds: rhs —, lhs - -")
    if legend:
        ax.legend(frameon=False)
    return ax


@dataclass(frozen=True)
class LatePhaseOptions:
    """What :func:`late_phase_figure` draws besides the trajectory: the ceilings 2/η
    (``gd_ceiling``, on λ_max) and 2k/(pη) (``sgd_ceiling``, on tr H), the training-loss
    ``loss_threshold`` of the interpolation phase, the record keys of the hidden layers' LD
    (``hidden_ld_keys``) and global PR (``hidden_pr_keys``), the row height ``size`` (inches)
    and whether the late-phase panels zoom to the interpolation phase (``late_zoom``)."""

    gd_ceiling: float
    sgd_ceiling: float
    loss_threshold: float
    hidden_ld_keys: Sequence[str] = ()
    hidden_pr_keys: Sequence[str] = ()
    size: float = 2.7
    late_zoom: bool = True


def late_phase_figure(traj: Mapping[str, ArrayLike], phase_start: float | None, *,
                      options: LatePhaseOptions | None = None, **flags: object) -> object:
    """The nine panels of the late-phase chapter for one run: train loss (log) with the
    threshold, accuracies, λ_max with 2/η, tr H with 2k/(pη), log LVR, MLS, LD (output and
    hidden layers), global PR, and both sides of the bounds. The interpolation onset is the
    dashed vertical line in every panel. With ``late_zoom`` the panels of λ_max … PR take
    their y-range from the interpolation phase (the drop before it runs off the axis), so
    the late-phase movement is visible. :data:`FIG_WIDTH_IN` wide, ``size`` inches high per
    row. Options: ``options`` (:class:`LatePhaseOptions`) or its fields as keywords
    (``gd_ceiling``, ``sgd_ceiling`` and ``loss_threshold`` are required). Returns the
    figure."""
    import matplotlib.pyplot as plt

    o = resolve(LatePhaseOptions, "late_phase_figure", options, flags)
    gd_ceiling, sgd_ceiling, loss_threshold = o.gd_ceiling, o.sgd_ceiling, o.loss_threshold
    hidden_ld_keys, hidden_pr_keys, size, late_zoom = (o.hidden_ld_keys, o.hidden_pr_keys,
                                                       o.size, o.late_zoom)
    fig, axes = plt.subplots(3, 3, figsize=(FIG_WIDTH_IN, 3 * size))
    a = list(axes.ravel())
    s = traj["step"]
    time_course(a[0], s, traj["train_loss"], "train loss", phase_start, logy=True)
    a[0].axhline(loss_threshold, color="k", ls=":", lw=1, label="threshold")
    a[0].legend(frameon=False)
    time_course(a[1], s, traj["train_acc"], "accuracy", phase_start, label="train")
    time_course(a[1], s, traj["test_acc"], "accuracy", phase_start, label="test")
    a[1].legend(frameon=False)
    time_course(a[2], s, traj["lambda_max"], r"$\lambda_{\max}(H)$", phase_start)
    a[2].axhline(gd_ceiling, color="k", ls=":", lw=1.2, label=r"$2/\eta$")
    a[2].legend(frameon=False)
    time_course(a[3], s, traj["trace_gn"], r"$\mathrm{tr}\,H$ (GN)", phase_start, logy=True)
    if np.isfinite(sgd_ceiling):
        a[3].axhline(sgd_ceiling, color="k", ls=":", lw=1.2, label=r"$2k/(p\eta)$")
        a[3].legend(frameon=False)
    time_course(a[4], s, traj["log_lvr_median"], r"$\log\mathrm{LVR}$ (output, median)",
                phase_start)
    time_course(a[5], s, traj["mls_median"], "MLS (output, median)", phase_start)
    time_course(a[6], s, traj["ld_median"], "LD", phase_start, label="output")
    for i, k in enumerate(hidden_ld_keys):
        time_course(a[6], s, traj[k], "LD", phase_start, label=f"hidden {i + 1}")
    time_course(a[7], s, traj["pr_output"], "global PR", phase_start)
    for k in hidden_pr_keys:
        time_course(a[7], s, traj[k], "global PR", phase_start)
    bounds_panel(a[8], traj, phase_start, legend=False)
    if late_zoom and phase_start is not None and np.isfinite(phase_start):
        late = np.asarray(s, dtype=float) >= float(phase_start)
        for ax in a[2:8]:
            _zoom_to(ax, late)
    # the layers' colours (LD, PR) and the bounds' colours in two legends under the grid
    fig.tight_layout(rect=(0, 0.045, 1, 1))
    fig.legend(*a[6].get_legend_handles_labels(), loc="lower left", ncol=3, frameon=False,
               title=None, bbox_to_anchor=(0.0, 0.0))
    fig.legend(*a[8].get_legend_handles_labels(), loc="lower right", ncol=3, frameon=False,
               bbox_to_anchor=(1.0, 0.0))
    return fig


def _zoom_to(ax: Axes, mask: np.ndarray, margin: float = 0.15) -> None:
    """Set the y-limits of ``ax`` to the range of its lines' points where ``mask`` holds
    (plus ``margin`` of that range; multiplicative on a log axis), noting the clipping."""
    vals = []
    for ln in ax.get_lines():
        y = np.asarray(ln.get_ydata(), dtype=float)
        if y.size == mask.size:
            vals.append(y[mask])
    v = np.concatenate(vals) if vals else np.array([])
    v = v[np.isfinite(v)]
    if ax.get_yscale() == "log":
        v = v[v > 0]
    if v.size < 2 or np.ptp(v) == 0:
        return
    if ax.get_yscale() == "log":
        lo, hi = np.log(v.min()), np.log(v.max())
        pad = margin * (hi - lo)
        ax.set_ylim(np.exp(lo - pad), np.exp(hi + pad))
        plain_log_y(ax)
    else:
        pad = margin * np.ptp(v)
        ax.set_ylim(v.min() - pad, v.max() + pad)
    ax.set_title("y: late phase only", loc="right")


def plain_log_y(ax: Axes) -> None:
    """On a log y-axis spanning under a decade, a few plainly written ticks (126, 128, …)
    instead of minor labels like 1.3×10²; no-op otherwise."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

    lo, hi = ax.get_ylim()
    if ax.get_yscale() != "log" or not 0 < lo < hi or hi / lo >= 10:
        return
    ax.yaxis.set_major_locator(MaxNLocator(4))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.3g}"))
    ax.yaxis.set_minor_locator(NullLocator())


def trend_dots(ax: Axes, values: Sequence[ArrayLike], labels: Sequence[str],
               xlabel: str = r"late-phase trend: Kendall $\tau$(step, value)") -> Axes:
    """One row per quantity: a dot per run (its late-phase trend) and a bar at the mean over
    the finite values; a vertical line at 0 (left: the quantity falls)."""
    n = len(labels)
    for j, v in enumerate(values):
        va = np.asarray(v, dtype=float)
        ax.plot(va, np.full(va.size, -j), "o", alpha=0.4, color="tab:blue")
        fin = va[np.isfinite(va)]
        if fin.size:
            ax.plot([fin.mean()] * 2, [-j - 0.3, -j + 0.3], "k-", lw=2)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(-np.arange(n), list(labels))
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel(xlabel)
    return ax


@dataclass(frozen=True)
class SweepFigureOptions:
    """The layout of :func:`sweep_figure`: summary keys of the x-axis (``x``) and of the
    lines (``group``), the ``prefix`` of the plotted keys, per-key ``ceilings`` (key →
    (summary key, label)), the keys on a log y-axis (``logy``), panels per row (``ncols``)
    and the row height ``size`` (inches)."""

    x: str = "lr"
    group: str = "batch_size"
    prefix: str = ""
    ceilings: Mapping[str, tuple[str, str]] | None = None
    logy: Sequence[str] = ()
    ncols: int = 3
    size: float = 2.5


def sweep_figure(summaries: Sequence[Mapping[str, object]], keys: Sequence[str],
                 labels: Sequence[str], *, options: SweepFigureOptions | None = None,
                 **flags: object) -> object:
    """One panel per key: the runs' value of ``prefix + key`` against ``x`` (log axis), one
    line per value of ``group`` (seeds as dots). ``ceilings[key] = (summary key, label)``
    draws that per-run ceiling (e.g. ``"gd_ceiling"``, 2/η) as dotted lines in the group's
    colour. :data:`FIG_WIDTH_IN` wide, ``size`` inches high per row. Options: ``options``
    (:class:`SweepFigureOptions`) or its fields as keywords. Returns the figure."""
    import matplotlib.pyplot as plt

    o = resolve(SweepFigureOptions, "sweep_figure", options, flags)
    x, group, prefix, ceilings, logy, ncols, size = (o.x, o.group, o.prefix, o.ceilings,
                                                     o.logy, o.ncols, o.size)
    n = len(keys)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, min(n, ncols), figsize=(FIG_WIDTH_IN, size * nrows),
                             squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    xs = np.array([float(s[x]) if s[x] != "full" else np.inf for s in summaries])
    gs = np.array([s[group] for s in summaries], dtype=object)
    groups = list(dict.fromkeys(gs.tolist()))
    colors = _cmap(len(groups))
    xlabel = {"lr": r"learning rate $\eta$", "batch_size": "batch size $B$"}.get(x, x)
    glabel = {"lr": r"$\eta$", "batch_size": "B"}.get(group, group)
    for ax, k, lab in zip(flat, keys, labels, strict=False):
        ys = np.array([float(s.get(prefix + k, np.nan)) for s in summaries])
        sweep_lines(ax, xs, ys, gs, group_label=glabel, xlabel=xlabel, ylabel=lab,
                    logy=k in logy)
        if ceilings and k in ceilings:
            ck, clab = ceilings[k]
            cs = np.array([float(s[ck]) for s in summaries])
            same = all(np.allclose(cs[xs == v], cs[xs == v][0]) for v in np.unique(xs))
            for j, (g, c) in enumerate(zip(groups, colors, strict=True)):
                m = (gs == g) & np.isfinite(cs)
                if m.any():
                    ceiling_curve(ax, xs[m], cs[m], clab if j == 0 else None,
                                  color="k" if same else c)
                if same:
                    break
        _lr_ticks(ax, xs[np.isfinite(xs)])
        plain_log_y(ax)
    flat[0].legend(frameon=False)
    for ax, k in zip(flat, keys, strict=False):
        if ceilings and k in ceilings:
            ax.legend(frameon=False)
    fig.tight_layout()
    return fig
