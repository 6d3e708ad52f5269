"""Pieces of the fine-tuners for the official WSP recipe: the checkpoint with
the best validation score (``keep_best``) and the one-slice-per-volume
sampler of slice inputs (``slice_sampling="balanced"``)."""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.base import ClassifierMixin
from sklearn.metrics import roc_auc_score
from skorch.callbacks import Callback

from ..data._slices import BalancedVolumeBatchSampler, SliceDataset
from ..data._validation import encode_weak_labels

__all__: list[str] = []

#: Values of the fine-tuners' ``keep_best`` parameter (besides None).
KEEP_BEST = ("valid_loss", "valid_auc")

#: Values of the fine-tuners' ``balance_on`` parameter.
BALANCE_ON = ("target", "scores")


def _slice_volumes(dataset):
    """``(slice dataset, volume index of each item)`` or ``(None, None)``."""
    if isinstance(dataset, SliceDataset):
        return dataset, np.arange(len(dataset)) // dataset.n_kept
    if isinstance(dataset, torch.utils.data.Subset) and isinstance(
        dataset.dataset, SliceDataset
    ):
        inner = dataset.dataset
        return inner, np.asarray(dataset.indices) // inner.n_kept
    return None, None


def volume_auc(logits, targets, volumes, n_classes):
    """ROC AUC of the volume predictions (mean slice probabilities).

    Parameters
    ----------
    logits : torch.Tensor of shape (n_items, n_classes)
        Network outputs, in the order of the items.
    targets : ndarray of shape (n_items,)
        Class code of each item.
    volumes : ndarray of shape (n_items,) or None
        Volume of each item (slices of one volume are averaged); None when
        each item is a volume.
    n_classes : int
        Number of classes (binary: AUC of the second class's probability;
        more: one-vs-rest macro average).

    Returns
    -------
    float
        NaN when the items hold a single class.

    Examples
    --------
    >>> import numpy as np, torch
    >>> logits = torch.tensor([[0.0, 1.0], [0.0, 3.0], [1.0, 0.0], [2.0, 0.0]])
    >>> volume_auc(logits, np.array([1, 1, 0, 0]), np.array([0, 0, 1, 1]), 2)
    1.0
    """
    proba = torch.softmax(logits.double(), dim=1).numpy()
    targets = np.asarray(targets).astype(np.int64)
    if volumes is not None:
        ids, inverse = np.unique(volumes, return_inverse=True)
        sums = np.zeros((len(ids), proba.shape[1]))
        np.add.at(sums, inverse, proba)
        proba = sums / np.bincount(inverse)[:, None]
        first = np.zeros(len(ids), np.int64)
        first[inverse[::-1]] = np.arange(len(inverse))[::-1]
        targets = targets[first]
    if len(np.unique(targets)) < 2:
        return math.nan
    if n_classes == 2:
        return float(roc_auc_score(targets, proba[:, 1]))
    return float(
        roc_auc_score(targets, proba, multi_class="ovr", labels=np.arange(n_classes))
    )


class BestValidCheckpoint(Callback):
    """Restore, at the end of training, the weights of the best epoch.

    With ``monitor="valid_auc"`` it also scores each epoch: the ROC AUC of
    the validation volumes' predictions (the mean of their slices'
    probabilities for slice inputs), recorded as ``valid_auc`` in the
    history; ``valid_loss`` is skorch's. The best epoch is marked
    ``<monitor>_best``.

    Parameters
    ----------
    monitor : {"valid_loss", "valid_auc"}
        Lower loss or higher AUC is better.
    """

    def __init__(self, monitor):
        self.monitor = monitor

    def initialize(self):
        self.best_ = None
        self.state_ = None
        self._reset_epoch()
        return self

    def _reset_epoch(self):
        self._logits, self._targets, self._valid = [], [], None

    def on_train_begin(self, net, **kwargs):
        self.best_ = None
        self.state_ = None

    def on_epoch_begin(self, net, dataset_valid=None, **kwargs):
        self._reset_epoch()
        self._valid = dataset_valid

    def on_batch_end(self, net, batch=None, training=None, y_pred=None, **kwargs):
        if training or self.monitor != "valid_auc" or y_pred is None:
            return
        self._logits.append(y_pred.detach().float().cpu())
        target = torch.as_tensor(batch[1])
        if target.ndim == 2:  # SliceDataset targets are [label, position]
            target = target[:, 0]
        self._targets.append(target.cpu().numpy())

    def _score(self, net):
        if self.monitor != "valid_auc":
            return net.history[-1].get(self.monitor, math.nan)
        if not self._logits:
            return math.nan
        _, volumes = _slice_volumes(self._valid)
        score = volume_auc(
            torch.cat(self._logits),
            np.concatenate(self._targets),
            volumes,
            len(net.classes_),
        )
        net.history.record("valid_auc", score)
        return score

    def on_epoch_end(self, net, **kwargs):
        score = self._score(net)
        self._reset_epoch()
        lower = self.monitor == "valid_loss"
        better = not math.isnan(score) and (
            self.best_ is None or (score < self.best_ if lower else score > self.best_)
        )
        if better:
            self.best_ = score
            self.state_ = {
                k: v.detach().to("cpu", copy=True)
                for k, v in net.module_.state_dict().items()
            }
        net.history.record(f"{self.monitor}_best", bool(better))

    def on_train_end(self, net, **kwargs):
        if self.state_ is not None:
            net.module_.load_state_dict(self.state_)
        self.state_ = None  # a fitted estimator does not carry a second copy


def check_balance_scores(estimator, scores, n_volumes):
    """Validate the ``scores`` given to a fine-tuner's ``fit``.

    Returns the float32 codes of the scores when the balanced sampler is to
    balance on them (``balance_on="scores"``), else None; sets the fitted
    attribute ``balance_labels_``.
    """
    if scores is not None:
        if estimator.slice_sampling != "balanced":
            raise ValueError(
                "scores balance the volume draws of slice_sampling='balanced'; "
                f"got slice_sampling={estimator.slice_sampling!r}: pass scores "
                "only with slice_sampling='balanced'."
            )
        _, scores = encode_weak_labels(scores, n_volumes, "scores")
    if estimator.balance_on != "scores":
        scores = None
    if estimator.slice_sampling != "balanced":
        estimator.balance_labels_ = None
    elif scores is not None:
        estimator.balance_labels_ = "scores"
    elif isinstance(estimator, ClassifierMixin):
        estimator.balance_labels_ = "target"
    else:
        estimator.balance_labels_ = None
    return scores


def balanced_slice_sampler(dataset, batch_size, steps_per_epoch, balanced, scores=None):
    """The official WSP sampler over (a volume subset of) a SliceDataset.

    Batches of one uniformly drawn slice from each of ``batch_size``
    distinct volumes (capped at the number of volumes), drawn with
    probability 1 / (count of the volume's label) when ``balanced``, or of
    its score when ``scores`` (one per volume of the whole SliceDataset) is
    given; ``steps_per_epoch`` batches (None: ``n_volumes // batch_size``,
    at least 1). Returns None when ``dataset`` holds no slices.
    """
    inner, volumes = _slice_volumes(dataset)
    if inner is None:
        return None
    k = inner.n_kept
    ids = volumes[::k]  # volume-major: k consecutive items per volume
    if len(volumes) != len(ids) * k or not np.array_equal(volumes, np.repeat(ids, k)):
        raise ValueError(
            "slice_sampling='balanced' needs the training slices grouped by "
            "volume (every kept slice of a volume, in order), as the "
            "validation split by volume leaves them."
        )
    labels = None if inner.labels is None else inner.labels[ids]
    if scores is not None:
        labels, balanced = np.asarray(scores)[ids], True
    n = len(ids)
    batch = min(batch_size, n)
    return BalancedVolumeBatchSampler(
        n,
        k,
        batch_size=batch,
        n_batches=steps_per_epoch or max(1, n // batch),
        labels=labels,
        balanced=balanced,
    )
