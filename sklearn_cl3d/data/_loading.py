"""Default DataLoader settings of the estimators.

On CUDA the estimators pin host memory and, when the training data are read
from files, load them in worker processes so that decoding overlaps with the
GPU's work. Nothing changes on the CPU, and every setting given by the user
(``iterator_train__num_workers=0``, ...) wins. The workers only read and
preprocess volumes; shuffling and augmentation stay in the main process, so
the batches and the results are the same with and without them.
"""

from __future__ import annotations

import multiprocessing
import os

import torch

from ._dataset import VolumeDataset

__all__ = ["default_workers", "loader_defaults"]

#: Most worker processes chosen by default.
MAX_DEFAULT_WORKERS = 8


def _usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers():
    """Worker processes the estimators use on CUDA for file inputs.

    Half the usable cores (the other half for the main process and the
    pin-memory thread), at most :data:`MAX_DEFAULT_WORKERS`; 0 on one core,
    and 0 where new processes would not be forked (spawn and forkserver
    re-import the user's script, which then needs an
    ``if __name__ == "__main__":`` guard).

    Returns
    -------
    int

    Examples
    --------
    >>> default_workers() >= 0
    True
    """
    method = multiprocessing.get_start_method(allow_none=True)
    if method is None:
        method = multiprocessing.get_context().get_start_method()
    if method != "fork":
        return 0
    return min(MAX_DEFAULT_WORKERS, _usable_cores() // 2)


def _reads_files(dataset):
    """Whether items come from files, each load decoding one (not memoised)."""
    for _ in range(8):  # unwrap Subset, SliceDataset, PartitionSliceDataset...
        if isinstance(dataset, VolumeDataset):
            return dataset._from_files and dataset.cache is not True
        inner = getattr(dataset, "volumes", None)
        if inner is None:
            inner = getattr(dataset, "dataset", None)
        if inner is None:
            return False
        dataset = inner
    return False


def loader_defaults(kwargs, dataset, device):
    """Fill in the default DataLoader keyword arguments for ``device``.

    On CUDA: ``pin_memory=True``, and when ``dataset`` reads its volumes from
    files (a :class:`VolumeDataset` of paths without ``cache=True``, or a
    dataset of slices or a subset built on one), ``num_workers`` from
    :func:`default_workers` (with the default ``prefetch_factor`` of 2
    batches per worker). Keys already in ``kwargs`` are kept; on the CPU
    nothing is added.

    Parameters
    ----------
    kwargs : dict
        DataLoader keyword arguments given by the user; updated in place.
    dataset : torch Dataset
    device : str, torch.device or None

    Returns
    -------
    dict
        ``kwargs``.

    Examples
    --------
    >>> loader_defaults({}, None, "cpu")
    {}
    """
    if device is None or torch.device(device).type != "cuda":
        return kwargs
    kwargs.setdefault("pin_memory", True)
    if "num_workers" not in kwargs and _reads_files(dataset):
        workers = default_workers()
        if workers:
            kwargs["num_workers"] = workers
    return kwargs
