"""Batched in-plane geometric augmentations (flips, crops, shifts, rotations).

These operations reproduce the 2-D augmentations of the official WSP code
(Sarfati et al., MICCAI 2023), which relies on kornia: fixed-axis flips, a
random resized crop of fixed area fraction, a random translation and a random
rotation. They work on whole batches: the geometric ones build one affine
matrix per sample and resample the batch with a single
:func:`torch.nn.functional.affine_grid` and
:func:`torch.nn.functional.grid_sample` call (bilinear, ``align_corners=False``
pixel convention).

They act in the image plane, i.e. on the last two axes ``(H, W)`` of a
``(B, C, H, W)`` batch. A ``(B, C, D, H, W)`` batch is accepted too: every
depth slice of a sample gets the same in-plane transform and the depth axis is
left untouched. :class:`AxisFlip` accepts any spatial axis.

Pixel ``(i, j)`` is row ``i`` (height, top to bottom) and column ``j`` (width,
left to right); parameters that have one value per in-plane axis are given in
this ``(height, width)`` order.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor

from ._transforms import (
    _check_input,
    _check_scalar,
    _compute_dtype,
    _is_real,
    _RandomOp,
    _uniform,
)

__all__ = ["AxisFlip", "RandomAreaCrop", "RandomTranslate", "RandomRotate"]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _check_pair(value, name: str, *, positive: bool = False) -> tuple[float, float]:
    """Validate a ``(low, high)`` pair of finite numbers with ``low <= high``."""
    try:
        pair = tuple(value)
    except TypeError:
        pair = None
    if pair is None or len(pair) != 2 or not all(_is_real(v) for v in pair):
        raise ValueError(
            f"`{name}` must be a number or a (low, high) pair, got {value!r}."
        )
    low, high = (_check_scalar(v, name) for v in pair)
    if positive and low <= 0:
        raise ValueError(f"`{name}` must hold positive values, got {value!r}.")
    if low > high:
        raise ValueError(f"`{name}` must satisfy low <= high, got {value!r}.")
    return (low, high)


def _check_planar(x: Tensor) -> None:
    """Inputs of the in-plane operations: 2 or 3 spatial dimensions."""
    _check_input(x)
    if x.ndim not in (4, 5):
        raise ValueError(
            "Expected a tensor of shape (B, C, H, W) or (B, C, D, H, W), got "
            f"shape {tuple(x.shape)}."
        )


def _warp(x: Tensor, theta: Tensor, padding_mode: str = "zeros") -> Tensor:
    """Resample each sample of ``x`` in its (H, W) plane with its own affine map.

    ``theta`` of shape ``(B, 2, 3)`` maps normalised output coordinates
    (``align_corners=False``, x along the width first) to normalised input
    coordinates. Every channel and depth slice shares its sample's map.
    """
    dtype = _compute_dtype(x)
    batch = x.shape[0]
    height, width = x.shape[-2:]
    flat = x.reshape(batch, -1, height, width).to(dtype)
    grid = F.affine_grid(
        theta.to(device=x.device, dtype=dtype),
        [batch, flat.shape[1], height, width],
        align_corners=False,
    )
    out = F.grid_sample(
        flat, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False
    )
    return out.reshape(x.shape).to(x.dtype)


def _exact_dtype(device) -> torch.dtype:
    """Precision of the parameter arithmetic: float64, except on MPS (none)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def _identity_theta(batch: int, device) -> Tensor:
    theta = torch.zeros(batch, 2, 3, device=device, dtype=_exact_dtype(device))
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    return theta


class _PlanarOp(_RandomOp):
    """Random operation acting in the (H, W) plane of 2-D or 3-D batches."""

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw per-sample parameters and transform ``x``.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, H, W) or (B, C, D, H, W)
            Floating-point batch.
        generator : torch.Generator or None, default=None
            Source of randomness, on the device of ``x``; None uses torch's
            default generator of that device.

        Returns
        -------
        torch.Tensor
            New batch, same shape, dtype and device as ``x``.
        """
        _check_planar(x)
        return super().__call__(x, generator=generator)


# --------------------------------------------------------------------------
# operations
# --------------------------------------------------------------------------
class AxisFlip(_RandomOp):
    """Mirror every sample along one fixed spatial axis.

    The operation is deterministic; wrap it in :class:`RandomApply` to flip
    each sample with some probability. ``AxisFlip(-1)`` is the horizontal
    flip (left-right, along the width) and ``AxisFlip(-2)`` the vertical
    flip (up-down, along the height). The result is exact in every dtype.

    Parameters
    ----------
    axis : int, default=-1
        Spatial dimension of ``x`` to reverse. Negative values count from
        the end: -1 is the width, -2 the height and -3 the depth of a
        ``(B, C, D, H, W)`` batch. Non-negative values index the dimensions
        of ``x`` directly and must be at least 2 (the batch and channel axes
        cannot be flipped).

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.augment import AxisFlip
    >>> x = torch.arange(4.0).view(1, 1, 2, 2)
    >>> AxisFlip(-1)(x)
    tensor([[[[1., 0.],
              [3., 2.]]]])
    >>> AxisFlip(-2)(x)
    tensor([[[[2., 3.],
              [0., 1.]]]])
    """

    _param_names = ("axis",)

    def __init__(self, axis: int = -1):
        if not isinstance(axis, numbers.Integral) or isinstance(axis, bool):
            raise ValueError(f"`axis` must be an int, got {axis!r}.")
        axis = int(axis)
        if 0 <= axis < 2:
            raise ValueError(
                f"`axis` must be a spatial axis (negative, or >= 2), got {axis!r}."
            )
        self.axis = axis

    def _dim(self, x: Tensor) -> int:
        dim = self.axis + x.ndim if self.axis < 0 else self.axis
        if not 2 <= dim < x.ndim:
            raise ValueError(
                f"`axis`={self.axis} is not a spatial axis of an input of shape "
                f"{tuple(x.shape)}."
            )
        return dim

    def sample_params(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Return no parameters: the flip is the same for every sample.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, \\*spatial)
            Batch the parameters are drawn for; its shape is checked.
        generator : torch.Generator or None, default=None
            Unused; accepted for a uniform call signature.

        Returns
        -------
        dict
            An empty dict.
        """
        self._dim(x)
        return {}

    def apply(self, x: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
        """Reverse every sample along ``axis``.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, \\*spatial)
            Batch to flip.
        params : dict or None, default=None
            Unused (output of :meth:`sample_params`).

        Returns
        -------
        torch.Tensor
            Flipped batch (a new tensor), same shape, dtype and device as
            ``x``.
        """
        return x.flip(self._dim(x))


class RandomAreaCrop(_PlanarOp):
    """Crop a random box of given area and aspect ratio, resized to full size.

    For each sample, the box area is ``s * H * W`` with ``s`` drawn uniformly
    in ``scale``, and its aspect ratio ``r = width / height`` is drawn
    log-uniformly in ``ratio``. The box then has
    ``round(sqrt(s * H * W * r))`` columns and ``round(sqrt(s * H * W / r))``
    rows, each clipped to ``[1, size]``, and is placed at a uniform integer
    position fully inside the image. It is resized back to ``(H, W)`` by
    bilinear interpolation that maps the centres of the box's corner pixels
    onto the centres of the image's corner pixels, so only pixels of the box
    are used (the same result as :func:`torch.nn.functional.interpolate` of
    the cropped box with ``align_corners=True``). All samples are resampled
    together in one :func:`~torch.nn.functional.grid_sample` call.

    This is kornia's ``RandomResizedCrop`` as used by the official WSP code
    (``scale=(0.7, 0.7)`` and the default ratio range ``(3/4, 4/3)``). For a
    ``(B, C, D, H, W)`` batch the crop is in-plane, the same for every depth
    slice of a sample. Half-precision inputs are resampled in float32.

    Parameters
    ----------
    scale : float or (float, float), default=0.7
        Area of the box as a fraction of the image area, in (0, 1]: a fixed
        value or the ``(low, high)`` bounds of a uniform draw.
    ratio : float or (float, float), default=(3/4, 4/3)
        Aspect ratio ``width / height`` of the box, positive: a fixed value
        or the ``(low, high)`` bounds of a log-uniform draw.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.augment import RandomAreaCrop
    >>> x = torch.randn(4, 1, 32, 32)
    >>> crop = RandomAreaCrop(scale=0.7)
    >>> params = crop.sample_params(x, generator=torch.Generator().manual_seed(0))
    >>> area = params["size"].prod(dim=1) / (32 * 32)
    >>> bool(((area - 0.7).abs() < 0.05).all())
    True
    >>> crop.apply(x, params).shape
    torch.Size([4, 1, 32, 32])
    """

    _param_names = ("scale", "ratio")

    def __init__(self, scale=0.7, ratio=(3 / 4, 4 / 3)):
        if _is_real(scale):
            scale = _check_scalar(scale, "scale", low=0.0, high=1.0, low_open=True)
        else:
            scale = _check_pair(scale, "scale", positive=True)
            if scale[1] > 1.0:
                raise ValueError(f"`scale` must lie in (0, 1], got {scale!r}.")
        if _is_real(ratio):
            ratio = _check_scalar(ratio, "ratio", low=0.0, low_open=True)
        else:
            ratio = _check_pair(ratio, "ratio", positive=True)
        self.scale = scale
        self.ratio = ratio

    def sample_params(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Draw the box of each sample.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, H, W) or (B, C, D, H, W)
            Batch the parameters are drawn for.
        generator : torch.Generator or None, default=None
            Source of randomness, on the device of ``x``.

        Returns
        -------
        dict
            ``{"start": LongTensor of shape (B, 2), "size": LongTensor of
            shape (B, 2)}``: the first row and column of each box, and its
            number of rows and columns.
        """
        _check_planar(x)
        batch, device = x.shape[0], x.device
        height, width = x.shape[-2:]
        exact = _exact_dtype(device)
        area = _uniform(batch, self.scale, generator, device).to(exact)
        area = area * (height * width)
        if isinstance(self.ratio, tuple):
            log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        else:
            log_ratio = math.log(self.ratio)
        ratio = torch.exp(_uniform(batch, log_ratio, generator, device).to(exact))
        rows = torch.round(torch.sqrt(area / ratio)).clamp(1, height).long()
        cols = torch.round(torch.sqrt(area * ratio)).clamp(1, width).long()
        size = torch.stack([rows, cols], dim=1)
        limit = torch.tensor([height, width], device=device) - size  # >= 0
        u = torch.rand(batch, 2, generator=generator, device=device, dtype=exact)
        start = torch.minimum(torch.floor(u * (limit + 1)).long(), limit)
        return {"start": start, "size": size}

    def apply(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Crop each sample to its box and resize it back to ``(H, W)``.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, H, W) or (B, C, D, H, W)
            Batch to crop.
        params : dict
            Output of :meth:`sample_params`, or any dict of that form whose
            boxes lie inside the image.

        Returns
        -------
        torch.Tensor
            Cropped and resized batch, same shape, dtype and device as ``x``.
        """
        _check_planar(x)
        theta = _identity_theta(x.shape[0], x.device)
        exact = _exact_dtype(x.device)
        start = params["start"].to(device=x.device, dtype=exact)
        size = params["size"].to(device=x.device, dtype=exact)
        # pixel centres: output p -> input start + p * (size - 1) / (n - 1);
        # rewritten between align_corners=False normalised coordinates
        for row, n in ((1, x.shape[-2]), (0, x.shape[-1])):
            axis = 1 - row  # params are (height, width); theta rows are (x, y)
            slope = (size[:, axis] - 1) / max(n - 1, 1)
            theta[:, row, row] = slope
            theta[:, row, 2] = (2 * start[:, axis] + slope * (n - 1) + 1) / n - 1
        return _warp(x, theta)


class RandomTranslate(_PlanarOp):
    """Shift each sample by a random number of pixels in the image plane.

    Each sample is shifted by ``dy`` pixels down and ``dx`` pixels right,
    drawn independently and uniformly in ``[-max_fraction * H,
    max_fraction * H]`` and ``[-max_fraction * W, max_fraction * W]``. The
    shifts are real-valued: the image is resampled bilinearly
    (``align_corners=False`` pixel convention) and uncovered pixels are set
    to zero. This is kornia's ``RandomAffine(degrees=0, translate=(f, f))``
    of the official WSP code. For a ``(B, C, D, H, W)`` batch the shift is
    in-plane, the same for every depth slice of a sample. Half-precision
    inputs are resampled in float32.

    Parameters
    ----------
    max_fraction : float, default=0.2
        Largest shift as a fraction of the height (vertical shift) and of
        the width (horizontal shift), in [0, 1].

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.augment import RandomTranslate
    >>> x = torch.arange(1.0, 5.0).view(1, 1, 1, 4)
    >>> shift = {"shift": torch.tensor([[0.0, 1.0]])}  # one pixel to the right
    >>> RandomTranslate().apply(x, shift)
    tensor([[[[0., 1., 2., 3.]]]])
    """

    _param_names = ("max_fraction",)

    def __init__(self, max_fraction: float = 0.2):
        self.max_fraction = _check_scalar(
            max_fraction, "max_fraction", low=0.0, high=1.0
        )

    def sample_params(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Draw the shift of each sample.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, H, W) or (B, C, D, H, W)
            Batch the parameters are drawn for.
        generator : torch.Generator or None, default=None
            Source of randomness, on the device of ``x``.

        Returns
        -------
        dict
            ``{"shift": float tensor of shape (B, 2)}``, the shift of each
            sample in pixels, ``(down, right)``.
        """
        _check_planar(x)
        limits = torch.tensor(x.shape[-2:], device=x.device, dtype=torch.float32)
        limits = self.max_fraction * limits
        u = torch.rand(x.shape[0], 2, generator=generator, device=x.device)
        return {"shift": (2 * u - 1) * limits}

    def apply(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Shift each sample by ``params["shift"]`` pixels.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, H, W) or (B, C, D, H, W)
            Batch to shift.
        params : dict
            Output of :meth:`sample_params`, or any ``{"shift": tensor}`` of
            shape ``(B, 2)`` holding ``(down, right)`` shifts in pixels.

        Returns
        -------
        torch.Tensor
            Shifted batch, same shape, dtype and device as ``x``.
        """
        _check_planar(x)
        theta = _identity_theta(x.shape[0], x.device)
        shift = params["shift"].to(device=x.device, dtype=_exact_dtype(x.device))
        height, width = x.shape[-2:]
        # output pixel p samples the input at p - shift
        theta[:, 0, 2] = -2 * shift[:, 1] / width
        theta[:, 1, 2] = -2 * shift[:, 0] / height
        return _warp(x, theta)


class RandomRotate(_PlanarOp):
    """Rotate each sample by a random angle about the centre of the image.

    Each sample gets its own angle, in degrees, drawn uniformly in
    ``[-degrees, degrees]`` (or in ``degrees`` when it is a pair). The image
    turns about its centre ``((H - 1) / 2, (W - 1) / 2)`` (in pixels); it is
    resampled bilinearly (``align_corners=False`` pixel convention) and
    pixels that come from outside the image are set to zero.

    **Sign convention**: a positive angle turns the image
    **counter-clockwise** as displayed with row 0 at the top (e.g. by
    matplotlib's ``imshow``); 90 degrees gives
    ``torch.rot90(x, 1, dims=(-2, -1))`` on a square image. This is the
    convention of kornia, whose ``RandomRotation(30)`` the official WSP code
    uses. For a ``(B, C, D, H, W)`` batch the rotation is in the (H, W)
    plane, about the depth axis, the same for every depth slice of a
    sample. Half-precision inputs are resampled in float32.

    Parameters
    ----------
    degrees : float or (float, float), default=30.0
        Largest absolute angle, non-negative, or the ``(low, high)`` bounds of
        the uniform draw of the angle, in degrees.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.augment import RandomRotate
    >>> x = torch.arange(4.0).view(1, 1, 2, 2)
    >>> y = RandomRotate().apply(x, {"angle": torch.tensor([90.0])})
    >>> torch.allclose(y, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5)
    True
    """

    _param_names = ("degrees",)

    def __init__(self, degrees=30.0):
        if _is_real(degrees):
            degrees = _check_scalar(degrees, "degrees", low=0.0)
        else:
            degrees = _check_pair(degrees, "degrees")
        self.degrees = degrees

    def sample_params(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Draw the rotation angle of each sample.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, H, W) or (B, C, D, H, W)
            Batch the parameters are drawn for.
        generator : torch.Generator or None, default=None
            Source of randomness, on the device of ``x``.

        Returns
        -------
        dict
            ``{"angle": float tensor of shape (B,)}``, in degrees, positive
            counter-clockwise.
        """
        _check_planar(x)
        bounds = self.degrees
        if not isinstance(bounds, tuple):
            bounds = (-bounds, bounds)
        return {"angle": _uniform(x.shape[0], bounds, generator, x.device)}

    def apply(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Rotate each sample by ``params["angle"]`` degrees.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, H, W) or (B, C, D, H, W)
            Batch to rotate.
        params : dict
            Output of :meth:`sample_params`, or any ``{"angle": tensor}``
            holding one angle in degrees per sample.

        Returns
        -------
        torch.Tensor
            Rotated batch, same shape, dtype and device as ``x``.
        """
        _check_planar(x)
        exact = _exact_dtype(x.device)
        angle = params["angle"].to(device=x.device, dtype=exact)
        angle = torch.deg2rad(angle)
        cos, sin = torch.cos(angle), torch.sin(angle)
        height, width = x.shape[-2:]
        # output pixel p (centred, y down) samples the input at R(-angle) p;
        # normalised coordinates scale x by 2 / W and y by 2 / H
        theta = torch.zeros(x.shape[0], 2, 3, device=x.device, dtype=exact)
        theta[:, 0, 0] = cos
        theta[:, 0, 1] = -sin * (height / width)
        theta[:, 1, 0] = sin * (width / height)
        theta[:, 1, 1] = cos
        return _warp(x, theta)
