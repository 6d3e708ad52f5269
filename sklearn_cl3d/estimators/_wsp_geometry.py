"""The slice geometry of :class:`~sklearn_cl3d.WSPPretrainer`: kept slices
and in-plane size of its volumes, the network's input shape and the checks
of tabular X."""

from __future__ import annotations

from numbers import Integral

from ..data._slices import central_slice_range
from ..nn import BACKBONES

__all__: list[str] = []


class _SliceGeometryMixin:
    """Input geometry of the WSP pretrainer (not for direct use)."""

    def _is_tabular(self):
        return len(self.input_shape_) == 1

    def _slice_geometry(self, sample_shape):
        """Kept-slice count and in-plane shape for volumes of ``sample_shape``."""
        axis = self.slice_axis % 3
        n_slices = sample_shape[1 + axis]
        try:
            start, stop = central_slice_range(n_slices, self.slice_fraction)
        except ValueError:
            raise ValueError(
                f"volumes of shape {tuple(sample_shape[1:])} have {n_slices} "
                f"slice(s) along slice_axis={self.slice_axis}; keeping the "
                f"central slice_fraction={self.slice_fraction} of them leaves no "
                "slice. Use volumes with more slices, another slice_axis or a "
                "larger slice_fraction."
            ) from None
        plane = tuple(s for a, s in enumerate(sample_shape[1:]) if a != axis)
        return stop - start, plane

    def _check_tabular_setup(self, shape):
        """2-D X (tabular rows as slices) needs the MLP and no image views."""
        image_backbone = isinstance(self.backbone, str) and self.backbone != "mlp"
        image_views = isinstance(self.augmentation, str) and self.augmentation != "none"
        if not (image_backbone or image_views):
            return
        settings = []
        if image_backbone:
            settings.append(f"backbone={self.backbone!r}")
        if image_views:
            settings.append(f"augmentation={self.augmentation!r}")
        raise ValueError(
            f"{type(self).__name__} trains on the 2-D slices of volumes: X must "
            "be volumes of shape (n, D, H, W) or (n, C, D, H, W), or a list of "
            f"image files; got 2-D X with rows of {shape[0]} features. 2-D X "
            "is taken as tabular rows (one slice each), which needs "
            "backbone='mlp' and augmentation='none' (or a callable), not "
            f"{' and '.join(settings)}."
        )

    def _network_input_shape(self):
        shape = tuple(self.input_shape_)
        if len(shape) == 1:
            self._check_tabular_setup(shape)
            return shape
        _, plane = self._slice_geometry(shape)
        size = plane if self.slice_size is None else (self.slice_size,) * 2
        builder = (
            BACKBONES.get(self.backbone)
            if isinstance(self.backbone, str)
            else (self.backbone)
        )
        minimum = getattr(builder, "min_input_size", None)
        if isinstance(minimum, Integral) and min(size) < minimum:
            what = (
                f"slice_size={self.slice_size}"
                if self.slice_size is not None
                else f"slice_size=None keeps slices of size {plane}, and it"
            )
            raise ValueError(
                f"{what} is below the minimum input size {minimum}x{minimum} of "
                f"backbone {self.backbone!r}; use slice_size >= {minimum} or "
                "backbone='resnet18'."
            )
        return (shape[0], *size)
