"""Validation of a chapter's papermill parameters (the ``parameters`` cell, checked in the
chapter's first code cell by :func:`check_parameters`, also :func:`flatbook.book.check_parameters`):
a small rule language (``"int >= 1"``, ``"list[float > 0]"``, ``"seed"``, ``"bool"``,
``"str | None"``), booleans parsed from papermill's strings, and misspelt injected names
refused. The package's other validators live in :mod:`flatbook._validate`."""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Mapping, MutableMapping
from typing import Any

import numpy as np

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


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def as_bool(v: Any) -> bool | None:
    """``v`` as a bool — True/False, 1/0, or a string papermill passes on ("true", "no",
    "off", "1", …, any case) — or None when it is none of these (never Python truthiness:
    ``-p compute_missing no`` is False)."""
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, int | np.integer) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE + _FALSE:
        return v.strip().lower() in _TRUE
    return None


def _ok(v: Any, kind: str, cons: list[tuple[str, float]]) -> bool:
    if kind == "bool":
        return as_bool(v) is not None
    if kind == "str":
        return isinstance(v, str)
    if isinstance(v, bool):
        return False
    if kind in ("int", "seed"):
        if not isinstance(v, int | np.integer):
            return False
        from flatbook._validate import SEED_MAX  # imported here: _validate imports this module

        if kind == "seed" and not 0 <= v <= SEED_MAX:
            return False
    elif not isinstance(v, int | float | np.integer | np.floating) or not math.isfinite(v):
        return False
    ops = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
    return all(bool(ops[op](float(v), c)) for op, c in cons)


def _assigned_names(source: Any) -> set[str] | None:
    """Names a cell assigns when it consists only of ``name = value`` statements (the form
    of a parameters cell and of papermill's injected-parameters cell); None otherwise."""
    if not isinstance(source, str):
        return None
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return None
    names: set[str] = set()
    for st in body:
        targets = st.targets if isinstance(st, ast.Assign) else (
            [st.target] if isinstance(st, ast.AnnAssign) else None)
        if not targets or not all(isinstance(t, ast.Name) for t in targets):
            return None
        names |= {t.id for t in targets}  # type: ignore[attr-defined]
    return names or None


def injected_parameters(history: Any) -> tuple[set[str], set[str]] | None:
    """``(declared, injected)`` parameter names from a kernel's input history (IPython's
    ``In``: ``In[0]`` empty, the running cell last). The chapter's parameters cell is an
    executed cell made only of assignments; papermill (and ``scripts/prepare_fast_book.py``)
    inject theirs as a cell of the same form executed right after it. None without a
    history (plain Python)."""
    if not isinstance(history, list) or len(history) < 2:
        return None
    declared: set[str] = set()
    injected: set[str] = set()
    after_params = False
    for source in history[1:-1]:
        names = _assigned_names(source)
        if names is not None and after_params:
            injected |= names
        elif names is not None:
            declared |= names
        after_params = names is not None
    return declared, injected


def check_parameters(values: Mapping[str, Any], **rules: str) -> None:
    """Validate a chapter's parameters (the papermill ``parameters`` cell) in its first code
    cell: ``check_parameters(globals(), n_networks="int >= 1", budgets="list[int >= 4]",
    lr="float > 0", seed="seed", data_dir="str | None", compute_missing="bool")``.

    A rule is ``kind`` (``int``, ``float``/``number``, ``bool``, ``str``, ``seed`` = integer
    in 0..2**63−1) with optional constraints ``>= v``, ``> v``, ``<= v``, ``< v``
    (comma-separated), optionally wrapped in ``list[...]`` (a non-empty list of such values)
    and followed by ``| None``. A value that breaks its rule raises one ``ValueError`` naming
    the parameter, what is allowed and how to set it (``papermill … -p NAME VALUE``), instead
    of an error deep inside the chapter. A ``bool`` is a real boolean: papermill's strings
    ("no", "false", "off", "0", "yes", …) and 0/1 are parsed and written back into ``values``
    (when it is mutable, e.g. ``globals()``), anything else is refused — never truthy.

    In a kernel (``values["In"]``, the input history), a parameter papermill injected that the
    chapter's parameters cell does not declare (a misspelt ``-p`` name) is refused too, naming
    it and the allowed names.

    Raises:
        ValueError: a parameter is missing from ``values``, breaks its rule, or was injected
            without being declared, or a rule is malformed.
    """
    found = injected_parameters(values.get("In"))
    if found is not None and found[1] - found[0]:
        declared, injected = found
        raise ValueError(
            f"unknown parameter(s) {sorted(injected - declared)} injected (papermill -p); "
            f"this chapter's parameters are {sorted(declared)} — check the spelling"
        )
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
        if kind == "bool" and isinstance(values, MutableMapping):
            values[name] = [as_bool(x) for x in v] if is_list else as_bool(v)
