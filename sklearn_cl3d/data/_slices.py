"""2-D slices of 3-D volumes: the central block, slice positions, a slice
dataset, the one-slice-per-volume batch sampler of WSP pretraining and the
validation split by volume of fine-tuning on slices; the network items of
segmentation."""

from __future__ import annotations

import math
import operator
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit

from ._dataset import VolumeDataset, as_volume_dataset

__all__ = [
    "BalancedVolumeBatchSampler",
    "SliceDataset",
    "central_slice_range",
    "slice_positions",
]


def _check_fraction(fraction):
    if isinstance(fraction, bool) or not isinstance(fraction, Real):
        raise TypeError(f"fraction must be a float in (0, 1]; got {fraction!r}.")
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction!r}.")
    return fraction


def central_slice_range(n_slices, fraction=0.7):
    """Indices ``[start, stop)`` of the central ``fraction`` of ``n_slices`` slices.

    The official WSP loader's arithmetic (``load_img(pct=0.7)``), in floating
    point: ``start = floor(floor((1 - fraction) * n) / 2)`` and
    ``stop = floor(fraction * n + start)``. Truncation makes the count
    inexact: 10 slices keep 7, 37 keep 25, 64 keep 44, 100 keep 70, 143 keep
    100.

    Parameters
    ----------
    n_slices : int
        Number of slices along the slice axis, >= 1.
    fraction : float, default=0.7
        Kept fraction, in (0, 1]. ``1.0`` keeps every slice.

    Returns
    -------
    start, stop : int
        ``stop > start``.

    Raises
    ------
    ValueError
        If no slice would be kept (e.g. a single slice with ``fraction=0.7``).

    Examples
    --------
    >>> central_slice_range(100)
    (15, 85)
    >>> central_slice_range(10)
    (1, 8)
    """
    n = operator.index(n_slices)
    if n < 1:
        raise ValueError(f"n_slices must be >= 1; got {n_slices!r}.")
    fraction = _check_fraction(fraction)
    start = math.floor(math.floor((1.0 - fraction) * n) / 2)
    stop = min(math.floor(fraction * n + start), n)
    if stop <= start:
        raise ValueError(
            f"keeping the central fraction {fraction} of {n} slice(s) leaves no "
            "slice; volumes need more slices along the slice axis (or a larger "
            "fraction)."
        )
    return int(start), int(stop)


def slice_positions(n_kept):
    """Positions ``k / n_kept`` of the kept slices (official WSP convention).

    The k-th kept slice (k = 0 ... n_kept - 1) gets ``k / n_kept``, so
    positions lie in ``[0, 1 - 1/n_kept]``: relative to the kept block, in
    array order along the slice axis.

    Parameters
    ----------
    n_kept : int
        Number of kept slices, >= 1.

    Returns
    -------
    ndarray of float32, shape (n_kept,)

    Examples
    --------
    >>> slice_positions(4)
    array([0.  , 0.25, 0.5 , 0.75], dtype=float32)
    """
    n = operator.index(n_kept)
    if n < 1:
        raise ValueError(f"n_kept must be >= 1; got {n_kept!r}.")
    return (np.arange(n, dtype=np.float64) / n).astype(np.float32)


class SliceDataset(torch.utils.data.Dataset):
    """The kept 2-D slices of a set of volumes, indexed flat.

    Item ``i`` is the ``k``-th kept slice of volume ``v`` where
    ``i = offsets[v] + k``; it is returned as ``(slice, target)`` with
    ``slice`` a float tensor of shape ``(C, h, w)`` (the two axes other than
    the slice axis, in array order) and ``target`` the float32 tensor
    ``[label, position]`` (label 0 when there are no labels). Volumes are
    read through a :class:`~sklearn_cl3d.data.VolumeDataset`, so paths are
    loaded lazily (one volume read per item unless ``cache=True`` was set
    there).

    Parameters
    ----------
    volumes : array-like, list of paths/images, or VolumeDataset
        Volumes ``(n, D, H, W)`` or ``(n, C, D, H, W)``, or anything
        :func:`~sklearn_cl3d.data.as_volume_dataset` accepts.
    labels : array-like of shape (n,), default=None
        A number per volume (e.g. an encoded weak label), copied to every
        slice's target.
    axis : {0, 1, 2, -1, -2, -3}, default=-1
        Spatial axis the slices are taken along: ``-1`` is the last array
        axis (axial for a RAS-oriented volume).
    fraction : float, default=0.7
        Central fraction of slices kept, see :func:`central_slice_range`.

    Attributes
    ----------
    n_volumes : int
    n_kept : int
        Kept slices per volume (every volume has the same shape).
    start : int
        Index of the first kept slice along ``axis``.
    positions : ndarray of shape (n_kept,)
        :func:`slice_positions` of the kept slices.
    slice_shape : tuple of int
        ``(C, h, w)`` of every slice.

    Examples
    --------
    >>> import numpy as np
    >>> ds = SliceDataset(np.zeros((3, 8, 8, 10)), labels=[0, 1, 1])
    >>> len(ds), ds.n_kept, ds.slice_shape
    (21, 7, (1, 8, 8))
    >>> x, target = ds[8]                 # volume 1, kept slice 1
    >>> target.tolist()
    [1.0, 0.1428571492433548]
    """

    def __init__(self, volumes, labels=None, axis=-1, fraction=0.7):
        self.volumes = as_volume_dataset(volumes)
        if isinstance(axis, bool) or not isinstance(axis, Integral):
            raise TypeError(f"axis must be an int in -3..2; got {axis!r}.")
        if not -3 <= axis <= 2:
            raise ValueError(
                f"axis must be a spatial axis of (D, H, W): one of -3..2; got {axis}."
            )
        self.axis = int(axis) % 3
        self.fraction = _check_fraction(fraction)
        n = len(self.volumes)
        if labels is not None:
            labels = np.asarray(labels, dtype=np.float32).reshape(-1)
            if len(labels) != n:
                raise ValueError(
                    f"labels has {len(labels)} entries but there are {n} volumes."
                )
        self.labels = labels
        shape = tuple(self.volumes.sample_shape)  # (C, D, H, W)
        self.start, stop = central_slice_range(shape[1 + self.axis], self.fraction)
        self.n_kept = stop - self.start
        self.n_volumes = n
        self.positions = slice_positions(self.n_kept)
        spatial = [s for a, s in enumerate(shape[1:]) if a != self.axis]
        self.slice_shape = (shape[0], *spatial)

    def __len__(self):
        return self.n_volumes * self.n_kept

    def locate(self, i):
        """``(volume, k)`` of flat index ``i``."""
        i = operator.index(i)
        if not 0 <= i < len(self):
            raise IndexError(f"slice index {i} out of range for {len(self)} slices.")
        return divmod(i, self.n_kept)

    def volume_slices(self, v):
        """All kept slices of volume ``v`` as a tensor ``(n_kept, C, h, w)``."""
        volume = self.volumes.volume(v)
        index = [slice(None)] * 4
        index[1 + self.axis] = slice(self.start, self.start + self.n_kept)
        block = np.moveaxis(volume[tuple(index)], 1 + self.axis, 0)
        return torch.from_numpy(np.ascontiguousarray(block))

    def __getitem__(self, i):
        v, k = self.locate(i)
        volume = self.volumes.volume(v)
        index = [slice(None)] * 4
        index[1 + self.axis] = self.start + k
        image = torch.from_numpy(np.array(volume[tuple(index)]))
        label = 0.0 if self.labels is None else float(self.labels[v])
        return image, torch.tensor([label, float(self.positions[k])])


class BalancedVolumeBatchSampler(torch.utils.data.Sampler):
    """Batches of one random slice from each of ``batch_size`` distinct volumes.

    The official WSP sampler: volumes are drawn without replacement with
    probability proportional to ``1 / count(label of the volume)`` (class
    balanced on the weak label; uniform with ``balanced=False`` or no
    labels), and a slice index is drawn uniformly among each chosen volume's
    kept slices. Randomness comes from ``generator`` or torch's global RNG,
    so a seeded fit is reproducible.

    Parameters
    ----------
    n_volumes : int
        Number of volumes.
    n_kept : int
        Kept slices per volume; flat index = ``volume * n_kept + k`` as in
        :class:`SliceDataset`.
    batch_size : int
        Volumes per batch (capped at ``n_volumes``).
    n_batches : int
        Batches per epoch.
    labels : array-like of shape (n_volumes,), default=None
        Label of each volume for class balancing.
    balanced : bool, default=True
        Class-balanced volume draws (ignored without labels).
    generator : torch.Generator or None, default=None
        Source of randomness (CPU generator).

    Examples
    --------
    >>> import torch
    >>> sampler = BalancedVolumeBatchSampler(6, 10, batch_size=3, n_batches=2,
    ...     labels=[0, 0, 0, 0, 1, 1], generator=torch.Generator().manual_seed(0))
    >>> [len(batch) for batch in sampler]
    [3, 3]
    >>> all(len({i // 10 for i in batch}) == 3 for batch in sampler)
    True
    """

    def __init__(
        self,
        n_volumes,
        n_kept,
        batch_size,
        n_batches,
        labels=None,
        balanced=True,
        generator=None,
    ):
        self.n_volumes = operator.index(n_volumes)
        self.n_kept = operator.index(n_kept)
        self.batch_size = min(operator.index(batch_size), self.n_volumes)
        self.n_batches = operator.index(n_batches)
        if self.n_volumes < 1 or self.n_kept < 1 or self.batch_size < 1:
            raise ValueError("n_volumes, n_kept and batch_size must be >= 1.")
        weights = np.ones(self.n_volumes)
        if labels is not None and balanced:
            _, inverse, counts = np.unique(
                np.asarray(labels), return_inverse=True, return_counts=True
            )
            weights = 1.0 / counts[inverse.reshape(-1)]
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.generator = generator

    def __len__(self):
        return self.n_batches

    def __iter__(self):
        for _ in range(self.n_batches):
            volumes = torch.multinomial(
                self.weights,
                self.batch_size,
                replacement=False,
                generator=self.generator,
            )
            ks = torch.randint(
                0, self.n_kept, (self.batch_size,), generator=self.generator
            )
            yield (volumes * self.n_kept + ks).tolist()


def as_slice_dataset(volumes, labels=None, axis=-1, fraction=0.7):
    """Wrap volumes in a :class:`SliceDataset` (returned unchanged if one)."""
    if isinstance(volumes, SliceDataset):
        return volumes
    if not isinstance(volumes, VolumeDataset):
        volumes = as_volume_dataset(volumes)
    return SliceDataset(volumes, labels=labels, axis=axis, fraction=fraction)


class VolumeSplit:
    """Validation split of a :class:`SliceDataset` by volume (never by slice).

    A skorch ``train_split``: one shuffle split of the volumes (stratified
    on their labels when asked and given), every kept slice of a volume on
    its side.

    Parameters
    ----------
    fraction : float
        Fraction of the volumes held out, in (0, 1).
    stratified : bool
        Stratify on ``dataset.labels`` (when the dataset has labels).
    random_state : int
        Seed of the split.
    """

    def __init__(self, fraction, stratified, random_state):
        self.fraction = fraction
        self.stratified = stratified
        self.random_state = random_state

    def __call__(self, dataset, y=None, **kwargs):
        n, k = dataset.n_volumes, dataset.n_kept
        labels = dataset.labels if self.stratified else None
        cls = StratifiedShuffleSplit if labels is not None else ShuffleSplit
        splitter = cls(
            n_splits=1, test_size=self.fraction, random_state=self.random_state
        )
        train, valid = next(splitter.split(np.zeros((n, 1)), labels))

        def slices(volumes):
            return (np.asarray(volumes)[:, None] * k + np.arange(k)).ravel()

        return (
            torch.utils.data.Subset(dataset, slices(train)),
            torch.utils.data.Subset(dataset, slices(valid)),
        )


def segmentation_items(X, masks, slice_axis, dims):
    """Network items of segmentation: slices (2-D) or reoriented volumes (3-D).

    Parameters
    ----------
    X : ndarray of shape (n, C, D, H, W)
        Volumes.
    masks : ndarray of shape (n, D, H, W) or None
        Their label masks.
    slice_axis : {0, 1, 2}
        Spatial axis the slices are taken along.
    dims : {2, 3}
        2: every slice along ``slice_axis`` is an item, volume-major
        ``(n * D', C, h, w)``; 3: every volume, with ``slice_axis`` moved
        first, ``(n, C, D', h, w)``.

    Returns
    -------
    items : ndarray
    masks : ndarray or None
        The masks cut and ordered the same way (without a channel axis).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.zeros((2, 1, 4, 5, 6))
    >>> segmentation_items(X, None, slice_axis=2, dims=2)[0].shape
    (12, 1, 4, 5)
    """
    axis = slice_axis
    if dims == 2:
        x = np.moveaxis(X, 2 + axis, 1)  # (n, D', C, h, w)
        x = np.ascontiguousarray(x.reshape(-1, *x.shape[2:]))
        if masks is not None:
            y = np.moveaxis(masks, 1 + axis, 1)
            masks = np.ascontiguousarray(y.reshape(-1, *y.shape[2:]))
    else:
        x = np.ascontiguousarray(np.moveaxis(X, 2 + axis, 2))
        if masks is not None:
            masks = np.ascontiguousarray(np.moveaxis(masks, 1 + axis, 1))
    return x, masks
