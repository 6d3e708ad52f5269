"""Shared plumbing of the fine-tuning estimators: the pretrained source,
the network built from it (backbone, head, frozen blocks), the optimiser's
parameter groups, the data loaders, the validation split and the training
step."""

from __future__ import annotations

import copy
import os
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import (
    Interval,
    StrOptions,
)
from skorch import NeuralNet
from skorch.callbacks import EarlyStopping, LRScheduler
from skorch.dataset import ValidSplit
from skorch.utils import to_tensor
from torch import nn

from ..augment import AUGMENTATION_PRESETS, make_augmentation
from ..augment._scaling import NORMALIZE_OPTIONS, make_normalizer
from ..callbacks import StepProgressBar, StopOnNonFiniteLoss
from ..data import check_volumes
from ..data._dataset import VolumesWithTarget
from ..data._loading import loader_defaults
from ..data._slices import SliceDataset, VolumeSplit
from ..nn import BACKBONES, DenseNet3D, build_backbone
from ..nn._finetune import FineTuneNetwork, backbone_blocks, official_classifier
from ..nn.functional import resize_in_plane
from ._base import BaseContrastivePretrainer
from ._finetune_select import (
    BALANCE_ON,
    KEEP_BEST,
    BestValidCheckpoint,
    balanced_slice_sampler,
    check_balance_scores,
)
from ._finetune_source import _bare, _PretrainedSourceMixin
from ._skorch import (
    DevicePlumbingMixin,
    PretrainedByReferenceMixin,
    SkorchEstimatorMixin,
)

__all__: list[str] = []


def _patience(early_stopping):
    """Patience of ``early_stopping`` (0 when off or not valid; fit validates)."""
    if early_stopping is True:
        return 10
    if isinstance(early_stopping, Integral) and early_stopping > 0:
        return int(early_stopping)
    return 0


def _reset_parameters(module):
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()


# --------------------------------------------------------------- estimator


class _BaseFineTuned(
    _PretrainedSourceMixin,
    PretrainedByReferenceMixin,
    DevicePlumbingMixin,
    SkorchEstimatorMixin,
    NeuralNet,
):
    """Shared plumbing of :class:`FineTunedClassifier` and
    :class:`FineTunedRegressor` (not for direct use)."""

    _transient_attributes = ("_aug_generator", "_source_cache")

    prefixes_ = [*NeuralNet.prefixes_, "backbone"]

    _parameter_constraints = {
        "pretrained": [BaseContrastivePretrainer, str, os.PathLike, None],
        "init": [StrOptions({"pretrained", "random"})],
        "backbone": [StrOptions(set(BACKBONES)), callable, nn.Module],
        "head": [StrOptions({"linear", "official"}), callable],
        "pooling": [StrOptions({"auto", "mean", "max", "attention"})],
        "final_norm": ["boolean"],
        "freeze": [
            StrOptions({"none", "backbone"}),
            Interval(Integral, 0, None, closed="left"),
        ],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "backbone_lr": [Interval(Real, 0, None, closed="left"), None],
        "lr_schedule": [StrOptions({"cosine"}), None],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "early_stopping": ["boolean", Interval(Integral, 1, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "keep_best": [StrOptions(set(KEEP_BEST)), None],
        "slice_sampling": [StrOptions({"all", "balanced"})],
        "balance_on": [StrOptions(set(BALANCE_ON))],
        "steps_per_epoch": [Interval(Integral, 1, None, closed="left"), None],
        "augmentation": [StrOptions(set(AUGMENTATION_PRESETS)), callable, None],
        "normalize": [StrOptions(set(NORMALIZE_OPTIONS)), None],
        "cache": ["boolean", str, os.PathLike],
        "max_epochs": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [str, torch.device, None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        pretrained=None,
        *,
        init="pretrained",
        backbone="densenet121",
        head="linear",
        pooling="auto",
        final_norm=True,
        freeze="none",
        lr=1e-4,
        backbone_lr=None,
        lr_schedule=None,
        weight_decay=5e-5,
        early_stopping=False,
        validation_fraction=0.1,
        keep_best=None,
        slice_sampling="all",
        balance_on="target",
        steps_per_epoch=None,
        augmentation=None,
        normalize="zscore",
        preprocessing=None,
        cache=False,
        optimizer=torch.optim.Adam,
        max_epochs=100,
        batch_size=8,
        device="auto",
        random_state=None,
        verbose=1,
        train_split=None,
        callbacks=None,
        **kwargs,
    ):
        kwargs.setdefault("module", FineTuneNetwork)
        kwargs.setdefault("criterion", self._default_criterion())
        super().__init__(
            optimizer=optimizer,
            lr=lr,
            max_epochs=max_epochs,
            batch_size=batch_size,
            train_split=train_split,
            callbacks=callbacks,
            verbose=verbose,
            device=device,
            **kwargs,
        )
        self.pretrained = pretrained
        self.init = init
        self.backbone = backbone
        self.head = head
        self.pooling = pooling
        self.final_norm = final_norm
        self.freeze = freeze
        self.backbone_lr = backbone_lr
        self.lr_schedule = lr_schedule
        self.weight_decay = weight_decay
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.keep_best = keep_best
        self.slice_sampling = slice_sampling
        self.balance_on = balance_on
        self.steps_per_epoch = steps_per_epoch
        self.augmentation = augmentation
        self.normalize = normalize
        self.preprocessing = preprocessing
        self.cache = cache
        self.random_state = random_state

    # the pretrainers' handling of files/images/preprocessed arrays
    _lazy = BaseContrastivePretrainer._lazy
    _as_dataset = BaseContrastivePretrainer._as_dataset

    # ---------------------------------------------------- sklearn plumbing

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.target_tags.required = True
        return tags

    # ------------------------------------------------------- components

    def _n_outputs(self):
        raise NotImplementedError

    def _make_backbone(self, source):
        if hasattr(source, "_finetune_encoder"):
            backbone = source._finetune_encoder(
                pretrained=self.init == "pretrained", pooling=self.pooling
            )
            return backbone, ()
        if source is None:
            spec = self.backbone
            if isinstance(spec, nn.Module):
                spec = copy.deepcopy(spec)
            backbone = build_backbone(
                spec, self.input_shape_, **self.get_params_for("backbone")
            )
        elif self.init == "pretrained":
            backbone = copy.deepcopy(_bare(source).backbone)
        elif isinstance(source.backbone, nn.Module):
            backbone = copy.deepcopy(source.backbone)
            _reset_parameters(backbone)
        else:
            backbone = build_backbone(
                source.backbone,
                source._network_input_shape(),
                **source.get_params_for("backbone"),
            )
        added = ()
        if self.final_norm and isinstance(backbone, DenseNet3D):
            if not backbone.final_norm:
                # the official classifier mode: BN on the last feature map
                norm5 = nn.BatchNorm3d(backbone.out_features)
                norm5.to(next(backbone.parameters()).device)
                backbone.features.add_module("norm5", norm5)
                backbone.final_norm = True
                added = ("features.norm5",)
        return backbone, added

    def _make_head(self, in_features, n_outputs):
        if self.head in ("linear", "official"):
            head = nn.Linear(in_features, n_outputs)
            nn.init.zeros_(head.bias)
            return head
        head = self.head(in_features, n_outputs)
        if not isinstance(head, nn.Module):
            raise TypeError(
                f"head(in_features, n_outputs) must return an nn.Module; got "
                f"{type(head).__name__}."
            )
        return head

    def _official_classifier(self, backbone, head):
        """The official WSP classifier mode: TinyNet fc1, ResNet last_bn."""
        source = self._source()
        hidden = None
        if source is not None and not hasattr(source, "_finetune_encoder"):
            projection = getattr(_bare(source), "head", None)
            hidden = getattr(projection, "hidden_representation", None)
            if hidden is not None:
                hidden = copy.deepcopy(hidden)  # never train the pretrainer's
                if self.init == "random":
                    hidden.reset_parameters()
        return official_classifier(backbone, head, hidden)

    def _frozen_blocks(self, backbone, added):
        freeze = self.freeze
        if freeze == "none" or freeze == 0:
            return ()
        blocks = backbone_blocks(backbone, exclude=added)
        if freeze == "backbone":
            n = len(blocks)
        else:
            n = int(freeze)
            if n > len(blocks):
                raise ValueError(
                    f"freeze={n}, but the backbone has {len(blocks)} blocks: "
                    f"{[b[0] for b in blocks]}."
                )
        return tuple(name for block in blocks[:n] for name in block)

    def initialize_module(self):
        if not hasattr(self, "input_shape_"):
            raise AttributeError(
                f"{type(self).__name__} builds its network from the data: call "
                "fit(X, y) instead of initialize()."
            )
        backbone, added = self._make_backbone(self._source())
        frozen = self._frozen_blocks(backbone, added)
        skip = tuple(f"{name}." for name in added)
        for name, param in backbone.named_parameters():
            if name.startswith(skip):
                continue
            if self.freeze == "backbone" or name.startswith(
                tuple(f"{f}." for f in frozen)
            ):
                param.requires_grad_(False)
        if self.freeze == "backbone":
            frozen = ("",)  # the whole backbone (but the added layers) in eval mode
        head = self._make_head(backbone.out_features, self._n_outputs())
        if self.head == "official":
            head, more = self._official_classifier(backbone, head)
            added = (*added, *more)
        kwargs = {"backbone": backbone, "head": head, "frozen": frozen, "added": added}
        kwargs.update(self.get_params_for("module"))
        self.module_ = self.initialized_instance(self.module, kwargs)
        return self

    def get_params_for_optimizer(self, prefix, named_parameters):
        named = [(n, p) for n, p in named_parameters if p.requires_grad]
        args, kwargs = super().get_params_for_optimizer(prefix, named)
        if prefix != "optimizer":
            return args, kwargs
        kwargs.setdefault("weight_decay", self.weight_decay)
        user_groups = self.get_params_for(prefix).get("param_groups")
        if self.backbone_lr is not None and not user_groups:
            added = tuple(f"backbone.{a}." for a in self.module_.added)
            in_backbone = [
                p
                for n, p in named
                if n.startswith("backbone.") and not n.startswith(added)
            ]
            ids = {id(p) for p in in_backbone}
            rest = [p for _, p in named if id(p) not in ids]
            groups = [{"params": rest}]
            if in_backbone:
                groups.append({"params": in_backbone, "lr": self.backbone_lr})
            args = ([g for g in groups if g["params"]],)
        return args, kwargs

    def initialize(self):
        super().initialize()
        self.augment_ = make_augmentation(self.augmentation)
        self.normalizer_ = make_normalizer(self.normalize)
        return self

    def get_default_callbacks(self):
        callbacks = [
            *super().get_default_callbacks(),
            ("stop_on_nonfinite_loss", StopOnNonFiniteLoss()),
        ]
        if self.verbose:
            callbacks.insert(len(callbacks) - 2, ("progress_bar", StepProgressBar()))
        if self.keep_best is not None:
            # before the log, which prints what it records
            names = [name for name, _ in callbacks]
            at = names.index("print_log") if "print_log" in names else len(names)
            callbacks.insert(at, ("keep_best", BestValidCheckpoint(self.keep_best)))
        if self.lr_schedule == "cosine":
            schedule = LRScheduler(
                policy="CosineAnnealingLR", T_max=max(1, self.max_epochs), eta_min=0
            )
            callbacks.append(("lr_scheduler", schedule))
        patience = _patience(self.early_stopping)
        if patience:
            if self.keep_best is None:
                stopper = EarlyStopping(
                    monitor="valid_loss", patience=patience, load_best=True
                )
            else:  # same score; keep_best restores the best weights
                stopper = EarlyStopping(
                    monitor=self.keep_best,
                    patience=patience,
                    lower_is_better=self.keep_best == "valid_loss",
                    load_best=False,
                )
            callbacks.append(("early_stopping", stopper))
        return callbacks

    def set_params(self, **kwargs):
        kwargs = dict(kwargs)
        if "callbacks" in kwargs:
            # stored as given and checked when the net is initialised; skorch
            # would build them right away
            self.callbacks = kwargs.pop("callbacks")
        return super().set_params(**kwargs)

    def get_split_datasets(self, X, y=None, **fit_params):
        held_out = _patience(self.early_stopping) or self.keep_best is not None
        if self.train_split is not None or not held_out:
            return super().get_split_datasets(X, y, **fit_params)
        dataset = self.get_dataset(X, y)
        stratified = isinstance(self, ClassifierMixin)
        seed = self._base_seed_ % (2**31)
        if isinstance(dataset, SliceDataset):
            split = VolumeSplit(self.validation_fraction, stratified, seed)
            return split(dataset)
        split = ValidSplit(
            self.validation_fraction,
            stratified=stratified and y is not None,
            random_state=seed,
        )
        return split(dataset, y)

    def get_iterator(self, dataset, training=False):
        prefix = "iterator_train" if training else "iterator_valid"
        kwargs = self.get_params_for(prefix)
        kwargs.setdefault("batch_size", self.batch_size)
        if kwargs["batch_size"] == -1:
            kwargs["batch_size"] = len(dataset)
        if training and self.slice_sampling == "balanced":
            sampler = balanced_slice_sampler(
                dataset,
                kwargs.pop("batch_size"),
                self.steps_per_epoch,
                balanced=isinstance(self, ClassifierMixin),
                scores=self.__dict__.get("_fit_scores"),
            )
            for key in ("shuffle", "drop_last", "sampler"):
                kwargs.pop(key, None)
            loader_defaults(kwargs, dataset, self.device)
            return self.iterator_train(dataset, batch_sampler=sampler, **kwargs)
        if training:
            size = kwargs["batch_size"]
            kwargs.setdefault("shuffle", True)
            # BatchNorm cannot train on a batch of one sample
            kwargs.setdefault(
                "drop_last", len(dataset) > size and len(dataset) % size == 1
            )
        loader_defaults(kwargs, dataset, self.device)
        iterator = self.iterator_train if training else self.iterator_valid
        return iterator(dataset, **kwargs)

    # -------------------------------------------------------- the step

    def _prepare(self, x):
        """Batch to device, channel axis for tabular input, resize, z-score."""
        x = to_tensor(x, device=self.device)
        # the official WSP uint8 cast comes first (the resize is linear)
        early = self.normalize == "uint8" and self.normalizer_ is not None
        if early:
            x = self.normalizer_(x)
        if x.ndim == 2:
            x = x[:, None, :]
        size = (self.slicing_ or {}).get("size")
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = resize_in_plane(x.float(), (size, size))
        if self.normalizer_ is not None and not early:
            x = self.normalizer_(x)
        return x

    def infer(self, x, **fit_params):
        """Forward a batch (augmented when the network is training)."""
        x = self._prepare(x)
        if self.augment_ is not None and self.module_.training:
            x = self.augment_(x, generator=self._generator(x.device))
        return self.module_(x, **fit_params)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        y_true = to_tensor(y_true, device=y_pred.device)
        if self.slicing_ is not None:
            y_true = y_true[:, 0]  # SliceDataset targets are [label, position]
        return self._loss(y_pred, y_true)

    # ------------------------------------------------------------ data

    def _encode_target(self, y, n_samples, *, reset, classes=None):
        raise NotImplementedError

    def _missing_y(self, y):
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y "
                "is None."
            )

    def _volumes(self, X, *, reset):
        """Validated X: a float32 array or a lazy VolumeDataset."""
        adapter = getattr(self, "input_adapter_", None)
        if adapter is not None:
            return adapter.load(self, X, reset=reset)
        if self._lazy(X):
            return self._as_dataset(X, None, reset=reset)
        return check_volumes(self, X, reset=reset)

    def _fit(self, X, y, fit_params, *, partial, classes=None, scores=None):
        try:
            return self._fit_inner(X, y, fit_params, partial, classes, scores)
        finally:
            self.__dict__.pop("_fit_scores", None)

    def _fit_inner(self, X, y, fit_params, partial, classes, scores):
        self._check_params()
        reset = not (partial or self.warm_start) or not getattr(
            self, "initialized_", False
        )
        source = self._source() if reset else None
        self._missing_y(y)
        if reset:
            self._check_recipe_params()
            if self.pooling != "auto" and not hasattr(source, "_finetune_encoder"):
                what = (
                    "training from scratch"
                    if source is None
                    else (f"a {type(source).__name__}")
                )
                raise ValueError(
                    f"pooling={self.pooling!r} applies to encoders of parts of a "
                    "volume (GlobalLocalPretrainer, DrasCLREncoder); use "
                    f"pooling='auto' for {what}."
                )
            self.input_adapter_ = (
                source._finetune_input()
                if hasattr(source, "_finetune_encoder")
                else None
            )
        volumes = self._volumes(X, reset=reset)
        target = self._encode_target(y, len(volumes), reset=reset, classes=classes)
        if reset:
            if source is not None:
                self._check_source_input(source)
            self.slicing_ = self._slice_geometry(source)
            if self.slice_sampling == "balanced" and self.slicing_ is None:
                raise ValueError(
                    "slice_sampling='balanced' draws slices of volumes: it "
                    "needs slice inputs (a WSP encoder with a 2-D backbone as "
                    "pretrained); use slice_sampling='all'."
                )
            if self.slicing_ is not None and target.ndim != 1:
                raise ValueError(
                    "Slice inputs (a WSP encoder) take one target per volume, "
                    f"shape (n,); got y of shape {np.shape(y)}."
                )
            rng = check_random_state(self.random_state)
            self._base_seed_ = int(rng.randint(np.iinfo(np.int32).max))
            self._set_class_weight(target)
        scores = check_balance_scores(self, scores, len(volumes))
        self.__dict__["_fit_scores"] = scores
        if self.slicing_ is not None:
            data = SliceDataset(
                volumes,
                labels=target,
                axis=self.slicing_["axis"],
                fraction=self.slicing_["fraction"],
            )
            target = None
        elif isinstance(volumes, torch.utils.data.Dataset):
            data = VolumesWithTarget(volumes, target)
        else:
            data = volumes
        offset = 0 if reset else len(self.history)
        with self._on_device() as device, self._seeded(offset):
            self.device_ = device
            if reset:
                self.__dict__.pop("_aug_generator", None)
                self.__dict__["_source_cache"] = source
                try:
                    self.initialize()
                finally:
                    self.__dict__.pop("_source_cache", None)
            NeuralNet.partial_fit(self, data, target, **fit_params)
        return self

    def _set_class_weight(self, target):
        pass

    def _check_recipe_params(self):
        if self.keep_best == "valid_auc" and not isinstance(self, ClassifierMixin):
            raise ValueError(
                f"keep_best='valid_auc' scores class probabilities; use "
                f"keep_best='valid_loss' or None for a {type(self).__name__}."
            )

    def _outputs(self, X):
        """Network outputs per sample; per volume (n, n_kept, k) for slices."""
        self.check_is_fitted()
        volumes = self._volumes(X, reset=False)
        data = volumes
        if self.slicing_ is not None:
            data = SliceDataset(
                volumes, axis=self.slicing_["axis"], fraction=self.slicing_["fraction"]
            )
        with self._on_device():
            out = [
                t.float().numpy()
                for t in self.forward_iter(data, training=False, device="cpu")
            ]
        out = np.concatenate(out).astype(np.float64)
        if self.slicing_ is not None:
            out = out.reshape(data.n_volumes, data.n_kept, -1)
        return out
