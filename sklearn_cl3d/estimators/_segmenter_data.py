"""Pretrained source, geometry and data preparation of
:class:`ContrastiveSegmenter`: the network's input size, validated and
scaled volumes, network items (slices or volumes) and on-device resizing."""

from __future__ import annotations

import math

import numpy as np
import torch.nn.functional as F
from sklearn.exceptions import NotFittedError

from ..data import check_volumes
from ..data._percentile import PercentileScaling
from ..data._slices import segmentation_items
from ..nn.functional import resize_in_plane
from ._globallocal import GlobalLocalPretrainer

__all__ = []


class SegmenterDataMixin:
    """Pretrained source, network geometry and items of the segmenter."""

    def _source(self):
        """The fitted pretrainer (None without one)."""
        cached = self.__dict__.get("_source_cache")
        if cached is not None:
            return cached
        source = self.pretrained
        if source is None:
            return None
        if type(source).__name__ == "FrozenEstimator":
            source = source.estimator
        if not isinstance(source, GlobalLocalPretrainer):
            raise ValueError(
                "pretrained must be a fitted GlobalLocalPretrainer or None; got "
                f"{type(source).__name__}."
            )
        if not getattr(source, "initialized_", False) or not hasattr(
            source, "network_input_shape_"
        ):
            raise NotFittedError(
                "The pretrained GlobalLocalPretrainer is not fitted: fit it on "
                "unlabelled volumes first (fine-tuning never fits it)."
            )
        return source

    def _geometry(self, source, sample_shape):
        """Network and slicing configuration for volumes of ``sample_shape``."""
        if source is not None:
            dims, channels = int(source.dims), tuple(source.channels)
            axis, normalize = source.slice_axis, source.normalize
            plane = tuple(source.network_input_shape_[-2:])
        else:
            dims, channels = int(self.dims), tuple(self.channels)
            axis, normalize = self.slice_axis, self.normalize
            plane = None if self.slice_size is None else (self.slice_size,) * 2
        multiple = 2 ** (len(channels) - 1)
        if len(channels) < 2:
            raise ValueError(f"channels must list at least 2 levels; got {channels!r}.")
        axis %= 3
        n_slices = sample_shape[1 + axis]
        if plane is None:
            plane = tuple(s for a, s in enumerate(sample_shape[1:]) if a != axis)
            what = f"slices of size {plane} (slice_size=None)"
        else:
            what = f"slice_size={plane[0]}"
        if any(s % multiple for s in plane):
            hint = multiple * max(1, round(plane[0] / multiple))
            raise ValueError(
                f"{what} is not a multiple of {multiple}, as the U-Net with "
                f"{len(channels)} encoder levels needs; set slice_size to a "
                f"multiple of {multiple} (e.g. {hint})."
            )
        size = plane
        if dims == 3:
            depth = self.volume_depth
            if depth is None:
                depth = multiple * math.ceil(n_slices / multiple)
            elif depth % multiple:
                raise ValueError(
                    f"volume_depth={depth} is not a multiple of {multiple}."
                )
            size = (depth, *plane)
        return {
            "dims": dims,
            "channels": channels,
            "slice_axis": axis,
            "input_size": size,
            "normalize": normalize,
        }

    # ------------------------------------------------------------ data

    def _volumes(self, X, *, reset):
        """Validated float32 volumes (n, C, D, H, W)."""
        ndim = getattr(X, "ndim", None)
        if ndim is None:
            ndim = np.asarray(X).ndim
        if ndim not in (4, 5):
            raise ValueError(
                "X must be an array of volumes (n, D, H, W) or (n, C, D, H, W); "
                f"got {ndim} dimension(s)."
            )
        return check_volumes(self, X, reset=reset)

    @staticmethod
    def _scale(X, normalize):
        if normalize != "percentile":
            return X
        scaler = PercentileScaling()
        return np.stack([scaler.apply(v)[0] for v in X])

    def _items(self, X, masks=None):
        """Network items: slices (2-D) or volumes with the slice axis first."""
        geo = self.geometry_
        return segmentation_items(X, masks, geo["slice_axis"], geo["dims"])

    def _resize(self, x, size, mode):
        if tuple(x.shape[2:]) == tuple(size):
            return x
        if mode == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        if x.ndim == 4:
            return resize_in_plane(x, size)
        return F.interpolate(x, size=size, mode="trilinear", align_corners=False)

    def _prepare(self, x):
        x = self._to_device(x).float()
        return self._resize(x, self.geometry_["input_size"], "linear")
