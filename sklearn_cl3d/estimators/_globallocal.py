"""Global-local contrastive pretraining of a U-Net (Chaitanya et al.,
NeurIPS 2020): stage 1 trains the encoder with a partition-aware global
loss, stage 2 the first decoder blocks with a local loss, encoder frozen."""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions

from ..data import SliceDataset
from ..data._percentile import PercentileScaling
from ..losses import (
    GLOBAL_STRATEGIES,
    LOCAL_STRATEGIES,
    REGION_LAYOUTS,
    GlobalContrastiveLoss,
)
from ..nn._globallocal import GlobalLocalNet
from ._base import BaseContrastivePretrainer
from ._globallocal_data import GlobalLocalDataMixin
from ._globallocal_steps import GlobalLocalStepMixin
from ._skorch import draw_base_seed

__all__ = ["GlobalLocalNet", "GlobalLocalPretrainer", "PercentileScaling"]

AGGREGATES = ("mean", "max", "none")
GL_FEATURE_LAYERS = ("backbone", "flat", "hidden", "projection")
STAGES = ("global", "local")

# base-class parameters with no meaning here (fixed U-Net, own loss and views)
_UNUSED_BASE_PARAMS = ("backbone", "sync_batchnorm")


# --------------------------------------------------------------- estimator


class GlobalLocalPretrainer(
    GlobalLocalStepMixin, GlobalLocalDataMixin, BaseContrastivePretrainer
):
    """Global and local contrastive pretraining of a U-Net.

    Chaitanya et al., NeurIPS 2020. ``fit`` runs two stages on unlabelled
    volumes, one after the other, each with its own Adam optimizer:

    1. **global** (``strategy``, ``max_epochs`` epochs): the encoder ``e``
       and the head ``g1`` with the global contrastive loss
       :class:`~sklearn_cl3d.losses.GlobalContrastiveLoss`;
    2. **local** (``local``, ``local_epochs`` epochs): the first
       ``n_decoder_blocks`` decoder blocks, the head ``g2`` and the region map
       W with :class:`~sklearn_cl3d.losses.LocalContrastiveLoss`; the encoder
       is frozen (no gradient, not in the optimizer).

    A stage is skipped with ``strategy=None`` / ``local=None`` or 0 epochs.
    The network is then fine-tuned on a few labelled volumes with
    :class:`~sklearn_cl3d.ContrastiveSegmenter` (``pretrained=`` this
    estimator).

    **Partitions and batches.** Every volume is cut along ``slice_axis``
    into ``n_partitions`` (S) equal slabs (the last ``n_slices % S`` slices
    are never used). A batch holds ``m = batch_size // n_partitions``
    distinct volumes (at most the number of volumes) and one random slice
    from every slab of each, volume-major: row ``i S + k`` is partition
    ``k`` of the i-th volume, as the official sampler
    (:class:`~sklearn_cl3d.data.PartitionBatchSampler`). An epoch is
    ``steps_per_epoch`` batches.

    **Views.** Global stage: each slice gives the views of its strategy
    (``"GR"``: two augmented views; ``"GD-"``: the slice itself and two
    augmented views; ``"GD"``: the slice itself and one augmented view), an
    augmented view being a random crop of 100/192 of the side, resized back,
    then a random brightness/contrast change (``augmentation="crop_intensity"``).
    The rows ``[views 0 | views 1 | ...]`` go through the network as one
    batch and are labelled (volume, partition, view) for the loss, which
    uses the clean all-pairs formulation (e.g. G^D: every row of the same
    partition in another volume is a positive, every row of another
    partition a negative). Local stage: two intensity-only views of each
    slice (``local_augmentation="intensity"``), so pixel (r, c) of one view
    matches (r, c) of the other.

    **Input.** Volumes are min-max scaled with their 1st/99th percentiles
    (``normalize="percentile"``, the official preprocessing, done once per
    volume when it is loaded), and slices are resized on the device to
    ``slice_size`` squared (bilinear). The U-Net needs sizes divisible by
    ``2 ** (len(channels) - 1)`` (32 by default).

    **3-D mode** (``dims=3``): samples are slab sub-volumes instead of
    slices (:class:`~sklearn_cl3d.data.PartitionSliceDataset` with
    ``dims=3``), resampled to ``output_depth`` slices, with a 3-D U-Net. The
    local loss runs on every depth plane of the decoder map (3x3 in-plane
    regions; for ``"LD"`` only maps at the same depth are partners).

    **Output.** ``transform`` encodes every slice of each volume (each slab
    with ``dims=3``, the window at the slab's centre) and aggregates the
    features per volume (``aggregate``).

    Parameters
    ----------
    strategy : {"GD", "GD-", "GR"} or None, default="GD"
        Global loss strategy (G^D, G^D-, G^R of the paper); None skips stage 1.
    local : {"LR", "LD"} or None, default="LR"
        Local loss strategy (L^R: negatives from the same image; L^D: also
        the same partition of other volumes as positives); None skips
        stage 2.
    n_partitions : int, default=4
        Partitions S per volume, >= 2 and at most the number of slices.
    dims : {2, 3}, default=2
        2: slices and a 2-D U-Net; 3: slab sub-volumes and a 3-D U-Net.
    channels : tuple of int, default=(16, 32, 64, 128, 128, 128)
        Output channels of the U-Net encoder levels (the paper's).
    n_decoder_blocks : int, default=3
        Decoder blocks ``l`` trained in stage 2 (the paper's 3: a 48x48x64
        map for 192x192 slices).
    region_size : {3, 1}, default=3
        Side of the local regions.
    regions : {"official13", "official9"}, default="official13"
        The official fixed region positions (13 or 9 anchors).
    n_negatives : int or None, default=None
        Negative regions per anchor, 1 to 5. None: the official value of the
        local strategy, 5 for L^R and 4 for L^D (the official L^D scripts
        use 4).
    region_dim : int or None, default=128
        Output size of the shared linear map W applied to every flattened
        region (the official ``wgt_en=1``); None: no W (the paper's text).
    temperature : float, default=0.1
        Temperature of both losses.
    batch_size : int, default=12
        Slices per batch (the official ``bt_size``): training batches hold
        ``max(1, batch_size // n_partitions)`` volumes times
        ``n_partitions`` slices (each giving its views); also the slices per
        inference batch of ``transform``.
    max_epochs : int, default=100
        Epochs of the global stage (0 skips it).
    gather_distributed : bool, default=True
        In a process group of more than one process (``torchrun``,
        :func:`~sklearn_cl3d.distributed.accelerated`): the global loss
        gathers the embeddings (with gradients), volume and partition ids of
        all processes, so it sees the global batch. The local loss stays per
        process. No effect in a single process.
    local_epochs : int or None, default=None
        Epochs of the local stage (0 skips it); None uses ``max_epochs``.
    steps_per_epoch : int or None, default=None
        Batches per epoch; None means ``n_volumes // m`` (at least 1), about
        one draw per volume and epoch. The official runs are 10 001 steps per
        stage.
    n_iterations : int or None, default=None
        Training steps of the global stage (one epoch of ``n_iterations``
        batches; ``max_epochs`` and ``steps_per_epoch`` are then ignored for
        it). Official: 10 001.
    local_iterations : int or None, default=None
        The same for the local stage (``local_epochs`` ignored); None uses
        ``n_iterations``.
    slice_axis : int, default=-1
        Spatial axis of (D, H, W) that is partitioned and sliced; -1 (the
        last array axis) is axial for RAS-oriented volumes.
    slice_size : int or None, default=192
        Slices (and the in-plane size of sub-volumes) are resized to
        ``slice_size`` squared (the paper's 192); a multiple of
        ``2 ** (len(channels) - 1)``. None keeps the size seen in ``fit``
        (which must be such a multiple).
    slab_depth : int or None, default=None
        ``dims=3``: slices per sub-volume window inside a slab; None is the
        whole slab.
    output_depth : int or None, default=None
        ``dims=3``: depth the window is resampled to, a multiple of
        ``2 ** (len(channels) - 1)``; None is the smallest such multiple
        that is at least the window depth.
    hidden_dim : int, default=1024
        Hidden width of the global head g1.
    projection_dim : int, default=128
        Output size of g1.
    feature_layer : {"backbone", "flat", "hidden", "projection"}, \
default="backbone"
        Slice features of ``transform``: the level-L encoder map averaged
        over space (``channels[-1]`` values), the flattened map (the input
        of g1, as the paper's global representation; its size grows with
        the slice size), g1's hidden layer or g1's output.
    aggregate : {"mean", "max", "none"}, default="mean"
        How ``transform`` combines the slice (slab) features of a volume.
    augmentation : {"crop_intensity"}, callable or None, default="crop_intensity"
        Augmented views of the global stage; a callable gets a batch tensor
        (B, C, ...) on the device and a ``generator`` keyword.
    local_augmentation : {"intensity"}, callable or None, default="intensity"
        Views of the local stage; a callable must keep pixels aligned.
    official_intensity : bool, default=False
        Draw the brightness shift and contrast factor once per batch and tie
        them (``factor = 1 + delta``), as the official code does; False draws
        them per image and independently.
    gd_pairing : {"all", "official"}, default="all"
        ``strategy="GD"`` only. ``"all"``: one set of m volumes, every
        same-partition row of another volume is a positive. ``"official"``:
        the official batches and pairs, two independently drawn sets of m
        volumes (rows ``[set A | set B]``, m slices of S partitions each,
        volumes distinct within a set) linked as a cyclic chain
        ``A_0 - B_0 - A_1 - B_1 - ... - A_0``; positives are the other view
        of the same slice (counted twice) and the same partition of a
        linked volume in the same view (no original-augmented pair across
        volumes), see ``pairing="official"`` of
        :func:`~sklearn_cl3d.losses.global_contrastive_loss`. The official
        all-zero last block is not reproduced: every row is a real slice.
    slice_sampling : {"partition", "uniform"}, default="partition"
        Slices of the G^R (``strategy="GR"``) and L^R (``local="LR"``)
        batches: one per partition of m volumes (as the other strategies),
        or ``batch_size`` slices drawn uniformly with replacement from all
        slices of all volumes (official; the unused tail slices included).
    freeze_encoder_bn : bool, default=False
        Stage 2 keeps the frozen encoder's BatchNorm in training mode (batch
        statistics, running averages updated), as the official code; True
        puts it in eval mode (running statistics, no update).
    normalize : {"percentile"} or None, default="percentile"
        Per-volume min-max scaling with the 1st/99th percentiles (after
        ``preprocessing``); None: use the intensities as they are (the
        brightness/contrast views assume roughly [0, 1]).
    lr : float, default=1e-3
        Adam learning rate of both stages (the paper's).
    weight_decay : float, default=0.0
        Weight decay (the official code has none).
    **kwargs : dict
        ``preprocessing``, ``cache``, ``optimizer``, ``device``,
        ``precision``, ``memory_format``, ``compile``, ``random_state``,
        ``verbose``, ``callbacks`` and skorch parameters
        (``criterion__reduction``, ``criterion__cross_views``,
        ``local_criterion__reduction``, ``iterator_train__num_workers``,
        ...), as in :class:`~sklearn_cl3d.YAwarePretrainer`. Validation
        splits are not supported (``train_split`` must be None).

    Attributes
    ----------
    module_ : GlobalLocalNet
        The U-Net (``module_.unet``) and heads (``global_head``,
        ``local_head``).
    criterion_ : GlobalContrastiveLoss
        The global loss.
    local_criterion_ : LocalContrastiveLoss
        The local loss; owns W (``local_criterion_.weight``).
    history_ : skorch.History
        Per-epoch losses; every epoch row has a ``"stage"`` entry.
    input_shape_ : tuple of int
        (C, D, H, W) of the volumes seen in ``fit``.
    network_input_shape_ : tuple of int
        (C, h, w) or (C, depth, h, w) of the network's inputs.
    stages_ : tuple of str
        Stages that have run (at least one epoch) since the network was
        initialised, in order of first run.
    device_ : str
        The device training ran on.

    See Also
    --------
    ContrastiveSegmenter : fine-tuning of the pretrained U-Net.
    sklearn_cl3d.losses.global_contrastive_loss : the global loss.
    sklearn_cl3d.losses.local_contrastive_loss : the local loss.

    Notes
    -----
    Official behaviours and where they stand (see the loss docstrings):

    * on: Adam 1e-3, tau 0.1, S = 4, 12-slice batches, G^D + L^R, l = 3,
      13 3x3 regions with 5 negatives, W (9C -> 128), 100/192 crops, the
      encoder BatchNorm updating during stage 2, percentile scaling;
    * off by default, available: tied batch-shared intensity draws
      (``official_intensity=True``); the G^D batches of two volume sets with
      the cyclic chain of volumes and double-counted same-slice pairs
      (``gd_pairing="official"``); uniform G^R / L^R slice draws
      (``slice_sampling="uniform"``); the stage lengths in iterations
      (``n_iterations``, ``local_iterations``); the recipe
      :func:`~sklearn_cl3d.protocols.official_protocol` sets them all;
    * off, not reproduced: the all-zero last stitched G^D block (use
      :func:`~sklearn_cl3d.losses.official_global_pairs` for exact
      values), and the G^D- stride-4 hard-code.

    Deviations of the defaults: G^R and L^R batches are
    partition-stratified (``slice_sampling``), G^D uses one set of m
    volumes and all pairs (``gd_pairing``), stages count epochs. Always:
    slices are resized rather than resampled to a resolution and cropped; each
    stage starts with a fresh optimizer (the official stages are separate
    scripts). ``partial_fit`` runs both stages again from the current
    weights.

    References
    ----------
    .. [1] K. Chaitanya, E. Erdil, N. Karani, E. Konukoglu, "Contrastive
       learning of global and local features for medical image segmentation
       with limited annotations", NeurIPS 2020.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_cl3d import GlobalLocalPretrainer
    >>> X = np.random.default_rng(0).random((4, 32, 32, 8), dtype="float32")
    >>> gl = GlobalLocalPretrainer(channels=(4, 8, 8, 8), slice_size=32,
    ...                            n_decoder_blocks=1, hidden_dim=16,
    ...                            projection_dim=8, region_dim=8,
    ...                            max_epochs=1, random_state=0, verbose=0)
    >>> gl.fit(X).transform(X).shape
    (4, 8)
    >>> [row["stage"] for row in gl.history]
    ['global', 'local']
    """

    _parameter_constraints = {
        **{
            k: v
            for k, v in BaseContrastivePretrainer._parameter_constraints.items()
            if k not in _UNUSED_BASE_PARAMS
        },
        "strategy": [StrOptions(set(GLOBAL_STRATEGIES)), None],
        "local": [StrOptions(set(LOCAL_STRATEGIES)), None],
        "n_partitions": [Interval(Integral, 2, None, closed="left")],
        "dims": [Interval(Integral, 2, 3, closed="both")],
        "channels": [list, tuple],
        "n_decoder_blocks": [Interval(Integral, 1, None, closed="left")],
        "region_size": [Interval(Integral, 1, 3, closed="both")],
        "regions": [StrOptions(set(REGION_LAYOUTS))],
        "n_negatives": [Interval(Integral, 1, 5, closed="both"), None],
        "region_dim": [Interval(Integral, 1, None, closed="left"), None],
        "local_epochs": [Interval(Integral, 0, None, closed="left"), None],
        "steps_per_epoch": [Interval(Integral, 1, None, closed="left"), None],
        "n_iterations": [Interval(Integral, 1, None, closed="left"), None],
        "local_iterations": [Interval(Integral, 1, None, closed="left"), None],
        "slice_axis": [Interval(Integral, -3, 2, closed="both")],
        "slice_size": [Interval(Integral, 1, None, closed="left"), None],
        "slab_depth": [Interval(Integral, 1, None, closed="left"), None],
        "output_depth": [Interval(Integral, 1, None, closed="left"), None],
        "feature_layer": [StrOptions(set(GL_FEATURE_LAYERS))],
        "aggregate": [StrOptions(set(AGGREGATES))],
        "augmentation": [StrOptions({"crop_intensity"}), callable, None],
        "local_augmentation": [StrOptions({"intensity"}), callable, None],
        "official_intensity": ["boolean"],
        "gd_pairing": [StrOptions({"all", "official"})],
        "slice_sampling": [StrOptions({"partition", "uniform"})],
        "freeze_encoder_bn": ["boolean"],
        "normalize": [StrOptions({"percentile"}), None],
        "train_split": [None],
    }

    def __init__(
        self,
        *,
        strategy="GD",
        local="LR",
        n_partitions=4,
        dims=2,
        channels=(16, 32, 64, 128, 128, 128),
        n_decoder_blocks=3,
        region_size=3,
        regions="official13",
        n_negatives=None,
        region_dim=128,
        temperature=0.1,
        batch_size=12,
        max_epochs=100,
        gather_distributed=True,
        local_epochs=None,
        steps_per_epoch=None,
        n_iterations=None,
        local_iterations=None,
        slice_axis=-1,
        slice_size=192,
        slab_depth=None,
        output_depth=None,
        hidden_dim=1024,
        projection_dim=128,
        feature_layer="backbone",
        aggregate="mean",
        augmentation="crop_intensity",
        local_augmentation="intensity",
        official_intensity=False,
        gd_pairing="all",
        slice_sampling="partition",
        freeze_encoder_bn=False,
        normalize="percentile",
        lr=1e-3,
        weight_decay=0.0,
        **kwargs,
    ):
        kwargs.setdefault("module", GlobalLocalNet)
        super().__init__(
            hidden_dim=hidden_dim,
            projection_dim=projection_dim,
            feature_layer=feature_layer,
            augmentation=augmentation,
            normalize=normalize,
            temperature=temperature,
            lr=lr,
            weight_decay=weight_decay,
            max_epochs=max_epochs,
            batch_size=batch_size,
            gather_distributed=gather_distributed,
            **kwargs,
        )
        for name in _UNUSED_BASE_PARAMS:
            self.__dict__.pop(name, None)
        self.strategy = strategy
        self.local = local
        self.n_partitions = n_partitions
        self.dims = dims
        self.channels = channels
        self.n_decoder_blocks = n_decoder_blocks
        self.region_size = region_size
        self.regions = regions
        self.n_negatives = n_negatives
        self.region_dim = region_dim
        self.local_epochs = local_epochs
        self.steps_per_epoch = steps_per_epoch
        self.n_iterations = n_iterations
        self.local_iterations = local_iterations
        self.slice_axis = slice_axis
        self.slice_size = slice_size
        self.slab_depth = slab_depth
        self.output_depth = output_depth
        self.aggregate = aggregate
        self.local_augmentation = local_augmentation
        self.official_intensity = official_intensity
        self.gd_pairing = gd_pairing
        self.slice_sampling = slice_sampling
        self.freeze_encoder_bn = freeze_encoder_bn

    # ------------------------------------------------------------ hooks

    @classmethod
    def _default_criterion(cls):
        return GlobalContrastiveLoss

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False  # volumes only
        tags.input_tags.three_d_array = True
        tags.target_tags.required = False
        return tags

    def _check_params(self):
        super()._check_params()
        if self.region_size not in (1, 3):
            raise ValueError(f"region_size must be 1 or 3; got {self.region_size!r}.")
        channels = self.channels
        if len(channels) < 2 or not all(
            isinstance(c, Integral) and not isinstance(c, bool) and c >= 1
            for c in channels
        ):
            raise ValueError(
                "channels must list at least 2 positive ints (one per encoder "
                f"level); got {channels!r}."
            )
        if self.n_decoder_blocks > len(channels) - 1:
            raise ValueError(
                f"n_decoder_blocks={self.n_decoder_blocks} exceeds the "
                f"{len(channels) - 1} decoder blocks of a U-Net with "
                f"{len(channels)} encoder levels (channels={tuple(channels)})."
            )
        multiple = self._size_multiple()
        for name in ("slice_size", "output_depth"):
            value = getattr(self, name)
            if value is not None and value % multiple:
                raise ValueError(
                    f"{name}={value} is not a multiple of {multiple}: the U-Net "
                    f"with {len(channels)} encoder levels halves every size "
                    f"{len(channels) - 1} times (use e.g. {name}="
                    f"{max(multiple, round(value / multiple) * multiple)})."
                )

    def _size_multiple(self):
        return 2 ** (len(self.channels) - 1)

    @property
    def _dims(self):
        return int(self.dims)

    @property
    def _n_features_out(self):
        if not getattr(self, "initialized_", False):
            raise AttributeError("not fitted")
        return self._bare_module().feature_dim(self.feature_layer)

    # ------------------------------------------------------ public API

    def _fit(self, X, y, fit_params, *, partial):
        self._check_params()
        reset = not (partial or self.warm_start) or not getattr(
            self, "initialized_", False
        )
        volumes = self._as_dataset(X, None, reset=reset)
        shape = self._geometry(volumes)
        if reset:
            self.network_input_shape_ = shape
        self._check_local_regions(self.network_input_shape_)
        dataset = self._partition_dataset(volumes)
        stages = self._stage_epochs()
        if reset:
            self._base_seed_ = draw_base_seed(self.random_state)
        offset = 0 if reset else len(self.history)
        with self._on_device() as device, self._seeded(offset):
            self.device_ = device
            if reset:
                self.__dict__["_stage"] = stages[0][0] if stages else "global"
                self.__dict__.pop("_aug_generator", None)
                self.initialize()
            else:
                self._sync_criteria()
            for stage, epochs in stages:
                self._run_stage(dataset, stage, epochs, fit_params)
        return self

    def fit(self, X, y=None, **fit_params):
        """Run the global stage, then the local stage, on volumes X.

        Parameters
        ----------
        X : array-like of shape (n, D, H, W) or (n, C, D, H, W), or list
            Unlabelled volumes, or a list of paths (``.nii``, ``.nii.gz``,
            ``.nrrd``, ``.npy``) or nibabel images, loaded lazily.
        y : None
            Ignored.
        **fit_params : dict
            Passed to the network's forward call.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        return self._fit(X, y, fit_params, partial=False)

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        """Run both stages again from the current weights (initialise if needed).

        Parameters
        ----------
        X : array-like or list
            Volumes, same kind and per-slice shape as in earlier calls.
        y : None
            Ignored.
        classes : None
            Ignored.
        **fit_params : dict
            Passed to the network's forward call.

        Returns
        -------
        self : object
        """
        return self._fit(X, y, fit_params, partial=True)

    def transform(self, X):
        """Global encoder features of each volume.

        Parameters
        ----------
        X : array-like of shape (n, D, H, W) or (n, C, D, H, W), or list
            Volumes with as many channels as in ``fit`` (in-plane sizes are
            resized to the network's).

        Returns
        -------
        ndarray of float32
            ``(n_volumes, n_features)`` with ``aggregate="mean"`` or
            ``"max"``; ``(n_volumes, n_items, n_features)`` with
            ``aggregate="none"``, the items being the slices along
            ``slice_axis`` in order (the ``n_partitions`` slabs with
            ``dims=3``).
        """
        self.check_is_fitted()
        volumes = self._as_dataset(X, None, reset=False)
        if self._dims == 2:
            items = SliceDataset(volumes, axis=self.slice_axis, fraction=1.0)
            n_items = items.n_kept
        else:
            slabs = self._partition_dataset(volumes)
            centres = [start + slabs.slab_size // 2 for start, _ in slabs.bounds]
            index = [
                v * slabs.n_slices + z for v in range(len(volumes)) for z in centres
            ]
            items = torch.utils.data.Subset(slabs, index)
            n_items = len(centres)
        with self._on_device():
            out = [
                f.numpy()
                for f in self.forward_iter(items, training=False, device="cpu")
            ]
        feats = np.concatenate(out).astype(np.float32, copy=False)
        feats = self._check_finite_output(feats.reshape(len(volumes), n_items, -1))
        if self.aggregate == "mean":
            return feats.mean(axis=1)
        if self.aggregate == "max":
            return feats.max(axis=1)
        return feats
