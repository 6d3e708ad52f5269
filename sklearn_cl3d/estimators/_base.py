"""The skorch base class every contrastive pretrainer shares.

It owns the plumbing (input validation, device, seeding, the two-view
training step, feature extraction, scikit-learn API conventions); a method
module only says which criterion to build and which metadata it consumes.
"""

from __future__ import annotations

import copy
import os
from contextlib import nullcontext
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils._param_validation import (
    Interval,
    StrOptions,
)
from sklearn.utils.metaestimators import available_if
from skorch import NeuralNet
from skorch.dataset import unpack_data
from skorch.utils import to_tensor

from .. import distributed as _dist, persistence as _persistence
from ..augment import AUGMENTATION_PRESETS, ZScore, make_augmentation
from ..callbacks import StepProgressBar, StopOnNonFiniteLoss
from ..data import (
    VolumeDataset,
    as_volume_dataset,
    check_input_shape,
    check_volumes,
    expand_paths,
    is_volume_collection,
)
from ..data._loading import loader_defaults
from ..nn import BACKBONES, ContrastiveModel, ProjectionHead, build_backbone
from ._device import (
    MEMORY_FORMATS,
    PRECISIONS,
    resolve_device,
    resolve_memory_format,
    resolve_precision,
)
from ._skorch import DevicePlumbingMixin, SkorchEstimatorMixin, draw_base_seed

__all__ = [
    "BaseContrastivePretrainer",
    "resolve_device",
    "resolve_memory_format",
    "resolve_precision",
]

FEATURE_LAYERS = ("backbone", "hidden", "projection")


def _never(self):
    return False


class BaseContrastivePretrainer(
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    DevicePlumbingMixin,
    SkorchEstimatorMixin,
    NeuralNet,
):
    """Base class of the contrastive pretrainers (not for direct use).

    Subclasses set ``criterion`` (the loss module), implement
    ``_criterion_params`` (the loss's keyword arguments from the estimator's
    parameters), and set ``_metadata_required``.

    Training: every batch is moved to the device, z-scored per sample
    (``normalize="zscore"``), augmented twice independently on the device,
    and the two views go through the network as **two separate forward
    calls**, as in the official y-Aware code (so BatchNorm statistics are per
    view). The criterion gets the two projections and the batch metadata.

    ``transform`` z-scores (no augmentation) and returns the features of
    ``feature_layer``.
    """

    prefixes_ = [*NeuralNet.prefixes_, "backbone"]

    _metadata_required = False

    _transient_attributes = ("_aug_generator", "_compiled_module", "_grad_scaler")

    _parameter_constraints = {
        "backbone": [StrOptions(set(BACKBONES)), callable, torch.nn.Module],
        "hidden_dim": [Interval(Integral, 1, None, closed="left")],
        "projection_dim": [Interval(Integral, 1, None, closed="left")],
        "feature_layer": [StrOptions(set(FEATURE_LAYERS))],
        "augmentation": [StrOptions(set(AUGMENTATION_PRESETS)), callable, None],
        "normalize": [StrOptions({"zscore"}), None],
        "cache": ["boolean", str, os.PathLike],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "max_epochs": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [str, torch.device, None],
        "precision": [StrOptions(set(PRECISIONS))],
        "memory_format": [StrOptions(set(MEMORY_FORMATS))],
        "compile": ["boolean"],
        "gather_distributed": ["boolean"],
        "sync_batchnorm": ["boolean"],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        backbone="densenet121",
        hidden_dim=512,
        projection_dim=128,
        feature_layer="backbone",
        augmentation="cutout",
        normalize="zscore",
        preprocessing=None,
        cache=False,
        temperature=0.1,
        optimizer=torch.optim.Adam,
        lr=1e-4,
        weight_decay=5e-5,
        max_epochs=100,
        batch_size=64,
        device="auto",
        precision="fp32",
        memory_format="auto",
        compile=False,
        gather_distributed=True,
        sync_batchnorm=False,
        random_state=None,
        verbose=1,
        train_split=None,
        callbacks=None,
        **kwargs,
    ):
        kwargs.setdefault("module", ContrastiveModel)
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
        self.backbone = backbone
        self.hidden_dim = hidden_dim
        self.projection_dim = projection_dim
        self.feature_layer = feature_layer
        self.augmentation = augmentation
        self.normalize = normalize
        self.preprocessing = preprocessing
        self.cache = cache
        self.temperature = temperature
        self.weight_decay = weight_decay
        self.precision = precision
        self.memory_format = memory_format
        self.compile = compile
        self.gather_distributed = gather_distributed
        self.sync_batchnorm = sync_batchnorm
        self.random_state = random_state

    # ------------------------------------------------------------ hooks

    @classmethod
    def _default_criterion(cls):
        raise NotImplementedError

    def _criterion_params(self):
        """Keyword arguments of the criterion taken from the estimator."""
        return {"temperature": self.temperature}

    def _network_input_shape(self):
        """Per-sample shape the backbone is built for (that of X by default)."""
        return self.input_shape_

    # ---------------------------------------------------- sklearn plumbing

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        tags.target_tags.required = self._metadata_required
        tags.input_tags.allow_nan = False
        return tags

    @property
    def _n_features_out(self):
        if not getattr(self, "initialized_", False):
            raise AttributeError("not fitted")
        return self._bare_module().feature_dim(self.feature_layer)

    # predict/predict_proba from NeuralNet make no sense for a transformer
    predict = available_if(_never)(NeuralNet.predict)
    predict_proba = available_if(_never)(NeuralNet.predict_proba)

    # ----------------------------------------------------------- device

    # ------------------------------------------------------- components

    def get_default_callbacks(self):
        callbacks = [
            *super().get_default_callbacks(),
            ("stop_on_nonfinite_loss", StopOnNonFiniteLoss()),
        ]
        if self.verbose:
            # the bar goes before the epoch table so the table is printed last
            callbacks.insert(len(callbacks) - 2, ("progress_bar", StepProgressBar()))
        return callbacks

    def initialize_module(self):
        if not hasattr(self, "input_shape_"):
            raise AttributeError(
                f"{type(self).__name__} builds its network from the shape of X: "
                "call fit(X, ...) instead of initialize()."
            )
        spec = self.backbone
        if isinstance(spec, torch.nn.Module):
            # never train the user's object in place; refits start from it
            spec = copy.deepcopy(spec)
        backbone = build_backbone(
            spec, self._network_input_shape(), **self.get_params_for("backbone")
        )
        head = ProjectionHead(
            backbone.out_features,
            hidden_dim=self.hidden_dim,
            out_dim=self.projection_dim,
        )
        kwargs = {"backbone": backbone, "head": head}
        kwargs.update(self.get_params_for("module"))
        self.module_ = self.initialized_instance(self.module, kwargs)
        if self.sync_batchnorm and _dist.is_distributed():
            # BatchNorm statistics over the global batch (CUDA only in torch)
            self.module_ = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.module_)
        fmt = self._memory_format(len(self._network_input_shape()) + 1)
        if fmt is not torch.contiguous_format:
            self.module_ = self.module_.to(memory_format=fmt)
        return self

    def initialize_criterion(self):
        kwargs = self._criterion_params()
        kwargs.update(self.get_params_for("criterion"))
        self.criterion_ = self.initialized_instance(self.criterion, kwargs)
        return self

    def get_params_for_optimizer(self, prefix, named_parameters):
        args, kwargs = super().get_params_for_optimizer(prefix, named_parameters)
        if prefix == "optimizer":
            kwargs.setdefault("weight_decay", self.weight_decay)
        return args, kwargs

    def initialize(self):
        super().initialize()
        self.augment_ = make_augmentation(self.augmentation)
        self.normalizer_ = ZScore() if self.normalize == "zscore" else None
        for key in ("_compiled_module", "_grad_scaler"):
            self.__dict__.pop(key, None)
        return self

    # ------------------------------------------------ speed and precision

    def _scaler(self):
        """GradScaler for fp16 training (None otherwise)."""
        if self._precision() != "fp16" or self.device is None:
            return None
        scaler = self.__dict__.get("_grad_scaler")
        if scaler is None:
            scaler = torch.amp.GradScaler(torch.device(self.device).type)
            self.__dict__["_grad_scaler"] = scaler
        return scaler

    def train_step_single(self, batch, **fit_params):
        scaler = self._scaler()
        if scaler is None:
            return super().train_step_single(batch, **fit_params)
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        y_pred = self.infer(Xi, **fit_params)
        loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        scaler.scale(loss).backward()
        return {"loss": loss, "y_pred": y_pred}

    def _step_optimizer(self, step_fn):
        scaler = self._scaler()
        if scaler is None:
            return super()._step_optimizer(step_fn)
        step_fn()  # one forward/backward with the scaled loss
        for name in self._optimizers:
            scaler.step(getattr(self, name + "_"))
        scaler.update()
        return None

    def set_params(self, **kwargs):
        kwargs = dict(kwargs)
        if "callbacks" in kwargs:
            # stored as given and checked when the net is initialised (sklearn's
            # set_params never validates); skorch would build them right away
            self.callbacks = kwargs.pop("callbacks")
        backbone_keys = [k for k in kwargs if k.startswith("backbone__")]
        for key in backbone_keys:
            setattr(self, key, kwargs.pop(key))
            self._params_to_validate.add(key)
        rebuild = getattr(self, "initialized_", False) and "device" not in kwargs
        # skorch re-initialises components when module/criterion params change
        with self._on_device() if rebuild else nullcontext():
            super().set_params(**kwargs)
            if rebuild and backbone_keys:
                # the network no longer matches its parameters: rebuild it
                self._initialize_module(reason="backbone parameters changed")
                self._initialize_criterion()
                self._initialize_optimizer()
        return self

    def get_iterator(self, dataset, training=False):
        prefix = "iterator_train" if training else "iterator_valid"
        kwargs = self.get_params_for(prefix)
        kwargs.setdefault("batch_size", self.batch_size)
        if kwargs["batch_size"] == -1:
            kwargs["batch_size"] = len(dataset)
        if training:
            kwargs.setdefault("shuffle", True)
            # constant negatives per step, but never drop the only batch
            kwargs.setdefault("drop_last", len(dataset) > kwargs["batch_size"])
        loader_defaults(kwargs, dataset, self.device)
        iterator = self.iterator_train if training else self.iterator_valid
        return iterator(dataset, **kwargs)

    # -------------------------------------------------------- the step

    def _prepare(self, x):
        """Batch to device, channel axis for tabular input, z-score."""
        x = self._to_device(x)
        if x.ndim == 2:
            x = x[:, None, :]
        if self.normalizer_ is not None:
            x = self.normalizer_(x)
        return x

    def _views(self, x):
        if self.augment_ is None:
            return x, x
        gen = self._generator(x.device)
        return self.augment_(x, generator=gen), self.augment_(x, generator=gen)

    def infer(self, x, **fit_params):
        """Two augmented views through the network: (z_view1, z_view2)."""
        x = self._prepare(x)
        v1, v2 = self._views(x)
        net = self._net()
        with self._autocast():
            z1 = net(self._as_input(v1), **fit_params)
            z2 = net(self._as_input(v2), **fit_params)
        # the loss runs in float32 whatever the autocast precision
        return z1.float(), z2.float()

    def _gather_batch(self, z1, z2, meta=None):
        """The global batch of a multi-process run: (z1, z2, meta) gathered.

        With ``gather_distributed`` inside a process group of more than one
        process, the projections are gathered with gradients and ``meta``
        (a tensor or None) without, all in rank order; otherwise the inputs
        are returned unchanged.
        """
        if not (self.gather_distributed and _dist.is_distributed()):
            return z1, z2, meta
        z1, z2 = _dist.gather_with_grad(z1), _dist.gather_with_grad(z2)
        if meta is not None:
            meta = _dist.gather(meta)
        return z1, z2, meta

    def _bare_module(self):
        """``module_`` without a DistributedDataParallel wrapper."""
        module = self.module_
        while isinstance(module, torch.nn.parallel.DistributedDataParallel):
            module = module.module
        return module

    def get_loss(self, y_pred, y_true, X=None, training=False):
        z1, z2 = y_pred
        meta = None
        if self._metadata_required:
            meta = to_tensor(y_true, device=z1.device)
        z1, z2, meta = self._gather_batch(z1, z2, meta)
        return self.criterion_(z1, z2, meta)

    def evaluation_step(self, batch, training=False):
        self.check_is_fitted()
        Xi, _ = unpack_data(batch)
        with torch.set_grad_enabled(training):
            self._set_training(training)
            x = self._as_input(self._prepare(Xi))
            with self._autocast():
                out = self._bare_module().encode(x, layer=self.feature_layer)
            return out.float()

    # ------------------------------------------------------ public API

    def _metadata(self, n_samples, y, fit_params):
        """Return the metadata the criterion consumes (None if unused)."""
        return None

    def _lazy(self, X):
        return (
            isinstance(X, VolumeDataset)
            or is_volume_collection(X)
            or self.preprocessing is not None
        )

    def _as_dataset(self, X, y, *, reset):
        """Files, images or preprocessed arrays as a lazy :class:`VolumeDataset`."""
        ds = as_volume_dataset(
            X, y=y, preprocessing=self.preprocessing, cache=self.cache
        )
        if reset and hasattr(self, "n_features_in_"):
            del self.n_features_in_
        check_input_shape(self, tuple(ds.sample_shape), reset=reset)
        return ds

    def _fit(self, X, y, fit_params, *, partial):
        self._check_params()
        reset = not (partial or self.warm_start) or not getattr(
            self, "initialized_", False
        )
        X = expand_paths(X)  # a folder or a glob pattern: its sorted images
        if self._lazy(X):
            meta = self._metadata(len(X), y, fit_params)
            X, target = self._as_dataset(X, meta, reset=reset), None
        else:
            X = check_volumes(self, X, reset=reset)
            target = meta = self._metadata(X.shape[0], y, fit_params)
        if reset:
            self._base_seed_ = draw_base_seed(self.random_state)
        offset = 0 if reset else len(self.history)
        with self._on_device() as device, self._seeded(offset):
            self.device_ = device
            if reset:
                self.__dict__.pop("_aug_generator", None)
                self.initialize()
            NeuralNet.partial_fit(self, X, target, **fit_params)
        return self

    def fit(self, X, y=None, **fit_params):
        """Pretrain the network on X (see the class docstring).

        Parameters
        ----------
        X : array-like of shape (n, C, D, H, W), (n, D, H, W) or (n, F), or list
            Volumes, or tabular features for the MLP backbone.
        y : array-like of shape (n,) or (n, k), default=None
            Metadata for methods that use it; ignored otherwise.
        **fit_params : dict
            Passed to the network's forward call.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        return self._fit(X, y, fit_params, partial=False)

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        """Continue training for ``max_epochs`` epochs (initialise if needed).

        Parameters
        ----------
        X : array-like of shape (n, C, D, H, W), (n, D, H, W) or (n, F), or list
            Volumes or tabular features, same kind as in earlier calls.
        y : array-like of shape (n,) or (n, k), default=None
            Metadata for methods that use it.
        classes : None
            Ignored; present for API compatibility.
        **fit_params : dict
            Passed to the network's forward call.

        Returns
        -------
        self : object
        """
        return self._fit(X, y, fit_params, partial=True)

    def transform(self, X):
        """Encode X with the pretrained network.

        Parameters
        ----------
        X : array-like of shape (n, C, D, H, W), (n, D, H, W) or (n, F), or list
            Same kind of input as in ``fit``.

        Returns
        -------
        ndarray of float32, shape (n, n_features_out)
            Features of ``feature_layer``: the pooled backbone features
            (``"backbone"``, 1024-d for DenseNet-121), the head's hidden layer
            (``"hidden"``) or the projection (``"projection"``).
        """
        self.check_is_fitted()
        if self._lazy(X):
            X = self._as_dataset(X, None, reset=False)
        else:
            X = check_volumes(self, X, reset=False)
        with self._on_device():
            out = [
                f.numpy() for f in self.forward_iter(X, training=False, device="cpu")
            ]
        out = np.concatenate(out).astype(np.float32, copy=False)
        return self._check_finite_output(out)

    # ----------------------------------------------------- persistence

    def save_pretrained(self, path, *, exclude=()):
        """Save the fitted network and its configuration to a folder.

        See :func:`sklearn_cl3d.save_pretrained`: ``weights.pt``,
        ``config.json`` and ``manifest.json`` (their checksums), swapped in
        atomically.

        Parameters
        ----------
        path : str or path-like
            Folder to write (new, empty, or an encoder saved earlier).
        exclude : iterable of str, default=()
            Parameters not to store (e.g. a kernel given as a lambda);
            callbacks are never stored.

        Returns
        -------
        path : pathlib.Path
        """
        return _persistence.save_pretrained(self, path, exclude=exclude)

    @classmethod
    def load_pretrained(
        cls, path, *, custom_objects=None, trust_imports=None, **params
    ):
        """Load an encoder saved with :meth:`save_pretrained`.

        See :func:`sklearn_cl3d.load_pretrained` (what loading checks and
        refuses); the saved class must be this class or a subclass.

        Parameters
        ----------
        path : str or path-like
            Folder written by :meth:`save_pretrained`.
        custom_objects : dict, default=None
            Your own classes and functions named in the config, e.g.
            ``{"MyNet": MyNet}``; nothing is imported from the file.
        trust_imports : None
            Deprecated, no effect (``True`` raises; use ``custom_objects``).
        **params : dict
            Constructor parameters overriding the saved ones.

        Returns
        -------
        estimator
            A fitted estimator with the saved weights.
        """
        return _persistence.load_pretrained(
            path,
            custom_objects=custom_objects,
            expected_class=cls,
            trust_imports=trust_imports,
            **params,
        )
