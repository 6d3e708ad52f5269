"""Weakly-supervised positional InfoNCE (Sarfati et al., MICCAI 2023)."""

from __future__ import annotations

import math

import torch

from ._infonce import NORMALIZATIONS, check_temperature, kernel_infonce
from ._kernels import _pair, _sq_dist, delta_kernel, get_kernel, stack_view_metadata

__all__ = ["WSP_KERNELS", "WSPLoss", "distance_kernel", "wsp_infonce"]

WSP_KERNELS = ("rbf", "gaussian", "laplacian", "discrete", "distance")
# Position kernels of the official WSP code that take no width: sigma is
# ignored by them (``sigma=inf`` does not switch the position factor off).
_SIGMA_FREE = ("distance",)


def distance_kernel(y, y2=None, *, sigma=None) -> torch.Tensor:
    r"""The official WSP ``'distance'`` kernel ``exp(-||a - b||_2)``.

    The Euclidean distance (not its square) between metadata rows, with no
    width parameter.

    Parameters
    ----------
    y : array-like or torch.Tensor of shape (n,) or (n, k)
        Metadata (slice positions).
    y2 : array-like or torch.Tensor of shape (m,) or (m, k), default=None
        Second set; ``None`` means ``y``.
    sigma : None
        Ignored; accepted so that all kernels share one signature.

    Returns
    -------
    torch.Tensor of shape (n, m)

    Examples
    --------
    >>> K = distance_kernel([[0.0, 0.0], [3.0, 4.0]])
    >>> round(float(K[0, 1]), 6)  # exp(-5)
    0.006738
    """
    a, b = _pair(y, y2)
    # exact differences: equal rows give exactly exp(0) = 1 (the partner's weight)
    return torch.exp(-_sq_dist(a, b).sqrt())


def _wsp_kernel(kernel):
    if isinstance(kernel, str) and kernel not in WSP_KERNELS:
        raise ValueError(
            f"kernel must be one of {WSP_KERNELS} or a callable; got {kernel!r}."
        )
    if isinstance(kernel, str) and kernel == "distance":
        return distance_kernel
    return get_kernel(kernel)


def _check_wsp_sigma(sigma) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        raise TypeError(f"sigma must be a positive number or inf; got {sigma!r}.")
    sigma = float(sigma)
    if math.isnan(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be > 0 (inf allowed); got {sigma!r}.")
    return sigma


def wsp_infonce(
    z_i,
    z_j,
    labels=None,
    positions=None,
    sigma=0.85,
    temperature=0.1,
    kernel="rbf",
    normalization="official",
):
    """WSP loss: a Dirac kernel on a weak label times a kernel on slice position.

    The weight of the pair (a, b) of the 2N stacked views is
    ``delta(label_a, label_b) * k(position_a, position_b)`` (the other view of
    the same slice always weighs 1), and :func:`kernel_infonce` does the rest;
    with ``normalization="official"`` the value equals the official
    ``WSPContrastiveLoss`` (column-normalised weights, 2N - 1 candidates,
    reduction ``-(1/N) sum``).

    The paper's ablations are the same function:

    * positions only (``labels=None``): y-Aware on the slice position;
    * label only (``positions=None`` or ``sigma=inf``): twice the official
      SupCon on the weak label;
    * SimCLR (``labels=None`` and ``positions=None``): :func:`nt_xent`.

    Parameters
    ----------
    z_i, z_j : torch.Tensor of shape (N, D)
        Projections of the two views of N slices.
    labels : array-like or torch.Tensor of shape (N,), default=None
        Weak discrete label of each slice's volume.
    positions : array-like or torch.Tensor of shape (N,) or (N, k), default=None
        Slice positions (e.g. ``k / n_kept`` in [0, 1)); several columns use
        the Euclidean distance.
    sigma : float, default=0.85
        Width of the position kernel (the official configuration's 0.85),
        > 0; ``inf`` makes the position factor 1 (except for
        ``kernel="distance"``, which has no width).
    temperature : float, default=0.1
        Softmax temperature, > 0.
    kernel : {"rbf", "gaussian", "laplacian", "discrete", "distance"} or \
callable, default="rbf"
        Kernel on positions (``"laplacian"`` uses ``gamma = 1 / (2 sigma^2)``
        as the official code; ``"discrete"`` is 1 / 0.5 / 0 for distances
        0 / 1 / other; ``"distance"`` is ``exp(-||d - d'||)``
        (:func:`distance_kernel`), which ignores ``sigma``, ``inf``
        included).
    normalization : {"official", "row"}, default="official"
        Weight normalisation, see :func:`kernel_infonce`.

    Returns
    -------
    torch.Tensor
        Scalar loss.

    Examples
    --------
    >>> import torch
    >>> z1, z2 = torch.randn(6, 8), torch.randn(6, 8)
    >>> labels = [0, 0, 1, 1, 2, 2]
    >>> positions = [0.1, 0.2, 0.1, 0.5, 0.9, 0.3]
    >>> wsp_infonce(z1, z2, labels, positions).shape
    torch.Size([])
    """
    # temperature and normalization are checked by kernel_infonce
    sigma = _check_wsp_sigma(sigma)
    kernel_fn = _wsp_kernel(kernel)
    sigma_free = isinstance(kernel, str) and kernel in _SIGMA_FREE
    weights = None
    if labels is not None:
        lab = stack_view_metadata(labels, z_i, name="labels")
        weights = delta_kernel(lab)
    if positions is not None and (sigma_free or not math.isinf(sigma)):
        pos = stack_view_metadata(positions, z_i, name="positions")
        k = kernel_fn(pos, pos, sigma=sigma)
        weights = k if weights is None else weights * k.to(weights.dtype)
    elif positions is not None and weights is None:
        pos = stack_view_metadata(positions, z_i, name="positions")
        weights = torch.ones(len(pos), len(pos), device=pos.device)
    return kernel_infonce(
        z_i, z_j, weights, temperature=temperature, normalization=normalization
    )


class WSPLoss(torch.nn.Module):
    """Module form of :func:`wsp_infonce` (the criterion of WSPPretrainer).

    Parameters
    ----------
    sigma : float, default=0.85
        Width of the position kernel, > 0 (``inf``: no position factor).
    temperature : float, default=0.1
        Softmax temperature, > 0.
    kernel : {"rbf", "gaussian", "laplacian", "discrete", "distance"} or \
callable, default="rbf"
        Kernel on positions (``"distance"``: ``exp(-||d - d'||)``, no width).
    normalization : {"official", "row"}, default="official"
        Weight normalisation, see :func:`kernel_infonce`.

    Examples
    --------
    >>> import torch
    >>> loss = WSPLoss(sigma=0.85)
    >>> loss(torch.randn(4, 8), torch.randn(4, 8), [0, 0, 1, 1],
    ...      [0.0, 0.5, 0.25, 0.75]).shape
    torch.Size([])
    """

    def __init__(
        self, sigma=0.85, temperature=0.1, kernel="rbf", normalization="official"
    ):
        super().__init__()
        self.sigma = _check_wsp_sigma(sigma)
        self.temperature = check_temperature(temperature)
        _wsp_kernel(kernel)
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}; got {normalization!r}."
            )
        self.kernel = kernel
        self.normalization = normalization

    def forward(self, z_i, z_j, labels=None, positions=None):
        """Return the WSP loss of the two views (labels/positions may be None)."""
        return wsp_infonce(
            z_i,
            z_j,
            labels,
            positions,
            sigma=self.sigma,
            temperature=self.temperature,
            kernel=self.kernel,
            normalization=self.normalization,
        )

    def extra_repr(self):
        return (
            f"sigma={self.sigma}, temperature={self.temperature}, "
            f"kernel={self.kernel!r}, normalization={self.normalization!r}"
        )
