"""Checks of a saved encoder's files, run before anything is built.

:func:`read_files` verifies the manifest's checksums and the config's
structure; :func:`decode_params` and :func:`decode_fitted` rebuild values
from the allow-list only and check them against the estimator's parameter
constraints; :func:`load_weights` reads tensors with ``weights_only=True``
and refuses anything but finite dense tensors; :func:`check_network_fits`
builds the network on the ``meta`` device and compares it with the weights
before any memory is allocated.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import threading
import warnings
import zipfile
from numbers import Integral

import torch
from sklearn.utils._param_validation import (
    HasMethods,
    InvalidParameterError,
    StrOptions,
    validate_parameter_constraints,
)

from . import _registry
from ._codec import decode
from ._errors import PersistenceError
from ._manifest import (
    MANIFEST_NAME,
    _parse_json,
    read_bounded,
    read_manifest,
    verify_file,
)

#: File names inside a folder written by :func:`save_pretrained`.
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.pt"

_FORMAT = "sklearn_cl3d.pretrained"
#: 1: config.json + weights.pt, classes as import paths (read, with a
#: warning, without a manifest); 2: manifest.json, classes by registered name.
_FORMAT_VERSION = 2
#: A config holds parameters and small fitted arrays; a longer file is
#: refused unread.
MAX_CONFIG_BYTES = 16 << 20

_CONFIG_KEYS = {"format", "format_version", "class", "params", "fitted", "versions"}

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
    "local_augment_",
    "optimizer_",
    "prefixes_",
    "stages_",
    "virtual_params_",
}
_FITTED_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*_")

# What kind of registered object (see _registry.KINDS) each parameter may
# name; parameters not listed take plain data only.
_PARAM_KINDS = {
    "backbone": {"network"},
    "module": {"network"},
    "criterion": {"criterion"},
    "optimizer": {"optimizer"},
    "dataset": {"dataset"},
    "iterator_train": {"loader"},
    "iterator_valid": {"loader"},
    "kernel": {"kernel"},
    "preprocessing": {"transformer"},
}
_PREFIX_KINDS = {
    "backbone": {"network"},
    "module": {"network"},
    "criterion": {"kernel"},
}
# Constraints of skorch's parameters, which the estimators do not declare.
_SKORCH_CONSTRAINTS = {
    "module": [type],
    "criterion": [type],
    "optimizer": [type],
    "dataset": [type],
    "iterator_train": [type],
    "iterator_valid": [type],
    "train_split": [None, callable],
    "predict_nonlinearity": [StrOptions({"auto"}), None, callable],
    "warm_start": ["boolean"],
    "use_caching": ["boolean", StrOptions({"auto"})],
    "preprocessing": [None, list, tuple, HasMethods(["apply"])],
}
# Parameters never stored nor restored: training-session objects, and the
# settings of the loader itself.
_SESSION_PARAMS = ("callbacks",)


def is_loader_setting(name):
    return name.startswith("torch_load")


def network(estimator):
    """The estimator's ``module_`` without a distributed wrapper."""
    bare = getattr(estimator, "_bare_module", None)
    return bare() if bare is not None else estimator.module_


def holds_objects(value):
    if isinstance(value, list):
        return any(holds_objects(v) for v in value)
    if isinstance(value, dict):
        if {"__object__", "__estimator__", "__import__"} & set(value):
            return True
        return any(holds_objects(v) for v in value.values())
    return False


def check_finite(state, file):
    for key, tensor in state.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(
            torch.isfinite(tensor).all()
        ):
            raise PersistenceError(
                f"{file}: tensor {key!r} has NaN or infinite values."
            )


def read_files(path):
    """(config dict, weights bytes, config file, weights file, legacy)."""
    manifest_file = path / MANIFEST_NAME
    config_file = path / CONFIG_NAME
    weights_file = path / WEIGHTS_NAME
    if os.path.lexists(manifest_file):
        manifest = read_manifest(manifest_file)
        listed = set(manifest["files"])
        expected = {CONFIG_NAME, WEIGHTS_NAME}
        if listed != expected:
            raise PersistenceError(
                f"{str(manifest_file)!r} lists {sorted(listed)}; a saved encoder "
                f"has exactly {sorted(expected)}."
            )
        if manifest["files"][CONFIG_NAME]["size"] > MAX_CONFIG_BYTES:
            raise PersistenceError(
                f"{str(config_file)!r} is larger than {MAX_CONFIG_BYTES} bytes."
            )
        raw = verify_file(path, CONFIG_NAME, manifest, manifest_file)
        config = _parse_json(raw, config_file)
        _check_config(config, config_file, manifest=True)
        weights = verify_file(path, WEIGHTS_NAME, manifest, manifest_file)
        return config, weights, config_file, weights_file, False
    if not os.path.lexists(config_file):
        raise FileNotFoundError(
            f"{str(path)!r} is not a saved encoder: {MANIFEST_NAME} and "
            f"{CONFIG_NAME} are missing (write one with save_pretrained)."
        )
    config = _parse_json(
        read_bounded(config_file, MAX_CONFIG_BYTES, what="config"), config_file
    )
    _check_config(config, config_file, manifest=False)
    warnings.warn(
        f"{str(path)!r} was saved by an older sklearn_cl3d, without a manifest: "
        "its files cannot be checked against their checksums. Save it again "
        "to add one.",
        UserWarning,
        stacklevel=3,
    )
    try:
        size = os.path.getsize(weights_file)
    except OSError:
        raise PersistenceError(f"{str(weights_file)!r} is missing.") from None
    weights = read_bounded(weights_file, size, what="weights file")
    return config, weights, config_file, weights_file, True


def _check_config(config, file, *, manifest):
    where = repr(str(file))
    if not isinstance(config, dict) or config.get("format") != _FORMAT:
        raise PersistenceError(f"{where} is not an sklearn_cl3d encoder config.")
    version = config.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise PersistenceError(
            f"{where}: 'format_version' must be an integer; got {version!r:.40}."
        )
    if version > _FORMAT_VERSION:
        raise PersistenceError(
            f"{where} has format version {version}; this sklearn_cl3d reads up "
            f"to {_FORMAT_VERSION}. Upgrade sklearn_cl3d."
        )
    if version < 1:
        raise PersistenceError(f"{where}: invalid format version {version}.")
    if version >= 2 and not manifest:
        raise PersistenceError(
            f"{MANIFEST_NAME} is missing next to {where} (format version "
            f"{version} always has one): the folder is incomplete."
        )
    unknown = sorted(set(config) - _CONFIG_KEYS)
    if unknown:
        raise PersistenceError(f"{where}: unexpected keys {unknown[:5]}.")
    for key, kind in (("class", str), ("params", dict), ("fitted", dict)):
        if key not in config:
            raise PersistenceError(f"{where}: the key {key!r} is missing.")
        if not isinstance(config[key], kind):
            raise PersistenceError(
                f"{where}: {key!r} must be a JSON "
                f"{'string' if kind is str else 'object'}; got "
                f"{type(config[key]).__name__}."
            )
    versions = config.get("versions", {})
    if not isinstance(versions, dict) or not all(
        isinstance(v, str) for v in versions.values()
    ):
        raise PersistenceError(f"{where}: 'versions' must map names to strings.")


def check_trust_imports(trust_imports):
    if trust_imports is None:
        return
    if trust_imports:
        raise ValueError(
            "trust_imports=True is no longer supported: a saved encoder never "
            "imports anything named in its files. Pass your own classes and "
            "functions when loading instead, e.g. load_pretrained(path, "
            "custom_objects={'MyNet': MyNet})."
        )
    warnings.warn(
        "trust_imports is deprecated and has no effect (nothing is imported "
        "from a saved encoder); remove it. Your own classes go in "
        "custom_objects.",
        FutureWarning,
        stacklevel=3,
    )


def resolve_class(config, ctx, expected_class):
    found = decode({"__object__": config["class"]}, "class", ctx, kinds={"pretrainer"})
    pretrainers = _registry.pretrainer_classes()
    if not (isinstance(found, type) and issubclass(found, pretrainers)):
        raise ctx.error(
            "class", f"{config['class']!r} is not a contrastive pretrainer class."
        )
    if expected_class is not None and not issubclass(found, expected_class):
        raise ValueError(
            f"{ctx.file!r} holds a {found.__name__}, not a "
            f"{expected_class.__name__}; load it with {found.__name__}."
            "load_pretrained or sklearn_cl3d.load_pretrained."
        )
    return found


def _param_kinds(name):
    if "__" in name:
        prefix = name.split("__")[0]
        if prefix in _PREFIX_KINDS:
            return _PREFIX_KINDS[prefix]
        return set()
    return _PARAM_KINDS.get(name, set())


def _validate(constraints, name, value, cls, ctx=None):
    if name not in constraints:
        return
    try:
        validate_parameter_constraints(
            {name: constraints[name]}, {name: value}, caller_name=cls.__name__
        )
    except InvalidParameterError as exc:
        if ctx is None:
            raise
        raise ctx.error(f"params.{name}", str(exc)) from None


def decode_params(cls, saved, overrides, ctx):
    try:
        template = cls()
    except Exception as exc:
        raise ctx.error(
            "class", f"{cls.__name__}() cannot be built with its defaults ({exc})."
        ) from None
    names = set(template.get_params(deep=False))
    prefixes = (
        set(getattr(template, "prefixes_", ())) | {"module", "criterion", "optimizer"}
    ) - set(_SESSION_PARAMS)
    constraints = {**_SKORCH_CONSTRAINTS, **getattr(cls, "_parameter_constraints", {})}
    kwargs = {}
    for name, raw in saved.items():
        if name in overrides:
            continue
        if is_loader_setting(name):
            warnings.warn(
                f"{ctx.file!r}: the loader setting {name!r} is ignored (loader "
                "settings are never restored from a file).",
                UserWarning,
                stacklevel=4,
            )
            continue
        if name.split("__")[0] in _SESSION_PARAMS:
            raise ctx.error(
                f"params.{name}", "callbacks are never stored in a saved encoder."
            )
        prefix = name.split("__")[0] if "__" in name else None
        if name not in names and prefix not in prefixes:
            raise ctx.error(
                f"params.{name}", f"{cls.__name__} has no parameter {name!r}."
            )
        value = decode(raw, f"params.{name}", ctx, kinds=_param_kinds(name))
        if prefix in ("iterator_train", "iterator_valid", "dataset", "compile"):
            _check_loader_value(name, value, ctx)
        _validate(constraints, name, value, cls, ctx)
        kwargs[name] = value
    for name, value in overrides.items():
        _validate(constraints, name, value, cls)
    kwargs.update(overrides)
    return kwargs


def _check_loader_value(name, value, ctx):
    if value is not None and not isinstance(value, bool | int | float | str):
        raise ctx.error(
            f"params.{name}", "only plain values (numbers, strings) are restored."
        )
    if name.endswith("__num_workers"):
        limit = os.cpu_count() or 1
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not 0 <= value <= limit
        ):
            raise ctx.error(
                f"params.{name}",
                f"{value!r} is not a number of workers between 0 and this "
                f"machine's {limit} CPUs; override it when loading, e.g. "
                f"load_pretrained(path, {name}=0).",
            )


def decode_fitted(cls, saved, ctx):
    fitted = {}
    for name, raw in saved.items():
        if name != "_base_seed_" and (
            not _FITTED_NAME.fullmatch(name)
            or name in _RUNTIME_ATTRS
            or hasattr(cls, name)
        ):
            raise ctx.error(
                f"fitted.{name}", "not a fitted attribute a saved encoder may set."
            )
        if holds_objects(raw):
            raise ctx.error(f"fitted.{name}", "fitted attributes are plain data.")
        fitted[name] = decode(raw, f"fitted.{name}", ctx, kinds=set())
    if "input_shape_" not in fitted:
        raise ctx.error("fitted.input_shape_", "missing: the network cannot be sized.")
    shape = fitted["input_shape_"]
    if isinstance(shape, list):
        shape = tuple(shape)
    if (
        not isinstance(shape, tuple)
        or not 1 <= len(shape) <= 4
        or not all(
            isinstance(s, Integral) and not isinstance(s, bool) and 1 <= s < 2**31
            for s in shape
        )
    ):
        raise ctx.error(
            "fitted.input_shape_",
            f"{shape!r:.60} is not a per-sample shape of 1 to 4 positive ints.",
        )
    fitted["input_shape_"] = shape
    seed = fitted.get("_base_seed_", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ctx.error("fitted._base_seed_", f"{seed!r:.40} is not a seed.")
    return fitted


def load_weights(data, file):
    """The state dict in ``data``, read with ``weights_only=True``, checked."""
    where = repr(str(file))
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
    except zipfile.BadZipFile:
        raise PersistenceError(
            f"{where} is not a torch weights file (empty, truncated or damaged)."
        ) from None
    if any(info.compress_type != zipfile.ZIP_STORED for info in infos) or sum(
        info.file_size for info in infos
    ) > len(data):
        raise PersistenceError(
            f"{where} holds compressed records, which torch.save never writes."
        )
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise PersistenceError(
            f"{where} holds objects other than tensors, which are never "
            f"unpickled ({first[:200]})."
        ) from None
    except Exception as exc:  # truncated zip records, bad storages, ...
        raise PersistenceError(
            f"{where} cannot be read as torch weights ({type(exc).__name__}: "
            f"{str(exc)[:200]}): truncated or damaged."
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise PersistenceError(
            f"{where} must hold a dict of parameter names to tensors; got "
            f"{type(state).__name__}."
        )
    for key, tensor in state.items():
        if tensor.layout is not torch.strided or tensor.is_quantized:
            raise PersistenceError(f"{where}: tensor {key!r} is not a dense tensor.")
    check_finite(state, where)
    return state


class _RegistrationBudget:
    """Raise when the building thread registers more than ``limit``
    parameters, buffers and submodules: a config cannot make the network
    builder run for long (say, a million layers) before the shapes are
    compared with the weights."""

    def __init__(self, limit, file):
        self.limit = limit
        self.file = file
        self.count = 0
        self.thread = threading.get_ident()

    def _hook(self, *args):
        if threading.get_ident() != self.thread:
            return None
        self.count += 1
        if self.count > self.limit:
            raise PersistenceError(
                f"{self.file}: the network it describes has more parts than its "
                f"weights file holds tensors ({self.limit} registrations)."
            )
        return None

    def __enter__(self):
        register = torch.nn.modules.module
        self.handles = [
            register.register_module_parameter_registration_hook(self._hook),
            register.register_module_buffer_registration_hook(self._hook),
            register.register_module_module_registration_hook(self._hook),
        ]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        return False


def check_network_fits(estimator, fitted, state, config_file, weights_file):
    """Build the network on the ``meta`` device (no memory) and compare its
    tensors with the weights file, before anything is allocated."""
    for name, value in fitted.items():
        setattr(estimator, name, value)
    on_device = getattr(estimator, "_on_device", None)
    init_context = getattr(estimator, "_current_init_context", None)
    budget = _RegistrationBudget(8 * len(state) + 1024, repr(str(config_file)))
    try:
        with (
            on_device() if on_device is not None else contextlib.nullcontext(),
            init_context("module") if init_context else contextlib.nullcontext(),
            budget,
            torch.device("meta"),
        ):
            estimator.initialize_module()
            expected = network(estimator).state_dict()
            buffers = list(network(estimator).named_buffers())
    except PersistenceError:
        raise
    except Exception as exc:
        raise PersistenceError(
            f"{str(config_file)!r}: the network it describes cannot be built "
            f"({type(exc).__name__}: {str(exc)[:300]})."
        ) from None
    finally:
        estimator.__dict__.pop("module_", None)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise PersistenceError(
            f"{str(weights_file)!r} does not match the network of "
            f"{str(config_file)!r}: missing {len(missing)} tensors (e.g. "
            f"{missing[:3]}), unexpected {len(unexpected)} (e.g. {unexpected[:3]})."
        )
    wrong = [
        f"{k}: {tuple(state[k].shape)} {state[k].dtype} in the file, "
        f"{tuple(v.shape)} {v.dtype} in the network"
        for k, v in expected.items()
        if tuple(v.shape) != tuple(state[k].shape) or v.dtype != state[k].dtype
    ]
    if wrong:
        raise PersistenceError(
            f"{str(weights_file)!r} does not match the network of "
            f"{str(config_file)!r} (it would be a different size): "
            + "; ".join(wrong[:3])
        )
    extra = sum(b.numel() for name, b in buffers if name not in expected)
    held = sum(t.numel() for t in state.values())
    if extra > held + (1 << 20):
        raise PersistenceError(
            f"{str(config_file)!r} describes a network whose unsaved buffers "
            f"({extra} values) are larger than the weights file holds ({held})."
        )
