"""JSON form of estimator parameters: plain data, and names of allowed objects.

A parameter value is stored as JSON when it is plain data (None, bool, int,
float, str, list), with a one-key object for the other kinds:

=================================  ==========================================
``{"__tuple__": [...]}``           a tuple
``{"__dict__": {...}}``            a dict with string keys
``{"__ndarray__": [...],           a numeric, boolean or string array
"dtype": "<f4"}``
``{"__device__": "cpu"}``          a ``torch.device``
``{"__object__": "pkg:Name"}``     a class or function, by its registered
                                   name (see :mod:`._registry`)
``{"__estimator__": "pkg:Name",    an estimator-like object (a preprocessing
"params": {...}}``                 transformer): its class and parameters
=================================  ==========================================

Decoding builds nothing but these values and the registered (or
caller-given) classes named; every malformed entry raises a
:class:`PersistenceError` naming the file and the key.
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from . import _registry
from ._errors import PersistenceError

__all__ = ["decode", "encode"]

_MAX_DEPTH = 32
_DTYPE = re.compile(r"[<>|=]?(b1|[iu][1248]|f[248]|U[0-9]{1,5})")


# ------------------------------------------------------------- encoding


def object_name(obj, where):
    """The name under which a class or function is saved."""
    name = _registry.registered_name(obj)
    if name is not None:
        return name
    short = getattr(obj, "__name__", None)
    module = getattr(obj, "__module__", None) or "unknown"
    if not isinstance(short, str) or short == "<lambda>" or not short.isidentifier():
        raise PersistenceError(
            f"{where}: {obj!r:.60} has no name to save it under (a lambda?): "
            "define it with def or class, or leave the parameter out with "
            "exclude=[...] and pass it again when loading."
        )
    qualname = getattr(obj, "__qualname__", short)
    name = f"{module}:{qualname}"
    if not _registry.valid_name(name):
        name = f"{module}:{short}"
    if not _registry.valid_name(name):
        name = f"custom:{short}"
    return name


def encode(value, where):
    """JSON-able form of ``value``; raise PersistenceError if impossible.

    Parameters
    ----------
    value : object
    where : str
        The key, for messages (e.g. ``"backbone"``).

    Returns
    -------
    object
        JSON-serialisable.

    Examples
    --------
    >>> import torch
    >>> encode((1, 2.0), "x")
    {'__tuple__': [1, 2.0]}
    >>> encode(torch.optim.Adam, "optimizer")
    {'__object__': 'torch.optim:Adam'}
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        if not math.isfinite(value):
            raise PersistenceError(f"{where}: non-finite number {value!r}")
        return float(value)
    if isinstance(value, list):
        return [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise PersistenceError(f"{where}: dict keys must be strings")
        return {"__dict__": {k: encode(v, f"{where}[{k!r}]") for k, v in value.items()}}
    if isinstance(value, np.ndarray):
        if not _DTYPE.fullmatch(value.dtype.str) or (
            value.dtype.kind == "f" and not np.isfinite(value).all()
        ):
            raise PersistenceError(
                f"{where}: arrays of dtype {value.dtype} (or with non-finite values)"
            )
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if inspect.isclass(value) or inspect.isroutine(value):
        return {"__object__": object_name(value, where)}
    if hasattr(value, "get_params") and not isinstance(value, nn.Module):
        params = value.get_params(deep=False)
        return {
            "__estimator__": object_name(type(value), where),
            "params": {k: encode(v, f"{where}.{k}") for k, v in params.items()},
        }
    raise PersistenceError(f"{where}: {type(value).__name__} objects ({value!r:.60})")


# ------------------------------------------------------------- decoding


@dataclass
class DecodeContext:
    """What decoding needs: the file (for messages), the caller's classes,
    and whether the config is of the first format (``"__import__"`` tags).
    The objects taken from ``custom_objects`` are recorded in ``used``."""

    file: str
    custom_objects: dict
    legacy: bool = False
    used: set = field(default_factory=set)

    def error(self, where, message):
        return PersistenceError(f"{self.file!r}, key {where!r}: {message}")


def _resolve_object(name, where, ctx, kinds):
    if not isinstance(name, str) or not _registry.valid_name(name):
        raise ctx.error(
            where,
            f"{name!r:.80} is not a class or function name of the form "
            "'package.module:Name'.",
        )
    found = _registry.resolve(name, ctx.custom_objects)
    if found is None:
        raise ctx.error(
            where,
            f"{name!r} is not a class or function a saved encoder may name "
            "(the allow-list holds sklearn_cl3d's networks, losses, kernels, "
            "transformers and estimators, torch.optim optimisers and torch.nn "
            "losses). Nothing is imported from a saved file: if it is your own "
            "class or function, pass it when loading, e.g. "
            f"load_pretrained(path, custom_objects={{{_registry.short_name(name)!r}: "
            f"{_registry.short_name(name)}}}) (for FineTunedClassifier/"
            "FineTunedRegressor, load the encoder that way and pass it as "
            "pretrained=).",
        )
    obj, kind = found
    if kind == "custom":
        ctx.used.add(_registry.short_name(name))
    elif kinds is not None and kind not in kinds:
        raise ctx.error(
            where,
            f"{name!r} is a {kind}, which cannot be used here (expected: "
            f"{', '.join(sorted(kinds))}).",
        )
    return obj, kind


def decode(value, where, ctx, *, kinds=None, depth=0):
    """Rebuild a value stored by :func:`encode`.

    Parameters
    ----------
    value : object
        Parsed JSON.
    where : str
        Its key (for messages).
    ctx : DecodeContext
    kinds : set of str or None, default=None
        Registered kinds of object allowed at this place (None: any kind but
        ``"pretrainer"``).

    Returns
    -------
    object
    """
    if depth > _MAX_DEPTH:
        raise ctx.error(where, "nested too deeply.")
    if kinds is None:
        kinds = set(_registry.KINDS) - {"pretrainer"}
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ctx.error(where, f"non-finite number {value!r}.")
        return value
    if isinstance(value, list):
        return [
            decode(v, f"{where}[{i}]", ctx, kinds=kinds, depth=depth + 1)
            for i, v in enumerate(value)
        ]
    if not isinstance(value, dict):
        raise ctx.error(where, f"unexpected value {value!r:.60}.")
    keys = set(value)
    if keys == {"__tuple__"}:
        items = value["__tuple__"]
        if not isinstance(items, list):
            raise ctx.error(where, "'__tuple__' must hold a list.")
        return tuple(
            decode(v, f"{where}[{i}]", ctx, kinds=kinds, depth=depth + 1)
            for i, v in enumerate(items)
        )
    if keys == {"__dict__"}:
        items = value["__dict__"]
        if not isinstance(items, dict):
            raise ctx.error(where, "'__dict__' must hold an object.")
        return {
            k: decode(v, f"{where}[{k!r}]", ctx, kinds=kinds, depth=depth + 1)
            for k, v in items.items()
        }
    if keys == {"__ndarray__", "dtype"}:
        return _decode_array(value, where, ctx)
    if keys == {"__device__"}:
        try:
            return torch.device(value["__device__"])
        except (RuntimeError, TypeError, ValueError):
            raise ctx.error(
                where, f"{value['__device__']!r:.40} is not a torch device."
            ) from None
    if keys == {"__object__"} or (ctx.legacy and keys == {"__import__"}):
        name = value.get("__object__", value.get("__import__"))
        obj, _ = _resolve_object(name, where, ctx, kinds)
        return obj
    if keys == {"__estimator__", "params"}:
        return _decode_estimator(value, where, ctx, depth)
    raise ctx.error(where, f"unknown entry {value!r:.80}.")


def _decode_array(value, where, ctx):
    dtype, items = value["dtype"], value["__ndarray__"]
    if not isinstance(dtype, str) or not _DTYPE.fullmatch(dtype):
        raise ctx.error(
            where, f"array dtype {dtype!r:.40} is not a numeric, boolean or str dtype."
        )
    if not isinstance(items, list):
        raise ctx.error(where, "'__ndarray__' must hold a (nested) list.")
    try:
        array = np.array(items, dtype=np.dtype(dtype))
    except (ValueError, TypeError, OverflowError) as exc:
        raise ctx.error(where, f"not a valid {dtype} array ({exc}).") from None
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ctx.error(where, "the array has non-finite values.")
    return array


def _decode_estimator(value, where, ctx, depth):
    cls, kind = _resolve_object(value["__estimator__"], where, ctx, {"transformer"})
    if not (inspect.isclass(cls) and hasattr(cls, "get_params")):
        raise ctx.error(
            where, f"{value['__estimator__']!r} is not an estimator-like class."
        )
    params = value["params"]
    if not isinstance(params, dict):
        raise ctx.error(where, "'params' must be an object.")
    accepted = None
    if kind != "custom" and hasattr(cls, "_get_param_names"):
        accepted = set(cls._get_param_names())
    kwargs = {}
    for k, v in params.items():
        if accepted is not None and k not in accepted:
            raise ctx.error(f"{where}.{k}", f"{cls.__name__} has no parameter {k!r}.")
        kwargs[k] = decode(v, f"{where}.{k}", ctx, depth=depth + 1)
    try:
        obj = cls(**kwargs)
        if callable(getattr(obj, "_check_params", None)):
            obj._check_params()
    except (TypeError, ValueError) as exc:
        raise ctx.error(where, f"invalid {cls.__name__} parameters: {exc}") from None
    return obj
