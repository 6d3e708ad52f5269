"""One dataset class for every form of volume input the estimators take."""

from __future__ import annotations

import numbers
import operator
import os

import numpy as np
import torch
from skorch.dataset import get_len
from skorch.utils import check_indexing, multi_indexing

from ._cache import VolumeCache, preprocessing_fingerprint
from ._io import (
    SUPPORTED_EXTENSIONS,
    inspect_source,
    is_volume_source,
    load_volume,
    source_name,
)
from ._paths import expand_paths, names_a_collection
from ._preprocessing import make_preprocessing
from ._validation import check_channels_first

__all__ = ["VolumeDataset", "as_volume_dataset", "is_volume_collection"]

_X_KINDS = (
    "X must be a 4-D array (n_samples, D, H, W) or a 5-D array "
    "(n_samples, C, D, H, W) of volumes, a list of paths to "
    f"{'/'.join(SUPPORTED_EXTENSIONS)} files (or DICOM series folders) or of "
    "nibabel images, a folder or a glob pattern"
)


def is_volume_collection(X):
    """Whether X is a collection of paths and/or nibabel images.

    Lists, tuples, 1-D object or string arrays and pandas Series qualify when
    every element is a path (``str`` or path-like) or a nibabel image; numeric
    arrays do not. A folder or a glob pattern (a ``str`` with ``*``, ``?`` or
    ``[``) qualifies too: it names a collection of images (see
    :func:`~sklearn_cl3d.data.expand_paths`); one file path does not.

    Parameters
    ----------
    X : object

    Returns
    -------
    bool

    Examples
    --------
    >>> import numpy as np
    >>> is_volume_collection(["a.nii.gz", "b.nrrd"])
    True
    >>> is_volume_collection(np.zeros((2, 4, 4, 4)))
    False
    >>> is_volume_collection("scans/*.nii.gz"), is_volume_collection("scan.nii.gz")
    (True, False)
    """
    if isinstance(X, str | os.PathLike):
        return names_a_collection(X)
    if hasattr(X, "iloc") and getattr(X, "ndim", None) == 1:  # pandas Series
        X = X.tolist()
    if isinstance(X, np.ndarray):
        if X.ndim != 1 or X.dtype.kind not in "OUS":
            return False
        X = X.tolist()
    if not isinstance(X, list | tuple) or len(X) == 0:
        return False
    return all(is_volume_source(x) for x in X)


def _check_array(X):
    """Validate an array of volumes; return it as (n, C, D, H, W)."""
    try:
        X = np.asarray(X)
    except ValueError as exc:  # ragged nested lists
        raise ValueError(f"{_X_KINDS}; could not convert X to an array: {exc}") from exc
    if X.ndim >= 1 and len(X) == 0:
        raise ValueError(f"X is empty (0 volumes); {_X_KINDS}.")
    if X.dtype.kind not in "biuf" or X.ndim not in (4, 5):
        what = (
            f"an array with {X.ndim} dimension(s) and shape {X.shape}"
            if X.dtype.kind in "biuf"
            else f"{type(X).__name__} of dtype {X.dtype}"
        )
        raise ValueError(f"{_X_KINDS}; got {what}.")
    check_channels_first(X.shape)
    if X.ndim == 4:
        X = X[:, None]
    if min(X.shape[1:]) < 1:
        raise ValueError(f"X has an empty per-sample shape {X.shape[1:]}.")
    if X.dtype.kind == "f":
        for i in range(len(X)):  # one sample at a time: bounded memory
            if not np.isfinite(X[i]).all():
                raise ValueError(
                    f"Input X contains NaN or infinity (first in sample {i})."
                )
    return X


class VolumeDataset(torch.utils.data.Dataset):
    """Volumes from arrays, files or nibabel images, loaded lazily.

    Each item is a pair ``(volume, target)`` as skorch expects: ``volume`` is a
    tensor of shape ``(C, D, H, W)`` and ``target`` is ``y[i]`` or, when ``y``
    is None, the placeholder ``torch.Tensor([0])`` that skorch's own
    :class:`skorch.dataset.Dataset` uses.

    Files are only opened when an item is requested: at construction, every
    path is checked to exist and to have a supported extension, and its
    header (not its voxel data) is read to check its dimensions. Items are
    loaded with :func:`~sklearn_cl3d.data.load_volume`, preprocessed, cast to
    ``dtype`` and checked, so memory stays bounded by the batch size however
    large the cohort. The dataset holds paths and parameters only (no open
    file), so it pickles and works with :class:`~torch.utils.data.DataLoader`
    worker processes.

    Parameters
    ----------
    X : array-like, list, folder or glob pattern
        An array ``(n, D, H, W)`` or ``(n, C, D, H, W)`` of volumes; or a list
        (tuple, 1-D array, Series) of paths to ``.nii``, ``.nii.gz``,
        ``.nrrd`` or ``.npy`` files, of folders holding one DICOM series
        each, and/or of nibabel images; or a folder or a glob pattern,
        expanded by :func:`~sklearn_cl3d.data.expand_paths` to the sorted
        list of its images (give ``y`` in that order).
    y : array-like of length n, default=None
        Targets or metadata, indexed like skorch does.
    preprocessing : None, step, list of steps or Pipeline, default=None
        Applied to each volume with its affine when it is loaded (see
        :func:`~sklearn_cl3d.data.make_preprocessing`). Array volumes get the
        identity affine (1 mm isotropic voxels, RAS orientation).
    cache : bool, str or path-like, default=False
        ``True``: keep each volume in memory after its first load (after
        preprocessing). For cohorts that fit in RAM. With DataLoader workers,
        every worker keeps its own cache (use ``persistent_workers=True`` to
        keep it across epochs).
        A folder: keep each volume read from a file, decompressed and
        preprocessed, as a ``.npy`` file in that folder (created if needed),
        and read it from there afterwards, in this process, in DataLoader
        workers and in later fits or runs. Files are keyed by the content of
        the source file and the preprocessing parameters, written atomically
        (safe with concurrent workers and processes), validated when read
        (a damaged file is rebuilt, with a
        :class:`~sklearn_cl3d.data.CacheWarning`) and never evicted: delete
        the folder to reclaim the space. Arrays and nibabel images in memory
        are not cached. Preprocessing must be deterministic and described by
        its parameters. Each file is a standard ``.npy`` file
        (``numpy.load(path, mmap_mode="r")`` maps it) followed by the key
        and a checksum of the voxels.
    dtype : numpy floating dtype, default=np.float32
        Dtype of the returned volumes.
    expected_ndim : {3, 4}, default=3
        For files and images: 3 means each holds one 3-D volume (a trailing
        singleton axis is squeezed); 4 also accepts multi-channel images. See
        :func:`~sklearn_cl3d.data.load_volume`. Arrays are not affected.

    Attributes
    ----------
    X : ndarray of shape (n, C, D, H, W), or list of str and nibabel images
        The validated volumes (paths as ``str``).
    y : array-like or None
        The targets as given.
    preprocessing : PreprocessingChain or None
        The validated preprocessing.
    sample_shape : tuple of int
        ``(C, D, H, W)`` of every item after preprocessing, taken from the
        first item (which is loaded on first access if needed). Every other
        item must have the same shape.

    Examples
    --------
    >>> import numpy as np
    >>> ds = VolumeDataset(np.zeros((3, 10, 10, 10)))
    >>> len(ds), ds.sample_shape
    (3, (1, 10, 10, 10))
    >>> x, y = ds[0]
    >>> tuple(x.shape), x.dtype, y
    ((1, 10, 10, 10), torch.float32, tensor([0.]))
    """

    def __init__(
        self,
        X,
        y=None,
        preprocessing=None,
        cache=False,
        dtype=np.float32,
        expected_ndim=3,
    ):
        if expected_ndim not in (3, 4) or isinstance(expected_ndim, bool):
            raise ValueError(f"expected_ndim must be 3 or 4, got {expected_ndim!r}.")
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            dtype = None
        if dtype is None or dtype.kind != "f":
            raise ValueError("dtype must be a numpy floating dtype (e.g. np.float32).")
        self.dtype = dtype
        self.expected_ndim = expected_ndim
        self.preprocessing = make_preprocessing(preprocessing)
        if cache is None or isinstance(cache, bool | np.bool_ | numbers.Integral):
            self.cache, self._disk = bool(cache), None
        else:
            self._disk = VolumeCache(cache)
            self.cache = self._disk.folder
            self._fingerprint = preprocessing_fingerprint(self.preprocessing)
        X = expand_paths(X)
        if isinstance(X, list | tuple) and len(X) == 0:
            raise ValueError(f"X is empty (0 volumes); {_X_KINDS}.")
        self._from_files = is_volume_collection(X)
        self._sample_shape = None
        if self._from_files:
            if hasattr(X, "iloc") or isinstance(X, np.ndarray):
                X = X.tolist()
            self.X = [inspect_source(s, expected_ndim)[0] for s in X]
        else:
            self.X = _check_array(X)
            if self.preprocessing is None:
                self._sample_shape = tuple(int(s) for s in self.X.shape[1:])
        n = len(self.X)
        if n == 0:
            raise ValueError(f"{_X_KINDS}; got 0 volumes.")
        if y is not None:
            n_y = get_len(y)
            if n_y != n:
                raise ValueError(
                    "Found input variables with inconsistent numbers of samples: "
                    f"X has {n} samples but y has {n_y}."
                )
        self.y = y
        self._y_indexing = check_indexing(y)
        self._cache = {}

    def __len__(self):
        return len(self.X)

    def name(self, i):
        """How error messages refer to item ``i`` (its path if it has one)."""
        if self._from_files:
            src = self.X[i]
            return src if isinstance(src, str) else f"X[{i}] ({source_name(src)})"
        return f"X[{i}]"

    @property
    def sample_shape(self):
        if self._sample_shape is None:
            self.volume(0)
        return self._sample_shape

    def _load(self, i):
        key = None
        if self._disk is not None and self._from_files and isinstance(self.X[i], str):
            try:
                key = self._disk.key(
                    self.X[i], self._fingerprint, self.dtype, self.expected_ndim
                )
            except OSError:  # e.g. the file vanished: reading it says so
                key = None
            if key is not None:
                volume = self._disk.read(key, self.dtype)
                if volume is not None:
                    return volume
        volume = self._decode(i)
        if key is not None:
            self._disk.write(key, volume)
        return volume

    def _decode(self, i):
        if self._from_files:
            volume, affine = load_volume(self.X[i], expected_ndim=self.expected_ndim)
        else:
            volume, affine = self.X[i], np.eye(4)
        if self.preprocessing is not None:
            try:
                volume, affine = self.preprocessing.apply(volume, affine)
            except ValueError as exc:
                raise ValueError(f"{self.name(i)}: {exc}") from exc
            volume = np.asarray(volume)
            if volume.ndim != 4:
                raise ValueError(
                    f"preprocessing turned {self.name(i)} into an array of shape "
                    f"{volume.shape}; expected (C, D, H, W)."
                )
            if not np.isfinite(volume).all():
                raise ValueError(
                    f"{self.name(i)} has non-finite values after preprocessing."
                )
        with np.errstate(over="ignore", invalid="ignore"):  # checked below
            volume = np.ascontiguousarray(volume, dtype=self.dtype)
        if volume.dtype != np.float64 and not np.isfinite(volume).all():
            raise ValueError(
                f"{self.name(i)} has values too large for {self.dtype} (they "
                "become infinite when converted)."
            )
        return volume

    def volume(self, i):
        """Load, preprocess and check item ``i``; return its numpy volume.

        Parameters
        ----------
        i : int

        Returns
        -------
        ndarray of shape ``sample_shape`` and dtype ``dtype``
            Read-only when ``cache=True`` (the cached array itself).
        """
        n = len(self)
        i = operator.index(i)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for {n} volumes.")
        i %= n
        if i in self._cache:
            return self._cache[i]
        volume = self._load(i)
        if self._sample_shape is None and i == 0:
            self._sample_shape = volume.shape
        reference = self.sample_shape
        if volume.shape != reference:
            after = " after preprocessing" if self.preprocessing is not None else ""
            raise ValueError(
                f"{self.name(i)} has shape {volume.shape}{after}, but the first "
                f"volume ({self.name(0)}) has shape {reference}; all volumes must "
                "have the same shape (add CropOrPad or Resample to the "
                "preprocessing)."
            )
        if self.cache is True:
            volume.flags.writeable = False  # shared by every later access
            self._cache[i] = volume
        return volume

    def __getitem__(self, i):
        volume = self.volume(i)
        if not volume.flags.writeable:  # cached: hand out a copy
            volume = volume.copy()
        volume = torch.from_numpy(volume)
        if self.y is None:
            return volume, torch.Tensor([0])
        return volume, multi_indexing(self.y, i, self._y_indexing)


def as_volume_dataset(X, y=None, preprocessing=None, cache=False, **kwargs):
    """Validate any supported form of volumes and wrap it in a VolumeDataset.

    Parameters
    ----------
    X : array-like, list of paths/nibabel images, folder, glob pattern or VolumeDataset
        See :class:`VolumeDataset`. An existing :class:`VolumeDataset` is
        returned unchanged (``y`` and ``preprocessing`` must then be None).
    y : array-like of length n, default=None
        Targets or metadata.
    preprocessing : None, step, list of steps or Pipeline, default=None
        See :func:`~sklearn_cl3d.data.make_preprocessing`.
    cache : bool, str or path-like, default=False
        Keep loaded volumes in memory (True) or in an on-disk cache folder
        (see :class:`VolumeDataset`).
    **kwargs : dict
        ``dtype`` and ``expected_ndim``, passed to :class:`VolumeDataset`.

    Returns
    -------
    VolumeDataset

    Raises
    ------
    FileNotFoundError
        If a path does not exist (the message names it).
    ValueError
        Unsupported extension, unreadable header, wrong number of dimensions,
        non-finite array values, bad preprocessing or inconsistent lengths.

    Examples
    --------
    >>> import numpy as np
    >>> ds = as_volume_dataset(np.zeros((2, 1, 4, 4, 4)), y=[30.0, 40.0])
    >>> ds[1][1]
    40.0
    >>> as_volume_dataset(ds) is ds
    True
    """
    if isinstance(X, VolumeDataset):
        if y is not None or preprocessing is not None or kwargs:
            raise ValueError(
                "X is already a VolumeDataset: give y, preprocessing and other "
                "options when building it."
            )
        return X
    return VolumeDataset(X, y=y, preprocessing=preprocessing, cache=cache, **kwargs)


class VolumesWithTarget(torch.utils.data.Dataset):
    """The volumes of a lazy dataset paired with encoded targets.

    Item ``i`` is ``(volumes[i][0], target[i])``: the volume without the
    dataset's own target.

    Parameters
    ----------
    volumes : VolumeDataset
        The volumes.
    target : array-like of shape (n, ...)
        One encoded target per volume.
    """

    def __init__(self, volumes, target):
        self.volumes = volumes
        self.target = target

    def __len__(self):
        return len(self.volumes)

    def __getitem__(self, i):
        return self.volumes[i][0], self.target[i]
