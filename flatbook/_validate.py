"""Parameter validation shared by the package: one-line ``ValueError`` naming the parameter
and what is allowed (the project's rule for bad input). Three parts: generic checks
(:func:`check_positive_int`, …), the validator of every parameter of a training run (the
``check`` of each entry of ``flatbook.runspec.PARAMS``), and :func:`check_parameters` for a
chapter's papermill parameters."""

from __future__ import annotations

import ast
import math
import operator
import os
import re
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
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
    """``value`` as a seed: an integer in 0..2**63−1 (ValueError naming ``param``)."""
    if (isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0
            or value > SEED_MAX):  # fmt: skip
        _fail(param, value, "an integer in 0..2**63-1")
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


# ------------------------------------------------------------------------------ run parameters
# One validator per parameter of a training run (``flatbook.runspec.PARAMS`` names them):
# ``check(value, name, values) -> value``, normalised (canonical names, plain ints/floats);
# ``values`` holds the parameters declared before it (already validated) and the raw rest.

Check = Callable[[Any, str, Mapping[str, Any]], Any]

SEED_MAX = 2**63 - 1
"""Largest seed: torch generators take unsigned 64-bit seeds; label noise mixes seed and step
below 2**63."""

LR_MIN = 1e-8
"""Smallest learning rate accepted: below it an update η∇L is lost to rounding in float32
weights (relative precision 6e-8), so a run would report "completed" without learning."""


def choice(allowed: Sequence[str]) -> Check:
    """Validator: one of ``allowed``."""
    return lambda v, name, values: check_choice(v, name, allowed)


def positive_int(none: bool = False) -> Check:
    """Validator: an integer ≥ 1 (or None when ``none``)."""
    return lambda v, name, values: check_positive_int(v, name, allow_none=none)


def positive_float(v: Any, name: str, values: Mapping[str, Any]) -> float:
    """Validator: a finite number > 0."""
    return check_positive_float(v, name)


def seed(v: Any, name: str, values: Mapping[str, Any]) -> int:
    """Validator: an integer in 0..2**63−1."""
    return check_seed(v, name)


def boolean(v: Any, name: str, values: Mapping[str, Any]) -> bool:
    """Validator: True or False (no truthy stand-ins such as 1 or "no")."""
    if not isinstance(v, bool | np.bool_):
        _fail(name, v, "True or False")
    return bool(v)


def fraction(v: Any, name: str, values: Mapping[str, Any]) -> float:
    """Validator: a number in the open interval (0, 1) (a relative tolerance)."""
    x = _number(v, name, "a number in (0, 1)")
    if not 0.0 < x < 1.0:
        _fail(name, v, "a number in (0, 1) (a relative tolerance)")
    return x


def _number(v: Any, name: str, allowed: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
        _fail(name, v, allowed)
    if not math.isfinite(float(v)):
        _fail(name, v, allowed)
    return float(v)


def model_name(v: Any, name: str, values: Mapping[str, Any]) -> str:
    """Validator: a model of ``flatbook.models.MODELS`` (aliases resolved)."""
    from flatbook import models

    return models.canonical_name(v)


def dataset_name(v: Any, name: str, values: Mapping[str, Any]) -> str:
    """Validator: a data set of ``flatbook.data.DATASETS`` (aliases resolved)."""
    from flatbook import data

    return data.canonical_name(v)


def dtype_name(v: Any, name: str, values: Mapping[str, Any]) -> str:
    """Validator: ``"float32"`` or ``"float64"`` (or the torch dtype), as its name."""
    from flatbook import data

    return str(data.as_dtype(v, name)).replace("torch.", "")


MODEL_OPTION_KINDS: dict[str, str] = {
    "hidden": "widths", "patch": "int", "dim": "int", "depth": "int", "heads": "int",
    "width": "number", "mlp_ratio": "number", "bias": "bool", "batch_norm": "bool",
    "activation": "str", "pool": "str",
}  # fmt: skip
"""Kind of each model option of ``flatbook.models.MODEL_OPTIONS``."""


def model_options(v: Any, name: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Validator: options of ``values["model"]`` (``flatbook.models.MODEL_OPTIONS``), each of
    its kind (:data:`MODEL_OPTION_KINDS`), as a dict sorted by key with lists for tuples."""
    from flatbook import models

    if not isinstance(v, Mapping):
        _fail(name, v, "a mapping of model options")
    allowed = list(models.MODEL_OPTIONS[values["model"]])
    unknown = sorted(set(v) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {name} {unknown} for model {values['model']!r}; allowed: "
                         f"{allowed}")  # fmt: skip
    out = {str(k): _plain(x) for k, x in sorted(v.items())}
    for k, x in out.items():
        _model_option(k, x, f"{name} {k}")
    return out


def _plain(v: Any) -> Any:
    return [_plain(x) for x in v] if isinstance(v, tuple | list) else v


def _model_option(key: str, v: Any, param: str) -> None:
    kind = MODEL_OPTION_KINDS.get(key)

    def is_int(x: Any) -> bool:
        return isinstance(x, int | np.integer) and not isinstance(x, bool) and x >= 1

    if kind == "widths" and not (is_int(v) or isinstance(v, list) and all(map(is_int, v))):
        _fail(param, v, f"a list of positive integers (e.g. {key}=[64,64])")
    if kind == "int" and not is_int(v):
        _fail(param, v, "a positive integer")
    if kind == "number" and (isinstance(v, bool) or not isinstance(v, int | float)
                             or not math.isfinite(v) or v <= 0):  # fmt: skip
        _fail(param, v, "a positive number")
    if kind == "bool" and not isinstance(v, bool):
        _fail(param, v, "true or false")
    if kind == "str" and not isinstance(v, str):
        _fail(param, v, "a name (string)")


def classes(v: Any, name: str, values: Mapping[str, Any]) -> tuple[int, ...] | int | None:
    """Validator: None (all labels), a count c ≥ 2 (labels 0..c−1) or ≥ 2 distinct labels."""
    if v is None:
        return None
    if isinstance(v, int | np.integer):
        if isinstance(v, bool) or v < 2:
            _fail(name, v, "a count ≥ 2")
        return int(v)
    if isinstance(v, str) or not isinstance(v, Iterable):
        _fail(name, v, "None, a count ≥ 2, or a list of ≥ 2 distinct labels")
    c = tuple(v)
    if not all(isinstance(x, int | np.integer) and not isinstance(x, bool) for x in c):
        _fail(name, v, "integer labels")
    c = tuple(int(x) for x in c)
    if len(c) < 2 or len(set(c)) != len(c) or min(c) < 0:
        _fail(name, v, "≥ 2 distinct non-negative labels")
    return c


def learning_rate(v: Any, name: str, values: Mapping[str, Any]) -> float:
    """Validator: η, a finite number ≥ :data:`LR_MIN` (large η is allowed: a diverging run is
    recorded as diverged)."""
    x = check_positive_float(v, name)
    if x < LR_MIN:
        raise ValueError(
            f"{name}={x:g} is below {LR_MIN:g}: the update η∇L would be lost to rounding in the "
            f"weights and the run would 'complete' without learning; use {name} ≥ {LR_MIN:g}")
    return x


def momentum(v: Any, name: str, values: Mapping[str, Any]) -> float:
    """Validator: SGD momentum in [0, 1) (its ``needs`` keeps it to ``optimizer="sgd"``)."""
    x = _number(v, name, "a number in [0, 1)")
    if not 0.0 <= x < 1.0:
        _fail(name, v, "in [0, 1)")
    return x


def non_negative(v: Any, name: str, values: Mapping[str, Any]) -> float:
    """Validator: a finite number ≥ 0."""
    x = _number(v, name, "a finite number ≥ 0")
    if x < 0:
        _fail(name, v, "a finite number ≥ 0")
    return x


def nesterov(v: Any, name: str, values: Mapping[str, Any]) -> bool:
    """Validator: a bool; True needs SGD with momentum > 0."""
    v = boolean(v, name, values)
    if v and (values.get("optimizer") != "sgd" or not values.get("momentum")):
        raise ValueError(f"{name}=True needs optimizer='sgd' and momentum > 0")
    return v


def batch_size(v: Any, name: str, values: Mapping[str, Any]) -> int | str:
    """Validator: B ≥ 1 (≤ n_train when that is given) or ``"full"`` (gradient descent)."""
    if v == "full":
        return "full"
    if isinstance(v, str):
        _fail(name, v, "a positive integer or 'full'")
    b = check_positive_int(v, name)
    n = values.get("n_train")
    if isinstance(n, int) and b > n:  # type: ignore[operator]
        raise ValueError(f"{name}={b} is larger than the training set (n_train={n}); use ≤ {n} "
                         "or 'full'")  # fmt: skip
    return b  # type: ignore[return-value]


def steps(v: Any, name: str, values: Mapping[str, Any]) -> int | None:
    """Validator: a whole number of optimizer steps ≥ 1; None only when ``epochs`` is given
    (not both)."""
    epochs = values.get("epochs")
    if v is None and epochs is not None:
        return None
    if epochs is not None:
        raise ValueError(f"give steps or epochs, not both (steps={v}, epochs={epochs})")
    return check_positive_int(v, name)


def epochs(v: Any, name: str, values: Mapping[str, Any]) -> float | None:
    """Validator: None or a whole number of passes ≥ 1 (steps = epochs·⌊n/B⌋, never a
    rounded fraction of an epoch)."""
    if v is None:
        return None
    x = _number(v, name, "a whole number ≥ 1 (passes over the training set)")
    if x < 1 or x != int(x):
        _fail(name, v, "a whole number ≥ 1 (passes over the training set; or give steps)")
    return x


def label_noise(v: Any, name: str, values: Mapping[str, Any]) -> float:
    """Validator: σ ≥ 0 of label-noise SGD, finite; σ > 0 only with the squared loss."""
    x = _number(v, name, "a finite number ≥ 0 (σ of the target noise)")
    if x < 0:
        _fail(name, v, "a finite number ≥ 0 (σ of the target noise)")
    loss = values.get("loss")
    if x > 0 and loss != "squared":
        raise ValueError(f"{name}={x:g} needs loss='squared' (noise is added to the targets); "
                         f"got loss={loss!r}")  # fmt: skip
    return x


def measure_every(v: Any, name: str, values: Mapping[str, Any]) -> int:
    """Validator: K ≥ 1 steps between records, K ≤ steps when steps are given."""
    k = check_positive_int(v, name)
    s = values.get("steps")
    if isinstance(s, int) and k > s:  # type: ignore[operator]
        raise ValueError(f"{name}={k} exceeds steps={s}; use 1..{s}")
    return k  # type: ignore[return-value]


def measures(allowed: Sequence[str]) -> Check:
    """Validator: a list (tuple) of names drawn from ``allowed`` (may be empty)."""

    def check(v: Any, name: str, values: Mapping[str, Any]) -> tuple[str, ...]:
        if isinstance(v, str) or not isinstance(v, Iterable):
            _fail(name, v, f"a list drawn from {list(allowed)}")
        out = tuple(v)
        for m in out:
            check_choice(m, "measure", allowed)
        return out

    return check


def eval_size(v: Any, name: str, values: Mapping[str, Any]) -> int:
    """Validator: the evaluation subset's size, 1 ≤ size ≤ n_train when that is given."""
    k = check_positive_int(v, name)
    n = values.get("n_train")
    if isinstance(n, int) and k > n:  # type: ignore[operator]
        raise ValueError(f"{name}={k} exceeds the training set (n_train={n}); use {name} ≤ {n}")
    return k  # type: ignore[return-value]


def optional_path(v: Any, name: str, values: Mapping[str, Any]) -> str | None:
    """Validator: None or a folder name (str or path-like), as a string."""
    if v is None:
        return None
    if not isinstance(v, str | os.PathLike) or not str(v):
        _fail(name, v, "a folder (string) or None")
    return str(v)


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
