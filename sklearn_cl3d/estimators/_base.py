"""The skorch base class every contrastive pretrainer shares.

It owns the plumbing (input validation, device, seeding, the two-view
training step, feature extraction, scikit-learn API conventions); a method
module only says which criterion to build and which metadata it consumes.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import (
    Interval,
    StrOptions,
    validate_parameter_constraints,
)
from sklearn.utils.metaestimators import available_if
from skorch import NeuralNet
from skorch.callbacks import ProgressBar
from skorch.dataset import unpack_data
from skorch.utils import to_tensor

from ..augment import AUGMENTATION_PRESETS, ZScore, make_augmentation
from ..callbacks import StopOnNonFiniteLoss
from ..data import (
    VolumeDataset,
    as_volume_dataset,
    check_input_shape,
    check_volumes,
    is_volume_collection,
)
from ..nn import BACKBONES, ContrastiveModel, ProjectionHead, build_backbone

__all__ = ["BaseContrastivePretrainer", "resolve_device"]

FEATURE_LAYERS = ("backbone", "hidden", "projection")


def resolve_device(device):
    """Turn ``"auto"`` into ``"cuda"`` when CUDA is available, else ``"cpu"``.

    Parameters
    ----------
    device : str, torch.device or None
        ``"auto"``, a torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``),
        or None (skorch's "leave tensors where they are").

    Returns
    -------
    str or None

    Examples
    --------
    >>> resolve_device("cpu")
    'cpu'
    """
    if device is None:
        return None
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or another torch "
            f"device string; got {device!r}."
        ) from exc
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available on this "
            "machine; use device='auto' or 'cpu'."
        )
    return device


def _never(self):
    return False


class BaseContrastivePretrainer(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, NeuralNet
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

    _parameter_constraints = {
        "backbone": [StrOptions(set(BACKBONES)), callable, torch.nn.Module],
        "hidden_dim": [Interval(Integral, 1, None, closed="left")],
        "projection_dim": [Interval(Integral, 1, None, closed="left")],
        "feature_layer": [StrOptions(set(FEATURE_LAYERS))],
        "augmentation": [StrOptions(set(AUGMENTATION_PRESETS)), callable, None],
        "normalize": [StrOptions({"zscore"}), None],
        "cache": ["boolean"],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "max_epochs": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [str, torch.device, None],
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
        random_state=None,
        verbose=0,
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

    def _get_param_names(self):
        # skorch lists every non-underscore-suffixed __dict__ key; drop the
        # private bookkeeping ones (e.g. _params_to_validate) so that
        # set_params/clone only see real parameters.
        return [k for k in super()._get_param_names() if not k.startswith("_")]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        tags.target_tags.required = self._metadata_required
        tags.input_tags.allow_nan = False
        return tags

    def _check_params(self):
        params = {
            key: getattr(self, key)
            for key in self._parameter_constraints
            if key in self.__dict__
        }
        validate_parameter_constraints(
            self._parameter_constraints, params, caller_name=type(self).__name__
        )
        resolve_device(self.device)

    @property
    def _n_features_out(self):
        if not getattr(self, "initialized_", False):
            raise AttributeError("not fitted")
        return self.module_.feature_dim(self.feature_layer)

    # predict/predict_proba from NeuralNet make no sense for a transformer
    predict = available_if(_never)(NeuralNet.predict)
    predict_proba = available_if(_never)(NeuralNet.predict_proba)

    # ----------------------------------------------------------- device

    @contextmanager
    def _on_device(self):
        """Resolve ``device="auto"`` for the duration of a skorch call.

        skorch reads ``self.device`` everywhere; the parameter itself keeps
        the user's value so ``get_params``/``clone`` are unchanged.
        """
        requested = self.__dict__["device"]
        resolved = resolve_device(requested)
        self.__dict__["device"] = resolved
        try:
            yield resolved
        finally:
            self.__dict__["device"] = requested

    @contextmanager
    def _seeded(self, offset):
        """Seed torch's global RNG from ``random_state`` inside a fork."""
        seed = self._base_seed_ + int(offset)
        device = self.__dict__["device"]
        devices = []
        if device is not None and torch.device(device).type == "cuda":
            index = torch.device(device).index
            devices = [torch.cuda.current_device() if index is None else index]
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield seed

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_aug_generator", None)
        return state

    def __setstate__(self, state):
        requested = state.get("device")
        if requested == "auto":
            state["device"] = resolve_device("auto")
        # skorch maps CUDA tensors to the CPU when CUDA is missing here
        super().__setstate__(state)
        if "device_" in self.__dict__:
            self.device_ = str(self.__dict__["device"])
        if requested == "auto":
            self.__dict__["device"] = "auto"

    # ------------------------------------------------------- components

    def get_default_callbacks(self):
        callbacks = [
            *super().get_default_callbacks(),
            ("stop_on_nonfinite_loss", StopOnNonFiniteLoss()),
        ]
        if self.verbose:
            # the bar goes before the epoch table so the table is printed last
            callbacks.insert(len(callbacks) - 2, ("progress_bar", ProgressBar()))
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
        return self

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
        if self.device is not None and torch.device(self.device).type == "cuda":
            kwargs.setdefault("pin_memory", True)
        iterator = self.iterator_train if training else self.iterator_valid
        return iterator(dataset, **kwargs)

    # -------------------------------------------------------- the step

    def _prepare(self, x):
        """Batch to device, channel axis for tabular input, z-score."""
        x = to_tensor(x, device=self.device)
        if x.ndim == 2:
            x = x[:, None, :]
        if self.normalizer_ is not None:
            x = self.normalizer_(x)
        return x

    def _generator(self, device):
        gen = self.__dict__.get("_aug_generator")
        if gen is None or gen.device != torch.device(device):
            gen = torch.Generator(device=device)
            gen.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
            self.__dict__["_aug_generator"] = gen
        return gen

    def _views(self, x):
        if self.augment_ is None:
            return x, x
        gen = self._generator(x.device)
        return self.augment_(x, generator=gen), self.augment_(x, generator=gen)

    def infer(self, x, **fit_params):
        """Two augmented views through the network: (z_view1, z_view2)."""
        x = self._prepare(x)
        v1, v2 = self._views(x)
        return self.module_(v1, **fit_params), self.module_(v2, **fit_params)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        z1, z2 = y_pred
        meta = None
        if self._metadata_required:
            meta = to_tensor(y_true, device=self.device)
        return self.criterion_(z1, z2, meta)

    def evaluation_step(self, batch, training=False):
        self.check_is_fitted()
        Xi, _ = unpack_data(batch)
        with torch.set_grad_enabled(training):
            self._set_training(training)
            return self.module_.encode(self._prepare(Xi), layer=self.feature_layer)

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
        if self._lazy(X):
            meta = self._metadata(len(X), y, fit_params)
            X, target = self._as_dataset(X, meta, reset=reset), None
        else:
            X = check_volumes(self, X, reset=reset)
            target = meta = self._metadata(X.shape[0], y, fit_params)
        if reset:
            rng = check_random_state(self.random_state)
            self._base_seed_ = int(rng.randint(np.iinfo(np.int32).max))
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
        return np.concatenate(out).astype(np.float32, copy=False)
