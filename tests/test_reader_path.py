"""The reader's path: the printed report fits a page, printed code wraps instead of being cut,
and the one-command render of a re-run chapter finds the chapter, the pages it links to and
its glued numbers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import flatbook

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import render_chapter  # noqa: E402


def test_the_printed_report_fits_80_columns() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(256, 16), nn.ReLU(), nn.Linear(16, 3)).double()
    X, Y = torch.randn(12, 64, dtype=torch.float64), torch.randn(12, 3, dtype=torch.float64)
    text = str(flatbook.report(net, X, Y, lr=0.1))
    lines = text.splitlines()
    assert max(map(len, lines)) <= 80, max(lines, key=len)
    assert any(line.startswith("Note: ") for line in lines)  # long notes wrapped, not cut
    assert "t5_lvr_l1" in text and "Petzka" in text  # the bound table keeps its source column


def test_print_css_wraps_code_and_reaches_every_build() -> None:
    css = (ROOT / "_static" / "flatbook.css").read_text()
    rule = css[css.index("@media print"):]
    assert "pre-wrap" in rule and "pre" in rule and "overflow-wrap: anywhere" in rule
    assert '"_static"' in (ROOT / "scripts" / "prepare_fast_book.py").read_text()


def test_render_chapter_finds_the_chapter_its_pages_and_its_numbers(tmp_path: Path) -> None:
    src = render_chapter.chapter_source("own_model")
    assert src == ROOT / "book" / "own_model.md"
    assert render_chapter.chapter_source("book/own_model.md") == src
    with pytest.raises(SystemExit, match="not a notebook chapter.*ch01_hessian"):
        render_chapter.chapter_source("no_such_chapter")
    assert render_chapter.linked_pages(src) == ["book/notation", "book/bibliography"]
    nb = {"cells": [{"cell_type": "code", "outputs": [
        {"output_type": "display_data", "metadata": {"scrapbook": {
            "name": "x_lam", "mime_prefix": "application/papermill.record/"}},
         "data": {"application/papermill.record/text/plain": "'25.8'"}},
        {"output_type": "stream", "text": "not glued"}]}]}  # fmt: skip
    (tmp_path / "nb.ipynb").write_text(json.dumps(nb))
    assert render_chapter.glued(tmp_path / "nb.ipynb") == {"x_lam": "'25.8'"}
