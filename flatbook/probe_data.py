"""The data a measurement reads, resolved into one fixed evaluation set.

:func:`resolve_data` takes the data as a researcher holds it — tensors X [n, …] (and Y), a
dict of tensors, a ``DataLoader`` or any iterable of ``(x, y)`` batches, a ``Dataset`` — and
returns a :class:`DataSet`: X [n, …], Y [n, …] or ``None``. A shuffling loader is refused, and
an iterable is read twice and refused if the two passes differ (random augmentation), as
curvlinops does (``check_deterministic``). Dict inputs are packed into one tensor (see
:class:`DataSet`) and unpacked before the model call (:func:`unpack`). Wrong types are named
with the way out: a numpy array → ``torch.from_numpy``; a batch that is a dict (a Hugging Face
style ``{"input_ids", "labels"}`` loader) → ``(inputs, labels)`` pairs and ``forward=``.
Used by :class:`flatbook.probe.Probe` (which re-exports :func:`resolve_data` and
:class:`DataSet`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["DataSet", "Fields", "resolve_data", "unpack"]


@dataclass(frozen=True)
class DataSet:
    """A fixed evaluation set: X [n, …], Y [n, …] or ``None`` (then Y = f(X)); ``source`` says
    what it was made from (``"tensors"``, ``"DataLoader"``, ``"Dataset"``, ``"iterable"``).

    Dict inputs ``{name: Tensor[n, …]}`` are packed into one float64 tensor X [n, D] (fields in
    key order, flattened; integers are exact up to 2^53); ``fields`` = ``((name, shape, dtype),
    …)`` unpacks them (``None`` for tensor inputs)."""

    X: Tensor
    Y: Tensor | None
    source: str
    fields: tuple[tuple[str, tuple[int, ...], torch.dtype], ...] | None = None


def _is_array(obj: object) -> bool:
    """Whether ``obj`` is a numpy array (numpy imported lazily: it is torch's dependency)."""
    import numpy as np

    return isinstance(obj, np.ndarray)


def _check_tensor_arg(value: object, name: str) -> None:
    """TypeError unless ``value`` is a tensor or None; a numpy array is told torch.from_numpy."""
    if value is None or isinstance(value, Tensor):
        return
    if _is_array(value):
        raise TypeError(f"{name} is a numpy array: pass torch.from_numpy({name}) (flatbook "
                        "measures torch tensors; floating arrays are cast to the model's dtype)")
    raise TypeError(f"{name} must be a torch.Tensor or None; got {type(value).__name__}")


def _as_batch(item: object, where: str) -> tuple[Tensor, Tensor | None]:
    if isinstance(item, Tensor):
        return item, None
    if isinstance(item, tuple | list) and len(item) == 2:
        x, y = item
        if isinstance(x, Mapping):
            bad = [k for k, v in x.items() if not isinstance(v, Tensor)]
            if bad:
                raise TypeError(f"{where}: dict input fields {bad} are not tensors")
            return x, (None if y is None else torch.as_tensor(y))  # type: ignore[return-value]
        if not isinstance(x, Tensor):
            how = " (convert it with torch.from_numpy(x))" if _is_array(x) else ""
            raise TypeError(f"{where}: x must be a torch.Tensor; got {type(x).__name__}{how}")
        if y is not None and not isinstance(y, Tensor):
            y = torch.as_tensor(y)
        return x, y
    if isinstance(item, Mapping):
        keys = sorted(map(str, item))
        y = next((k for k in ("labels", "label", "y", "target", "targets") if k in item), None)
        split = (f"({{k: v for k, v in b.items() if k != {y!r}}}, b[{y!r}])" if y
                 else "(inputs_dict, y)")
        raise TypeError(
            f"{where}: a batch is a dict (keys {keys}); flatbook reads batches (x, y) where x may "
            f"be a dict of tensors: pass [{split} for b in loader] and "
            "forward=lambda model, x: model(**x) (how to call the model on the dict)"
        )
    if _is_array(item):
        raise TypeError(f"{where}: a batch is a {type(item).__name__}: convert it with "
                        "torch.from_numpy(x) (batches are tensors or (x, y) pairs of tensors)")
    raise TypeError(
        f"{where}: each batch must be a tensor x or a pair (x, y) of tensors; got "
        f"{type(item).__name__}"
    )


Fields = tuple[tuple[str, tuple[int, ...], torch.dtype], ...]


def _pack(x: Mapping[str, Tensor], where: str) -> tuple[Tensor, Fields]:
    """{name: [b, …]} → (float64 [b, D], fields) (see :class:`DataSet`)."""
    keys = sorted(x)
    if not keys:
        raise ValueError(f"{where}: the dict input is empty")
    b = x[keys[0]].shape[0] if x[keys[0]].ndim else 0
    if any(x[k].ndim == 0 or x[k].shape[0] != b for k in keys):
        raise ValueError(f"{where}: every field of a dict input needs the same leading batch axis; "
                         f"got {[(k, tuple(x[k].shape)) for k in keys]}")
    if any(x[k].is_complex() for k in keys):
        raise TypeError(f"{where}: complex input fields are not supported")
    fields = tuple((k, tuple(x[k].shape[1:]), x[k].dtype) for k in keys)
    X = torch.cat([x[k].detach().reshape(b, -1).to(torch.float64) for k in keys], dim=1)
    return X, fields


def unpack(X: Tensor, fields: Fields, float_dtype: torch.dtype) -> dict[str, Tensor]:
    """Packed dict inputs X [b, D] (:class:`DataSet`) → ``{name: [b, *shape]}``, floating
    fields in ``float_dtype``, integer fields rounded back to their dtype."""
    out, a = {}, 0
    for k, shape, dt in fields:
        m = math.prod(shape)
        v = X[:, a : a + m].reshape(X.shape[0], *shape)
        out[k] = v.to(float_dtype) if dt.is_floating_point else v.round().to(dt)
        a += m
    return out


def _read(batches: Iterable[object], where: str) -> tuple[Tensor, Tensor | None, Fields | None]:
    fields: Fields | None = None
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    has_y: bool | None = None
    for i, item in enumerate(batches):
        x, y = _as_batch(item, f"{where} batch {i}")
        if isinstance(x, Mapping):
            x, fb = _pack(x, f"{where} batch {i}")
            if fields is not None and fb != fields:
                raise ValueError(f"{where} batch {i}: dict fields {fb} differ from the first "
                                 f"batch's {fields}")
            fields = fb
        elif fields is not None:
            raise ValueError(f"{where} batch {i}: a tensor input after dict inputs")
        if has_y is None:
            has_y = y is not None
        elif has_y != (y is not None):
            raise ValueError(f"{where}: some batches have targets and some do not (batch {i})")
        if x.ndim == 0:
            raise ValueError(f"{where} batch {i}: x must have a leading batch axis; got a scalar")
        xs.append(x.detach())
        if y is not None:
            ys.append(y.detach().reshape(x.shape[0], *y.shape[1:]) if y.ndim else y.reshape(1))
    if not xs:
        raise ValueError(f"{where} is empty (no batch): the report needs at least one sample")
    X = torch.cat(xs)
    Y = torch.cat(ys) if has_y else None
    return X, Y, fields


def _same(a: tuple[Tensor, Tensor | None, object], b: tuple[Tensor, Tensor | None, object]
          ) -> bool:
    if a[0].shape != b[0].shape or not torch.equal(a[0], b[0]):
        return False
    if (a[1] is None) != (b[1] is None):
        return False
    return a[1] is None or (a[1].shape == b[1].shape and torch.equal(a[1], b[1]))  # type: ignore[union-attr]


def resolve_data(data: object, Y: object = None) -> DataSet:
    """Read ``data`` into a fixed evaluation set (see the module docstring).

    Args:
        data: a tensor X [n, …] (with ``Y`` a tensor [n, …] or ``None``), a
            ``torch.utils.data.DataLoader`` or any iterable of batches ``(x, y)`` (or ``x``),
            or a ``torch.utils.data.Dataset`` of samples ``(x, y)``.
        Y: targets when ``data`` is a tensor; must be ``None`` otherwise (the batches carry
            them).

    Raises:
        TypeError: an unsupported type (the message names the parameter and what is allowed).
        ValueError: a shuffling loader, or two passes over ``data`` that differ.
    """
    from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler

    if _is_array(data):
        _check_tensor_arg(data, "X")
    if isinstance(data, Tensor):
        _check_tensor_arg(Y, "Y")
        return DataSet(data.detach(), None if Y is None else Y.detach(), "tensors")  # type: ignore[union-attr]
    if isinstance(data, Mapping) and all(isinstance(v, Tensor) for v in data.values()):
        _check_tensor_arg(Y, "Y")
        Xp, fields = _pack(data, "X")  # type: ignore[arg-type]
        return DataSet(Xp, None if Y is None else Y.detach(), "dict of tensors", fields)
    if Y is not None:
        raise ValueError(
            "Y must be None when X is a DataLoader / Dataset / iterable of batches: the batches "
            "carry the targets (pass (x, y) batches, or tensors X and Y)"
        )
    if isinstance(data, str | bytes | Mapping):
        raise TypeError(
            f"X must be a tensor [n, …], a DataLoader or iterable of (x, y) batches, or a "
            f"Dataset of (x, y) samples; got {type(data).__name__}"
        )
    if isinstance(data, DataLoader):
        if isinstance(data.sampler, RandomSampler):
            raise ValueError(
                "X is a shuffling DataLoader (shuffle=True / RandomSampler): curvature and the "
                "bounds need a fixed evaluation set. Pass DataLoader(dataset, batch_size=…, "
                "shuffle=False) (the order does not matter, the set does)"
            )
        source, batches = "DataLoader", data
    elif isinstance(data, IterableDataset):
        source, batches = "IterableDataset", DataLoader(data, batch_size=256)
    elif isinstance(data, Dataset):  # samples (x, y), batched in order
        source, batches = "Dataset", DataLoader(data, batch_size=256, shuffle=False)
    elif isinstance(data, Iterable):
        source, batches = "iterable", data
    else:
        raise TypeError(
            f"X must be a tensor [n, …], a DataLoader or iterable of (x, y) batches, or a "
            f"Dataset of (x, y) samples; got {type(data).__name__}"
        )
    first = _read(batches, f"X ({source})")
    if iter(batches) is batches:  # a one-shot iterator cannot be read twice
        return DataSet(first[0], first[1], source, first[2])
    second = _read(batches, f"X ({source})")
    if not _same(first, second):
        raise ValueError(
            f"X ({source}) gave different data on two passes (shuffling, random augmentation or "
            "subsampling): the report needs a fixed evaluation set. Use a loader without "
            "shuffle and without random transforms, or pass the tensors"
        )
    return DataSet(first[0], first[1], source, first[2])
