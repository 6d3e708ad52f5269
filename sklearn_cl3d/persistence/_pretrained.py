"""Saving and loading pretrained encoders as data: weights, config, manifest.

A saved encoder is a folder holding

- ``weights.pt``: the network's ``state_dict`` (``torch.save``), read back
  with ``torch.load(weights_only=True)``;
- ``config.json``: the estimator's class and constructor parameters, and the
  fitted attributes that size the network (``input_shape_``, ...), as JSON;
  classes and functions appear only as names from an allow-list;
- ``manifest.json``: each file's size and SHA-256, written last.

See the "Security" page of the documentation for what loading refuses.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from .._rng import FitRandomness
from . import _checks, _registry
from ._checks import (
    _FITTED_NAME,
    _FORMAT,
    _FORMAT_VERSION,
    _RUNTIME_ATTRS,
    _SESSION_PARAMS,
    CONFIG_NAME,
    WEIGHTS_NAME,
    check_finite,
    check_network_fits,
    check_trust_imports,
    decode_fitted,
    decode_params,
    holds_objects,
    is_loader_setting,
    load_weights,
    network,
    read_files,
    resolve_class,
)
from ._codec import DecodeContext, encode, object_name
from ._errors import PersistenceError
from ._files import recover_folder, replace_folder
from ._manifest import MANIFEST_NAME

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "initialize_for_inference",
    "load_pretrained",
    "save_pretrained",
]

# ---------------------------------------------------------------- saving


def _fitted_attributes(estimator):
    attrs = {}
    cls = type(estimator)
    for name, value in vars(estimator).items():
        if name != "_base_seed_" and (
            not _FITTED_NAME.fullmatch(name) or name in _RUNTIME_ATTRS
        ):
            continue
        if name != "_base_seed_" and hasattr(cls, name):
            continue
        try:
            encoded = encode(value, name)
        except PersistenceError:
            continue  # runtime objects (modules, datasets, ...) are rebuilt
        if holds_objects(encoded):
            continue
        attrs[name] = encoded
    return attrs


def _same(a, b):
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    try:
        return bool(a == b)
    except Exception:  # arrays, exotic __eq__
        return False


def _version():
    package = sys.modules.get(__name__.split(".")[0])
    return str(getattr(package, "__version__", "unknown"))


def _check_save_target(path):
    if path.parent == path or path == Path.cwd():
        raise ValueError(
            f"{str(path)!r} cannot be replaced by a saved encoder (a filesystem "
            "root or the current folder); save into a folder of its own."
        )
    if os.path.lexists(path) and not path.is_dir():
        raise ValueError(f"{str(path)!r} exists and is not a directory.")
    if path.is_dir():
        ours = {CONFIG_NAME, WEIGHTS_NAME, MANIFEST_NAME}
        other = sorted(p.name for p in path.iterdir() if p.name not in ours)
        if other:
            raise ValueError(
                f"{str(path)!r} holds files that are not part of a saved encoder "
                f"({', '.join(other[:5])}): save_pretrained replaces the whole "
                "folder, so save into a new or empty folder, or move them."
            )


def save_pretrained(estimator, path, *, exclude=()):
    """Save a fitted pretrainer's network and configuration to a folder.

    Writes ``weights.pt`` (the network's ``state_dict`` on the CPU),
    ``config.json`` (class, constructor parameters, fitted attributes) and
    ``manifest.json`` (the size and SHA-256 of both) into a new sibling
    folder, then swaps it in with two renames, keeping the previous version
    until the new one is complete: a crash or kill at any moment leaves the
    old encoder or the new one, whole (an interruption between the renames
    is repaired by the next save or load). The parent folder is created if
    needed; ``path`` must be new, empty, or an encoder saved earlier.

    Parameters
    ----------
    estimator : BaseContrastivePretrainer
        A fitted pretrainer (:class:`~sklearn_cl3d.YAwarePretrainer`, ...).
    path : str or path-like
        Folder to write.
    exclude : iterable of str, default=()
        Constructor parameters not to store (they get their class defaults,
        or load-time overrides, when loading), e.g. ``("kernel",)`` for a
        kernel given as a lambda. ``callbacks`` and the loader settings
        (``torch_load_kwargs``) are never stored.

    Returns
    -------
    path : pathlib.Path
        The folder.

    Raises
    ------
    ValueError
        If the estimator is not fitted, if ``path`` is a file or a folder
        holding other files, if a parameter that is not its class default
        can be stored neither as JSON nor as the name of a class or function
        (the message lists them all), or if the weights are not finite.

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
    ...                        max_epochs=1, batch_size=8, random_state=0,
    ...                        verbose=0).fit(X)
    >>> d = ssl.save_pretrained(tempfile.mkdtemp() + "/encoder")
    >>> sorted(p.name for p in d.iterdir())
    ['config.json', 'manifest.json', 'weights.pt']
    >>> again = load_pretrained(d)
    >>> bool(np.allclose(again.transform(X), ssl.transform(X)))
    True
    """
    pretrainers = _registry.pretrainer_classes()
    if not isinstance(estimator, pretrainers):
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
    cls_name = object_name(cls, "class")
    try:
        defaults = cls().get_params(deep=False)
    except Exception:  # a class without a default constructor
        defaults = {}
    params, problems = {}, []
    for name, value in estimator.get_params(deep=False).items():
        if (
            name in exclude
            or name.split("__")[0] in _SESSION_PARAMS
            or is_loader_setting(name)
        ):
            continue
        try:
            params[name] = encode(value, name)
        except PersistenceError as exc:
            if name in defaults and _same(value, defaults[name]):
                continue  # the default comes back by itself
            problems.append(str(exc))
    if problems:
        raise ValueError(
            "These parameters cannot be stored as JSON or as the name of a "
            "class or function:\n  - " + "\n  - ".join(problems) + "\nUse "
            "classes and functions defined with def/class, or "
            "save_pretrained(path, exclude=[...]) and pass the objects again "
            "to load_pretrained as keyword overrides."
        )
    config = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "class": cls_name,
        "params": params,
        "fitted": _fitted_attributes(estimator),
        "versions": {"sklearn_cl3d": _version(), "torch": torch.__version__},
    }
    text = json.dumps(config, indent=2, sort_keys=True, allow_nan=False)
    if len(text.encode("utf-8")) > _checks.MAX_CONFIG_BYTES:
        raise ValueError(
            f"The config of this {cls.__name__} would be larger than "
            f"{_checks.MAX_CONFIG_BYTES} bytes, which load_pretrained refuses; "
            "leave the large parameters out with exclude=[...]."
        )
    state = {k: v.detach().cpu() for k, v in network(estimator).state_dict().items()}
    check_finite(state, "the network to save")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    given = Path(path)
    path = Path(os.path.realpath(given))
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(path)
    _check_save_target(path)
    replace_folder(
        path, {WEIGHTS_NAME: buffer.getvalue(), CONFIG_NAME: text.encode("utf-8")}
    )
    return given


# --------------------------------------------------------------- loading


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

    Examples
    --------
    >>> from sklearn_cl3d import SimCLRPretrainer
    >>> ssl = SimCLRPretrainer(backbone="mlp", hidden_dim=8, projection_dim=4,
    ...                        device="cpu", random_state=0)
    >>> initialize_for_inference(ssl, input_shape=(6,)).module_.backbone.in_features
    6
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
    # the global torch RNG is this load's own (under the process-wide lock
    # that fits in other threads respect), seeded as before
    with FitRandomness(estimator._base_seed_).active():
        with estimator._on_device() as device:
            estimator.device_ = device
            estimator.initialize()
    return estimator


def load_pretrained(
    path, *, custom_objects=None, expected_class=None, trust_imports=None, **params
):
    """Load an encoder written by :func:`save_pretrained`.

    Loading treats the folder as data. The manifest's checksums are checked
    first; the config may name classes and functions only from the
    library's allow-list (its estimators, networks, losses, kernels and
    preprocessing transformers, the optimisers of ``torch.optim`` and the
    losses of ``torch.nn``) or from ``custom_objects``, and nothing named in
    it is ever imported; every parameter is checked against the estimator's
    constraints; the network is first built on the ``meta`` device (no
    memory) and its tensor shapes compared with the weights file, read with
    ``torch.load(weights_only=True)``; weights with NaN or infinite values
    are refused. Only then is the network allocated and filled. Loader
    settings (``torch_load_kwargs``) are never restored from the file.

    The result transforms data right away; ``partial_fit`` continues
    training from these weights (with a fresh optimizer), ``fit`` starts
    over.

    Parameters
    ----------
    path : str or path-like
        Folder written by :func:`save_pretrained`.
    custom_objects : dict, default=None
        Your own classes and functions the config names, e.g.
        ``{"MyNet": MyNet}``: keyed by their name (or by the full
        ``"module:QualName"`` written in the config). Only names outside the
        allow-list are looked up here.
    expected_class : type, default=None
        If given, the saved class must be this class or a subclass
        (``YAwarePretrainer.load_pretrained`` sets it).
    trust_imports : None
        Deprecated, no effect: ``True`` raises a ``ValueError`` (nothing is
        imported from a saved file any more; use ``custom_objects``), and
        ``False`` gives a ``FutureWarning``.
    **params : dict
        Constructor parameters overriding the saved ones, e.g.
        ``device="cpu"``, ``backbone=MyEncoder`` or ``callbacks=[...]``.

    Returns
    -------
    estimator : BaseContrastivePretrainer
        Fitted (initialised) estimator with the saved weights.

    Raises
    ------
    PersistenceError
        A ``ValueError`` naming the file (and the config key) for anything
        wrong in the folder: a file missing or changed since saving, invalid
        JSON, an unknown key, a name outside the allow-list, a value outside
        the parameter's constraints, weights that do not match the network
        or are not finite.
    FileNotFoundError
        If ``path`` is not a saved encoder at all.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from sklearn_cl3d import YAwarePretrainer
    >>> rng = np.random.default_rng(0)
    >>> X, age = rng.normal(size=(16, 6)), rng.uniform(20, 80, 16)
    >>> ssl = YAwarePretrainer(backbone="mlp", max_epochs=1, batch_size=8,
    ...                        random_state=0, verbose=0).fit(X, age)
    >>> d = ssl.save_pretrained(tempfile.mkdtemp() + "/encoder")
    >>> YAwarePretrainer.load_pretrained(d, device="cpu").transform(X).shape
    (16, 64)
    """
    check_trust_imports(trust_imports)
    custom = _registry.check_custom_objects(custom_objects)
    if expected_class is not None:
        custom.setdefault(expected_class.__name__, expected_class)
    path = Path(os.path.realpath(path))
    recover_folder(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{str(path)!r} is not a saved encoder: no such folder (write one "
            "with save_pretrained)."
        )
    config, weights, config_file, weights_file, legacy = read_files(path)
    ctx = DecodeContext(str(config_file), custom, legacy=legacy)
    cls = resolve_class(config, ctx, expected_class)
    kwargs = decode_params(cls, config["params"], params, ctx)
    fitted = decode_fitted(cls, config["fitted"], ctx)
    try:
        estimator = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise PersistenceError(
            f"{str(config_file)!r}: {cls.__name__} cannot be built from its "
            f"parameters ({exc})."
        ) from None
    state = load_weights(weights, weights_file)
    check_network_fits(estimator, fitted, state, config_file, weights_file)
    try:
        initialize_for_inference(estimator, fitted=fitted)
        network(estimator).load_state_dict(state)
    except Exception as exc:
        raise PersistenceError(
            f"{str(config_file)!r}: the {cls.__name__} it describes cannot be "
            f"initialised ({type(exc).__name__}: {str(exc)[:300]})."
        ) from None
    return estimator
