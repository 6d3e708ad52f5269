"""Segmentation metrics."""

from __future__ import annotations

import numpy as np

__all__ = ["dice_scores"]


def dice_scores(y_true, y_pred, n_classes, *, include_background=False):
    """Dice of every class in every label volume.

    ``Dice = 2 |P & G| / (|P| + |G|)`` per volume and class; a class absent
    from both the prediction and the truth of a volume scores 1.

    Parameters
    ----------
    y_true, y_pred : array-like of int, shape (n, D, H, W)
        True and predicted label volumes.
    n_classes : int
        Number of classes (labels ``0 .. n_classes - 1``).
    include_background : bool, default=False
        Include class 0.

    Returns
    -------
    ndarray of shape (n, n_classes - 1) or (n, n_classes)

    Examples
    --------
    >>> import numpy as np
    >>> t = np.array([[[[0, 1, 1, 2]]]])
    >>> p = np.array([[[[0, 1, 2, 2]]]])
    >>> dice_scores(t, p, 3).round(3).tolist()
    [[0.667, 0.667]]
    """
    t = np.asarray(y_true).reshape(len(y_true), -1)
    p = np.asarray(y_pred).reshape(len(y_pred), -1)
    classes = range(0 if include_background else 1, n_classes)
    out = np.empty((len(t), len(classes)))
    for j, c in enumerate(classes):
        tc, pc = t == c, p == c
        inter = (tc & pc).sum(axis=1)
        total = tc.sum(axis=1) + pc.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, j] = np.where(total > 0, 2 * inter / total, 1.0)
    return out
