"""Simple baselines on raw voxels, to hold pretrained encoders against.

A pretrained encoder earns its place only if its frozen features beat what a
linear method on the voxels gets from the same unlabelled data:

- :class:`VoxelPCA`: principal components of the per-volume z-scored voxels,
  fitted on unlabelled volumes (an unsupervised reference);
- :class:`VoxelProxyRegression`: a ridge regression of a proxy (e.g. age) on
  those principal components, fitted on the unlabelled volumes and their
  proxy; its prediction (e.g. a "brain age") is the feature. It uses the same
  metadata as y-Aware, through plain supervised learning, so it is the
  reference a metadata-aware encoder should approach.

Both are scikit-learn transformers, so they go wherever a fitted pretrainer
goes in :func:`sklearn_cl3d.evaluation.label_efficiency` (linear probe).
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from .data import as_volume_dataset, check_metadata, expand_paths

__all__ = ["VoxelPCA", "VoxelProxyRegression"]


def _voxel_matrix(X):
    """Volumes (array or list of paths/images) as one z-scored row each."""
    dataset = as_volume_dataset(X, dtype=np.float32)
    n = len(dataset)
    if n == 0:
        raise ValueError("X holds no volume.")
    rows = None
    for i in range(n):
        v = np.asarray(dataset[i][0], dtype=np.float64).ravel()
        if rows is None:
            rows = np.empty((n, v.size), dtype=np.float64)
        elif v.size != rows.shape[1]:
            raise ValueError(
                f"Volume {i} has {v.size} voxels and volume 0 has "
                f"{rows.shape[1]}: voxel baselines need volumes on one grid "
                "(resample or crop them first)."
            )
        sd = v.std()
        rows[i] = (v - v.mean()) / (sd if sd > 0 else 1.0)
    return rows


class VoxelPCA(TransformerMixin, BaseEstimator):
    """Principal components of z-scored voxels: the unsupervised baseline.

    Each volume is flattened and z-scored over all its voxels (as the
    pretrainers normalise their input), then projected on the first
    ``n_components`` principal components of the volumes seen in ``fit``.

    Parameters
    ----------
    n_components : int, default=50
        Number of components (at most the number of fitted volumes).
    random_state : int, RandomState instance or None, default=None
        Seeds the randomised SVD of :class:`~sklearn.decomposition.PCA`.

    Attributes
    ----------
    pca_ : sklearn.decomposition.PCA
        The fitted PCA.
    n_voxels_ : int
        Number of voxels per volume (times channels) seen in ``fit``.

    See Also
    --------
    VoxelProxyRegression : a ridge regression of metadata on these components.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_cl3d.baselines import VoxelPCA
    >>> X = np.random.default_rng(0).normal(size=(20, 1, 6, 6, 6))
    >>> VoxelPCA(n_components=5, random_state=0).fit(X).transform(X).shape
    (20, 5)
    """

    _parameter_constraints = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, n_components=50, random_state=None):
        self.n_components = n_components
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the components on the volumes X.

        Parameters
        ----------
        X : array-like of shape (n, C, D, H, W) or (n, D, H, W), or list
            Volumes, or paths / nibabel images (all on one grid).
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        self._fit_pca(X)
        return self

    def _fit_pca(self, X):
        """Fit the PCA on the z-scored voxels of X; return its components."""
        M = _voxel_matrix(X)
        if self.n_components > min(M.shape):
            raise ValueError(
                f"n_components={self.n_components} exceeds min(n_volumes, "
                f"n_voxels) = {min(M.shape)}."
            )
        self.pca_ = PCA(self.n_components, random_state=self.random_state)
        self.n_voxels_ = M.shape[1]
        return self.pca_.fit_transform(M)

    def _components(self, X):
        check_is_fitted(self, "pca_")
        M = _voxel_matrix(X)
        if M.shape[1] != self.n_voxels_:
            raise ValueError(
                f"X has {M.shape[1]} voxels per volume; {type(self).__name__} "
                f"was fitted on {self.n_voxels_}."
            )
        return self.pca_.transform(M)

    def transform(self, X):
        """Project the z-scored volumes on the components.

        Parameters
        ----------
        X : array-like or list
            Volumes on the grid seen in ``fit``.

        Returns
        -------
        ndarray of shape (n, n_components)
        """
        return self._components(X)


class VoxelProxyRegression(VoxelPCA):
    """Ridge regression of a proxy (e.g. age) on voxel PCA: a supervised reference.

    ``fit(X, proxy)`` fits :class:`VoxelPCA` on X and a
    :class:`~sklearn.linear_model.Ridge` of the proxy on its components;
    ``transform`` returns the predicted proxy (e.g. "brain age"). Fed to a
    linear probe together with the true proxy as a covariate, the probe can
    use the gap between them (the "brain-age gap"), which is what a diagnosis
    of accelerated ageing depends on.

    Parameters
    ----------
    n_components : int, default=200
        Number of principal components the ridge sees.
    alpha : float, default=1.0
        Ridge penalty.
    random_state : int, RandomState instance or None, default=None
        Seeds the randomised SVD.

    Attributes
    ----------
    pca_ : sklearn.decomposition.PCA
        The fitted PCA.
    ridge_ : sklearn.linear_model.Ridge
        The fitted regression (one output per proxy column).
    n_voxels_ : int
        Number of voxels per volume seen in ``fit``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_cl3d.baselines import VoxelProxyRegression
    >>> rng = np.random.default_rng(0)
    >>> age = rng.uniform(20, 80, size=30)
    >>> X = rng.normal(size=(30, 1, 5, 5, 5)) + age[:, None, None, None, None] / 40
    >>> reg = VoxelProxyRegression(n_components=10, random_state=0).fit(X, age)
    >>> reg.transform(X).shape
    (30, 1)
    """

    _parameter_constraints = {
        **VoxelPCA._parameter_constraints,
        "alpha": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(self, n_components=200, alpha=1.0, random_state=None):
        super().__init__(n_components=n_components, random_state=random_state)
        self.alpha = alpha

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the PCA on X and the ridge of ``y`` on its components.

        Parameters
        ----------
        X : array-like or list
            Volumes (all on one grid).
        y : array-like of shape (n,) or (n, k)
            The proxy (e.g. age) of every volume.

        Returns
        -------
        self : object
        """
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y: the proxy (e.g. age) to "
                "regress on the voxels."
            )
        X = expand_paths(X)  # a folder or a glob pattern: its sorted images
        n = len(X)
        proxy = check_metadata(y, n, name="y")
        components = self._fit_pca(X)
        self.ridge_ = Ridge(alpha=self.alpha).fit(components, proxy)
        return self

    def transform(self, X):
        """The predicted proxy of every volume.

        Parameters
        ----------
        X : array-like or list
            Volumes on the grid seen in ``fit``.

        Returns
        -------
        ndarray of shape (n, k)
            One column per proxy column.
        """
        check_is_fitted(self, "ridge_")
        pred = self.ridge_.predict(self._components(X))
        return pred.reshape(len(pred), -1)
