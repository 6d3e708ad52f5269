"""Backbone registry and :func:`build_backbone`.

Estimators accept a ``backbone`` parameter that may be a registered name, a
module class (or any callable returning a module), or an already built
module. :func:`build_backbone` turns any of these into a module, filling in
the input size (``in_channels`` or ``in_features``) from the data shape.
Volume backbones need a per-sample shape ``(C, D, H, W)`` and 2-D (slice)
backbones a per-sample shape ``(C, H, W)``.
"""

from __future__ import annotations

import inspect
import math
from numbers import Integral

from torch import nn

from ._2d import ResNet2D, TinyNet2D, resnet18_2d
from ._densenet import DenseNet3D, densenet121
from ._small import MLPEncoder, SmallCNN3D

__all__ = ["BACKBONES", "build_backbone"]

#: Registered backbone names and the class or factory each one builds:
#: ``"densenet121"`` (:func:`densenet121`), ``"densenet"`` (:class:`DenseNet3D`)
#: and ``"small3d"`` (:class:`SmallCNN3D`) for volumes ``(n, C, D, H, W)``;
#: ``"tinynet"`` (:class:`TinyNet2D`, slices of at least 156x156) and
#: ``"resnet18"`` (:func:`resnet18_2d`) for 2-D slices ``(n, C, H, W)``;
#: ``"mlp"`` (:class:`MLPEncoder`) for tabular features ``(n, F)``.
BACKBONES = {
    "densenet121": densenet121,
    "densenet": DenseNet3D,
    "small3d": SmallCNN3D,
    "tinynet": TinyNet2D,
    "resnet18": resnet18_2d,
    "mlp": MLPEncoder,
}

# Builders that only accept volumes shaped (n, C, D, H, W).
_VOLUME_BUILDERS = (densenet121, DenseNet3D, SmallCNN3D)

# Builders that only accept 2-D slices shaped (n, C, H, W).
_IMAGE_BUILDERS = (TinyNet2D, ResNet2D, resnet18_2d)


def _normalize_shape(input_shape):
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise TypeError(
            "input_shape must be the per-sample shape as a tuple of ints, "
            f"e.g. (C, D, H, W), (C, H, W) or (F,); got {input_shape!r}."
        ) from None
    if not shape or any(
        isinstance(s, bool) or not isinstance(s, Integral) or s < 1 for s in shape
    ):
        raise ValueError(
            "input_shape must be a non-empty tuple of positive ints, e.g. "
            f"(C, D, H, W), (C, H, W) or (F,); got {input_shape!r}."
        )
    return tuple(int(s) for s in shape)


def _accepted_params(builder):
    try:
        return inspect.signature(builder).parameters
    except (TypeError, ValueError):
        return {}


def _densenet_min_input_size(net):
    """Smallest spatial size a :class:`DenseNet3D` runs on.

    The stem divides each size by 4 (rounding up: ``n -> (n + 3) // 4`` for
    ``n >= 1``) and each of the ``len(block_config) - 1`` transitions halves
    it with a 2x2x2 average pool (rounding down), which needs at least 2
    voxels: ``2 ** (len(block_config) + 1) - 3`` in all (29 for
    DenseNet-121).
    """
    return 2 ** (len(net.block_config) + 1) - 3


def _check_min_input_size(obj, shape, label, min_size=None):
    """Raise ValueError if a spatial size is below ``obj.min_input_size``."""
    if min_size is None:
        min_size = getattr(obj, "min_input_size", None)
    if isinstance(min_size, bool) or not isinstance(min_size, Integral):
        return
    spatial = shape[1:]
    if spatial and any(s < min_size for s in spatial):
        axes = {2: "(H, W)", 3: "(D, H, W)"}.get(len(spatial), "")
        dims = "x".join([str(int(min_size))] * len(spatial))
        raise ValueError(
            f"input spatial size {axes}={spatial} is below the minimum {dims} "
            f"of backbone {label!r} (per-sample shape {shape}); use larger "
            "inputs or another backbone."
        )


def build_backbone(spec, input_shape, **kwargs) -> nn.Module:
    """Build a backbone module from a name, a class/callable or an instance.

    Parameters
    ----------
    spec : str, callable or torch.nn.Module
        A key of :data:`BACKBONES` (``"densenet121"``, ``"densenet"``,
        ``"small3d"``, ``"tinynet"``, ``"resnet18"``, ``"mlp"``), a class or
        callable returning a module, or a module instance, which is returned
        unchanged.
    input_shape : tuple of int
        Shape of one sample: ``(C, D, H, W)`` for volumes, ``(C, H, W)`` for
        2-D slices, ``(F,)`` for tabular features.
    **kwargs
        Keyword arguments for the class or callable. If it accepts
        ``in_channels`` and it is not given, ``input_shape[0]`` is passed; if
        it accepts ``in_features`` and it is not given,
        ``prod(input_shape)`` is passed. Not allowed with a module instance.
        If the class, callable or instance has an int attribute
        ``min_input_size`` (as :class:`TinyNet2D`), every spatial size
        ``input_shape[1:]`` must be at least that value; a
        :class:`DenseNet3D` needs ``2 ** (len(block_config) + 1) - 3`` voxels
        per axis (29 for DenseNet-121).

    Returns
    -------
    backbone : torch.nn.Module
        The module. It has an int attribute ``out_features``.

    Raises
    ------
    ValueError
        If ``spec`` is an unknown name, if kwargs are given together with a
        module instance, if a volume backbone (``"densenet121"``,
        ``"densenet"``, ``"small3d"``) gets a per-sample shape that is not
        ``(C, D, H, W)``, if a 2-D backbone (``"tinynet"``, ``"resnet18"``)
        gets a per-sample shape that is not ``(C, H, W)``, or if the spatial
        size is below the backbone's minimum input size.
    TypeError
        If ``spec`` is of an unsupported type, or the built object is not a
        ``torch.nn.Module`` with an int ``out_features`` attribute.

    Examples
    --------
    >>> from sklearn_cl3d.nn import build_backbone
    >>> build_backbone("small3d", (2, 16, 16, 16), channels=(4, 8)).in_channels
    2
    >>> build_backbone("mlp", (1, 4, 5)).in_features
    20
    >>> build_backbone("resnet18", (3, 64, 64)).in_channels
    3
    """
    shape = _normalize_shape(input_shape)

    if isinstance(spec, nn.Module):
        if kwargs:
            raise ValueError(
                "backbone is an already built nn.Module instance, so keyword "
                f"arguments {sorted(kwargs)} cannot be applied to it. Pass the "
                "backbone class or registered name instead, or drop the "
                "arguments."
            )
        backbone = spec
        label = type(spec).__name__
        _check_min_input_size(spec, shape, label)
    else:
        if isinstance(spec, str):
            if spec not in BACKBONES:
                raise ValueError(
                    f"Unknown backbone {spec!r}. Valid backbone names are: "
                    f"{', '.join(map(repr, BACKBONES))}; a torch.nn.Module "
                    "class, callable or instance is also accepted."
                )
            builder = BACKBONES[spec]
            label = spec
        elif callable(spec):
            builder = spec
            label = getattr(spec, "__name__", repr(spec))
        else:
            raise TypeError(
                "backbone must be a registered name "
                f"({', '.join(map(repr, BACKBONES))}), a torch.nn.Module class "
                f"or callable, or a torch.nn.Module instance; got {spec!r}."
            )

        if builder in _VOLUME_BUILDERS and len(shape) != 4:
            raise ValueError(
                f"backbone {label!r} needs volumes shaped (n, C, D, H, W), i.e. "
                f"a per-sample shape (C, D, H, W), but got per-sample shape "
                f"{shape}. For tabular features of shape (n, F) use "
                "backbone='mlp'."
            )
        if builder in _IMAGE_BUILDERS and len(shape) != 3:
            raise ValueError(
                f"backbone {label!r} needs 2-D slices shaped (n, C, H, W), i.e. "
                f"a per-sample shape (C, H, W), but got per-sample shape "
                f"{shape}. For volumes (n, C, D, H, W) use a 3-D backbone such "
                "as 'densenet121' or 'small3d'."
            )
        _check_min_input_size(builder, shape, label)

        params = _accepted_params(builder)
        kwargs = dict(kwargs)
        if "in_channels" in params and "in_channels" not in kwargs:
            kwargs["in_channels"] = shape[0]
        if "in_features" in params and "in_features" not in kwargs:
            kwargs["in_features"] = math.prod(shape)
        backbone = builder(**kwargs)

    if not isinstance(backbone, nn.Module):
        raise TypeError(
            f"backbone {label!r} built an object of type "
            f"{type(backbone).__name__}, not a torch.nn.Module."
        )
    if isinstance(backbone, DenseNet3D) and len(shape) == 4:
        _check_min_input_size(
            backbone, shape, label, _densenet_min_input_size(backbone)
        )
    out_features = getattr(backbone, "out_features", None)
    if isinstance(out_features, bool) or not isinstance(out_features, Integral):
        raise TypeError(
            f"backbone {label!r} must have an int attribute 'out_features' "
            "giving the size of its (n, out_features) output, so that the "
            f"projection head can be sized; got out_features={out_features!r}."
        )
    return backbone
