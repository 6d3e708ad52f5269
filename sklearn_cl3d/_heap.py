"""Keep freed tensor memory in the process while an estimator runs on the CPU.

glibc's ``malloc`` serves every allocation above its mmap threshold (at most
32 MiB unless configured) with a fresh ``mmap`` and returns it to the system
on ``free``. A 3-D network allocates and frees activations of tens to
hundreds of MiB at every step, so each step page-faults all of them in
again: on a 2-core machine this kernel work is about a tenth of a DenseNet-121
training step and most of the cost of an augmentation pass over full-size
volumes.

:func:`cpu_heap_reuse` raises the mmap and trim thresholds for the duration
of a ``with`` block, so that freed blocks stay in the heap and are reused
without faults, then hands the retained memory back (``malloc_trim``) and
puts the thresholds back. Nested and concurrent blocks (threads) share one
setting, restored when the last block exits. On other C libraries and
platforms it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading
from contextlib import contextmanager

__all__ = ["cpu_heap_reuse"]

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Thresholds inside a block: blocks up to 1 GiB come from the heap, and up
#: to 1 GiB of free memory stays at its top.
_REUSE_BYTES = 1 << 30

#: Values restored afterwards when the environment sets none: the largest
#: values glibc's own dynamic thresholds reach (32 MiB, twice that for trim),
#: which they reach in any process that freed a large tensor.
_DEFAULT_MMAP = 32 << 20
_DEFAULT_TRIM = 64 << 20

_lock = threading.Lock()
_depth = 0
_libc = None
_libc_checked = False


def _glibc():
    """The loaded glibc, or None where malloc is not glibc's."""
    global _libc, _libc_checked
    if not _libc_checked:
        _libc_checked = True
        if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL("libc.so.6")
                libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                libc.mallopt.restype = ctypes.c_int
                libc.malloc_trim.argtypes = [ctypes.c_size_t]
                libc.malloc_trim.restype = ctypes.c_int
                _libc = libc
            except (OSError, AttributeError):
                _libc = None
    return _libc


def _tunable(env_name, tunable_name, default):
    """A threshold the user configured through the environment, else default."""
    value = os.environ.get(env_name)
    for item in os.environ.get("GLIBC_TUNABLES", "").split(":"):
        key, _, tunable = item.partition("=")
        if key == tunable_name:
            value = tunable
    try:
        value = int(value, 0) if value is not None else default
    except ValueError:
        return default
    return min(max(value, 0), 2**31 - 1)


def _restore_values():
    mmap_threshold = _tunable(
        "MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold", _DEFAULT_MMAP
    )
    trim_threshold = _tunable(
        "MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold", _DEFAULT_TRIM
    )
    return mmap_threshold, trim_threshold


def _enter():
    global _depth
    libc = _glibc()
    with _lock:
        _depth += 1
        if _depth == 1 and libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, _REUSE_BYTES)
            libc.mallopt(_M_TRIM_THRESHOLD, _REUSE_BYTES)


def _exit():
    global _depth
    libc = _glibc()
    with _lock:
        _depth -= 1
        if _depth == 0 and libc is not None:
            mmap_threshold, trim_threshold = _restore_values()
            libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
            libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
            libc.malloc_trim(0)


@contextmanager
def cpu_heap_reuse(enabled=True):
    """Reuse freed heap blocks instead of faulting in fresh pages.

    Parameters
    ----------
    enabled : bool, default=True
        False makes the block a no-op (the caller computes on a GPU, say).

    Yields
    ------
    bool
        Whether the setting is in force (glibc found and ``enabled``).

    Notes
    -----
    Inside the block, glibc keeps blocks of up to 1 GiB in the heap rather
    than mapping and unmapping them, and keeps up to 1 GiB of freed memory.
    At the end of the outermost block the freed memory goes back to the
    system and the thresholds become those of ``MALLOC_MMAP_THRESHOLD_`` /
    ``MALLOC_TRIM_THRESHOLD_`` (or ``GLIBC_TUNABLES``) when set, otherwise
    32 MiB and 64 MiB, the values glibc's dynamic thresholds reach.

    Examples
    --------
    >>> import torch
    >>> from sklearn_cl3d._heap import cpu_heap_reuse
    >>> with cpu_heap_reuse():
    ...     y = torch.zeros(4, 1, 32, 32, 32) + 1
    >>> float(y.sum())
    131072.0
    """
    active = bool(enabled) and _glibc() is not None
    if not active:
        yield False
        return
    _enter()
    try:
        yield True
    finally:
        _exit()
