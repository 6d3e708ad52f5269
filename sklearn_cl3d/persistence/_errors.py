"""The exception raised for files that cannot be written or read back."""

from __future__ import annotations

__all__ = ["PersistenceError"]


class PersistenceError(ValueError):
    """A saved encoder or checkpoint cannot be written or read back.

    Raised for values that cannot be stored in a config, and for files that
    are missing, damaged, tampered with, or that ask for something loading
    refuses (a class outside the allow-list, a network larger than its
    weights, non-finite weights, ...). The message names the file and, for a
    config entry, the key. It subclasses :class:`ValueError`.

    Examples
    --------
    >>> from sklearn_cl3d.persistence import PersistenceError
    >>> issubclass(PersistenceError, ValueError)
    True
    """
