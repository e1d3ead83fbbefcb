"""Figures shared by the book's chapters (matplotlib; each function draws on a given Axes).

Conventions: log axes for positive quantities spanning decades, the identity line dashed black,
symbols in axis labels as in the paper (λ_max, tr H, LVR, MLS, LD).

One style for the whole book: importing this module applies :data:`STYLE` (150 dpi, 10 pt
labels, 9 pt ticks and legends, no top/right spines) through :func:`use_style`; every chapter
imports it, and :mod:`flatbook.plots_experiments` imports it for the experiment chapters.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from numpy.typing import ArrayLike

#: The book's matplotlib style (rcParams). Figures are rendered at ``figure.dpi`` = 150 (the
#: inline backend prints PNGs at the figure's dpi); no text is smaller than 9 pt.
STYLE: dict[str, object] = {
    "figure.dpi": 150,
    "savefig.dpi": 150,
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.5,
    "lines.markersize": 5,
    "figure.autolayout": False,
}
MIN_FONT_PT = 9.0  #: smallest font size (pt) any figure text may use; see :func:`small_text`


def use_style() -> None:
    """Apply :data:`STYLE` to matplotlib's rcParams (idempotent)."""
    plt.rcParams.update(STYLE)


#: The book's content width in inches (~730 CSS px at 96 px/in): a wider figure is scaled down.
CONTENT_WIDTH_IN = 7.6


def small_text(fig: plt.Figure, min_pt: float = MIN_FONT_PT,
               content_width_in: float | None = None) -> list[str]:
    """Visible texts of ``fig`` (labels, ticks, legends, annotations) smaller than ``min_pt``.

    With ``content_width_in`` (e.g. :data:`CONTENT_WIDTH_IN`), sizes are as *rendered* in a
    column that wide: a figure wider than the column is scaled down by
    content_width_in / figure width, and so is its text. Returns ``"size pt: text"`` strings
    (the rendered size); empty when every text is legible. Used by the tests and by the
    chapters' guard cells to keep the one style.
    """
    fig.canvas.draw()
    scale = 1.0
    if content_width_in is not None:
        if content_width_in <= 0:
            raise ValueError(f"content_width_in must be > 0 inches; got {content_width_in!r}")
        scale = min(1.0, content_width_in / float(fig.get_size_inches()[0]))
    out = []
    for t in fig.findobj(lambda a: hasattr(a, "get_fontsize") and hasattr(a, "get_text")):
        size = t.get_fontsize() * scale
        if t.get_visible() and t.get_text().strip() and size < min_pt - 1e-9:
            out.append(f"{size:.3g} pt: {t.get_text()[:40]}")
    return out


use_style()


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


def waterfall(
    ax: Axes,
    start: float,
    steps: dict[str, float],
    start_label: str = "ceiling",
    end_label: str = "measured",
    ylabel: str = r"$\log_{10}$ value",
) -> Axes:
    """A slack budget as a descending staircase on a log scale.

    Starts at ``start`` (e.g. the stability ceiling 2k/(pη) turned into the bound's right-hand
    side), divides by each step's slack factor (``steps``: name → factor ≥ 1, in the order of
    the proof) and ends at the measured left-hand side ``start / Π factors``. Each bar spans
    one step's log10 factor, labelled with it.
    """
    names = list(steps)
    vals = np.log10(np.asarray([steps[n] for n in names], dtype=float))
    top = np.log10(float(start))
    levels = top - np.concatenate([[0.0], np.cumsum(vals)])
    x = np.arange(len(names) + 2)
    ax.bar(x[0], top, 0.6, color="0.55")
    for j, (name, h) in enumerate(zip(names, vals, strict=True)):
        ax.bar(x[j + 1], -h, 0.6, bottom=levels[j], color=f"C{j}", label=name)
        ax.text(x[j + 1], levels[j] + 0.02 * max(1.0, abs(top)), f"×{10 ** h:.3g}",
                ha="center", va="bottom", fontsize=MIN_FONT_PT)
    ax.bar(x[-1], levels[-1], 0.6, color="k")
    ax.set_xticks(x, [start_label, *names, end_label], rotation=30, ha="right")
    ax.axhline(0.0, color="k", lw=0.8)
    lo, hi = min(float(levels.min()), 0.0), max(top, 0.0)
    pad = 0.15 * max(hi - lo, 1e-9)
    ax.set_ylim(lo - 0.3 * pad, hi + pad)   # room for the factor labels above each bar
    ax.set_ylabel(ylabel)
    return ax


_LINE_IN = 0.2  #: line height of the roadmap's boxes, inches (10–11.5 pt text, mathtext)
_BOX_PT = MIN_FONT_PT + 1  #: roadmap text size: ≥ 9 pt even in a 650 px column


def _wrap(text: str, width: int) -> list[str]:
    """Wrap plain text; a mathtext string ($…$) is kept on one line."""
    if text.startswith("$") or not text:
        return [text] if text else []
    return textwrap.wrap(text, width)


def _box_height(lines: list[str]) -> float:
    """Height (inches) of a roadmap box: 1 line per text line, more for mathtext lines."""
    extra = sum(0.9 if ("\\sum" in t or "\\frac" in t) else 0.55
                for t in lines if t.startswith("$"))
    return (len(lines) + extra + 0.6) * _LINE_IN


def _box_lines(lk: object, slacks: dict[str, float] | None, chars: int) -> list[str]:
    """The text lines of one roadmap box: title and statement, hypothesis, whose, chapter."""
    chapter = lk.chapter.split("_")[0].replace("ch0", "ch. ")
    lines = [*_wrap(lk.title, chars), getattr(lk, "math", "") or lk.target]
    lines += _wrap(f"if: {lk.hypothesis}", chars) + _wrap(f"{lk.whose} · {chapter}", chars)
    if slacks is not None and lk.bound in slacks:
        lines.append(f"measured slack ×{slacks[lk.bound]:.3g}")
    return lines


def _draw_box(ax: Axes, x: float, y_top: float, w: float, lk: object, lines: list[str],
              dashed: bool) -> float:
    """Draw one box (key tag + lines) with its top-left corner at (x, y_top), in inches;
    returns its height."""
    from matplotlib.patches import FancyBboxPatch

    h = _box_height(lines)
    ax.add_patch(FancyBboxPatch((x, y_top - h), w, h, boxstyle="round,pad=0,rounding_size=0.06",
                                fc="white" if dashed else "0.95", ec="0.3",
                                ls="--" if dashed else "-", lw=1.0))
    ax.text(x + 0.08, y_top - 0.3 * _LINE_IN, lk.key, ha="left", va="top",
            fontsize=_BOX_PT + 1, fontweight="bold", color="C3" if dashed else "C0")
    y = y_top - 0.3 * _LINE_IN
    for line in lines:
        is_math, tall = line.startswith("$"), "\\sum" in line or "\\frac" in line
        ax.text(x + 0.52, y - (0.1 * _LINE_IN if is_math else 0.0), line, ha="left",
                va="top", fontsize=_BOX_PT + (1.5 if is_math or line is lines[0] else 0),
                fontweight="bold" if line is lines[0] else "normal")
        y -= (1.9 if tall else 1.55 if is_math else 1.0) * _LINE_IN
    return h


def roadmap(ax: Axes, links: Sequence[object], slacks: dict[str, float] | None = None,
            width: float = 7.5) -> Axes:
    """The derivation chain as boxes and arrows (one box per :class:`flatbook.chain.Link`).

    The main chain (links with a ``bound``: L1, T7, T1, T2, T3, T4, T5 in the order given) runs
    top to bottom in a left column; links without an inequality (T6, shared weights) are dashed
    side boxes in a right column, level with the main link they qualify (``branch_of``). Each
    box shows the key, the title, the step in mathtext (``link.math``), its hypothesis, whose
    result it is and the chapter; with ``slacks`` (``{link.bound: slack}``) also the measured
    slack. Resizes the figure to ``width`` inches (≤ 7.6 in: the book's content width, so that
    text is shown at ≥ 9 pt) and the height the boxes need, and fills it with ``ax``.
    """
    if not 3.0 <= width <= 7.6:
        raise ValueError(f"width must be in [3, 7.6] inches (the book's content width); "
                         f"got {width!r}")
    main = [lk for lk in links if getattr(lk, "bound", None) is not None]
    side = [lk for lk in links if getattr(lk, "bound", None) is None]
    w_side = 0.35 * width if side else 0.0
    w_main = width - w_side - (0.3 if side else 0.1)
    chars_main, chars_side = int((w_main - 0.6) * 13.5), int((w_side - 0.6) * 13.5)
    gap = 0.32                                   # vertical gap between main boxes (arrows)
    blocks = [_box_lines(lk, slacks, chars_main) for lk in main]
    heights = [_box_height(b) for b in blocks]
    total = sum(heights) + gap * (len(main) - 1) + 0.1
    fig = ax.figure
    fig.set_size_inches(width, total)
    ax.set_position([0, 0, 1, 1])
    ax.set_xlim(0, width)
    ax.set_ylim(0, total)
    ax.axis("off")
    y, tops, keys = total - 0.05, {}, [lk.key for lk in main]
    for lk, lines, h in zip(main, blocks, heights, strict=True):
        _draw_box(ax, 0.05, y, w_main, lk, lines, dashed=False)
        tops[lk.key] = (y, h)
        if lk is not main[-1]:
            ax.annotate("", xy=(0.3, y - h - gap + 0.02), xytext=(0.3, y - h - 0.02),
                        arrowprops={"arrowstyle": "-|>", "lw": 1.3, "color": "0.2"})
        y -= h + gap
    x_side = width - w_side - 0.05
    for lk in side:
        parent = getattr(lk, "branch_of", None)
        lines = _box_lines(lk, None, chars_side)
        y0, h0 = tops.get(parent, (total - 0.05, 0.0))
        _draw_box(ax, x_side, y0, w_side, lk, lines, dashed=True)
        if parent in keys:
            ax.annotate("", xy=(x_side - 0.02, y0 - 0.5 * _LINE_IN),
                        xytext=(0.05 + w_main + 0.02, y0 - 0.5 * _LINE_IN),
                        arrowprops={"arrowstyle": "-|>", "lw": 1.1, "ls": "--",
                                    "color": "C3"})
    return ax
