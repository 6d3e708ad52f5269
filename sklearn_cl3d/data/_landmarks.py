"""Anatomical landmarks for DrasCLR: sliding-window corners inside a mask,
their nearest neighbours and their normalised locations."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np

__all__ = ["landmark_locations", "landmark_neighbors", "make_landmarks"]


def _check_int(value, name, *, minimum=1):
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int; got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value!r}.")
    return int(value)


def _check_landmarks(landmarks):
    arr = np.asarray(landmarks)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(
            f"landmarks must have shape (n_landmarks, 3); got shape {arr.shape}."
        )
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise TypeError(
            f"landmarks must hold integer or float coordinates; got dtype {arr.dtype}."
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError("landmarks must be finite.")
    return arr


def _window_sums(mask, patch_size, starts):
    """Number of mask voxels in every window whose corner is on the start grid.

    Uses the integral volume (3-D cumulative sum with a leading zero plane on
    every axis): a box sum is an 8-term inclusion-exclusion of corner values.
    """
    integral = np.zeros(tuple(s + 1 for s in mask.shape), dtype=np.int64)
    integral[1:, 1:, 1:] = mask.cumsum(0, dtype=np.int64).cumsum(1).cumsum(2)
    lo = [
        starts[0][:, None, None],
        starts[1][None, :, None],
        starts[2][None, None, :],
    ]
    hi = [s + patch_size for s in lo]
    total = np.zeros((len(starts[0]), len(starts[1]), len(starts[2])), np.int64)
    for pick in range(8):
        idx = tuple(hi[a] if (pick >> a) & 1 else lo[a] for a in range(3))
        sign = 1 if (3 - bin(pick).count("1")) % 2 == 0 else -1
        total += sign * integral[idx]
    return total


def make_landmarks(
    mask, patch_size=32, stride=26, min_fraction=0.1, *, max_landmarks=None
):
    """Corners of the sliding windows that lie mostly inside a binary mask.

    This is the DrasCLR (and *Context Matters*) atlas patchification rule. A
    ``patch_size``-cube window slides over the mask grid. On every axis its
    corner starts at 0 and moves by ``stride`` while it is strictly less than
    ``size - patch_size``: ``range(0, size - patch_size, stride)``. A window
    exactly flush with the far border is therefore never used, and an axis
    as long as the patch gives no window at all. A window is kept when the
    number of its voxels with ``mask > 0`` is **strictly greater** than
    ``min_fraction * patch_size**3``; a window with exactly that fraction is
    dropped.

    Landmarks are listed in scan order: lexicographic in the corner index,
    axis 0 outermost, as the official nested loops visit them. Coordinates
    are in the mask's own axis order. The official code scans a SimpleITK
    image in ITK index order ``(x, y, z)``; a NumPy array read with
    ``sitk.GetArrayFromImage`` is ``(z, y, x)``, so pass
    ``mask.transpose(2, 1, 0)`` to obtain landmarks in the official order.

    The window counts come from an integral volume (cumulative sums), so the
    cost is one pass over the mask whatever the number of windows.

    Parameters
    ----------
    mask : array-like of shape (D, H, W)
        Region mask; voxels with a value > 0 are inside (DrasCLR's lung mask
        has labels 0/50/100).
    patch_size : int, default=32
        Edge length of the cubic window, in voxels.
    stride : int, default=26
        Step between window corners on every axis (26 gives 6 voxels of
        overlap for 32-voxel windows).
    min_fraction : float, default=0.1
        A window is kept when more than this fraction of its voxels is inside
        the mask. In [0, 1).
    max_landmarks : int, default=None
        ``None`` scans once. Otherwise, as in the official script (which uses
        1000), while ``max_landmarks`` or more windows pass, the threshold is
        raised by 0.1 (by repeated float addition, as the script does) and
        the scan repeats. A threshold above 1 keeps nothing, so the result
        can be empty.

    Returns
    -------
    landmarks : ndarray of int64, shape (n_landmarks, 3)
        Corner (minimum) voxel index of every kept window, in scan order. Not
        the window centre.

    Notes
    -----
    The landmark table shipped with DrasCLR (581 landmarks) was built from a
    slightly different mask than the one released with it (re-running this
    rule on the released mask gives 575). Treat the official table as data
    when reproducing the paper.

    Examples
    --------
    >>> import numpy as np
    >>> mask = np.zeros((10, 10, 10), dtype=bool)
    >>> mask[:6, :6, :6] = True
    >>> make_landmarks(mask, patch_size=4, stride=3, min_fraction=0.5)
    array([[0, 0, 0],
           [0, 0, 3],
           [0, 3, 0],
           [0, 3, 3],
           [3, 0, 0],
           [3, 0, 3],
           [3, 3, 0]])

    Corners run over ``range(0, 10 - 4, 3) = (0, 3)``; the window at
    ``(3, 3, 3)`` has only 27/64 of its voxels inside, so it is dropped.
    """
    patch_size = _check_int(patch_size, "patch_size")
    stride = _check_int(stride, "stride")
    if isinstance(min_fraction, bool) or not isinstance(min_fraction, Real):
        raise TypeError(f"min_fraction must be a float; got {min_fraction!r}.")
    min_fraction = float(min_fraction)
    if not 0.0 <= min_fraction < 1.0:
        raise ValueError(f"min_fraction must be in [0, 1); got {min_fraction}.")
    if max_landmarks is not None:
        max_landmarks = _check_int(max_landmarks, "max_landmarks")
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"mask must be a 3-D array (D, H, W); got shape {mask.shape}.")
    if patch_size > min(mask.shape):
        raise ValueError(
            f"patch_size={patch_size} is larger than the mask (shape {mask.shape})."
        )
    inside = mask > 0
    starts = [np.arange(0, s - patch_size, stride, dtype=np.int64) for s in mask.shape]
    counts = _window_sums(inside, patch_size, starts)
    volume = patch_size**3
    threshold = min_fraction
    keep = counts > threshold * volume
    # above a threshold of 1 nothing passes, so this loop always ends
    while max_landmarks is not None and int(keep.sum()) >= max_landmarks:
        threshold += 0.1
        keep = counts > threshold * volume
    i, j, k = np.nonzero(keep)  # C order: axis 0 outermost, as the scan
    return np.stack([starts[0][i], starts[1][j], starts[2][k]], axis=1)


def landmark_neighbors(landmarks, k=2):
    """The ``k`` nearest other landmarks of every landmark, deterministically.

    Distance is Euclidean between landmark coordinates (squared distances are
    compared, exactly in integers for integer landmarks). A landmark is never
    its own neighbour, even when another landmark has the same coordinates.
    Neighbours are sorted by increasing distance; **equal distances are broken
    by the lower landmark index**.

    DrasCLR takes ``np.argsort(distances[j])[1:k + 1]``. On the 26-voxel
    landmark grid most landmarks have several candidates at the k-th distance,
    and NumPy's default (unstable) argsort breaks those ties differently
    across versions and CPUs, so the official neighbour sets are not
    reproducible. This function uses the stable rule instead, which matches
    ``np.argsort(distances[j], kind="stable")[1:k + 1]`` whenever no other
    landmark coincides with landmark ``j``.

    Parameters
    ----------
    landmarks : array-like of shape (n_landmarks, 3)
        Landmark coordinates, e.g. from :func:`make_landmarks`.
    k : int, default=2
        Number of neighbours, 1 <= k < n_landmarks.

    Returns
    -------
    neighbors : ndarray of int64, shape (n_landmarks, k)
        Row ``j`` holds the indices of the neighbours of landmark ``j``,
        nearest first.

    Examples
    --------
    >>> import numpy as np
    >>> pts = np.array([[0, 0, 0], [0, 0, 26], [0, 26, 0], [0, 0, 52]])
    >>> landmark_neighbors(pts, k=2)
    array([[1, 2],
           [0, 3],
           [0, 1],
           [1, 0]])
    """
    arr = _check_landmarks(landmarks)
    n = arr.shape[0]
    k = _check_int(k, "k")
    if k >= n:
        raise ValueError(
            f"k must be smaller than the number of landmarks ({n}); got k={k}."
        )
    if np.issubdtype(arr.dtype, np.integer):
        pts = arr.astype(np.int64)
        self_key = -1
    else:
        pts = arr.astype(np.float64)
        self_key = -np.inf
    diff = pts[:, None, :] - pts[None, :, :]
    d2 = (diff * diff).sum(axis=2)
    np.fill_diagonal(d2, self_key)  # self sorts first, then is dropped
    order = np.argsort(d2, axis=1, kind="stable")
    return order[:, 1 : k + 1].astype(np.int64)


def landmark_locations(landmarks):
    """DrasCLR's normalised landmark locations, the routing input.

    Each axis is divided by its maximum over all landmarks and mapped
    affinely: ``p = landmarks / landmarks.max(axis=0) * 2 - 1``. This is not
    min-max scaling: the axis maximum goes to 1, but 0 goes to -1 and the
    axis minimum goes to ``2 * min / max - 1``.

    Parameters
    ----------
    landmarks : array-like of shape (n_landmarks, 3)
        Non-negative landmark coordinates (window corners); every axis must
        have a positive maximum.

    Returns
    -------
    locations : ndarray of float64, shape (n_landmarks, 3)
        Values in [-1, 1].

    Examples
    --------
    >>> import numpy as np
    >>> landmark_locations(np.array([[0, 26, 13], [52, 52, 26]]))
    array([[-1.,  0.,  0.],
           [ 1.,  1.,  1.]])
    """
    arr = _check_landmarks(landmarks).astype(np.float64)
    if arr.shape[0] == 0:
        raise ValueError("landmarks must hold at least one landmark.")
    if np.any(arr < 0):
        raise ValueError("landmarks must be non-negative voxel coordinates.")
    top = arr.max(axis=0)
    if np.any(top <= 0):
        bad = [int(a) for a in np.flatnonzero(top <= 0)]
        raise ValueError(
            f"landmarks must have a positive maximum on every axis; axis {bad} "
            "is all zero (the normalisation would divide by zero)."
        )
    return arr / top * 2 - 1


def routing_locations(landmarks):
    """DrasCLR's routing input as the estimator computes it, in float32.

    ``landmarks / landmarks.max(0) * 2 - 1`` per axis, without the checks of
    :func:`landmark_locations`: an axis whose maximum is not positive is
    divided by 1 (an all-zero axis maps to -1).

    Parameters
    ----------
    landmarks : ndarray of shape (n_landmarks, 3)
        Window corners.

    Returns
    -------
    ndarray of float32, shape (n_landmarks, 3)

    Examples
    --------
    >>> import numpy as np
    >>> routing_locations(np.array([[0, 0, 4], [2, 0, 8]])).tolist()
    [[-1.0, -1.0, 0.0], [1.0, -1.0, 1.0]]
    """
    arr = landmarks.astype(np.float64)
    top = arr.max(axis=0)
    top[top <= 0] = 1.0
    return (arr / top * 2 - 1).astype(np.float32)
