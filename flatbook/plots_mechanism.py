"""The mechanism panel of R5: one panel per term of the exact volume decomposition, runs as
points (:func:`flatbook.analysis.mechanism.decompose`)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from flatbook.analysis.mechanism import TERMS

__all__ = ["mechanism_figure"]

TITLES = {"total": "ΔA (volume)", "trace": "Δlog tr H", "weight": "Δlog ‖W₁‖₂²",
          "slack": "−Δlog T1 slack", "aggregation": "Δ aggregation", "spread": "Δ spread of ‖J‖²",
          "isotropy": "Δ isotropy",
          "bound": "Δlog T2 right side"}
"""Panel titles (plain text: matplotlib's mathtext is not needed for these)."""


def mechanism_figure(d: Mapping[str, np.ndarray], width: float = 7.0) -> object:
    """Panels (two rows of four, ``width`` inches wide): the total change of the volume,
    each term of :data:`flatbook.analysis.mechanism.TERMS` and the change of T2's right
    side, one point per decomposed run (jittered horizontally), its mean as a bar and 0 as a
    line; the rank-collapsed runs are counted in the suptitle. Returns the figure."""
    import matplotlib.pyplot as plt

    keys = ("total", *TERMS, "bound")
    ok = np.asarray(d["full_rank"], bool)
    ncol = 4                      # two rows of four: legible at the book's column width
    fig, axes = plt.subplots(2, ncol, figsize=(width, width * 0.62), sharey=True)
    flat = axes.ravel()
    rng = np.random.default_rng(0)
    for ax, k in zip(flat, keys, strict=False):
        v = np.asarray(d[k], float)[ok]
        ax.axhline(0, color="0.5", lw=0.8)
        ax.plot(rng.uniform(-0.25, 0.25, v.size), v, "o", ms=3, alpha=0.6,
                color="tab:red" if k in ("isotropy", "aggregation", "spread") else "tab:blue")
        if v.size:
            ax.hlines(float(np.mean(v)), -0.4, 0.4, color="k", lw=2)
        ax.set_title(TITLES[k], fontsize=9)
        ax.set_xticks([])
        ax.set_xlim(-0.5, 0.5)
    for ax in flat[len(keys):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("change (nats)")
    fig.suptitle(f"{int(ok.sum())} of {ok.size} runs full rank through the window "
                 f"(terms add up to ΔA)", fontsize=9)
    fig.tight_layout()
    return fig
