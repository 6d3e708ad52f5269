"""Supervised fine-tuning of a pretrained encoder, and the same network
trained from scratch (the baseline of every transfer experiment)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.utils import check_array, column_or_1d
from sklearn.utils._param_validation import (
    StrOptions,
)
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from skorch import NeuralNet
from torch import nn

from ..nn._finetune import FineTuneNetwork, backbone_blocks
from ._finetune_base import _BaseFineTuned

__all__ = [
    "FineTuneNetwork",
    "FineTunedClassifier",
    "FineTunedRegressor",
    "backbone_blocks",
]


def _never(self):
    return False


# ------------------------------------------------------------ estimators

_COMMON_DOC = """
    pretrained : fitted pretrainer, str, path-like or None, default=None
        Where the encoder comes from: a fitted pretrainer of this package
        (its ``module_.backbone`` is copied; the pretrainer is never changed
        or refitted, and :func:`~sklearn.base.clone` keeps the reference, so
        every clone in a cross-validation or grid search starts from the
        same weights), the directory of an encoder saved with
        ``save_pretrained`` (read with :func:`~sklearn_cl3d.load_pretrained`
        and all its checks; if its config names your own classes, load it
        with ``load_pretrained(path, custom_objects={...})`` and pass the
        result instead), or None to train ``backbone`` from scratch.
        The pretrainer's input conventions carry over: for a
        :class:`~sklearn_cl3d.WSPPretrainer` with a 2-D encoder the network
        is trained on the kept slices of each volume (each slice labelled
        with its volume's target) and a volume's prediction is the mean of
        its slices' predictions (probabilities for a classifier), as in the
        official WSP fine-tuning. For a
        :class:`~sklearn_cl3d.GlobalLocalPretrainer` (``dims=2``) the
        backbone is its U-Net encoder (decoder and heads dropped) run on
        every slice of a volume, averaged over space and pooled over the
        slices (``pooling``), on volumes scaled as in the pretraining
        (percentile scaling). For a :class:`~sklearn_cl3d.DrasCLREncoder` it
        is the query encoder run on the patch at every landmark with its
        location, pooled over the landmarks; the volumes must be in the
        atlas space of its landmarks (the patches are cut and windowed as
        in the pretraining). Both already scale their inputs, so
        ``normalize=None`` gives the network the pretraining's input.
    init : {"pretrained", "random"}, default="pretrained"
        ``"random"`` builds the pretrained encoder's architecture (and input
        conventions) with fresh weights: the from-scratch baseline with an
        identical network. A backbone given as a module instance is then
        re-initialised with each layer's ``reset_parameters``.
    backbone : {"densenet121", "densenet", "small3d", "mlp"}, class or \
nn.Module, default="densenet121"
        The encoder built when ``pretrained`` is None (ignored otherwise),
        with the ``backbone__*`` parameters, as in the pretrainers. A module
        instance is copied (so its weights are the starting point).
    head : {"linear", "official"} or callable, default="linear"
        The task head on the pooled features: a linear layer (zero bias) or
        ``head(in_features, n_outputs) -> nn.Module``. ``"official"`` is
        the classifier mode of the official WSP networks: after a TinyNet the
        pretrained first projection layer (fc1) and a ReLU come before the
        new linear layer; a ResNet2D gets a BatchNorm on its last feature
        map (``last_bn``, trained with the head's learning rate); other
        backbones get the linear layer.
    pooling : {"auto", "mean", "max", "attention"}, default="auto"
        For encoders of parts of a volume (a GlobalLocalPretrainer's slices,
        a DrasCLREncoder's landmark patches): how the parts' features become
        one vector per volume. ``"auto"`` takes the pretrainer's own
        (``aggregate`` / ``pooling``; mean when that is ``"none"``);
        ``"attention"`` is a trainable attention pooling
        (:class:`~sklearn_cl3d.nn.ItemPooling`). Other sources need
        ``"auto"``.
    final_norm : bool, default=True
        For a DenseNet backbone without one, add the final BatchNorm
        (``features.norm5``, freshly initialised) of the official
        classifier mode, as the official y-Aware fine-tuning does.
    freeze : {"none", "backbone"} or int, default="none"
        ``"none"`` fine-tunes the whole network (the official y-Aware
        protocol); ``"backbone"`` trains only the head (and the added final
        BatchNorm) on frozen features; an int n freezes the first n blocks
        of the backbone (see :func:`backbone_blocks`: a DenseNet-121 has the
        stem and 4 dense blocks). Frozen blocks stay in eval mode (fixed
        BatchNorm statistics, no dropout).
    lr : float, default=1e-4
        Learning rate of the head (and of the backbone unless
        ``backbone_lr`` is set); the official fine-tuning's.
    backbone_lr : float or None, default=None
        Learning rate of the backbone's (non-frozen) layers; None uses ``lr``.
    lr_schedule : {"cosine"} or None, default=None
        ``"cosine"``: cosine annealing of the learning rate to 0 over
        ``max_epochs`` epochs, stepped per epoch (the official WSP
        fine-tuning); None keeps it constant.
    weight_decay : float, default=5e-5
        Weight decay given to the optimizer (official: coupled L2 in Adam).
    early_stopping : bool or int, default=False
        An int is a patience: hold out ``validation_fraction`` of the training
        data (stratified for a classifier; by volume for slice inputs), stop
        when the validation loss has not improved for that many epochs and
        restore the best weights. True means a patience of 10.
    validation_fraction : float, default=0.1
        Held-out fraction used by ``early_stopping`` and ``keep_best``, in
        (0, 1).
    keep_best : {"valid_loss", "valid_auc"} or None, default=None
        Hold out ``validation_fraction`` of the training data (as for
        ``early_stopping``, unless ``train_split`` is given), score every
        epoch on it and restore, at the end of ``fit``, the weights of the
        best epoch. ``"valid_auc"`` (classifiers) is the ROC AUC of the
        validation volumes' predictions, a volume's being the mean of its
        slices' probabilities for slice inputs (recorded as ``valid_auc``
        in ``history_``): the checkpoint the official WSP fine-tuning
        keeps. With ``early_stopping`` too, both follow this score. None
        keeps the last epoch's weights.
    slice_sampling : {"all", "balanced"}, default="all"
        For slice inputs (a WSP encoder): ``"all"`` visits every kept slice
        once per epoch, in shuffled batches; ``"balanced"`` is the official
        WSP sampler, batches of one random slice from each of
        ``batch_size`` distinct volumes (capped at the number of volumes),
        drawn with probability 1 / (count of the volume's class) for a
        classifier (uniformly for a regressor), or of its score with
        ``balance_on="scores"``.
    balance_on : {"target", "scores"}, default="target"
        What ``slice_sampling="balanced"`` balances: the target classes, or
        the ``scores`` given to ``fit`` (the official WSP sampler balances
        on the raw radiological score, e.g. 5 levels, while the target is
        binary; a regressor's draws then follow the scores too). With
        ``"scores"`` and no ``scores`` in ``fit``, the target is used.
    steps_per_epoch : int or None, default=None
        Batches per epoch with ``slice_sampling="balanced"``; None means
        ``n_volumes // batch_size`` (at least 1), so each volume gives
        about one slice per epoch (the official non-CV run: 10000 //
        batch_size). Ignored with ``"all"``.
    augmentation : {"cutout", "all", "crop", "wsp", "none"}, callable or \
None, default=None
        Augmentation of the training batches (never at prediction): a preset
        of :func:`~sklearn_cl3d.augment.make_augmentation` or a callable on a
        batch tensor. None (no augmentation) by default, since the
        pretrainers' presets are made for contrastive views.
    normalize : {"zscore", "uint8"} or None, default="zscore"
        Per-sample z-scoring of the inputs (per slice for slice inputs), as
        the pretrainers do by default; it should match the pretraining.
        ``"uint8"``: the official WSP input, intensities truncated to the
        integers 0-255 and divided by 250 (see
        :class:`~sklearn_cl3d.WSPPretrainer`).
    preprocessing : list of transformers, Pipeline or None, default=None
        Preprocessing run in the lazy volume loader (see the pretrainers).
    cache : bool, str or path-like, default=False
        Keep loaded volumes in memory (True), or decompressed and
        preprocessed in an on-disk cache folder (see the pretrainers).
    optimizer : torch optimizer class, default=torch.optim.Adam
        ``optimizer__*`` parameters are passed to it.
    max_epochs : int, default=100
        Epochs of ``fit`` (and of each ``partial_fit`` call).
    batch_size : int, default=8
        Samples (or slices) per step (official fine-tuning: 8). A last batch
        of a single sample is dropped in training (BatchNorm cannot train on
        it).
    device : str, default="auto"
        ``"auto"`` uses CUDA when available, else the CPU.
    random_state : int, RandomState instance or None, default=None
        Seeds the head's initialisation, shuffling, augmentation and the
        validation split.
    verbose : int, default=1
        1 (skorch's default) shows a progress bar of each epoch's steps and
        a table per epoch, and a progress bar over the batches of
        ``transform``/``predict``; 0 is silent.
    train_split : callable or None, default=None
        skorch's validation split; None trains on all of X (unless
        ``early_stopping`` is set).
    callbacks : list of (name, skorch callback) or None, default=None
        Extra skorch callbacks (e.g.
        :class:`~sklearn_cl3d.callbacks.AtomicCheckpoint`).
    **kwargs : dict
        Other skorch ``NeuralNet`` parameters (``backbone__*``,
        ``iterator_train__num_workers``, ``criterion__*``, ...)."""

_COMMON_ATTRS = """
    module_ : FineTuneNetwork
        The trained network (``module_.backbone``, ``module_.head``).
    history_ : skorch.History
        Per-epoch training (and validation) losses.
    input_shape_ : tuple of int
        Per-sample shape of X seen in ``fit``: (C, D, H, W) or (F,).
    n_features_in_ : int
        Number of tabular features (only for 2-D X).
    slicing_ : dict or None
        For slice inputs (a WSP encoder): ``axis``, ``fraction`` and ``size``
        of the slices, taken from the pretrainer; None otherwise.
    balance_labels_ : {"target", "scores"} or None
        What the balanced slice sampler balanced on in the last ``fit``
        (None: uniform volume draws, or ``slice_sampling="all"``).
    input_adapter_ : object or None
        For a GlobalLocalPretrainer or DrasCLREncoder source: how volumes
        become the backbone's input (the pretraining's volume scaling, or
        the landmark patches); None otherwise.
    device_ : str
        The device training ran on."""


class FineTunedClassifier(ClassifierMixin, _BaseFineTuned):
    __doc__ = f"""Classifier fine-tuned from a pretrained encoder (or from scratch).

    Builds ``FineTuneNetwork(backbone, head)``: the pretrained backbone (its
    projection head is dropped), for a DenseNet the final BatchNorm of the
    official classifier mode, and a linear layer giving one logit per class,
    trained with cross-entropy. The defaults are the official y-Aware
    fine-tuning (whole network, Adam, lr 1e-4, weight decay 5e-5, batch 8,
    100 epochs). ``pretrained=None`` trains the same kind of network from
    scratch; ``init="random"`` gives the pretrained architecture fresh
    weights.

    Parameters
    ----------
{_COMMON_DOC}
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes in the cross-entropy: ``{{label: weight}}``
        (missing labels weigh 1) or ``"balanced"`` (``n / (n_classes *
        count)``, from the first ``fit``).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels.
    class_weight_ : ndarray of shape (n_classes,) or None
        Weights given to the loss.
{_COMMON_ATTRS}

    See Also
    --------
    FineTunedRegressor : the same for continuous targets.
    sklearn_cl3d.YAwarePretrainer : a pretrainer to start from.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_cl3d import FineTunedClassifier, SimCLRPretrainer
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(16, 1, 12, 12, 12)).astype("float32")
    >>> y = np.array([0, 1] * 8)
    >>> X[y == 1] += 1.0
    >>> ssl = SimCLRPretrainer(backbone="small3d", max_epochs=1, batch_size=8,
    ...                        random_state=0, verbose=0).fit(X)
    >>> clf = FineTunedClassifier(ssl, max_epochs=2, random_state=0,
    ...                           verbose=0).fit(X, y)
    >>> clf.predict_proba(X[:2]).shape
    (2, 2)
    >>> FineTunedClassifier(backbone="small3d", max_epochs=1, random_state=0,
    ...                     verbose=0).fit(X, y).predict(X[:3]).shape
    (3,)
    """

    _parameter_constraints = {
        **_BaseFineTuned._parameter_constraints,
        "class_weight": [dict, StrOptions({"balanced"}), None],
    }

    def __init__(self, pretrained=None, *, class_weight=None, **kwargs):
        super().__init__(pretrained, **kwargs)
        self.class_weight = class_weight

    @classmethod
    def _default_criterion(cls):
        return nn.CrossEntropyLoss

    def _n_outputs(self):
        return len(self.classes_)

    def _loss(self, y_pred, y_true):
        return self.criterion_(y_pred, y_true.long())

    def _encode_target(self, y, n_samples, *, reset, classes=None):
        y = column_or_1d(y, warn=True)
        if len(y) != n_samples:
            raise ValueError(
                "Found input variables with inconsistent numbers of samples: "
                f"[{n_samples}, {len(y)}]"
            )
        check_classification_targets(y)
        if reset:
            labels = np.unique(y) if classes is None else np.unique(classes)
            if len(labels) < 2:
                raise ValueError(
                    f"{type(self).__name__} needs samples of at least 2 classes in "
                    f"y; got 1 class ({labels[0]!r})."
                )
            self.classes_ = labels
        codes = np.searchsorted(self.classes_, y)
        codes = np.clip(codes, 0, len(self.classes_) - 1)
        unseen = self.classes_[codes] != y
        if np.any(unseen):
            raise ValueError(
                f"y contains labels not in classes_ {list(self.classes_)}: "
                f"{sorted(set(np.asarray(y)[unseen].tolist()))[:5]}."
            )
        return codes.astype(np.int64)

    def _set_class_weight(self, codes):
        cw = self.class_weight
        if cw is None:
            self.class_weight_ = None
        elif isinstance(cw, str):
            n = len(self.classes_)
            self.class_weight_ = (
                compute_class_weight("balanced", classes=np.arange(n), y=codes)
                if len(np.unique(codes)) == n
                else np.ones(n)
            )
        else:
            unknown = set(cw) - set(self.classes_.tolist())
            if unknown:
                raise ValueError(
                    f"class_weight has labels not in y: {sorted(unknown, key=str)}."
                )
            self.class_weight_ = np.array(
                [float(cw.get(c, 1.0)) for c in self.classes_.tolist()]
            )

    def initialize_criterion(self):
        kwargs = self.get_params_for("criterion")
        weight = getattr(self, "class_weight_", None)
        if weight is not None:
            kwargs.setdefault("weight", torch.as_tensor(weight, dtype=torch.float32))
        self.criterion_ = self.initialized_instance(self.criterion, kwargs)
        return self

    def fit(self, X, y, scores=None, **fit_params):
        """Fine-tune the network on X, y.

        Parameters
        ----------
        X : array-like of shape (n, C, D, H, W), (n, D, H, W) or (n, F), or list
            Volumes (or paths, loaded lazily), or tabular features.
        y : array-like of shape (n,)
            Class labels.
        scores : array-like of shape (n,), default=None
            Discrete raw score per volume (e.g. the 5-level radiological
            score a binary target is derived from); the balanced slice
            sampler balances on it with ``balance_on="scores"``. Only with
            ``slice_sampling="balanced"``.
        **fit_params : dict
            Passed to the network's forward call.

        Returns
        -------
        self : object
            The fitted classifier.
        """
        return self._fit(X, y, fit_params, partial=False, scores=scores)

    def partial_fit(self, X, y, classes=None, scores=None, **fit_params):
        """Train ``max_epochs`` more epochs (initialise on the first call).

        Parameters
        ----------
        X : array-like or list
            Same kind of input as in earlier calls.
        y : array-like of shape (n,)
            Class labels.
        classes : array-like of shape (n_classes,), default=None
            All the labels, on the first call if ``y`` lacks some.
        scores : array-like of shape (n,), default=None
            Discrete raw score per volume (e.g. the 5-level radiological
            score a binary target is derived from); the balanced slice
            sampler balances on it with ``balance_on="scores"``. Only with
            ``slice_sampling="balanced"``.
        **fit_params : dict
            Passed to the network's forward call.

        Returns
        -------
        self : object
        """
        return self._fit(X, y, fit_params, partial=True, classes=classes, scores=scores)

    def predict_proba(self, X):
        """Class probabilities (mean over slices for slice inputs).

        Parameters
        ----------
        X : array-like or list
            Same kind of input as in ``fit``.

        Returns
        -------
        ndarray of shape (n, n_classes)
        """
        out = torch.from_numpy(self._outputs(X))
        proba = torch.softmax(out, dim=-1)
        if self.slicing_ is not None:
            proba = proba.mean(dim=1)
        return proba.numpy()

    def decision_function(self, X):
        """Confidence scores: logits, or log-odds of the positive class.

        For slice inputs the scores are the logarithms of the mean slice
        probabilities, so they rank samples as ``predict_proba`` does.

        Parameters
        ----------
        X : array-like or list
            Same kind of input as in ``fit``.

        Returns
        -------
        ndarray of shape (n,) for two classes, else (n, n_classes)
        """
        out = torch.from_numpy(self._outputs(X))
        if self.slicing_ is not None:
            out = torch.log(torch.softmax(out, dim=-1).mean(dim=1))
        out = out.numpy()
        if out.shape[1] == 2:
            return out[:, 1] - out[:, 0]
        return out

    def predict(self, X):
        """Predicted class labels.

        Parameters
        ----------
        X : array-like or list
            Same kind of input as in ``fit``.

        Returns
        -------
        ndarray of shape (n,)
        """
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


class FineTunedRegressor(RegressorMixin, _BaseFineTuned):
    __doc__ = f"""Regressor fine-tuned from a pretrained encoder (or from scratch).

    The network of :class:`FineTunedClassifier` with one linear output per
    target, trained with the mean squared error (``criterion``). Targets are
    used as given: standardise them (e.g. with
    :class:`~sklearn.compose.TransformedTargetRegressor`) when their scale is
    far from 1.

    Parameters
    ----------
{_COMMON_DOC}

    Attributes
    ----------
    n_outputs_ : int
        Number of targets.
{_COMMON_ATTRS}

    See Also
    --------
    FineTunedClassifier : the same for class labels.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_cl3d import FineTunedRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(20, 5)).astype("float32")
    >>> y = X[:, 0] - X[:, 1]
    >>> reg = FineTunedRegressor(backbone="mlp", normalize=None, lr=1e-2,
    ...                          max_epochs=5, random_state=0, verbose=0).fit(X, y)
    >>> reg.predict(X).shape
    (20,)
    """

    @classmethod
    def _default_criterion(cls):
        return nn.MSELoss

    # skorch's predict_proba makes no sense for a regressor
    predict_proba = available_if(_never)(NeuralNet.predict_proba)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _n_outputs(self):
        return self.n_outputs_

    def _loss(self, y_pred, y_true):
        return self.criterion_(y_pred, y_true.reshape(y_pred.shape).to(y_pred.dtype))

    def _encode_target(self, y, n_samples, *, reset, classes=None):
        y = check_array(y, ensure_2d=False, dtype=np.float64, input_name="y")
        if y.ndim > 2:
            raise ValueError(f"y must have shape (n,) or (n, k); got {y.shape}.")
        if len(y) != n_samples:
            raise ValueError(
                "Found input variables with inconsistent numbers of samples: "
                f"[{n_samples}, {len(y)}]"
            )
        n_outputs = 1 if y.ndim == 1 else y.shape[1]
        if reset:
            self.n_outputs_ = n_outputs
            self._y_1d_ = y.ndim == 1
        elif n_outputs != self.n_outputs_:
            raise ValueError(
                f"y has {n_outputs} target(s), but the regressor was fitted on "
                f"{self.n_outputs_}."
            )
        if self._y_1d_ and y.ndim == 1:
            return y.astype(np.float32)
        return y.reshape(n_samples, -1).astype(np.float32)

    def fit(self, X, y, scores=None, **fit_params):
        """Fine-tune the network on X, y.

        Parameters
        ----------
        X : array-like of shape (n, C, D, H, W), (n, D, H, W) or (n, F), or list
            Volumes (or paths, loaded lazily), or tabular features.
        y : array-like of shape (n,) or (n, n_outputs)
            Targets.
        scores : array-like of shape (n,), default=None
            Discrete raw score per volume (e.g. the 5-level radiological
            score a binary target is derived from); the balanced slice
            sampler balances on it with ``balance_on="scores"``. Only with
            ``slice_sampling="balanced"``.
        **fit_params : dict
            Passed to the network's forward call.

        Returns
        -------
        self : object
            The fitted regressor.
        """
        return self._fit(X, y, fit_params, partial=False, scores=scores)

    def partial_fit(self, X, y, scores=None, **fit_params):
        """Train ``max_epochs`` more epochs (initialise on the first call).

        Parameters
        ----------
        X : array-like or list
            Same kind of input as in earlier calls.
        y : array-like of shape (n,) or (n, n_outputs)
            Targets.
        scores : array-like of shape (n,), default=None
            Discrete raw score per volume (e.g. the 5-level radiological
            score a binary target is derived from); the balanced slice
            sampler balances on it with ``balance_on="scores"``. Only with
            ``slice_sampling="balanced"``.
        **fit_params : dict
            Passed to the network's forward call.

        Returns
        -------
        self : object
        """
        return self._fit(X, y, fit_params, partial=True, scores=scores)

    def predict(self, X):
        """Predicted targets (mean over slices for slice inputs).

        Parameters
        ----------
        X : array-like or list
            Same kind of input as in ``fit``.

        Returns
        -------
        ndarray of shape (n,) or (n, n_outputs)
        """
        out = self._outputs(X)
        if self.slicing_ is not None:
            out = out.mean(axis=1)
        return out.ravel() if self._y_1d_ else out
