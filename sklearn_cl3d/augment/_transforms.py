"""Batched, dimension-generic tensor augmentations.

Every operation takes a floating-point tensor ``x`` of shape
``(B, C, *spatial)`` with one, two or three spatial dimensions and returns a
new tensor with the same shape, dtype and device; the input is never modified.
Random parameters are drawn independently for each sample of the batch, on
``x.device``, from the optional :class:`torch.Generator` passed as
``generator``: the same seeded generator gives the same output.

The operations mirror the augmentations of the official y-Aware code
(``Normalize``, ``Flip``, ``Blur``, ``Noise``, ``Cutout`` and ``Crop``), but
work on whole batches at once instead of one numpy array at a time.

Random operations split their work in two public steps, which makes them easy
to inspect and test: :meth:`sample_params` draws the per-sample parameters and
:meth:`apply` uses them. Calling the operation does both.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ZScore",
    "Flip",
    "GaussianBlur",
    "GaussianNoise",
    "Cutout",
    "RandomResizedCrop",
    "RandomApply",
    "Compose",
]

_HALF_DTYPES = (torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------
def _is_real(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_scalar(value, name: str, *, low=None, high=None, low_open=False):
    """Return ``value`` as a float after checking that it is a finite number."""
    if not _is_real(value) or not math.isfinite(float(value)):
        raise ValueError(f"`{name}` must be a finite real number, got {value!r}.")
    value = float(value)
    if low is not None and (value < low or (low_open and value == low)):
        bound = ">" if low_open else ">="
        raise ValueError(f"`{name}` must be {bound} {low}, got {value!r}.")
    if high is not None and value > high:
        raise ValueError(f"`{name}` must be <= {high}, got {value!r}.")
    return value


def _check_range(value, name: str) -> float | tuple[float, float]:
    """Validate a non-negative number or a ``(low, high)`` pair of them."""
    if _is_real(value):
        return _check_scalar(value, name, low=0.0)
    try:
        pair = tuple(value)
    except TypeError:
        pair = None
    if pair is None or len(pair) != 2:
        raise ValueError(
            f"`{name}` must be a non-negative number or a (low, high) pair, "
            f"got {value!r}."
        )
    low = _check_scalar(pair[0], name, low=0.0)
    high = _check_scalar(pair[1], name, low=0.0)
    if low > high:
        raise ValueError(f"`{name}` must satisfy low <= high, got {value!r}.")
    return (low, high)


def _check_input(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Expected a torch.Tensor, got {type(x).__name__}.")
    if x.ndim not in (3, 4, 5):
        raise ValueError(
            "Expected a tensor of shape (B, C, *spatial) with 1 to 3 spatial "
            f"dimensions, got shape {tuple(x.shape)}."
        )
    if not x.is_floating_point():
        raise TypeError(f"Expected a floating-point tensor, got dtype {x.dtype}.")


def _compute_dtype(x: Tensor) -> torch.dtype:
    """Working precision: half-precision inputs are processed in float32."""
    return torch.float32 if x.dtype in _HALF_DTYPES else x.dtype


def _uniform(n, value, generator, device) -> Tensor:
    """Draw ``n`` values from U(low, high), or repeat a fixed value."""
    if isinstance(value, tuple):
        low, high = value
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float32)
        return low + (high - low) * u
    return torch.full((n,), value, device=device, dtype=torch.float32)


#: Standard normal fields of at least this many values are drawn on the CPU
#: in ``_NORMAL_CHUNKS`` independent streams, filled by up to that many
#: threads (torch's generator is serial: one core fills about 300 million
#: values per second). The split is fixed, so the values depend on the seed
#: only, not on the number of threads.
_PARALLEL_NORMAL_MIN = 1 << 20
_NORMAL_CHUNKS = 2
_normal_pool = None
_normal_pool_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _normal_pool
    with _normal_pool_lock:
        if _normal_pool is None:
            _normal_pool = ThreadPoolExecutor(
                max_workers=_NORMAL_CHUNKS - 1, thread_name_prefix="cl3d-normal"
            )
        return _normal_pool


def _standard_normal(shape, generator, device, dtype) -> Tensor:
    """A standard normal tensor, drawn from ``generator``.

    Large CPU fields are split into ``_NORMAL_CHUNKS`` parts, each filled
    from its own generator seeded by a draw of ``generator``, in parallel
    threads when torch may use more than one.
    """
    device = torch.device(device)
    n = math.prod(shape)
    if device.type != "cpu" or n < _PARALLEL_NORMAL_MIN:
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    seeds = torch.randint(
        0, 2**62, (_NORMAL_CHUNKS,), generator=generator, device=device
    ).tolist()
    out = torch.empty(n, dtype=dtype, device=device)
    parts = out.chunk(_NORMAL_CHUNKS)

    def fill(indices):
        for i in indices:
            parts[i].normal_(generator=torch.Generator().manual_seed(seeds[i]))

    workers = max(1, min(_NORMAL_CHUNKS, torch.get_num_threads()))
    groups = [list(range(w, _NORMAL_CHUNKS, workers)) for w in range(workers)]
    futures = [_pool().submit(fill, group) for group in groups[1:]]
    fill(groups[0])
    for future in futures:
        future.result()
    return out.view(shape)


def _box_size(spatial, fraction: float) -> tuple[int, ...]:
    return tuple(min(n, max(1, math.ceil(fraction * n))) for n in spatial)


def _random_starts(x: Tensor, box, generator) -> Tensor:
    """Uniform start index of a box fully inside each spatial axis, (B, n_sp)."""
    starts = [
        torch.randint(0, n - b + 1, (x.shape[0],), generator=generator, device=x.device)
        for n, b in zip(x.shape[2:], box)
    ]
    return torch.stack(starts, dim=1)


def _format(value) -> str:
    return repr(value)


class _Op:
    """Shared ``__repr__`` and input checks of the augmentation operations."""

    _param_names: tuple[str, ...] = ()

    def __repr__(self) -> str:
        params = ", ".join(
            f"{name}={_format(getattr(self, name))}" for name in self._param_names
        )
        return f"{type(self).__name__}({params})"


class _RandomOp(_Op):
    """Operation whose per-sample parameters are drawn, then applied."""

    def sample_params(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def _apply_into(self, x: Tensor, params: dict[str, Tensor], out: Tensor) -> None:
        """Write ``apply(x, params)`` into ``out``, which may be ``x`` itself.

        Operations that can write their result directly (in place when
        ``out is x``) override this to save a copy of the batch.
        """
        out.copy_(self.apply(x, params))

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw per-sample parameters and transform ``x``.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, \\*spatial)
            Floating-point batch with 1 to 3 spatial dimensions.
        generator : torch.Generator or None, default=None
            Source of randomness, on the device of ``x``; None uses torch's
            default generator of that device.

        Returns
        -------
        torch.Tensor
            New batch, same shape, dtype and device as ``x``.
        """
        _check_input(x)
        if x.shape[0] == 0:
            return x.clone()
        return self.apply(x, self.sample_params(x, generator=generator))


# --------------------------------------------------------------------------
# operations
# --------------------------------------------------------------------------
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


def _runs(flags: list[bool]) -> list[tuple[int, int, bool]]:
    """Split a list of flags into maximal runs ``(start, stop, flag)``."""
    runs = []
    start = 0
    for i in range(1, len(flags) + 1):
        if i == len(flags) or flags[i] != flags[start]:
            runs.append((start, i, flags[start]))
            start = i
    return runs


def _returns_new(op) -> bool:
    """Whether ``op`` surely returns a new tensor, referenced nowhere else."""
    if isinstance(op, RandomApply):
        return _returns_new(op.op)
    if isinstance(op, Compose):
        return not op.ops or _returns_new(op.ops[-1])
    return isinstance(op, (ZScore, _RandomOp))


class RandomApply(_Op):
    """Apply an operation to a random subset of the batch.

    Each sample independently gets ``op`` with probability ``p``. The chosen
    samples are transformed as one sub-batch (one call, one draw of the
    random parameters) and written back into a copy of the input; the others
    are returned unchanged. The package's own operations are applied to
    views of the input, written straight into the result, with the same
    outcome as gathering the sub-batch but no gather and fewer copies.

    Parameters
    ----------
    op : callable
        Operation called as ``op(sub_batch, generator=generator)``.
    p : float, default=0.5
        Probability, in [0, 1], that a sample is transformed. With ``p=1``
        the whole batch goes through ``op`` (no selection is drawn); with
        ``p=0`` a copy of the input is returned.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.augment import Cutout, RandomApply
    >>> x = torch.ones(100, 1, 4, 4)
    >>> y = RandomApply(Cutout(), p=0.5)(x, generator=torch.Generator().manual_seed(0))
    >>> n_changed = int((y != x).flatten(1).any(dim=1).sum())
    >>> 30 < n_changed < 70
    True
    """

    _param_names = ("op", "p")

    def __init__(self, op: Callable, p: float = 0.5):
        if not callable(op):
            raise ValueError(f"`op` must be callable, got {op!r}.")
        self.op = op
        self.p = _check_scalar(p, "p", low=0.0, high=1.0)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Apply ``op`` to each sample with probability ``p``.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, \\*spatial)
            Floating-point batch.
        generator : torch.Generator or None, default=None
            Source of randomness, on the device of ``x``; also passed to
            ``op``.

        Returns
        -------
        torch.Tensor
            New batch, same shape, dtype and device as ``x``.
        """
        _check_input(x)
        if self.p == 1.0:
            return self.op(x, generator=generator)
        runs = self._draw(x, generator)
        if not any(chosen for _, _, chosen in runs):
            return x.clone()
        if len(runs) == 1 and _returns_new(self.op):
            return self.op(x, generator=generator)
        # each sample is copied once: kept ones from x, chosen ones from op
        out = torch.empty_like(x)
        for start, stop, chosen in runs:
            if not chosen:
                out[start:stop].copy_(x[start:stop])
        self._apply_runs(x, out, runs, generator)
        return out

    def _draw(self, x: Tensor, generator) -> list[tuple[int, int, bool]]:
        """Draw the chosen samples, as runs ``(start, stop, chosen)``."""
        if self.p == 0.0 or x.shape[0] == 0:
            return [(0, x.shape[0], False)]
        chosen = torch.rand(x.shape[0], generator=generator, device=x.device) < self.p
        return _runs(chosen.tolist())

    def _apply_runs(self, x: Tensor, out: Tensor, runs, generator) -> None:
        """Write ``op`` of the chosen samples of ``x`` into ``out``."""
        picked = [(start, stop) for start, stop, chosen in runs if chosen]
        if isinstance(self.op, _RandomOp):
            self._apply_runs_in_views(x, out, picked, generator)
            return
        if len(picked) == 1:
            sub = x[picked[0][0] : picked[0][1]]  # a view, no gather
        else:
            index = torch.cat([torch.arange(a, b) for a, b in picked])
            sub = x.index_select(0, index.to(x.device))
        result = self.op(sub, generator=generator)
        offset = 0
        for start, stop in picked:
            out[start:stop].copy_(result[offset : offset + stop - start])
            offset += stop - start

    def _apply_runs_in_views(self, x: Tensor, out: Tensor, picked, generator):
        """Same result as gathering the chosen samples and calling ``op`` on
        them, without the gather: the parameters are drawn once for the
        chosen samples (same random stream), then each run of consecutive
        chosen samples is transformed from its view of ``x`` straight into
        ``out``."""
        op = self.op
        n = sum(stop - start for start, stop in picked)
        like = x[:1].expand(n, *x.shape[1:])  # the sub-batch's shape, no copy
        _check_input(like)
        params = op.sample_params(like, generator=generator)
        if not all(
            isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == n
            for v in params.values()
        ):
            # parameters not per sample: apply them to the gathered batch
            index = torch.cat([torch.arange(a, b) for a, b in picked])
            result = op.apply(x.index_select(0, index.to(x.device)), params)
            offset = 0
            for start, stop in picked:
                out[start:stop].copy_(result[offset : offset + stop - start])
                offset += stop - start
            return
        offset = 0
        for start, stop in picked:
            count = stop - start
            part = {k: v[offset : offset + count] for k, v in params.items()}
            op._apply_into(x[start:stop], part, out[start:stop])
            offset += count

    def _apply_inplace(self, x: Tensor, generator) -> None:
        """Same draw and result as calling, but written into ``x``.

        Only for a tensor that nobody else holds, and an ``op`` that returns
        a new tensor (so the result never aliases ``x``).
        """
        runs = self._draw(x, generator)
        if any(chosen for _, _, chosen in runs):
            self._apply_runs(x, x, runs, generator)


class Compose(_Op):
    """Chain operations, applied in order.

    Parameters
    ----------
    ops : iterable of callable
        Operations, each called as ``op(x, generator=generator)``.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d.augment import Compose, Cutout, Flip, RandomApply
    >>> aug = Compose([RandomApply(Flip(), p=0.5), Cutout()])
    >>> x = torch.randn(2, 1, 8, 8, 8)
    >>> aug(x, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([2, 1, 8, 8, 8])
    """

    def __init__(self, ops: Iterable[Callable]):
        try:
            ops = list(ops)
        except TypeError:
            raise ValueError(
                f"`ops` must be an iterable of callables, got {ops!r}."
            ) from None
        for op in ops:
            if not callable(op):
                raise ValueError(f"`ops` must contain callables only, got {op!r}.")
        self.ops = ops

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Apply every operation in turn.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, \\*spatial)
            Floating-point batch.
        generator : torch.Generator or None, default=None
            Source of randomness, passed to every operation.

        Returns
        -------
        torch.Tensor
            Transformed batch (a new tensor, even when ``ops`` is empty).
        """
        _check_input(x)
        out = x
        owned = False  # whether ``out`` is a new tensor that only we hold
        for op in self.ops:
            if (
                owned
                and isinstance(op, RandomApply)
                and op.p < 1.0
                and _returns_new(op.op)
            ):
                # update in place, saving a copy of the samples left unchanged
                op._apply_inplace(out, generator)
            else:
                out = op(out, generator=generator)
                owned = _returns_new(op)
        return out.clone() if out is x else out

    def __len__(self) -> int:
        return len(self.ops)

    def __getitem__(self, index):
        return self.ops[index]

    def __repr__(self) -> str:
        if not self.ops:
            return "Compose([])"
        inner = "".join(f"\n    {op!r}," for op in self.ops)
        return f"Compose([{inner}\n])"
