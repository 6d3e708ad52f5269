"""Each fit's own stream of torch's global random numbers, thread-safe.

Shared by the estimators (every fit) and by persistence (building a loaded
encoder's network), so it lives below both.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch

__all__ = ["FitRandomness"]

# Held while torch's global random state belongs to one fit (see FitRandomness).
_GLOBAL_RNG_LOCK = threading.RLock()


def _rng_states(devices):
    """torch's global random state: the CPU's and each CUDA device's."""
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


def _set_rng_states(states, devices):
    cpu, cuda = states
    torch.set_rng_state(cpu)
    for device, state in zip(devices, cuda):
        torch.cuda.set_rng_state(state, device)


class FitRandomness:
    """One fit's stream of torch's global random numbers, thread-safe.

    Code that cannot take a ``generator`` (weight initialisation inside
    module constructors, dropout, ``DataLoader`` shuffling without one, user
    callbacks) draws from torch's *global* RNG, which is shared by every
    thread of the process. This object keeps a private copy of that state
    for one fit: inside :meth:`active`, a process-wide lock is held and the
    global state is this fit's; on leaving, the fit's state is saved and the
    previous global state put back. So a fit never changes the global state
    seen outside it, and two fits in two threads draw the same numbers as
    they would one after the other.

    :meth:`suspended` gives the global state back and releases the lock for
    a block that draws no global random number (a training step of a network
    without dropout), so that such blocks of concurrent fits run in parallel.

    Parameters
    ----------
    seed : int
        Seed of the stream (as ``torch.manual_seed(seed)``).
    devices : list of int, default=()
        CUDA devices whose global state belongs to the stream too.

    Examples
    --------
    >>> import torch
    >>> before = torch.get_rng_state()
    >>> rng = FitRandomness(0)
    >>> with rng.active():
    ...     a = torch.rand(2)
    >>> with rng.active():
    ...     b = torch.rand(2)
    >>> bool(torch.equal(torch.get_rng_state(), before))
    True
    >>> same = torch.rand(4, generator=torch.Generator().manual_seed(0))
    >>> bool(torch.equal(torch.cat([a, b]), same))
    True
    """

    def __init__(self, seed, devices=()):
        self.devices = [int(d) for d in devices]
        cpu = torch.Generator().manual_seed(int(seed)).get_state()
        cuda = [
            torch.Generator(device=f"cuda:{d}").manual_seed(int(seed)).get_state()
            for d in self.devices
        ]
        self._states = (cpu, cuda)
        self._outer = []  # global states to put back, innermost last
        self._owner = None  # thread whose global state is this stream

    def _swap_in(self):
        _GLOBAL_RNG_LOCK.acquire()
        try:
            self._outer.append(_rng_states(self.devices))
            _set_rng_states(self._states, self.devices)
        except BaseException:
            _GLOBAL_RNG_LOCK.release()
            raise
        self._owner = threading.get_ident()

    def _swap_out(self):
        self._owner = None
        try:
            self._states = _rng_states(self.devices)
            _set_rng_states(self._outer.pop(), self.devices)
        finally:
            _GLOBAL_RNG_LOCK.release()

    @contextmanager
    def active(self):
        """Make this stream torch's global RNG (re-entrant)."""
        if self._owner == threading.get_ident():
            yield self
            return
        self._swap_in()
        try:
            yield self
        finally:
            self._swap_out()

    @contextmanager
    def suspended(self):
        """Inside :meth:`active`: give the global state back for a while."""
        if self._owner != threading.get_ident():
            yield self
            return
        self._swap_out()
        try:
            yield self
        finally:
            self._swap_in()
