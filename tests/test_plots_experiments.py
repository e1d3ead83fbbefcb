"""Figures of the experiment chapters are legible at the book's column width.

Every figure function of :mod:`flatbook.plots_experiments` is drawn on synthetic data and must
(i) fit the content width (nothing scaled down) and (ii) have no text under 9 pt as rendered
there (:func:`flatbook.plots.small_text`).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from flatbook import plots_experiments as PE  # noqa: E402
from flatbook.plots import CONTENT_WIDTH_IN, small_text  # noqa: E402


def _traj(n: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    """A synthetic run: every key the late-phase figure reads, decaying or noisy series."""
    rng = np.random.default_rng(seed)
    step = np.arange(n, dtype=float) * 50
    decay = np.exp(-step / 200)
    t = {"step": step, "train_loss": 0.5 * decay + 1e-3, "train_acc": 1 - 0.5 * decay,
         "test_acc": 0.95 - 0.5 * decay, "lambda_max": 6 + rng.normal(0, 0.1, n),
         "trace_gn": 130 + rng.normal(0, 2, n), "log_lvr_median": -22 - 0.1 * step / 50,
         "mls_median": 0.4 + rng.normal(0, 0.01, n), "ld_median": 3 + decay,
         "pr_output": 8 + rng.normal(0, 0.2, n)}
    for i in (1, 2):
        t[f"hidden{i}_ld_mean"] = 10 * i + decay
        t[f"hidden{i}_pr"] = 8 + i + rng.normal(0, 0.2, n)
    for key in ("t2_gm", "t3_weighted", "t4_nmls"):
        t[f"{key}_rhs"] = 100 + decay
        t[f"{key}_lhs"] = 10 + decay
    return t


def _legible(fig: plt.Figure) -> None:
    width = float(fig.get_size_inches()[0])
    assert width <= CONTENT_WIDTH_IN, f"figure {width} in wide is scaled down in the book"
    assert small_text(fig, content_width_in=CONTENT_WIDTH_IN) == []
    plt.close(fig)


def test_late_phase_figure_is_legible() -> None:
    t = _traj()
    fig = PE.late_phase_figure(t, 200.0, gd_ceiling=8.0, sgd_ceiling=900.0,
                               loss_threshold=0.05, hidden_ld_keys=["hidden1_ld_mean",
                                                                    "hidden2_ld_mean"],
                               hidden_pr_keys=["hidden1_pr", "hidden2_pr"])
    assert len([a for a in fig.axes if a.get_visible()]) == 9
    _legible(fig)


def test_late_comparison_figure_is_legible_in_a_grid() -> None:
    groups = {"plain SGD": [_traj(seed=s) for s in range(3)],
              r"label noise $\sigma$ = 0.5": [_traj(seed=10 + s) for s in range(3)]}
    fig = PE.late_comparison_figure(groups, ["trace_gn", "lambda_max", "log_lvr_median",
                                             "ld_median"],
                                    ["tr $H$", r"$\lambda_{\max}$", "log LVR", "LD"],
                                    [True, True, False, False])
    rows = {round(a.get_position().y0, 3) for a in fig.axes if a.get_visible()}
    assert len(rows) == 2      # four panels in a 2 × 2 grid, not one row
    _legible(fig)


def test_sweep_figure_is_legible() -> None:
    summaries = [{"lr": lr, "batch_size": b, "lambda_max": 2 / lr * 0.9 + s,
                  "trace_gn": 100 * b / 16, "mls_median": 0.4, "gd_ceiling": 2 / lr}
                 for lr in (0.1, 0.25, 0.5) for b in (16, 64) for s in (0.0, 0.1)]
    fig = PE.sweep_figure(summaries, ["lambda_max", "trace_gn", "mls_median", "lambda_max"],
                          ["a", "b", "c", "d"], ceilings={"lambda_max": ("gd_ceiling", "2/η")},
                          logy=["lambda_max", "trace_gn"])
    _legible(fig)


def test_heatmap_and_forest_text_is_legible() -> None:
    fig, (a, b) = plt.subplots(2, 1, figsize=(PE.FIG_WIDTH_IN, 5))
    m = np.array([[0.5, -0.2, np.nan], [1.0, 0.0, -0.7]])
    PE.heatmap(a, m, ["x1", "x2"], ["y1", "y2", "y3"], marks=m > 0.4, title="t")
    texts = [t.get_text() for t in a.texts]
    assert "+0.50*" in texts and "–" in texts and "+0.00" in texts
    PE.forest(b, [{"x": "a", "y": "b", "estimate": 0.2, "lo": -0.1, "hi": 0.5}])
    _legible(fig)


def test_claims_forest_and_verdict_bar_are_legible() -> None:
    parts = [{"name": "trend", "essential": True, "effect": -0.2, "lo": -0.3, "hi": -0.1,
              "mde": 0.1, "expected": -1, "verdict": "reproduced"},
             {"name": "coupling", "essential": False, "effect": 0.1, "lo": -0.2, "hi": 0.4,
              "mde": 0.3, "expected": 1, "verdict": "inconclusive"}]
    claims = [{"key": "late_fall", "version": "v1", "parts": parts, "verdict": "reproduced"}]
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(PE.FIG_WIDTH_IN, 3))
    PE.claims_forest(ax, claims)
    PE.verdict_bar(bx, ["late_fall (v1)"], ["reproduced"])
    # the claimed direction points right: both parts' points lie at +effect/MDE · sign
    xs = sorted(float(ln.get_xdata()[0]) for ln in ax.get_lines() if ln.get_marker() == "o")
    assert xs == pytest.approx([1 / 3, 2.0])
    _legible(fig)


def test_plain_log_y_only_on_narrow_log_axes() -> None:
    fig, (a, b) = plt.subplots(1, 2)
    a.plot([1, 2], [120, 135])
    a.set_yscale("log")
    b.plot([1, 2], [1, 1000])
    b.set_yscale("log")
    PE.plain_log_y(a)
    PE.plain_log_y(b)
    fig.canvas.draw()
    labels = [t.get_text() for t in a.get_yticklabels() if t.get_text()]
    assert labels and all("times" not in s and "^" not in s for s in labels)
    assert any("10^" in t.get_text() for t in b.get_yticklabels())   # a wide axis keeps 10^k
    plt.close(fig)
