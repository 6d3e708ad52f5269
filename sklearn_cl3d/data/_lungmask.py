"""A per-subject lung mask of a chest CT in Hounsfield units: threshold,
connected components and slice-wise hole filling (:func:`segment_lungs`), and
the same as a volume transformer (:class:`LungMask`)."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from scipy import ndimage as ndi

from ._preprocessing_base import _check_real, _VolumeTransformer

__all__ = ["LungMask", "segment_lungs"]


def _planar(axis):
    """3x3x3 structure connecting the 4 in-plane neighbours of a voxel only."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    index = [slice(None)] * 3
    index[axis] = 1
    structure[tuple(index)] = ndi.generate_binary_structure(2, 1)
    return structure


def _check_params(
    threshold, n_components, min_fraction, slice_axis, fill_holes, label_sides
):
    threshold = _check_real(threshold, "threshold", "segment_lungs")
    if (
        isinstance(n_components, bool)
        or not isinstance(n_components, Integral)
        or n_components < 1
    ):
        raise ValueError(
            f"segment_lungs: `n_components` must be an int >= 1, got {n_components!r}."
        )
    if (
        isinstance(min_fraction, bool)
        or not isinstance(min_fraction, Real)
        or not 0.0 <= float(min_fraction) <= 1.0
    ):
        raise ValueError(
            "segment_lungs: `min_fraction` must be a number in [0, 1], got "
            f"{min_fraction!r}."
        )
    if slice_axis is not None and (
        isinstance(slice_axis, bool)
        or not isinstance(slice_axis, Integral)
        or slice_axis not in (0, 1, 2)
    ):
        raise ValueError(
            f"segment_lungs: `slice_axis` must be 0, 1, 2 or None, got {slice_axis!r}."
        )
    for name, value in (("fill_holes", fill_holes), ("label_sides", label_sides)):
        if not isinstance(value, bool | np.bool_):
            raise ValueError(f"segment_lungs: `{name}` must be a bool, got {value!r}.")
    return threshold, int(n_components), float(min_fraction)


def segment_lungs(
    volume,
    *,
    threshold=-320.0,
    n_components=2,
    min_fraction=0.1,
    slice_axis=2,
    fill_holes=True,
    label_sides=False,
):
    """Lung mask of a chest CT in Hounsfield units.

    1. Voxels below ``threshold`` HU are of low attenuation (air, lung).
    2. Their 6-connected components that touch the border of the volume
       **in the slice plane** (the faces of the two axes other than
       ``slice_axis``) are dropped: that is the air around the body. The
       faces along ``slice_axis`` (top and bottom of the field of view) do
       not count, so lungs cut by the field of view are kept.
    3. Of the remaining components, the ``n_components`` largest are kept,
       and among them only those with at least ``min_fraction`` of the
       largest one's voxels: two lungs, or one component when the lungs
       touch (small gas pockets and bowel gas are dropped).
    4. Holes (vessels, airway walls) are filled in every slice along
       ``slice_axis``.

    The trachea and main bronchi are air inside the body: where they are
    connected to the lungs they stay in the mask. The official DrasCLR code
    segments the lungs with the ``lungmask`` U-Net instead; this rule needs
    no model and is meant for scans whose body does not fill the whole
    in-plane field of view.

    Parameters
    ----------
    volume : array-like of shape (D, H, W) or (1, D, H, W)
        One CT volume in HU.
    threshold : float, default=-320.0
        HU below which a voxel may be lung.
    n_components : int, default=2
        Largest components kept (2: one per lung).
    min_fraction : float, default=0.1
        A kept component has at least this fraction of the voxels of the
        largest one.
    slice_axis : {0, 1, 2} or None, default=2
        The cranio-caudal axis (2 for volumes in RAS order, see
        :class:`ReorientToRAS`): components touching only its two end faces
        are kept, and holes are filled in its slices. None: a component
        touching any face is air outside the body, and holes are filled in
        3-D.
    fill_holes : bool, default=True
        Fill the holes of the mask (see above).
    label_sides : bool, default=False
        False: a boolean mask. True: an int8 label map with 1 for the lung
        with the smaller mean index along array axis 0 and 2 for the other
        (for a volume in RAS order, 1 is the patient's left lung). When the
        lungs form one component, it is split at its mean index along axis
        0.

    Returns
    -------
    mask : ndarray of shape (D, H, W)
        bool, or int8 labels 0/1/2 with ``label_sides=True``.

    Raises
    ------
    ValueError
        If ``volume`` is not one 3-D numeric volume, holds NaN or infinity,
        a parameter is invalid, or no lung is found (no low-attenuation
        component inside the body).

    Examples
    --------
    >>> import numpy as np
    >>> ct = np.full((12, 12, 8), -1000.0)     # air
    >>> ct[1:11, 1:11, :] = 40.0               # body, through the whole scan
    >>> ct[2:5, 3:9, 1:7] = -850.0             # one lung
    >>> ct[7:10, 3:9, 1:7] = -850.0            # the other
    >>> ct[3, 5, 3] = 40.0                     # a vessel
    >>> mask = segment_lungs(ct)
    >>> int(mask.sum()), bool(mask[3, 5, 3])
    (216, True)
    >>> np.unique(segment_lungs(ct, label_sides=True)[:, 5, 3]).tolist()
    [0, 1, 2]
    """
    threshold, n_components, min_fraction = _check_params(
        threshold, n_components, min_fraction, slice_axis, fill_holes, label_sides
    )
    arr = np.asarray(volume)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or arr.dtype.kind not in "biuf":
        raise ValueError(
            "segment_lungs: `volume` must be one numeric CT volume of shape "
            f"(D, H, W) or (1, D, H, W); got shape {arr.shape} and dtype "
            f"{arr.dtype}."
        )
    if not np.isfinite(arr).all():
        raise ValueError("segment_lungs: `volume` contains NaN or infinity.")
    labels, n = ndi.label(arr < threshold)
    border = np.zeros(n + 1, dtype=bool)
    for axis in range(3):
        if axis == slice_axis:
            continue
        for end in (0, -1):
            border[np.take(labels, end, axis=axis)] = True
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[border] = 0
    sizes[0] = 0  # not low attenuation
    order = np.argsort(-sizes, kind="stable")[:n_components]
    order = order[sizes[order] > 0]
    if not len(order):
        raise ValueError(
            f"segment_lungs: no lung found: no component below threshold="
            f"{threshold:g} HU that does not touch the in-plane border of the "
            f"volume (shape {arr.shape}, slice_axis={slice_axis}). Is `volume` in "
            "HU, with air around the body?"
        )
    order = order[sizes[order] >= min_fraction * sizes[order[0]]]
    mask = np.isin(labels, order)
    structure = None if slice_axis is None else _planar(slice_axis)
    if fill_holes:
        mask = ndi.binary_fill_holes(mask, structure=structure)
    if not label_sides:
        return mask
    out = np.zeros(mask.shape, dtype=np.int8)
    axis0 = np.arange(mask.shape[0])[:, None, None]
    if len(order) >= 2:
        # each lung is filled on its own, so a hole goes to its lung
        sides = []
        for lab in order[:2]:
            side = labels == lab
            if fill_holes:
                side = ndi.binary_fill_holes(side, structure=structure)
            sides.append(side)
        centres = [np.broadcast_to(axis0, s.shape)[s].mean() for s in sides]
        if centres[1] < centres[0]:
            sides.reverse()
        out[sides[0]] = 1
        out[sides[1] & ~sides[0]] = 2
    else:
        split = np.broadcast_to(axis0, mask.shape)[mask].mean()
        out[mask & (axis0 <= split)] = 1
        out[mask & (axis0 > split)] = 2
    return out


class LungMask(_VolumeTransformer):
    """Lung masks of chest CT volumes in HU (:func:`segment_lungs`).

    ``apply`` and ``transform`` return, per volume and channel, the mask as
    floats (0/1, or 0/1/2 with ``label_sides=True``); the affine is
    unchanged.

    Parameters
    ----------
    threshold, n_components, min_fraction, slice_axis, fill_holes, label_sides
        See :func:`segment_lungs`.

    Examples
    --------
    >>> import numpy as np
    >>> ct = np.full((1, 12, 12, 8), -1000.0)
    >>> ct[:, 1:11, 1:11, :] = 40.0
    >>> ct[:, 3:9, 3:9, 2:6] = -850.0
    >>> masks = LungMask().fit_transform(ct)
    >>> masks.shape, float(masks.sum())
    ((1, 12, 12, 8), 144.0)
    """

    def __init__(
        self,
        threshold=-320.0,
        n_components=2,
        min_fraction=0.1,
        slice_axis=2,
        fill_holes=True,
        label_sides=False,
    ):
        self.threshold = threshold
        self.n_components = n_components
        self.min_fraction = min_fraction
        self.slice_axis = slice_axis
        self.fill_holes = fill_holes
        self.label_sides = label_sides

    def _kwargs(self):
        return {
            "threshold": self.threshold,
            "n_components": self.n_components,
            "min_fraction": self.min_fraction,
            "slice_axis": self.slice_axis,
            "fill_holes": self.fill_holes,
            "label_sides": self.label_sides,
        }

    def _check_params(self):
        _check_params(
            self.threshold,
            self.n_components,
            self.min_fraction,
            self.slice_axis,
            self.fill_holes,
            self.label_sides,
        )
        return self._kwargs()

    def _apply(self, volume, affine, params):
        out = np.stack([segment_lungs(channel, **params) for channel in volume])
        return out.astype(volume.dtype), affine
