"""Named augmentation pipelines of the official y-Aware and WSP code.

:func:`make_augmentation` turns the ``augmentation`` parameter of the
estimators (a preset name, a callable or None) into a callable
``f(x, generator=None)``. The presets leave out the per-sample z-scoring,
which the estimators apply themselves with :class:`ZScore` first.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor

from ._affine import AxisFlip, RandomAreaCrop, RandomRotate, RandomTranslate
from ._transforms import (
    Compose,
    Cutout,
    Flip,
    GaussianBlur,
    GaussianNoise,
    RandomApply,
    RandomResizedCrop,
)

__all__ = ["AUGMENTATION_PRESETS", "make_augmentation"]

#: Names accepted by :func:`make_augmentation`.
AUGMENTATION_PRESETS = ("cutout", "all", "crop", "wsp", "none")


class _CallWithoutGenerator:
    """Adapter for a user callable ``f(x)`` that takes no ``generator``."""

    def __init__(self, func: Callable):
        self.func = func

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.func(x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.func!r})"


def _accepts_generator(func: Callable) -> bool:
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return False
    for param in signature.parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            return True
        if param.name == "generator" and param.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        ):
            return True
    return False


def _invalid(spec) -> ValueError:
    names = ", ".join(repr(name) for name in AUGMENTATION_PRESETS)
    return ValueError(
        f"`augmentation` must be one of {names}, None, or a callable "
        f"f(x, generator=None); got {spec!r}."
    )


def make_augmentation(spec) -> Callable | None:
    """Build the augmentation callable described by ``spec``.

    Parameters
    ----------
    spec : {"cutout", "all", "crop", "wsp", "none"}, callable or None
        - ``"cutout"``: one random box of ``ceil(size / 4)`` voxels set to 0
          in every view (the setting of the released y-Aware checkpoint).
        - ``"all"``: the official ``all_tf`` pipeline, in order: flip, blur,
          noise, cutout and resized crop, each applied with probability 0.5.
        - ``"crop"``: random crop of ``ceil(0.75 * size)`` voxels resized
          back to full size, in every view.
        - ``"wsp"``: the 2-D pipeline of the official WSP code (kornia), in
          order: horizontal flip (:class:`AxisFlip` ``(-1)``), vertical flip
          (:class:`AxisFlip` ``(-2)``), :class:`RandomAreaCrop` of area
          fraction 0.7 and aspect ratio in (3/4, 4/3) resized back to full
          size, :class:`RandomTranslate` by up to 20 % of the height and
          width, and :class:`RandomRotate` by up to 30 degrees, each applied
          with probability 0.5 independently per sample. It expects
          ``(B, C, H, W)`` batches; on ``(B, C, D, H, W)`` batches it acts in
          the (H, W) plane, the same way for every depth slice.
        - ``"none"`` or None: no augmentation.
        - a callable: returned unchanged if it accepts a ``generator``
          keyword, otherwise wrapped so that it is called as ``f(x)``.

        None of the presets z-scores the input: the estimators apply
        :class:`ZScore` before the augmentation.

    Returns
    -------
    callable or None
        ``f(x, generator=None)`` mapping a ``(B, C, *spatial)`` batch to a new
        batch of the same shape, or None for no augmentation.

    Raises
    ------
    ValueError
        If ``spec`` is neither a preset name, None, nor a callable.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.augment import make_augmentation
    >>> aug = make_augmentation("cutout")
    >>> x = torch.ones(2, 1, 8, 8, 8)
    >>> int((aug(x, generator=torch.Generator().manual_seed(0)) == 0).sum())
    16
    >>> make_augmentation("none") is None
    True
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec == "none":
            return None
        if spec == "cutout":
            return Compose([Cutout(fraction=0.25, value=0.0)])
        if spec == "crop":
            return Compose([RandomResizedCrop(fraction=0.75)])
        if spec == "wsp":
            return Compose(
                [
                    RandomApply(AxisFlip(axis=-1), p=0.5),
                    RandomApply(AxisFlip(axis=-2), p=0.5),
                    RandomApply(RandomAreaCrop(scale=0.7, ratio=(3 / 4, 4 / 3)), p=0.5),
                    RandomApply(RandomTranslate(max_fraction=0.2), p=0.5),
                    RandomApply(RandomRotate(degrees=30.0), p=0.5),
                ]
            )
        if spec == "all":
            return Compose(
                [
                    RandomApply(Flip(include_channel_axis=True), p=0.5),
                    RandomApply(GaussianBlur(sigma=(0.1, 1.0)), p=0.5),
                    RandomApply(GaussianNoise(std=(0.1, 1.0)), p=0.5),
                    RandomApply(Cutout(fraction=0.25, value=0.0), p=0.5),
                    RandomApply(RandomResizedCrop(fraction=0.75), p=0.5),
                ]
            )
        raise _invalid(spec)
    if isinstance(spec, type) or not callable(spec):
        # a class is callable, but calling it would build an object, not a view
        raise _invalid(spec)
    if _accepts_generator(spec):
        return spec
    return _CallWithoutGenerator(spec)
