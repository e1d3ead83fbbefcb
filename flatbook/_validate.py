"""Parameter validation shared by the package: one-line ``ValueError`` naming the parameter
and what is allowed (the project's rule for bad input); :func:`check_parameters` does the same
for a chapter's papermill parameters."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Mapping, Sequence
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


# ------------------------------------------------------------------------------ chapters

_RULE = re.compile(
    r"^\s*(?P<list>list\[)?\s*(?P<kind>int|float|number|bool|str|seed)\s*"
    r"(?P<cons>(?:(?:>=|<=|>|<)\s*-?[\d.]+(?:e-?\d+)?\s*,?\s*)*)\]?\s*(?P<none>\|\s*None)?\s*$"
)
_CONS = re.compile(r"(>=|<=|>|<)\s*(-?[\d.]+(?:e-?\d+)?)")
_WORDS = {">=": "≥", "<=": "≤", ">": ">", "<": "<"}


def _describe(kind: str, cons: list[tuple[str, float]], is_list: bool, none: bool) -> str:
    base = {"int": "an integer", "float": "a number", "number": "a number", "bool": "True or False",
            "str": "a string", "seed": "a non-negative integer"}[kind]  # fmt: skip
    if cons:
        base += " " + " and ".join(f"{_WORDS[op]} {v:g}" for op, v in cons)
    if is_list:
        base = "a non-empty list of " + base.replace("an integer", "integers").replace(
            "a number", "numbers").replace("a non-negative integer", "non-negative integers")
    return base + (" or None" if none else "")


def _ok(v: Any, kind: str, cons: list[tuple[str, float]]) -> bool:
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "str":
        return isinstance(v, str)
    if isinstance(v, bool):
        return False
    if kind in ("int", "seed"):
        if not isinstance(v, int | np.integer):
            return False
        if kind == "seed" and v < 0:
            return False
    elif not isinstance(v, int | float | np.integer | np.floating) or not math.isfinite(v):
        return False
    ops = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
    return all(bool(ops[op](float(v), c)) for op, c in cons)


def check_parameters(values: Mapping[str, Any], **rules: str) -> None:
    """Validate a chapter's parameters (the papermill ``parameters`` cell) in its first code
    cell: ``check_parameters(globals(), n_networks="int >= 1", budgets="list[int >= 4]",
    lr="float > 0", seed="seed", data_dir="str | None")``.

    A rule is ``kind`` (``int``, ``float``/``number``, ``bool``, ``str``, ``seed`` = integer
    ≥ 0) with optional constraints ``>= v``, ``> v``, ``<= v``, ``< v`` (comma-separated),
    optionally wrapped in ``list[...]`` (a non-empty list of such values) and followed by
    ``| None``. A value that breaks its rule raises one ``ValueError`` naming the parameter,
    what is allowed and how to set it (``papermill … -p NAME VALUE``), instead of an error
    deep inside the chapter.

    Raises:
        ValueError: a parameter is missing from ``values`` or breaks its rule, or a rule is
            malformed.
    """
    for name, rule in rules.items():
        m = _RULE.match(rule)
        if m is None:
            raise ValueError(f"check_parameters: cannot parse the rule {rule!r} of {name}")
        kind, is_list, none = m["kind"], bool(m["list"]), bool(m["none"])
        cons = [(op, float(v)) for op, v in _CONS.findall(m["cons"] or "")]
        if name not in values:
            raise ValueError(f"parameter {name} is not defined (the chapter's parameters cell "
                             "must set it)")  # fmt: skip
        v = values[name]
        if none and v is None:
            continue
        if is_list:
            good = isinstance(v, list | tuple) and len(v) > 0 and all(
                _ok(x, kind, cons) for x in v)
        else:
            good = _ok(v, kind, cons)
        if not good:
            raise ValueError(
                f"parameter {name} must be {_describe(kind, cons, is_list, none)}; got {v!r} "
                f"(set it with papermill -p {name} VALUE)"
            )
