"""Saving and loading pretrained encoders, and loading plain PyTorch weights.

A saved encoder is a directory holding

- ``weights.pt``: the network's ``state_dict`` (``torch.save``), loaded back
  with ``torch.load(weights_only=True)``, so loading never unpickles
  arbitrary objects;
- ``config.json``: the estimator class, its constructor parameters and the
  fitted attributes needed to rebuild the network (``input_shape_``, ...).

Constructor parameters are stored as JSON where possible. A class or function
defined at module level is stored as its import path; an estimator-like
object (anything with ``get_params``, e.g. the volume preprocessing
transformers) as its class and parameters. Anything else (a module instance,
a lambda, a ``RandomState``, ...) cannot be stored: :func:`save_pretrained`
then raises, unless the value is the class default or the parameter is
listed in ``exclude``. When loading, import paths outside torch, skorch,
scikit-learn and sklearn_cl3d are refused unless ``trust_imports=True``; pass
such objects again as keyword overrides instead.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "load_pretrained",
    "load_state_dict",
    "save_pretrained",
    "yaware_key_map",
]

#: File names inside a directory written by :func:`save_pretrained`.
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.pt"

_FORMAT = "sklearn_cl3d.pretrained"
_FORMAT_VERSION = 1

#: Top-level packages whose classes and functions a config may refer to
#: without ``trust_imports=True``.
_TRUSTED_PACKAGES = ("torch", "skorch", "sklearn", "sklearn_cl3d")

# Fitted attributes that are runtime state, rebuilt by ``initialize()``.
_RUNTIME_ATTRS = {
    "callbacks_",
    "criterion_",
    "cuda_dependent_attributes_",
    "device_",
    "history_",
    "init_context_",
    "initialized_",
    "module_",
    "normalizer_",
    "augment_",
    "optimizer_",
    "prefixes_",
    "virtual_params_",
}


class PersistenceError(ValueError):
    """A value cannot be written to, or read from, a saved-encoder config."""


# ----------------------------------------------------------------- atomic IO


def atomic_write(path, write):
    """Write a file through a temporary file in the same directory.

    ``write(tmp_path)`` creates the temporary file; it is flushed to disk and
    moved over ``path`` with :func:`os.replace`, so ``path`` is either the
    old file or the complete new one, never a partial write. On error the
    temporary file is removed and the error propagates.

    Parameters
    ----------
    path : str or path-like
        Destination.
    write : callable
        ``write(tmp_path)`` writes the content to ``tmp_path``.

    Examples
    --------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> from pathlib import Path
    >>> atomic_write(os.path.join(d, "a.txt"), lambda p: Path(p).write_text("hi"))
    >>> Path(d, "a.txt").read_text()
    'hi'
    """
    tmp = stage_file(path, write)
    commit_file(tmp, path)


def stage_file(path, write):
    """Write ``path``'s future content to a new temporary sibling; return it.

    See :func:`atomic_write`; :func:`commit_file` moves it into place.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
    )
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    except BaseException:
        discard_file(tmp)
        raise
    return tmp


def commit_file(tmp, path):
    """Move a staged temporary file over ``path`` (atomic on one filesystem)."""
    os.replace(tmp, os.fspath(path))


def discard_file(tmp):
    """Remove a staged temporary file, ignoring a missing one."""
    try:
        os.remove(tmp)
    except FileNotFoundError:
        pass


# ------------------------------------------------------------ JSON encoding


def _import_path(obj):
    """The ``module.qualname`` that imports back to ``obj``, or None."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        return None
    if module == "builtins" and not inspect.isclass(obj):
        return None
    try:
        found = _resolve(module, qualname)
    except (ImportError, AttributeError):
        return None
    if found is not obj:
        return None
    # prefer the shortest public module that exposes the same object
    parts = module.split(".")
    for i in range(1, len(parts)):
        short = ".".join(parts[:i])
        try:
            if _resolve(short, qualname) is obj:
                return f"{short}:{qualname}"
        except (ImportError, AttributeError):
            continue
    return f"{module}:{qualname}"


def _resolve(module, qualname):
    obj = importlib.import_module(module)
    for attr in qualname.split("."):
        obj = getattr(obj, attr)
    return obj


def _encode(value, where):
    """JSON-able form of ``value``; raise PersistenceError if impossible."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    if isinstance(value, list):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise PersistenceError(f"{where}: dict keys must be strings")
        return {
            "__dict__": {k: _encode(v, f"{where}[{k!r}]") for k, v in value.items()}
        }
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufU":
            raise PersistenceError(f"{where}: arrays of dtype {value.dtype}")
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if inspect.isclass(value) or inspect.isfunction(value) or inspect.isbuiltin(value):
        path = _import_path(value)
        if path is None:
            raise PersistenceError(
                f"{where}: {value!r} is not importable by name (a lambda, a "
                "local function or class?)"
            )
        return {"__import__": path}
    if hasattr(value, "get_params") and not isinstance(value, nn.Module):
        path = _import_path(type(value))
        if path is None:
            raise PersistenceError(
                f"{where}: the class of {value!r} is not importable by name"
            )
        params = value.get_params(deep=False)
        return {
            "__estimator__": path,
            "params": {k: _encode(v, f"{where}.{k}") for k, v in params.items()},
        }
    raise PersistenceError(f"{where}: {type(value).__name__} objects ({value!r:.60})")


def _check_trusted(path, trust_imports):
    package = path.split(":")[0].split(".")[0]
    if not trust_imports and package not in _TRUSTED_PACKAGES:
        raise PersistenceError(
            f"the config refers to {path!r}, outside the trusted packages "
            f"({', '.join(_TRUSTED_PACKAGES)}). Pass that object again as a "
            "keyword override (e.g. load_pretrained(path, backbone=MyNet)), "
            "or trust_imports=True if you trust the file."
        )


def _import(path, trust_imports):
    _check_trusted(path, trust_imports)
    module, _, qualname = path.partition(":")
    try:
        return _resolve(module, qualname)
    except (ImportError, AttributeError) as exc:
        raise PersistenceError(f"cannot import {path!r}: {exc}") from None


def _decode(value, trust_imports):
    if isinstance(value, list):
        return [_decode(v, trust_imports) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tuple__" in value:
        return tuple(_decode(v, trust_imports) for v in value["__tuple__"])
    if "__dict__" in value:
        return {k: _decode(v, trust_imports) for k, v in value["__dict__"].items()}
    if "__ndarray__" in value:
        return np.asarray(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
    if "__device__" in value:
        return torch.device(value["__device__"])
    if "__import__" in value:
        obj = _import(value["__import__"], trust_imports)
        if not callable(obj):
            raise PersistenceError(
                f"{value['__import__']!r} is not a class or function"
            )
        return obj
    if "__estimator__" in value:
        cls = _import(value["__estimator__"], trust_imports)
        if not (inspect.isclass(cls) and hasattr(cls, "get_params")):
            raise PersistenceError(
                f"{value['__estimator__']!r} is not an estimator-like class"
            )
        params = {k: _decode(v, trust_imports) for k, v in value["params"].items()}
        return cls(**params)
    raise PersistenceError(f"unknown config entry {value!r:.80}")


def _same(a, b):
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    try:
        return bool(a == b)
    except Exception:  # arrays, exotic __eq__
        return False


# --------------------------------------------------------------- save / load


def _pretrainer_base():
    from .estimators._base import BaseContrastivePretrainer

    return BaseContrastivePretrainer


def _network(estimator):
    """The estimator's ``module_`` without a distributed wrapper."""
    bare = getattr(estimator, "_bare_module", None)
    return bare() if bare is not None else estimator.module_


def _fitted_attributes(estimator):
    attrs = {}
    for name, value in vars(estimator).items():
        if not name.endswith("_") or name in _RUNTIME_ATTRS:
            continue
        if name.startswith("_") and name != "_base_seed_":
            continue
        try:
            attrs[name] = _encode(value, name)
        except PersistenceError:
            continue  # runtime objects (modules, datasets, ...) are rebuilt
    return attrs


def save_pretrained(estimator, path, *, exclude=()):
    """Save a fitted pretrainer's network and configuration to a directory.

    Writes ``weights.pt`` (the network's ``state_dict``, tensors moved to the
    CPU) and then ``config.json`` (class, constructor parameters, fitted
    attributes), each atomically (temporary file + :func:`os.replace`). The
    directory is created if needed; existing files of these names are
    replaced.

    Parameters
    ----------
    estimator : BaseContrastivePretrainer
        A fitted pretrainer (:class:`~sklearn_cl3d.YAwarePretrainer`, ...).
    path : str or path-like
        Directory to write.
    exclude : iterable of str, default=()
        Constructor parameters not to store (they get their class defaults,
        or load-time overrides, when loading), e.g. ``("kernel",)`` for a
        kernel given as a lambda. ``callbacks`` are never stored: they belong
        to a training session (pass them to :func:`load_pretrained` to train
        further).

    Returns
    -------
    path : pathlib.Path
        The directory.

    Raises
    ------
    ValueError
        If the estimator is not fitted, or if a parameter that is not its
        class default can be stored neither as JSON, nor as an import path,
        nor as class + parameters (the message lists them all).

    See Also
    --------
    load_pretrained : the inverse.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from sklearn_cl3d import SimCLRPretrainer, load_pretrained
    >>> X = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    >>> ssl = SimCLRPretrainer(backbone="mlp", backbone__hidden_dims=(8,),
    ...                        max_epochs=1, batch_size=8, random_state=0).fit(X)
    >>> d = ssl.save_pretrained(tempfile.mkdtemp())
    >>> sorted(p.name for p in d.iterdir())
    ['config.json', 'weights.pt']
    >>> again = load_pretrained(d)
    >>> bool(np.allclose(again.transform(X), ssl.transform(X)))
    True
    """
    base = _pretrainer_base()
    if not isinstance(estimator, base):
        raise ValueError(
            "save_pretrained saves contrastive pretrainers (subclasses of "
            f"BaseContrastivePretrainer); got {type(estimator).__name__}."
        )
    if not getattr(estimator, "initialized_", False) or not hasattr(
        estimator, "input_shape_"
    ):
        raise ValueError(
            f"This {type(estimator).__name__} instance is not fitted yet: call "
            "fit before save_pretrained."
        )
    exclude = set([exclude] if isinstance(exclude, str) else exclude)
    unknown = exclude - set(estimator.get_params(deep=False))
    if unknown:
        raise ValueError(f"exclude names unknown parameters: {sorted(unknown)}.")
    cls = type(estimator)
    cls_path = _import_path(cls)
    if cls_path is None:
        raise ValueError(f"{cls.__name__} is not importable by name; cannot save it.")
    try:
        defaults = cls().get_params(deep=False)
    except Exception:  # a class without a default constructor
        defaults = {}
    params, problems = {}, []
    for name, value in estimator.get_params(deep=False).items():
        if name in exclude or name == "callbacks":
            continue
        try:
            params[name] = _encode(value, name)
        except PersistenceError as exc:
            if name in defaults and _same(value, defaults[name]):
                continue  # the default comes back by itself
            problems.append(str(exc))
    if problems:
        raise ValueError(
            "These parameters cannot be stored as JSON, as an import path or "
            "as class + parameters:\n  - " + "\n  - ".join(problems) + "\nUse "
            "importable classes/functions, or save_pretrained(path, "
            "exclude=[...]) and pass the objects again to load_pretrained "
            "as keyword overrides."
        )
    config = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "class": cls_path,
        "params": params,
        "fitted": _fitted_attributes(estimator),
        "versions": {
            "sklearn_cl3d": _version(),
            "torch": torch.__version__,
        },
    }
    text = json.dumps(config, indent=2, sort_keys=True)
    module = _network(estimator)
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{str(path)!r} exists and is not a directory.")
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / WEIGHTS_NAME, lambda f: torch.save(state, f))
    atomic_write(path / CONFIG_NAME, lambda f: Path(f).write_text(text))
    return path


def _version():
    from . import __version__

    return __version__


def _read_config(path):
    path = Path(path)
    file = path / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not a saved encoder: {CONFIG_NAME} is missing "
            "(write one with save_pretrained)."
        )
    config = json.loads(file.read_text())
    if config.get("format") != _FORMAT:
        raise ValueError(f"{str(file)!r} is not an sklearn_cl3d encoder config.")
    if config.get("format_version", 0) > _FORMAT_VERSION:
        raise ValueError(
            f"{str(file)!r} has format version {config['format_version']}; this "
            f"sklearn_cl3d reads up to {_FORMAT_VERSION}. Upgrade sklearn_cl3d."
        )
    return config


def initialize_for_inference(estimator, input_shape=None, fitted=None):
    """Build an estimator's network for a per-sample input shape, without fitting.

    Sets ``input_shape_`` (and the other ``fitted`` attributes), then
    initialises the network on the estimator's device, as ``fit`` would
    before training. The random initial weights are drawn without touching
    the global torch random state.

    Parameters
    ----------
    estimator : BaseContrastivePretrainer
    input_shape : tuple of int, default=None
        Per-sample shape ``(C, D, H, W)`` or ``(F,)``; taken from ``fitted``
        when None.
    fitted : dict, default=None
        Fitted attributes to set first (name -> value).

    Returns
    -------
    estimator
    """
    for name, value in (fitted or {}).items():
        setattr(estimator, name, value)
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        if len(shape) not in (1, 4):
            raise ValueError(
                "input_shape must be the per-sample shape (C, D, H, W) of "
                f"volumes or (F,) of tabular features; got {input_shape!r}."
            )
        estimator.input_shape_ = shape
        if len(shape) == 1:
            estimator.n_features_in_ = shape[0]
    if not hasattr(estimator, "input_shape_"):
        raise ValueError("input_shape is required to build the network.")
    if not hasattr(estimator, "_base_seed_"):
        rng = np.random.default_rng(
            estimator.random_state
            if isinstance(estimator.random_state, int | np.integer)
            else None
        )
        estimator._base_seed_ = int(rng.integers(np.iinfo(np.int32).max))
    with torch.random.fork_rng(devices=[]), estimator._on_device() as device:
        torch.manual_seed(estimator._base_seed_)
        estimator.device_ = device
        estimator.initialize()
    return estimator


def load_pretrained(path, *, expected_class=None, trust_imports=False, **params):
    """Load an encoder written by :func:`save_pretrained`.

    The estimator is rebuilt from ``config.json`` (with ``params`` as
    overrides), its network is initialised for the saved input shape and the
    weights are read with ``torch.load(weights_only=True)``. The result
    transforms data right away; ``partial_fit`` continues training from
    these weights (with a fresh optimizer), ``fit`` starts over.

    Parameters
    ----------
    path : str or path-like
        Directory written by :func:`save_pretrained`.
    expected_class : type, default=None
        If given, the saved class must be this class or a subclass
        (``YAwarePretrainer.load_pretrained`` sets it).
    trust_imports : bool, default=False
        Allow the config to import classes and functions outside torch,
        skorch, scikit-learn and sklearn_cl3d (e.g. your own backbone class).
        Only for files you trust: importing runs module code.
    **params : dict
        Constructor parameters overriding the saved ones, e.g.
        ``device="cpu"``, ``backbone=MyEncoder`` or ``callbacks=[...]``.

    Returns
    -------
    estimator : BaseContrastivePretrainer
        Fitted (initialised) estimator with the saved weights.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from sklearn_cl3d import YAwarePretrainer
    >>> rng = np.random.default_rng(0)
    >>> X, age = rng.normal(size=(16, 6)), rng.uniform(20, 80, 16)
    >>> ssl = YAwarePretrainer(backbone="mlp", max_epochs=1, batch_size=8,
    ...                        random_state=0).fit(X, age)
    >>> d = ssl.save_pretrained(tempfile.mkdtemp())
    >>> YAwarePretrainer.load_pretrained(d, device="cpu").transform(X).shape
    (16, 64)
    """
    path = Path(path)
    config = _read_config(path)
    cls = _import(config["class"], trust_imports)
    base = _pretrainer_base()
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        raise ValueError(f"{config['class']!r} is not a contrastive pretrainer class.")
    if expected_class is not None and not issubclass(cls, expected_class):
        raise ValueError(
            f"{str(path)!r} holds a {cls.__name__}, not a "
            f"{expected_class.__name__}; load it with {cls.__name__}."
            "load_pretrained or sklearn_cl3d.load_pretrained."
        )
    saved = {k: v for k, v in config["params"].items() if k not in params}
    kwargs = {k: _decode(v, trust_imports) for k, v in saved.items()}
    kwargs.update(params)
    estimator = cls(**kwargs)
    fitted = {k: _decode(v, trust_imports) for k, v in config["fitted"].items()}
    if "input_shape_" in fitted:
        fitted["input_shape_"] = tuple(fitted["input_shape_"])
    initialize_for_inference(estimator, fitted=fitted)
    state = torch.load(path / WEIGHTS_NAME, map_location="cpu", weights_only=True)
    _network(estimator).load_state_dict(state)
    return estimator


# ------------------------------------------------------- plain state dicts


def yaware_key_map(key):
    """Map a key of the official y-Aware DenseNet checkpoint to ours.

    The official code (``Duplums/yAwareContrastiveLearning``) saves
    ``{"epoch", "model", "optimizer"}`` where ``"model"`` is the state dict
    of a ``DataParallel``-wrapped DenseNet: keys start with ``"module."``,
    the backbone is under ``features.`` and the encoder-mode head is
    ``hidden_representation`` (1024 -> 512) and ``head_projection``
    (512 -> 128); a classifier-mode network has ``features.norm5`` and
    ``classifier`` instead. The networks here are ``backbone`` + ``head``:

    ===================================  ====================================
    official                             sklearn_cl3d
    ===================================  ====================================
    ``module.features.*``                ``backbone.features.*``
    ``module.hidden_representation.*``   ``head.hidden_representation.*``
    ``module.head_projection.*``         ``head.head_projection.*``
    ``module.classifier.*``              ``head.*`` (fine-tuning network)
    ===================================  ====================================

    Parameters
    ----------
    key : str

    Returns
    -------
    str

    Examples
    --------
    >>> yaware_key_map("module.features.denseblock1.denselayer1.conv1.weight")
    'backbone.features.denseblock1.denselayer1.conv1.weight'
    >>> yaware_key_map("module.head_projection.bias")
    'head.head_projection.bias'
    """
    if key.startswith("module."):
        key = key[len("module.") :]
    for old, new in (
        ("features.", "backbone.features."),
        ("hidden_representation.", "head.hidden_representation."),
        ("head_projection.", "head.head_projection."),
        ("classifier.", "head."),
    ):
        if key.startswith(old):
            return new + key[len(old) :]
    return key


#: Built-in key maps of :func:`load_state_dict`.
KEY_MAPS = {"yaware": yaware_key_map}


def _as_key_function(key_map):
    if key_map is None:
        return lambda k: k
    if isinstance(key_map, str):
        if key_map not in KEY_MAPS:
            raise ValueError(
                f"key_map must be one of {sorted(KEY_MAPS)}, a dict of key "
                f"prefixes or a callable; got {key_map!r}."
            )
        return KEY_MAPS[key_map]
    if isinstance(key_map, Mapping):
        prefixes = sorted(key_map.items(), key=lambda kv: -len(kv[0]))

        def by_prefix(key):
            for old, new in prefixes:
                if key.startswith(old):
                    return None if new is None else new + key[len(old) :]
            return key

        return by_prefix
    if callable(key_map):
        return key_map
    raise TypeError(
        "key_map must be None, a built-in name, a dict of key prefixes or a "
        f"callable; got {type(key_map).__name__}."
    )


def _unwrap_state_dict(obj):
    """Find the tensor dict inside a checkpoint (``{"model": sd, ...}``)."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a state dict (a mapping); got {type(obj).__name__}.")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for key in ("model", "state_dict", "model_state_dict", "module"):
        inner = obj.get(key)
        if (
            isinstance(inner, Mapping)
            and inner
            and all(isinstance(v, torch.Tensor) for v in inner.values())
        ):
            return inner
    raise ValueError(
        "found no state dict: expected a mapping of tensors, or a checkpoint "
        "with one under 'model', 'state_dict', 'model_state_dict' or "
        f"'module' (top-level keys: {sorted(map(str, obj))[:10]})."
    )


def load_state_dict(target, state_dict, *, key_map=None, strict=True, input_shape=None):
    """Load plain PyTorch weights into an estimator's network (or a module).

    Parameters
    ----------
    target : estimator or torch.nn.Module
        An estimator whose ``module_`` receives the weights, or a module. An
        unfitted pretrainer is first initialised for ``input_shape`` (as
        ``fit`` would, without training), so released checkpoints can be used
        without pretraining anything.
    state_dict : mapping, str or path-like
        A state dict, a checkpoint dict holding one under ``"model"``,
        ``"state_dict"``, ``"model_state_dict"`` or ``"module"`` (the official
        y-Aware checkpoints use ``"model"``), or the path of such a file,
        read with ``torch.load(weights_only=True)``.
    key_map : {"yaware"}, dict, callable or None, default=None
        Renames the checkpoint's keys to the target's. ``"yaware"`` is
        :func:`yaware_key_map` (official y-Aware DenseNet checkpoints); a dict
        maps key *prefixes* (longest first; a None value drops the matching
        keys); a callable maps a key to a new key or None (dropped).
    strict : bool, default=True
        Require the mapped keys to match the target's exactly. With False,
        missing and unexpected keys are reported in the return value, but at
        least one key must match (so a wrong map never silently loads
        nothing).
    input_shape : tuple of int, default=None
        Per-sample input shape ``(C, D, H, W)`` or ``(F,)``, needed only to
        initialise an unfitted pretrainer.

    Returns
    -------
    result : NamedTuple with ``missing_keys`` and ``unexpected_keys``
        As :meth:`torch.nn.Module.load_state_dict`.

    Raises
    ------
    ValueError
        When keys do not match (``strict=True``) or none matches; the message
        lists examples of both sides.

    Examples
    --------
    Loading the released y-Aware DenseNet-121 checkpoint (keys
    ``module.features.*``, ``module.hidden_representation.*``, ...)::

        ssl = YAwarePretrainer()              # densenet121 backbone
        load_state_dict(ssl, "DenseNet121_BHB-10K_yAwareContrastive.pth",
                        key_map="yaware", input_shape=(1, 121, 145, 121))
        features = ssl.transform(X)           # 1024-d, no pretraining run

    A runnable round trip with a renamed prefix:

    >>> import torch
    >>> from sklearn_cl3d.nn import MLPEncoder
    >>> src, dst = MLPEncoder(4, hidden_dims=(3,)), MLPEncoder(4, hidden_dims=(3,))
    >>> sd = {"encoder." + k: v for k, v in src.state_dict().items()}
    >>> load_state_dict(dst, sd, key_map={"encoder.": ""})
    <All keys matched successfully>
    """
    if isinstance(state_dict, str | os.PathLike):
        state_dict = torch.load(state_dict, map_location="cpu", weights_only=True)
    state_dict = _unwrap_state_dict(state_dict)
    if isinstance(target, nn.Module):
        module = target
    else:
        if not getattr(target, "initialized_", False) or not hasattr(target, "module_"):
            if not isinstance(target, _pretrainer_base()):
                raise ValueError(
                    f"This {type(target).__name__} is not fitted: fit it before "
                    "loading weights into its network."
                )
            if input_shape is None and not hasattr(target, "input_shape_"):
                raise ValueError(
                    f"This {type(target).__name__} is not fitted: pass "
                    "input_shape=(C, D, H, W) (or (F,)) to build its network."
                )
            initialize_for_inference(target, input_shape=input_shape)
        module = _network(target)
    rename: Callable = _as_key_function(key_map)
    mapped = {}
    for key, value in state_dict.items():
        new = rename(key)
        if new is None:
            continue
        if new in mapped:
            raise ValueError(f"key_map maps two keys to {new!r}.")
        mapped[new] = value
    own = module.state_dict()
    missing = [k for k in own if k not in mapped]
    unexpected = [k for k in mapped if k not in own]
    matched = len(own) - len(missing)
    if matched == 0 or (strict and (missing or unexpected)):
        raise ValueError(
            f"The state dict does not fit the network: {matched} of "
            f"{len(own)} keys match; missing {len(missing)} (e.g. "
            f"{missing[:3]}), unexpected {len(unexpected)} (e.g. "
            f"{unexpected[:3]}). Pass a key_map (e.g. key_map='yaware' for "
            "official y-Aware checkpoints)"
            + ("" if not strict else " or strict=False")
            + "."
        )
    shapes = [
        f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in mapped.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if shapes:
        raise ValueError(
            "Shapes differ between the state dict and the network (checkpoint "
            "vs network): " + "; ".join(shapes[:5])
        )
    return module.load_state_dict(mapped, strict=strict)
