"""Intensity operations of the y-Aware views: per-sample z-scoring
(:class:`ZScore`), Gaussian blur of random width (:class:`GaussianBlur`,
separable, half-sample symmetric boundaries) and Gaussian noise of random
level (:class:`GaussianNoise`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._core import (
    _check_input,
    _check_range,
    _check_scalar,
    _compute_dtype,
    _Op,
    _RandomOp,
    _standard_normal,
    _uniform,
)

__all__ = ["ZScore", "GaussianBlur", "GaussianNoise"]


class ZScore(_Op):
    """Standardise each sample to zero mean and unit standard deviation.

    For each sample, the mean and the population standard deviation
    (``ddof=0``) are taken over all of its channels and voxels, and the sample
    becomes ``(x - mean) / (std + eps)``, as the official ``Normalize``.

    Parameters
    ----------
    eps : float, default=1e-8
        Non-negative constant added to the standard deviation.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.augment import ZScore
    >>> x = 5 + 3 * torch.randn(2, 1, 8, 8, 8)
    >>> y = ZScore()(x)
    >>> bool(y.mean(dim=(1, 2, 3, 4)).abs().max() < 1e-4)
    True
    """

    _param_names = ("eps",)

    def __init__(self, eps: float = 1e-8):
        self.eps = _check_scalar(eps, "eps", low=0.0)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Standardise ``x``.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, \\*spatial)
            Floating-point batch.
        generator : torch.Generator or None, default=None
            Unused; accepted for a uniform call signature.

        Returns
        -------
        torch.Tensor
            Standardised batch, same shape, dtype and device as ``x``.
        """
        _check_input(x)
        if x.shape[0] == 0:
            return x.clone()
        # two-pass statistics without ``torch.std_mean``, slow on CPU
        xc = x.to(_compute_dtype(x))
        dims = tuple(range(1, x.ndim))
        mean = xc.mean(dim=dims, keepdim=True)
        xc = xc - mean if xc is x else xc.sub_(mean)
        n_per_sample = math.prod(x.shape[1:])
        std = torch.linalg.vector_norm(xc, dim=dims, keepdim=True)
        std = std / math.sqrt(n_per_sample)
        return xc.div_(std + self.eps).to(x.dtype)


def _symmetric_index(n: int, pad: int, device) -> Tensor:
    """Indices extending an axis of size ``n`` by ``pad`` on both sides.

    The extension is half-sample symmetric (``d c b a | a b c d | d c b a``),
    scipy.ndimage's ``'reflect'`` mode, repeated as often as needed.
    """
    pos = torch.arange(-pad, n + pad, device=device) % (2 * n)
    return torch.where(pos >= n, 2 * n - 1 - pos, pos)


def _gaussian_blur(
    x: Tensor, sigma: Tensor, truncate: float, out: Tensor | None = None
) -> Tensor:
    """Separable Gaussian blur with one isotropic ``sigma`` per sample.

    Each sample is filtered along each spatial axis by :func:`_blur_axis`
    with its own ``2 * radius + 1`` kernel taps: on CPU this is several
    times faster than a grouped convolution. ``out`` may be ``x``.
    """
    dtype = _compute_dtype(x)
    spatial = x.shape[2:]
    # the kernels are built on the host (one small transfer), in float64
    # only for float64 inputs (MPS has none), each from its own taps so that
    # a sample's blur never depends on the rest of the batch
    kdtype = torch.float64 if dtype == torch.float64 else torch.float32
    sigma = sigma.detach().to(device="cpu", dtype=kdtype)
    radius = torch.floor(truncate * sigma + 0.5).long().tolist()
    var = (sigma * sigma).clamp_min(torch.finfo(kdtype).tiny).tolist()
    if out is None:
        out = torch.empty_like(x)
    for b, r in enumerate(radius):
        if r == 0:
            if out is not x:
                out[b].copy_(x[b])
            continue
        taps = torch.arange(-r, r + 1, dtype=kdtype)
        kernel = torch.exp(-0.5 * taps**2 / var[b])
        weights = (kernel / kernel.sum()).to(dtype).tolist()
        # the last pass writes straight into the output when no cast is
        # needed and it does not read the output (one axis, in place)
        in_place_1d = len(spatial) == 1 and out.data_ptr() == x.data_ptr()
        target = out[b] if dtype == x.dtype and not in_place_1d else None
        sample = x[b].to(dtype)
        for axis in range(1, len(spatial) + 1):
            last = target if axis == len(spatial) else None
            sample = _blur_axis(sample, axis, weights, last)
        if target is None:
            out[b].copy_(sample)
    return out


def _blur_axis(x: Tensor, axis: int, weights, out: Tensor | None) -> Tensor:
    """Correlate ``x`` along ``axis`` with the symmetric taps ``weights``
    (length ``2 r + 1``), half-sample symmetric boundaries, into a new
    tensor or ``out`` (which must not overlap ``x``).

    Each tap is added from a shifted view of ``x`` over the interior, and
    from the mirrored edge slab near the boundaries, so ``x`` is never
    copied into a padded buffer. Radii longer than the axis take the padded
    path, whose reflections repeat.
    """
    n = x.shape[axis]
    r = len(weights) // 2
    if r > n:
        padded = x.index_select(axis, _symmetric_index(n, r, x.device))
        y = torch.mul(padded.narrow(axis, 0, n), weights[0], out=out)
        for t in range(1, 2 * r + 1):
            y.add_(padded.narrow(axis, t, n), alpha=weights[t])
        return y
    y = torch.mul(x, weights[r], out=out)
    for t in range(1, r + 1):
        # the taps at -t and +t have the same weight
        w = weights[r + t]
        if t < n:
            y.narrow(axis, t, n - t).add_(x.narrow(axis, 0, n - t), alpha=w)
            y.narrow(axis, 0, n - t).add_(x.narrow(axis, t, n - t), alpha=w)
        # neighbours beyond the edges, mirrored: x[t - 1 - i] and x[2n - 1 - i - t]
        y.narrow(axis, 0, t).add_(x.narrow(axis, 0, t).flip(axis), alpha=w)
        y.narrow(axis, n - t, t).add_(x.narrow(axis, n - t, t).flip(axis), alpha=w)
    return y


class GaussianBlur(_RandomOp):
    """Blur each sample with an isotropic Gaussian kernel of random width.

    Each sample gets its own ``sigma`` (in voxels) drawn uniformly in
    ``sigma``. The blur is a sequence of 1-D convolutions along each spatial
    axis (never across channels) with a kernel of radius
    ``int(truncate * sigma + 0.5)`` normalised to sum to one, and
    half-sample symmetric boundaries. This matches
    ``scipy.ndimage.gaussian_filter(sample, sigma=(0, s, s, s),
    mode='reflect', truncate=truncate)``. Half-precision inputs are
    processed in float32 and returned in their own dtype.

    Parameters
    ----------
    sigma : float or (float, float), default=(0.1, 1.0)
        Standard deviation of the kernel in voxels: a fixed value or the
        ``(low, high)`` bounds of a uniform draw. Must be non-negative.
    truncate : float, default=4.0
        Kernel radius in units of ``sigma``. Must be positive.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.augment import GaussianBlur
    >>> x = torch.zeros(1, 1, 5)
    >>> x[0, 0, 2] = 1.0
    >>> y = GaussianBlur(sigma=1.0)(x)
    >>> round(float(y.sum()), 4), bool(y[0, 0, 2] < 1)
    (1.0, True)
    """

    _param_names = ("sigma", "truncate")

    def __init__(self, sigma=(0.1, 1.0), truncate: float = 4.0):
        self.sigma = _check_range(sigma, "sigma")
        self.truncate = _check_scalar(truncate, "truncate", low=0.0, low_open=True)

    def sample_params(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Draw the kernel width of each sample.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, \\*spatial)
            Batch the parameters are drawn for.
        generator : torch.Generator or None, default=None
            Source of randomness, on the device of ``x``.

        Returns
        -------
        dict
            ``{"sigma": float tensor of shape (B,)}``.
        """
        return {"sigma": _uniform(x.shape[0], self.sigma, generator, x.device)}

    def apply(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Blur each sample with its own ``params["sigma"]``.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, \\*spatial)
            Batch to blur.
        params : dict
            Output of :meth:`sample_params`, or any ``{"sigma": tensor}``
            holding one non-negative width per sample.

        Returns
        -------
        torch.Tensor
            Blurred batch, same shape, dtype and device as ``x``.
        """
        return _gaussian_blur(x, params["sigma"], self.truncate)

    def _apply_into(self, x: Tensor, params: dict[str, Tensor], out: Tensor) -> None:
        # each sample is read (padded copy) before its last pass writes out
        _gaussian_blur(x, params["sigma"], self.truncate, out=out)


class GaussianNoise(_RandomOp):
    """Add white Gaussian noise with a random standard deviation per sample.

    Parameters
    ----------
    std : float or (float, float), default=(0.1, 1.0)
        Standard deviation of the noise: a fixed value or the ``(low, high)``
        bounds of a uniform draw, one per sample. Must be non-negative.

    Notes
    -----
    On the CPU, fields of a million values or more are drawn in two halves,
    each from its own generator seeded by the given one, and filled in
    parallel when torch may use two threads (torch's generator is serial).
    The values depend on the seed only, not on the number of threads.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.augment import GaussianNoise
    >>> x = torch.zeros(2, 1, 32, 32, 32)
    >>> y = GaussianNoise(std=0.5)(x, generator=torch.Generator().manual_seed(0))
    >>> round(float(y.std()), 1)
    0.5
    """

    _param_names = ("std",)

    def __init__(self, std=(0.1, 1.0)):
        self.std = _check_range(std, "std")

    def sample_params(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Draw the noise level and a standard normal field for each sample.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, \\*spatial)
            Batch the parameters are drawn for.
        generator : torch.Generator or None, default=None
            Source of randomness, on the device of ``x``.

        Returns
        -------
        dict
            ``{"std": tensor of shape (B,), "noise": tensor shaped like x}``,
            where ``noise`` is standard normal.
        """
        std = _uniform(x.shape[0], self.std, generator, x.device)
        noise = _standard_normal(x.shape, generator, x.device, _compute_dtype(x))
        return {"std": std, "noise": noise}

    def apply(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Return ``x + std * noise`` with the per-sample ``std``.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, \\*spatial)
            Batch to corrupt.
        params : dict
            Output of :meth:`sample_params`.

        Returns
        -------
        torch.Tensor
            Noisy batch, same shape, dtype and device as ``x``.
        """
        noise = params["noise"]
        std = params["std"].to(noise.dtype).view(-1, *([1] * (x.ndim - 1)))
        return torch.addcmul(x.to(noise.dtype), std, noise).to(x.dtype)

    def _apply_into(self, x: Tensor, params: dict[str, Tensor], out: Tensor) -> None:
        noise = params["noise"]
        if noise.dtype != x.dtype or noise.device != x.device:
            out.copy_(self.apply(x, params))
            return
        std = params["std"].to(noise.dtype).view(-1, *([1] * (x.ndim - 1)))
        torch.addcmul(x, std, noise, out=out)
