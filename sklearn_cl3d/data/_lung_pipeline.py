"""DrasCLR's per-subject preprocessing: a raw chest CT to the resampled,
padded and clipped volume the patches are cut from, with the atlas-to-volume
voxel map of its lung mask's affine registration to the atlas mask."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np

from ._io import is_volume_source, load_volume
from ._lungmask import segment_lungs
from ._preprocessing import CropOrPad, HUWindow, Resample
from ._registration import register_affine

__all__ = ["prepare_lung_ct"]


def _load(source, affine, name, affine_name):
    """One volume as (D, H, W) float32 with its voxel-to-world affine."""
    if is_volume_source(source):
        if affine is not None:
            raise ValueError(
                f"prepare_lung_ct: `{affine_name}` is only for arrays; {name} is a "
                "file or an image, whose own affine is used."
            )
        volume, affine = load_volume(source, expected_ndim=3)
    else:
        try:
            volume, _ = load_volume(source, expected_ndim=3)
        except ValueError as exc:
            raise ValueError(f"prepare_lung_ct: `{name}`: {exc}") from None
        if affine is not None:
            affine = np.asarray(affine, dtype=np.float64)
            if affine.shape != (4, 4) or not np.isfinite(affine).all():
                raise ValueError(
                    f"prepare_lung_ct: `{affine_name}` must be a finite (4, 4) "
                    f"array or None; got shape {affine.shape}."
                )
        else:
            affine = np.eye(4)
    if volume.shape[0] != 1:
        raise ValueError(
            f"prepare_lung_ct: `{name}` must be one volume (one channel); got "
            f"{volume.shape[0]} channels."
        )
    return volume[0], affine


def _check_args(pad, window, registration_spacing):
    def positive(value):
        return (
            isinstance(value, Real)
            and not isinstance(value, bool)
            and np.isfinite(value)
            and value > 0
        )

    if isinstance(pad, bool) or not isinstance(pad, Integral) or pad < 0:
        raise ValueError(f"prepare_lung_ct: `pad` must be an int >= 0; got {pad!r}.")
    try:
        low, high = (float(v) for v in window)
    except (TypeError, ValueError):
        low = high = None
    if low is None or not np.isfinite([low, high]).all() or not low < high:
        raise ValueError(
            "prepare_lung_ct: `window` must be two finite numbers (low, high) "
            f"with low < high; got {window!r}."
        )
    if registration_spacing is not None and not positive(registration_spacing):
        raise ValueError(
            "prepare_lung_ct: `registration_spacing` must be a positive number "
            f"(mm) or None; got {registration_spacing!r}."
        )
    return int(pad), low, high


def prepare_lung_ct(
    ct,
    atlas_mask,
    *,
    ct_affine=None,
    atlas_affine=None,
    spacing=1.0,
    pad=60,
    window=(-1024.0, 240.0),
    lung_mask=None,
    threshold=-320.0,
    slice_axis=2,
    registration_spacing=None,
    shrink_factors=(4, 2, 1),
    smoothing_sigmas=(2.0, 1.0, 0.0),
    iterations=(100, 50, 25),
    metric="mse",
):
    """A raw chest CT -> DrasCLR's padded volume and atlas-to-volume map.

    The per-subject steps of the official DrasCLR preprocessing, built from
    the library's transformers:

    1. resample the CT to ``spacing`` mm voxels with cubic B-splines
       (:class:`Resample`, ``order=3``) and clip it to ``window`` HU
       (:class:`HUWindow` without rescaling);
    2. segment the lungs of that volume (:func:`segment_lungs`), unless
       ``lung_mask`` is given (on the grid of ``ct``; it is resampled with
       nearest neighbours);
    3. pad the volume by ``pad`` voxels of ``window[0]`` (air) on every side
       and the mask by ``pad`` zeros (:class:`CropOrPad`);
    4. register the lung mask (moving) affinely to ``atlas_mask`` (fixed) in
       world space (:func:`register_affine`).

    The result feeds :class:`~sklearn_cl3d.DrasCLREncoder`: collect the
    volumes in a list and the maps in an array,
    ``DrasCLREncoder(landmarks=corners).fit(volumes, affines=maps)``, with
    ``corners`` in atlas voxel indices. Each atlas corner is mapped to a
    voxel of the returned volume and the patch is cut there along the
    volume's own axes (:func:`map_corners`, :func:`extract_patches`).

    Differences from the official code: the lung mask is a threshold rule
    (the official code runs the ``lungmask`` U-Net); the registration fits
    the binary masks by a mean squared difference or soft Dice (the official
    code runs ANTs with mutual information on the lungs labelled 50/100);
    the resampled grid keeps the centre of the field of view with
    ``round(n * s / spacing)`` voxels per axis, and the B-spline values at
    the edges extend the nearest voxel before the air padding.

    Parameters
    ----------
    ct : array-like of shape (D, H, W) or (1, D, H, W), path or nibabel image
        The raw CT in HU.
    atlas_mask : array-like of shape (D', H', W'), path or nibabel image
        The atlas lung mask (nonzero inside the lungs), e.g. the official
        ``atlas_lung_mask.nii.gz``.
    ct_affine, atlas_affine : array-like of shape (4, 4), default=None
        Voxel-to-world affines of array inputs (None: the identity, 1 mm
        voxels). Files and images bring their own; passing one with them is
        an error.
    spacing : float or tuple of 3 floats, default=1.0
        Voxel size (mm) of the returned volume (official: 1 mm).
    pad : int, default=60
        Voxels of air added on every side (official: 60).
    window : tuple of 2 floats, default=(-1024.0, 240.0)
        HU clipping window (official: [-1024, 240]); ``window[0]`` fills the
        padding.
    lung_mask : array-like, path or nibabel image, default=None
        The subject's lung mask on the grid of ``ct`` (e.g. from lungmask);
        None: :func:`segment_lungs`.
    threshold : float, default=-320.0
        :func:`segment_lungs` threshold (HU).
    slice_axis : {0, 1, 2} or None, default=2
        :func:`segment_lungs` cranio-caudal axis of ``ct``.
    registration_spacing : float or None, default=None
        Register masks resampled (trilinearly) to this voxel size (mm),
        e.g. 2.0 to make a 1 mm registration several times cheaper; None:
        the masks as they are. The returned map is for the full-resolution
        grids either way.
    shrink_factors, smoothing_sigmas, iterations, metric
        Passed to :func:`register_affine`.

    Returns
    -------
    volume : ndarray of float32, shape (1, D'', H'', W'')
        The resampled, clipped and padded CT (HU).
    affine : ndarray of float64, shape (4, 4)
        Maps an atlas voxel index to a voxel index of ``volume``.

    Raises
    ------
    ValueError
        If an input is not one 3-D volume, an affine is given with a file, a
        parameter is invalid, ``lung_mask`` is not on the grid of ``ct``, or
        no lung is found.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_cl3d.data import prepare_lung_ct, segment_lungs
    >>> ct = np.full((24, 24, 20), -1000.0)
    >>> ct[2:22, 2:22, :] = 40.0                        # body
    >>> ct[5:11, 6:18, 3:17] = ct[13:19, 6:18, 3:17] = -850.0  # lungs
    >>> atlas = segment_lungs(ct)  # here the atlas is the subject itself
    >>> volume, affine = prepare_lung_ct(
    ...     ct, atlas, ct_affine=np.diag([2.0, 2.0, 2.0, 1.0]),
    ...     atlas_affine=np.diag([2.0, 2.0, 2.0, 1.0]), spacing=2.0, pad=3)
    >>> volume.shape
    (1, 30, 30, 26)
    >>> np.round(affine[:3, 3]).tolist()  # the atlas grid, 3 voxels in
    [3.0, 3.0, 3.0]
    """
    pad, low, high = _check_args(pad, window, registration_spacing)
    volume, affine = _load(ct, ct_affine, "ct", "ct_affine")
    atlas, atlas_affine = _load(atlas_mask, atlas_affine, "atlas_mask", "atlas_affine")
    raw_shape = volume.shape
    resample = Resample(spacing=spacing, order=3)
    volume, new_affine = resample.apply(volume, affine)
    volume, _ = HUWindow(low=low, high=high, scale=False).apply(volume, new_affine)
    if lung_mask is None:
        mask = segment_lungs(volume, threshold=threshold, slice_axis=slice_axis)
    else:
        mask, _ = _load(lung_mask, None, "lung_mask", "lung_mask")
        if mask.shape != raw_shape:
            raise ValueError(
                f"prepare_lung_ct: `lung_mask` must be on the grid of `ct`; got "
                f"shape {mask.shape} for a CT of shape {raw_shape}."
            )
        if not mask.any():
            raise ValueError("prepare_lung_ct: `lung_mask` has no nonzero voxel.")
        mask, _ = Resample(spacing=spacing, order=0).apply(mask != 0, affine)
    shape = tuple(int(n) + 2 * pad for n in volume.shape)
    volume, out_affine = CropOrPad(shape, pad_value=low).apply(volume, new_affine)
    mask, _ = CropOrPad(shape, pad_value=0.0).apply(mask.astype(np.float32))
    moving, moving_affine = mask, out_affine
    fixed = (atlas != 0).astype(np.float32)
    fixed_affine = atlas_affine
    if registration_spacing is not None:
        coarse = Resample(spacing=registration_spacing, order=1)
        moving, moving_affine = coarse.apply(moving, moving_affine)
        fixed, fixed_affine = coarse.apply(fixed, fixed_affine)
        moving, fixed = moving > 0.5, fixed > 0.5
    index_map = register_affine(
        moving,
        fixed,
        moving_affine=moving_affine,
        fixed_affine=fixed_affine,
        shrink_factors=shrink_factors,
        smoothing_sigmas=smoothing_sigmas,
        iterations=iterations,
        metric=metric,
    )
    # back to the full-resolution grids: atlas index -> padded volume index
    world = moving_affine @ index_map @ np.linalg.inv(fixed_affine)
    index_map = np.linalg.inv(out_affine) @ world @ atlas_affine
    return volume[None].astype(np.float32, copy=False), index_map
