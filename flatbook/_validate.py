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


# ------------------------------------------------------------------------------ data


class BadDataError(ValueError):
    """The training / test data cannot be trained on (NaN/inf, wrong dtype or shape); raised
    before any training or measurement, naming the tensor."""


def check_data(X: Any, Y: Any, which: str = "train", loss: str = "squared",
               model: Any = None) -> None:
    """Bad data named as bad data, before any step: X [n, ...] floating (the model's dtype),
    Y [n, k] floating (squared loss) or [n] integer labels / [n, k] (cross-entropy), both
    finite, equal n ≥ 1, and X fits the model (one forward pass on one sample)."""
    import torch

    if not isinstance(X, torch.Tensor) or not isinstance(Y, torch.Tensor):
        raise TypeError(
            f"bad data: X_{which} and Y_{which} must be torch tensors; got "
            f"{type(X).__name__} and {type(Y).__name__}"
        )
    if X.ndim < 2 or X.shape[0] == 0:
        raise BadDataError(
            f"bad data: X_{which} must have shape [n, ...] with n ≥ 1 samples; got {tuple(X.shape)}"
        )
    if Y.ndim not in (1, 2) or X.shape[0] != Y.shape[0]:
        raise BadDataError(
            f"bad data: X_{which} ({X.shape[0]} samples) and Y_{which} (shape {tuple(Y.shape)}) "
            "must have the same number of samples, Y of shape [n, k] or [n]"
        )
    if not X.is_floating_point():
        raise BadDataError(
            f"bad data: X_{which} has dtype {X.dtype}; inputs must be floating point "
            "(convert with X.float() or X.double())"
        )
    if loss == "squared" and (Y.ndim != 2 or not Y.is_floating_point()):
        raise BadDataError(
            f"bad data: loss='squared' needs floating one-hot targets Y_{which} of shape [n, k]; "
            f"got {tuple(Y.shape)} {Y.dtype}"
        )
    if Y.ndim == 1 and Y.is_floating_point():
        raise BadDataError(
            f"bad data: 1-d targets Y_{which} must be integer class labels; got {Y.dtype}"
        )
    for name, T in ((f"X_{which}", X), (f"Y_{which}", Y)):
        if T.is_floating_point():
            bad = ~torch.isfinite(T.reshape(T.shape[0], -1)).all(1)
            if bool(bad.any()):
                idx = bad.nonzero()[:, 0].tolist()
                raise BadDataError(
                    f"bad data: {name} has non-finite values (NaN or inf) in {len(idx)} of "
                    f"{T.shape[0]} samples (first: sample {idx[0]}); clean or drop them before "
                    "training — this is the data, not a diverging run"
                )
    if model is None:
        return
    p = next(iter(model.parameters()), None)
    if p is not None and p.is_floating_point() and X.dtype != p.dtype:
        raise BadDataError(
            f"bad data: X_{which} is {X.dtype} but the model's parameters are {p.dtype}; "
            f"convert one of them (e.g. X.to({p.dtype}))"
        )
    try:
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model(X[:1])
        finally:
            model.train(was)
    except (RuntimeError, ValueError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadDataError(
            f"bad data: samples of X_{which} (shape {tuple(X.shape[1:])}) do not fit the model "
            f"({first})"
        ) from None
    k = out.shape[-1] if out.ndim >= 1 else 1
    if Y.ndim == 2 and Y.shape[1] != k:
        raise BadDataError(
            f"bad data: Y_{which} has {Y.shape[1]} columns but the model has {k} outputs"
        )


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
