"""Cubic patches at landmarks (DrasCLR): extraction from volumes, optionally
through a per-subject atlas-to-subject affine, the location-major patch
dataset and its batch sampler."""

from __future__ import annotations

import operator
from numbers import Integral

import numpy as np
import torch

from ._dataset import VolumeDataset, is_volume_collection
from ._paths import expand_paths

__all__ = [
    "LandmarkPatchDataset",
    "LocationMajorBatchSampler",
    "extract_patches",
    "map_corners",
]


def _check_patch_size(patch_size):
    if isinstance(patch_size, bool) or not isinstance(patch_size, Integral):
        raise TypeError(f"patch_size must be an int; got {patch_size!r}.")
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1; got {patch_size!r}.")
    return int(patch_size)


def check_corners(landmarks, name="landmarks"):
    """Validate window corners: shape (n, 3), integer-valued, >= 0; int64."""
    arr = np.asarray(landmarks)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(
            f"{name} must have shape (n_landmarks, 3); got shape {arr.shape}."
        )
    if arr.dtype == bool or arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold integer voxel indices; got {arr.dtype}.")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{name} must hold integer voxel indices.")
    arr = arr.astype(np.int64)
    if (arr < 0).any():
        j = int(np.flatnonzero((arr < 0).any(axis=1))[0])
        raise ValueError(
            f"{name} must be non-negative voxel indices (window corners); "
            f"landmark {j} is {arr[j].tolist()}."
        )
    return arr


def check_affine(affine, name="affine"):
    """Validate a (4, 4) or (3, 4) matrix; return its finite (3, 4) top rows."""
    arr = np.asarray(affine, dtype=np.float64)
    if arr.shape not in ((4, 4), (3, 4)):
        raise ValueError(f"{name} must have shape (4, 4) or (3, 4); got {arr.shape}.")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite.")
    return arr[:3]


def check_affines(affines, n):
    """Validate one atlas-to-volume matrix per volume (None passes through)."""
    if affines is None:
        return None
    if isinstance(affines, np.ndarray | list | tuple) and len(affines) != n:
        raise ValueError(
            f"affines must hold one (4, 4) matrix per volume ({n}); got {len(affines)}."
        )
    return [check_affine(a, name=f"affines[{i}]") for i, a in enumerate(affines)]


def map_corners(landmarks, affine=None):
    """Window corners in a subject's voxel grid.

    DrasCLR maps each atlas corner through the registration (atlas index ->
    subject index) and rounds to the nearest voxel. Only the corner is
    mapped: the window keeps the subject's own axes, so rotation and scale
    of the registration are not undone in the patch content.

    Parameters
    ----------
    landmarks : array-like of shape (n, 3)
        Corners in atlas voxel indices (array axis order of the volumes).
    affine : array-like of shape (4, 4) or (3, 4), default=None
        Maps an atlas voxel index ``a`` to the subject voxel index
        ``affine[:3, :3] @ a + affine[:3, 3]``. None: the identity (the
        volume is already in atlas space). Given a world-space registration
        ``T`` (atlas mm -> subject mm), use
        ``inv(subject_affine) @ T @ atlas_affine``.

    Returns
    -------
    ndarray of int64, shape (n, 3)
        Rounded half up (``floor(v + 0.5)``), as ITK's point-to-index.

    Examples
    --------
    >>> map_corners([[10, 0, 4]], [[1, 0, 0, 2.5], [0, 1, 0, -1], [0, 0, 2, 0]])
    array([[13, -1,  8]])
    """
    corners = check_corners(landmarks)
    if affine is None:
        return corners
    a = check_affine(affine)
    mapped = corners @ a[:, :3].T + a[:, 3]
    return np.floor(mapped + 0.5).astype(np.int64)


def extract_patches(
    volume, landmarks, patch_size, *, affine=None, outside="raise", fill_value=0.0
):
    """Cut a cubic window at every landmark corner out of one volume.

    Vectorised: the windows are gathered with one fancy index (no loop over
    landmarks or voxels). Window ``j`` is
    ``volume[:, c0:c0 + P, c1:c1 + P, c2:c2 + P]`` with ``(c0, c1, c2)`` the
    landmark mapped by :func:`map_corners`.

    Parameters
    ----------
    volume : array-like of shape (D, H, W) or (C, D, H, W)
        One volume.
    landmarks : array-like of shape (n, 3)
        Window corners (minimum indices), in atlas voxel indices.
    patch_size : int
        Edge ``P`` of the windows.
    affine : array-like of shape (4, 4) or (3, 4), default=None
        Atlas-to-subject voxel map, see :func:`map_corners`.
    outside : {"raise", "fill"}, default="raise"
        A window that crosses the volume border: ``"raise"`` a ValueError,
        or ``"fill"`` its outside voxels with ``fill_value`` (DrasCLR pads
        every registered CT with air). A window entirely outside the volume
        always raises.
    fill_value : float, default=0.0
        Value of voxels outside the volume with ``outside="fill"``.

    Returns
    -------
    ndarray of shape (n, C, P, P, P)
        Same dtype as ``volume``.

    Examples
    --------
    >>> import numpy as np
    >>> vol = np.arange(4 * 4 * 4).reshape(4, 4, 4)
    >>> p = extract_patches(vol, [[0, 0, 0], [2, 2, 2]], 2)
    >>> p.shape, p[1, 0, 0, 0, 0] == vol[2, 2, 2]
    ((2, 1, 2, 2, 2), np.True_)
    >>> extract_patches(vol, [[3, 3, 3]], 2, outside="fill", fill_value=-1)[0, 0, 1]
    array([[-1, -1],
           [-1, -1]])
    """
    size = _check_patch_size(patch_size)
    if outside not in ("raise", "fill"):
        raise ValueError(f"outside must be 'raise' or 'fill'; got {outside!r}.")
    vol = np.asarray(volume)
    if vol.ndim == 3:
        vol = vol[None]
    if vol.ndim != 4:
        raise ValueError(
            f"volume must have shape (D, H, W) or (C, D, H, W); got {vol.shape}."
        )
    spatial = vol.shape[1:]
    corners = map_corners(landmarks, affine)
    n = corners.shape[0]
    if min(spatial) < size:
        raise ValueError(
            f"the volume (spatial shape {spatial}) is smaller than a patch "
            f"(patch_size={size})."
        )
    offsets = np.arange(size, dtype=np.int64)
    index = [corners[:, a, None] + offsets for a in range(3)]  # each (n, P)
    inside = [(ix >= 0) & (ix < s) for ix, s in zip(index, spatial)]
    crossing = ~(inside[0].all(1) & inside[1].all(1) & inside[2].all(1))
    missing = ~(inside[0].any(1) & inside[1].any(1) & inside[2].any(1))
    if missing.any() or (outside == "raise" and crossing.any()):
        j = int(np.flatnonzero(missing if missing.any() else crossing)[0])
        how = "lies entirely" if missing.any() else "is partly"
        raise ValueError(
            f"landmark {j}: the window of size {size} at corner "
            f"{corners[j].tolist()} {how} outside the volume of spatial shape "
            f"{spatial}."
        )
    clipped = [np.clip(ix, 0, s - 1) for ix, s in zip(index, spatial)]
    out = vol[
        :,
        clipped[0][:, :, None, None],
        clipped[1][:, None, :, None],
        clipped[2][:, None, None, :],
    ]  # (C, n, P, P, P)
    if crossing.any():
        keep = (
            inside[0][:, :, None, None]
            & inside[1][:, None, :, None]
            & inside[2][:, None, None, :]
        )
        out = np.where(keep[None], out, np.asarray(fill_value, dtype=out.dtype))
    return np.ascontiguousarray(np.moveaxis(out, 0, 1)).reshape(
        n, vol.shape[0], size, size, size
    )


class VolumeSource:
    """Index volumes one by one from any input form, shapes may differ.

    Arrays ``(n, D, H, W)``/``(n, C, D, H, W)`` and VolumeDatasets are read
    as they are; a list of paths, nibabel images or arrays of different
    shapes gets one loader per item, so volumes of different shapes (native
    subject space, used with affines) are accepted. A folder or a glob
    pattern is expanded to the sorted list of its images first.
    """

    def __init__(self, X, preprocessing=None):
        self._items = None
        self._ds = None
        X = expand_paths(X)
        if isinstance(X, VolumeDataset):
            if preprocessing is not None:
                raise ValueError(
                    "X is already a VolumeDataset: give the preprocessing when "
                    "building it."
                )
            self._ds = X
        elif is_volume_collection(X):
            items = X.tolist() if hasattr(X, "tolist") else list(X)
            self._items = [
                VolumeDataset([s], preprocessing=preprocessing) for s in items
            ]
        elif isinstance(X, list | tuple) and len(X) > 0 and _ragged(X):
            self._items = [
                VolumeDataset(np.asarray(v)[None], preprocessing=preprocessing)
                for v in X
            ]
        else:
            self._ds = VolumeDataset(X, preprocessing=preprocessing)

    def __len__(self):
        return len(self._items) if self._items is not None else len(self._ds)

    def name(self, i):
        if self._items is not None:
            name = self._items[i].name(0)
            return name if not name.startswith("X[0]") else f"X[{i}]" + name[4:]
        return self._ds.name(i)

    def volume(self, i):
        """Volume ``i`` as float32 ``(C, D, H, W)``."""
        if self._items is not None:
            return self._items[i].volume(0)
        return self._ds.volume(i)


def window_patches(source, i, landmarks, patch_size, window, affines, n_channels=None):
    """Clipped, window-shifted patches (L, C, P, P, P) of volume ``i``.

    The patches of :func:`extract_patches` at ``landmarks`` (through
    ``affines[i]`` when given, parts outside the volume filled with the
    window's low end), clipped to ``window = (low, high)`` and shifted by
    ``low``: DrasCLR's intensities before augmentation.

    Parameters
    ----------
    source : VolumeSource
        The volumes.
    i : int
        Index of the volume.
    landmarks : ndarray of shape (L, 3)
        Window corners in atlas voxel indices.
    patch_size : int
        Edge of the patches.
    window : tuple of 2 float
        Intensity window ``(low, high)``.
    affines : list of ndarray or None
        Atlas-to-volume maps, one per volume, or None (atlas space).
    n_channels : int or None, default=None
        Channels the volume must have (None: any).

    Returns
    -------
    ndarray of float32, shape (L, C, P, P, P)
    """
    low, high = window
    volume = source.volume(i)
    if n_channels is not None and volume.shape[0] != n_channels:
        raise ValueError(
            f"{source.name(i)} has {volume.shape[0]} channel(s), but the "
            f"encoder expects {n_channels}."
        )
    if min(volume.shape[1:]) < patch_size:
        raise ValueError(
            f"{source.name(i)} of spatial shape {volume.shape[1:]} is smaller "
            f"than a patch (patch_size={patch_size})."
        )
    try:
        patches = extract_patches(
            volume,
            landmarks,
            patch_size,
            affine=None if affines is None else affines[i],
            outside="raise" if affines is None else "fill",
            fill_value=low,
        )
    except ValueError as exc:
        raise ValueError(f"{source.name(i)}: {exc}") from None
    np.clip(patches, low, high, out=patches)
    patches -= low
    return patches


def patch_bank(source, landmarks, patch_size, window, affines, n_channels=None):
    """Every volume's :func:`window_patches`, landmark-major.

    Parameters
    ----------
    source : VolumeSource
        The volumes, read one by one.
    landmarks, patch_size, window, affines, n_channels
        As in :func:`window_patches`.

    Returns
    -------
    ndarray of float32, shape (L, n, C, P, P, P)
        ``bank[j, i]`` is the patch of volume ``i`` at landmark ``j``.

    Raises
    ------
    MemoryError
        With the size of the bank, when it cannot be allocated.
    """
    n = len(source)
    first = window_patches(
        source, 0, landmarks, patch_size, window, affines, n_channels
    )
    shape = (len(landmarks), n, *first.shape[1:])
    try:
        bank = np.empty(shape, dtype=np.float32)
    except MemoryError:
        nbytes = int(np.prod(shape)) * 4
        raise MemoryError(
            f"the patch bank (n_landmarks x n_subjects x C x patch_size**3 "
            f"float32 = {shape}) needs {nbytes / 1e9:.2f} GB, which could not be "
            "allocated; use fewer landmarks or subjects."
        ) from None
    bank[:, 0] = first
    for i in range(1, n):
        bank[:, i] = window_patches(
            source, i, landmarks, patch_size, window, affines, first.shape[1]
        )
    return bank


def _ragged(X):
    shapes = set()
    for v in X:
        shape = np.shape(v)
        if len(shape) not in (3, 4):
            return False
        shapes.add(shape)
    return len(shapes) > 1


class LandmarkPatchDataset(torch.utils.data.Dataset):
    """Every subject's patch at every landmark, indexed location-major.

    Item ``idx = j * n_subjects + i`` is the patch of subject ``i`` at
    landmark ``j``, returned as ``(X, 0)`` with ``X`` a dict of tensors:
    ``"patches"`` (C, P, P, P), ``"neighbors"`` (k, C, P, P, P), the same
    subject's patches at the ``k`` neighbours of ``j``, and ``"landmark"``
    (``j``). The landmark is part of the index, so DataLoader worker
    processes always see the right one.

    Parameters
    ----------
    patches : ndarray of shape (n_landmarks, n_subjects, C, P, P, P)
        The patch bank.
    neighbors : array-like of int, shape (n_landmarks, k)
        Neighbour landmarks of every landmark.

    Examples
    --------
    >>> import numpy as np
    >>> bank = np.zeros((3, 4, 1, 2, 2, 2), np.float32)
    >>> ds = LandmarkPatchDataset(bank, [[1], [0], [1]])
    >>> x, _ = ds[9]                       # landmark 2, subject 1
    >>> x["neighbors"].shape, int(x["landmark"])
    (torch.Size([1, 1, 2, 2, 2]), 2)
    """

    def __init__(self, patches, neighbors):
        if getattr(patches, "ndim", None) != 6:
            raise ValueError(
                "patches must have shape (n_landmarks, n_subjects, C, P, P, P); got "
                f"{np.shape(patches)}."
            )
        self.patches = patches
        self.neighbors = np.asarray(neighbors, dtype=np.int64)
        if self.neighbors.ndim != 2 or self.neighbors.shape[0] != patches.shape[0]:
            raise ValueError(
                f"neighbors must have shape ({patches.shape[0]}, k); got "
                f"{self.neighbors.shape}."
            )
        self.n_landmarks, self.n_subjects = patches.shape[:2]

    def __len__(self):
        return self.n_landmarks * self.n_subjects

    def __getitem__(self, idx):
        idx = operator.index(idx)
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for {len(self)} patches.")
        j, i = divmod(idx, self.n_subjects)
        x = {
            "patches": torch.from_numpy(np.array(self.patches[j, i])),
            "neighbors": torch.from_numpy(np.array(self.patches[self.neighbors[j], i])),
            "landmark": torch.tensor(j),
        }
        return x, torch.Tensor([0])


class LocationMajorBatchSampler(torch.utils.data.Sampler):
    """DrasCLR's batches: one landmark at a time, every subject in order.

    An epoch walks the landmarks ``j = 0 ... n_landmarks - 1``; at each it
    yields the subjects ``0 ... n_subjects - 1`` in order, in batches of
    ``batch_size``, so every batch holds distinct subjects at one landmark
    (the official code's intended scheme). A last batch of a single subject
    joins the previous one (BatchNorm needs two samples). Indices follow
    :class:`LandmarkPatchDataset` (``j * n_subjects + i``).

    Parameters
    ----------
    n_landmarks : int
    n_subjects : int
        At least 2.
    batch_size : int
        Subjects per batch, at least 2; capped at ``n_subjects``.

    Examples
    --------
    >>> list(LocationMajorBatchSampler(2, 5, batch_size=2))
    [[0, 1], [2, 3, 4], [5, 6], [7, 8, 9]]
    """

    def __init__(self, n_landmarks, n_subjects, batch_size):
        self.n_landmarks = operator.index(n_landmarks)
        self.n_subjects = operator.index(n_subjects)
        batch_size = operator.index(batch_size)
        if self.n_landmarks < 1 or self.n_subjects < 2 or batch_size < 2:
            raise ValueError(
                "LocationMajorBatchSampler needs n_landmarks >= 1, n_subjects >= 2 "
                f"and batch_size >= 2; got {n_landmarks}, {n_subjects}, {batch_size}."
            )
        self.batch_size = min(batch_size, self.n_subjects)
        bounds = list(range(0, self.n_subjects, self.batch_size)) + [self.n_subjects]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
            del bounds[-2]
        self._bounds = bounds

    def __len__(self):
        return self.n_landmarks * (len(self._bounds) - 1)

    def __iter__(self):
        n = self.n_subjects
        for j in range(self.n_landmarks):
            for lo, hi in zip(self._bounds[:-1], self._bounds[1:]):
                yield list(range(j * n + lo, j * n + hi))
