"""Synthetic brain T1 MRI cohort with a known ageing process.

Every subject is the real ICBM152 2009a anatomy (shipped with nilearn)
deformed, atrophied and re-imaged with site-specific acquisition effects, so
that images carry a controlled amount of age and disease signal hidden behind
realistic nuisances. See :func:`make_brain_cohort`.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation
from sklearn.utils import Bunch, check_random_state

from ._bids import bids_image_path, write_dataset_description
from ._templates import block_average, brain_template_bank

__all__ = ["make_brain_cohort"]

#: (acceleration in years per unit z, reserve in years, deformation std in mm)
DIFFICULTIES = {
    "easy": (12.0, 2.0, 1.0),
    "medium": (8.0, 3.0, 2.0),
    "hard": (5.0, 4.0, 3.0),
}
AGE_RANGE = (20.0, 85.0)
MAX_SITES = 8
#: Ventricle walls move outwards by up to this many mm times the atrophy.
VENTRICLE_PUSH_MM = 6.0
#: Atrophy used by the image model is capped here (brain age ~ 115 y) so the
#: tissue formulas stay meaningful for extreme draws; the returned atrophy is
#: not capped.
MAX_IMAGE_ATROPHY = 2.0
DEFORMATION_SPACING_MM = 25.0
BIAS_SPACING_MM = 60.0
_FWHM_TO_SIGMA = 1.0 / np.sqrt(8.0 * np.log(2.0))
_VOLUME_KEYS = ("gm_ml", "wm_ml", "csf_ml", "ventricles_ml")
#: Voxel sizes (mm) of make_brain_cohort; 8 mm is the 4 mm cohort averaged
#: over 2x2x2 blocks.
RESOLUTIONS = (2, 4, 8)
MODALITIES = ("T1w", "GM")
#: BIDS (suffix, entities) of the images of each modality
_BIDS_NAMES = {"T1w": ("T1w", ()), "GM": ("probseg", (("label", "GM"),))}


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


def _check_positive_int(value, name, low, high=None):
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer; got {value!r}.")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bounds}; got {value!r}.")
    return int(value)


def _check_knob(value, default, name):
    if value is None:
        return float(default)
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a non-negative number; got {value!r}.")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative number; got {value!r}.")
    return float(value)


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


def _write_participants(path, ids, meta, volumes):
    columns = ["participant_id", "age", "sex", "site", "diagnosis", "brain_age"]
    columns += list(_VOLUME_KEYS)
    lines = ["\t".join(columns)]
    for i, pid in enumerate(ids):
        row = [
            pid,
            f"{meta['age'][i]:.2f}",
            "M" if meta["sex"][i] == 1 else "F",
            str(int(meta["site"][i])),
            str(int(meta["diagnosis"][i])),
            f"{meta['brain_age'][i]:.2f}",
        ]
        row += [f"{volumes[key][i]:.2f}" for key in _VOLUME_KEYS]
        lines.append("\t".join(row))
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


_DESCR = """\
Synthetic brain T1 MRI cohort (make_brain_cohort)
-------------------------------------------------

**Everything in this dataset is synthetic.** No subject is real: each image is
the ICBM152 2009a symmetric template (an average of 152 adult brains, shipped
with nilearn) transformed by a known generative model, and every label is
drawn from that model. Use it to develop and test pipelines, never to draw
conclusions about real brains.

Generative model
~~~~~~~~~~~~~~~~
Anatomy: the template's grey-matter (GM), white-matter (WM) and brain-mask
maps; CSF = mask - GM - WM; ventricles = CSF > 0.5 at least 14 mm inside the
brain (largest 3 components); the part of the T1 image not explained by a
least-squares fit on the three tissue maps is kept as texture. Maps are
block-averaged to {resolution} mm, grid {shape}.

Per subject:
- site: uniform over {n_sites} sites; each site has its own Beta-shaped age
  distribution over 20-85 years (site and age are confounded);
- sex ~ Bernoulli(0.5) (1 = male); z ~ N(0, 1), the latent ageing
  acceleration;
- diagnosis ~ Bernoulli(sigmoid(-0.8 + 3 z)): it depends on z only, so age
  alone does not predict it;
- brain_age = age + {acceleration:g} z + {reserve:g} N(0, 1);
- atrophy = max(0, (brain_age - 20) / 60) ** 1.5 (0 at 20, 1 at 80 years).

Image: global scaling (exp(N(0, 0.03)), x1.02 for males, x0.98 for
females), rotation (N(0, 2 deg) per axis) and shift (N(0, 1.5 mm));
ventricles enlarged by pushing the sampling grid along the gradient of a
smoothed ventricle map by up to 6 mm x atrophy (integrated in small steps so
that it cannot fold); a random smooth deformation (control points every
25 mm displaced by N(0, {deformation_mm:g} mm) per axis) that hides much of
the ageing signal; linear interpolation of the maps; GM partial-volume
erosion, WM loss and CSF gain with atrophy; site tissue intensities with
WM/GM contrast loss with atrophy, template texture, site blur, a
multiplicative bias field (up to +-10-25 %), Rician noise (2-5 % of WM),
skull-stripping and a site gain between 0.05 and 1200 (normalise
intensities before learning).

Returned fields: volumes, age, sex, site, diagnosis, brain_age, z, atrophy,
gm_ml, wm_ml, csf_ml, ventricles_ml (true volumes of the generated
subject), affine (MNI space), resolution.
"""


def make_brain_cohort(
    n_subjects,
    resolution=4,
    difficulty="medium",
    n_sites=4,
    random_state=None,
    return_paths=False,
    out_dir=None,
    *,
    acceleration=None,
    reserve=None,
    deformation_mm=None,
    modality="T1w",
    return_labels=False,
):
    """Generate a synthetic brain T1 MRI cohort with known ageing and disease.

    Each subject is the ICBM152 template (shipped with nilearn, loaded
    offline) transformed by a generative model: a latent ageing acceleration
    ``z`` drives both a binary diagnosis and an accelerated brain age, which
    enlarges the ventricles, thins grey matter and lowers white-matter
    contrast, all hidden behind random shape variation and site-specific
    acquisition effects. See ``DESCR`` of the result for the full model.

    Parameters
    ----------
    n_subjects : int
        Number of subjects (>= 1).
    resolution : {4, 2, 8}, default=4
        Isotropic voxel size in mm. Volumes are ``(50, 59, 48)`` at 4 mm and
        ``(99, 117, 95)`` at 2 mm (about 8 times more memory and time). At
        8 mm, ``(25, 30, 24)``, each subject is generated at 4 mm and averaged
        over 2x2x2 blocks (the same subjects as at 4 mm with the same seed,
        as a downsampled scan; generation costs the same as at 4 mm).
    difficulty : {"easy", "medium", "hard"}, default="medium"
        Preset of the three knobs ``(acceleration, reserve, deformation_mm)``:
        easy ``(12, 2, 1)``, medium ``(8, 3, 2)``, hard ``(5, 4, 3)``.
    n_sites : int, default=4
        Number of acquisition sites, 1 to 8. Sites beyond the four built-in
        ones have parameters drawn from a fixed seed (identical across calls).
    random_state : int, RandomState instance or None, default=None
        Seed of all random draws; the same seed gives identical arrays.
    return_paths : bool, default=False
        If True, write the cohort to ``out_dir`` as a BIDS dataset and
        return the file paths in ``volumes`` instead of arrays:
        ``dataset_description.json``, ``participants.tsv`` (the metadata
        below, sex as ``M``/``F``) and one image per subject (float32, with
        the MNI affine at this resolution),
        ``sub-XXXX/anat/sub-XXXX_T1w.nii.gz``, or
        ``sub-XXXX/anat/sub-XXXX_label-GM_probseg.nii.gz`` for
        ``modality="GM"`` (a derivative dataset). Read it back with
        :func:`sklearn_cl3d.data.read_bids` (``suffix="T1w"`` or
        ``"probseg"``).
    out_dir : str or path-like, default=None
        Output folder (created if missing); required when ``return_paths``.
    acceleration : float, default=None
        Years of brain age per unit of ``z``; overrides ``difficulty``.
    reserve : float, default=None
        Standard deviation (years) of the individual brain-age noise that is
        unrelated to ``z``; overrides ``difficulty``.
    deformation_mm : float, default=None
        Standard deviation (mm) of the control-point displacements of the
        random smooth deformation (control points every 25 mm); overrides
        ``difficulty``.
    modality : {"T1w", "GM"}, default="T1w"
        ``"T1w"``: the T1-weighted image with all acquisition effects.
        ``"GM"``: the subject's grey-matter fraction map (in [0, 1], after
        atrophy, in the subject's own space, skull-stripped), free of site
        intensities, blur, bias field, noise and gain: what a perfect tissue
        segmentation gives, the kind of input (grey-matter maps) the y-Aware
        paper used. Same subjects and metadata as ``"T1w"`` for a given seed.
    return_labels : bool, default=False
        Also return each subject's tissue label map in ``labels``: 0
        background (outside the brain mask), 1 CSF, 2 grey matter, 3 white
        matter, the tissue with the largest true fraction in the voxel (after
        atrophy, in the subject's space; at 8 mm the fractions are
        block-averaged first). A segmentation target with partial volume,
        site contrast, bias field and noise in the image. The images and
        metadata are the same as without labels.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With the fields

        volumes : ndarray of shape (n_subjects, 1, D, H, W), float32, or list of str
            Skull-stripped T1 images (arbitrary, site-dependent units), or
            the NIfTI paths when ``return_paths`` is True.
        age, brain_age, z, atrophy : ndarray of shape (n_subjects,), float
            Chronological age (years), brain age, latent ageing acceleration
            and atrophy (0 at brain age 20, 1 at 80).
        sex : ndarray of shape (n_subjects,), int
            1 for male, 0 for female.
        site : ndarray of shape (n_subjects,), int
            Site index in ``range(n_sites)``.
        diagnosis : ndarray of shape (n_subjects,), int
            1 for patients, 0 for controls.
        gm_ml, wm_ml, csf_ml, ventricles_ml : ndarray of shape (n_subjects,)
            True tissue volumes of the generated subjects in ml (CSF includes
            the ventricles).
        affine : ndarray of shape (4, 4)
            Voxel-to-MNI-mm affine of every volume.
        resolution : int
            Voxel size in mm.
        modality : str
            ``"T1w"`` or ``"GM"``.
        labels : ndarray of shape (n_subjects, D, H, W), int64
            Tissue label maps (only when ``return_labels``).
        participants : str
            Path of ``participants.tsv`` (only when ``return_paths``).
        DESCR : str
            Description of the generative model.

    Raises
    ------
    ValueError
        If a parameter is out of range, or ``return_paths`` is True without
        ``out_dir``.

    Notes
    -----
    Building the template bank takes a few seconds once per resolution and
    process; then 100 subjects take a few seconds at 4 mm and about half a
    minute at 2 mm.

    Examples
    --------
    >>> from sklearn_cl3d.datasets import make_brain_cohort
    >>> cohort = make_brain_cohort(4, resolution=4, random_state=0)
    >>> cohort.volumes.shape
    (4, 1, 50, 59, 48)
    >>> cohort.volumes.dtype
    dtype('float32')
    >>> sorted(set(cohort.diagnosis.tolist()) | {0, 1})
    [0, 1]
    """
    n_subjects = _check_positive_int(n_subjects, "n_subjects", 1)
    if isinstance(resolution, bool | np.bool_) or resolution not in RESOLUTIONS:
        raise ValueError(
            f"resolution must be 2, 4 or 8 (mm); only these are supported, "
            f"got {resolution!r}."
        )
    resolution = int(resolution)
    if not isinstance(modality, str) or modality not in MODALITIES:
        raise ValueError(
            f"modality must be one of {list(MODALITIES)}; got {modality!r}."
        )
    # 8 mm: generated at 4 mm, then averaged over 2x2x2 blocks
    factor = 2 if resolution == 8 else 1
    bank_resolution = resolution // factor
    if not isinstance(difficulty, str) or difficulty not in DIFFICULTIES:
        raise ValueError(
            f"difficulty must be one of {sorted(DIFFICULTIES)}; got {difficulty!r}."
        )
    n_sites = _check_positive_int(n_sites, "n_sites", 1, MAX_SITES)
    default_acc, default_res, default_def = DIFFICULTIES[difficulty]
    acceleration = _check_knob(acceleration, default_acc, "acceleration")
    reserve = _check_knob(reserve, default_res, "reserve")
    deformation_mm = _check_knob(deformation_mm, default_def, "deformation_mm")
    if return_paths:
        if out_dir is None:
            raise ValueError("out_dir is required when return_paths=True.")
        out_dir = os.fspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)

    rng = check_random_state(random_state)
    bank = brain_template_bank(bank_resolution)
    shape = tuple(-(-n // factor) for n in bank.shape)
    affine = np.array(bank.affine)
    if factor > 1:
        affine[:3, 3] += affine[:3, :3] @ np.full(3, (factor - 1) / 2.0)
        affine[:3, :3] *= factor
    sites = _site_table(n_sites)
    meta = _sample_subjects(n_subjects, sites, acceleration, reserve, rng)
    rotations = Rotation.from_euler("xyz", meta["angles"], degrees=True).as_matrix()

    ids = [f"sub-{i + 1:04d}" for i in range(n_subjects)]
    volumes = {key: np.empty(n_subjects) for key in _VOLUME_KEYS}
    if return_labels:
        label_maps = np.zeros((n_subjects, *shape), dtype=np.int64)
    if return_paths:
        import nibabel as nib

        images = []
    else:
        images = np.empty((n_subjects, 1, *shape), dtype=np.float32)
    for i in range(n_subjects):
        params = {
            "atrophy": float(meta["atrophy"][i]),
            "scale": float(meta["scale"][i]),
            "rotation": rotations[i],
            "shift": meta["shift"][i],
        }
        image, vols, *fractions = _subject(
            bank,
            sites[meta["site"][i]],
            params,
            deformation_mm,
            np.random.default_rng(int(meta["seeds"][i])),
            modality,
            labels=return_labels,
        )
        if factor > 1:
            image = block_average(image, factor).astype(np.float32)
        if return_labels:
            fractions = fractions[0]
            if factor > 1:
                fractions = np.stack([block_average(f, factor) for f in fractions])
                # zero padding of the last blocks counts as background
                fractions[0] += 1.0 - fractions.sum(axis=0)
            label_maps[i] = np.argmax(fractions, axis=0)
        for key in _VOLUME_KEYS:
            volumes[key][i] = vols[key]
        if return_paths:
            nifti = nib.Nifti1Image(image, affine)
            nifti.header.set_xyzt_units("mm")
            path = bids_image_path(out_dir, ids[i], *_BIDS_NAMES[modality])
            nib.save(nifti, path)
            images.append(path)
        else:
            images[i, 0] = image

    data = Bunch(
        volumes=images,
        age=meta["age"],
        sex=meta["sex"],
        site=meta["site"],
        diagnosis=meta["diagnosis"],
        brain_age=meta["brain_age"],
        z=meta["z"],
        atrophy=meta["atrophy"],
        **volumes,
        affine=affine,
        resolution=resolution,
        modality=modality,
        DESCR=_DESCR.format(
            resolution=resolution,
            shape=shape,
            n_sites=n_sites,
            acceleration=acceleration,
            reserve=reserve,
            deformation_mm=deformation_mm,
        ),
    )
    if return_labels:
        data.labels = label_maps
    if return_paths:
        participants = os.path.join(out_dir, "participants.tsv")
        _write_participants(participants, ids, meta, volumes)
        write_dataset_description(
            out_dir,
            f"Synthetic brain cohort ({modality}, {resolution} mm)",
            "sklearn_cl3d.datasets.make_brain_cohort",
            derivative=modality != "T1w",
        )
        data.participants = participants
    return data
