"""Data of :class:`~sklearn_cl3d.DrasCLREncoder`: the landmarks fitted on
the volumes, the bank of window-shifted patches at them, the location-major
training iterator and the patch input handed to fine-tuning."""

from __future__ import annotations

import torch

from ..data._atlas import fit_landmarks
from ..data._landmarks import routing_locations as _locations
from ..data._patches import (
    LandmarkPatchDataset,
    LocationMajorBatchSampler,
    VolumeSource,
    check_affines,
    patch_bank,
    window_patches,
)
from ._transfer import LandmarkPatchInput

__all__ = []


class DrasCLRDataMixin:
    """Landmarks, patches, iterator and fine-tuning input of the estimator."""

    # ------------------------------------------------------------ data

    def _lazy(self, X):
        return True

    def _metadata(self, n_samples, y, fit_params):
        self.__dict__["_affines"] = fit_params.pop("affines", None)
        return None

    def _subject_patches(self, source, i, landmarks, affines, n_channels=None):
        """Clipped, window-shifted patches (L, C, P, P, P) of volume ``i``."""
        return window_patches(
            source, i, landmarks, self.patch_size, self._window(), affines, n_channels
        )

    def _as_dataset(self, X, y, *, reset):
        source = VolumeSource(X, preprocessing=self.preprocessing)
        n = len(source)
        if n < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 volumes (BatchNorm and the "
                f"contrast are over subjects); got {n}."
            )
        affines = check_affines(self.__dict__.get("_affines"), n)
        if reset:
            landmarks, neighbors, atlas_shape = fit_landmarks(
                source,
                affines,
                landmarks=self.landmarks,
                atlas_mask=self.atlas_mask,
                patch_size=self.patch_size,
                stride=self.landmark_stride,
                min_fraction=self.landmark_min_fraction,
                n_neighbors=self.n_neighbors,
                stacklevel=4,
            )
            n_channels = None
        else:
            landmarks, neighbors = self.landmarks_, self.neighbors_
            n_channels = self.input_shape_[0]
        bank = patch_bank(
            source, landmarks, self.patch_size, self._window(), affines, n_channels
        )
        if reset:
            self.landmarks_ = landmarks
            self.neighbors_ = neighbors
            self.locations_ = _locations(landmarks)
            self.n_landmarks_ = len(landmarks)
            self.atlas_shape_ = atlas_shape
            self.input_shape_ = tuple(int(s) for s in bank.shape[2:])
            if hasattr(self, "n_features_in_"):
                del self.n_features_in_
        return LandmarkPatchDataset(bank, neighbors)

    def get_dataset(self, X, y=None):
        if isinstance(X, torch.utils.data.Dataset):
            return X
        return super().get_dataset(X, y)

    def get_iterator(self, dataset, training=False):
        if not (training and isinstance(dataset, LandmarkPatchDataset)):
            return super().get_iterator(dataset, training=training)
        kwargs = self.get_params_for("iterator_train")
        for key in ("batch_size", "shuffle", "drop_last", "sampler"):
            kwargs.pop(key, None)
        sampler = LocationMajorBatchSampler(
            dataset.n_landmarks, dataset.n_subjects, self.batch_size
        )
        if self.device is not None and torch.device(self.device).type == "cuda":
            kwargs.setdefault("pin_memory", True)
        return self.iterator_train(dataset, batch_sampler=sampler, **kwargs)

    # ------------------------------------------------------ fine-tuning

    def _finetune_input(self):
        """How the fine-tuner builds the landmark patches of a volume."""
        return LandmarkPatchInput(
            self.landmarks_, self.patch_size, self._window(), self.input_shape_[0]
        )
