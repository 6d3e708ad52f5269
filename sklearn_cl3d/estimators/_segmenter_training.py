"""The official fine-tuning recipe of :class:`ContrastiveSegmenter`:
training by iterations, joint image/label augmentation on the device, and
selection of the best validation checkpoint (Chaitanya et al., NeurIPS
2020; ``specs/globallocal.md`` section 6)."""

from __future__ import annotations

import copy
import math
from numbers import Integral

import numpy as np
import torch
from skorch.dataset import unpack_data
from skorch.utils import to_tensor

from ..augment._segmentation import SegmentationAugment
from ..data._loading import loader_defaults
from ..data._validation import check_masks
from ..metrics import dice_scores
from ._base import BaseContrastivePretrainer

__all__ = []


def segmentation_augment(augmentation):
    """The joint image/label augmentation of an ``augmentation`` parameter."""
    if augmentation is None:
        return None
    if isinstance(augmentation, str):
        if augmentation != "official":
            raise ValueError(
                f"augmentation must be 'official', a callable or None; got "
                f"{augmentation!r}."
            )
        return SegmentationAugment()
    if not callable(augmentation):
        raise TypeError(
            "augmentation must be 'official', a callable f(x, labels, generator=) "
            f"-> (x, labels) or None; got {type(augmentation).__name__}."
        )
    return augmentation


class SegmenterTrainingMixin:
    """``n_iterations``, ``augmentation`` and best-validation checkpoints."""

    # ----------------------------------------------------- validation split

    def _n_validation(self, n):
        frac = self.validation_fraction
        if frac is None:
            return 0
        if isinstance(frac, Integral):
            n_val = int(frac)
        else:
            n_val = math.ceil(frac * n)
        if not 1 <= n_val <= n - 1:
            raise ValueError(
                f"validation_fraction={frac!r} holds out {n_val} of {n} labelled "
                "volume(s); at least one volume must remain for training and "
                "one for validation (or pass X_val, y_val to fit)."
            )
        return n_val

    def _split_validation(self, X, masks, X_val, y_val):
        """(X, masks) for training and the validation (volumes, masks) or None.

        ``X`` is already validated and ``masks`` checked; ``X_val``/``y_val``
        win over ``validation_fraction``.
        """
        if (X_val is None) != (y_val is None):
            raise ValueError("X_val and y_val must be given together.")
        if X_val is not None:
            Xv = self._volumes(X_val, reset=False)
            mv = check_masks(y_val, Xv, self.n_classes_)
            return X, masks, (Xv, mv)
        n_val = self._n_validation(len(X))
        if n_val == 0:
            return X, masks, None
        order = np.random.default_rng(self._base_seed_).permutation(len(X))
        val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
        return X[train], masks[train], (X[val], masks[val])

    # ------------------------------------------------------ the iterations

    def get_iterator(self, dataset, training=False):
        if not (training and self.n_iterations is not None):
            return BaseContrastivePretrainer.get_iterator(self, dataset, training)
        # the official batches: batch_size items drawn with replacement
        kwargs = self.get_params_for("iterator_train")
        for key in ("batch_size", "shuffle", "drop_last", "sampler"):
            kwargs.pop(key, None)
        sampler = torch.utils.data.RandomSampler(
            dataset,
            replacement=True,
            num_samples=self.n_iterations * self.batch_size,
        )
        batches = torch.utils.data.BatchSampler(
            sampler, self.batch_size, drop_last=False
        )
        loader_defaults(kwargs, dataset, self.device)
        return self.iterator_train(dataset, batch_sampler=batches, **kwargs)

    def train_step_single(self, batch, **fit_params):
        augment = getattr(self, "augment_", None)
        if augment is None:
            return super().train_step_single(batch, **fit_params)
        Xi, yi = unpack_data(batch)
        x = self._prepare(Xi)
        y = to_tensor(yi, device=x.device)
        y = self._resize(y[:, None].float(), x.shape[2:], "nearest")[:, 0].long()
        x, y = augment(x, y, generator=self._generator(x.device))
        return super().train_step_single((x, y), **fit_params)

    # ---------------------------------------------------- checkpoint choice

    def _validation_dice(self):
        Xv, mv = self.__dict__["_validation_data"]
        pred = self._proba_scaled(Xv).argmax(axis=1)
        return float(dice_scores(mv, pred, self.n_classes_).mean())

    def _validate(self, step):
        score = self._validation_dice()
        self.validation_scores_.append((step, score))
        self.history.record_batch("valid_dice", score)
        if score > self.__dict__.get("_best_score", -np.inf):
            self.__dict__["_best_score"] = score
            self.__dict__["_best_state"] = copy.deepcopy(
                {k: v.detach().cpu() for k, v in self.module_.state_dict().items()}
            )
            self.best_iteration_ = step
            self.best_validation_score_ = score

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        super().on_train_begin(net, X=X, y=y, **kwargs)
        self.__dict__["_train_steps"] = 0
        self.__dict__.pop("_best_state", None)
        self.__dict__.pop("_best_score", None)
        if self.__dict__.get("_validation_data") is not None:
            self.validation_scores_ = []

    def on_batch_end(self, net, batch=None, training=False, **kwargs):
        super().on_batch_end(net, batch=batch, training=training, **kwargs)
        if not training or self.__dict__.get("_validation_data") is None:
            return
        step = self.__dict__["_train_steps"] = self.__dict__["_train_steps"] + 1
        # official: after the first update and every validation_interval after
        if (step - 1) % self.validation_interval == 0:
            self._validate(step)

    def on_train_end(self, net, X=None, y=None, **kwargs):
        if self.__dict__.get("_validation_data") is not None:
            step = self.__dict__.get("_train_steps", 0)
            done = self.validation_scores_ and self.validation_scores_[-1][0] == step
            if step and not done:
                self._validate(step)  # the last weights are a candidate too
            best = self.__dict__.pop("_best_state", None)
            if best is not None:
                self.module_.load_state_dict(best)
        self.__dict__.pop("_best_score", None)
        super().on_train_end(net, X=X, y=y, **kwargs)
