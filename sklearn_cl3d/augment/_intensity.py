"""Views of global-local contrastive pretraining (Chaitanya et al., 2020).

- :class:`RandomBrightnessContrast`: the intensity transform of both
  pretraining stages, TensorFlow's ``random_brightness`` then
  ``random_contrast`` then a clip;
- :class:`RandomCropResize`: the random fixed-size crop, resized back to full
  size, of the global stage (100x100 crops of 192x192 slices by default);
- :func:`globallocal_views`: the views of each stage from the estimator's
  ``augmentation`` parameters.

Both follow the conventions of :mod:`sklearn_cl3d.augment`: batched,
parameters drawn per sample on the input's device from an optional
:class:`torch.Generator` by :meth:`sample_params` and used by :meth:`apply`.
See ``specs/globallocal.md`` section 5.
"""

from __future__ import annotations

from numbers import Integral, Real

import torch
from torch import Tensor

from ._affine import _check_pair, _check_planar
from ._transforms import Compose, _check_scalar, _compute_dtype, _is_real, _RandomOp

__all__ = ["RandomBrightnessContrast", "RandomCropResize", "globallocal_views"]


def _check_bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be a bool, got {value!r}.")
    return value


def _per_sample(values: Tensor, ndim: int, dtype) -> Tensor:
    return values.to(dtype).view(-1, *([1] * (ndim - 1)))


class RandomBrightnessContrast(_RandomOp):
    """Random brightness shift, then random contrast change, then clip.

    Each image ``x`` (all channels) becomes, with ``delta`` drawn uniformly
    in ``[-max_delta, max_delta]`` and ``f`` uniformly in ``contrast``::

        y = x + delta                                 # random_brightness
        y = (y - mean(y)) * f + mean(y)               # random_contrast
        y = clip(y, *clip)

    where ``mean`` is taken over the spatial axes, separately for each image
    and channel (TensorFlow's ``adjust_contrast``). This is the intensity view
    of the official code (``max_delta=0.3``, contrast in ``(0.7, 1.3)``, clip
    to ``[0, 1.5]``).

    Parameters
    ----------
    max_delta : float, default=0.3
        Largest brightness shift, non-negative.
    contrast : float or (float, float), default=(0.7, 1.3)
        Contrast factor: a fixed value or the ``(low, high)`` bounds of a
        uniform draw. Must be non-negative.
    clip : (float, float) or None, default=(0.0, 1.5)
        Range the result is clipped to; None does not clip.
    per_image : bool, default=True
        Draw ``delta`` and ``f`` for each image. False draws one pair per
        call, shared by the whole batch, as the official code does.
    tied : bool, default=False
        Draw ``delta`` and ``f`` from the same uniform number ``u``:
        ``delta = -max_delta + 2 * max_delta * u`` and
        ``f = low + (high - low) * u``. With the defaults this is
        ``f = 1 + delta``, the official behaviour (both TensorFlow ops use the
        same op seed). False draws them independently.

    Notes
    -----
    The official code draws one brightness shift and one contrast factor per
    call (a batch of 12 slices), and the two are tied because both ops use
    ``seed=1``. The defaults here draw them per image and independently,
    which is the documented intent; ``per_image=False, tied=True`` gives the
    official behaviour.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.augment import RandomBrightnessContrast
    >>> x = torch.rand(4, 1, 8, 8)
    >>> aug = RandomBrightnessContrast()
    >>> y = aug(x, generator=torch.Generator().manual_seed(0))
    >>> y.shape, bool(y.min() >= 0) and bool(y.max() <= 1.5)
    (torch.Size([4, 1, 8, 8]), True)
    >>> params = {"delta": torch.tensor([0.5]), "factor": torch.tensor([2.0])}
    >>> aug.apply(torch.tensor([[[0.0, 0.5]]]), params)
    tensor([[[0.2500, 1.2500]]])
    """

    _param_names = ("max_delta", "contrast", "clip", "per_image", "tied")

    def __init__(
        self,
        max_delta: float = 0.3,
        contrast=(0.7, 1.3),
        clip=(0.0, 1.5),
        per_image: bool = True,
        tied: bool = False,
    ):
        self.max_delta = _check_scalar(max_delta, "max_delta", low=0.0)
        if _is_real(contrast):
            self.contrast = _check_scalar(contrast, "contrast", low=0.0)
        else:
            self.contrast = _check_pair(contrast, "contrast")
            if self.contrast[0] < 0:
                raise ValueError(f"`contrast` must be non-negative, got {contrast!r}.")
        self.clip = None if clip is None else _check_pair(clip, "clip")
        self.per_image = _check_bool(per_image, "per_image")
        self.tied = _check_bool(tied, "tied")

    def sample_params(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Draw the brightness shift and contrast factor of each image.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, \\*spatial)
            Batch the parameters are drawn for.
        generator : torch.Generator or None, default=None
            Source of randomness, on the device of ``x``.

        Returns
        -------
        dict
            ``{"delta": tensor of shape (B,), "factor": tensor of shape
            (B,)}`` (all entries equal when ``per_image=False``).
        """
        batch, device = x.shape[0], x.device
        n = batch if self.per_image else 1
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float32)
        delta = self.max_delta * (2 * u - 1)
        if isinstance(self.contrast, tuple):
            low, high = self.contrast
            v = u
            if not self.tied:
                v = torch.rand(n, generator=generator, device=device)
            factor = low + (high - low) * v
        else:
            factor = torch.full((n,), self.contrast, device=device)
        return {"delta": delta.expand(batch), "factor": factor.expand(batch)}

    def apply(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Shift, rescale around the mean and clip each image.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, \\*spatial)
            Batch to transform.
        params : dict
            Output of :meth:`sample_params`, or any dict with ``"delta"`` and
            ``"factor"`` tensors of shape (B,).

        Returns
        -------
        torch.Tensor
            Transformed batch, same shape, dtype and device as ``x``.
        """
        dtype = _compute_dtype(x)
        delta = _per_sample(params["delta"].to(x.device), x.ndim, dtype)
        factor = _per_sample(params["factor"].to(x.device), x.ndim, dtype)
        y = x.to(dtype) + delta
        mean = y.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
        y = torch.addcmul(mean, y - mean, factor)
        if self.clip is not None:
            y = y.clamp_(*self.clip)
        return y.to(x.dtype)


def _check_extent(value, name: str, *, low_px: int, fraction_high: float):
    """An int number of pixels (>= low_px) or a float fraction of the side."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"`{name}` must be an int or a float, got {value!r}.")
    if isinstance(value, Integral):
        if value < low_px:
            raise ValueError(f"`{name}` must be >= {low_px} pixels, got {value!r}.")
        return int(value)
    return _check_scalar(value, name, low=0.0, high=fraction_high)


def _to_pixels(value, side: int) -> int:
    return value if isinstance(value, int) else int(round(value * side))


def _mirror(index: Tensor, n: int) -> Tensor:
    """Mirror indices into ``[0, n)`` (``c b | a b c | b a``, no edge repeat)."""
    if n == 1:
        return torch.zeros_like(index)
    period = 2 * (n - 1)
    index = index.abs() % period
    return torch.where(index > n - 1, period - index, index)


def _linear_taps(n_in: int, n_out: int, device):
    """Neighbours and weights of order-1 resizing from ``n_in`` to ``n_out``.

    Output pixel ``o`` samples the input at ``(o + 0.5) * n_in / n_out - 0.5``
    (pixel centres, skimage's and ``align_corners=False`` mapping); samples
    outside ``[0, n_in - 1]`` use mirrored neighbours, as skimage's
    ``resize(order=1)`` with its default ``mode='reflect'``.
    """
    pos = (torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5
    lower = torch.floor(pos)
    weight = pos - lower
    lower = lower.long()
    i0 = _mirror(lower, n_in).to(device)
    i1 = _mirror(lower + 1, n_in).to(device)
    return i0, i1, weight.to(device)


def _gather_lerp(x: Tensor, dim: int, start: Tensor, taps) -> Tensor:
    """Linearly resample ``x`` along ``dim`` from a per-sample ``start``."""
    i0, i1, weight = taps
    shape = [1] * x.ndim
    shape[0], shape[dim] = x.shape[0], i0.numel()
    size = list(x.shape)
    size[dim] = i0.numel()
    idx0 = (start.view(-1, 1) + i0.view(1, -1)).view(shape).expand(size)
    idx1 = (start.view(-1, 1) + i1.view(1, -1)).view(shape).expand(size)
    wshape = [1] * x.ndim
    wshape[dim] = -1
    w = weight.to(x.dtype).view(wshape)
    a = x.gather(dim, idx0)
    return torch.lerp(a, x.gather(dim, idx1), w)


class RandomCropResize(_RandomOp):
    """Crop a fixed-size square at a random position, resized to full size.

    For each image, a ``size x size`` crop is taken whose top-left pixel
    ``(row, col)`` has both coordinates drawn independently and uniformly
    among the integers ``low .. high`` (inclusive); the crop is resized back
    to ``(H, W)`` with order-1 (bilinear) interpolation. Defaults are the
    official global-stage view of 192x192 slices: 100x100 crops with corners
    in ``U{10..69}``.

    The interpolation is that of skimage's ``resize(order=1)``: output pixel
    ``o`` samples the crop at ``(o + 0.5) * size / H - 0.5`` (the pixel-centre
    convention of :func:`torch.nn.functional.interpolate` with
    ``align_corners=False``), and the few samples that fall outside the crop
    (less than half a pixel from its edge) interpolate towards the mirrored
    neighbour (skimage's ``mode='reflect'``) instead of repeating the edge
    pixel as :func:`~torch.nn.functional.interpolate` would. Only pixels of
    the crop are used. Upsampling needs no anti-aliasing. All images are
    resampled together by gathering rows then columns.

    For a ``(B, C, D, H, W)`` batch the crop is in-plane, the same for every
    depth slice of an image. Half-precision inputs are resampled in float32.

    Parameters
    ----------
    size : int or float, default=100
        Side of the crop: pixels (int) or a fraction of each side (float in
        (0, 1], rounded to pixels).
    low, high : int or float, default=10, 69
        Smallest and largest first row/column of the crop (inclusive):
        pixels (int) or fractions of each side (float in [0, 1), rounded).
        The crop must fit: ``high + size <= side``.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.augment import RandomCropResize
    >>> x = torch.rand(2, 1, 192, 192)
    >>> crop = RandomCropResize()
    >>> params = crop.sample_params(x, generator=torch.Generator().manual_seed(0))
    >>> bool(((params["start"] >= 10) & (params["start"] <= 69)).all())
    True
    >>> crop.apply(x, params).shape
    torch.Size([2, 1, 192, 192])
    >>> x = torch.arange(4.0).view(1, 1, 2, 2)
    >>> RandomCropResize(size=1, low=1, high=1)(x)
    tensor([[[[3., 3.],
              [3., 3.]]]])
    """

    _param_names = ("size", "low", "high")

    def __init__(self, size=100, low=10, high=69):
        self.size = _check_extent(size, "size", low_px=1, fraction_high=1.0)
        if isinstance(self.size, float) and self.size == 0.0:
            raise ValueError("`size` must be positive, got 0.0.")
        self.low = _check_extent(low, "low", low_px=0, fraction_high=1.0)
        self.high = _check_extent(high, "high", low_px=0, fraction_high=1.0)
        if type(self.low) is type(self.high) and self.low > self.high:
            raise ValueError(
                f"`low` must be <= `high`, got low={low!r} and high={high!r}."
            )

    def _pixels(self, x: Tensor):
        """``(size, low, high)`` in pixels for each in-plane axis, checked."""
        out = []
        for side in x.shape[-2:]:
            size = max(1, _to_pixels(self.size, side))
            low = _to_pixels(self.low, side)
            high = _to_pixels(self.high, side)
            if low > high or high + size > side:
                raise ValueError(
                    f"{self!r} does not fit an image of size "
                    f"{tuple(x.shape[-2:])}: crops of {size} pixels starting at "
                    f"{low}..{high} need a side of at least {high + size}."
                )
            out.append((size, low, high))
        return out

    def sample_params(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Draw the top-left pixel of each image's crop.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, H, W) or (B, C, D, H, W)
            Batch the parameters are drawn for.
        generator : torch.Generator or None, default=None
            Source of randomness, on the device of ``x``.

        Returns
        -------
        dict
            ``{"start": LongTensor of shape (B, 2)}``, the first row and
            column of each crop.
        """
        _check_planar(x)
        starts = [
            torch.randint(
                low, high + 1, (x.shape[0],), generator=generator, device=x.device
            )
            for _, low, high in self._pixels(x)
        ]
        return {"start": torch.stack(starts, dim=1)}

    def apply(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Crop each image at ``params["start"]`` and resize it back.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, H, W) or (B, C, D, H, W)
            Batch to crop.
        params : dict
            Output of :meth:`sample_params`, or any ``{"start": tensor}`` whose
            crops lie inside the image.

        Returns
        -------
        torch.Tensor
            Cropped and resized batch, same shape, dtype and device as ``x``.
        """
        _check_planar(x)
        (rows, _, _), (cols, _, _) = self._pixels(x)
        height, width = x.shape[-2:]
        start = params["start"].to(x.device).long()
        flat = x.reshape(x.shape[0], -1, height, width).to(_compute_dtype(x))
        out = _gather_lerp(flat, 2, start[:, 0], _linear_taps(rows, height, x.device))
        out = _gather_lerp(out, 3, start[:, 1], _linear_taps(cols, width, x.device))
        return out.reshape(x.shape).to(x.dtype)


def _intensity(official):
    if official:
        return RandomBrightnessContrast(per_image=False, tied=True)
    return RandomBrightnessContrast()


def globallocal_views(spec, stage, official_intensity):
    """The augmentation of a global-local stage from its parameter value.

    Parameters
    ----------
    spec : str, callable or None
        The estimator's ``augmentation`` (global stage, ``"crop_intensity"``)
        or ``local_augmentation`` (local stage, ``"intensity"``). A callable
        or None is returned unchanged.
    stage : {"global", "local"}
        The stage: the global views crop (100 of 192 pixels, resized back)
        before the intensity change; the local views change intensities only.
    official_intensity : bool
        Draw the brightness and contrast once per call for the whole batch
        (the official code) instead of once per image.

    Returns
    -------
    callable or None
        ``f(x, generator=None)``, or None for no augmentation.

    Examples
    --------
    >>> from sklearn_cl3d.augment._intensity import globallocal_views
    >>> type(globallocal_views("intensity", "local", False)).__name__
    'RandomBrightnessContrast'
    """
    if spec is None or callable(spec):
        return spec
    if stage == "global":
        crop = RandomCropResize(size=100 / 192, low=10 / 192, high=69 / 192)
        return Compose([crop, _intensity(official_intensity)])
    return _intensity(official_intensity)
