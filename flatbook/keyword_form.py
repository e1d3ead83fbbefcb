"""The keyword form of a function whose options live in an option record (a frozen dataclass).

A public function with many options takes ``options=Record(...)`` and, as a thin wrapper, the
same options as keywords (``sharpness(model, loss, X, Y, tol=1e-4)``): :func:`resolve` builds
the record from the keywords, on top of a given record, and names any keyword the record does
not have.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["resolve", "with_positional"]

R = TypeVar("R")


def resolve(record: type[R], where: str, options: R | None, flags: Mapping[str, Any]) -> R:
    """The option record of a call: ``options`` (default ``record()``) with the fields named in
    ``flags`` replaced by their values.

    Args:
        record: the frozen dataclass type of the options.
        where: the function's name, for the messages (``"sharpness"``).
        options: a ``record`` instance or ``None``.
        flags: keyword options, each a field of ``record``.

    Raises:
        TypeError: ``options`` is not a ``record``, or a keyword is not one of its fields (the
            message names it and lists the allowed ones).
    """
    if options is not None and not isinstance(options, record):
        raise TypeError(f"{where}(): options must be a {record.__name__}; got "
                        f"{type(options).__name__}")
    allowed = [f.name for f in dataclasses.fields(record)]
    for key in flags:
        if key not in allowed:
            raise TypeError(f"{where}() got an unexpected keyword {key!r}; allowed: {allowed}, "
                            f"or options={record.__name__}(...)")
    if options is None:
        return record(**flags)
    return dataclasses.replace(options, **flags)


def with_positional(where: str, names: tuple[str, ...], args: tuple[Any, ...],
                    flags: Mapping[str, Any]) -> dict[str, Any]:
    """``flags`` plus the positional options ``args``, read in the order of ``names`` (the
    old positional form, e.g. ``sharpness(model, loss, X, Y, k, tol, seed)``).

    Raises:
        TypeError: more positional options than ``names``, or one also given as a keyword.
    """
    if len(args) > len(names):
        raise TypeError(f"{where}() takes at most {len(names)} positional options {list(names)} "
                        f"after its data; got {len(args)}: pass the others as keywords")
    out = dict(zip(names, args, strict=False))
    for key in out:
        if key in flags:
            raise TypeError(f"{where}() got {key!r} both positionally and as a keyword")
    return out | dict(flags)
