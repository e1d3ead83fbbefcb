"""flatbook.plots.roadmap and small_text: the chain figure is legible at the book's width."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from flatbook import chain, plots  # noqa: E402


def test_roadmap_fits_the_content_width_with_9pt_text() -> None:
    fig, ax = plt.subplots(figsize=(13, 4))
    plots.roadmap(ax, chain.LINKS, slacks={"t7_sgd": 3.0})
    w, _ = fig.get_size_inches()
    assert w <= plots.CONTENT_WIDTH_IN
    assert plots.small_text(fig, content_width_in=plots.CONTENT_WIDTH_IN) == []
    texts = [t.get_text() for t in ax.texts]
    assert all(lk.math in texts for lk in chain.LINKS)          # real maths in every box
    assert not any("_F" in t and not t.startswith("$") for t in texts)  # no pseudo-TeX
    plt.close(fig)


def test_small_text_scales_wide_figures_down() -> None:
    fig, ax = plt.subplots(figsize=(15.2, 3))
    ax.set_xlabel("label", fontsize=12)                      # 12 pt shown at 6 pt
    assert plots.small_text(fig) == []
    assert plots.small_text(fig, content_width_in=7.6), "a 2x wide figure halves its text"
    with pytest.raises(ValueError, match="content_width_in"):
        plots.small_text(fig, content_width_in=0)
    with pytest.raises(ValueError, match="width"):
        plots.roadmap(ax, chain.LINKS, width=13.0)
    plt.close(fig)
