"""The run specification: one declaration of every parameter of a training run.

Each :class:`Param` of :data:`PARAMS` states once a parameter's name, type, default (a value
or a :class:`Derived` default computed from the parameters before it), meaning, validator
(from :mod:`flatbook._validate`), command-line flag and whether it feeds
:func:`flatbook.train.train`. Everything else is generated from the table:

- the fields of :class:`flatbook.experiment.RunConfig`, their validation and normalisation
  (:func:`spec_class`, :func:`resolve`) and :meth:`RunConfig.replace` (:func:`replaced`);
- :class:`TrainOptions`, the options record of :func:`flatbook.train.train` (the same
  validators, with the training function's own defaults) and the call into training
  (:func:`train_options`);
- the flags of ``python -m flatbook run|sweep`` with help text stating each default
  (:func:`add_arguments`, :func:`given`, :func:`merge`, :func:`check_flags`).

Adding a hyperparameter is adding one :class:`Param` (and using it in the training loop).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flatbook import _validate as V
from flatbook import data, losses, models

LOSS_NAMES = tuple(losses.LOSSES)
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("linear", "late", "log")
MEASURES = ("sharpness", "trace", "report")
DEVICES = ("cpu", "cuda", "auto")
STANDARDIZE = data.STANDARDIZE
DEFAULT_STEPS = 30_000
GROUPS = ("model and data", "optimisation", "measurements", "execution")


class CoresWarning(UserWarning):
    """More threads were asked for than this process has cores: capped (see
    :func:`cap_threads`)."""


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def cap_threads(threads: int, note: bool = True) -> int:
    """``min(threads, available_cores())``; with ``note``, a :class:`CoresWarning` says so
    (more intra-op threads than cores only oversubscribe the machine)."""
    cores = available_cores()
    if threads > cores and note:
        warnings.warn(f"threads={threads} exceeds the {cores} CPU core(s) available to this "
                      f"process; using {cores}", CoresWarning, stacklevel=3)  # fmt: skip
    return min(int(threads), cores)


# ------------------------------------------------------------------------------ declarations


@dataclass(frozen=True)
class Derived:
    """A default computed from the parameters declared before it: ``rule(values)``; ``text``
    is how the help shows it."""

    rule: Callable[[Mapping[str, Any]], Any]
    text: str


@dataclass(frozen=True)
class Flag:
    """How a parameter appears on the command line (``--name-with-dashes`` unless
    ``spelling``): argparse ``type``/``nargs``/``action``/``metavar``; ``grid``: several
    values in ``sweep`` (a grid axis); ``convert``: parsed value → field value."""

    type: Callable[[str], Any] | None = None
    nargs: str | None = None
    action: str | None = None
    spelling: str | None = None
    metavar: str | None = None
    grid: bool = False
    convert: Callable[[Any], Any] | None = None


SAME = object()
"""``TrainUse.default``: the training function uses the run's default."""


@dataclass(frozen=True)
class TrainUse:
    """How a parameter reaches :func:`flatbook.train.train`: its keyword there (``name``,
    default: the same), its default there, and whether None is allowed there."""

    name: str | None = None
    default: Any = SAME
    none: bool = False


@dataclass(frozen=True)
class Param:
    """One parameter of a training run.

    Attributes:
        name: field of ``RunConfig`` (and, by default, flag ``--name-with-dashes``).
        type: its annotation.
        default: its value when not given (a :class:`Derived` rule when it depends on other
            parameters; a ``dict`` default is copied).
        help: its meaning (the flag's help text; the default is appended).
        check: its validator ``check(value, name, values) -> value`` (:mod:`flatbook._validate`).
        group: help section (one of ``GROUPS``).
        cli: its flag, or None.
        train: how it feeds the training function, or None.
        operational: does not change the numbers (excluded from the config hash).
        none: what None means (help text).
        needs: ``(param, value)``: only meaningful with that value of another parameter; any
            non-default value (or the flag at all) is refused otherwise.
        excludes: a parameter that giving this one (not None) unsets.
    """

    name: str
    type: str
    default: Any
    help: str
    check: V.Check
    group: str
    cli: Flag | None = Flag()
    train: TrainUse | None = None
    operational: bool = False
    none: str = "none"
    needs: tuple[str, Any] | None = None
    excludes: str | None = None

    @property
    def flag(self) -> str:
        """The command-line flag (``--n-train``)."""
        spelt = self.cli.spelling if self.cli is not None else None
        return spelt or "--" + self.name.replace("_", "-")


def _kv(v: str) -> tuple[str, Any]:
    if "=" not in v:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {v!r}")
    k, raw = v.split("=", 1)
    try:
        val = json.loads(raw)
    except json.JSONDecodeError:
        val = raw
    return k.strip(), val


def _batch(v: str) -> int | str:
    if v == "full":
        return v
    try:
        return int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'full': {v!r}") from None


def _opt_int(v: str) -> int | None:
    if v.lower() == "none":
        return None
    try:
        n = int(v)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'none': {v!r}")
    return n


def _at_most(default: int, other: str) -> Derived:
    def rule(values: Mapping[str, Any]) -> int:
        n = values.get(other)
        return min(default, n) if isinstance(n, int) and not isinstance(n, bool) else default

    return Derived(rule, f"{default}, or {other} if smaller")


def _steps_default(values: Mapping[str, Any]) -> int | None:
    return DEFAULT_STEPS if values.get("epochs") is None else None


M, O, E, X = GROUPS  # help sections: model and data, optimisation, measurements, execution

PARAMS: tuple[Param, ...] = (
    Param("model", "str", "mlp", f"architecture, one of {sorted(models.MODELS)}", V.model_name, M,
          Flag(grid=True)),
    Param("model_kw", "Mapping[str, Any]", {}, "model options, JSON values, e.g. hidden=[64,64] "
          "activation=tanh", V.model_options, M,
          Flag(nargs="+", type=_kv, metavar="KEY=VALUE", convert=dict), none="the model's own"),
    Param("dataset", "str", "digits", f"data set, one of {sorted(data.DATASETS)}",
          V.dataset_name, M),
    Param("classes", "tuple[int, ...] | int | None", None, "labels to keep (several numbers), or "
          "a count c (one number: 0..c-1)", V.classes, M,
          Flag(nargs="+", type=int, convert=lambda v: v[0] if len(v) == 1 else tuple(v)),
          none="all"),
    Param("n_train", "int | None", None, "training-set size (a seeded subset)",
          V.positive_int(none=True), M, Flag(type=int), none="all"),
    Param("n_test", "int | None", None, "test-set size (a seeded subset)",
          V.positive_int(none=True), M, Flag(type=int), none="all"),
    Param("standardize", "str", "channel", f"input standardisation, one of {list(STANDARDIZE)}",
          V.choice(STANDARDIZE), M),
    Param("data_seed", "int", 0, "seed of the subsets and of the evaluation subset (fixed "
          "across --seed)", V.seed, M, Flag(type=int), TrainUse("eval_seed")),
    Param("loss", "str", "squared", f"training loss, one of {list(LOSS_NAMES)}",
          V.choice(LOSS_NAMES), O, train=TrainUse()),
    Param("optimizer", "str", "sgd", f"one of {list(OPTIMIZERS)} (Adam: β = (0.9, 0.999))",
          V.choice(OPTIMIZERS), O, train=TrainUse()),
    Param("lr", "float", 0.2, f"learning rate η ≥ {V.LR_MIN:g}", V.learning_rate, O,
          Flag(type=float, grid=True), TrainUse(default=0.1)),
    Param("momentum", "float", 0.0, "SGD momentum in [0, 1) (SGD only)", V.momentum, O,
          Flag(type=float, grid=True), TrainUse(), needs=("optimizer", "sgd")),
    Param("weight_decay", "float", 0.0, "L2 weight decay ≥ 0", V.non_negative, O,
          Flag(type=float, grid=True), TrainUse()),
    Param("nesterov", "bool", False, "Nesterov momentum (SGD with --momentum > 0)", V.nesterov,
          O, Flag(action="store_true"), TrainUse(), none="off", needs=("optimizer", "sgd")),
    Param("batch_size", "int | str", _at_most(32, "n_train"), "batch size B ≤ n_train, or "
          "'full' for full-batch gradient descent", V.batch_size, O,
          Flag(type=_batch, grid=True), TrainUse(default=32, none=True)),
    Param("steps", "int | None", Derived(_steps_default, f"{DEFAULT_STEPS} unless --epochs"),
          "optimizer steps", V.steps, O, Flag(type=int), TrainUse(default=1000),
          excludes="epochs"),
    Param("epochs", "float | None", None, "whole passes over the training set, instead of "
          "--steps (steps = epochs·⌊n_train/B⌋)", V.epochs, O, Flag(type=float), none="unset",
          excludes="steps"),
    Param("seed", "int", 0, "initialisation and batch-order seed", V.seed, O,
          Flag(type=int, grid=True), TrainUse()),
    Param("label_noise", "float", 0.0, "σ of label-noise SGD: targets y + σξ, ξ ~ N(0, I) "
          "afresh each step (squared loss only; 0 = plain SGD)", V.label_noise, O,
          Flag(type=float), TrainUse()),
    Param("dtype", "str", "float32", f"parameter and data dtype, one of {sorted(data.DTYPES)}",
          V.dtype_name, M),
    Param("measure_every", "int", _at_most(1000, "steps"), "steps between measurements (see "
          "--schedule)", V.measure_every, E, Flag(type=int), TrainUse(default=_at_most(
              100, "steps"))),
    Param("schedule", "str", "late", f"measurement schedule, one of {list(SCHEDULES)} (late: "
          "denser in the second half)", V.choice(SCHEDULES), E, train=TrainUse(
              default="linear")),
    Param("measures", "tuple[str, ...]", MEASURES, f"subset of {list(MEASURES)} (none: losses "
          "and accuracies only)", V.measures(MEASURES), E,
          Flag(nargs="*", convert=lambda v: tuple(m for m in v if m != "none"))),
    Param("eval_size", "int", _at_most(256, "n_train"), "training points (a fixed subset, "
          "≤ n_train) on which curvature and geometry are measured", V.eval_size, E,
          Flag(type=int), TrainUse(default=256, none=True)),
    Param("sharpness_tol", "float", 1e-3, "relative tolerance of the Lanczos λ_max, in (0, 1)",
          V.fraction, E, Flag(type=float)),
    Param("target_loss", "float", 1e-3, "record the first step with train loss below this",
          V.positive_float, E, Flag(type=float), TrainUse(none=True)),
    Param("divergence_threshold", "float", 1e6, "a minibatch loss above this ends the run as "
          "diverged", V.positive_float, O, Flag(type=float), TrainUse()),
    Param("device", "str", "cpu", f"one of {list(DEVICES)}", V.choice(DEVICES), X,
          operational=True),
    Param("threads", "int | None", None, "torch intra-op threads, at most the cores available "
          "(more are capped, with a note); part of the run's numerics fingerprint",
          V.positive_int(none=True), X, Flag(type=_opt_int), operational=True,
          none="none = 1 for small CPU models, else torch's"),
    Param("checkpoint_every", "int | None", 2000, "steps between checkpoints, or 'none' (only "
          "at the end / on interrupt)", V.positive_int(none=True), X, Flag(type=_opt_int),
          TrainUse(default=None), operational=True),
    Param("progress", "bool", True, "a tqdm progress bar (--no-progress: none)", V.boolean, X,
          Flag(action="store_false", spelling="--no-progress"), TrainUse(), operational=True,
          none="shown"),
    Param("data_dir", "str | None", None, "folder holding mnist/, fashion_mnist/, cifar10/",
          V.optional_path, M, operational=True, none="$FLATBOOK_DATA or ./data"),
)
"""Every parameter of a training run, in ``RunConfig`` field order."""

BY_NAME: dict[str, Param] = {p.name: p for p in PARAMS}
OPERATIONAL = frozenset(p.name for p in PARAMS if p.operational)
"""Parameters that do not change the numbers: excluded from the config hash / run id."""
GRID_AXES = tuple(p.name for p in PARAMS if p.cli is not None and p.cli.grid)
"""Parameters ``sweep`` takes several values of (a grid)."""


def _train_param(p: Param) -> Param:
    use = p.train
    assert use is not None
    default = p.default if use.default is SAME else use.default
    check = p.check
    if use.none:
        def check(v: Any, name: str, values: Mapping[str, Any], _c: V.Check = p.check) -> Any:
            return None if v is None else _c(v, name, values)

    return dataclasses.replace(p, name=use.name or p.name, default=default, check=check,
                               cli=None, train=None)  # fmt: skip


TRAIN_PARAMS: tuple[Param, ...] = tuple(_train_param(p) for p in PARAMS if p.train is not None)
"""The parameters of :func:`flatbook.train.train` (its names and defaults)."""


# ------------------------------------------------------------------------------ validation


def resolve(values: Mapping[str, Any], params: Sequence[Param] = PARAMS
            ) -> tuple[dict[str, Any], frozenset[str]]:  # fmt: skip
    """Validate and normalise ``values`` (one per parameter of ``params``) in declaration
    order: a :class:`Derived` default is computed from the values before it, then each
    parameter's ``check`` runs (seeing the already-normalised values before it), then its
    ``needs``. Returns ``(values, names whose default was derived)``.

    Raises:
        ValueError / TypeError: from the first bad parameter; the exception's ``param``
            attribute names it (the CLI turns it into the flag).
    """
    out = dict(values)
    derived: set[str] = set()
    for p in params:
        v = out[p.name]
        if isinstance(v, Derived):
            v = v.rule(out)
            derived.add(p.name)
        try:
            out[p.name] = p.check(v, p.name, out)
            _check_needs(p, out)
        except (ValueError, TypeError) as e:
            e.param = p.name  # type: ignore[attr-defined]
            raise
    return out, frozenset(derived)


def _check_needs(p: Param, values: Mapping[str, Any]) -> None:
    if p.needs is None:
        return
    other, want = p.needs
    if values.get(other, want) != want and values[p.name] != p.default:
        raise ValueError(
            f"{p.name}={values[p.name]!r} is an option of {other}={want!r}, not used with "
            f"{other}={values[other]!r}; leave {p.name} at {p.default!r}"
        )


def describe(params: Sequence[Param] = PARAMS) -> str:
    """One line per parameter: ``name (type, default …): meaning``."""
    lines = ["Parameters (declared in flatbook.runspec.PARAMS):", ""]
    for p in params:
        extra = ", not hashed" if p.operational else ""
        lines.append(f"- ``{p.name}`` ({p.type}, default {default_text(p)}{extra}): {p.help}")
    return "\n".join(lines)


def default_text(p: Param) -> str:
    """How help shows the default of ``p``."""
    d = p.default
    if isinstance(d, Derived):
        return d.text
    if d is None or isinstance(d, bool) and p.none != "none" or d == {}:
        return p.none
    if isinstance(d, bool):
        return "on" if d else "off"
    if isinstance(d, tuple | list):
        return " ".join(map(str, d)) or "none"
    return str(d)


def spec_class(params: Sequence[Param]) -> Callable[[type], type]:
    """Class decorator: the parameters as the fields of a frozen dataclass (annotation and
    default each), validated and normalised by :func:`resolve` in ``__post_init__``; the
    class docstring gets the parameter list appended (:func:`describe`)."""

    def make(cls: type) -> type:
        notes = dict(getattr(cls, "__annotations__", {}))
        for p in params:
            notes[p.name] = p.type
            default = (dataclasses.field(default_factory=dict) if isinstance(p.default, dict)
                       else p.default)  # fmt: skip
            setattr(cls, p.name, default)
        cls.__annotations__ = notes
        names = tuple(p.name for p in params)

        def __post_init__(self: Any) -> None:
            out, derived = resolve({n: getattr(self, n) for n in names}, params)
            for n in names:
                object.__setattr__(self, n, out[n])
            object.__setattr__(self, "_derived", derived)

        cls.__post_init__ = __post_init__  # type: ignore[attr-defined]
        cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n\n" + describe(params)
        return dataclass(frozen=True)(cls)

    return make


def replaced(obj: Any, params: Sequence[Param], changes: Mapping[str, Any]) -> dict[str, Any]:
    """The field values of a copy of ``obj`` with ``changes``: a default that was derived is
    derived again (``replace(n_train=100)`` adapts ``eval_size``), and a change that
    ``excludes`` another parameter unsets it (``steps`` ↔ ``epochs``)."""
    by = {p.name: p for p in params}
    unknown = sorted(set(changes) - set(by))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; allowed: {list(by)}")
    kw = {n: getattr(obj, n) for n in by}
    for n in getattr(obj, "_derived", ()):
        kw[n] = by[n].default
    for n, v in changes.items():
        ex = by[n].excludes
        if v is not None and ex in by and ex not in changes:
            kw[ex] = by[ex].default
    kw.update(changes)
    return kw


@spec_class(TRAIN_PARAMS)
class TrainOptions:
    """The options of :func:`flatbook.train.train` (generated from :data:`PARAMS`: the run
    parameters that shape the training loop, with the training function's own defaults);
    validated on construction."""

    def replace(self, **changes: Any) -> TrainOptions:
        """A copy with some options changed (validated again)."""
        return TrainOptions(**replaced(self, TRAIN_PARAMS, changes))


def train_options(config: Any, **overrides: Any) -> TrainOptions:
    """The :class:`TrainOptions` of a run config (any object with the fields of
    :data:`PARAMS`, e.g. ``RunConfig``), with ``overrides`` (e.g. the ``steps`` resolved from
    ``epochs``)."""
    kw = {t.name: getattr(config, p.name) for p, t in zip(
        (p for p in PARAMS if p.train is not None), TRAIN_PARAMS, strict=True)}
    kw.update(overrides)
    return TrainOptions(**kw)


# ------------------------------------------------------------------------------ command line


def add_arguments(parser: argparse.ArgumentParser, grid: bool = False
                  ) -> dict[str, argparse._ArgumentGroup]:  # fmt: skip
    """Add a flag for every parameter with a ``cli``, in help sections ``GROUPS``; each flag's
    help states its default; unset flags are absent from the namespace (see :func:`given`).
    With ``grid`` (``sweep``) the ``GRID_AXES`` take several values. Returns the sections."""
    groups = {g: parser.add_argument_group(g) for g in GROUPS}
    for p in PARAMS:
        c = p.cli
        if c is None:
            continue
        kw: dict[str, Any] = {"dest": p.name, "default": argparse.SUPPRESS}
        for key in ("type", "nargs", "action", "metavar"):
            if getattr(c, key) is not None:
                kw[key] = getattr(c, key)
        several = ""
        if grid and c.grid:
            kw["nargs"], several = "+", " (several values: one run each)"
        text = f"{p.help}{several} (default: {default_text(p)})"
        groups[p.group].add_argument(p.flag, help=text.replace("%", "%%"), **kw)
    return groups


def given(ns: argparse.Namespace) -> dict[str, Any]:
    """The parameters set on the command line, converted to field values."""
    out = {}
    for k, v in vars(ns).items():
        p = BY_NAME.get(k)
        if p is not None and p.cli is not None:
            out[k] = p.cli.convert(v) if p.cli.convert is not None else v
    return out


def merge(base: Mapping[str, Any], flags: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` (e.g. a ``--config`` file) overridden by ``flags``; a flag that ``excludes``
    another parameter drops it from ``base`` (``--epochs`` over a stored ``steps``)."""
    out = dict(base)
    for k, v in flags.items():
        ex = BY_NAME[k].excludes
        if v is not None and ex is not None and ex not in flags:
            out.pop(ex, None)
    out.update(flags)
    return out


def check_flags(flags: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    """Refuse a flag given for a setting it does not apply to (``needs``): ``--momentum`` (any
    value, even 0) with ``--optimizer adam``. ``values``: the run's parameters (missing ones
    at their defaults)."""
    for k in flags:
        p = BY_NAME[k]
        if p.needs is None:
            continue
        other, want = p.needs
        have = values.get(other, BY_NAME[other].default)
        if have != want:
            e = ValueError(f"{p.flag} is an option of {BY_NAME[other].flag} {want}, not used "
                           f"with {BY_NAME[other].flag} {have}; remove it")  # fmt: skip
            e.param = k  # type: ignore[attr-defined]
            raise e


def flag_of(param: str | None) -> str | None:
    """The command-line flag of a parameter name (None if it has none)."""
    p = BY_NAME.get(param or "")
    return p.flag if p is not None and p.cli is not None else None


__all__ = [
    "DEFAULT_STEPS",
    "GRID_AXES",
    "OPERATIONAL",
    "PARAMS",
    "TRAIN_PARAMS",
    "CoresWarning",
    "Derived",
    "Flag",
    "Param",
    "TrainOptions",
    "TrainUse",
    "add_arguments",
    "available_cores",
    "cap_threads",
    "check_flags",
    "describe",
    "given",
    "merge",
    "resolve",
    "spec_class",
    "train_options",
]
