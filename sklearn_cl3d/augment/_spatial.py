"""Spatial operations of the y-Aware views: random axis flip
(:class:`Flip`), a random box filled with a constant (:class:`Cutout`) and a
random box resized back to full size (:class:`RandomResizedCrop`, with the
separable (bi/tri)linear resize)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._core import (
    _box_size,
    _check_scalar,
    _compute_dtype,
    _random_starts,
    _RandomOp,
)

__all__ = ["Flip", "Cutout", "RandomResizedCrop"]


class Flip(_RandomOp):
    """Mirror each sample along one randomly chosen axis.

    For each sample, one axis is drawn uniformly among the channel axis and
    the spatial axes (official behaviour: ``np.flip`` along an axis drawn from
    all axes of a ``(C, *spatial)`` array), and the sample is reversed along
    it. With a single channel, a channel flip leaves the sample unchanged, so
    each of three spatial axes is flipped with probability 1/4.

    Parameters
    ----------
    include_channel_axis : bool, default=True
        Whether the channel axis is one of the candidate axes. If False, the
        axis is drawn among the spatial axes only.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.augment import Flip
    >>> x = torch.arange(4.0).view(1, 1, 4)
    >>> Flip(include_channel_axis=False)(x)
    tensor([[[3., 2., 1., 0.]]])
    """

    _param_names = ("include_channel_axis",)

    def __init__(self, include_channel_axis: bool = True):
        if not isinstance(include_channel_axis, bool):
            raise ValueError(
                f"`include_channel_axis` must be a bool, got {include_channel_axis!r}."
            )
        self.include_channel_axis = include_channel_axis

    def sample_params(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Draw the flipped axis of each sample.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, \\*spatial)
            Batch the parameters are drawn for.
        generator : torch.Generator or None, default=None
            Source of randomness, on the device of ``x``.

        Returns
        -------
        dict
            ``{"dim": LongTensor of shape (B,)}``, the dimension of ``x``
            reversed for each sample (1 is the channel axis).
        """
        first = 1 if self.include_channel_axis else 2
        dim = torch.randint(
            first, x.ndim, (x.shape[0],), generator=generator, device=x.device
        )
        return {"dim": dim}

    def apply(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Flip each sample along ``params["dim"]``.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, \\*spatial)
            Batch to flip.
        params : dict
            Output of :meth:`sample_params`.

        Returns
        -------
        torch.Tensor
            Flipped batch, same shape, dtype and device as ``x``.
        """
        out = torch.empty_like(x)
        self._apply_into(x, params, out)
        return out

    def _apply_into(self, x: Tensor, params: dict[str, Tensor], out: Tensor) -> None:
        # one flip per sample: much faster than a per-sample gather; the
        # flipped copy is made before it is written (``out`` may be ``x``)
        for b, axis in enumerate(params["dim"].tolist()):
            if x.shape[axis] > 1:
                out[b].copy_(x[b].flip(axis - 1))
            elif out is not x:
                out[b].copy_(x[b])


class _RandomBox(_RandomOp):
    """A box of ``ceil(fraction * size)`` voxels per spatial axis, placed
    uniformly and fully inside each sample (shared by Cutout and the crop)."""

    def sample_params(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Draw the box position of each sample.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, \\*spatial)
            Batch the parameters are drawn for.
        generator : torch.Generator or None, default=None
            Source of randomness, on the device of ``x``.

        Returns
        -------
        dict
            ``{"start": LongTensor of shape (B, n_spatial)}``, the first
            voxel of the box along each spatial axis.
        """
        box = _box_size(x.shape[2:], self.fraction)
        return {"start": _random_starts(x, box, generator)}


class Cutout(_RandomBox):
    """Set one random box of each sample to a constant value.

    The box spans ``ceil(fraction * size)`` voxels along each spatial axis
    and all channels. Its position is uniform, with the box fully inside the
    sample (the official ``Cutout`` with ``patch_size = ceil(shape / 4)``).

    Parameters
    ----------
    fraction : float, default=0.25
        Box size as a fraction of each spatial size, in (0, 1].
    value : float, default=0.0
        Value written inside the box (0 is the mean after :class:`ZScore`).

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.augment import Cutout
    >>> x = torch.ones(2, 1, 8, 8, 8)
    >>> y = Cutout(fraction=0.25)(x, generator=torch.Generator().manual_seed(0))
    >>> int((y == 0).sum())  # 2 samples x a 2 x 2 x 2 box
    16
    """

    _param_names = ("fraction", "value")

    def __init__(self, fraction: float = 0.25, value: float = 0.0):
        self.fraction = _check_scalar(
            fraction, "fraction", low=0.0, high=1.0, low_open=True
        )
        self.value = _check_scalar(value, "value")

    def apply(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Fill the box of each sample with ``value``.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, \\*spatial)
            Batch to modify (not in place).
        params : dict
            Output of :meth:`sample_params`.

        Returns
        -------
        torch.Tensor
            Batch with the boxes filled, same shape, dtype and device as ``x``.
        """
        out = x.clone()
        self._fill(out, params)
        return out

    def _apply_into(self, x: Tensor, params: dict[str, Tensor], out: Tensor) -> None:
        if out is not x:
            out.copy_(x)
        self._fill(out, params)

    def _fill(self, out: Tensor, params: dict[str, Tensor]) -> None:
        box = _box_size(out.shape[2:], self.fraction)
        for b, start in enumerate(params["start"].tolist()):
            region = (b, slice(None)) + tuple(
                slice(s, s + size) for s, size in zip(start, box)
            )
            out[region] = self.value


class RandomResizedCrop(_RandomBox):
    """Crop a random box of each sample and resize it back to full size.

    The box spans ``ceil(fraction * size)`` voxels along each spatial axis
    (all channels) at a uniform position fully inside the sample. The crop is
    resized to the original spatial size by (bi/tri)linear interpolation with
    ``align_corners=False``. This is the official random ``Crop`` with
    ``resize=True``. Half-precision inputs are interpolated in float32.

    Parameters
    ----------
    fraction : float, default=0.75
        Box size as a fraction of each spatial size, in (0, 1].

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.augment import RandomResizedCrop
    >>> x = torch.randn(2, 1, 8, 8, 8)
    >>> y = RandomResizedCrop(0.5)(x, generator=torch.Generator().manual_seed(0))
    >>> y.shape
    torch.Size([2, 1, 8, 8, 8])
    """

    _param_names = ("fraction",)

    def __init__(self, fraction: float = 0.75):
        self.fraction = _check_scalar(
            fraction, "fraction", low=0.0, high=1.0, low_open=True
        )

    def apply(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Crop each sample at ``params["start"]`` and resize it back.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, \\*spatial)
            Batch to crop.
        params : dict
            Output of :meth:`sample_params`.

        Returns
        -------
        torch.Tensor
            Cropped and resized batch, same shape, dtype and device as ``x``.
        """
        out = torch.empty_like(x)
        self._apply_into(x, params, out)
        return out

    def _apply_into(self, x: Tensor, params: dict[str, Tensor], out: Tensor) -> None:
        spatial = tuple(x.shape[2:])
        box = _box_size(spatial, self.fraction)
        dtype = _compute_dtype(x)
        for b, start in enumerate(params["start"].tolist()):
            region = tuple(slice(s, s + n) for s, n in zip(start, box))
            crop = x[b : b + 1][(slice(None), slice(None), *region)].to(dtype)
            target = out[b : b + 1] if dtype == x.dtype else None
            result = _separable_resize(crop, spatial, out=target)
            if target is None:
                out[b : b + 1].copy_(result)


def _lerp_taps(n_in: int, n_out: int, dtype, device):
    """Lower/upper source indices and weights of linear resizing along one
    axis, with ``align_corners=False`` (PyTorch's convention: source
    positions below 0 are clamped to the first sample)."""
    pos = (torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5
    pos = pos.clamp_min(0.0)
    lower = pos.floor().long().clamp_max(n_in - 1)
    upper = (lower + 1).clamp_max(n_in - 1)
    weight = (pos - lower).to(dtype)
    return lower.to(device), upper.to(device), weight.to(device)


def _separable_resize(x: Tensor, size, out: Tensor | None = None) -> Tensor:
    """(Bi/tri)linear resize of the spatial axes, ``align_corners=False``,
    one axis at a time.

    Linear interpolation is separable: resizing the last axis, then the one
    before it, and so on, gives the (bi/tri)linear result of
    :func:`torch.nn.functional.interpolate` (to rounding) at a fraction of
    its CPU cost. The last axis is resized by ``interpolate`` on rows; the
    others by gathering the two neighbouring slices and blending them, the
    final blend written into ``out`` when it is given (``out`` may overlap
    ``x``: ``x`` is only read before).
    """
    spatial = tuple(x.shape[2:])
    size = tuple(int(n) for n in size)
    y = x
    if spatial[-1] != size[-1]:
        rows = x.reshape(1, -1, spatial[-1])
        y = F.interpolate(rows, size=size[-1], mode="linear", align_corners=False)
        y = y.view(*x.shape[:-1], size[-1])
    # axes are resized from the back: the first changed axis is done last
    last = min(
        (a for a in range(len(spatial) - 1) if spatial[a] != size[a]), default=None
    )
    for axis in reversed(range(len(spatial) - 1)):
        if spatial[axis] == size[axis]:
            continue
        dim = axis + 2
        lower, upper, weight = _lerp_taps(spatial[axis], size[axis], y.dtype, y.device)
        shape = [1] * y.ndim
        shape[dim] = -1
        a, b = y.index_select(dim, lower), y.index_select(dim, upper)
        target = out if (out is not None and axis == last) else None
        y = torch.lerp(a, b, weight.view(shape), out=target)
    if out is None:
        return y
    if y is not out:
        out.copy_(y)
    return out
