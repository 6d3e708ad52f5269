"""Watching a representation while it trains.

Representation-quality metrics (plain NumPy functions) and skorch callbacks
that record them, and online probes on a held-out labelled set, into the
net's ``history_`` every ``every`` epochs:

* :class:`LinearProbe` and :class:`KNNProbe`: how well a linear model or a
  k-nearest-neighbour vote predicts held-out labels from the current
  features (k-fold cross-validation within the held-out set);
* :class:`RepresentationMetrics`: alignment and uniformity (Wang & Isola,
  ICML 2020), effective rank (Roy & Vetterli, 2007) and the per-dimension
  standard deviation of the L2-normalised features, with a
  :class:`RepresentationCollapseWarning` when the representation collapses.

The callbacks leave training untouched: they run the network in eval mode
without gradients (BatchNorm statistics are not updated), draw their
augmentations from their own generator and restore torch's global random
state, so a fit gives the same weights with or without them.
"""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import clone, is_classifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import type_of_target
from skorch.callbacks import Callback
from skorch.dataset import unpack_data

from ._monitoring_metrics import (
    RepresentationCollapseWarning,
    alignment,
    effective_rank,
    feature_std,
    uniformity,
)

__all__ = [
    "KNNProbe",
    "LinearProbe",
    "RepresentationCollapseWarning",
    "RepresentationMetrics",
    "alignment",
    "effective_rank",
    "feature_std",
    "uniformity",
]

# ---------------------------------------------------------------- callbacks


def _check_every(every):
    if isinstance(every, bool) or not isinstance(every, Integral) or every < 1:
        raise ValueError(f"every must be an int >= 1; got {every!r}.")
    return int(every)


def _n_samples(X):
    try:
        return len(X)
    except TypeError:
        raise TypeError(
            f"X must be an array or a list of volumes; got {type(X).__name__}."
        ) from None


class _EveryKEpochs(Callback):
    """Compute ``_scores(net)`` at the end of every ``every``-th epoch and
    record them into the net's history."""

    def initialize(self):
        _check_every(self.every)
        return super().initialize()

    def on_epoch_end(self, net, **kwargs):
        epoch = len(net.history)
        if epoch % self.every:
            return
        # torch's global random state (the fit's own stream during fit) is
        # the same after the callback as before it
        devices = []
        device = getattr(net, "device", None)
        if device is not None and torch.device(device).type == "cuda":
            index = torch.device(device).index
            devices = [torch.cuda.current_device() if index is None else index]
        module = getattr(net, "module_", None)
        training = getattr(module, "training", None)
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                scores = self._scores(net)
        finally:
            if training is not None:
                module.train(training)
        for key, value in scores.items():
            net.history.record(key, value)


def _features(net, X):
    out = np.asarray(net.transform(X), dtype=np.float64)
    return out.reshape(len(out), -1)


class _ProbeBase(_EveryKEpochs):
    def __init__(self, X, y, *, every=1, cv=5, scoring=None, estimator=None, name):
        self.X = X
        self.y = y
        self.every = every
        self.cv = cv
        self.scoring = scoring
        self.estimator = estimator
        self.name = name

    def initialize(self):
        n = _n_samples(self.X)
        y = np.asarray(self.y)
        if y.ndim != 1 or len(y) != n:
            raise ValueError(
                f"{type(self).__name__}: y must have one label per sample of X, "
                f"shape ({n},); got shape {y.shape}."
            )
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty str; got {self.name!r}.")
        self.task_ = (
            "regression"
            if type_of_target(y) in ("continuous", "continuous-multioutput")
            else "classification"
        )
        if self.estimator is not None:
            is_cls = is_classifier(self.estimator)
            self.task_ = "classification" if is_cls else "regression"
        return super().initialize()

    def _probe(self):
        raise NotImplementedError

    def _scores(self, net):
        features = _features(net, self.X)
        probe = clone(self.estimator) if self.estimator is not None else self._probe()
        scores = cross_val_score(
            probe, features, np.asarray(self.y), cv=self.cv, scoring=self.scoring
        )
        return {self.name: float(np.mean(scores))}


class LinearProbe(_ProbeBase):
    """Online linear probe: held-out labels predicted from the features.

    Every ``every`` epochs, the held-out volumes ``X`` are encoded with the
    network as it is (``transform``) and a linear model is scored by
    ``cv``-fold cross-validation on them: a standardised logistic regression
    for class labels, a standardised ridge regression for continuous ones.
    The mean score is recorded in the net's history as ``name``. The network
    never sees these labels; the score says how linearly the labels can be
    read from the representation at that epoch.

    Parameters
    ----------
    X : array-like of shape (n, ...) or list
        Held-out volumes, the same kind of input as ``fit`` takes.
    y : array-like of shape (n,)
        Their labels (classes or a continuous target).
    every : int, default=1
        Record at the end of epochs ``every``, ``2 * every``, ... (counted
        over the net's whole history, so ``partial_fit`` continues the count).
    cv : int or cross-validation generator, default=5
        Folds of the cross-validation (stratified for classes; not shuffled,
        so every epoch uses the same folds).
    scoring : str, callable or None, default=None
        scikit-learn scoring; None is the probe's default (accuracy for
        classes, R² for continuous targets).
    C : float, default=1.0
        Inverse regularisation of the logistic regression.
    alpha : float, default=1.0
        Regularisation of the ridge regression.
    estimator : scikit-learn estimator or None, default=None
        Your own probe instead (cloned at every check).
    name : str, default="linear_probe"
        History key.

    See Also
    --------
    KNNProbe : a k-nearest-neighbour probe.
    RepresentationMetrics : label-free quality metrics.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_cl3d import SimCLRPretrainer
    >>> from sklearn_cl3d.monitoring import LinearProbe
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(16, 1, 12, 12, 12)).astype("float32")
    >>> X_val = rng.normal(size=(10, 1, 12, 12, 12)).astype("float32")
    >>> y_val = np.tile([0, 1], 5)
    >>> ssl = SimCLRPretrainer(
    ...     backbone="small3d", max_epochs=2, batch_size=8, random_state=0,
    ...     verbose=0, callbacks=[("probe", LinearProbe(X_val, y_val, cv=2))])
    >>> len(ssl.fit(X).history[:, "linear_probe"])
    2
    """

    def __init__(
        self,
        X,
        y,
        *,
        every=1,
        cv=5,
        scoring=None,
        C=1.0,
        alpha=1.0,
        estimator=None,
        name="linear_probe",
    ):
        super().__init__(
            X, y, every=every, cv=cv, scoring=scoring, estimator=estimator, name=name
        )
        self.C = C
        self.alpha = alpha

    def _probe(self):
        if self.task_ == "regression":
            return make_pipeline(StandardScaler(), Ridge(alpha=self.alpha))
        return make_pipeline(
            StandardScaler(), LogisticRegression(C=self.C, max_iter=1000)
        )


class KNNProbe(_ProbeBase):
    """Online k-nearest-neighbour probe on held-out labels.

    As :class:`LinearProbe`, with a k-nearest-neighbour vote (mean for a
    continuous target) under the cosine distance of the features, the usual
    kNN monitor of self-supervised learning: it needs no training and
    reads the neighbourhood structure rather than linear separability.

    Parameters
    ----------
    X : array-like of shape (n, ...) or list
        Held-out volumes, the same kind of input as ``fit`` takes.
    y : array-like of shape (n,)
        Their labels (classes or a continuous target).
    every : int, default=1
        Record at the end of epochs ``every``, ``2 * every``, ...
    n_neighbors : int, default=5
        Neighbours per vote (at most the size of a training fold).
    weights : {"uniform", "distance"}, default="uniform"
        Vote weights, as in :class:`~sklearn.neighbors.KNeighborsClassifier`.
    cv : int or cross-validation generator, default=5
        Folds of the cross-validation (stratified for classes, not shuffled).
    scoring : str, callable or None, default=None
        scikit-learn scoring; None is accuracy for classes, R² otherwise.
    estimator : scikit-learn estimator or None, default=None
        Your own probe instead (cloned at every check).
    name : str, default="knn_probe"
        History key.

    See Also
    --------
    LinearProbe : a linear probe.

    Examples
    --------
    >>> from sklearn_cl3d.monitoring import KNNProbe
    >>> import numpy as np
    >>> probe = KNNProbe(np.zeros((10, 1, 8, 8, 8)), np.tile([0, 1], 5),
    ...                  n_neighbors=3, every=5)
    """

    def __init__(
        self,
        X,
        y,
        *,
        every=1,
        n_neighbors=5,
        weights="uniform",
        cv=5,
        scoring=None,
        estimator=None,
        name="knn_probe",
    ):
        super().__init__(
            X, y, every=every, cv=cv, scoring=scoring, estimator=estimator, name=name
        )
        self.n_neighbors = n_neighbors
        self.weights = weights

    def _probe(self):
        regression = self.task_ == "regression"
        cls = KNeighborsRegressor if regression else KNeighborsClassifier
        return cls(n_neighbors=self.n_neighbors, weights=self.weights, metric="cosine")


def _view_encoder(net, layer):
    """``f(batch) -> features`` of a prepared batch at ``layer``, or None when
    the estimator's training views are not views of X's samples (WSP trains
    on slices, DrasCLR on landmark patches)."""
    from .estimators import DrasCLREncoder, WSPPretrainer

    if isinstance(net, WSPPretrainer | DrasCLREncoder):
        return None
    if not hasattr(net, "augment_") or not hasattr(net, "_prepare"):
        return None
    module = net._bare_module()
    if hasattr(module, "encode"):
        return lambda x: module.encode(x, layer=layer)
    if hasattr(module, "features"):
        return lambda x: module.features(x, layer)
    return None


def _input_batches(net, X):
    """The batches of X as ``transform`` reads them (no shuffling)."""
    from .data import check_volumes

    if net._lazy(X):
        X = net._as_dataset(X, None, reset=False)
    else:
        X = check_volumes(net, X, reset=False)
    iterator = net.get_iterator(net.get_dataset(X), training=False)
    if isinstance(iterator, torch.utils.data.DataLoader) and iterator.generator is None:
        iterator.generator = torch.Generator()
    for batch in iterator:
        yield unpack_data(batch)[0]


class RepresentationMetrics(_EveryKEpochs):
    """Label-free representation quality, recorded every ``every`` epochs.

    The volumes ``X`` (held out or a subset of the training set; no labels
    needed) are encoded with the network in eval mode, as ``transform``
    does, and as two augmented views drawn with the estimator's own
    augmentation (from this callback's generator, the same views at every
    check). Recorded in the net's history (keys prefixed by ``prefix``):

    * ``alignment``: :func:`alignment` of the two views (lower is better);
    * ``uniformity``: :func:`uniformity` of the plain features (lower is
      better);
    * ``effective_rank``: :func:`effective_rank` of the plain features;
    * ``feature_std``: the mean over dimensions of :func:`feature_std`
      (about ``1 / sqrt(d)`` for features spread over the sphere, 0 for a
      collapsed representation); the per-dimension values of the last check
      are kept in ``feature_std_``.

    A :class:`RepresentationCollapseWarning` is issued (once per fit) when
    ``feature_std * sqrt(d)`` falls below ``collapse_std`` (every sample
    maps to nearly the same direction) or the effective rank below
    ``min_effective_rank`` (the samples vary along about one direction).

    Alignment needs views of X's samples: it is not recorded for
    :class:`~sklearn_cl3d.WSPPretrainer` (views of 2-D slices) and
    :class:`~sklearn_cl3d.DrasCLREncoder` (views of landmark patches), whose
    other metrics use ``transform``.

    Parameters
    ----------
    X : array-like of shape (n, ...) or list
        At least 3 volumes, the same kind of input as ``fit`` takes.
    every : int, default=1
        Record at the end of epochs ``every``, ``2 * every``, ...
    layer : str or None, default=None
        Features to measure: None is the estimator's ``feature_layer`` (what
        ``transform`` returns); ``"projection"`` is the space the loss sees.
        Not available for WSP and DrasCLR.
    alpha : float, default=2
        Exponent of :func:`alignment`.
    t : float, default=2
        Scale of :func:`uniformity`.
    collapse_std : float, default=0.01
        Threshold on ``feature_std * sqrt(d)`` (1 for features spread
        uniformly over the sphere).
    min_effective_rank : float, default=1.5
        Threshold on the effective rank.
    random_state : int, default=0
        Seed of the views' generator.
    prefix : str, default=""
        Prefix of the history keys (for several instances).

    Attributes
    ----------
    feature_std_ : ndarray of shape (d,)
        Per-dimension standard deviation at the last check.

    See Also
    --------
    LinearProbe, KNNProbe : probes on held-out labels.

    References
    ----------
    .. [1] T. Wang and P. Isola, "Understanding Contrastive Representation
       Learning through Alignment and Uniformity on the Hypersphere", ICML
       2020.
    .. [2] O. Roy and M. Vetterli, "The effective rank: a measure of
       effective dimensionality", EUSIPCO 2007.
    .. [3] X. Chen and K. He, "Exploring Simple Siamese Representation
       Learning", CVPR 2021.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_cl3d import SimCLRPretrainer
    >>> from sklearn_cl3d.monitoring import RepresentationMetrics
    >>> X = np.random.default_rng(0).normal(size=(16, 1, 12, 12, 12))
    >>> metrics = RepresentationMetrics(X[:8], every=2)
    >>> ssl = SimCLRPretrainer(backbone="small3d", max_epochs=2, batch_size=8,
    ...                        random_state=0, verbose=0,
    ...                        callbacks=[("repr", metrics)])
    >>> sorted(k for k in ssl.fit(X).history[-1] if k in
    ...        ("alignment", "uniformity", "effective_rank", "feature_std"))
    ['alignment', 'effective_rank', 'feature_std', 'uniformity']
    """

    def __init__(
        self,
        X,
        *,
        every=1,
        layer=None,
        alpha=2,
        t=2,
        collapse_std=0.01,
        min_effective_rank=1.5,
        random_state=0,
        prefix="",
    ):
        self.X = X
        self.every = every
        self.layer = layer
        self.alpha = alpha
        self.t = t
        self.collapse_std = collapse_std
        self.min_effective_rank = min_effective_rank
        self.random_state = random_state
        self.prefix = prefix

    def initialize(self):
        n = _n_samples(self.X)
        if n < 3:
            raise ValueError(
                f"RepresentationMetrics needs at least 3 volumes in X; got {n}."
            )
        for key in ("alpha", "t"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, Real) or value <= 0:
                raise ValueError(f"{key} must be a number > 0; got {value!r}.")
        for key in ("collapse_std", "min_effective_rank"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, Real) or value < 0:
                raise ValueError(f"{key} must be a number >= 0; got {value!r}.")
        if not isinstance(self.prefix, str):
            raise ValueError(f"prefix must be a str; got {self.prefix!r}.")
        self.feature_std_ = None
        return super().initialize()

    def on_train_begin(self, net, **kwargs):
        self.warned_ = False

    def _encode(self, net):
        """Plain features and the features of two views (None if no views)."""
        layer = net.feature_layer if self.layer is None else self.layer
        encode = _view_encoder(net, layer)
        if encode is None:
            if self.layer is not None:
                raise ValueError(
                    f"layer={self.layer!r}: {type(net).__name__} is measured on "
                    "the features transform returns; leave layer=None."
                )
            return _features(net, self.X), None, None
        net.module_.eval()
        plain, view1, view2 = [], [], []
        gen = None
        for batch in _input_batches(net, self.X):
            with net._autocast():
                x = net._prepare(batch)
                if gen is None:
                    gen = torch.Generator(device=x.device)
                    gen.manual_seed(int(self.random_state))
                augment = net.augment_ or (lambda v, generator: v)
                out = [
                    encode(net._as_input(v))
                    for v in (
                        x,
                        augment(x, generator=gen),
                        augment(x, generator=gen),
                    )
                ]
            for acc, f in zip((plain, view1, view2), out):
                acc.append(f.float().reshape(len(f), -1).cpu().numpy())
        return tuple(
            np.concatenate(acc).astype(np.float64) for acc in (plain, view1, view2)
        )

    def _scores(self, net):
        plain, view1, view2 = self._encode(net)
        if not np.isfinite(plain).all():
            raise ValueError(
                "RepresentationMetrics: the network computed non-finite features for X."
            )
        std = feature_std(plain)
        self.feature_std_ = std
        scores = {}
        if view1 is not None:
            scores["alignment"] = alignment(view1, view2, alpha=self.alpha)
        scores["uniformity"] = uniformity(plain, t=self.t)
        scores["effective_rank"] = effective_rank(plain)
        scores["feature_std"] = float(std.mean())
        ratio = scores["feature_std"] * math.sqrt(plain.shape[1])
        collapsed = (
            ratio < self.collapse_std
            or scores["effective_rank"] < self.min_effective_rank
        )
        if collapsed and not getattr(self, "warned_", False):
            self.warned_ = True
            warnings.warn(
                f"The representation of {type(net).__name__} collapsed at epoch "
                f"{len(net.history)}: feature_std * sqrt(d) = {ratio:.3g} "
                f"(threshold {self.collapse_std}), effective rank "
                f"{scores['effective_rank']:.3g} of {plain.shape[1]} dimensions "
                f"(threshold {self.min_effective_rank}). Lower the learning rate, "
                "raise the temperature or the batch size, or check that the views "
                "differ (augmentation).",
                RepresentationCollapseWarning,
                stacklevel=2,
            )
        return {self.prefix + key: value for key, value in scores.items()}
