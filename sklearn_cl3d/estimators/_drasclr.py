"""DrasCLR: anatomy-aware contrastive pretraining on lung-CT patches at atlas
landmarks (Yu et al., Medical Image Analysis 2023)."""

from __future__ import annotations

import math
import os
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions
from skorch.callbacks import LRScheduler
from skorch.dataset import Dataset

from ..augment._drasclr import (
    RandomAffine3D as _RandomAffine3D,  # noqa: F401 (the old private names)
    RandomContrast as _RandomContrast,  # noqa: F401
)
from ..data._atlas import (  # noqa: F401 (lung_like_mask: its old home)
    LUNG_THRESHOLD_HU,
    lung_like_mask,
)
from ..data._patches import (
    VolumeSource,
    check_affines,
)
from ..losses import DrasCLRLoss
from ..nn import DrasCLRMoCo
from ._base import BaseContrastivePretrainer
from ._drasclr_data import DrasCLRDataMixin
from ._drasclr_steps import _REP_DIM, DrasCLRStepMixin

__all__ = ["DrasCLREncoder"]

POOLINGS = ("mean", "max", "none")

# base-class parameters that have no meaning here (fixed network, own views)
_UNUSED_BASE_PARAMS = (
    "backbone",
    "hidden_dim",
    "feature_layer",
    "normalize",
    "cache",
    "sync_batchnorm",
)


# ---------------------------------------------------------------- estimator


class DrasCLREncoder(DrasCLRStepMixin, DrasCLRDataMixin, BaseContrastivePretrainer):
    """DrasCLR: anatomy-aware contrastive pretraining on patches at landmarks.

    Yu et al., Medical Image Analysis 2023. Every volume is cut into
    ``patch_size`` cubes at fixed atlas landmarks. A location-conditioned
    CNN (:class:`~sklearn_cl3d.nn.DrasCLRNet`: every convolution mixes
    ``n_experts`` kernels with gates ``sigmoid(A p + c)`` of the patch's
    atlas location ``p``) is trained with MoCo: two views of the patch of
    subject ``i`` at landmark ``j`` are a positive pair, negatives are the
    keys of earlier batches **at the same landmark** (one queue per
    landmark), and a neighbour term contrasts the same key with the sum of
    the embeddings of the subject's patches at the ``n_neighbors`` nearest
    landmarks. See :func:`~sklearn_cl3d.losses.drasclr_loss`.

    **Landmarks** are window corners in the atlas voxel grid (array axis
    order of the volumes), chosen at fit time: ``landmarks`` when given (the
    official 581-landmark table is data, not re-derived); otherwise from
    ``atlas_mask`` with :func:`~sklearn_cl3d.data.make_landmarks` (windows of
    ``patch_size`` on a ``landmark_stride`` grid with more than
    ``landmark_min_fraction`` of their voxels in the mask); otherwise from the
    data: the mean of the fit volumes (already in atlas space) is thresholded
    at -400 HU and the low-attenuation voxels enclosed by tissue in some 2-D
    slice are taken as a lung mask (:func:`lung_like_mask`; files are then
    read twice). The neighbours
    are the nearest other landmarks, ties broken by the lower index
    (:func:`~sklearn_cl3d.data.landmark_neighbors`); the routing input is
    ``landmarks / landmarks.max(0) * 2 - 1``.

    **Registration.** Volumes are either in atlas space (same grid as the
    atlas, no ``affines``), or in their own space with ``affines``: one
    matrix per volume mapping atlas voxel indices to the volume's voxel
    indices (see :func:`~sklearn_cl3d.data.map_corners`). As in the official
    code only the window corner is mapped (rounded), the content is not
    resampled, and window parts outside the volume are air (``hu_window``
    low end).

    **Intensities** are clipped to ``hu_window`` and shifted by its low end,
    augmented in that space, then scaled to ``[-1, 1]`` by ``x / (width / 2)
    - 1`` (official: [-1024, 240] HU, divide by 632).

    **Training.** All patches are extracted once at fit time into a bank of
    ``n_landmarks x n_subjects x C x patch_size**3`` float32 values. An
    epoch walks the landmarks in order and, at each, the subjects in order
    in batches of ``batch_size`` (every batch: distinct subjects at one
    landmark, as the authors intended; the released code's DataLoader
    workers never saw the landmark change). Per step: query embeddings of
    one view of the anchors, query embeddings of the ``n_neighbors``
    neighbour patches (a separate forward, so separate BatchNorm statistics;
    the neighbour patches of a subject share one augmentation draw), a
    momentum update ``key = m * key + (1 - m) * query`` of every key
    parameter, then key embeddings of the other view; after the loss the
    unit keys are pushed to the landmark's queue. SGD (lr 0.01, momentum
    0.9, weight decay 1e-4 on all parameters) with a per-epoch cosine
    schedule, as the official run.

    **Queue memory**: ``projection_dim * queue_size * n_landmarks * 4``
    bytes, i.e. 128 x 4096 x 581 x 4 = 1.22 GB with the official settings;
    fit raises a ``MemoryError`` giving this size when it cannot be
    allocated. The queues and the key network stay in the fitted estimator
    (so ``partial_fit`` continues training exactly) and are part of its
    pickle.

    **Output.** ``transform_patches`` returns the representation ``h`` (128-d,
    before the head) of every landmark patch, ``(n_subjects, n_landmarks,
    128)``, computed in eval mode with each patch's own location (the
    official feature extraction). ``transform`` pools them per subject.

    Parameters
    ----------
    patch_size : int, default=32
        Edge of the cubic patches (official: 32). Patches up to 32 voxels end
        in a 1^3 map as in the official network; larger ones are
        average-pooled at the end.
    n_experts : int, default=8
        Expert kernels per convolution.
    n_neighbors : int, default=2
        Neighbour landmarks of the neighbour term, < number of landmarks.
    queue_size : int, default=4096
        Keys per landmark queue.
    momentum : float, default=0.999
        Momentum ``m`` of the key network.
    temperature : float, default=0.2
        Softmax temperature, > 0.
    beta : float, default=1.0
        Weight of the neighbour term (no warm-up, as the official run).
    projection_dim : int, default=128
        Size of the contrastive embedding (and of the queue vectors).
    landmarks : array-like of shape (n_landmarks, 3) or None, default=None
        Window corners in atlas voxel indices. Every window must lie inside
        the atlas grid (the volumes' grid without ``affines``, else
        ``atlas_mask``'s when given).
    atlas_mask : array-like of shape (D, H, W), path or None, default=None
        Atlas region mask (> 0 inside) the landmarks are derived from when
        ``landmarks`` is None. None: derive it from the mean fit volume (see
        above; needs volumes in atlas space).
    landmark_stride : int, default=26
        Step of the landmark grid when deriving landmarks.
    landmark_min_fraction : float, default=0.1
        A window is a landmark when more than this fraction of it is inside
        the mask.
    hu_window : tuple of 2 floats, default=(-1024.0, 240.0)
        Intensity window ``(low, high)``, ``low < high``.
    pooling : {"mean", "max", "none"}, default="mean"
        How ``transform`` combines a subject's landmark features: mean or max
        over landmarks ``(n, 128)``, or ``"none"``: all of them, flattened
        landmark-major ``(n, n_landmarks * 128)``.
    augmentation : {"drasclr", "none"}, callable or None, default="drasclr"
        Views, applied on the device in window-shifted HU: ``"drasclr"`` is
        the official "agc" pipeline (random affine always; Gaussian noise of
        std 50 HU and gamma contrast in (0.5, 4.5), each with probability
        0.25). A callable gets ``(B, C, P, P, P)`` and a ``generator``
        keyword.
    preprocessing : list of transformers, Pipeline or None, default=None
        Run on every volume when it is loaded (see
        :func:`~sklearn_cl3d.data.make_preprocessing`).
    optimizer : torch optimizer class, default=torch.optim.SGD
        Optimizer; ``optimizer__*`` parameters are passed to it. SGD gets
        momentum 0.9 unless ``optimizer__momentum`` is given.
    lr : float, default=0.01
        Learning rate.
    weight_decay : float, default=1e-4
        Weight decay (all parameters).
    conditioning : bool, default=True
        Route the expert kernels by location (DrasCLR). False zeroes and
        freezes every routing matrix, so the gates are constant: the same
        network, parameter count and training, without anatomy
        conditioning (the ablation baseline).
    lr_schedule : {"cosine"} or None, default="cosine"
        Per-epoch cosine annealing to 0 over ``max_epochs``.
    max_epochs : int, default=20
        Epochs (each visits every landmark of every subject once).
    precision : {"fp32", "auto", "bf16", "fp16"}, default="fp32"
        Autocast precision. Unlike the other pretrainers the default is fp32
        (as the official code): bfloat16 training gave NaN losses in our
        small-patch CPU tests (the deepest layers run 3x3x3 convolutions on
        2^3 maps); fp16 (with loss scaling) trained fine.
    batch_size : int, default=128
        Subjects per batch, >= 2 (capped at the number of subjects); also the
        number of patches per forward in ``transform``.
    gather_distributed : bool, default=True
        In a process group of more than one process (``torchrun``,
        :func:`~sklearn_cl3d.distributed.accelerated`): compute the keys
        with MoCo's shuffle-BN (the key batch permuted across processes
        before the key network and restored after, see
        :func:`~sklearn_cl3d.distributed.shuffled_forward`) and push the
        keys of all processes to the queues, so every process's queues hold
        the global batch's keys, as the official 4-GPU run. The loss stays
        per process (its own queries and keys against the queue). No effect
        in a single process.
    device : str, default="auto"
        ``"auto"`` uses CUDA when available, else the CPU.
    random_state : int, RandomState instance or None, default=None
        Seeds weights, queues and augmentations.
    verbose : int, default=1
        1 (skorch's default) shows a progress bar of each epoch's steps and
        a table per epoch, and a progress bar over the batches of
        ``transform``/``predict``; 0 is silent.
    train_split : None, default=None
        Must be None: there is no validation split of the patches.
    callbacks : list of (name, callback) or None, default=None
        Extra skorch callbacks.
    **kwargs : dict
        The speed options of the other pretrainers (``precision``,
        ``memory_format``, ``compile``) and other skorch ``NeuralNet``
        parameters (``optimizer__*``, ``iterator_train__num_workers``, ...).

    Attributes
    ----------
    module_ : DrasCLRMoCo
        Query network (``module_.query``), key network (``module_.key``) and
        queues (``module_.queue``, ``module_.queue_ptr``).
    criterion_ : DrasCLRLoss
        The loss.
    landmarks_ : ndarray of int64, shape (n_landmarks, 3)
        Window corners used.
    neighbors_ : ndarray of int64, shape (n_landmarks, n_neighbors)
        Neighbour landmarks of every landmark.
    locations_ : ndarray of float32, shape (n_landmarks, 3)
        Routing input of every landmark.
    n_landmarks_ : int
        Number of landmarks.
    atlas_shape_ : tuple of int or None
        Atlas grid the landmarks were checked against.
    input_shape_ : tuple of int
        ``(C, P, P, P)``: channels of the volumes and patch shape.
    history_ : skorch.History
        Training losses (``train_loss``; per batch also ``local_loss`` and
        ``neighbor_loss``).
    device_ : str
        The device training ran on.

    See Also
    --------
    sklearn_cl3d.losses.drasclr_loss : the loss.
    sklearn_cl3d.nn.DrasCLRNet : the network.
    sklearn_cl3d.data.extract_patches : the patches.

    References
    ----------
    .. [1] K. Yu et al., "DrasCLR", Medical Image Analysis, article 103062
       (2023); arXiv:2302.10390.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_cl3d import DrasCLREncoder
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(-700, 200, size=(4, 16, 16, 16)).astype("float32")
    >>> corners = [[0, 0, 0], [0, 8, 8], [8, 0, 8]]
    >>> enc = DrasCLREncoder(patch_size=8, n_experts=2, landmarks=corners,
    ...                      queue_size=8, batch_size=2, max_epochs=1,
    ...                      random_state=0, verbose=0)
    >>> enc.fit(X).transform(X).shape
    (4, 128)
    >>> enc.transform_patches(X).shape
    (4, 3, 128)
    """

    _parameter_constraints = {
        **{
            k: v
            for k, v in BaseContrastivePretrainer._parameter_constraints.items()
            if k not in _UNUSED_BASE_PARAMS and k != "augmentation"
        },
        "patch_size": [Interval(Integral, 1, None, closed="left")],
        "n_experts": [Interval(Integral, 1, None, closed="left")],
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "queue_size": [Interval(Integral, 1, None, closed="left")],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "beta": [Interval(Real, 0, None, closed="left")],
        "landmarks": ["array-like", None],
        "atlas_mask": ["array-like", str, os.PathLike, None],
        "landmark_stride": [Interval(Integral, 1, None, closed="left")],
        "landmark_min_fraction": [Interval(Real, 0, 1, closed="left")],
        "hu_window": [tuple, list],
        "pooling": [StrOptions(set(POOLINGS))],
        "augmentation": [StrOptions({"drasclr", "none"}), callable, None],
        "lr_schedule": [StrOptions({"cosine"}), None],
        "conditioning": ["boolean"],
        "batch_size": [Interval(Integral, 2, None, closed="left")],
    }

    def __init__(
        self,
        *,
        patch_size=32,
        n_experts=8,
        n_neighbors=2,
        queue_size=4096,
        momentum=0.999,
        temperature=0.2,
        beta=1.0,
        projection_dim=128,
        landmarks=None,
        atlas_mask=None,
        landmark_stride=26,
        landmark_min_fraction=0.1,
        hu_window=(-1024.0, 240.0),
        pooling="mean",
        augmentation="drasclr",
        preprocessing=None,
        optimizer=torch.optim.SGD,
        lr=0.01,
        weight_decay=1e-4,
        lr_schedule="cosine",
        conditioning=True,
        gather_distributed=True,
        max_epochs=20,
        batch_size=128,
        precision="fp32",
        **kwargs,
    ):
        kwargs.setdefault("module", DrasCLRMoCo)
        super().__init__(
            precision=precision,
            projection_dim=projection_dim,
            augmentation=augmentation,
            preprocessing=preprocessing,
            temperature=temperature,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            max_epochs=max_epochs,
            batch_size=batch_size,
            gather_distributed=gather_distributed,
            **kwargs,
        )
        for name in _UNUSED_BASE_PARAMS:
            self.__dict__.pop(name, None)
        self.patch_size = patch_size
        self.n_experts = n_experts
        self.n_neighbors = n_neighbors
        self.queue_size = queue_size
        self.momentum = momentum
        self.beta = beta
        self.landmarks = landmarks
        self.atlas_mask = atlas_mask
        self.landmark_stride = landmark_stride
        self.landmark_min_fraction = landmark_min_fraction
        self.hu_window = hu_window
        self.pooling = pooling
        self.lr_schedule = lr_schedule
        self.conditioning = conditioning

    # ------------------------------------------------------------ hooks

    @classmethod
    def _default_criterion(cls):
        return DrasCLRLoss

    def _criterion_params(self):
        return {"temperature": self.temperature, "beta": self.beta}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False  # volumes only
        return tags

    def _check_params(self):
        super()._check_params()
        self._window()
        if self.train_split is not None:
            raise ValueError(
                f"{type(self).__name__} trains on location-major batches of all "
                "patches and has no validation split: use train_split=None (and "
                "monitor 'train_loss')."
            )

    def _window(self):
        window = self.hu_window
        ok = isinstance(window, tuple | list) and len(window) == 2
        ok = ok and all(
            isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)
            for v in window
        )
        if not ok or not window[0] < window[1]:
            raise ValueError(
                "hu_window must be a pair (low, high) of finite numbers with low < "
                f"high; got {window!r}."
            )
        return float(window[0]), float(window[1])

    @property
    def _n_features_out(self):
        if not getattr(self, "initialized_", False):
            raise AttributeError("not fitted")
        if self.pooling == "none":
            return self.n_landmarks_ * _REP_DIM
        return _REP_DIM

    def get_default_callbacks(self):
        callbacks = super().get_default_callbacks()
        if self.lr_schedule == "cosine":
            schedule = LRScheduler(
                policy="CosineAnnealingLR", T_max=max(1, self.max_epochs), eta_min=0
            )
            callbacks.append(("lr_scheduler", schedule))
        return callbacks

    def get_params_for_optimizer(self, prefix, named_parameters):
        args, kwargs = super().get_params_for_optimizer(prefix, named_parameters)
        if prefix == "optimizer" and self.optimizer is torch.optim.SGD:
            kwargs.setdefault("momentum", 0.9)  # the official SGD
        return args, kwargs

    def get_all_learnable_params(self):
        # the key network follows the query by momentum, never by gradient
        for name, param in super().get_all_learnable_params():
            if param.requires_grad:
                yield name, param

    # ------------------------------------------------------ public API

    def _fit_with(self, X, y, affines, fit_params, partial):
        if affines is not None:
            fit_params["affines"] = affines
        try:
            return self._fit(X, y, fit_params, partial=partial)
        finally:
            self.__dict__.pop("_affines", None)

    def fit(self, X, y=None, affines=None, **fit_params):
        """Pick the landmarks, extract the patches and pretrain.

        Parameters
        ----------
        X : array-like of shape (n, D, H, W) or (n, C, D, H, W), or list
            CT volumes in HU: an array, a list of arrays (shapes may differ
            with ``affines``), a list of ``.nii``/``.nii.gz``/``.nrrd``/
            ``.npy`` paths or nibabel images, or a VolumeDataset.
        y : Ignored
            Not used, present for API consistency (the Pipeline target).
        affines : array-like of shape (n, 4, 4), default=None
            Atlas-to-volume voxel maps, one per volume (None: the volumes are
            in atlas space). Route with ``set_fit_request(affines=True)`` in
            a Pipeline.
        **fit_params : dict
            Passed to skorch.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        return self._fit_with(X, y, affines, fit_params, partial=False)

    def partial_fit(self, X, y=None, classes=None, affines=None, **fit_params):
        """Train ``max_epochs`` more epochs on X (fit first if needed).

        Parameters
        ----------
        X : array-like or list
            Volumes, as in ``fit``; the fitted landmarks are kept.
        y : Ignored
            Not used.
        classes : Ignored
            Not used.
        affines : array-like of shape (n, 4, 4), default=None
            Atlas-to-volume voxel maps.
        **fit_params : dict
            Passed to skorch.

        Returns
        -------
        self : object
        """
        return self._fit_with(X, y, affines, fit_params, partial=True)

    # -------------------------------------------------------- transform

    def transform_patches(self, X, affines=None):
        """Representation of every landmark patch of every volume.

        Parameters
        ----------
        X : array-like or list
            Volumes, as in ``fit``.
        affines : array-like of shape (n, 4, 4), default=None
            Atlas-to-volume voxel maps.

        Returns
        -------
        ndarray of float32, shape (n_subjects, n_landmarks, 128)
        """
        self.check_is_fitted()
        source = VolumeSource(X, preprocessing=self.preprocessing)
        n = len(source)
        affines = check_affines(affines, n)
        landmark_index = np.arange(self.n_landmarks_)
        out = np.empty((n, self.n_landmarks_, _REP_DIM), dtype=np.float32)
        with self._on_device():
            for i in range(n):
                patches = self._subject_patches(
                    source, i, self.landmarks_, affines, self.input_shape_[0]
                )
                ds = Dataset({"patches": patches, "landmark": landmark_index})
                feats = [
                    f.numpy()
                    for f in self.forward_iter(ds, training=False, device="cpu")
                ]
                out[i] = np.concatenate(feats)
        return out

    def transform(self, X, affines=None):
        """Patient-level features: the landmark features pooled per volume.

        Parameters
        ----------
        X : array-like or list
            Volumes, as in ``fit``.
        affines : array-like of shape (n, 4, 4), default=None
            Atlas-to-volume voxel maps (route with
            ``set_transform_request(affines=True)``).

        Returns
        -------
        ndarray of float32
            ``(n, 128)`` for ``pooling="mean"`` or ``"max"``; ``(n,
            n_landmarks * 128)`` for ``"none"`` (landmark-major).
        """
        feats = self.transform_patches(X, affines=affines)
        if self.pooling == "mean":
            return feats.mean(axis=1)
        if self.pooling == "max":
            return feats.max(axis=1)
        return feats.reshape(len(feats), -1)

    def fit_transform(self, X, y=None, affines=None, **fit_params):
        """Fit, then transform X (with the same affines).

        Parameters
        ----------
        X : array-like or list
            Volumes.
        y : Ignored
            Not used.
        affines : array-like of shape (n, 4, 4), default=None
            Atlas-to-volume voxel maps.
        **fit_params : dict
            Passed to ``fit``.

        Returns
        -------
        ndarray of float32
            See :meth:`transform`.
        """
        return self.fit(X, y, affines=affines, **fit_params).transform(
            X, affines=affines
        )
