"""The generative model of :func:`~sklearn_cl3d.datasets.make_brain_cohort`:
acquisition sites, per-subject ageing and transform parameters, and the
image of one subject (deformed, atrophied and re-imaged template)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = []

AGE_RANGE = (20.0, 85.0)
#: Ventricle walls move outwards by up to this many mm times the atrophy.
VENTRICLE_PUSH_MM = 6.0
#: Atrophy used by the image model is capped here (brain age ~ 115 y) so the
#: tissue formulas stay meaningful for extreme draws; the returned atrophy is
#: not capped.
MAX_IMAGE_ATROPHY = 2.0
DEFORMATION_SPACING_MM = 25.0
BIAS_SPACING_MM = 60.0
_FWHM_TO_SIGMA = 1.0 / np.sqrt(8.0 * np.log(2.0))


@dataclass(frozen=True)
class _Site:
    """Acquisition and recruitment parameters of one site."""

    age_beta: tuple  # Beta(a, b) shape of the age mix over AGE_RANGE
    tissue_means: tuple  # CSF, GM, WM intensity (WM = 1)
    blur_fwhm_mm: float
    bias_strength: float
    noise: float  # Rician noise std as a fraction of the WM intensity
    gain: float


_BASE_SITES = (
    _Site((2.0, 2.0), (0.12, 0.52, 1.0), 0.5, 0.10, 0.02, 1.0),
    _Site((1.3, 3.2), (0.20, 0.58, 1.0), 1.0, 0.15, 0.03, 0.05),  # younger
    _Site((3.2, 1.3), (0.08, 0.45, 1.0), 0.0, 0.20, 0.04, 1200.0),  # older
    _Site((1.2, 1.2), (0.25, 0.62, 1.0), 1.5, 0.25, 0.05, 40.0),
)


def _site_table(n_sites):
    """The first ``n_sites`` sites; sites beyond four are drawn from a fixed
    seed, so they are the same in every call."""
    sites = list(_BASE_SITES[:n_sites])
    rng = np.random.RandomState(20_240_501)
    for _ in range(len(_BASE_SITES), n_sites):
        sites.append(
            _Site(
                age_beta=tuple(rng.uniform(1.2, 3.5, size=2)),
                tissue_means=(rng.uniform(0.05, 0.30), rng.uniform(0.42, 0.65), 1.0),
                blur_fwhm_mm=float(rng.uniform(0.0, 1.5)),
                bias_strength=float(rng.uniform(0.10, 0.25)),
                noise=float(rng.uniform(0.02, 0.05)),
                gain=float(np.exp(rng.uniform(np.log(0.05), np.log(1200.0)))),
            )
        )
    return sites


def _linear_resize(array, n_out, axis):
    """Linear interpolation of ``array`` to ``n_out`` samples along ``axis``,
    end points aligned (as ``scipy.ndimage.zoom`` with ``order=1``)."""
    n_in = array.shape[axis]
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    low = np.minimum(np.floor(pos).astype(np.intp), n_in - 2)
    frac_shape = [1] * array.ndim
    frac_shape[axis] = n_out
    frac = (pos - low).reshape(frac_shape)
    lower = np.take(array, low, axis=axis)
    upper = np.take(array, low + 1, axis=axis)
    return lower + frac * (upper - lower)


def _smooth_field(rng, shape, resolution, spacing_mm, n_fields, normalize=False):
    """Smooth random fields: N(0, 1) control points every ``spacing_mm``,
    cubic zoom to a quarter-resolution grid, then linear zoom to ``shape``.

    With ``normalize``, each field is centred and scaled to a maximum
    absolute value of 1.
    """
    shape = np.asarray(shape)
    coarse = np.ceil(shape * resolution / spacing_mm).astype(int) + 1
    quarter = np.maximum(np.ceil(shape / 4.0).astype(int), 2)
    out = np.empty((n_fields, *shape), dtype=np.float32)
    for k in range(n_fields):
        ctrl = rng.standard_normal(tuple(coarse))
        mid = ndi.zoom(ctrl, quarter / coarse, order=3, mode="nearest")
        for axis in range(3):  # separable linear zoom
            mid = _linear_resize(mid, int(shape[axis]), axis)
        out[k] = mid
        if normalize:
            out[k] -= out[k].mean()
            out[k] /= max(float(np.abs(out[k]).max()), 1e-12)
    return out


def _sample(volume, coords):
    return ndi.map_coordinates(
        volume, coords, order=1, mode="constant", cval=0.0, prefilter=False
    )


def _enlarge_ventricles(bank, coords, push_mm):
    """Move sampling points (voxel units, modified in place) along the flow
    of the ventricle-map gradient for a total of ``push_mm`` mm.

    Small steps keep every step a diffeomorphism (step x Lipschitz < 0.5), so
    the composed map cannot fold however large the push.
    """
    if push_mm <= 0:
        return coords
    r = bank.resolution
    nearest = np.clip(np.rint(coords).astype(np.intp).T, 0, np.asarray(bank.shape) - 1)
    moving = bank.band[tuple(nearest.T)]
    if not moving.any():
        return coords
    pts = coords[:, moving]
    n_steps = max(1, int(np.ceil(push_mm * bank.push_lipschitz / 0.5)))
    step = push_mm / n_steps / r
    for _ in range(n_steps):
        velocity = np.stack([_sample(p, pts) for p in bank.push])
        pts += step * velocity
    coords[:, moving] = pts
    return coords


def _subject(bank, site, params, deformation_mm, rng, modality="T1w", labels=False):
    """One subject: image (float32, bank.shape) and true tissue volumes.

    With ``labels``, also the tissue fractions (float32, shape
    ``(4, *bank.shape)``: background, CSF, GM, WM; background is 1 outside
    the brain mask), computed without any extra random draw.

    With ``modality="GM"`` the image is the subject's grey-matter fraction
    (after atrophy, in the subject's space, skull-stripped), with no site
    effect: what a perfect tissue segmentation of the T1 image would give.
    The random draws are the same for both modalities.
    """
    r = float(bank.resolution)
    shape = bank.shape
    n_vox = int(np.prod(shape))
    atrophy = min(params["atrophy"], MAX_IMAGE_ATROPHY)

    # Sampling chain, from the subject's grid back into template space:
    # random smooth deformation, then the inverse global similarity.
    coords = np.array(bank.grid_mm, dtype=np.float64)
    if deformation_mm > 0:
        field = _smooth_field(rng, shape, r, DEFORMATION_SPACING_MM, n_fields=3)
        coords += deformation_mm * field.reshape(3, -1)
    center = bank.center_mm[:, None]
    rot = params["rotation"]  # subject = center + s R (template - center) + t
    offset = rot.T @ (coords - center - params["shift"][:, None])
    coords = (center + offset / params["scale"]) / r  # template voxel units

    nearest = np.clip(np.rint(coords).astype(np.intp).T, 0, np.asarray(shape) - 1)
    inside = np.flatnonzero(bank.support[tuple(nearest.T)])
    pts = coords[:, inside]
    _enlarge_ventricles(bank, pts, VENTRICLE_PUSH_MM * atrophy)
    gm, wm, csf, texture, ventricles, mask = (_sample(m, pts) for m in bank.maps)

    # Atrophy: partial-volume GM erosion and WM loss; lost tissue becomes CSF.
    gm_new = np.clip((gm - 0.2 * atrophy) / (1.0 - 0.2 * atrophy), 0.0, 1.0)
    gm_new *= 1.0 - 0.1 * atrophy
    gm_new = np.minimum(gm_new, gm)
    wm_new = wm * (1.0 - 0.06 * atrophy)
    csf = csf + (gm - gm_new) + (wm - wm_new)
    gm, wm = gm_new, wm_new

    mu_csf, mu_gm, mu_wm = site.tissue_means
    mu_wm = mu_wm - 0.15 * atrophy * (mu_wm - mu_gm)  # WM/GM contrast loss
    values = mu_csf * csf + mu_gm * gm + mu_wm * wm + texture / bank.wm_coef
    image = np.zeros(n_vox, dtype=np.float32)
    image[inside] = values
    image = image.reshape(shape)
    if site.blur_fwhm_mm > 0:
        image = ndi.gaussian_filter(image, site.blur_fwhm_mm * _FWHM_TO_SIGMA / r)
    bias = _smooth_field(rng, shape, r, BIAS_SPACING_MM, n_fields=1, normalize=True)[0]

    # Rician noise, skull-strip and gain, evaluated inside the brain only.
    brain = inside[mask > 0.5]
    clean = image.reshape(-1)[brain] * np.exp(
        site.bias_strength * bias.reshape(-1)[brain]
    )
    sigma = site.noise * site.tissue_means[2]
    real = clean + sigma * rng.standard_normal(clean.size)
    imag = sigma * rng.standard_normal(clean.size)
    out = np.zeros(n_vox, dtype=np.float32)
    if modality == "GM":
        out[brain] = gm[mask > 0.5]
    else:
        out[brain] = site.gain * np.sqrt(real**2 + imag**2)

    vox_ml = r**3 / 1000.0
    volumes = {
        "gm_ml": gm.sum() * vox_ml,
        "wm_ml": wm.sum() * vox_ml,
        "csf_ml": csf.sum() * vox_ml,
        "ventricles_ml": ventricles.sum() * vox_ml,
    }
    if not labels:
        return out.reshape(shape), volumes
    fractions = np.zeros((4, n_vox), dtype=np.float32)
    fractions[0] = 1.0
    fractions[0, brain] = 0.0
    in_brain = mask > 0.5
    for k, tissue in enumerate((csf, gm, wm), start=1):
        fractions[k, brain] = tissue[in_brain]
    return out.reshape(shape), volumes, fractions.reshape(4, *shape)


def _sample_subjects(n, sites, acceleration, reserve, rng):
    """Per-subject metadata and global-transform parameters (vectorised)."""
    n_sites = len(sites)
    site = rng.randint(n_sites, size=n)
    a = np.array([s.age_beta[0] for s in sites])[site]
    b = np.array([s.age_beta[1] for s in sites])[site]
    low, high = AGE_RANGE
    age = low + (high - low) * rng.beta(a, b)
    sex = rng.randint(2, size=n)  # 1 = male
    z = rng.standard_normal(n)
    p_diag = 1.0 / (1.0 + np.exp(-(-0.8 + 3.0 * z)))
    diagnosis = (rng.random_sample(n) < p_diag).astype(np.int64)
    brain_age = age + acceleration * z + reserve * rng.standard_normal(n)
    atrophy = np.maximum(0.0, (brain_age - 20.0) / 60.0) ** 1.5
    scale = np.exp(rng.normal(0.0, 0.03, size=n)) * np.where(sex == 1, 1.02, 0.98)
    angles = rng.normal(0.0, 2.0, size=(n, 3))
    shift = rng.normal(0.0, 1.5, size=(n, 3))
    seeds = rng.randint(np.iinfo(np.int32).max, size=n)
    return {
        "site": site,
        "age": age,
        "sex": sex,
        "z": z,
        "diagnosis": diagnosis,
        "brain_age": brain_age,
        "atrophy": atrophy,
        "scale": scale,
        "angles": angles,
        "shift": shift,
        "seeds": seeds,
    }
