"""y-Aware (Dufumier et al., MICCAI 2021) and SimCLR pretrainers."""

from __future__ import annotations

from numbers import Real

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions

from ..data import check_metadata
from ..losses import KERNELS, NORMALIZATIONS, NTXentLoss, YAwareLoss, check_bandwidth
from ._base import BaseContrastivePretrainer

__all__ = ["SimCLRPretrainer", "YAwarePretrainer"]

_COMMON_PARAMS_DOC = """
    backbone : {"densenet121", "densenet", "small3d", "mlp"}, class or \
nn.Module, default="densenet121"
        The encoder. ``"densenet121"`` is the paper's 3-D DenseNet-121
        (1024-d features); ``"small3d"`` a small CNN for CPUs; ``"mlp"`` an MLP
        for 2-D tabular X (e.g. ROI features). A class is built with the
        ``backbone__*`` parameters (``in_channels``/``in_features`` are inferred
        from X); a module instance is copied, never trained in place. Set
        nested parameters as ``backbone__growth_rate=8``.
    hidden_dim : int, default=512
        Width of the projection head's hidden layer.
    projection_dim : int, default=128
        Output size of the projection head (the loss's embedding).
    feature_layer : {"backbone", "hidden", "projection"}, default="backbone"
        What ``transform`` returns: the pooled backbone features (what the
        paper evaluates), the head's hidden layer (before its ReLU) or the
        projection.
    augmentation : {"cutout", "all", "crop", "none"}, callable or None, \
default="cutout"
        Views. ``"cutout"`` is what the released y-Aware checkpoint used;
        ``"all"`` the official six-transform set (flip, blur, noise, cutout,
        crop with their official probabilities). A callable gets a batch
        tensor (B, C, ...) on the device and a ``generator`` keyword.
    normalize : {"zscore"} or None, default="zscore"
        Per-sample z-scoring before augmentation, in ``fit`` and
        ``transform`` (the official pipeline's first step).
    preprocessing : list of transformers, Pipeline or None, default=None
        Preprocessing run inside the lazy loader on every volume (e.g.
        ``[ReorientToRAS(), Resample((2, 2, 2)), CropOrPad((96, 96, 96))]``
        from :mod:`sklearn_cl3d.data`). X may then also be an array.
    cache : bool, str or path-like, default=False
        ``True``: keep loaded (and preprocessed) volumes in memory after
        their first use; for cohorts that fit in RAM. A folder: keep each
        volume read from a file, decompressed and preprocessed, as a ``.npy``
        file there and read it from there afterwards (in DataLoader workers,
        later fits and later runs too); files are keyed by the source's
        content and the preprocessing, written atomically and checked when
        read (see :class:`~sklearn_cl3d.data.VolumeDataset`). Without a
        cache, files are read lazily per batch, so memory stays bounded. On
        CUDA, file inputs are loaded by DataLoader worker processes (half
        the cores, at most 8) into pinned memory; set
        ``iterator_train__num_workers`` to choose.
    temperature : float, default=0.1
        Softmax temperature of the loss, > 0.
    optimizer : torch optimizer class, default=torch.optim.Adam
        Optimizer; ``optimizer__*`` parameters are passed to it.
    lr : float, default=1e-4
        Learning rate (the paper's).
    weight_decay : float, default=5e-5
        Weight decay given to the optimizer (the paper's, coupled L2 in Adam).
    max_epochs : int, default=100
        Number of epochs of ``fit`` (and of each ``partial_fit`` call).
    batch_size : int, default=64
        Samples per step (each gives two views, so 2 x batch_size images go
        through the network). The last incomplete batch is dropped when X has
        more samples than one batch, so every step sees the same number of
        negatives; set ``iterator_train__drop_last`` to override.
    device : str or None, default="auto"
        ``"auto"`` uses CUDA when available, else the CPU; or any torch device
        string; None leaves placement to an Accelerate accelerator (see
        :func:`sklearn_cl3d.distributed.accelerated`).
    precision : {"fp32", "auto", "bf16", "fp16"}, default="fp32"
        Autocast precision of the network's forward passes (weights stay
        float32; the loss always runs in float32). The default is the
        official code's float32. ``"auto"`` is ``"bf16"`` on a CUDA device
        that supports it, the fast choice on a GPU, and on a CPU where
        bfloat16 was measured faster (AMD CPUs with AVX512-BF16; see
        :func:`~sklearn_cl3d.estimators.cpu_bf16_is_faster`), ``"fp32"``
        elsewhere; its effect on the downstream score has been measured only
        under CPU autocast (:ref:`scaling`), so it is opt-in. ``"fp16"`` adds a
        gradient scaler.
    memory_format : {"auto", "contiguous", "channels_last"}, default="auto"
        Memory layout of the conv weights and inputs: ``"channels_last"``
        (``channels_last_3d`` for volumes) is what cuDNN prefers in reduced
        precision; ``"auto"`` picks it on CUDA and contiguous on CPUs.
    compile : bool, default=False
        Run the training forward passes through :func:`torch.compile` (the
        first steps are slow while it compiles; pays off for long fits).
    gather_distributed : bool, default=True
        In a multi-process run (``torchrun``, ``accelerate launch``; see
        :func:`sklearn_cl3d.distributed.accelerated`), gather the projections
        (with gradients) and the metadata of all processes before the loss, so
        negatives and kernel weights span the global batch and the update
        equals a single process's on that batch. No effect in one process.
    sync_batchnorm : bool, default=False
        In a multi-process run, convert the network's BatchNorm layers to
        :class:`torch.nn.SyncBatchNorm` (statistics over the global batch of
        each view; torch supports it on GPUs only). No effect in one process.
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, shuffling and augmentations, so a given
        integer gives identical results on the same machine and device.
    verbose : int, default=1
        1 (skorch's default) shows a progress bar of each epoch's steps and
        a table per epoch, and a progress bar over the batches of
        ``transform``/``predict``; 0 is silent.
    train_split : callable or None, default=None
        skorch's validation split; ``None`` trains on all of X.
    callbacks : list of (name, skorch callback) or None, default=None
        Extra skorch callbacks. Without a validation split, monitor
        ``"train_loss"`` (e.g. ``EarlyStopping(monitor="train_loss")``).
    **kwargs : dict
        Other skorch ``NeuralNet`` parameters (``iterator_train__num_workers``,
        ``criterion__*``, ...)."""

_COMMON_ATTRS_DOC = """
    module_ : ContrastiveModel
        The trained network (``module_.backbone``, ``module_.head``).
    criterion_ : torch.nn.Module
        The loss module.
    history_ : skorch.History
        Per-epoch and per-batch training losses.
    input_shape_ : tuple of int
        Per-sample shape of X seen in ``fit``: (C, D, H, W) or (F,).
    n_features_in_ : int
        Number of tabular features (only for 2-D X).
    device_ : str
        The device training ran on."""


class YAwarePretrainer(BaseContrastivePretrainer):
    __doc__ = f"""y-Aware contrastive pretraining (Dufumier et al., MICCAI 2021).

    Pretrains an encoder with the y-Aware InfoNCE: two augmented views of every
    volume, positives weighted by a kernel on continuous metadata (age), so
    subjects of similar age are pulled together. With the defaults the loss
    equals the official code's (column-normalised kernel weights, 2N - 1
    candidates, official scale); see :func:`~sklearn_cl3d.losses.yaware_infonce`.

    In a :class:`~sklearn.pipeline.Pipeline`, the downstream target (e.g. a
    diagnosis) is passed to every step as ``y``. Route the metadata
    explicitly as ``proxy`` instead: enable metadata routing, call
    ``set_fit_request(proxy=True)`` and pass ``params={{"proxy": age}}``
    (``proxy`` wins over ``y`` when both are given).

    Parameters
    ----------
    sigma : float, array-like of shape (k,) or (k, k), default=5.0
        Kernel width in metadata units (years for age; the paper uses 5), > 0.
        With k metadata columns: one width per column (each in its column's
        units), or a symmetric positive-definite ``(k, k)`` bandwidth matrix
        ``H`` in squared units, the Gaussian kernel being
        ``exp(-d^T H^{{-1}} d / 2)`` (``H = diag(widths**2)`` is the per-column
        case). Checked against the metadata in ``fit``.
    kernel : {{"rbf", "gaussian", "laplacian", "delta", "discrete"}} or \
callable, default="rbf"
        Kernel on the metadata.
    normalization : {{"official", "row"}}, default="official"
        Kernel weight normalisation: per column as the official code, or per
        anchor as the paper writes it.
{_COMMON_PARAMS_DOC}

    Attributes
    ----------
{_COMMON_ATTRS_DOC}

    See Also
    --------
    SimCLRPretrainer : the same network and views without metadata.
    sklearn_cl3d.losses.yaware_infonce : the loss.

    References
    ----------
    .. [1] B. Dufumier et al., "Contrastive Learning with Continuous Proxy
       Meta-Data for 3D MRI Classification", MICCAI 2021.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_cl3d import YAwarePretrainer
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(16, 1, 12, 12, 12)).astype("float32")
    >>> age = rng.uniform(20, 80, size=16)
    >>> ssl = YAwarePretrainer(backbone="small3d", max_epochs=1, batch_size=8,
    ...                        random_state=0, verbose=0)
    >>> ssl.fit(X, age).transform(X).shape
    (16, 32)
    """

    _metadata_required = True

    _parameter_constraints = {
        **BaseContrastivePretrainer._parameter_constraints,
        "sigma": [Interval(Real, 0, None, closed="neither"), "array-like"],
        "kernel": [StrOptions(set(KERNELS)), callable],
        "normalization": [StrOptions(set(NORMALIZATIONS))],
    }

    def __init__(self, *, sigma=5.0, kernel="rbf", normalization="official", **kwargs):
        # the shared parameters (backbone, lr, ...) are the base class's
        super().__init__(**kwargs)
        self.sigma = sigma
        self.kernel = kernel
        self.normalization = normalization

    @classmethod
    def _default_criterion(cls):
        return YAwareLoss

    def _criterion_params(self):
        return {
            "sigma": self.sigma,
            "temperature": self.temperature,
            "kernel": self.kernel,
            "normalization": self.normalization,
        }

    def _metadata(self, n_samples, y, fit_params):
        proxy = fit_params.pop("proxy", None)
        meta = proxy if proxy is not None else y
        if meta is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y "
                "is None: give the continuous metadata (e.g. age) as y, or as "
                "proxy=... (routed with set_fit_request(proxy=True) in a "
                "Pipeline)."
            )
        meta = check_metadata(
            meta, n_samples, name="proxy" if proxy is not None else "y"
        )
        # the loss refuses a bad width at its first batch: say it before
        # training, naming the metadata's columns
        n_columns = 1 if meta.ndim == 1 else meta.shape[1]
        uses_width = isinstance(self.kernel, str) and self.kernel in (
            "rbf",
            "gaussian",
            "laplacian",
        )
        sigma = check_bandwidth(self.sigma, n_columns=n_columns if uses_width else None)
        if self.kernel == "laplacian" and np.ndim(sigma) == 2:
            raise ValueError(
                "A (k, k) bandwidth matrix sigma is defined for the Gaussian "
                "kernel ('rbf') only; give kernel='laplacian' one width per "
                "metadata column."
            )
        return meta

    def fit(self, X, y=None, proxy=None, **fit_params):
        """Pretrain on X with metadata ``proxy`` (or ``y``).

        Parameters
        ----------
        X : array-like of shape (n, C, D, H, W), (n, D, H, W) or (n, F), or list
            Volumes, tabular features for the MLP backbone, or a list of
            paths (``.nii``, ``.nii.gz``, ``.nrrd``, ``.npy``) or nibabel
            images, loaded lazily.
        y : array-like of shape (n,) or (n, k), default=None
            Continuous metadata (e.g. age), used when ``proxy`` is None.
        proxy : array-like of shape (n,) or (n, k), default=None
            Continuous metadata; wins over ``y``. Request it with
            ``set_fit_request(proxy=True)`` for routing in a Pipeline.
        **fit_params : dict
            Passed to the network's forward call.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        if proxy is not None:
            fit_params["proxy"] = proxy
        return self._fit(X, y, fit_params, partial=False)

    def partial_fit(self, X, y=None, classes=None, proxy=None, **fit_params):
        """Continue pretraining for ``max_epochs`` epochs.

        Parameters
        ----------
        X : array-like of shape (n, C, D, H, W), (n, D, H, W) or (n, F), or list
            Same kind of input as in earlier calls.
        y : array-like of shape (n,) or (n, k), default=None
            Continuous metadata, used when ``proxy`` is None.
        classes : None
            Ignored.
        proxy : array-like of shape (n,) or (n, k), default=None
            Continuous metadata; wins over ``y``.
        **fit_params : dict
            Passed to the network's forward call.

        Returns
        -------
        self : object
        """
        if proxy is not None:
            fit_params["proxy"] = proxy
        return self._fit(X, y, fit_params, partial=True)


class SimCLRPretrainer(BaseContrastivePretrainer):
    __doc__ = f"""SimCLR contrastive pretraining on 3D volumes (the y-Aware baseline).

    The same network, views and training loop as :class:`YAwarePretrainer`,
    with the NT-Xent loss (only the other view of the same volume is a
    positive). The loss is on the official y-Aware repository's scale
    (``loss_view1 + loss_view2``); see :func:`~sklearn_cl3d.losses.nt_xent`.
    ``y`` is ignored, so the estimator fits as-is inside a Pipeline.

    Parameters
    ----------
{_COMMON_PARAMS_DOC}

    Attributes
    ----------
{_COMMON_ATTRS_DOC}

    See Also
    --------
    YAwarePretrainer : positives weighted by metadata.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_cl3d import SimCLRPretrainer
    >>> X = np.random.default_rng(0).normal(size=(16, 12, 12, 12))
    >>> ssl = SimCLRPretrainer(backbone="small3d", max_epochs=1, batch_size=8,
    ...                        random_state=0, verbose=0)
    >>> ssl.fit(X).transform(X).shape
    (16, 32)
    """

    @classmethod
    def _default_criterion(cls):
        return NTXentLoss
