"""Validation of the inputs every estimator takes: X (volumes or features)
and per-sample metadata."""

from __future__ import annotations

import numpy as np
from sklearn.utils import check_array
from sklearn.utils.validation import validate_data

__all__ = ["check_input_shape", "check_metadata", "check_volumes"]

_X_SHAPES = (
    "X must be a 2-D array (n_samples, n_features) of tabular features, a 4-D "
    "array (n_samples, D, H, W) of volumes or a 5-D array (n_samples, C, D, H, W)"
)


def check_volumes(estimator, X, *, reset):
    """Validate X and return it as a float32 array with a channel axis.

    Parameters
    ----------
    estimator : estimator instance
        The estimator being fitted or used; ``n_features_in_`` (2-D X) and
        ``input_shape_`` are set on it when ``reset`` is True and checked
        otherwise.
    X : array-like of shape (n, F), (n, D, H, W) or (n, C, D, H, W)
        Tabular features or volumes. Must be finite.
    reset : bool
        True in ``fit``: record the input shape. False in ``transform``:
        check it against the recorded one.

    Returns
    -------
    X : ndarray of float32, shape (n, F) or (n, C, D, H, W)
        A 4-D input gets a singleton channel axis.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.base import BaseEstimator
    >>> est = BaseEstimator()
    >>> check_volumes(est, np.zeros((3, 8, 8, 8)), reset=True).shape
    (3, 1, 8, 8, 8)
    >>> est.input_shape_
    (1, 8, 8, 8)
    """
    ndim = getattr(X, "ndim", None)
    if ndim is None:
        ndim = np.asarray(X).ndim if not hasattr(X, "tocsr") else 2
    if ndim < 2:
        # scikit-learn's own message ("Expected 2D array ... Reshape your data")
        validate_data(estimator, X, dtype=np.float32, reset=reset)
    if ndim not in (2, 4, 5):
        shape = getattr(X, "shape", None)
        raise ValueError(
            f"{_X_SHAPES}; got an array with {ndim} dimension(s)"
            + (f" and shape {tuple(shape)}" if shape is not None else "")
            + "."
        )
    if ndim == 2:
        X = validate_data(estimator, X, dtype=np.float32, reset=reset)
    else:
        X = check_array(
            X,
            dtype=np.float32,
            allow_nd=True,
            ensure_min_features=1,
            input_name="X",
            estimator=estimator,
        )
        if X.ndim == 4:
            X = X[:, None]
        if reset:
            # a volume estimator has no tabular features to count
            if hasattr(estimator, "n_features_in_"):
                del estimator.n_features_in_
    check_input_shape(estimator, tuple(int(s) for s in X.shape[1:]), reset=reset)
    return X


def check_input_shape(estimator, shape, *, reset):
    """Record (``reset=True``) or check the per-sample input shape.

    Parameters
    ----------
    estimator : estimator instance
        Gets ``input_shape_`` when ``reset``; otherwise its ``input_shape_``
        is compared with ``shape``.
    shape : tuple of int
        Per-sample shape: (C, D, H, W) for volumes, (F,) for features.
    reset : bool
        True in ``fit``, False in ``transform``.

    Examples
    --------
    >>> from sklearn.base import BaseEstimator
    >>> est = BaseEstimator()
    >>> check_input_shape(est, (1, 8, 8, 8), reset=True)
    >>> check_input_shape(est, (1, 9, 9, 9), reset=False)  # spatial size may vary
    """
    if reset:
        estimator.input_shape_ = shape
        return
    fitted = estimator.input_shape_
    if len(fitted) != len(shape):
        kind = "volumes" if len(fitted) == 4 else "tabular features"
        raise ValueError(
            f"X must have the same kind of input as in fit ({kind} of "
            f"per-sample shape {fitted}); got per-sample shape {shape}."
        )
    if len(shape) == 4 and shape[0] != fitted[0]:
        raise ValueError(
            f"X has {shape[0]} channel(s), but the estimator was fitted on "
            f"{fitted[0]} channel(s)."
        )


def check_metadata(y, n_samples, *, name="y"):
    """Validate continuous per-sample metadata (e.g. age).

    Parameters
    ----------
    y : array-like of shape (n,) or (n, k)
        Numeric, finite metadata.
    n_samples : int
        Number of samples in X.
    name : str, default="y"
        Name used in error messages.

    Returns
    -------
    ndarray of float32, shape (n,) or (n, k)

    Examples
    --------
    >>> check_metadata([20, 30.5], 2)
    array([20. , 30.5], dtype=float32)
    """
    y = check_array(
        y,
        ensure_2d=False,
        dtype=np.float64,
        input_name=name,
        ensure_min_samples=1,
    )
    if y.ndim > 2:
        raise ValueError(f"{name} must have shape (n,) or (n, k); got {y.shape}.")
    if y.shape[0] != n_samples:
        raise ValueError(
            f"Found input variables with inconsistent numbers of samples: X has "
            f"{n_samples} samples but {name} has {y.shape[0]}."
        )
    return y.astype(np.float32)
