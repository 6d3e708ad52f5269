"""Representation-quality metrics of :mod:`sklearn_cl3d.monitoring` (plain
NumPy functions): alignment, uniformity, effective rank and per-dimension
standard deviation, and the warning raised when a representation collapses.
Import them from :mod:`sklearn_cl3d.monitoring`."""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial.distance import pdist


class RepresentationCollapseWarning(UserWarning):
    """The representation has collapsed (constant or nearly one-dimensional)."""


# ------------------------------------------------------------------ metrics


def _as_features(z, name="z"):
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d); got shape {z.shape}.")
    if not np.isfinite(z).all():
        raise ValueError(f"{name} holds NaN or infinity.")
    return z


def _l2_normalize(z):
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    # a zero row stays zero (it has no direction)
    return np.divide(z, norms, out=np.zeros_like(z), where=norms > 0)


def alignment(z1, z2, *, alpha=2):
    """Mean distance between the two views of each sample, after L2 norm.

    ``mean_i ||f(x_i) - f(x'_i)||^alpha`` with ``f`` the L2-normalised
    features (Wang & Isola, ICML 2020). 0 when the views coincide, at most
    ``2 ** alpha``; lower is better.

    Parameters
    ----------
    z1, z2 : array-like of shape (n, d)
        Features of view 1 and view 2 of the same n samples.
    alpha : float, default=2
        Exponent, > 0.

    Returns
    -------
    float

    Examples
    --------
    >>> round(alignment([[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 3.0]]), 12)
    1.0
    """
    z1, z2 = _as_features(z1, "z1"), _as_features(z2, "z2")
    if z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must have the same shape; got {z1.shape} and {z2.shape}."
        )
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0; got {alpha!r}.")
    dist = np.linalg.norm(_l2_normalize(z1) - _l2_normalize(z2), axis=1)
    return float(np.mean(dist**alpha))


def uniformity(z, *, t=2):
    """How evenly the L2-normalised features cover the sphere.

    ``log mean_{i<j} exp(-t ||f(x_i) - f(x_j)||^2)`` over distinct pairs (Wang
    & Isola, ICML 2020). 0 when every sample has the same direction, more
    negative when the samples spread out (``-4 t`` is reached only by
    antipodal pairs); lower is better.

    Parameters
    ----------
    z : array-like of shape (n, d)
        Features of n >= 2 samples.
    t : float, default=2
        Scale of the Gaussian potential, > 0.

    Returns
    -------
    float

    Examples
    --------
    >>> uniformity([[1.0, 0.0], [-2.0, 0.0]], t=2)
    -8.0
    """
    z = _as_features(z)
    if len(z) < 2:
        raise ValueError(f"uniformity needs at least 2 samples; got {len(z)}.")
    if not t > 0:
        raise ValueError(f"t must be > 0; got {t!r}.")
    sq = pdist(_l2_normalize(z), "sqeuclidean")
    # log-mean-exp, stable for large t
    m = float(np.max(-t * sq))
    return m + math.log(float(np.mean(np.exp(-t * sq - m))))


def effective_rank(z):
    """Effective rank of the centred features (Roy & Vetterli, 2007).

    ``exp(-sum_k p_k log p_k)`` with ``p_k = s_k / sum_l s_l`` and ``s`` the
    singular values of the feature matrix with its column means removed: the
    number of directions the samples vary along, weighted by how much (``r``
    for ``r`` equally strong orthogonal directions, 1 for samples on a line).
    A constant representation (no variance at all) gives 0.

    Parameters
    ----------
    z : array-like of shape (n, d)
        Features of n samples.

    Returns
    -------
    float
        Between 0 and ``min(n - 1, d)``.

    Examples
    --------
    >>> effective_rank([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    2.0
    >>> effective_rank([[3.0, 1.0], [3.0, 1.0]])
    0.0
    """
    z = _as_features(z)
    s = np.linalg.svd(z - z.mean(axis=0), compute_uv=False)
    # singular values at rounding level of the largest are zero directions
    s = s[s > s.max(initial=0.0) * max(z.shape) * np.finfo(np.float64).eps]
    if s.size == 0:
        return 0.0
    p = s / s.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def feature_std(z):
    """Per-dimension standard deviation of the L2-normalised features.

    Each sample's feature vector is scaled to unit norm, then the standard
    deviation (over samples, ``ddof=0``) of each dimension is taken. Features
    spread over the sphere give about ``1 / sqrt(d)`` per dimension; a
    collapsed representation (every sample the same direction) gives 0
    (Chen & He, CVPR 2021).

    Parameters
    ----------
    z : array-like of shape (n, d)
        Features of n samples.

    Returns
    -------
    ndarray of shape (d,)

    Examples
    --------
    >>> feature_std([[2.0, 0.0], [0.0, 5.0]]).tolist()
    [0.5, 0.5]
    """
    return _l2_normalize(_as_features(z)).std(axis=0)
