"""Labels of record keys and Markdown tables for the chapters."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np


# --------------------------------------------------------------------------- tables
def _fmt(v: object, digits: int = 3) -> str:
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, float | np.floating):
        if not math.isfinite(v):
            return "–" if math.isnan(v) else ("∞" if v > 0 else "−∞")
        if float(v).is_integer() and abs(v) < 1e7:
            return str(int(v))
        return f"{v:.{digits}g}"
    return str(v)


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None,
                   headers: Sequence[str] | None = None,
                   fmt: Callable[[object], str] = _fmt) -> str:
    """A Markdown (GitHub pipe) table of ``rows``; shown by ``IPython.display.Markdown``."""
    if not rows:
        return ""
    cols = list(columns or rows[0].keys())
    heads = list(headers or cols)
    if len(heads) != len(cols):
        raise ValueError(f"headers has {len(heads)} entries for {len(cols)} columns")
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)



LABELS: dict[str, str] = {
    "lambda_max": r"$\lambda_{\max}$", "trace_gn": r"$\mathrm{tr}\,H$",
    "kappa_sum": r"$\Sigma_l\,\kappa_l$", "log_lvr_median": r"$\log\mathrm{LVR}$",
    "mls_median": "MLS", "nmls": "NMLS", "nvr": "NVR", "ld_median": "LD",
    "gap_loss": "gen. gap", "pr_output": "PR (output)", "train_loss": "train loss",
    "test_acc": "test accuracy", "test_trace_hessian": r"test $\mathrm{tr}\,H$ (Hutch++)",
    "ld_mean": "LD", "log_lvr_mean": r"$\log\mathrm{LVR}$", "mls_mean": "MLS", "pr": "PR",
    "test_loss": "test loss",
}
"""Axis labels (LaTeX) for record keys."""


PLAIN: dict[str, str] = {
    "lambda_max": "λ_max", "trace_gn": "tr H", "kappa_sum": "Σκ_l", "log_lvr_median": "log LVR",
    "mls_median": "MLS", "nmls": "NMLS", "nvr": "NVR", "ld_median": "LD", "gap_loss": "gen. gap",
    "pr_output": "PR (output)", "train_loss": "train loss", "test_acc": "test accuracy",
    "test_trace_hessian": "test tr H (Hutch++)", "ld_mean": "LD", "log_lvr_mean": "log LVR",
    "mls_mean": "MLS", "pr": "PR", "test_loss": "test loss",
}
"""Plain-text (Unicode) labels, for glued text where LaTeX is not rendered."""


def label(key: str, tex: bool = True) -> str:
    """Label of a record key: LaTeX for figures and tables (``tex=True``), plain Unicode for
    glued text; the key itself if unknown. ``test_`` and ``rep_<i>_`` keys say so."""
    table = LABELS if tex else PLAIN
    if key in table:
        return table[key]
    parts = key.split("_")
    if key.startswith("rep_") and len(parts) >= 4 and parts[1].isdigit():
        rest = "_".join(parts[2:])
        return f"{table.get(rest, rest)} of {'$h$' if tex else 'h'} (item {parts[1]})"
    if key.startswith("test_") and key[5:] in table:
        return "test " + table[key[5:]]
    return key


