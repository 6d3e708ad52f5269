"""Plain PyTorch weights (released checkpoints) into an estimator's network."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import torch
from torch import nn

from . import _registry
from ._checks import network as _network
from ._pretrained import initialize_for_inference

__all__ = ["KEY_MAPS", "load_state_dict", "yaware_key_map"]


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
            if not isinstance(target, _registry.pretrainer_classes()):
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
