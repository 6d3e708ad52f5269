"""Fine-tuning of a global-local pretrained U-Net for segmentation
(Chaitanya et al., NeurIPS 2020), and the same U-Net from random weights."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import (
    Interval,
    RealNotInt,
    StrOptions,
)
from skorch import NeuralNet
from skorch.dataset import Dataset, unpack_data
from skorch.utils import to_tensor

from ..callbacks import StopOnNonFiniteLoss
from ..data._validation import check_masks
from ..losses import DiceCELoss
from ..metrics import dice_scores
from ..nn import UNet
from ._base import MEMORY_FORMATS
from ._segmenter_data import SegmenterDataMixin
from ._segmenter_training import SegmenterTrainingMixin, segmentation_augment
from ._skorch import (
    DevicePlumbingMixin,
    PretrainedByReferenceMixin,
    SkorchEstimatorMixin,
)

__all__ = ["ContrastiveSegmenter"]


# --------------------------------------------------------------- estimator


class ContrastiveSegmenter(
    SegmenterTrainingMixin,
    SegmenterDataMixin,
    PretrainedByReferenceMixin,
    DevicePlumbingMixin,
    SkorchEstimatorMixin,
    NeuralNet,
):
    """Segmentation U-Net fine-tuned from global-local pretraining.

    The network is the U-Net of :class:`~sklearn_cl3d.GlobalLocalPretrainer`
    with a segmentation tail (two 3x3 conv-BN-ReLU, then a 3x3 convolution to
    ``n_classes``). With ``pretrained`` set, its encoder and the decoder
    blocks trained by the local stage are copied from the pretrainer; the
    other decoder blocks and the tail start from random weights, and **all**
    layers are trained (Chaitanya et al., stage 3). ``pretrained=None``
    trains the same U-Net from random weights: the baseline.

    Training is on few labelled volumes: in 2-D mode on every slice along
    the slice axis (each with its mask slice), in 3-D mode on whole volumes
    (slice axis first, depth resampled to ``volume_depth``), with
    :class:`~sklearn_cl3d.losses.DiceCELoss`. Inputs are scaled per volume
    as in pretraining and resized on the device to the network's size (masks with
    nearest-neighbour); ``predict_proba`` resizes the softmax back to the
    volume's size, so ``predict`` returns label volumes shaped like X.

    Parameters
    ----------
    pretrained : GlobalLocalPretrainer or None, default=None
        A fitted pretrainer; its weights are copied (it is never changed),
        and :func:`~sklearn.base.clone` keeps the reference, so every clone in
        a cross-validation or grid search starts from the same weights. Its
        ``dims``, ``channels``, ``slice_axis``, in-plane network size and
        ``normalize`` are used, and the parameters of the same names here are
        ignored. Its ``preprocessing`` is not applied: give volumes (and masks)
        prepared the same way. A ``FrozenEstimator`` wrapping one is accepted.
    n_classes : int or None, default=None
        Number of classes, background (label 0) included; None is the largest
        label in the masks of ``fit`` plus 1.
    dims : {2, 3}, default=2
        Without ``pretrained``: 2-D U-Net on slices or 3-D U-Net on volumes.
    channels : tuple of int, default=(16, 32, 64, 128, 128, 128)
        Without ``pretrained``: encoder channels of the U-Net.
    slice_axis : int, default=-1
        Without ``pretrained``: spatial axis of (D, H, W) slices are taken
        along (2-D) or that becomes the depth axis (3-D).
    slice_size : int or None, default=192
        Without ``pretrained``: in-plane network size, a multiple of
        ``2 ** (len(channels) - 1)``; None keeps the size seen in ``fit``.
    volume_depth : int or None, default=None
        3-D mode: depth volumes are resampled to, a multiple of
        ``2 ** (len(channels) - 1)``; None is the smallest such multiple that
        is at least the number of slices.
    normalize : {"percentile"} or None, default="percentile"
        Without ``pretrained``: per-volume min-max scaling with the 1st/99th
        percentiles, or None.
    dice_weight : float, default=1.0
        Weight of the Dice term.
    ce_weight : float, default=0.0
        Weight of the cross-entropy term; 0 is the official Dice-only loss.
        The default was 1.0 (Dice + CE) until a paired A/B showed it scores
        lower (mean foreground Dice -0.07 [95 % CI -0.11, -0.03] with 1 or 2
        labelled volumes, see :doc:`/protocols`).
    include_background : bool, default=True
        Dice loss over all classes (official) or the foreground ones.
    bn_momentum : float or None, default=None
        BatchNorm momentum of the fine-tuned network (PyTorch convention).
        None keeps the U-Net's 0.01 (the official TensorFlow decay 0.99),
        whose running statistics lag behind after short fine-tuning and
        make ``predict`` poor; 0.1 suits runs of a few hundred steps.
    optimizer : torch optimizer class, default=torch.optim.Adam
    lr : float, default=1e-3
        Learning rate (official).
    weight_decay : float, default=0.0
    max_epochs : int, default=100
        Epochs over the labelled slices (volumes in 3-D mode); ignored when
        ``n_iterations`` is set.
    n_iterations : int or None, default=None
        Train for this many steps instead of ``max_epochs`` epochs (one
        epoch in the history), each on ``batch_size`` items drawn uniformly
        with replacement from all labelled slices (volumes), as the official
        code (10 001 steps).
    batch_size : int, default=20
        Slices (volumes) per step (the official ``mtask_bs`` is 20).
    augmentation : {"official"}, callable or None, default=None
        Training augmentation of each batch, on the device, after the resize
        to the network size: ``"official"`` is
        :class:`~sklearn_cl3d.augment.SegmentationAugment` (rotation, zoom,
        flip or rotation by a multiple of 45 degrees, then an elastic
        deformation of a random tail of the batch; masks resampled with
        nearest-neighbour); a callable ``f(x, labels, generator=...)``
        returns the transformed ``(x, labels)``. None: no augmentation.
    validation_fraction : float, int or None, default=None
        Hold out this fraction (float in (0, 1)) or number (int) of the
        labelled volumes of ``fit``, drawn with ``random_state``, to choose
        the checkpoint: the validation Dice (mean foreground Dice of
        :meth:`score`) is computed after the first training step and every
        ``validation_interval`` steps after it and after the last one, and
        the weights with the best score are kept at the end of ``fit``
        (official: 2 validation volumes). ``X_val, y_val`` given to ``fit``
        are used instead. None: no checkpoint selection (the last weights).
    validation_interval : int, default=50
        Training steps between two validations (official: 50).
    device : str, default="auto"
        ``"auto"``: CUDA when available, else the CPU.
    precision : {"fp32", "auto", "bf16"}, default="fp32"
        Autocast precision: float32 as the official code; ``"auto"`` is bf16
        on a CUDA device supporting it and on the CPUs where bf16 was
        measured faster (opt-in: see ``YAwarePretrainer``).
    memory_format : {"auto", "contiguous", "channels_last"}, default="auto"
    compile : bool, default=False
        Run the training forwards through :func:`torch.compile`.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation of the new layers and the shuffling.
    verbose : int, default=1
        1 (skorch's default) shows a progress bar of each epoch's steps and
        a table per epoch, and a progress bar over the batches of
        ``transform``/``predict``; 0 is silent.
    train_split : callable or None, default=None
        skorch validation split (of slices/volumes); None trains on all.
    callbacks : list of (name, callback) or None, default=None
    **kwargs : dict
        Other skorch parameters (``module__*``, ``criterion__eps``,
        ``iterator_train__num_workers``, ...).

    Attributes
    ----------
    module_ : UNet
        The segmentation network.
    n_classes_ : int
        Number of classes.
    classes_ : ndarray of shape (n_classes,)
        The labels ``0 .. n_classes_ - 1``.
    n_pretrained_blocks_ : int
        Decoder blocks copied from ``pretrained`` (0: encoder only, or no
        pretrained network).
    geometry_ : dict
        ``dims``, ``channels``, ``slice_axis``, ``input_size`` (network
        spatial size) and ``normalize`` in use.
    input_shape_ : tuple of int
        (C, D, H, W) of the volumes seen in ``fit``.
    history_ : skorch.History
        With validation volumes, the ``"valid_dice"`` of each validated
        step is in its batch row.
    validation_scores_ : list of (int, float)
        With validation volumes: (training step, validation Dice) of every
        validation of the last ``fit``/``partial_fit`` call.
    best_iteration_ : int
        With validation volumes: the step whose weights were kept.
    best_validation_score_ : float
        Its validation Dice.
    device_ : str

    See Also
    --------
    GlobalLocalPretrainer : the pretraining.
    dice_scores : per-volume, per-class Dice.

    Notes
    -----
    The defaults differ from the official fine-tuning, whose recipe
    (``official_protocol("globallocal").apply(ContrastiveSegmenter(...))``,
    see :mod:`sklearn_cl3d.protocols`) sets 10 001 iterations
    (``n_iterations``), the Dice loss only (``ce_weight=0``, also the
    default), the official augmentation and the best checkpoint by
    validation Dice every 50 steps on 2 held-out volumes. By default:
    ``max_epochs`` epochs, no augmentation, the last weights. The official
    code also one-hot encodes the masks and warps them bilinearly in its
    elastic deformation (soft labels); here labels are warped with
    nearest-neighbour.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_cl3d import ContrastiveSegmenter
    >>> rng = np.random.default_rng(0)
    >>> X = rng.random((2, 32, 32, 4), dtype="float32")
    >>> masks = (X > 0.5).astype(int)
    >>> seg = ContrastiveSegmenter(channels=(4, 8, 8), slice_size=32,
    ...                            max_epochs=1, random_state=0, verbose=0)
    >>> seg.fit(X, masks).predict(X).shape
    (2, 32, 32, 4)
    >>> 0.0 <= seg.score(X, masks) <= 1.0
    True
    """

    _transient_attributes = (
        "_aug_generator",
        "_compiled_module",
        "_source_cache",
        "_validation_data",
        "_best_state",
    )

    _parameter_constraints = {
        "n_classes": [Interval(Integral, 2, None, closed="left"), None],
        "dims": [Interval(Integral, 2, 3, closed="both")],
        "channels": [list, tuple],
        "slice_axis": [Interval(Integral, -3, 2, closed="both")],
        "slice_size": [Interval(Integral, 1, None, closed="left"), None],
        "volume_depth": [Interval(Integral, 1, None, closed="left"), None],
        "normalize": [StrOptions({"percentile"}), None],
        "dice_weight": [Interval(Real, 0, None, closed="left")],
        "ce_weight": [Interval(Real, 0, None, closed="left")],
        "include_background": ["boolean"],
        "bn_momentum": [Interval(Real, 0, 1, closed="both"), None],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "max_epochs": [Interval(Integral, 0, None, closed="left")],
        "n_iterations": [Interval(Integral, 1, None, closed="left"), None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "augmentation": [StrOptions({"official"}), callable, None],
        "validation_fraction": [
            Interval(RealNotInt, 0, 1, closed="neither"),
            Interval(Integral, 1, None, closed="left"),
            None,
        ],
        "validation_interval": [Interval(Integral, 1, None, closed="left")],
        "device": [str, torch.device, None],
        "precision": [StrOptions({"auto", "fp32", "bf16"})],
        "memory_format": [StrOptions(set(MEMORY_FORMATS))],
        "compile": ["boolean"],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        pretrained=None,
        *,
        n_classes=None,
        dims=2,
        channels=(16, 32, 64, 128, 128, 128),
        slice_axis=-1,
        slice_size=192,
        volume_depth=None,
        normalize="percentile",
        dice_weight=1.0,
        ce_weight=0.0,
        include_background=True,
        bn_momentum=None,
        optimizer=torch.optim.Adam,
        lr=1e-3,
        weight_decay=0.0,
        max_epochs=100,
        n_iterations=None,
        batch_size=20,
        augmentation=None,
        validation_fraction=None,
        validation_interval=50,
        device="auto",
        precision="fp32",
        memory_format="auto",
        compile=False,
        random_state=None,
        verbose=1,
        train_split=None,
        callbacks=None,
        **kwargs,
    ):
        kwargs.setdefault("module", UNet)
        kwargs.setdefault("criterion", DiceCELoss)
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
        self.n_classes = n_classes
        self.dims = dims
        self.channels = channels
        self.slice_axis = slice_axis
        self.slice_size = slice_size
        self.volume_depth = volume_depth
        self.normalize = normalize
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.bn_momentum = bn_momentum
        self.include_background = include_background
        self.weight_decay = weight_decay
        self.n_iterations = n_iterations
        self.augmentation = augmentation
        self.validation_fraction = validation_fraction
        self.validation_interval = validation_interval
        self.precision = precision
        self.memory_format = memory_format
        self.compile = compile
        self.random_state = random_state

    # ---------------------------------------------------- sklearn plumbing

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.input_tags.allow_nan = False
        tags.target_tags.required = True
        return tags

    # ------------------------------------------------------- components

    def get_default_callbacks(self):
        return [
            *super().get_default_callbacks(),
            ("stop_on_nonfinite_loss", StopOnNonFiniteLoss()),
        ]

    def initialize(self):
        super().initialize()
        self.augment_ = segmentation_augment(self.augmentation)
        self.__dict__.pop("_compiled_module", None)
        self.__dict__.pop("_aug_generator", None)
        return self

    def initialize_module(self):
        if not hasattr(self, "geometry_"):
            raise AttributeError(
                f"{type(self).__name__} builds its network from the data: call "
                "fit(X, masks) instead of initialize()."
            )
        geo = self.geometry_
        kwargs = {
            "dims": geo["dims"],
            "in_channels": self.input_shape_[0],
            "channels": geo["channels"],
            "n_classes": self.n_classes_,
        }
        kwargs.update(self.get_params_for("module"))
        module = self.initialized_instance(self.module, kwargs)
        source = self._source()
        self.n_pretrained_blocks_ = 0
        if source is not None:
            src = source._bare_module().unet
            module.encoder.load_state_dict(src.encoder.state_dict())
            if "local" in getattr(source, "stages_", ()):
                n = source.n_decoder_blocks
                for block, trained in zip(
                    module.decoder_blocks[:n], src.decoder_blocks
                ):
                    block.load_state_dict(trained.state_dict())
                self.n_pretrained_blocks_ = n
        if self.bn_momentum is not None:
            for m in module.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.momentum = self.bn_momentum
        fmt = self._memory_format(geo["dims"] + 2)
        if fmt is not torch.contiguous_format:
            module = module.to(memory_format=fmt)
        self.module_ = module
        return self

    def initialize_criterion(self):
        kwargs = {
            "dice_weight": self.dice_weight,
            "ce_weight": self.ce_weight,
            "include_background": self.include_background,
        }
        kwargs.update(self.get_params_for("criterion"))
        self.criterion_ = self.initialized_instance(self.criterion, kwargs)
        return self

    def get_params_for_optimizer(self, prefix, named_parameters):
        args, kwargs = super().get_params_for_optimizer(prefix, named_parameters)
        if prefix == "optimizer":
            kwargs.setdefault("weight_decay", self.weight_decay)
        return args, kwargs

    # -------------------------------------------------------- the step

    def infer(self, x, **fit_params):
        x = self._prepare(x)
        with self._autocast():
            logits = self._net()(self._as_input(x), **fit_params)
        return logits.float()

    def get_loss(self, y_pred, y_true, X=None, training=False):
        y = to_tensor(y_true, device=y_pred.device)
        y = self._resize(y[:, None].float(), y_pred.shape[2:], "nearest")
        return self.criterion_(y_pred, y[:, 0].long())

    def evaluation_step(self, batch, training=False):
        self.check_is_fitted()
        Xi, _ = unpack_data(batch)
        with torch.set_grad_enabled(training):
            self._set_training(training)
            size = tuple(Xi.shape[2:])
            x = self._as_input(self._prepare(Xi))
            with self._autocast():
                logits = self.module_(x).float()
            return self._resize(logits, size, "linear").softmax(dim=1)

    # ------------------------------------------------------ public API

    def _fit(self, X, masks, fit_params, *, partial, X_val=None, y_val=None):
        self._check_params()
        reset = not (partial or self.warm_start) or not getattr(
            self, "initialized_", False
        )
        source = self._source() if reset else None
        X = self._volumes(X, reset=reset)
        if reset:
            masks = check_masks(masks, X, self.n_classes)
            if source is not None and source.input_shape_[0] != X.shape[1]:
                raise ValueError(
                    f"X has {X.shape[1]} channel(s) but the pretrained network "
                    f"was trained on {source.input_shape_[0]}."
                )
            self.geometry_ = self._geometry(source, X.shape[1:])
            n_classes = self.n_classes
            if n_classes is None:
                n_classes = max(2, int(masks.max()) + 1 if masks.size else 2)
            self.n_classes_ = int(n_classes)
            self.classes_ = np.arange(self.n_classes_)
            rng = check_random_state(self.random_state)
            self._base_seed_ = int(rng.randint(np.iinfo(np.int32).max))
        else:
            masks = check_masks(masks, X, self.n_classes_)
        X, masks, valid = self._split_validation(X, masks, X_val, y_val)
        X = self._scale(X, self.geometry_["normalize"])
        if valid is not None:
            valid = (self._scale(valid[0], self.geometry_["normalize"]), valid[1])
        items, targets = self._items(X, masks)
        offset = 0 if reset else len(self.history)
        with self._on_device() as device, self._seeded(offset):
            self.device_ = device
            if reset:
                self.__dict__["_source_cache"] = source
                try:
                    self.initialize()
                finally:
                    self.__dict__.pop("_source_cache", None)
            epochs = None if self.n_iterations is None else 1
            self.__dict__["_validation_data"] = valid
            try:
                NeuralNet.partial_fit(
                    self, Dataset(items, targets), None, epochs=epochs, **fit_params
                )
            finally:
                self.__dict__.pop("_validation_data", None)
        return self

    def fit(self, X, y=None, *, X_val=None, y_val=None, **fit_params):
        """Fine-tune (or train from scratch) on labelled volumes.

        Parameters
        ----------
        X : array-like of shape (n, D, H, W) or (n, C, D, H, W)
            Labelled volumes.
        y : array-like of int, shape (n, D, H, W)
            Label masks, same spatial shape as the volumes (0 = background).
        X_val, y_val : array-like, default=None
            Validation volumes and masks for the checkpoint selection (see
            ``validation_fraction``, which they replace).
        **fit_params : dict
            Passed to the network's forward call.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        return self._fit(X, y, fit_params, partial=False, X_val=X_val, y_val=y_val)

    def partial_fit(
        self, X, y=None, classes=None, *, X_val=None, y_val=None, **fit_params
    ):
        """Train ``max_epochs`` more epochs (``n_iterations`` more steps).

        Initialises the network if needed.

        Parameters
        ----------
        X : array-like of shape (n, D, H, W) or (n, C, D, H, W)
        y : array-like of int, shape (n, D, H, W)
        classes : None
            Ignored.
        X_val, y_val : array-like, default=None
            As in :meth:`fit`.
        **fit_params : dict

        Returns
        -------
        self : object
        """
        return self._fit(X, y, fit_params, partial=True, X_val=X_val, y_val=y_val)

    def predict_proba(self, X):
        """Class probabilities of every voxel.

        Parameters
        ----------
        X : array-like of shape (n, D, H, W) or (n, C, D, H, W)

        Returns
        -------
        ndarray of float32, shape (n, n_classes, D, H, W)
        """
        self.check_is_fitted()
        X = self._volumes(X, reset=False)
        X = self._scale(X, self.geometry_["normalize"])
        with self._on_device():
            return self._proba_scaled(X)

    def _proba_scaled(self, X):
        """``predict_proba`` of validated, scaled volumes (device resolved)."""
        items, _ = self._items(X)
        probs = np.concatenate(
            [
                p.numpy()
                for p in self.forward_iter(
                    Dataset(items, None), training=False, device="cpu"
                )
            ]
        ).astype(np.float32, copy=False)
        axis = self.geometry_["slice_axis"]
        n = X.shape[0]
        if self.geometry_["dims"] == 2:
            probs = probs.reshape(n, -1, *probs.shape[1:])  # (n, D', K, h, w)
            probs = np.moveaxis(probs, 2, 1)  # (n, K, D', h, w)
        return np.ascontiguousarray(np.moveaxis(probs, 2, 2 + axis))

    def predict(self, X):
        """Label volumes.

        Parameters
        ----------
        X : array-like of shape (n, D, H, W) or (n, C, D, H, W)

        Returns
        -------
        ndarray of int64, shape (n, D, H, W)
        """
        return self.predict_proba(X).argmax(axis=1).astype(np.int64)

    def score(self, X, y, sample_weight=None):
        """Mean Dice of the foreground classes.

        The Dice of every foreground class (labels 1..) in every volume (see
        :func:`dice_scores`; a class absent from both prediction and truth
        scores 1), averaged over classes and volumes (weighted by
        ``sample_weight`` per volume).

        Parameters
        ----------
        X : array-like of shape (n, D, H, W) or (n, C, D, H, W)
        y : array-like of int, shape (n, D, H, W)
            True masks.
        sample_weight : array-like of shape (n,), default=None

        Returns
        -------
        float
        """
        self.check_is_fitted()
        Xv = self._volumes(X, reset=False)
        masks = check_masks(y, Xv, self.n_classes_)
        scores = dice_scores(masks, self.predict(X), self.n_classes_)
        per_volume = scores.mean(axis=1)
        return float(np.average(per_volume, weights=sample_weight))
