"""Shared machinery of the volume preprocessing transformers: parameter and
input checks, and the ``_VolumeTransformer`` base class (``apply`` on one
volume with its affine, ``fit``/``transform`` on arrays of volumes)."""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

__all__ = []


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _is_real(value):
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_real(value, name, owner, *, positive=False):
    if not _is_real(value) or not math.isfinite(float(value)):
        raise ValueError(
            f"{owner}: `{name}` must be a finite real number, got {value!r}."
        )
    if positive and value <= 0:
        raise ValueError(f"{owner}: `{name}` must be > 0, got {value!r}.")
    return float(value)


def _check_triple(value, name, owner, *, integer):
    """A scalar or a 3-sequence of positive numbers -> tuple of 3."""
    kind = "int" if integer else "real"
    items = [value] * 3 if np.ndim(value) == 0 else list(np.ravel(value))
    if np.ndim(value) > 1 or len(items) != 3:
        raise ValueError(
            f"{owner}: `{name}` must be a positive {kind} or a sequence of 3, got "
            f"{value!r}."
        )
    out = []
    for item in items:
        ok = (
            isinstance(item, Integral) and not isinstance(item, bool)
            if integer
            else _is_real(item) and math.isfinite(float(item))
        )
        if not ok or item <= 0:
            raise ValueError(
                f"{owner}: `{name}` must be a positive {kind} or a sequence of 3 "
                f"positive {kind}s, got {value!r}."
            )
        out.append(int(item) if integer else float(item))
    return tuple(out)


def _check_affine(affine):
    if affine is None:
        return np.eye(4)
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(
            "affine must be a finite 4x4 array (or None for the identity), got "
            f"shape {affine.shape}."
        )
    return affine


def _as_float(volume):
    volume = np.asarray(volume)
    if volume.dtype.kind not in "biuf":
        raise ValueError(f"volume must be numeric, got dtype {volume.dtype}.")
    return volume.astype(np.result_type(volume.dtype, np.float32), copy=False)


def _check_batch(X, owner):
    X = np.asarray(X)
    if X.ndim not in (4, 5):
        raise ValueError(
            f"{owner}.transform expects an array of volumes of shape (n, D, H, W) "
            f"or (n, C, D, H, W); got {X.ndim} dimension(s) (shape {X.shape})."
        )
    return _as_float(X)


def _apply_batch(step, X, owner):
    """Apply ``step.apply`` to each volume of X with the identity affine."""
    X = _check_batch(X, owner)
    out = [step.apply(v, None)[0] for v in X]
    shapes = {v.shape for v in out}
    if len(shapes) > 1:  # only possible with custom steps
        raise ValueError(f"{owner} gave volumes of different shapes: {shapes}.")
    if not out:
        return X.copy()
    return np.stack(out)


class _VolumeTransformer(TransformerMixin, BaseEstimator):
    """Shared machinery: ``apply`` for one volume, ``transform`` for arrays."""

    def _check_params(self):  # pragma: no cover - overridden
        return {}

    def _apply(self, volume, affine, params):  # pragma: no cover - overridden
        raise NotImplementedError

    def apply(self, volume, affine=None):
        """Preprocess one volume and update its affine.

        Parameters
        ----------
        volume : array-like of shape (C, D, H, W) or (D, H, W)
            One image, channels first.
        affine : array-like of shape (4, 4) or None, default=None
            Voxel-to-world affine of the volume; None means the identity
            (1 mm isotropic voxels in RAS orientation).

        Returns
        -------
        volume : ndarray
            The new volume, with as many dimensions as the input and a floating
            dtype (float32 unless the input is float64).
        affine : ndarray of shape (4, 4)
            The affine of the new volume.

        Raises
        ------
        ValueError
            If the volume is not numeric, has the wrong number of dimensions
            or holds NaN/infinity, if the affine is not a finite 4x4 array, or
            if the parameters are invalid.
        """
        params = self._check_params()
        volume = _as_float(volume)
        if volume.ndim not in (3, 4):
            raise ValueError(
                f"{type(self).__name__}.apply expects one volume of shape "
                f"(C, D, H, W) or (D, H, W); got shape {volume.shape}."
            )
        if not np.isfinite(volume).all():
            raise ValueError(
                f"{type(self).__name__}: the volume contains NaN or infinity."
            )
        affine = _check_affine(affine)
        single = volume.ndim == 3
        out, affine = self._apply(volume[None] if single else volume, affine, params)
        return (out[0] if single else out), affine

    def fit(self, X=None, y=None):
        """Validate the parameters; there is nothing to learn.

        Parameters
        ----------
        X : array-like of shape (n, D, H, W) or (n, C, D, H, W), default=None
            Ignored.
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        self._check_params()
        return self

    def transform(self, X):
        """Preprocess an array of volumes, each with the identity affine.

        Parameters
        ----------
        X : array-like of shape (n, D, H, W) or (n, C, D, H, W)
            Volumes, channels first. Without an affine, each volume is taken
            to have 1 mm isotropic voxels in RAS orientation.

        Returns
        -------
        ndarray of shape (n, D', H', W') or (n, C, D', H', W')
            Float32 (float64 for float64 input) volumes.
        """
        self._check_params()
        return _apply_batch(self, X, type(self).__name__)

    def __sklearn_is_fitted__(self):
        return True

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        return tags
