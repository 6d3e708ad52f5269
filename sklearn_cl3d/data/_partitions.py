"""Partition-aware sampling of global-local contrastive pretraining.

Each volume is cut along its slice axis into ``S`` equal slabs (partitions),
as in Chaitanya et al. (NeurIPS 2020), see ``specs/globallocal.md`` section
3.1: slab ``k`` covers slices ``[k * L, (k + 1) * L)`` with
``L = n_slices // S``, so the last ``n_slices % S`` slices are never used.
A batch holds ``m`` distinct volumes and one random slice from every slab of
each, volume-major: row ``vol * S + k``, so the partition of a row is
``row % S``.

- :func:`partition_bounds` gives the slabs;
- :class:`PartitionSliceDataset` serves slices (or slab sub-volumes) with
  their ``[volume, partition, slice]`` ids;
- :class:`PartitionBatchSampler` yields the batches.
"""

from __future__ import annotations

import operator
from numbers import Integral

import numpy as np
import torch
import torch.nn.functional as F

from ._dataset import as_volume_dataset

__all__ = ["PartitionBatchSampler", "PartitionSliceDataset", "partition_bounds"]


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}.")
    return int(value)


def _check_partitions(n_slices, n_partitions) -> tuple[int, int]:
    n_slices = _check_int(n_slices, "n_slices", 1)
    n_partitions = _check_int(n_partitions, "n_partitions", 2)
    if n_slices < n_partitions:
        raise ValueError(
            f"a volume with {n_slices} slice(s) cannot be cut into {n_partitions} "
            "partitions: every partition needs at least one slice (use fewer "
            "partitions or another slice axis)."
        )
    return n_slices, n_partitions


def partition_bounds(n_slices, n_partitions):
    """Slabs ``[start, stop)`` of ``n_partitions`` equal partitions.

    Partition ``k`` covers ``[k * L, (k + 1) * L)`` with
    ``L = n_slices // n_partitions``; the last ``n_slices % n_partitions``
    slices belong to no partition (official behaviour).

    Parameters
    ----------
    n_slices : int
        Number of slices along the slice axis.
    n_partitions : int
        Number of partitions ``S``, at least 2 and at most ``n_slices``.

    Returns
    -------
    list of (int, int)
        ``S`` pairs ``(start, stop)``.

    Raises
    ------
    ValueError
        If ``n_partitions < 2`` or ``n_slices < n_partitions``.

    Examples
    --------
    >>> partition_bounds(10, 4)
    [(0, 2), (2, 4), (4, 6), (6, 8)]
    """
    n_slices, n_partitions = _check_partitions(n_slices, n_partitions)
    length = n_slices // n_partitions
    return [(k * length, (k + 1) * length) for k in range(n_partitions)]


class PartitionBatchSampler(torch.utils.data.Sampler):
    """Batches of one random slice per partition of ``m`` distinct volumes.

    Each batch draws ``volumes_per_batch`` (``m``) distinct volumes uniformly
    without replacement and, for each of them, one slice uniformly inside
    every slab of :func:`partition_bounds`. Indices are flat,
    ``volume * n_slices + slice`` (as :class:`PartitionSliceDataset`), and
    volume-major: row ``i * S + k`` is partition ``k`` of the ``i``-th drawn
    volume, so the partition of row ``r`` is ``r % S``.

    With ``n_sets > 1`` each batch concatenates ``n_sets`` such blocks drawn
    independently (volumes are distinct inside a block but may repeat across
    blocks, as the two volume sets of the official G^D batches); the
    partition of row ``r`` is still ``r % S``.

    Parameters
    ----------
    n_volumes : int
        Number of volumes.
    n_slices : int
        Slices per volume along the slice axis.
    n_partitions : int
        Number of partitions ``S`` (>= 2, <= ``n_slices``).
    volumes_per_batch : int
        Volumes per block, ``m`` (<= ``n_volumes``).
    n_batches : int
        Batches per epoch.
    n_sets : int, default=1
        Independent volume blocks per batch.
    generator : torch.Generator or None, default=None
        Source of randomness (CPU generator); None uses torch's global RNG.

    Examples
    --------
    >>> import torch
    >>> sampler = PartitionBatchSampler(5, 10, n_partitions=4,
    ...     volumes_per_batch=3, n_batches=2,
    ...     generator=torch.Generator().manual_seed(0))
    >>> batches = list(sampler)
    >>> [len(b) for b in batches]
    [12, 12]
    >>> [(i % 10) // 2 for i in batches[0]]  # partition of each row
    [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]
    """

    def __init__(
        self,
        n_volumes,
        n_slices,
        n_partitions,
        volumes_per_batch,
        n_batches,
        n_sets=1,
        generator=None,
    ):
        self.n_volumes = _check_int(n_volumes, "n_volumes", 1)
        self.n_slices, self.n_partitions = _check_partitions(n_slices, n_partitions)
        self.volumes_per_batch = _check_int(volumes_per_batch, "volumes_per_batch", 1)
        if self.volumes_per_batch > self.n_volumes:
            raise ValueError(
                f"volumes_per_batch={self.volumes_per_batch} distinct volumes "
                f"cannot be drawn from {self.n_volumes} volume(s)."
            )
        self.n_batches = _check_int(n_batches, "n_batches", 0)
        self.n_sets = _check_int(n_sets, "n_sets", 1)
        self.generator = generator
        self.slab_size = self.n_slices // self.n_partitions

    @property
    def batch_size(self):
        """Rows per batch, ``n_sets * volumes_per_batch * n_partitions``."""
        return self.n_sets * self.volumes_per_batch * self.n_partitions

    def __len__(self):
        return self.n_batches

    def _block(self):
        m, s = self.volumes_per_batch, self.n_partitions
        volumes = torch.randperm(self.n_volumes, generator=self.generator)[:m]
        offsets = torch.randint(0, self.slab_size, (m, s), generator=self.generator)
        slices = torch.arange(s).view(1, s) * self.slab_size + offsets
        return (volumes.view(m, 1) * self.n_slices + slices).reshape(-1)

    def __iter__(self):
        for _ in range(self.n_batches):
            yield torch.cat([self._block() for _ in range(self.n_sets)]).tolist()


class PartitionSliceDataset(torch.utils.data.Dataset):
    """Slices (or slab sub-volumes) of volumes with their partition ids.

    Item ``i = v * n_slices + z`` is slice ``z`` of volume ``v`` along
    ``axis``. With ``dims=2`` it is returned as ``(image, target)``, with
    ``image`` a float tensor ``(C, h, w)`` (the two other axes, in array
    order). With ``dims=3`` it is a sub-volume of the slab that contains
    ``z``, shaped ``(C, depth, h, w)`` with the slice axis first. ``target``
    is the int64 tensor ``[volume, partition, z]``; slices of the unused tail
    (``z >= n_partitions * slab_size``) get partition ``-1`` and are never
    drawn by :class:`PartitionBatchSampler`.

    **Slab sub-volumes** (``dims=3``): slab ``k`` has ``slab_size``
    slices. The sub-volume is a window of ``slab_depth`` consecutive slices
    (the whole slab by default) inside the slab, centred on ``z`` and
    shifted to stay in the slab (window start ``clip(z - slab_depth // 2,
    start_k, stop_k - slab_depth)``), so a uniformly drawn ``z`` gives a
    random window that always contains ``z`` (a tail slice gets a window of
    the last slab). If ``output_depth`` is set, the
    window is then resampled along the slice axis to ``output_depth`` slices
    by linear interpolation (``align_corners=False``), e.g. to a multiple of
    32 for :class:`~sklearn_cl3d.nn.UNet` with ``dims=3``.

    Parameters
    ----------
    volumes : array-like, list of paths/images, or VolumeDataset
        Volumes ``(n, D, H, W)`` or ``(n, C, D, H, W)``, or anything
        :func:`~sklearn_cl3d.data.as_volume_dataset` accepts. All volumes
        have the same shape.
    n_partitions : int, default=4
        Number of partitions ``S`` per volume (>= 2).
    axis : {0, 1, 2, -1, -2, -3}, default=-1
        Spatial axis that is cut into partitions and along which slices are
        taken: ``-1`` is the last array axis (axial for a RAS-oriented
        volume, as :class:`~sklearn_cl3d.data.SliceDataset`); use ``0`` for
        volumes stored slice axis first.
    dims : {2, 3}, default=2
        2 serves slices, 3 serves slab sub-volumes.
    slab_depth : int or None, default=None
        ``dims=3`` only: slices per window, in ``1 .. slab_size``; None is the
        whole slab.
    output_depth : int or None, default=None
        ``dims=3`` only: resample the window to this many slices; None keeps
        ``slab_depth``.

    Attributes
    ----------
    n_volumes : int
    n_slices : int
        Slices per volume along ``axis``.
    slab_size : int
        ``n_slices // n_partitions``.
    bounds : list of (int, int)
        :func:`partition_bounds` of every volume.
    slice_shape : tuple of int
        ``(C, h, w)`` of every slice.
    item_shape : tuple of int
        Shape of every returned image: ``slice_shape`` or
        ``(C, depth, h, w)``.

    Raises
    ------
    ValueError
        If ``n_partitions < 2`` or the volumes have fewer slices than
        partitions along ``axis``.

    Examples
    --------
    >>> import numpy as np
    >>> ds = PartitionSliceDataset(np.zeros((3, 8, 8, 10)), n_partitions=4)
    >>> len(ds), ds.bounds, ds.slice_shape
    (30, [(0, 2), (2, 4), (4, 6), (6, 8)], (1, 8, 8))
    >>> image, target = ds[15]            # volume 1, slice 5
    >>> tuple(image.shape), target.tolist()
    ((1, 8, 8), [1, 2, 5])
    >>> slabs = PartitionSliceDataset(np.zeros((3, 8, 8, 10)), dims=3,
    ...                               output_depth=4)
    >>> tuple(slabs[15][0].shape)
    (1, 4, 8, 8)
    """

    def __init__(
        self,
        volumes,
        n_partitions=4,
        axis=-1,
        dims=2,
        slab_depth=None,
        output_depth=None,
    ):
        self.volumes = as_volume_dataset(volumes)
        if isinstance(axis, bool) or not isinstance(axis, Integral):
            raise TypeError(f"axis must be an int in -3..2; got {axis!r}.")
        if not -3 <= axis <= 2:
            raise ValueError(
                f"axis must be a spatial axis of (D, H, W): one of -3..2; got {axis}."
            )
        self.axis = int(axis) % 3
        if dims not in (2, 3) or isinstance(dims, bool):
            raise ValueError(f"dims must be 2 or 3, got {dims!r}.")
        self.dims = int(dims)
        shape = tuple(self.volumes.sample_shape)  # (C, D, H, W)
        self.n_volumes = len(self.volumes)
        self.n_slices = int(shape[1 + self.axis])
        self.bounds = partition_bounds(self.n_slices, n_partitions)
        self.n_partitions = int(n_partitions)
        self.slab_size = self.n_slices // self.n_partitions
        spatial = [s for a, s in enumerate(shape[1:]) if a != self.axis]
        self.slice_shape = (shape[0], *spatial)
        if self.dims == 2:
            if slab_depth is not None or output_depth is not None:
                raise ValueError("slab_depth and output_depth need dims=3.")
            self.slab_depth = self.output_depth = None
            self.item_shape = self.slice_shape
        else:
            self.slab_depth = (
                self.slab_size
                if slab_depth is None
                else _check_int(slab_depth, "slab_depth", 1)
            )
            if self.slab_depth > self.slab_size:
                raise ValueError(
                    f"slab_depth={self.slab_depth} exceeds the slab size "
                    f"{self.slab_size} ({self.n_slices} slices, "
                    f"{self.n_partitions} partitions)."
                )
            self.output_depth = (
                None
                if output_depth is None
                else _check_int(output_depth, "output_depth", 1)
            )
            depth = self.output_depth or self.slab_depth
            self.item_shape = (shape[0], depth, *spatial)

    def __len__(self):
        return self.n_volumes * self.n_slices

    def locate(self, i):
        """``(volume, partition, slice)`` of flat index ``i`` (partition -1
        for the unused tail)."""
        i = operator.index(i)
        if not 0 <= i < len(self):
            raise IndexError(f"slice index {i} out of range for {len(self)} slices.")
        v, z = divmod(i, self.n_slices)
        k = z // self.slab_size
        return v, (k if k < self.n_partitions else -1), z

    def window(self, z):
        """``[start, stop)`` of the ``dims=3`` sub-volume of slice ``z``."""
        k = min(z // self.slab_size, self.n_partitions - 1)
        start, stop = self.bounds[k]
        first = min(max(z - self.slab_depth // 2, start), stop - self.slab_depth)
        return first, first + self.slab_depth

    def __getitem__(self, i):
        v, k, z = self.locate(i)
        volume = self.volumes.volume(v)
        index = [slice(None)] * 4
        if self.dims == 2:
            index[1 + self.axis] = z
            image = torch.from_numpy(np.array(volume[tuple(index)]))
        else:
            index[1 + self.axis] = slice(*self.window(z))
            block = np.moveaxis(volume[tuple(index)], 1 + self.axis, 1)
            image = torch.from_numpy(np.ascontiguousarray(block))
            if self.output_depth is not None and self.output_depth != image.shape[1]:
                image = F.interpolate(
                    image[None],
                    size=(self.output_depth, *image.shape[2:]),
                    mode="trilinear",
                    align_corners=False,
                )[0]
        return image, torch.tensor([v, k, z], dtype=torch.int64)
