"""Kernels over metadata, evaluated in torch on the metadata's device.

Each kernel maps a metadata matrix ``y`` of shape ``(n,)`` or ``(n, k)`` (and an
optional second one) to an ``(n, m)`` similarity matrix. They weight the
positives of :func:`~sklearn_cl3d.losses.kernel_infonce`: y-Aware uses a Gaussian
kernel on age, WSP multiplies a Dirac kernel on a weak label with a kernel on
slice position.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

__all__ = [
    "KERNELS",
    "as_metadata_tensor",
    "check_bandwidth",
    "delta_kernel",
    "discrete_kernel",
    "get_kernel",
    "laplacian_kernel",
    "product_kernel",
    "rbf_kernel",
    "stack_view_metadata",
]


def as_metadata_tensor(y, *, name="y", device=None, dtype=None) -> torch.Tensor:
    """Return metadata as a 2-D torch tensor of shape ``(n, k)``.

    Parameters
    ----------
    y : array-like or torch.Tensor of shape (n,) or (n, k)
        Metadata (NumPy or torch). It never carries a gradient.
    name : str, default="y"
        Name used in error messages.
    device : torch.device, default=None
        Target device (the embeddings' device). ``None`` keeps the tensor's
        device (CPU for NumPy input).
    dtype : torch.dtype, default=None
        Target floating dtype. ``None`` keeps a floating tensor's dtype and
        converts other input to ``torch.float64``.

    Returns
    -------
    torch.Tensor of shape (n, k)
        Detached metadata.

    Examples
    --------
    >>> import numpy as np
    >>> as_metadata_tensor(np.array([20.0, 30.0])).shape
    torch.Size([2, 1])
    """
    if not isinstance(y, torch.Tensor):
        arr = np.asarray(y)
        if arr.dtype.kind not in "biuf":
            raise TypeError(
                f"{name} must hold numbers; got an array of dtype {arr.dtype}."
            )
        y = torch.as_tensor(arr)
    y = y.detach()
    if not torch.is_floating_point(y):
        y = y.to(torch.float64 if dtype is None else dtype)
    if dtype is not None or device is not None:
        y = y.to(device=device, dtype=dtype)
    if y.ndim == 1:
        y = y[:, None]
    elif y.ndim != 2:
        raise ValueError(
            f"{name} must have shape (n,) or (n, k); got shape {tuple(y.shape)}."
        )
    return y


def stack_view_metadata(values, z, *, name="y") -> torch.Tensor:
    """Metadata of N samples repeated for their two views: shape (2N, k).

    Parameters
    ----------
    values : array-like or torch.Tensor of shape (N,) or (N, k)
        Per-sample metadata (NumPy or torch; no gradient).
    z : torch.Tensor of shape (N, D)
        The view-1 embeddings: give N and the device.
    name : str, default="y"
        Name used in error messages.

    Returns
    -------
    torch.Tensor of shape (2N, k)
        ``[values; values]`` on ``z``'s device, in the order of the stacked views.

    Examples
    --------
    >>> import torch
    >>> stack_view_metadata([20.0, 30.0], torch.zeros(2, 4)).ravel().tolist()
    [20.0, 30.0, 20.0, 30.0]
    """
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"z_i must be a torch.Tensor; got {type(z).__name__}.")
    values = as_metadata_tensor(values, name=name, device=z.device)
    if values.shape[0] != z.shape[0]:
        raise ValueError(
            f"{name} must have one row per sample: z_i has {z.shape[0]} rows, "
            f"{name} has {values.shape[0]}."
        )
    return torch.cat([values, values], dim=0)


def _check_sigma(sigma) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.number)):
        raise TypeError(f"sigma must be a positive number; got {sigma!r}.")
    sigma = float(sigma)
    if not sigma > 0 or math.isnan(sigma):
        raise ValueError(f"sigma must be > 0; got {sigma!r}.")
    return sigma


def check_bandwidth(sigma, n_columns=None):
    """Validate a kernel width: one value, one per metadata column, or a matrix.

    Parameters
    ----------
    sigma : float, array-like of shape (k,) or (k, k)
        * a positive number: one width for every column (in metadata units,
          e.g. years), returned as a Python float;
        * a 1-D array of ``k`` positive numbers: one width per metadata
          column (each in that column's units);
        * a 2-D ``(k, k)`` symmetric positive-definite bandwidth matrix
          ``H``, in squared metadata units, like a covariance: the Gaussian
          kernel is ``exp(-d^T H^{-1} d / 2)`` for a metadata difference
          ``d``, so ``H = diag(sigma**2)`` is the per-column case and
          off-diagonal terms follow correlated columns.
    n_columns : int, default=None
        Number of metadata columns ``k`` the widths must match (not checked
        when None).

    Returns
    -------
    float or ndarray of float64, shape (k,) or (k, k)

    Raises
    ------
    TypeError
        If ``sigma`` is not a number or a numeric array.
    ValueError
        If a width is not finite and positive, the shape does not match
        ``n_columns``, or the matrix is not symmetric positive definite.

    Examples
    --------
    >>> check_bandwidth(5.0)
    5.0
    >>> check_bandwidth([5.0, 2.0], n_columns=2)
    array([5., 2.])
    """
    if isinstance(sigma, torch.Tensor):
        sigma = sigma.detach().cpu().numpy()
    if not isinstance(sigma, (list, tuple, np.ndarray)) or np.ndim(sigma) == 0:
        if isinstance(sigma, np.ndarray):
            sigma = sigma[()]
        return _check_sigma(sigma)
    try:
        arr = np.asarray(sigma)
    except ValueError as exc:  # ragged nested lists
        raise ValueError(
            f"sigma must be a number or a rectangular array: {exc}"
        ) from None
    if arr.dtype == bool or arr.dtype.kind not in "iuf":
        raise TypeError(
            f"sigma must be a positive number or an array of numbers; got an "
            f"array of dtype {arr.dtype}."
        )
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError("sigma must hold finite numbers; got NaN or infinity.")
    if arr.ndim == 1:
        if arr.size == 0:
            raise ValueError("sigma must hold at least one width; got an empty array.")
        if not (arr > 0).all():
            raise ValueError(f"every width in sigma must be > 0; got {arr.tolist()}.")
    elif arr.ndim == 2:
        k = arr.shape[0]
        if arr.shape != (k, k) or k == 0:
            raise ValueError(
                "a bandwidth matrix sigma must be square, (k, k) for k metadata "
                f"columns; got shape {arr.shape}."
            )
        if not np.allclose(arr, arr.T, rtol=1e-10, atol=0.0):
            raise ValueError("the bandwidth matrix sigma must be symmetric.")
        arr = (arr + arr.T) / 2
        try:
            np.linalg.cholesky(arr)
        except np.linalg.LinAlgError:
            raise ValueError(
                "the bandwidth matrix sigma must be positive definite (like a "
                "covariance of the metadata, in squared units); its smallest "
                f"eigenvalue is {np.linalg.eigvalsh(arr).min():.3g}."
            ) from None
    else:
        raise ValueError(
            "sigma must be a number, one width per metadata column (k,) or a "
            f"(k, k) bandwidth matrix; got an array of shape {arr.shape}."
        )
    if n_columns is not None and arr.shape[0] != n_columns:
        what = "widths" if arr.ndim == 1 else "rows and columns"
        raise ValueError(
            f"sigma has {arr.shape[0]} {what} but the metadata has "
            f"{n_columns} column{'s' if n_columns != 1 else ''}: give one width "
            "per column, a (k, k) matrix, or a single number."
        )
    return arr


def _scaled_diff(a, b, sigma):
    """Per-column metadata differences ``a_i - b_j`` in units of the bandwidth.

    For a vector of widths every column is divided by its width; for a
    bandwidth matrix ``H = L L^T`` the differences are whitened by ``L^{-1}``
    so that their squared norm is ``d^T H^{-1} d``.
    """
    if sigma.shape[0] != a.shape[1]:
        check_bandwidth(sigma, n_columns=a.shape[1])
    diff = a[:, None, :] - b[None, :, :]
    if sigma.ndim == 1:
        return diff / torch.as_tensor(sigma, dtype=a.dtype, device=a.device)
    whiten = np.linalg.inv(np.linalg.cholesky(sigma))
    return diff @ torch.as_tensor(whiten.T, dtype=a.dtype, device=a.device)


def _pair(y1, y2):
    y1 = as_metadata_tensor(y1, name="y")
    y2 = y1 if y2 is None else as_metadata_tensor(y2, name="y2", device=y1.device)
    if y1.shape[1] != y2.shape[1]:
        raise ValueError(
            f"y and y2 must have the same number of columns; got {y1.shape[1]} "
            f"and {y2.shape[1]}."
        )
    dtype = torch.promote_types(y1.dtype, y2.dtype)
    return y1.to(dtype), y2.to(dtype)


def _sq_dist(y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
    # Exact differences (not the |a|^2 + |b|^2 - 2ab expansion), so that equal
    # labels give a distance of exactly 0 and the partner weight is exactly 1.
    return (y1[:, None, :] - y2[None, :, :]).pow(2).sum(-1)


def rbf_kernel(y, y2=None, *, sigma=1.0) -> torch.Tensor:
    r"""Gaussian (RBF) kernel ``exp(-||a - b||^2 / (2 sigma^2))``.

    ``sigma`` is the standard deviation in label units (years for age), as in
    the official y-Aware code (scikit-learn's ``rbf_kernel`` with
    ``gamma = 1 / (2 sigma^2)``); it is not a variance. With one width per
    column the kernel is ``exp(-sum_j (a_j - b_j)^2 / (2 sigma_j^2))``; with a
    bandwidth matrix ``H`` it is ``exp(-(a - b)^T H^{-1} (a - b) / 2)`` (see
    :func:`check_bandwidth`).

    Parameters
    ----------
    y : array-like or torch.Tensor of shape (n,) or (n, k)
        Metadata.
    y2 : array-like or torch.Tensor of shape (m,) or (m, k), default=None
        Second metadata set; ``None`` means ``y``.
    sigma : float, array-like of shape (k,) or (k, k), default=1.0
        Kernel width, > 0: one for all columns, one per column, or a
        symmetric positive-definite bandwidth matrix in squared units.

    Returns
    -------
    torch.Tensor of shape (n, m)

    Examples
    --------
    >>> import torch
    >>> K = rbf_kernel(torch.tensor([0.0, 1.0]), sigma=1.0)
    >>> round(float(K[0, 1]), 4)
    0.6065
    """
    sigma = check_bandwidth(sigma)
    a, b = _pair(y, y2)
    if isinstance(sigma, float):
        return torch.exp(-_sq_dist(a, b) / (2.0 * sigma * sigma))
    return torch.exp(-_scaled_diff(a, b, sigma).pow(2).sum(-1) / 2.0)


def laplacian_kernel(y, y2=None, *, sigma=1.0) -> torch.Tensor:
    r"""Laplacian kernel ``exp(-||a - b||_1 / (2 sigma^2))``.

    The rate uses the same ``gamma = 1 / (2 sigma^2)`` convention as
    :func:`rbf_kernel`, as the official WSP code does (not ``1 / sigma``).
    With one width per column it is ``exp(-sum_j |a_j - b_j| / (2
    sigma_j^2))``; a bandwidth matrix is refused (Gaussian kernel only).

    Parameters
    ----------
    y : array-like or torch.Tensor of shape (n,) or (n, k)
        Metadata.
    y2 : array-like or torch.Tensor of shape (m,) or (m, k), default=None
        Second metadata set; ``None`` means ``y``.
    sigma : float or array-like of shape (k,), default=1.0
        Kernel width, > 0: one for all columns or one per column.

    Returns
    -------
    torch.Tensor of shape (n, m)

    Examples
    --------
    >>> import torch
    >>> K = laplacian_kernel(torch.tensor([0.0, 1.0]), sigma=1.0)
    >>> round(float(K[0, 1]), 4)
    0.6065
    """
    sigma = check_bandwidth(sigma)
    a, b = _pair(y, y2)
    if isinstance(sigma, float):
        l1 = (a[:, None, :] - b[None, :, :]).abs().sum(-1)
        return torch.exp(-l1 / (2.0 * sigma * sigma))
    if sigma.ndim == 2:
        raise ValueError(
            "a (k, k) bandwidth matrix is defined for the Gaussian kernel "
            "('rbf') only; give the laplacian kernel one width per column."
        )
    if sigma.shape[0] != a.shape[1]:
        check_bandwidth(sigma, n_columns=a.shape[1])
    rate = torch.as_tensor(1.0 / (2.0 * sigma * sigma), dtype=a.dtype, device=a.device)
    l1 = ((a[:, None, :] - b[None, :, :]).abs() * rate).sum(-1)
    return torch.exp(-l1)


def delta_kernel(y, y2=None, *, sigma=None) -> torch.Tensor:
    """Dirac kernel on discrete labels: 1 where all columns are equal, else 0.

    Parameters
    ----------
    y : array-like or torch.Tensor of shape (n,) or (n, k)
        Discrete labels (integers, or floats holding integers).
    y2 : array-like or torch.Tensor of shape (m,) or (m, k), default=None
        Second label set; ``None`` means ``y``.
    sigma : None
        Ignored; accepted so that all kernels share one signature.

    Returns
    -------
    torch.Tensor of shape (n, m)

    Examples
    --------
    >>> delta_kernel([0, 1, 0]).tolist()
    [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
    """
    a, b = _pair(y, y2)
    return (a[:, None, :] == b[None, :, :]).all(-1).to(a.dtype)


def discrete_kernel(y, y2=None, *, sigma=None) -> torch.Tensor:
    """The official WSP ``'discrete'`` kernel on integer-valued metadata.

    1 where the Euclidean distance is exactly 0, 0.5 where it is exactly 1,
    0 otherwise.

    Parameters
    ----------
    y : array-like or torch.Tensor of shape (n,) or (n, k)
        Integer-valued metadata.
    y2 : array-like or torch.Tensor of shape (m,) or (m, k), default=None
        Second set; ``None`` means ``y``.
    sigma : None
        Ignored; accepted so that all kernels share one signature.

    Returns
    -------
    torch.Tensor of shape (n, m)

    Examples
    --------
    >>> discrete_kernel([0, 1, 3]).tolist()
    [[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    a, b = _pair(y, y2)
    d2 = _sq_dist(a, b)
    return (d2 == 0).to(a.dtype) + 0.5 * (d2 == 1).to(a.dtype)


KERNELS: dict[str, Callable[..., torch.Tensor]] = {
    "rbf": rbf_kernel,
    "gaussian": rbf_kernel,
    "laplacian": laplacian_kernel,
    "delta": delta_kernel,
    "discrete": discrete_kernel,
}


def get_kernel(kernel) -> Callable[..., torch.Tensor]:
    """Resolve a kernel name or callable.

    Parameters
    ----------
    kernel : str or callable
        One of ``"rbf"`` (alias ``"gaussian"``), ``"laplacian"``, ``"delta"``,
        ``"discrete"``, or a callable ``f(y1, y2, *, sigma) -> (n, m) tensor``.

    Returns
    -------
    callable

    Examples
    --------
    >>> get_kernel("gaussian") is rbf_kernel
    True
    """
    if callable(kernel):
        return kernel
    if isinstance(kernel, str) and kernel in KERNELS:
        return KERNELS[kernel]
    raise ValueError(
        f"kernel must be one of {sorted(KERNELS)} or a callable; got {kernel!r}."
    )


def product_kernel(kernels: Sequence) -> Callable[..., torch.Tensor]:
    """Product of kernels, each applied to its own metadata.

    Parameters
    ----------
    kernels : sequence of (kernel, kwargs)
        Each item is a kernel (name or callable) with a dict of its keyword
        arguments (e.g. ``{"sigma": 0.85}``); a bare kernel means no kwargs.

    Returns
    -------
    callable
        ``f(ys, ys2=None) -> (n, m) tensor`` where ``ys`` is a sequence with one
        metadata array per kernel (``None`` entries are skipped: that factor
        is 1).

    Examples
    --------
    >>> f = product_kernel([("delta", {}), ("rbf", {"sigma": 1.0})])
    >>> K = f([[0, 0, 1], [0.0, 0.0, 0.0]])
    >>> K.tolist()
    [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    factors = []
    for item in kernels:
        if isinstance(item, tuple):
            k, kw = item
        else:
            k, kw = item, {}
        factors.append((get_kernel(k), dict(kw)))

    def kernel(ys, ys2=None):
        if len(ys) != len(factors):
            raise ValueError(
                f"expected {len(factors)} metadata arrays, one per kernel; "
                f"got {len(ys)}."
            )
        ys2 = [None] * len(ys) if ys2 is None else ys2
        out = None
        for (k, kw), a, b in zip(factors, ys, ys2):
            if a is None:
                continue
            term = k(a, b, **kw)
            out = term if out is None else out * term.to(out.device)
        if out is None:
            raise ValueError("product_kernel needs at least one metadata array.")
        return out

    return kernel
