"""The atlas side of DrasCLR: a lung-like mask derived from the mean volume,
an atlas mask read from an array or a file, and the landmarks, neighbours and
atlas grid of one fit."""

from __future__ import annotations

import os
import warnings

import numpy as np
from scipy import ndimage as ndi

from ._io import load_volume
from ._landmarks import landmark_neighbors, make_landmarks
from ._lungmask import _planar
from ._patches import check_corners

__all__ = [
    "LUNG_THRESHOLD_HU",
    "fit_landmarks",
    "load_atlas_mask",
    "lung_like_mask",
    "mean_volume",
]

#: Mean intensity (HU) below which a voxel of the mean volume is lung-like.
LUNG_THRESHOLD_HU = -400.0


def lung_like_mask(mean_volume, threshold=LUNG_THRESHOLD_HU):
    """Voxels below ``threshold`` HU that are enclosed by tissue in some slice.

    The body is ``mean_volume >= threshold``. A low-attenuation voxel is kept
    when it is a hole of the body in a 2-D slice along at least one axis, so
    the air around the body is dropped while lungs cut by the field of view
    (open at the top or bottom) are kept.

    Parameters
    ----------
    mean_volume : ndarray of shape (D, H, W)
        Mean of CT volumes in atlas space, in HU.
    threshold : float, default=-400.0
        Intensity below which a voxel is of low attenuation.

    Returns
    -------
    mask : ndarray of bool, shape (D, H, W)

    Examples
    --------
    >>> import numpy as np
    >>> vol = np.full((5, 5, 5), -1000.0)
    >>> vol[1:4, 1:4, 1:4] = 0.0
    >>> vol[2, 2, 2] = -800.0
    >>> np.argwhere(lung_like_mask(vol)).tolist()
    [[2, 2, 2]]
    """
    low = mean_volume < threshold
    enclosed = np.zeros(low.shape, dtype=bool)
    for axis in range(3):
        enclosed |= ndi.binary_fill_holes(~low, structure=_planar(axis))
    return low & enclosed


def load_atlas_mask(mask):
    """An atlas region mask as a 3-D array.

    Parameters
    ----------
    mask : array-like of shape (D, H, W) or (1, D, H, W), or path
        The mask, or an image file holding it.

    Returns
    -------
    ndarray of shape (D, H, W)

    Raises
    ------
    ValueError
        If the mask is not 3-D (after dropping a single channel).
    """
    if isinstance(mask, str | os.PathLike):
        mask, _ = load_volume(mask)
    mask = np.asarray(mask)
    if mask.ndim == 4 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 3:
        raise ValueError(
            f"atlas_mask must be a 3-D array (D, H, W) or a path; got shape "
            f"{mask.shape}."
        )
    return mask


def mean_volume(source):
    """Voxel-wise mean over the volumes and their channels, in float64.

    Parameters
    ----------
    source : VolumeSource
        The volumes (all in atlas space, so on one grid).

    Returns
    -------
    ndarray of float64, shape (D, H, W)

    Raises
    ------
    ValueError
        If two volumes differ in shape.
    """
    total = None
    for i in range(len(source)):
        volume = source.volume(i)
        if total is None:
            total = np.zeros(volume.shape[1:], dtype=np.float64)
            first = volume.shape
        elif volume.shape != first:
            raise ValueError(
                f"{source.name(i)} has shape {volume.shape} but {source.name(0)} "
                f"has {first}: volumes in atlas space share one grid. Register "
                "them, or pass affines= with atlas_mask= or landmarks=."
            )
        total += volume.mean(axis=0)
    return total / len(source)


def fit_landmarks(
    source,
    affines,
    *,
    landmarks,
    atlas_mask,
    patch_size,
    stride,
    min_fraction,
    n_neighbors,
    stacklevel=2,
):
    """Landmarks, neighbours and atlas grid of a DrasCLR fit.

    ``landmarks`` when given; otherwise windows of ``patch_size`` on a
    ``stride`` grid with more than ``min_fraction`` of their voxels in
    ``atlas_mask`` (:func:`make_landmarks`); without a mask, in the
    :func:`lung_like_mask` of the mean volume (the whole grid, with a
    warning, when that mask is empty).

    Parameters
    ----------
    source : VolumeSource
        The fit volumes (read only to derive the mask from their mean).
    affines : list of ndarray or None
        Atlas-to-volume maps; the mean volume needs volumes in atlas space
        (None).
    landmarks : array-like of shape (n_landmarks, 3) or None
        Given window corners.
    atlas_mask : array-like, path or None
        Atlas region mask.
    patch_size, stride : int
        Window edge and grid step.
    min_fraction : float
        Fraction of a window that must be inside the mask.
    n_neighbors : int
        Neighbours per landmark, fewer than the landmarks.
    stacklevel : int, default=2
        Stack level of the warning about an empty lung-like mask.

    Returns
    -------
    landmarks : ndarray of int64, shape (n_landmarks, 3)
    neighbors : ndarray of int64, shape (n_landmarks, n_neighbors)
    atlas_shape : tuple of int or None
        The grid the landmarks were checked against (None when only
        ``landmarks`` was given).

    Raises
    ------
    ValueError
        If no landmark is found, a window leaves the atlas grid, there are
        too few landmarks for ``n_neighbors``, or the mean volume is needed
        with ``affines``.
    """
    atlas_shape = None
    mask = None
    if atlas_mask is not None:
        mask = load_atlas_mask(atlas_mask)
        atlas_shape = tuple(int(s) for s in mask.shape)
    if landmarks is not None:
        landmarks = check_corners(landmarks)
    else:
        if mask is None:
            if affines is not None:
                raise ValueError(
                    "with affines the volumes are not in atlas space, so the "
                    "landmarks cannot be derived from their mean: pass "
                    "atlas_mask= (the atlas region mask) or landmarks=."
                )
            mask = lung_like_mask(mean_volume(source))
            atlas_shape = tuple(int(s) for s in mask.shape)
            if not mask.any():
                warnings.warn(
                    "no lung-like region (mean below -400 HU, enclosed by "
                    "tissue) in the mean volume; landmarks are taken over the "
                    "whole grid. Pass atlas_mask= or landmarks= to choose them.",
                    UserWarning,
                    stacklevel=stacklevel,
                )
                mask = np.ones(mask.shape, dtype=bool)
        try:
            landmarks = make_landmarks(
                mask,
                patch_size=patch_size,
                stride=stride,
                min_fraction=min_fraction,
            )
        except ValueError as exc:
            raise ValueError(
                f"cannot place landmarks of patch_size={patch_size} in the "
                f"atlas grid of shape {mask.shape}: {exc}"
            ) from None
    n = len(landmarks)
    if n == 0:
        raise ValueError(
            "no landmark: no window of patch_size="
            f"{patch_size} on the landmark_stride={stride} "
            f"grid has more than landmark_min_fraction="
            f"{min_fraction} of its voxels in the mask (or "
            "landmarks= is empty). Pass landmarks= or a smaller patch_size."
        )
    if atlas_shape is not None:
        over = (landmarks + patch_size > np.asarray(atlas_shape)).any(axis=1)
        if over.any():
            j = int(np.flatnonzero(over)[0])
            raise ValueError(
                f"landmark {j} at corner {landmarks[j].tolist()}: its window of "
                f"patch_size={patch_size} lies outside the atlas grid of "
                f"shape {atlas_shape}."
            )
    if n_neighbors >= n:
        raise ValueError(
            f"n_neighbors={n_neighbors} must be smaller than the number of "
            f"landmarks ({n})."
        )
    neighbors = landmark_neighbors(landmarks, k=n_neighbors)
    return landmarks, neighbors, atlas_shape
