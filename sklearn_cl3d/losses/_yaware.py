"""y-Aware InfoNCE (Dufumier et al., MICCAI 2021)."""

from __future__ import annotations

import torch

from ._infonce import NORMALIZATIONS, check_temperature, kernel_infonce
from ._kernels import check_bandwidth, get_kernel, stack_view_metadata

__all__ = ["YAwareLoss", "yaware_infonce"]


def yaware_infonce(
    z_i, z_j, y, sigma=5.0, temperature=0.1, kernel="rbf", normalization="official"
):
    """y-Aware InfoNCE: positives weighted by a kernel on continuous metadata.

    The metadata of both views are stacked (``[y; y]``), the kernel matrix
    ``K_ab = k(y_a, y_b)`` (``exp(-||y_a - y_b||^2 / (2 sigma^2))`` by default)
    weights every pair, and :func:`kernel_infonce` does the rest. With the
    default ``normalization="official"`` the value equals the official
    ``GeneralizedSupervisedNTXenLoss`` (column-normalised weights, 2N - 1
    candidates from both views, reduction ``-(1/N) sum``); ``"row"`` normalises
    per anchor as the paper writes it.

    Limits: with all labels distinct and ``sigma`` much smaller than the
    smallest label gap, this equals :func:`nt_xent`; with tied labels and a
    tiny ``sigma`` the tied samples stay mutual positives, so it is *not*
    SimCLR; with ``sigma -> inf`` every other sample is a positive.

    Parameters
    ----------
    z_i, z_j : torch.Tensor of shape (N, D)
        Projections of view 1 and view 2 of the same N subjects.
    y : array-like or torch.Tensor of shape (N,) or (N, k)
        Continuous metadata (e.g. age in years). NumPy or torch; no gradient.
        With k columns and one sigma the kernel uses the Euclidean distance.
    sigma : float, array-like of shape (k,) or (k, k), default=5.0
        Kernel width in label units (the paper uses 5 years for age), > 0;
        one width per metadata column, or a symmetric positive-definite
        ``(k, k)`` bandwidth matrix in squared units (Gaussian kernel only;
        see :func:`~sklearn_cl3d.losses.check_bandwidth`). A callable
        kernel gets the validated value (a float or a NumPy array).
    temperature : float, default=0.1
        Softmax temperature, > 0.
    kernel : {"rbf", "gaussian", "laplacian", "delta", "discrete"} or callable, \
default="rbf"
        Kernel on the metadata; a callable ``f(y1, y2, *, sigma)`` is allowed.
    normalization : {"official", "row"}, default="official"
        Weight normalisation, see :func:`kernel_infonce`.

    Returns
    -------
    torch.Tensor
        Scalar loss.

    Examples
    --------
    >>> import torch
    >>> z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    >>> age = torch.linspace(20, 80, 8)
    >>> yaware_infonce(z1, z2, age, sigma=5.0).shape
    torch.Size([])
    """
    # temperature and normalization are checked by kernel_infonce
    sigma = check_bandwidth(sigma)
    kernel_fn = get_kernel(kernel)
    y2 = stack_view_metadata(y, z_i, name="y")
    weights = kernel_fn(y2, y2, sigma=sigma)
    return kernel_infonce(
        z_i, z_j, weights, temperature=temperature, normalization=normalization
    )


class YAwareLoss(torch.nn.Module):
    """Module form of :func:`yaware_infonce`, usable as a skorch criterion.

    Parameters
    ----------
    sigma : float, array-like of shape (k,) or (k, k), default=5.0
        Kernel width in label units, > 0, one per metadata column, or a
        bandwidth matrix; see :func:`yaware_infonce`.
    temperature : float, default=0.1
        Softmax temperature, > 0.
    kernel : str or callable, default="rbf"
        Kernel on the metadata, see :func:`yaware_infonce`.
    normalization : {"official", "row"}, default="official"
        Weight normalisation, see :func:`kernel_infonce`.

    Examples
    --------
    >>> import torch
    >>> loss = YAwareLoss(sigma=5.0)
    >>> age = torch.tensor([20.0, 30.0, 40.0, 50.0])
    >>> loss(torch.randn(4, 8), torch.randn(4, 8), age).shape
    torch.Size([])
    """

    def __init__(
        self, sigma=5.0, temperature=0.1, kernel="rbf", normalization="official"
    ):
        super().__init__()
        self.sigma = check_bandwidth(sigma)
        self.temperature = check_temperature(temperature)
        get_kernel(kernel)
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}; got {normalization!r}."
            )
        self.kernel = kernel
        self.normalization = normalization

    def forward(self, z_i, z_j, y):
        """Return the y-Aware loss of the two views given metadata ``y``."""
        if y is None:
            raise ValueError(
                "YAwareLoss needs the metadata y (e.g. age); got None. Use "
                "NTXentLoss for SimCLR without metadata."
            )
        return yaware_infonce(
            z_i,
            z_j,
            y,
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
