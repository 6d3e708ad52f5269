"""Validation of the inputs every estimator takes: X (volumes or features)
and per-sample metadata; the weak labels and row positions of WSP and the
label masks of segmentation."""

from __future__ import annotations

import os

import numpy as np
from sklearn.utils import check_array
from sklearn.utils.validation import validate_data

__all__ = [
    "check_channels_first",
    "check_input_shape",
    "check_metadata",
    "check_not_a_path",
    "check_volumes",
]

_X_SHAPES = (
    "X must be a 2-D array (n_samples, n_features) of tabular features, a 4-D "
    "array (n_samples, D, H, W) of volumes or a 5-D array (n_samples, C, D, H, W)"
)

# a last axis of at most this many entries is taken as likely channels ...
_MAX_LAST_CHANNELS = 4
# ... when the first per-sample axis (the would-be channels) has at least 8
# entries and 4 times as many as the last axis
_MIN_SPATIAL_AS_CHANNELS = 8


def check_not_a_path(X):
    """Refuse a single path (file or folder) given where X should be a collection.

    Parameters
    ----------
    X : object

    Raises
    ------
    ValueError
        If ``X`` is a ``str``, ``bytes`` or path-like: the message says what
        to pass instead (a list of files, e.g. the sorted NIfTI files of a
        folder).

    Examples
    --------
    >>> check_not_a_path(["a.nii.gz"])
    >>> check_not_a_path("a.nii.gz")
    Traceback (most recent call last):
    ...
    ValueError: X is a single path ('a.nii.gz'), not a collection of samples...
    """
    if not isinstance(X, str | bytes | os.PathLike):
        return
    path = os.fsdecode(X)
    if os.path.isdir(path):
        hint = (
            f"X is a folder ({path!r}), not a collection of samples: pass the "
            "list of its files, e.g. sorted(glob.glob(os.path.join(folder, "
            "'*.nii.gz'))), with y in the same order."
        )
    else:
        hint = (
            f"X is a single path ({path!r}), not a collection of samples: pass "
            f"a list of paths, e.g. [{path!r}, ...], or an array of volumes "
            "(n_samples, [C,] D, H, W)."
        )
    raise ValueError(hint)


def check_channels_first(shape, name="X"):
    """Refuse an array of volumes that looks channels-last.

    A 5-D array ``(n, a, b, c, k)`` whose last axis has 1 to 4 entries and
    whose first per-sample axis has at least 8 entries and 4 times as many is
    almost surely ``(n, D, H, W, C)``: read channels first, its D slices
    would be taken as channels.

    Parameters
    ----------
    shape : tuple of int
        Shape of the array, samples first.
    name : str, default="X"
        Name used in the message.

    Raises
    ------
    ValueError
        If the layout looks channels-last; the message says how to convert.

    Examples
    --------
    >>> check_channels_first((2, 1, 32, 32, 32))
    >>> check_channels_first((2, 32, 32, 32, 1))
    Traceback (most recent call last):
    ...
    ValueError: X has shape (2, 32, 32, 32, 1), which looks channels-last...
    """
    if len(shape) != 5:
        return
    first, last = int(shape[1]), int(shape[-1])
    if (
        1 <= last <= _MAX_LAST_CHANNELS
        and first >= _MIN_SPATIAL_AS_CHANNELS
        and first >= 4 * last
    ):
        raise ValueError(
            f"{name} has shape {tuple(int(s) for s in shape)}, which looks "
            f"channels-last (n_samples, D, H, W, C) with C={last}; volumes are "
            f"taken channels-first (n_samples, C, D, H, W), so its {first} "
            f"slices would be read as {first} channels. Pass "
            f"np.moveaxis({name}, -1, 1) (or {name}[..., 0] for a single "
            "channel)."
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
    check_not_a_path(X)
    ndim = getattr(X, "ndim", None)
    if ndim is None:
        if hasattr(X, "tocsr"):
            ndim = 2
        else:
            try:
                ndim = np.asarray(X).ndim
            except ValueError:  # ragged nested lists
                ndim = None
    if ndim is None or ndim < 2:
        if hasattr(X, "__len__") and len(X) == 0:
            raise ValueError(
                "X is empty (0 samples): pass at least one sample, as an array "
                "(n_samples, n_features), (n_samples, D, H, W) or (n_samples, C, "
                "D, H, W), or a list of file paths."
            )
        # scikit-learn's own message ("Expected 2D array ... Reshape your data")
        validate_data(estimator, X, dtype=np.float32, reset=reset)
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
        check_channels_first(np.shape(X))
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


def encode_weak_labels(labels, n_samples, name):
    """Check that labels are discrete; return (classes, float32 codes).

    Parameters
    ----------
    labels : array-like of shape (n,) or (n, 1)
        One discrete weak label per volume (ints, bools, strings or
        integer-valued floats).
    n_samples : int
        Number of volumes.
    name : str
        Name of the argument, for messages.

    Returns
    -------
    classes : ndarray
        The sorted distinct labels.
    codes : ndarray of float32, shape (n,)
        Index of each label in ``classes``.
    """
    arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.ravel()
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be one discrete weak label per volume, shape (n,); got "
            f"shape {arr.shape}."
        )
    if len(arr) != n_samples:
        raise ValueError(
            f"Found input variables with inconsistent numbers of samples: X has "
            f"{n_samples} volumes but {name} has {len(arr)}."
        )
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or infinity.")
        if not np.array_equal(arr, np.round(arr)):
            bad = arr[arr != np.round(arr)][0]
            raise ValueError(
                f"{name} must be discrete (integers, bools or strings): WSP "
                f"weak labels are classes; got a non-integer value {bad!r}. Bin "
                "a continuous score first, or use YAwarePretrainer for "
                "continuous metadata."
            )
    elif arr.dtype.kind == "c" or arr.dtype.kind == "V":
        raise ValueError(f"{name} must be discrete labels; got dtype {arr.dtype}.")
    try:
        classes, codes = np.unique(arr, return_inverse=True)
    except TypeError as exc:
        raise ValueError(
            f"{name} must be discrete labels of one comparable type; {exc}"
        ) from None
    return classes, codes.reshape(-1).astype(np.float32)


def check_row_positions(positions, n_samples):
    """Positions of tabular rows as float32 ``(n, k)``.

    Parameters
    ----------
    positions : array-like of shape (n,) or (n, k)
        Finite positions, one row per sample.
    n_samples : int
        Number of rows.

    Returns
    -------
    ndarray of float32, shape (n, k)
    """
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim == 1:
        pos = pos[:, None]
    if pos.ndim != 2 or len(pos) != n_samples:
        raise ValueError(
            f"positions must have shape (n,) or (n, k) with n = {n_samples} rows; "
            f"got shape {np.shape(positions)}."
        )
    if not np.isfinite(pos).all():
        raise ValueError("positions contains NaN or infinity.")
    return pos.astype(np.float32)


def check_masks(masks, X, n_classes=None):
    """Integer label masks matching volumes.

    Parameters
    ----------
    masks : array-like of shape (n, D, H, W) or (n, 1, D, H, W)
        Label masks, integer labels ``0, 1, ...`` (integer-valued floats
        accepted).
    X : ndarray of shape (n, C, D, H, W)
        The volumes.
    n_classes : int or None, default=None
        Labels must be below it, when given.

    Returns
    -------
    ndarray of int64, shape (n, D, H, W)

    Raises
    ------
    ValueError
        If masks are missing, of the wrong shape or not labels.
    """
    if masks is None:
        raise ValueError(
            "ContrastiveSegmenter requires y: label masks of shape (n, D, H, W) "
            "matching the volumes."
        )
    m = np.asarray(masks)
    if m.ndim == 5 and m.shape[1] == 1:
        m = m[:, 0]
    expected = (X.shape[0], *X.shape[2:])
    if m.shape != expected:
        raise ValueError(
            f"masks must have shape (n, D, H, W) = {expected}, matching the "
            f"volumes of shape {X.shape}; got masks of shape {np.shape(masks)}."
        )
    if m.dtype.kind not in "biuf":
        raise ValueError(f"masks must hold integer labels; got dtype {m.dtype}.")
    if m.dtype.kind == "f":
        if not np.isfinite(m).all() or not np.array_equal(m, np.round(m)):
            raise ValueError("masks must hold integer labels 0, 1, ...")
    m = m.astype(np.int64)
    if m.size and m.min() < 0:
        raise ValueError(f"masks must hold labels >= 0; got {m.min()}.")
    if n_classes is not None and m.size and m.max() >= n_classes:
        raise ValueError(
            f"masks hold label {m.max()} but n_classes={n_classes} allows "
            f"labels 0..{n_classes - 1}."
        )
    return m
