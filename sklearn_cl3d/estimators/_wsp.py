"""WSP: weakly-supervised positional contrastive pretraining on 2-D slices
(Sarfati et al., MICCAI 2023)."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions
from skorch.callbacks import LRScheduler
from skorch.dataset import Dataset
from skorch.utils import to_tensor

from ..augment._scaling import NORMALIZE_OPTIONS, make_normalizer
from ..data import VolumeDataset, check_volumes
from ..data._loading import loader_defaults
from ..data._slices import (
    BalancedVolumeBatchSampler,
    SliceDataset,
)
from ..data._validation import check_row_positions, encode_weak_labels
from ..losses import NORMALIZATIONS, WSP_KERNELS, WSPLoss
from ..nn.functional import resize_in_plane
from ._base import BaseContrastivePretrainer
from ._wsp_geometry import _SliceGeometryMixin
from ._yaware import _COMMON_ATTRS_DOC

__all__ = ["WSPPretrainer"]

AGGREGATES = ("mean", "max", "none")
BALANCE_ON = ("weak_labels", "scores")


class WSPPretrainer(_SliceGeometryMixin, BaseContrastivePretrainer):
    __doc__ = f"""Weakly-supervised positional contrastive pretraining (WSP).

    Sarfati et al., MICCAI 2023. A 2-D encoder is pretrained on slices of 3-D
    volumes: two augmented views of each slice, and every other slice is a
    positive weighted by ``delta(weak label) * kernel(slice position)``
    (:func:`~sklearn_cl3d.losses.wsp_infonce`), so slices at the same relative
    height of volumes with the same weak label (e.g. a radiological score)
    are pulled together. With the defaults the loss equals the official
    code's.

    **Slices.** X holds volumes. Slices are taken along ``slice_axis``; only
    the central ``slice_fraction`` of them is kept (official arithmetic, see
    :func:`~sklearn_cl3d.data.central_slice_range`) and the k-th kept slice has
    position ``k / n_kept`` (in [0, 1), relative to the kept block, array
    order). Slices are resized on the device to ``slice_size`` squared
    (bilinear, antialiased when shrinking), then z-scored (``normalize``;
    ``"uint8"`` is the official ``uint8 / 250`` input, applied before the
    resizing).

    **Batches.** As the official sampler: a batch holds one uniformly drawn
    slice from each of ``batch_size`` distinct volumes, drawn with
    probability proportional to 1 / (count of the volume's weak label)
    (``balanced=True``), or of its raw score (``balance_on="scores"`` and
    ``scores`` given to ``fit``, as the official sampler, which balances on
    the 5-level score the binary weak label is derived from). An epoch is
    ``steps_per_epoch`` such batches.

    **Output.** ``transform`` encodes every kept slice of each volume and
    aggregates the slice features per volume (``aggregate="mean"``: one row
    per volume); ``aggregate="none"`` returns the slice-level features
    ``(n_volumes, n_kept, n_features)``, the slice k of volume v being at
    position ``k / n_kept``.

    **Ablations** of the paper are parameters: ``use_labels=False`` (position
    only), ``use_positions=False`` (weak label only, SupCon), both False
    (SimCLR).

    **Tabular configuration.** A 2-D X ``(n, F)`` (e.g. precomputed slice
    features, ``backbone="mlp"``) is taken as n slices; their positions can be
    given to ``fit`` as ``positions`` (zeros otherwise).

    In a :class:`~sklearn.pipeline.Pipeline`, route the weak labels as
    ``weak_labels`` (``set_fit_request(weak_labels=True)``), since ``y`` is
    the downstream target there; ``weak_labels`` wins over ``y``.

    Parameters
    ----------
    sigma : float, default=0.85
        Width of the position kernel (positions are in [0, 1)); the official
        configuration's 0.85. ``float("inf")`` removes the position factor.
    temperature : float, default=0.1
        Softmax temperature, > 0.
    kernel : {{"rbf", "gaussian", "laplacian", "discrete", "distance"}} or \
callable, default="rbf"
        Kernel on slice positions (``"distance"``: ``exp(-||d - d'||)`` of
        the official code, which ignores ``sigma``).
    normalization : {{"official", "row"}}, default="official"
        Weight normalisation (column-wise as the official code, or per
        anchor).
    use_labels : bool, default=True
        Use the weak label (Dirac kernel). False: position only; ``y`` is
        then not needed.
    use_positions : bool, default=True
        Use the position kernel. False: weak label only.
    slice_axis : int, default=-1
        Spatial axis of (D, H, W) the slices are taken along; -1 (the last
        array axis) is axial for RAS-oriented volumes.
    slice_fraction : float, default=0.7
        Central fraction of slices kept, in (0, 1].
    slice_size : int or None, default=512
        Slices are resized to ``slice_size`` x ``slice_size`` (the paper's
        512); None keeps their size. Must be at least the backbone's minimum
        (156 for ``"tinynet"``).
    aggregate : {{"mean", "max", "none"}}, default="mean"
        How ``transform`` combines the slice features of a volume.
    balanced : bool, default=True
        Class-balanced volume draws (probability 1 / count of the label).
    balance_on : {{"weak_labels", "scores"}}, default="weak_labels"
        What ``balanced`` balances: the weak labels, or the ``scores``
        given to ``fit`` (the official sampler balances on the raw
        radiological score, e.g. 5 levels, while the weak label is binary).
        With ``"scores"`` and no ``scores`` in ``fit``, the weak labels are
        used.
    steps_per_epoch : int or None, default=None
        Batches per epoch; None means ``n_volumes // batch_size`` (at least
        1), so each volume is drawn about once per epoch. The official
        non-CV run uses 10000 // batch_size.
    lr_schedule : {{"cosine"}} or None, default="cosine"
        Cosine annealing of the learning rate over ``max_epochs`` epochs
        (``eta_min=0``, stepped per epoch), as the official code.
    backbone : {{"tinynet", "resnet18", "mlp"}}, class or nn.Module, \
default="tinynet"
        The 2-D encoder: the paper's TinyNet (512-d, needs slices of at least
        156 px) or a 1-channel ResNet-18; ``"mlp"`` for tabular X.
    hidden_dim : int, default=256
        Hidden width of the projection head (official config: 512 -> 256 ->
        128).
    projection_dim : int, default=128
        Output size of the projection head.
    feature_layer : {{"backbone", "hidden", "projection"}}, default="backbone"
        Slice features ``transform`` uses (the pooled backbone output is the
        official "representation" mode).
    augmentation : {{"wsp", "none", ...}}, callable or None, default="wsp"
        Views: ``"wsp"`` is the official pipeline (horizontal and vertical
        flips, resized crop of area 0.7, translation up to 20 %, rotation up
        to 30 degrees, each with probability 0.5).
    normalize : {{"zscore", "uint8"}} or None, default="zscore"
        Input intensities. ``"zscore"``: per-slice z-scoring after resizing.
        ``"uint8"``: the official input, intensities truncated to the
        integers 0-255 (clipped) and divided by 250, before resizing; the
        volumes must already be windowed to 0-255, as the official data.
        This also sets what the views fill uncovered pixels with: the
        ``"wsp"`` views fill with 0, the slice mean after a z-score but
        black (0) in ``uint8 / 250``, as the official kornia pipeline.
        None: the intensities as given.
    lr : float, default=1e-5
        Learning rate (official).
    weight_decay : float, default=1e-5
        Adam weight decay (official).
    max_epochs : int, default=40
        Epochs (official).
    batch_size : int, default=64
        Slices (= distinct volumes) per batch, capped at the number of
        volumes; each gives two views.
    **kwargs : dict
        The other parameters of :class:`YAwarePretrainer` (``preprocessing``,
        ``cache``, ``optimizer``, ``device``, ``random_state``, ``verbose``,
        ``callbacks``, ``iterator_train__num_workers``, ``backbone__*``, ...).

    Attributes
    ----------
{_COMMON_ATTRS_DOC}
    weak_classes_ : ndarray
        The distinct weak labels seen in ``fit`` (None without labels).
    n_kept_ : int
        Kept slices per volume in ``fit`` (1 for tabular X).
    balance_labels_ : {{"weak_labels", "scores"}} or None
        What the sampler balanced on in the last ``fit`` (None: uniform
        volume draws).
    slice_positions_ : ndarray of shape (n_kept,)
        Positions ``k / n_kept`` of the kept slices in ``fit``.

    See Also
    --------
    sklearn_cl3d.losses.wsp_infonce : the loss.
    sklearn_cl3d.data.SliceDataset : the slices, for slice-level work.

    References
    ----------
    .. [1] E. Sarfati et al., "Weakly-supervised positional contrastive
       learning: application to cirrhosis classification", MICCAI 2023.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_cl3d import WSPPretrainer
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(8, 20, 20, 10)).astype("float32")
    >>> weak = [0, 1] * 4
    >>> wsp = WSPPretrainer(backbone="resnet18", slice_size=32, max_epochs=1,
    ...                     batch_size=4, random_state=0, verbose=0)
    >>> wsp.fit(X, weak).transform(X).shape
    (8, 512)
    """

    _metadata_required = True

    # many mid-sized 2-D blocks: reusing freed heap memory fragments the heap
    # and raised the peak RSS above the official code's (issue 17, point 4)
    _cpu_heap_reuse = False

    _parameter_constraints = {
        **BaseContrastivePretrainer._parameter_constraints,
        "sigma": [Interval(Real, 0, None, closed="right")],
        "kernel": [StrOptions(set(WSP_KERNELS)), callable],
        "normalization": [StrOptions(set(NORMALIZATIONS))],
        "use_labels": ["boolean"],
        "use_positions": ["boolean"],
        "slice_axis": [Interval(Integral, -3, 2, closed="both")],
        "slice_fraction": [Interval(Real, 0, 1, closed="right")],
        "slice_size": [Interval(Integral, 1, None, closed="left"), None],
        "aggregate": [StrOptions(set(AGGREGATES))],
        "balanced": ["boolean"],
        "balance_on": [StrOptions(set(BALANCE_ON))],
        "normalize": [StrOptions(set(NORMALIZE_OPTIONS)), None],
        "steps_per_epoch": [Interval(Integral, 1, None, closed="left"), None],
        "lr_schedule": [StrOptions({"cosine"}), None],
    }

    def __init__(
        self,
        *,
        sigma=0.85,
        kernel="rbf",
        normalization="official",
        use_labels=True,
        use_positions=True,
        slice_axis=-1,
        slice_fraction=0.7,
        slice_size=512,
        aggregate="mean",
        balanced=True,
        balance_on="weak_labels",
        steps_per_epoch=None,
        lr_schedule="cosine",
        backbone="tinynet",
        hidden_dim=256,
        augmentation="wsp",
        lr=1e-5,
        weight_decay=1e-5,
        max_epochs=40,
        **kwargs,
    ):
        super().__init__(
            backbone=backbone,
            hidden_dim=hidden_dim,
            augmentation=augmentation,
            lr=lr,
            weight_decay=weight_decay,
            max_epochs=max_epochs,
            **kwargs,
        )
        self.sigma = sigma
        self.kernel = kernel
        self.normalization = normalization
        self.use_labels = use_labels
        self.use_positions = use_positions
        self.slice_axis = slice_axis
        self.slice_fraction = slice_fraction
        self.slice_size = slice_size
        self.aggregate = aggregate
        self.balanced = balanced
        self.balance_on = balance_on
        self.steps_per_epoch = steps_per_epoch
        self.lr_schedule = lr_schedule

    # ------------------------------------------------------------ hooks

    @classmethod
    def _default_criterion(cls):
        return WSPLoss

    def _criterion_params(self):
        return {
            "sigma": self.sigma,
            "temperature": self.temperature,
            "kernel": self.kernel,
            "normalization": self.normalization,
        }

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = bool(self.use_labels)
        return tags

    def initialize(self):
        super().initialize()
        self.normalizer_ = make_normalizer(self.normalize)
        return self

    def get_default_callbacks(self):
        callbacks = super().get_default_callbacks()
        if self.lr_schedule == "cosine":
            schedule = LRScheduler(
                policy="CosineAnnealingLR", T_max=max(1, self.max_epochs), eta_min=0
            )
            callbacks.append(("lr_scheduler", schedule))
        return callbacks

    # ------------------------------------------------------------ data

    def _metadata(self, n_samples, y, fit_params):
        labels = fit_params.pop("weak_labels", None)
        name = "weak_labels"
        if labels is None:
            labels, name = y, "y"
        self.__dict__["_fit_positions"] = fit_params.pop("positions", None)
        scores = fit_params.pop("scores", None)
        if scores is not None:
            _, scores = encode_weak_labels(scores, n_samples, "scores")
        self.__dict__["_fit_scores"] = scores
        if not self.use_labels:
            self.weak_classes_ = None
            return None
        if labels is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y "
                "is None: give the weak label of each volume as y or as "
                "weak_labels=... (routed with set_fit_request(weak_labels=True) "
                "in a Pipeline), or set use_labels=False."
            )
        self.weak_classes_, codes = encode_weak_labels(labels, n_samples, name)
        return codes

    def get_dataset(self, X, y=None):
        if isinstance(X, SliceDataset | Dataset):
            return X
        if isinstance(X, VolumeDataset) or getattr(X, "ndim", 0) == 5:
            labels = y
            if labels is None and isinstance(X, VolumeDataset):
                labels = X.y
            if self.__dict__.get("_fit_positions") is not None:
                raise ValueError(
                    "positions are computed from the slices of volumes; pass "
                    "positions only with 2-D (tabular) X."
                )
            ds = SliceDataset(
                X, labels=labels, axis=self.slice_axis, fraction=self.slice_fraction
            )
            self.n_kept_ = ds.n_kept
            self.slice_positions_ = ds.positions
            return ds
        # tabular rows are slices: target = [label, *position]
        if self.__dict__.get("_fit_scores") is not None:
            raise ValueError(
                "scores balance the volume draws of the slice sampler; pass "
                "scores only with volumes, not with 2-D (tabular) X."
            )
        n = len(X)
        labels = np.zeros(n, np.float32) if y is None else np.asarray(y, np.float32)
        positions = self.__dict__.get("_fit_positions")
        positions = (
            np.zeros((n, 1), np.float32)
            if positions is None
            else check_row_positions(positions, n)
        )
        self.n_kept_ = 1
        self.slice_positions_ = np.zeros(1, np.float32)
        target = np.concatenate([labels[:, None], positions], axis=1)
        return Dataset(X, target)

    def get_iterator(self, dataset, training=False):
        if not (training and isinstance(dataset, SliceDataset)):
            return super().get_iterator(dataset, training=training)
        kwargs = self.get_params_for("iterator_train")
        for key in ("batch_size", "shuffle", "drop_last", "sampler"):
            kwargs.pop(key, None)
        batch_size = min(self.batch_size, dataset.n_volumes)
        steps = self.steps_per_epoch or max(1, dataset.n_volumes // batch_size)
        labels, self.balance_labels_ = dataset.labels, "weak_labels"
        scores = self.__dict__.get("_fit_scores")
        if self.balance_on == "scores" and scores is not None:
            if len(scores) != dataset.n_volumes:
                raise ValueError(
                    f"scores has {len(scores)} entries but there are "
                    f"{dataset.n_volumes} volumes."
                )
            labels, self.balance_labels_ = scores, "scores"
        if labels is None or not self.balanced:
            self.balance_labels_ = None
        sampler = BalancedVolumeBatchSampler(
            dataset.n_volumes,
            dataset.n_kept,
            batch_size=batch_size,
            n_batches=steps,
            labels=labels,
            balanced=self.balanced,
        )
        loader_defaults(kwargs, dataset, self.device)
        return self.iterator_train(dataset, batch_sampler=sampler, **kwargs)

    def _prepare(self, x):
        x = self._to_device(x)
        # the official uint8 cast comes before anything else; the resize is
        # linear, so dividing by 250 before or after it is the same
        early = self.normalize == "uint8" and self.normalizer_ is not None
        if early:
            x = self.normalizer_(x)
        if x.ndim == 2:
            x = x[:, None, :]
        elif (
            self.slice_size is not None
            and tuple(x.shape[-2:]) != (self.slice_size,) * 2
        ):
            x = resize_in_plane(x.float(), (self.slice_size, self.slice_size))
        if self.normalizer_ is not None and not early:
            x = self.normalizer_(x)
        return x

    def get_loss(self, y_pred, y_true, X=None, training=False):
        z1, z2 = y_pred
        y_true = to_tensor(y_true, device=z1.device)
        z1, z2, y_true = self._gather_batch(z1, z2, y_true)
        labels = y_true[:, 0] if self.use_labels else None
        positions = None
        if self.use_positions:
            positions = y_true[:, 1:]
            if positions.shape[1] == 1:
                positions = positions[:, 0]
        return self.criterion_(z1, z2, labels, positions)

    # ------------------------------------------------------ public API

    def fit(
        self, X, y=None, weak_labels=None, positions=None, scores=None, **fit_params
    ):
        """Pretrain on the slices of volumes X with weak labels.

        Parameters
        ----------
        X : array-like of shape (n, C, D, H, W) or (n, D, H, W), list, or (n, F)
            Volumes, a list of paths (``.nii``, ``.nii.gz``, ``.nrrd``,
            ``.npy``) or nibabel images (loaded lazily), or tabular rows.
        y : array-like of shape (n,), default=None
            Discrete weak label per volume, used when ``weak_labels`` is None.
        weak_labels : array-like of shape (n,), default=None
            Discrete weak label per volume; wins over ``y``.
        positions : array-like of shape (n,) or (n, k), default=None
            Positions of tabular rows (2-D X only).
        scores : array-like of shape (n,), default=None
            Discrete raw score per volume (e.g. the 5-level radiological
            score the weak label is binarised from); the sampler balances
            on it with ``balance_on="scores"``.
        **fit_params : dict
            Passed to the network's forward call.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        if weak_labels is not None:
            fit_params["weak_labels"] = weak_labels
        if positions is not None:
            fit_params["positions"] = positions
        if scores is not None:
            fit_params["scores"] = scores
        try:
            return self._fit(X, y, fit_params, partial=False)
        finally:
            self.__dict__.pop("_fit_positions", None)
            self.__dict__.pop("_fit_scores", None)

    def partial_fit(
        self,
        X,
        y=None,
        classes=None,
        weak_labels=None,
        positions=None,
        scores=None,
        **fit_params,
    ):
        """Continue pretraining for ``max_epochs`` epochs.

        Parameters
        ----------
        X : array-like or list
            Same kind of input as in earlier calls.
        y : array-like of shape (n,), default=None
            Discrete weak labels, used when ``weak_labels`` is None.
        classes : None
            Ignored.
        weak_labels : array-like of shape (n,), default=None
            Discrete weak labels; win over ``y``.
        positions : array-like of shape (n,) or (n, k), default=None
            Positions of tabular rows (2-D X only).
        scores : array-like of shape (n,), default=None
            Discrete raw score per volume (e.g. the 5-level radiological
            score the weak label is binarised from); the sampler balances
            on it with ``balance_on="scores"``.
        **fit_params : dict
            Passed to the network's forward call.

        Returns
        -------
        self : object
        """
        if weak_labels is not None:
            fit_params["weak_labels"] = weak_labels
        if positions is not None:
            fit_params["positions"] = positions
        if scores is not None:
            fit_params["scores"] = scores
        try:
            return self._fit(X, y, fit_params, partial=True)
        finally:
            self.__dict__.pop("_fit_positions", None)
            self.__dict__.pop("_fit_scores", None)

    def transform(self, X):
        """Encode the kept slices of each volume and aggregate them.

        Parameters
        ----------
        X : array-like of shape (n, C, D, H, W) or (n, D, H, W), list, or (n, F)
            Same kind of input as in ``fit``.

        Returns
        -------
        ndarray of float32
            ``(n_volumes, n_features)`` with ``aggregate="mean"`` or
            ``"max"``; ``(n_volumes, n_kept, n_features)`` with
            ``aggregate="none"`` (slice k at position ``k / n_kept``).
            Tabular X gives ``(n, n_features)``.
        """
        self.check_is_fitted()
        if self._is_tabular() and not self._lazy(X):
            return super().transform(X)
        if self._lazy(X):
            volumes = self._as_dataset(X, None, reset=False)
        else:
            volumes = VolumeDataset(check_volumes(self, X, reset=False))
        slices = SliceDataset(
            volumes, axis=self.slice_axis, fraction=self.slice_fraction
        )
        with self._on_device():
            out = [
                f.numpy()
                for f in self.forward_iter(slices, training=False, device="cpu")
            ]
        feats = np.concatenate(out).astype(np.float32, copy=False)
        feats = feats.reshape(slices.n_volumes, slices.n_kept, -1)
        feats = self._check_finite_output(feats)
        if self.aggregate == "mean":
            return feats.mean(axis=1)
        if self.aggregate == "max":
            return feats.max(axis=1)
        return feats
