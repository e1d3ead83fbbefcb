"""Parameter validation shared by the package: one-line ``ValueError`` naming the parameter
and what is allowed (the project's rule for bad input). Three parts: generic checks of one
value (:func:`check_positive_int`, :func:`check_int`, :func:`check_positive_float`,
:func:`check_fraction`, :func:`check_choice`, :func:`check_seed`, :func:`check_classes`),
the data check before training (:func:`check_data` → :class:`BadDataError`), and the
validator of every parameter of a training run (the ``check`` of each entry of
``flatbook.runspec.PARAMS``). :func:`check_parameters` for a chapter's papermill parameters
lives in :mod:`flatbook._validate_chapters` and is importable from here."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

# A chapter's papermill parameters have their own rule language (flatbook._validate_chapters);
# these names stay importable from here.
from flatbook._validate_chapters import _assigned_names as _assigned_names
from flatbook._validate_chapters import as_bool as as_bool
from flatbook._validate_chapters import check_parameters as check_parameters
from flatbook._validate_chapters import injected_parameters as injected_parameters


def _fail(param: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{param} must be {allowed}; got {value!r}")


def _is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (Python or numpy), never a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_positive_int(value: Any, param: str, allow_none: bool = False) -> int | None:
    """``value`` as a positive int (ValueError naming ``param`` otherwise)."""
    if value is None and allow_none:
        return None
    if not _is_int(value) or value < 1:
        _fail(param, value, "a positive integer" + (" or None" if allow_none else ""))
    return int(value)


def check_int(value: Any, param: str, low: int = 1) -> int:
    """``value`` as an int ≥ ``low`` (ValueError naming ``param`` otherwise)."""
    if not _is_int(value) or value < low:
        _fail(param, value, f"an integer ≥ {low}")
    return int(value)


def check_positive_float(value: Any, param: str) -> float:
    """``value`` as a positive finite float (ValueError naming ``param`` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        _fail(param, value, "a positive finite number")
    if not (math.isfinite(float(value)) and value > 0):
        _fail(param, value, "a positive finite number")
    return float(value)


def check_fraction(value: Any, param: str, meaning: str = "") -> float:
    """``value`` as a float in the open interval (0, 1) (ValueError naming ``param`` and, when
    given, what the number ``meaning`` is, e.g. " (a relative tolerance)")."""
    x = _number(value, param, f"a number in (0, 1){meaning}")
    if not 0.0 < x < 1.0:
        _fail(param, value, f"a number in (0, 1){meaning}")
    return x


def check_choice(value: Any, param: str, allowed: Sequence[str]) -> str:
    """``value`` if it is one of ``allowed``; else a ValueError listing them."""
    if value not in allowed:
        raise ValueError(f"unknown {param} {value!r}; allowed: {list(allowed)}")
    return str(value)


def check_seed(value: Any, param: str = "seed") -> int:
    """``value`` as a seed: an integer in 0..2**63−1 (ValueError naming ``param``)."""
    if not _is_int(value) or value < 0 or value > SEED_MAX:
        _fail(param, value, "an integer in 0..2**63-1")
    return int(value)


def check_classes(value: Any, param: str = "classes", n_all: int | None = None
                  ) -> tuple[int, ...] | int | None:
    """A class selection: None (all labels), a count c (labels 0..c−1, 2 ≤ c ≤ ``n_all``) or
    ≥ 2 distinct integer labels (each in 0..``n_all``−1), returned as None, an int or a tuple
    of ints. Without ``n_all`` (a run's configuration, before its data set is read) labels are
    only checked to be ≥ 0. ValueError naming ``param`` and the allowed labels otherwise."""
    labels = f"labels in 0..{n_all - 1}" if n_all is not None else "labels ≥ 0"
    if value is None:
        return None
    if _is_int(value):
        if value < 2 or (n_all is not None and value > n_all):
            most = f" and ≤ {n_all} (labels 0..{n_all - 1})" if n_all is not None else ""
            raise ValueError(f"{param}={value} must be a count ≥ 2{most}")
        return int(value)
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        _fail(param, value, f"None, a count, or a list of {labels}")
    out = tuple(value)
    if not all(map(_is_int, out)):
        _fail(param, value, f"integer {labels}")
    out = tuple(int(c) for c in out)
    if len(out) < 2:
        raise ValueError(f"{param} must name ≥ 2 labels; got {list(out)}")
    if len(set(out)) != len(out):
        raise ValueError(f"{param} has duplicates: {list(out)} (labels must be distinct)")
    bad = [c for c in out if c < 0 or (n_all is not None and c >= n_all)]
    if bad:
        raise ValueError(f"{param} {bad} out of range; allowed: {labels}")
    return out


# ------------------------------------------------------------------------------ data


class BadDataError(ValueError):
    """The training / test data cannot be trained on (NaN/inf, wrong dtype or shape); raised
    before any training or measurement, naming the tensor."""


def check_data(X: Any, Y: Any, which: str = "train", loss: str = "squared",
               model: Any = None) -> None:
    """Bad data named as bad data, before any step: X [n, ...] floating (the model's dtype),
    Y [n, k] floating (squared loss) or [n] integer labels / [n, k] (cross-entropy), both
    finite, equal n ≥ 1, and X fits the model (one forward pass on one sample).

    Raises:
        TypeError: X or Y is not a torch tensor.
        BadDataError: "bad data: …" naming the tensor (``X_{which}`` / ``Y_{which}``) and the
            way out.
    """
    _check_shapes(X, Y, which, loss)
    for name, T in ((f"X_{which}", X), (f"Y_{which}", Y)):
        _check_finite_rows(T, name)
    if model is not None:
        _check_fits_model(X, Y, which, model)


def _check_shapes(X: Any, Y: Any, which: str, loss: str) -> None:
    """X, Y torch tensors: X [n, ...] floating with n ≥ 1, Y [n, k] floating for the squared
    loss, else [n] integer labels or [n, k]."""
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


def _check_finite_rows(T: Any, name: str) -> None:
    """A floating tensor T [n, ...] has only finite entries; else BadDataError naming ``name``,
    how many samples hold NaN/inf and the first of them."""
    import torch

    if not T.is_floating_point():
        return
    bad = ~torch.isfinite(T.reshape(T.shape[0], -1)).all(1)
    if bool(bad.any()):
        idx = bad.nonzero()[:, 0].tolist()
        raise BadDataError(
            f"bad data: {name} has non-finite values (NaN or inf) in {len(idx)} of "
            f"{T.shape[0]} samples (first: sample {idx[0]}); clean or drop them before "
            "training — this is the data, not a diverging run"
        )


def _check_fits_model(X: Any, Y: Any, which: str, model: Any) -> None:
    """X has the dtype of the model's parameters, one sample X[:1] passes the model in eval
    mode (its training flags restored), and a 2-d Y has as many columns as the model has
    outputs."""
    import torch

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
    return check_fraction(v, name, " (a relative tolerance)")


def _number(v: Any, name: str, allowed: str) -> float:
    """``v`` as a finite float (ints and numpy numbers too, never a bool); else ValueError
    "``name`` must be ``allowed``"."""
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
        return _is_int(x) and x >= 1

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
    """Validator: None (all labels), a count c ≥ 2 (labels 0..c−1) or ≥ 2 distinct labels
    (:func:`check_classes`; the data set's range is checked when it is loaded)."""
    return check_classes(v, name)


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
