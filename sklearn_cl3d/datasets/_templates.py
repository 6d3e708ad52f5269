"""Template bank of the synthetic brain cohort.

The bank is built once per resolution (and cached in-process) from the
ICBM152 2009a symmetric templates that ship inside nilearn: the T1 image, the
grey- and white-matter probability maps and the brain mask, all at 2 mm.
Nothing is downloaded.

From these it derives a CSF map, a ventricle map, the "texture" left over
when T1 is explained by the three tissue maps, and the normalised gradient of
a smoothed ventricle map (the direction along which ventricles grow with
atrophy). Everything is then block-averaged to the requested resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

__all__ = ["TemplateBank", "brain_template_bank"]

#: Ventricle voxels must lie at least this deep inside the brain (mm).
VENTRICLE_DEPTH_MM = 14.0
#: Number of connected CSF components kept as ventricles.
N_VENTRICLE_COMPONENTS = 3
#: Gaussian smoothing (sigma, mm) of the ventricle map before its gradient.
VENTRICLE_SMOOTH_MM = 4.0
#: Extra voxels around the brain mask in which subjects are interpolated.
_MASK_MARGIN_VOXELS = 2


@dataclass(frozen=True)
class TemplateBank:
    """Read-only arrays shared by all subjects at one resolution.

    Attributes
    ----------
    resolution : int
        Voxel size in mm (isotropic).
    shape : tuple of int
        Grid shape ``(D, H, W)`` (RAS axis order of the MNI templates).
    affine : ndarray of shape (4, 4)
        Voxel-to-world (MNI mm) affine of the grid.
    maps : ndarray of shape (6, D, H, W), float32
        Grey matter, white matter, CSF, T1 texture residual, ventricles and
        brain mask, as partial-volume fractions (the residual in T1 units).
    wm_coef : float
        T1 intensity of pure white matter in the least-squares fit; dividing
        the residual by it expresses texture relative to white matter.
    push : ndarray of shape (3, D, H, W), float32
        Unit-maximum gradient of the smoothed ventricle map (points towards
        the ventricles).
    push_lipschitz : float
        Largest norm (1/mm) of the Jacobian of ``push``; bounds the step of
        the flow that enlarges the ventricles so that it cannot fold.
    band : ndarray of bool, shape (D, H, W)
        Voxels where ``push`` is not negligible.
    support : ndarray of bool, shape (D, H, W)
        Brain mask dilated by two voxels: sampling points outside it read
        zeros from every map.
    center_mm : ndarray of shape (3,)
        Centre of mass of the brain, in grid millimetres (voxel index times
        resolution), used as the centre of rotations and scalings.
    grid_mm : ndarray of shape (3, D * H * W), float32
        Grid-millimetre coordinates of every voxel (C order).
    """

    resolution: int
    shape: tuple
    affine: np.ndarray
    maps: np.ndarray
    wm_coef: float
    push: np.ndarray
    push_lipschitz: float
    band: np.ndarray
    support: np.ndarray
    center_mm: np.ndarray
    grid_mm: np.ndarray


def block_average(volume, factor):
    """Average non-overlapping ``factor``-cubed blocks, zero-padding the end.

    Parameters
    ----------
    volume : ndarray of shape (D, H, W)
        Input volume.
    factor : int
        Block edge in voxels.

    Returns
    -------
    ndarray of shape (ceil(D / factor), ceil(H / factor), ceil(W / factor))
        Block means (padded voxels count as zeros).

    Examples
    --------
    >>> import numpy as np
    >>> block_average(np.ones((3, 4, 5)), 2).shape
    (2, 2, 3)
    """
    volume = np.asarray(volume, dtype=np.float64)
    if factor == 1:
        return volume.copy()
    pad = [(0, (-s) % factor) for s in volume.shape]
    padded = np.pad(volume, pad)
    d, h, w = (s // factor for s in padded.shape)
    blocks = padded.reshape(d, factor, h, factor, w, factor)
    return blocks.mean(axis=(1, 3, 5))


def _load_mni152_2mm():
    """The nilearn ICBM152 2009a templates at 2 mm, and their affine."""
    try:
        from nilearn import datasets as nl_datasets
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "make_brain_cohort builds its anatomy from the MNI152 templates "
            "shipped with nilearn, which is not installed. Install it with "
            "`pip install 'sklearn-cl3d[cohorts]'` (or `pip install nilearn`)."
        ) from exc
    loaders = (
        nl_datasets.load_mni152_template,
        nl_datasets.load_mni152_gm_template,
        nl_datasets.load_mni152_wm_template,
        nl_datasets.load_mni152_brain_mask,
    )
    images = [load(resolution=2) for load in loaders]
    t1, gm, wm, mask = (np.asarray(img.get_fdata(), dtype=np.float64) for img in images)
    return t1, gm, wm, mask, np.asarray(images[0].affine, dtype=np.float64)


def _ventricles(csf, mask, voxel_mm):
    """Deep CSF: CSF > 0.5, deep inside the brain, largest components."""
    depth = ndi.distance_transform_edt(mask, sampling=voxel_mm)
    candidates = (csf > 0.5) & (depth >= VENTRICLE_DEPTH_MM)
    labels, n_labels = ndi.label(candidates)
    if n_labels == 0:  # pragma: no cover - the templates always have some
        return np.zeros(csf.shape)
    sizes = ndi.sum_labels(candidates, labels, index=np.arange(1, n_labels + 1))
    keep = np.argsort(sizes)[::-1][:N_VENTRICLE_COMPONENTS] + 1
    return np.isin(labels, keep).astype(np.float64)


def _build_bank(resolution):
    t1, gm, wm, mask, affine_2mm = _load_mni152_2mm()
    mask = mask > 0.5
    gm = np.clip(gm, 0.0, 1.0) * mask
    wm = np.clip(wm, 0.0, 1.0) * mask
    total = gm + wm
    over = total > 1.0
    gm[over] /= total[over]
    wm[over] /= total[over]
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    ventricles = _ventricles(csf, mask, 2.0)

    # T1 ~ a * CSF + b * GM + c * WM inside the mask; the residual is texture.
    design = np.stack([csf[mask], gm[mask], wm[mask]], axis=1)
    coef, *_ = np.linalg.lstsq(design, t1[mask], rcond=None)
    residual = np.zeros_like(t1)
    residual[mask] = t1[mask] - design @ coef

    factor = resolution // 2
    maps = np.stack(
        [
            block_average(m, factor)
            for m in (gm, wm, csf, residual, ventricles, mask.astype(np.float64))
        ]
    )
    affine = affine_2mm.copy()
    affine[:3, :3] *= factor
    # The centre of a block of `factor` 2-mm voxels.
    affine[:3, 3] += affine_2mm[:3, :3] @ np.full(3, (factor - 1) / 2.0)
    shape = maps.shape[1:]
    r = float(resolution)

    # The push field is built at 2 mm and block-averaged like the maps, so
    # that ventricles grow by the same amount at every resolution.
    smooth = ndi.gaussian_filter(ventricles, VENTRICLE_SMOOTH_MM / 2.0)
    grad = np.stack(np.gradient(smooth, 2.0))
    grad /= np.sqrt((grad**2).sum(axis=0)).max()
    push = np.stack([block_average(g, factor) for g in grad])
    jac = np.stack([np.stack(np.gradient(p, r)) for p in push])
    lipschitz = float(np.sqrt((jac**2).sum(axis=(0, 1))).max())
    band = ndi.binary_dilation(np.sqrt((push**2).sum(axis=0)) > 1e-3)

    brain = maps[5] > 0
    support = ndi.binary_dilation(brain, iterations=_MASK_MARGIN_VOXELS)
    idx = np.indices(shape, dtype=np.float64)
    center_mm = np.array([(idx[k] * maps[5]).sum() for k in range(3)])
    center_mm *= r / maps[5].sum()
    grid_mm = (idx.reshape(3, -1) * r).astype(np.float32)

    arrays = {
        "maps": maps.astype(np.float32),
        "push": push.astype(np.float32),
        "band": band,
        "support": support,
        "center_mm": center_mm,
        "grid_mm": grid_mm,
        "affine": affine,
    }
    for value in arrays.values():
        value.setflags(write=False)
    return TemplateBank(
        resolution=int(resolution),
        shape=tuple(int(s) for s in shape),
        wm_coef=float(coef[2]),
        push_lipschitz=lipschitz,
        **arrays,
    )


@lru_cache(maxsize=2)
def brain_template_bank(resolution):
    """The cached :class:`TemplateBank` at ``resolution`` (2 or 4 mm).

    Parameters
    ----------
    resolution : {2, 4}
        Voxel size in mm.

    Returns
    -------
    TemplateBank
        Read-only template arrays; built on the first call (a few seconds),
        then served from an in-process cache.

    Examples
    --------
    >>> bank = brain_template_bank(4)
    >>> bank.shape
    (50, 59, 48)
    """
    if resolution not in (2, 4):
        raise ValueError(f"resolution must be 2 or 4 (mm); got {resolution!r}.")
    return _build_bank(resolution)
