"""Parameter validation shared by the package: one-line ``ValueError`` naming the parameter
and what is allowed (the project's rule for bad input)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def _fail(param: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{param} must be {allowed}; got {value!r}")


def check_positive_int(value: Any, param: str, allow_none: bool = False) -> int | None:
    """``value`` as a positive int (ValueError naming ``param`` otherwise)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        _fail(param, value, "a positive integer" + (" or None" if allow_none else ""))
    return int(value)


def check_positive_float(value: Any, param: str) -> float:
    """``value`` as a positive finite float (ValueError naming ``param`` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        _fail(param, value, "a positive finite number")
    if not (math.isfinite(float(value)) and value > 0):
        _fail(param, value, "a positive finite number")
    return float(value)


def check_choice(value: Any, param: str, allowed: Sequence[str]) -> str:
    """``value`` if it is one of ``allowed``; else a ValueError listing them."""
    if value not in allowed:
        raise ValueError(f"unknown {param} {value!r}; allowed: {list(allowed)}")
    return str(value)


def check_seed(value: Any, param: str = "seed") -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        _fail(param, value, "a non-negative integer")
    return int(value)
