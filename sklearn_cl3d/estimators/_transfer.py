"""What a fine-tuner takes over from a pretrainer whose encoder does not read
a whole volume: how its inputs are built from the volumes.

A pretrainer that defines ``_finetune_encoder(pretrained, pooling)`` gives
:class:`~sklearn_cl3d.FineTunedClassifier` / ``FineTunedRegressor`` a
per-volume backbone (see :mod:`sklearn_cl3d.nn._pooled`) and, through
``_finetune_input()``, one of the input objects below, which turns the X of
``fit``/``predict`` into what that backbone reads. Input objects hold only
plain values (landmarks, a window, preprocessing steps), so a fitted
fine-tuner pickles without its pretrainer.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data import as_volume_dataset, check_volumes
from ..data._patches import VolumeSource, extract_patches

__all__ = ["LandmarkPatchInput", "ScaledVolumeInput"]


class ScaledVolumeInput:
    """Volumes with the pretrainer's per-volume scaling steps appended.

    Parameters
    ----------
    steps : list
        Preprocessing steps (``apply(volume, affine)``) run after the
        fine-tuner's own ``preprocessing`` when a volume is loaded, e.g.
        :class:`~sklearn_cl3d.estimators.PercentileScaling` for global-local.
    """

    def __init__(self, steps):
        self.steps = list(steps)

    def __repr__(self):
        return f"ScaledVolumeInput(steps={self.steps!r})"

    def load(self, estimator, X, *, reset):
        """A VolumeDataset of X, validated against ``estimator``."""
        if not estimator._lazy(X):
            # in-memory arrays: scaled once
            volumes = check_volumes(estimator, X, reset=reset)
            return as_volume_dataset(volumes, preprocessing=self.steps, cache=True)
        ds = estimator._as_dataset(X, None, reset=reset)
        steps = [] if ds.preprocessing is None else [ds.preprocessing]
        return as_volume_dataset(
            ds.X,
            preprocessing=[*steps, *self.steps],
            cache=estimator.cache or ds.cache,
            dtype=ds.dtype,
            expected_ndim=ds.expected_ndim,
        )


class _PatchStacks(torch.utils.data.Dataset):
    """Item ``i``: the (L, C, P, P, P) patch stack of volume ``i``, and 0."""

    def __init__(self, source, patch_input):
        self.source = source
        self.patch_input = patch_input

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        patches = self.patch_input.patches(self.source, i)
        return torch.from_numpy(patches), torch.Tensor([0])


class LandmarkPatchInput:
    """A subject's patches at fixed landmarks, windowed and scaled as DrasCLR.

    Every volume (in the atlas space of the landmarks) gives the stack of
    its ``L`` patches ``(L, C, P, P, P)``: clipped to ``window``, shifted by
    its low end and scaled to [-1, 1], as DrasCLR pretraining feeds them.

    Parameters
    ----------
    landmarks : ndarray of shape (L, 3)
        Corners of the patches (voxels of the atlas grid).
    patch_size : int
        Side ``P`` of the cubic patches.
    window : tuple of float
        Intensity window ``(low, high)`` (HU).
    n_channels : int
        Channels the encoder expects.
    """

    def __init__(self, landmarks, patch_size, window, n_channels):
        self.landmarks = np.asarray(landmarks)
        self.patch_size = int(patch_size)
        self.window = (float(window[0]), float(window[1]))
        self.n_channels = int(n_channels)

    def __repr__(self):
        return (
            f"LandmarkPatchInput(n_landmarks={len(self.landmarks)}, "
            f"patch_size={self.patch_size}, window={self.window})"
        )

    def patches(self, source, i):
        """Scaled float32 patch stack (L, C, P, P, P) of volume ``i``."""
        low, high = self.window
        volume = source.volume(i)
        if volume.shape[0] != self.n_channels:
            raise ValueError(
                f"{source.name(i)} has {volume.shape[0]} channel(s), but the "
                f"encoder expects {self.n_channels}."
            )
        try:
            patches = extract_patches(
                volume, self.landmarks, self.patch_size, outside="raise"
            )
        except ValueError as exc:
            raise ValueError(
                f"{source.name(i)}: {exc} (fine-tuning a DrasCLR encoder reads "
                "volumes in the atlas space of its landmarks)"
            ) from None
        np.clip(patches, low, high, out=patches)
        patches -= low
        patches /= (high - low) / 2
        patches -= 1.0
        return patches.astype(np.float32, copy=False)

    def load(self, estimator, X, *, reset):
        """A dataset of the patch stacks of X; sets ``input_shape_`` on reset."""
        source = VolumeSource(X, preprocessing=estimator.preprocessing)
        if len(source) == 0:
            raise ValueError("X holds no volume.")
        if reset:
            first = source.volume(0)
            estimator.input_shape_ = tuple(int(s) for s in first.shape)
            if hasattr(estimator, "n_features_in_"):
                del estimator.n_features_in_
        return _PatchStacks(source, self)
