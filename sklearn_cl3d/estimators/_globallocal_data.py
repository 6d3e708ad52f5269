"""Stages, geometry, data and fine-tuning input of
:class:`~sklearn_cl3d.GlobalLocalPretrainer`: stage lengths and slice
sampling, the network input size, the partitioned volumes and their batch
samplers, and the encoder handed to the fine-tuners."""

from __future__ import annotations

import copy
import math

import torch

from ..data import (
    PartitionBatchSampler,
    PartitionSliceDataset,
    VolumeDataset,
    as_volume_dataset,
    check_input_shape,
    is_volume_collection,
    make_preprocessing,
)
from ..data._loading import loader_defaults
from ..data._percentile import PercentileScaling
from ..losses import (
    local_region_positions,
)
from ..nn import UNet
from ..nn._pooled import SliceSetEncoder, UNetEncoder
from ..nn.functional import resize_in_plane
from ._transfer import ScaledVolumeInput

__all__ = []


class GlobalLocalDataMixin:
    """Stage lengths, geometry, data and fine-tuning input of the pretrainer."""

    def _stage_iterations(self, stage):
        """Steps of ``stage`` when set in iterations, else None."""
        if stage == "global" or self.local_iterations is None:
            return self.n_iterations
        return self.local_iterations

    def _stage_epochs(self):
        """[(stage, epochs)] of the stages ``fit`` runs, in order."""
        global_epochs = self.max_epochs
        if self._stage_iterations("global") is not None:
            global_epochs = 1
        local_epochs = (
            self.max_epochs if self.local_epochs is None else (self.local_epochs)
        )
        if self._stage_iterations("local") is not None:
            local_epochs = 1
        stages = []
        if self.strategy is not None and global_epochs > 0:
            stages.append(("global", global_epochs))
        if self.local is not None and local_epochs > 0:
            stages.append(("local", local_epochs))
        return stages

    def _official_gd(self, stage):
        """Whether ``stage`` runs the official G^D batches and pairs."""
        return (
            stage == "global"
            and self.strategy == "GD"
            and (self.gd_pairing == "official")
        )

    def _uniform_draws(self, stage):
        """Whether ``stage`` draws its slices uniformly (official G^R/L^R)."""
        if self.slice_sampling != "uniform":
            return False
        if stage == "global":
            return self.strategy == "GR"
        return self.local == "LR"

    # ------------------------------------------------------------ geometry

    def _plane(self, sample_shape):
        axis = self.slice_axis % 3
        return tuple(s for a, s in enumerate(sample_shape[1:]) if a != axis)

    def _geometry(self, volumes):
        """Check the slice geometry of ``volumes``; return the network input."""
        shape = tuple(volumes.sample_shape)
        axis = self.slice_axis % 3
        n_slices = shape[1 + axis]
        if n_slices < self.n_partitions:
            raise ValueError(
                f"volumes of shape {shape[1:]} have {n_slices} slice(s) along "
                f"slice_axis={self.slice_axis}, fewer than n_partitions="
                f"{self.n_partitions}: every partition needs at least one slice "
                "(use fewer partitions or another slice axis)."
            )
        multiple = self._size_multiple()
        plane = self._plane(shape)
        if self.slice_size is None:
            if any(s % multiple for s in plane):
                hint = multiple * max(1, round(plane[0] / multiple))
                raise ValueError(
                    f"slices of size {plane} are not multiples of {multiple}, as "
                    f"the U-Net with {len(self.channels)} encoder levels needs: "
                    f"set slice_size (e.g. {hint}) "
                    "to resize them."
                )
        else:
            plane = (self.slice_size,) * 2
        if self._dims == 2:
            return (shape[0], *plane)
        slab = n_slices // self.n_partitions
        depth = slab if self.slab_depth is None else self.slab_depth
        if depth > slab:
            raise ValueError(
                f"slab_depth={depth} exceeds the slab size {slab} ({n_slices} "
                f"slices, {self.n_partitions} partitions)."
            )
        out_depth = self.output_depth or multiple * math.ceil(depth / multiple)
        return (shape[0], out_depth, *plane)

    def _check_local_regions(self, input_shape):
        if self.local is None:
            return
        scale = 2**self.n_decoder_blocks / self._size_multiple()
        h, w = (int(s * scale) for s in input_shape[-2:])
        try:
            local_region_positions(
                h, w, self.region_size, self.regions, self._n_negatives()
            )
        except ValueError as exc:
            raise ValueError(
                f"decoder block {self.n_decoder_blocks} gives {h}x{w} maps for "
                f"inputs of size {tuple(input_shape[1:])}, too small for the "
                f"local regions ({exc}) Use a larger slice_size or more decoder "
                "blocks."
            ) from None

    def _network_input_shape(self):
        return self.network_input_shape_

    # ------------------------------------------------------------ data

    def _lazy(self, X):
        return True

    def _as_dataset(self, X, y, *, reset):
        """Volumes as a :class:`VolumeDataset` with the scaling step appended."""
        steps, cache, kwargs = [], self.cache, {}
        if isinstance(X, VolumeDataset):
            if X.preprocessing is not None:
                steps.append(X.preprocessing)
            cache = cache or X.cache
            kwargs = {"dtype": X.dtype, "expected_ndim": X.expected_ndim}
            X = X.X
        elif not is_volume_collection(X):
            cache = True  # in-memory arrays: scale each volume once
        if self.preprocessing is not None:
            steps.append(make_preprocessing(self.preprocessing))
        if self.normalize == "percentile":
            steps.append(PercentileScaling())
        ds = as_volume_dataset(X, preprocessing=steps or None, cache=cache, **kwargs)
        if reset and hasattr(self, "n_features_in_"):
            del self.n_features_in_
        check_input_shape(self, tuple(ds.sample_shape), reset=reset)
        return ds

    def _partition_dataset(self, volumes):
        depth = None
        if self._dims == 3:
            depth = self.network_input_shape_[1]
        return PartitionSliceDataset(
            volumes,
            n_partitions=self.n_partitions,
            axis=self.slice_axis,
            dims=self._dims,
            slab_depth=self.slab_depth if self._dims == 3 else None,
            output_depth=depth,
        )

    def get_iterator(self, dataset, training=False):
        if not (training and isinstance(dataset, PartitionSliceDataset)):
            return super().get_iterator(dataset, training=training)
        kwargs = self.get_params_for("iterator_train")
        for key in ("batch_size", "shuffle", "drop_last", "sampler"):
            kwargs.pop(key, None)
        stage = self.__dict__.get("_stage", "global")
        m = min(max(1, self.batch_size // self.n_partitions), dataset.n_volumes)
        steps = (
            self._stage_iterations(stage)
            or self.steps_per_epoch
            or max(1, dataset.n_volumes // m)
        )
        if self._uniform_draws(stage):
            draws = torch.utils.data.RandomSampler(
                dataset, replacement=True, num_samples=steps * self.batch_size
            )
            sampler = torch.utils.data.BatchSampler(draws, self.batch_size, False)
        else:
            sampler = PartitionBatchSampler(
                dataset.n_volumes,
                dataset.n_slices,
                n_partitions=self.n_partitions,
                volumes_per_batch=m,
                n_batches=steps,
                n_sets=2 if self._official_gd(stage) else 1,
            )
        loader_defaults(kwargs, dataset, self.device)
        return self.iterator_train(dataset, batch_sampler=sampler, **kwargs)

    def _prepare(self, x):
        """Batch to the device, in-plane resize to the network's input size."""
        x = self._to_device(x).float()
        return resize_in_plane(x, self.network_input_shape_[-2:])

    # ------------------------------------------------------ fine-tuning

    def _finetune_encoder(self, *, pretrained, pooling):
        """Per-volume backbone for FineTunedClassifier/FineTunedRegressor.

        The U-Net encoder (decoder and heads dropped) on every slice of a
        volume, averaged over space, then pooled over the slices: the
        ``"backbone"`` features of :meth:`transform`, made trainable.
        """
        if self._dims != 2:
            raise ValueError(
                "fine-tuning a GlobalLocalPretrainer as a classifier or regressor "
                "needs dims=2 (slice encoder); with dims=3 use its features "
                "(transform) or ContrastiveSegmenter."
            )
        if pretrained:
            unet = copy.deepcopy(self._bare_module().unet)
        else:
            shape = self.network_input_shape_
            kwargs = {"dims": 2, "in_channels": shape[0], "channels": self.channels}
            unet = UNet(**kwargs)
        if pooling == "auto":
            pooling = "max" if self.aggregate == "max" else "mean"
        return SliceSetEncoder(
            UNetEncoder(unet),
            slice_axis=self.slice_axis,
            size=tuple(self.network_input_shape_[1:]),
            pooling=pooling,
        )

    def _finetune_input(self):
        """The per-volume scaling of the pretraining, for the fine-tuner."""
        steps = [PercentileScaling()] if self.normalize == "percentile" else []
        return ScaledVolumeInput(steps)
