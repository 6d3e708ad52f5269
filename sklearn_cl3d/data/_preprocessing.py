"""Deterministic preprocessing of 3D volumes as scikit-learn transformers.

Each transformer works in two ways:

- ``apply(volume, affine)`` on **one** volume of shape ``(C, D, H, W)`` or
  ``(D, H, W)`` with its 4x4 voxel-to-world affine, returning the new volume
  and the updated affine. This is what :class:`~sklearn_cl3d.data.VolumeDataset`
  calls for every image it loads, so geometry-aware steps (reorientation,
  resampling) see the image's real affine.
- ``fit``/``transform`` on an **array** of volumes ``(n, D, H, W)`` or
  ``(n, C, D, H, W)``, so the steps drop into a :class:`~sklearn.pipeline.Pipeline`.
  Arrays carry no geometry: every volume is given the identity affine, i.e.
  1 mm isotropic voxels already in RAS orientation.

Axis convention: the spatial axes ``(D, H, W)`` are the voxel axes
``(i, j, k)`` of the image as nibabel returns them (``x, y, z``). After
:class:`ReorientToRAS`, axis 0 runs from Left to Right, axis 1 from Posterior
to Anterior and axis 2 from Inferior to Superior.

All the transformers are stateless: ``fit`` only validates the parameters and
returns ``self``.
"""

from __future__ import annotations

import math
from numbers import Integral

import numpy as np
from scipy import ndimage
from sklearn.pipeline import Pipeline

from ._preprocessing_base import (
    _check_affine,
    _check_real,
    _check_triple,
    _VolumeTransformer,
)

__all__ = [
    "ReorientToRAS",
    "Resample",
    "CropOrPad",
    "IntensityZScore",
    "HUWindow",
    "PreprocessingChain",
    "make_preprocessing",
]

_RAS = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)

# Resample and CropOrPad refuse output grids larger than this (per channel):
# 4 GiB of float32
_MAX_RESAMPLED_VOXELS = 2**30


# --------------------------------------------------------------------------
# transformers
# --------------------------------------------------------------------------
class ReorientToRAS(_VolumeTransformer):
    """Permute and flip the voxel axes so that they are closest to RAS.

    After this step, array axis 0 runs from Left to Right, axis 1 from
    Posterior to Anterior and axis 2 from Inferior to Superior, and the affine
    is updated accordingly. Voxels are only permuted/flipped, never
    interpolated, so an oblique acquisition stays oblique (its affine keeps
    the rotation, with axes matched to their closest RAS direction).

    Arrays passed to :meth:`transform` have the identity affine, which is
    already RAS: they are returned unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    >>> vol = np.arange(8.0).reshape(2, 2, 2)
    >>> out, affine = ReorientToRAS().apply(vol, lps)
    >>> affine.diagonal().tolist()
    [1.0, 1.0, 1.0, 1.0]
    >>> bool((out == vol[::-1, ::-1, :]).all())
    True
    """

    def _check_params(self):
        return {}

    def _apply(self, volume, affine, params):
        # imported here: nibabel is loaded only where it is used
        from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

        try:
            ornt = io_orientation(affine)
        except Exception as exc:  # nibabel's OrientationError and numpy's errors
            raise ValueError(
                f"ReorientToRAS: cannot find the orientation of the affine "
                f"{affine.tolist()} ({exc})."
            ) from exc
        if np.isnan(ornt).any():
            raise ValueError(
                "ReorientToRAS: the affine has a degenerate (zero or colinear) "
                f"voxel axis, so it has no orientation: {affine.tolist()}."
            )
        if np.array_equal(ornt, _RAS):
            return volume, affine
        out = np.stack([apply_orientation(channel, ornt) for channel in volume])
        affine = affine @ inv_ornt_aff(ornt, volume.shape[1:])
        return np.ascontiguousarray(out), affine


class Resample(_VolumeTransformer):
    """Resample to a given voxel size (mm) with spline interpolation.

    The output grid keeps the centre of the field of view: with ``n`` input
    voxels of size ``s`` along an axis, the output has
    ``max(1, round(n * s / spacing))`` voxels of size ``spacing``, and the two
    grids share their centre. The affine's columns are rescaled (directions
    are kept) and its translation updated. Values outside the input are
    extended from the nearest edge voxel. There is no anti-aliasing filter.

    Voxel sizes in a header can be wrong (e.g. 1e-6 mm), so a volume whose
    field of view along an axis of two or more voxels is smaller than one
    output voxel (it would collapse to a single voxel), or an output grid of
    more than 2**30 voxels per channel (4 GiB of float32), is refused with a
    :class:`ValueError` giving the sizes.

    Arrays passed to :meth:`transform` are taken to have 1 mm voxels.

    Parameters
    ----------
    spacing : float or tuple of 3 floats, default=(2.0, 2.0, 2.0)
        Output voxel size in mm along the voxel axes (D, H, W).
    order : int, default=1
        Spline order (0: nearest neighbour, 1: trilinear, up to 5).

    Examples
    --------
    >>> import numpy as np
    >>> out, affine = Resample(spacing=2.0).apply(np.ones((8, 6, 4)), np.eye(4))
    >>> out.shape
    (4, 3, 2)
    >>> affine.diagonal().tolist()
    [2.0, 2.0, 2.0, 1.0]
    """

    def __init__(self, spacing=(2.0, 2.0, 2.0), order=1):
        self.spacing = spacing
        self.order = order

    def _check_params(self):
        spacing = _check_triple(self.spacing, "spacing", "Resample", integer=False)
        order = self.order
        if not isinstance(order, Integral) or isinstance(order, bool):
            raise ValueError(
                f"Resample: `order` must be an int in [0, 5], got {order!r}."
            )
        if not 0 <= order <= 5:
            raise ValueError(
                f"Resample: `order` must be an int in [0, 5], got {order!r}."
            )
        return {"spacing": np.asarray(spacing), "order": int(order)}

    def _apply(self, volume, affine, params):
        old = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        if np.any(old == 0):
            raise ValueError("Resample: the affine has a zero-length voxel axis.")
        shape = np.asarray(volume.shape[1:])
        scale = params["spacing"] / old  # output step in input voxels
        exact = shape * old / params["spacing"]
        grid = (
            f"input shape {tuple(int(n) for n in shape)} with voxel sizes "
            f"{tuple(float(f'{v:.4g}') for v in old)} mm resampled to "
            f"{tuple(float(v) for v in params['spacing'])} mm"
        )
        if not np.isfinite(exact).all() or np.prod(exact) > _MAX_RESAMPLED_VOXELS:
            raise ValueError(
                f"Resample: {grid} would need about {np.prod(exact):.3g} voxels "
                f"per channel, more than {_MAX_RESAMPLED_VOXELS}; check the "
                "voxel sizes in the image header (its affine) or the spacing."
            )
        new_shape = np.maximum(1, np.round(exact)).astype(int)
        collapsed = (exact < 1) & (shape >= 2)  # field of view < one output voxel
        if collapsed.any():
            axis = int(np.flatnonzero(collapsed)[0])
            raise ValueError(
                f"Resample: {grid} gives shape {tuple(int(n) for n in new_shape)}: "
                f"along axis {axis} the image spans {shape[axis] * old[axis]:.3g} "
                f"mm, less than one output voxel, and would collapse to a single "
                "voxel; check the voxel sizes in the image header (its affine) "
                "or the spacing."
            )
        offset = (shape - 1) / 2 - scale * (new_shape - 1) / 2
        if np.array_equal(new_shape, shape) and np.allclose(scale, 1):
            return volume, affine
        out = np.stack(
            [
                ndimage.affine_transform(
                    channel,
                    scale,
                    offset=offset,
                    output_shape=tuple(new_shape),
                    order=params["order"],
                    mode="nearest",
                )
                for channel in volume
            ]
        )
        to_old = np.eye(4)
        to_old[:3, :3] = np.diag(scale)
        to_old[:3, 3] = offset
        return out, affine @ to_old


class CropOrPad(_VolumeTransformer):
    """Crop and/or pad to a fixed spatial shape.

    A window of ``shape`` voxels is cut out of the volume; where the window
    extends beyond the volume it is filled with ``pad_value``. The affine's
    translation is updated so that world coordinates of the kept voxels do not
    change.

    Parameters
    ----------
    shape : int or tuple of 3 ints
        Output spatial shape (D, H, W), at most 2**30 voxels.
    mode : {"center", "mask_bbox"}, default="center"
        ``"center"``: the window is centred on the volume (an odd surplus is
        split with the extra voxel after). ``"mask_bbox"``: the window is
        centred on the bounding box of the voxels greater than
        ``mask_threshold`` in any channel (e.g. the head in a brain scan);
        when no voxel passes the threshold, it falls back to ``"center"``.
    mask_threshold : float, default=0.0
        Threshold of the ``"mask_bbox"`` mode.
    pad_value : float, default=0.0
        Value of the padded voxels.

    Examples
    --------
    >>> import numpy as np
    >>> vol = np.zeros((10, 10, 10))
    >>> vol[1:4, 1:4, 1:4] = 1.0
    >>> out, _ = CropOrPad(6, mode="mask_bbox").apply(vol)
    >>> [int(i) for i in np.argwhere(out).mean(axis=0)]  # centre of the box
    [2, 2, 2]
    >>> CropOrPad((4, 12, 10)).apply(vol)[0].shape
    (4, 12, 10)
    """

    def __init__(self, shape, mode="center", mask_threshold=0.0, pad_value=0.0):
        self.shape = shape
        self.mode = mode
        self.mask_threshold = mask_threshold
        self.pad_value = pad_value

    def _check_params(self):
        shape = _check_triple(self.shape, "shape", "CropOrPad", integer=True)
        if math.prod(shape) > _MAX_RESAMPLED_VOXELS:
            raise ValueError(
                f"CropOrPad: `shape` {shape} has {math.prod(shape)} voxels, more "
                f"than the {_MAX_RESAMPLED_VOXELS} a volume may have per channel."
            )
        if self.mode not in ("center", "mask_bbox"):
            raise ValueError(
                f"CropOrPad: `mode` must be 'center' or 'mask_bbox', got {self.mode!r}."
            )
        return {
            "shape": np.asarray(shape),
            "threshold": _check_real(
                self.mask_threshold, "mask_threshold", "CropOrPad"
            ),
            "pad_value": _check_real(self.pad_value, "pad_value", "CropOrPad"),
        }

    def _apply(self, volume, affine, params):
        size = np.asarray(volume.shape[1:])
        target = params["shape"]
        start = (size - target) // 2
        if self.mode == "mask_bbox":
            hits = np.argwhere((volume > params["threshold"]).any(axis=0))
            if len(hits):
                centre = (hits.min(axis=0) + hits.max(axis=0)) / 2
                start = np.floor(centre - (target - 1) / 2 + 0.5).astype(int)
        out = np.full((volume.shape[0],) + tuple(target), params["pad_value"])
        out = out.astype(volume.dtype)
        lo = np.maximum(start, 0)
        hi = np.minimum(start + target, size)
        if np.all(hi > lo):
            src = tuple(slice(a, b) for a, b in zip(lo, hi))
            dst = tuple(slice(a, b) for a, b in zip(lo - start, hi - start))
            out[(slice(None),) + dst] = volume[(slice(None),) + src]
        shift = np.eye(4)
        shift[:3, 3] = start
        return out, affine @ shift


class IntensityZScore(_VolumeTransformer):
    """Z-score the intensities of each channel, with statistics from a mask.

    Parameters
    ----------
    mask : {"nonzero"} or None, default="nonzero"
        ``"nonzero"``: mean and standard deviation are computed over the
        non-zero voxels of each channel and only those voxels are rescaled;
        voxels outside the mask are zero and stay zero (background of a
        skull-stripped scan). None: the whole volume is used and rescaled.
        A constant region is only centred (its standard deviation is taken
        as 1); an empty mask leaves the channel unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> vol = np.zeros((4, 4, 4))
    >>> vol[1:3, 1:3, 1:3] = [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    >>> out, _ = IntensityZScore().apply(vol)
    >>> inside = out[1:3, 1:3, 1:3]
    >>> round(float(inside.mean()), 6), round(float(inside.std()), 6)
    (0.0, 1.0)
    >>> float(np.abs(out[0]).max())  # outside the mask: still 0
    0.0
    """

    def __init__(self, mask="nonzero"):
        self.mask = mask

    def _check_params(self):
        if self.mask is not None and (
            not isinstance(self.mask, str) or self.mask != "nonzero"
        ):
            raise ValueError(
                f"IntensityZScore: `mask` must be 'nonzero' or None, got {self.mask!r}."
            )
        return {}

    def _apply(self, volume, affine, params):
        out = volume.copy()
        for c, channel in enumerate(volume):
            inside = channel != 0 if self.mask == "nonzero" else None
            values = channel[inside] if inside is not None else channel
            if values.size == 0:
                continue
            mean = values.mean(dtype=np.float64)
            std = values.std(dtype=np.float64)
            std = std if std > 0 else 1.0
            if inside is None:
                out[c] = (channel - mean) / std
            else:
                out[c][inside] = (values - mean) / std
        return out, affine


class HUWindow(_VolumeTransformer):
    """Clip intensities to a window (e.g. CT Hounsfield units), then rescale.

    Parameters
    ----------
    low, high : float, default=-1000.0, 400.0
        Window bounds, ``low < high``.
    scale : bool, default=True
        Map the window linearly to [0, 1] after clipping.

    Examples
    --------
    >>> import numpy as np
    >>> out, _ = HUWindow(low=-1000, high=1000).apply(np.array([[[-2000, 0, 500]]]))
    >>> out.tolist()
    [[[0.0, 0.5, 0.75]]]
    """

    def __init__(self, low=-1000.0, high=400.0, scale=True):
        self.low = low
        self.high = high
        self.scale = scale

    def _check_params(self):
        low = _check_real(self.low, "low", "HUWindow")
        high = _check_real(self.high, "high", "HUWindow")
        if not low < high:
            raise ValueError(
                f"HUWindow: `low` must be smaller than `high`, got low={self.low!r} "
                f"and high={self.high!r}."
            )
        if not isinstance(self.scale, bool | np.bool_):
            raise ValueError(f"HUWindow: `scale` must be a bool, got {self.scale!r}.")
        return {"low": low, "high": high}

    def _apply(self, volume, affine, params):
        low, high = params["low"], params["high"]
        out = np.clip(volume, low, high)
        if self.scale:
            out = (out - low) / (high - low)
        return out.astype(volume.dtype, copy=False), affine


class PreprocessingChain(_VolumeTransformer):
    """Apply preprocessing steps one after the other.

    Parameters
    ----------
    steps : list of objects
        Each step has a method ``apply(volume, affine) -> (volume, affine)``,
        like the transformers of this module; the steps are applied in order,
        each receiving the affine returned by the previous one.

    Examples
    --------
    >>> import numpy as np
    >>> chain = PreprocessingChain([Resample(2.0), CropOrPad(3)])
    >>> chain.apply(np.ones((1, 8, 8, 8)), np.eye(4))[0].shape
    (1, 3, 3, 3)
    >>> chain.fit_transform(np.ones((2, 8, 8, 8))).shape
    (2, 3, 3, 3)
    """

    def __init__(self, steps):
        self.steps = steps

    def _check_params(self):
        if not isinstance(self.steps, list | tuple):
            raise ValueError(
                "PreprocessingChain: `steps` must be a list of preprocessing "
                f"steps, got {type(self.steps).__name__}."
            )
        for step in self.steps:
            if not callable(getattr(step, "apply", None)):
                raise ValueError(
                    "PreprocessingChain: every step must have a method "
                    f"apply(volume, affine) -> (volume, affine); got {step!r}."
                )
            if isinstance(step, _VolumeTransformer):
                step._check_params()
        return {}

    def _apply(self, volume, affine, params):
        for step in self.steps:
            volume, affine = step.apply(volume, affine)
            volume = np.asarray(volume)
            affine = _check_affine(affine)
        return volume, affine


def make_preprocessing(steps):
    """Build the preprocessing a dataset applies to each loaded volume.

    Parameters
    ----------
    steps : None, step, list of steps, Pipeline or PreprocessingChain
        A step is any object with a method
        ``apply(volume, affine) -> (volume, affine)``, such as
        :class:`ReorientToRAS`, :class:`Resample`, :class:`CropOrPad`,
        :class:`IntensityZScore` or :class:`HUWindow`. A
        :class:`~sklearn.pipeline.Pipeline` contributes its steps in order
        (``"passthrough"``/None steps are skipped).

    Returns
    -------
    PreprocessingChain or None
        None when there is nothing to do. The parameters of every step are
        validated here, so mistakes surface before any image is loaded.

    Raises
    ------
    ValueError
        If a step has no ``apply`` method or invalid parameters.

    Examples
    --------
    >>> from sklearn.pipeline import make_pipeline
    >>> make_preprocessing(None) is None
    True
    >>> chain = make_preprocessing(make_pipeline(ReorientToRAS(), CropOrPad(32)))
    >>> [type(s).__name__ for s in chain.steps]
    ['ReorientToRAS', 'CropOrPad']
    """
    if steps is None:
        return None
    if isinstance(steps, PreprocessingChain):
        chain = steps
    elif isinstance(steps, Pipeline):
        chain = PreprocessingChain(
            [est for _, est in steps.steps if est is not None and est != "passthrough"]
        )
    elif isinstance(steps, list | tuple):
        chain = PreprocessingChain(list(steps))
    elif callable(getattr(steps, "apply", None)):
        chain = PreprocessingChain([steps])
    else:
        raise ValueError(
            "preprocessing must be None, a preprocessing step (an object with "
            "apply(volume, affine)), a list of them or a Pipeline of them; got "
            f"{type(steps).__name__}."
        )
    chain._check_params()
    return chain if len(chain.steps) else None
