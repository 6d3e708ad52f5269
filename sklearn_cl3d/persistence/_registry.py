"""The classes and functions a saved config may name.

A config refers to a class or function by a name such as
``"torch.optim:Adam"`` or ``"sklearn_cl3d.nn:SmallCNN3D"``. Loading looks
the name up in this registry (an explicit dictionary, filled by the library
itself) or in the caller's ``custom_objects``; nothing is ever imported or
looked up as an attribute from a string read in a file.

The built-in allow-list holds the optimisers of :mod:`torch.optim`, the loss
classes of :mod:`torch.nn`, torch's ``DataLoader``, skorch's ``Dataset``, and
the networks, losses, kernels and preprocessing transformers of
sklearn_cl3d. The estimators register themselves (and the network classes
they define) with :func:`register_serializable` when
:mod:`sklearn_cl3d.estimators` is imported.
"""

from __future__ import annotations

import inspect
import re
import threading
from collections.abc import Mapping

__all__ = ["KINDS", "register_serializable"]

#: What a registered object is, which decides where a config may use it.
KINDS = (
    "pretrainer",  # the saved estimator's class
    "network",  # nn.Module classes and backbone factories
    "criterion",  # loss classes
    "optimizer",  # torch.optim.Optimizer subclasses
    "kernel",  # metadata kernels (functions)
    "transformer",  # estimator-like objects stored with their parameters
    "dataset",  # torch Dataset classes
    "loader",  # DataLoader classes
    "callable",  # other functions
)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

_lock = threading.RLock()
_by_name: dict[str, tuple[object, str]] = {}
_name_of: dict[int, str] = {}
_builtins_loaded = False


def valid_name(name):
    """Whether ``name`` has the ``"package.module:Name"`` form of registered names.

    Examples
    --------
    >>> valid_name("torch.optim:Adam"), valid_name("my_package.nets:Outer.MyNet")
    (True, True)
    >>> valid_name("os.system"), valid_name("a:b:c"), valid_name("x:os system")
    (False, False, False)
    """
    if not isinstance(name, str) or name.count(":") != 1 or len(name) > 200:
        return False
    module, qualname = name.split(":")
    return bool(_NAME.fullmatch(module) and _NAME.fullmatch(qualname))


def _infer_kind(obj):
    import torch
    from torch import nn

    if inspect.isclass(obj):
        if issubclass(obj, torch.optim.Optimizer):
            return "optimizer"
        if issubclass(obj, nn.modules.loss._Loss):
            return "criterion"
        if issubclass(obj, torch.utils.data.DataLoader):
            return "loader"
        if issubclass(obj, torch.utils.data.Dataset):
            return "dataset"
        if issubclass(obj, nn.Module):
            return "network"
        if hasattr(obj, "get_params"):
            return "transformer"
    if callable(obj):
        return "callable"
    raise TypeError(f"{obj!r:.80} is neither a class nor a function.")


def register_serializable(objects, *, kind=None):
    """Let saved configs name these classes or functions.

    For library code: the estimators call it for themselves. Your own
    classes are not registered; pass them to
    :func:`~sklearn_cl3d.load_pretrained` as ``custom_objects`` instead.

    Parameters
    ----------
    objects : dict
        Name (``"package.module:QualName"``, e.g. ``"sklearn_cl3d:
        YAwarePretrainer"``) -> class or function. An object registered
        under several names is saved under the first one.
    kind : str or None, default=None
        One of :data:`KINDS`; inferred from the object when None (an
        optimiser, loss, data loader, dataset, network or transformer class,
        else ``"callable"``). Estimators that can be saved are registered
        with ``kind="pretrainer"``.

    Raises
    ------
    ValueError
        If a name is malformed or already taken by another object.

    Examples
    --------
    >>> import torch
    >>> register_serializable({"torch.optim:Adam": torch.optim.Adam})
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}.")
    with _lock:
        for name, obj in objects.items():
            if not valid_name(name):
                raise ValueError(
                    f"{name!r} is not a registered-object name of the form "
                    "'package.module:QualName'."
                )
            obj_kind = kind or _infer_kind(obj)
            known = _by_name.get(name)
            if known is not None:
                if known[0] is not obj:
                    raise ValueError(
                        f"{name!r} is already registered for {known[0]!r}."
                    )
                continue
            _by_name[name] = (obj, obj_kind)
            _name_of.setdefault(id(obj), name)


def _register_builtins():
    """The built-in allow-list (see the module docstring)."""
    import skorch.dataset
    import torch
    from torch import nn

    from .. import augment, data, losses, nn as cl3d_nn

    optim = {
        f"torch.optim:{name}": obj
        for name, obj in sorted(vars(torch.optim).items())
        if inspect.isclass(obj)
        and issubclass(obj, torch.optim.Optimizer)
        and obj is not torch.optim.Optimizer
        and not name.startswith("_")
    }
    register_serializable(optim, kind="optimizer")
    criteria = {
        f"torch.nn:{name}": obj
        for name, obj in sorted(vars(nn).items())
        if inspect.isclass(obj)
        and issubclass(obj, nn.modules.loss._Loss)
        and not name.startswith("_")
    }
    register_serializable(criteria, kind="criterion")
    register_serializable(
        {"torch.utils.data:DataLoader": torch.utils.data.DataLoader}, kind="loader"
    )
    register_serializable({"skorch.dataset:Dataset": skorch.dataset.Dataset})
    networks = {}
    for name in cl3d_nn.__all__:
        obj = getattr(cl3d_nn, name)
        if inspect.isclass(obj) and issubclass(obj, nn.Module):
            networks[f"sklearn_cl3d.nn:{name}"] = obj
    for factory in (cl3d_nn.densenet121, cl3d_nn.resnet18_2d):
        networks[f"sklearn_cl3d.nn:{factory.__name__}"] = factory
    register_serializable(networks, kind="network")
    for name in losses.__all__:
        obj = getattr(losses, name)
        if inspect.isclass(obj) and issubclass(obj, nn.Module):
            register_serializable(
                {f"sklearn_cl3d.losses:{name}": obj}, kind="criterion"
            )
        elif inspect.isfunction(obj) and name.endswith("_kernel"):
            register_serializable({f"sklearn_cl3d.losses:{name}": obj}, kind="kernel")
    for package, prefix in (
        (data, "sklearn_cl3d.data"),
        (augment, "sklearn_cl3d.augment"),
    ):
        for name in package.__all__:
            obj = getattr(package, name)
            if inspect.isclass(obj) and hasattr(obj, "get_params"):
                register_serializable({f"{prefix}:{name}": obj}, kind="transformer")


def _ensure_builtins():
    global _builtins_loaded
    if _builtins_loaded:
        return
    with _lock:
        if not _builtins_loaded:
            _register_builtins()
            _builtins_loaded = True


def registered_name(obj):
    """The name ``obj`` is saved under, or None if it is not registered."""
    _ensure_builtins()
    with _lock:
        name = _name_of.get(id(obj))
        if name is not None and _by_name[name][0] is obj:
            return name
    return None


def kind_of(obj):
    """The registered kind of ``obj``, or None."""
    name = registered_name(obj)
    return None if name is None else _by_name[name][1]


def lookup(name):
    """``(object, kind)`` registered under ``name``, or None."""
    _ensure_builtins()
    with _lock:
        return _by_name.get(name)


def pretrainer_classes():
    """The registered pretrainer classes (a tuple, for ``isinstance``)."""
    _ensure_builtins()
    with _lock:
        return tuple(obj for obj, kind in _by_name.values() if kind == "pretrainer")


def check_custom_objects(custom_objects):
    """Validate ``custom_objects``; return it as a dict (empty for None)."""
    if custom_objects is None:
        return {}
    if not isinstance(custom_objects, Mapping):
        raise TypeError(
            "custom_objects must be a dict of name -> class or function, e.g. "
            f"{{'MyNet': MyNet}}; got {type(custom_objects).__name__}."
        )
    for key, value in custom_objects.items():
        if not isinstance(key, str) or not key:
            raise TypeError(
                f"custom_objects keys must be non-empty strings; got {key!r:.60}."
            )
        if not callable(value):
            raise TypeError(
                f"custom_objects[{key!r}] must be a class or function; got "
                f"{type(value).__name__}."
            )
    return dict(custom_objects)


def short_name(name):
    """The last part of a saved name: ``"my.module:Outer.MyNet"`` -> ``"MyNet"``."""
    return name.rsplit(":", 1)[-1].rsplit(".", 1)[-1]


def resolve(name, custom_objects):
    """Find the object a config names: registry first, then ``custom_objects``.

    Returns
    -------
    (object, kind) or None
        ``kind`` is ``"custom"`` for an object given by the caller.
    """
    found = lookup(name)
    if found is not None:
        return found
    for key in (name, short_name(name)):
        if key in custom_objects:
            return custom_objects[key], "custom"
    return None
