"""Backbone registry and :func:`build_backbone`.

Estimators accept a ``backbone`` parameter that may be a registered name, a
module class (or any callable returning a module), or an already built
module. :func:`build_backbone` turns any of these into a module, filling in
the input size (``in_channels`` or ``in_features``) from the data shape.
"""

from __future__ import annotations

import inspect
import math
from numbers import Integral

from torch import nn

from ._densenet import DenseNet3D, densenet121
from ._small import MLPEncoder, SmallCNN3D

__all__ = ["BACKBONES", "build_backbone"]

#: Registered backbone names and the class or factory each one builds.
BACKBONES = {
    "densenet121": densenet121,
    "densenet": DenseNet3D,
    "small3d": SmallCNN3D,
    "mlp": MLPEncoder,
}

# Builders that only accept volumes shaped (n, C, D, H, W).
_VOLUME_BUILDERS = (densenet121, DenseNet3D, SmallCNN3D)


def _normalize_shape(input_shape):
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise TypeError(
            "input_shape must be the per-sample shape as a tuple of ints, "
            f"e.g. (C, D, H, W) or (F,); got {input_shape!r}."
        ) from None
    if not shape or any(
        isinstance(s, bool) or not isinstance(s, Integral) or s < 1 for s in shape
    ):
        raise ValueError(
            "input_shape must be a non-empty tuple of positive ints, e.g. "
            f"(C, D, H, W) or (F,); got {input_shape!r}."
        )
    return tuple(int(s) for s in shape)


def _accepted_params(builder):
    try:
        return inspect.signature(builder).parameters
    except (TypeError, ValueError):
        return {}


def build_backbone(spec, input_shape, **kwargs) -> nn.Module:
    """Build a backbone module from a name, a class/callable or an instance.

    Parameters
    ----------
    spec : str, callable or torch.nn.Module
        A key of :data:`BACKBONES` (``"densenet121"``, ``"densenet"``,
        ``"small3d"``, ``"mlp"``), a class or callable returning a module, or
        a module instance, which is returned unchanged.
    input_shape : tuple of int
        Shape of one sample: ``(C, D, H, W)`` for volumes, ``(F,)`` for
        tabular features.
    **kwargs
        Keyword arguments for the class or callable. If it accepts
        ``in_channels`` and it is not given, ``input_shape[0]`` is passed; if
        it accepts ``in_features`` and it is not given,
        ``prod(input_shape)`` is passed. Not allowed with a module instance.

    Returns
    -------
    backbone : torch.nn.Module
        The module. It has an int attribute ``out_features``.

    Raises
    ------
    ValueError
        If ``spec`` is an unknown name, if kwargs are given together with a
        module instance, or if a volume backbone (``"densenet121"``,
        ``"densenet"``, ``"small3d"``) gets a per-sample shape that is not
        ``(C, D, H, W)``.
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
    out_features = getattr(backbone, "out_features", None)
    if isinstance(out_features, bool) or not isinstance(out_features, Integral):
        raise TypeError(
            f"backbone {label!r} must have an int attribute 'out_features' "
            "giving the size of its (n, out_features) output, so that the "
            f"projection head can be sized; got out_features={out_features!r}."
        )
    return backbone
